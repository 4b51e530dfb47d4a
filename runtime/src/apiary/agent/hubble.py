"""The agent's Hubble (docs/hubble.md): the datapath's events are read into the observer, which the
flow server (for the relay), the agent socket (`apiary observe --node`, `apiary monitor`) and the
metrics endpoint read from. The settings come from <state dir>/hubble.json, written by the
apiary.cluster.hubble module; without the file Hubble is off and the datapath emits nothing.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from apiary import netns, service
from apiary.errors import UserError
from apiary.observe import events, kernel_drops, metrics
from apiary.observe.observer import Observer
from apiary.observe.server import FlowServer

log = logging.getLogger("apiary.agent.hubble")

SETTINGS_FILE = "hubble.json"
# Lookups for flows are read-mostly and a flow is converted when read: indexes are rebuilt at most
# this often (seconds), so a burst of reads does not rebuild them per flow.
INDEX_TTL = 1.0


@dataclass
class HubbleSettings:
    enabled: bool = False
    event_buffer_capacity: int = 4095
    listen_address: str | None = None        # "ip:port" of the flow server (the relay's peer port)
    metrics: list = field(default_factory=list)
    metrics_address: str | None = None       # "ip:port" of /metrics
    tls: dict | None = None                  # {"ca", "cert", "key"}: the flow server requires client certificates

    @classmethod
    def load(cls, state_dir: str) -> "HubbleSettings":
        path = os.path.join(state_dir, SETTINGS_FILE)
        if not os.path.exists(path):
            return cls()
        try:
            with open(path) as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise UserError("%s: %s" % (path, exc)) from exc
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError("%s: unknown field(s) %s" % (path, ", ".join(unknown)))
        settings = cls(**data)
        settings.check(path)
        return settings

    def check(self, where: str) -> None:
        capacity = self.event_buffer_capacity
        if not isinstance(capacity, int) or capacity < 1 or (capacity + 1) & capacity:
            raise UserError("%s: event_buffer_capacity: %r is not 2^n - 1 (e.g. 4095)" % (where, capacity))
        for name in ("listen_address", "metrics_address"):
            if getattr(self, name) is not None:
                split_address(getattr(self, name), "%s: %s" % (where, name))
        if self.tls is not None and sorted(self.tls) != ["ca", "cert", "key"]:
            raise UserError("%s: tls: needs exactly ca, cert and key, not %s" % (where, ", ".join(sorted(self.tls))))


def split_address(text: str, where: str) -> tuple:
    host, _, port = str(text).rpartition(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError(port)
    except ValueError:
        raise UserError("%s: %r is not IP:PORT" % (where, text)) from None
    return host, number


class AgentLookup:
    """What a flow's addresses are, from what the agent knows (apiary.observe.flow's lookup)."""

    def __init__(self, agent):
        self.agent = agent
        self._built = 0.0
        self._lock = threading.Lock()
        self._pods: dict = {}
        self._frontends: dict = {}
        self._cookies: dict = {}  # endpoint id -> (netns path, cookie)

    def _index(self) -> None:
        with self._lock:
            if time.monotonic() - self._built < INDEX_TTL:
                return
            agent = self.agent
            pods, frontends = {}, {}
            entries = dict(agent.sync.entries)
            for pod in agent.all_pods():
                address = (pod.get("status") or {}).get("podIP")
                if address:
                    pods[address] = _pod_endpoint(pod, entries.get("%s/32" % address))
            svcs = agent.services
            with svcs.lock:
                for namespace, objects in svcs.services.items():
                    for svc in objects.values():
                        name = {"name": svc["metadata"]["name"], "namespace": namespace}
                        for port, address, number, _ in service.service_frontends(svc, agent.config.node_ip):
                            frontends[(address, number, port["protocol"])] = name
            for ep in agent.endpoints.list():  # this node's endpoints know their IDs and labels
                pods[ep.ip] = {"ID": ep.id, "identity": ep.identity, "namespace": ep.pod_namespace,
                               "pod_name": ep.pod_name, "labels": list(ep.labels),
                               "node_name": agent.config.node_name}
            self._pods, self._frontends, self._built = pods, frontends, time.monotonic()

    def endpoint(self, ip: str):
        self._index()
        return self._pods.get(ip)

    def identity_labels(self, identity: int) -> list:
        return self.agent.policy.identity_labels(identity)

    def service(self, ip: str, port: int, protocol: str):
        self._index()
        return self._frontends.get((ip, port, protocol))

    def endpoint_of_cookie(self, cookie: int):
        """The local endpoint whose network namespace has this cookie (socket translations)."""
        if not cookie:
            return None
        for ep in self.agent.endpoints.list():
            known = self._cookies.get(ep.id)
            if known is None or known[0] != ep.netns:
                try:
                    known = self._cookies[ep.id] = (ep.netns, netns.cookie(ep.netns))
                except OSError:
                    continue  # the pod is going away
            if known[1] == cookie:
                return self.endpoint(ep.ip)
        return None


def _pod_endpoint(pod: dict, ipcache: dict | None) -> dict:
    meta = pod["metadata"]
    labels = ["k8s:%s=%s" % item for item in sorted((meta.get("labels") or {}).items())]
    labels.append("k8s:io.kubernetes.pod.namespace=%s" % meta.get("namespace", "default"))
    return {"ID": 0, "identity": int((ipcache or {}).get("identity") or 0),
            "namespace": meta.get("namespace", "default"), "pod_name": meta["name"], "labels": labels,
            "node_name": (ipcache or {}).get("node") or pod["spec"].get("nodeName", "")}


class Hubble:
    """Started by the agent when hubble.json enables it; stop() switches the datapath's events off."""

    def __init__(self, agent, settings: HubbleSettings):
        cfg = agent.config
        self.settings = settings
        self.pin_dir = cfg.pin_dir
        self.stop_event = threading.Event()
        self.observer = Observer(settings.event_buffer_capacity, cfg.node_name, AgentLookup(agent))
        self.hubble_metrics = metrics.HubbleMetrics(settings.metrics) if settings.metrics else None
        self.reader = events.EventReader(cfg.pin_dir, self._sink, self._lost)
        self.servers = []
        self.kernel_drops = {"state": "Disabled"}

    def _sink(self, event: dict) -> None:
        self.observer.add(event)
        if self.hubble_metrics is not None:
            self.hubble_metrics.process(event)

    def _lost(self, count: int) -> None:
        self.observer.lost(count)
        if self.hubble_metrics is not None:
            self.hubble_metrics.lost_events("perf_event_ring_buffer", count)

    def start(self, agent_metrics) -> "Hubble":
        settings = self.settings
        events.set_enabled(self.pin_dir, True)
        threading.Thread(target=self.reader.run, args=(self.stop_event,), name="hubble-events", daemon=True).start()
        self.kernel_drops = kernel_drops.status()
        if self.kernel_drops["state"] == "Ok":
            try:
                tracer = kernel_drops.KernelDropTracer(self._sink)
                threading.Thread(target=tracer.run, args=(self.stop_event,), name="kernel-drops", daemon=True).start()
            except Exception as exc:  # noqa: BLE001 - bcc compiles at run time; say what failed
                self.kernel_drops = {"state": "Failure", "message": "bcc: %s" % exc}
        if settings.listen_address:
            host, port = split_address(settings.listen_address, "hubble listen_address")
            self.servers.append(FlowServer(self.observer, host, port, tls=settings.tls).start())
        if settings.metrics_address:
            host, port = split_address(settings.metrics_address, "hubble metrics_address")
            renders = [agent_metrics.render] + ([self.hubble_metrics.render] if self.hubble_metrics else [])
            self.servers.append(metrics.MetricsServer(host, port, renders).start())
        return self

    def status(self) -> dict:
        data = {"state": "Ok", "observer": self.observer.status(), "events_read": self.reader.read,
                "listen_address": self.settings.listen_address, "metrics_address": self.settings.metrics_address,
                "tls": self.settings.tls is not None, "kernel_drops": self.kernel_drops,
                "metrics": list(self.settings.metrics),
                "metrics_unsupported": self.hubble_metrics.unsupported() if self.hubble_metrics else []}
        return data

    def stop(self) -> None:
        self.stop_event.set()
        for server in self.servers:
            server.stop()
        try:
            events.set_enabled(self.pin_dir, False)
        except Exception as exc:  # noqa: BLE001 - stopping anyway
            log.warning("could not switch the datapath's events off: %s", exc)
