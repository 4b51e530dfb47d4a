"""The agent's service cache: every Service of the cluster and its backends, turned into this node's
load-balancing maps (apiary.datapath.lb), as Cilium's ServiceCache and service manager do. The
backends are the Service's EndpointSlices in kubeconfig mode (agent/kubernetes.py passes Services and
slices under store-like keys), or the pods it selects in the lab's imitation store.

- A Service gives one frontend per port and address (ClusterIP; this node's IP for a NodePort; the
  LoadBalancer IP; each external IP). Its backends: the ready endpoints of its EndpointSlices with
  the slice's port of the same name (what the EndpointSlice controller made of the selector, named
  target ports and readiness; also the API server's own slice for the `kubernetes` Service), or, from
  the store, the Running pods it selects (their targetPort, numeric or named), where, as an
  EndpointSlice would, a pod that is terminating (deletionTimestamp) or whose Ready condition is not
  True is no backend. apiary.service holds both translations.
- Changes are incremental: a Service event reprograms that Service's frontends; an EndpointSlice event
  the Service it names; a pod event only the Services of its namespace whose selector matches the
  pod before or after the event. A frontend
  whose backends and settings did not change is not written at all.
- Revisions (`store_revision`): the last event's etcd revision, or in kubeconfig mode the Kubernetes
  source's count of applied events.
- IDs are this node's: a frontend ID (its reverse-NAT index, 1..65535) and a backend ID per pod
  address and port, both read back from the maps when the agent restarts so running connections
  keep their reverse NAT.
"""
from __future__ import annotations

import collections
import json
import logging
import threading
import time

from apiary import service
from apiary.datapath import lb

log = logging.getLogger("apiary.agent.services")

SERVICES = "/apiary/objects/services/"
PODS = "/apiary/objects/pods/"
ENDPOINT_SLICES = "/apiary/objects/endpointslices/"
MAX_SERVICE_ID = 0xFFFF


def _frontend_key(frontend: lb.Frontend) -> str:
    return str(frontend)


def _decode(value):
    """JSON text (the store) or a dict (the Kubernetes source)."""
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def serving(pod: dict) -> bool:
    """Whether a pod may take new connections: not terminating, and Ready when it says (as the
    EndpointSlice controller decides an endpoint's `ready`)."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    ready = [c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"]
    return not ready or ready[0].get("status") == "True"


def _namespace(key: str) -> str:
    """The namespace of a store key /apiary/objects/<plural>/<namespace>/<name>."""
    return key.rsplit("/", 2)[-2]


class ServiceManager:
    def __init__(self, balancer: lb.LoadBalancer, node_name: str, node_ip: str, backends_from_slices: bool = False):
        self.lb = balancer
        self.node_name, self.node_ip = node_name, node_ip
        # Backends from EndpointSlices (the Kubernetes API), or from the pods (the imitation store).
        self.backends_from_slices = backends_from_slices
        self.lock = threading.RLock()
        # By namespace, then store key: an event looks only at its namespace's objects, so its cost
        # does not grow with the cluster's other Services and pods.
        self.services: dict[str, dict] = collections.defaultdict(dict)
        self.pods: dict[str, dict] = collections.defaultdict(dict)
        self.slices: dict[str, dict] = collections.defaultdict(dict)
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
        self.backend_refs: collections.Counter = collections.Counter()  # backend name -> frontends naming it
        # Frontend IDs (reverse-NAT indexes) are handed out in turn, so a freed one is not reused at once.
        self.next_frontend_id = max(self.frontend_ids.values(), default=0) + 1
        self.stale = set(self.frontend_ids)  # removed after the first full read unless still wanted
        self.store_revision = 0
        self.loaded = False
        # Something with observe(seconds) (apiary.observe.metrics.AgentMetrics.service_delay), or None.
        self.metrics = None

    # --- the store ----------------------------------------------------------------------------
    def is_ours(self, key: str) -> bool:
        return key.startswith(SERVICES) or key.startswith(ENDPOINT_SLICES if self.backends_from_slices else PODS)

    def load(self, kvs: list, revision: int) -> None:
        with self.lock:
            self.services, self.pods, self.slices = (collections.defaultdict(dict), collections.defaultdict(dict),
                                                     collections.defaultdict(dict))
            for kv in kvs:
                if self.is_ours(kv.key):
                    self._store(kv.key)[kv.key] = _decode(kv.value)
            for key in list(self.programmed):
                if key not in self._store(key):
                    self._program(key, None)
            for namespace in list(self.services):
                for key, svc in list(self.services[namespace].items()):
                    try:
                        self._program(key, svc)
                    except Exception:  # noqa: BLE001 - one Service the datapath cannot take must not stop the others
                        log.exception("%s: not programmed", key)
            for stale in self.stale:  # frontends of Services deleted while the agent was down
                address, rest = stale.rsplit(":", 1)
                port, protocol = rest.split("/")
                self.lb.delete(lb.Frontend(address, int(port), protocol))
                self.frontend_ids.pop(stale, None)
            self.stale = set()
            for name in [n for n in self.backend_ids if n not in self.backend_refs]:
                del self.backend_ids[name]  # backends of those frontends only
            self.loaded = True
            self.store_revision = revision

    def handle(self, key: str, value, revision: int) -> bool:
        """One event (value: JSON text or a dict; None: deleted); True when it was one of ours."""
        if not self.is_ours(key):
            return False
        arrived = time.monotonic()
        with self.lock:
            objects = self._store(key)
            before = objects.get(key)
            if value is None:
                objects.pop(key, None)
            else:
                objects[key] = _decode(value)
            if self.loaded and key.startswith(SERVICES):
                self._program(key, objects.get(key))
                if self.metrics is not None:  # the change arrived -> the datapath serves it
                    self.metrics.observe(time.monotonic() - arrived)
            elif self.loaded and key.startswith(ENDPOINT_SLICES):
                namespace = _namespace(key)
                for name in {service.slice_service(s) for s in (before, objects.get(key)) if s} - {None}:
                    svc_key = "%s%s/%s" % (SERVICES, namespace, name)
                    if svc_key in self.services[namespace]:
                        self._program(svc_key, self.services[namespace][svc_key])
            elif self.loaded:
                pods = [p for p in (before, objects.get(key)) if p]
                for svc_key, svc in list(self.services[_namespace(key)].items()):
                    if any(service.selects(svc, pod) for pod in pods):
                        self._program(svc_key, svc)
            self.store_revision = max(self.store_revision, revision)
            return True

    def _store(self, key: str) -> dict:
        """The dict of the key's kind and namespace."""
        kind = self.services if key.startswith(SERVICES) else self.slices if key.startswith(ENDPOINT_SLICES) \
            else self.pods
        return kind[_namespace(key)]

    # --- programming ----------------------------------------------------------------------------
    def desired(self, svc: dict) -> dict:
        """{frontend key: (Frontend, [Backend])} of one Service on this node."""
        spec = svc["spec"]
        affinity = (spec.get("sessionAffinityConfig") or {}).get("clientIP", {}).get("timeoutSeconds") \
            if spec.get("sessionAffinity") == "ClientIP" else None
        namespace, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        if self.backends_from_slices:
            slices = self.endpoint_slices(namespace, name)
        else:
            pods = [pod for pod in self.pods[namespace].values() if serving(pod)]
        out = {}
        for port, address, number, kind in service.service_frontends(svc, self.node_ip):
            frontend = lb.Frontend(address, number, port["protocol"], kind,
                                   local_only_external=spec.get("externalTrafficPolicy") == "Local",
                                   local_only_internal=spec.get("internalTrafficPolicy") == "Local",
                                   affinity_timeout=affinity)
            found = service.slice_backends(port, slices, self.node_name) if self.backends_from_slices \
                else service.service_backends(svc, port, pods, self.node_name)
            backends = [lb.Backend(self._backend_id("%s:%d/%s" % (ip, p, proto)), ip, p, proto, local=local)
                        for ip, p, proto, local in found]
            out[_frontend_key(frontend)] = (frontend, backends)
        return out

    def _program(self, key: str, svc: dict | None) -> None:
        want = self.desired(svc) if svc is not None else {}
        have = self.programmed.get(key, {})
        for fkey, (frontend, backends) in want.items():
            self.stale.discard(fkey)
            if have.get(fkey) != (frontend, backends):
                self.lb.upsert(self._frontend_id(fkey), frontend, backends)
                self._account(backends, +1)
                self._account(have.get(fkey, (None, []))[1], -1)
        for fkey, (frontend, backends) in have.items():
            if fkey not in want:
                self.lb.delete(frontend)
                self.frontend_ids.pop(fkey, None)
                self._account(backends, -1)
        if want:
            self.programmed[key] = want
        else:
            self.programmed.pop(key, None)

    def _frontend_id(self, fkey: str) -> int:
        if fkey not in self.frontend_ids:
            if len(self.frontend_ids) >= MAX_SERVICE_ID:
                raise RuntimeError("no free frontend ID on this node (%d frontends)" % MAX_SERVICE_ID)
            used = set(self.frontend_ids.values()) if self.next_frontend_id > MAX_SERVICE_ID else None
            if used is not None:  # wrapped around: the lowest free one (rare: 65,535 frontends made)
                self.next_frontend_id = next(i for i in range(1, MAX_SERVICE_ID + 1) if i not in used)
            self.frontend_ids[fkey] = self.next_frontend_id
            self.next_frontend_id += 1
        return self.frontend_ids[fkey]

    def _backend_id(self, name: str) -> int:
        if name not in self.backend_ids:
            self.backend_ids[name] = self.next_backend_id
            self.next_backend_id += 1
        return self.backend_ids[name]

    def _account(self, backends: list, sign: int) -> None:
        """Count the frontends naming each backend; a backend no frontend names loses its ID."""
        for backend in backends:
            self.backend_refs[backend.name] += sign
            if self.backend_refs[backend.name] <= 0:
                del self.backend_refs[backend.name]
                self.backend_ids.pop(backend.name, None)

    # --- views ----------------------------------------------------------------------------------
    def all_pods(self) -> list:
        """The pods of the store (store mode; in kubeconfig mode the Kubernetes source has them)."""
        with self.lock:
            return [pod for objects in self.pods.values() for pod in objects.values()]

    # --- the cluster DNS's catalogue (apiary.agent.dns.Catalogue) in store mode; the slices also in
    # kubeconfig mode, where every EndpointSlice comes here --------------------------------------------
    def service(self, namespace: str, name: str) -> dict | None:
        with self.lock:
            return self.services.get(namespace, {}).get("%s%s/%s" % (SERVICES, namespace, name))

    def endpoint_slices(self, namespace: str, name: str) -> list:
        with self.lock:
            return [s for s in self.slices.get(namespace, {}).values() if service.slice_service(s) == name]

    def list(self) -> list:
        """`apiary service list`: ID, frontend, type, backends (by the maps, as Cilium shows them)."""
        with self.lock:
            return self.lb.list()
