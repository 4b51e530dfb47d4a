"""The agent's service cache: every Service of the cluster and the pods they select (from the store),
turned into this node's load-balancing maps (apiary.datapath.lb), as Cilium's ServiceCache and
service manager do.

- A Service gives one frontend per port and address (ClusterIP; this node's IP for a NodePort; the
  LoadBalancer IP; each external IP), with the Running pods it selects as backends (their targetPort,
  numeric or named). apiary.service holds that translation.
- Changes are incremental: a Service event reprograms that Service's frontends; a pod event only the
  Services of its namespace whose selector matches the pod before or after the event. A frontend
  whose backends and settings did not change is not written at all.
- IDs are this node's: a frontend ID (its reverse-NAT index, 1..65535) and a backend ID per pod
  address and port, both read back from the maps when the agent restarts so running connections
  keep their reverse NAT.
"""
from __future__ import annotations

import json
import logging
import threading

from apiary import service
from apiary.datapath import lb

log = logging.getLogger("apiary.agent.services")

SERVICES = "/apiary/objects/services/"
PODS = "/apiary/objects/pods/"
MAX_SERVICE_ID = 0xFFFF


def _frontend_key(frontend: lb.Frontend) -> str:
    return str(frontend)


class ServiceManager:
    def __init__(self, balancer: lb.LoadBalancer, node_name: str, node_ip: str):
        self.lb = balancer
        self.node_name, self.node_ip = node_name, node_ip
        self.lock = threading.RLock()
        self.services: dict[str, dict] = {}  # store key -> Service
        self.pods: dict[str, dict] = {}  # store key -> Pod
        self.programmed: dict[str, dict] = {}  # store key -> {frontend key: (Frontend, backends)}
        self.frontend_ids: dict[str, int] = {}
        self.backend_ids: dict[str, int] = {}
        for row in self.lb.list():  # what a previous run of the agent programmed
            self.frontend_ids[row["frontend"]] = row["id"]
            for backend in row["backends"]:
                self.backend_ids[backend["address"]] = backend["id"]
        # Backend IDs are never reused while the agent runs: a freed one may still be in a
        # connection's tracking entry.
        self.next_backend_id = max(self.backend_ids.values(), default=0) + 1
        self.stale = set(self.frontend_ids)  # removed after the first full read unless still wanted
        self.store_revision = 0
        self.loaded = False

    # --- the store ----------------------------------------------------------------------------
    @staticmethod
    def is_ours(key: str) -> bool:
        return key.startswith(SERVICES) or key.startswith(PODS)

    def load(self, kvs: list, revision: int) -> None:
        with self.lock:
            self.services = {kv.key: json.loads(kv.value) for kv in kvs if kv.key.startswith(SERVICES)}
            self.pods = {kv.key: json.loads(kv.value) for kv in kvs if kv.key.startswith(PODS)}
            for key in list(self.programmed):
                if key not in self.services:
                    self._program(key, None)
            for key in self.services:
                self._program(key, self.services[key])
            for stale in self.stale:  # frontends of Services deleted while the agent was down
                address, rest = stale.rsplit(":", 1)
                port, protocol = rest.split("/")
                self.lb.delete(lb.Frontend(address, int(port), protocol))
                self.frontend_ids.pop(stale, None)
            self.stale = set()
            self.loaded = True
            self.store_revision = revision

    def handle(self, key: str, value: str | None, revision: int) -> bool:
        """One store event; True when it was one of ours."""
        if not self.is_ours(key):
            return False
        with self.lock:
            if key.startswith(SERVICES):
                if value is None:
                    self.services.pop(key, None)
                else:
                    self.services[key] = json.loads(value)
                if self.loaded:
                    self._program(key, self.services.get(key))
            else:
                before = self.pods.get(key)
                if value is None:
                    self.pods.pop(key, None)
                else:
                    self.pods[key] = json.loads(value)
                if self.loaded:
                    for svc_key in self._selecting([p for p in (before, self.pods.get(key)) if p]):
                        self._program(svc_key, self.services[svc_key])
            self.store_revision = max(self.store_revision, revision)
            return True

    def _selecting(self, pods: list) -> list:
        return [key for key, svc in self.services.items() if any(service.selects(svc, pod) for pod in pods)]

    # --- programming ----------------------------------------------------------------------------
    def desired(self, svc: dict) -> dict:
        """{frontend key: (Frontend, [Backend])} of one Service on this node."""
        spec = svc["spec"]
        affinity = (spec.get("sessionAffinityConfig") or {}).get("clientIP", {}).get("timeoutSeconds") \
            if spec.get("sessionAffinity") == "ClientIP" else None
        pods = list(self.pods.values())
        out = {}
        for port, address, number, kind in service.service_frontends(svc, self.node_ip):
            frontend = lb.Frontend(address, number, port["protocol"], kind,
                                   local_only_external=spec.get("externalTrafficPolicy") == "Local",
                                   local_only_internal=spec.get("internalTrafficPolicy") == "Local",
                                   affinity_timeout=affinity)
            backends = [lb.Backend(self._backend_id("%s:%d/%s" % (ip, p, proto)), ip, p, proto, local=local)
                        for ip, p, proto, local in service.service_backends(svc, port, pods, self.node_name)]
            out[_frontend_key(frontend)] = (frontend, backends)
        return out

    def _program(self, key: str, svc: dict | None) -> None:
        want = self.desired(svc) if svc is not None else {}
        have = self.programmed.get(key, {})
        for fkey, (frontend, backends) in want.items():
            self.stale.discard(fkey)
            if have.get(fkey) != (frontend, backends):
                self.lb.upsert(self._frontend_id(fkey), frontend, backends)
        for fkey, (frontend, _) in have.items():
            if fkey not in want:
                self.lb.delete(frontend)
                self.frontend_ids.pop(fkey, None)
        if want:
            self.programmed[key] = want
        else:
            self.programmed.pop(key, None)
        self._forget_backend_ids()

    def _frontend_id(self, fkey: str) -> int:
        if fkey not in self.frontend_ids:
            used = set(self.frontend_ids.values())
            free = next((i for i in range(1, MAX_SERVICE_ID + 1) if i not in used), None)
            if free is None:
                raise RuntimeError("no free frontend ID on this node (%d frontends)" % MAX_SERVICE_ID)
            self.frontend_ids[fkey] = free
        return self.frontend_ids[fkey]

    def _backend_id(self, name: str) -> int:
        if name not in self.backend_ids:
            self.backend_ids[name] = self.next_backend_id
            self.next_backend_id += 1
        return self.backend_ids[name]

    def _forget_backend_ids(self) -> None:
        used = {b.name for frontends in self.programmed.values() for _, backends in frontends.values()
                for b in backends}
        for name in [n for n in self.backend_ids if n not in used]:
            del self.backend_ids[name]

    # --- views ----------------------------------------------------------------------------------
    def cluster_ip(self, namespace: str, name: str) -> str | None:
        """For the node-local DNS: the Service's address, None when there is no such Service."""
        with self.lock:
            svc = self.services.get("%s%s/%s" % (SERVICES, namespace, name))
            return None if svc is None else svc["spec"].get("clusterIP")

    def list(self) -> list:
        """`apiary service list`: ID, frontend, type, backends (by the maps, as Cilium shows them)."""
        with self.lock:
            return self.lb.list()
