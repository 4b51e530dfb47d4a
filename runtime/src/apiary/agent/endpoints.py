"""Endpoints: the pods of this node as the datapath knows them.

An endpoint is created by `apiary-cni` ADD once the pod's veth exists: the agent derives the
pod's security identity from its labels (read from the store, as Cilium reads them from the
Kubernetes API), writes the endpoint into `apiary_lxc`, attaches `from_container`/`to_container` to the host
side of the veth, and publishes the pod's IP in the cluster-wide ipcache. Each endpoint is also
kept as <state dir>/endpoints/<id>.json so that a restarted agent restores it without touching
the datapath of running pods.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, field

from apiary import identity as identities
from apiary import ip
from apiary.agent import state

# Cilium's endpoint IDs are per node, 1..4095.
MAX_ENDPOINT_ID = 4095
REQUIRED_FIELDS = ("container_id", "ifname", "netns", "host_ifname", "ip", "mac")


class EndpointError(Exception):
    """Bad request or a failed step; carries an HTTP-ish status for the API."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Endpoint:
    id: int
    container_id: str
    ifname: str
    netns: str
    host_ifname: str
    host_ifindex: int
    host_mac: str
    mac: str
    ip: str
    pod_namespace: str
    pod_name: str
    labels: list = field(default_factory=list)
    identity: int = 0
    created: float = 0.0

    def summary(self, enforcement=("Disabled", "Disabled")) -> dict:
        data = asdict(self)
        data["status"] = "ready"
        data["policy_ingress"], data["policy_egress"] = enforcement
        return data


def ipcache_key(pod_ip: str) -> str:
    return "/apiary/ipcache/%s/32" % pod_ip


class EndpointManager:
    def __init__(self, config, store, datapath, node_ip: str, policy=None):
        self.config = config
        self.policy = policy  # PolicyManager: writes an endpoint's policy before the endpoint exists
        self.store = store
        self.datapath = datapath  # apiary.agent.datapath.Datapath: maps + attach
        self.node_ip = node_ip
        self.directory = os.path.join(config.state_dir, "endpoints")
        self.lock = threading.RLock()
        self.endpoints: dict[int, Endpoint] = {}
        self.allocator = identities.IdentityAllocator(store)

    # --- lookups -------------------------------------------------------------------------
    def list(self) -> list[Endpoint]:
        with self.lock:
            return sorted(self.endpoints.values(), key=lambda e: e.id)

    def get(self, endpoint_id: int) -> Endpoint:
        with self.lock:
            if endpoint_id not in self.endpoints:
                raise EndpointError("endpoint %d not found" % endpoint_id, 404)
            return self.endpoints[endpoint_id]

    def by_container(self, container_id: str, ifname: str | None = None) -> Endpoint | None:
        with self.lock:
            for ep in self.endpoints.values():
                if ep.container_id == container_id and (ifname is None or ep.ifname == ifname):
                    return ep
        return None

    # --- create / delete -----------------------------------------------------------------
    def create(self, request: dict) -> Endpoint:
        missing = [f for f in REQUIRED_FIELDS if not request.get(f)]
        if missing:
            raise EndpointError("endpoint request: missing %s" % ", ".join(missing))
        with self.lock:
            existing = self.by_container(request["container_id"], request["ifname"])
            if existing is not None:
                if existing.ip == request["ip"] and existing.host_ifname == request["host_ifname"]:
                    return existing  # a retried ADD
                raise EndpointError("container %s %s already has endpoint %d"
                                    % (request["container_id"], request["ifname"], existing.id), 409)
            link = ip.link(request["host_ifname"])
            if link is None:
                raise EndpointError("host interface %s does not exist" % request["host_ifname"], 404)
            namespace = request.get("pod_namespace") or "default"
            pod_name = request.get("pod_name") or ""
            labels = identities.pod_labels(namespace, *self._pod_and_namespace_labels(namespace, pod_name),
                                           cluster=self.config.cluster_name)
            ep = Endpoint(id=self._new_id(), container_id=request["container_id"], ifname=request["ifname"],
                          netns=request["netns"], host_ifname=request["host_ifname"],
                          host_ifindex=link["ifindex"], host_mac=link["address"], mac=request["mac"],
                          ip=request["ip"], pod_namespace=namespace, pod_name=pod_name, labels=labels,
                          created=time.time())
            ep.identity = self.allocator.allocate(labels)
            try:
                self._program(ep)
                state.write(self._path(ep.id), asdict(ep))
            except Exception:
                self._unprogram(ep)
                raise
            self.endpoints[ep.id] = ep
            return ep

    def delete(self, container_id: str, ifname: str | None = None) -> Endpoint | None:
        with self.lock:
            ep = self.by_container(container_id, ifname)
            if ep is None:
                return None
            self._unprogram(ep)
            try:
                os.unlink(self._path(ep.id))
            except FileNotFoundError:
                pass
            del self.endpoints[ep.id]
            return ep

    # --- restart ---------------------------------------------------------------------------
    def restore(self) -> dict:
        """Load the endpoints saved before a restart and make sure the datapath still has them.

        Entries already right are left alone (no packet of a running pod is affected); an
        endpoint whose veth is gone (the pod died while the agent was down) is cleaned up.
        """
        restored, removed = [], []
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        with self.lock:
            for name in sorted(os.listdir(self.directory)):
                if not name.endswith(".json"):
                    continue
                ep = Endpoint(**state.read(os.path.join(self.directory, name)))
                link = ip.link(ep.host_ifname)
                if link is None or link["ifindex"] != ep.host_ifindex:
                    self._unprogram(ep)
                    os.unlink(os.path.join(self.directory, name))
                    removed.append(ep.id)
                    continue
                self.endpoints[ep.id] = ep
                self._program(ep)
                restored.append(ep.id)
        return {"restored": restored, "removed": removed}

    # --- health ----------------------------------------------------------------------------
    def health(self, endpoint_id: int) -> dict:
        ep = self.get(endpoint_id)
        problems = []
        entry = self.datapath.endpoints.get(ep.ip)
        if entry is None:
            problems.append("no apiary_lxc entry for %s" % ep.ip)
        elif entry["ifindex"] != ep.host_ifindex or entry["lxc_id"] != ep.id or entry["identity"] != ep.identity:
            problems.append("apiary_lxc entry for %s differs from the endpoint" % ep.ip)
        if not self.datapath.endpoint_attached(ep.host_ifindex):
            problems.append("from_container/to_container are not attached to %s" % ep.host_ifname)
        link = ip.link(ep.host_ifname)
        connected = link is not None and link["ifindex"] == ep.host_ifindex and "UP" in link.get("flags", [])
        bpf = "OK" if not problems else "Failure"
        return {"id": ep.id, "overall": "OK" if not problems and connected else "Failure", "bpf": bpf,
                "policy": "OK", "connected": connected, "problems": problems}

    # --- internals -------------------------------------------------------------------------
    def _pod_and_namespace_labels(self, namespace: str, pod_name: str):
        pod = self._object("/apiary/objects/pods/%s/%s" % (namespace, pod_name)) if pod_name else None
        ns = self._object("/apiary/objects/namespaces/_/%s" % namespace)
        pod_labels = ((pod or {}).get("metadata") or {}).get("labels") or {}
        ns_labels = dict(((ns or {}).get("metadata") or {}).get("labels") or {})
        # Kubernetes labels every namespace with its own name.
        ns_labels.setdefault("kubernetes.io/metadata.name", namespace)
        return pod_labels, ns_labels

    def _object(self, key: str):
        kv = self.store.get(key)
        return json.loads(kv.value) if kv else None

    def _new_id(self) -> int:
        # Saved endpoints are all in self.endpoints (restore() loads or removes every file).
        free = [i for i in range(1, MAX_ENDPOINT_ID + 1) if i not in self.endpoints]
        if not free:
            raise EndpointError("no free endpoint ID on this node", 503)
        return random.choice(free)

    def _path(self, endpoint_id: int) -> str:
        return os.path.join(self.directory, "%d.json" % endpoint_id)

    def _program(self, ep: Endpoint) -> None:
        """Endpoint into the datapath (idempotent: right entries are rewritten with the same bytes).
        Its policy entries come first: the datapath drops what an endpoint without entries sends."""
        if self.policy is not None:
            self.policy.endpoint_added(ep)
        self.datapath.endpoints.set(ep.ip, ifindex=ep.host_ifindex, lxc_id=ep.id, identity=ep.identity,
                                    mac=ep.mac, node_mac=ep.host_mac)
        self.datapath.attach_endpoint(ep.host_ifindex)
        # The local ipcache entry now, not when the store's echo arrives: ADD returns ready.
        self.datapath.ipcache.set("%s/32" % ep.ip, identity=ep.identity)
        self.store.put(ipcache_key(ep.ip), json.dumps(
            {"identity": ep.identity, "node": self.config.node_name, "tunnel_endpoint": self.node_ip},
            sort_keys=True))

    def _unprogram(self, ep: Endpoint) -> None:
        self.datapath.endpoints.delete(ep.ip)
        if self.policy is not None:
            self.policy.endpoint_removed(ep)
        self.datapath.ipcache.delete("%s/32" % ep.ip)
        self.store.delete(ipcache_key(ep.ip))
