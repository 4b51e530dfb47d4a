"""Endpoints: the pods of this node as the datapath knows them.

An endpoint is created by `apiary-cni` ADD once the pod's veth exists: the agent derives the
pod's security identity from its labels and its namespace's (a label source: the store, where the
lab writes its objects, or in kubeconfig mode the Kubernetes API, agent/kubernetes.py), writes the
endpoint into `apiary_lxc`, attaches `from_container`/`to_container` to the host side of the veth,
and publishes the pod's IP in the cluster-wide ipcache. Each endpoint is also kept as
<state dir>/endpoints/<id>.json so that a restarted agent restores it without touching the datapath
of running pods.

When a running pod's or namespace's labels change, `update_labels` gives its endpoints the identity
of the new labels (its policy entries, apiary_lxc, the ipcache here and in the store), so a pod
relabelled out of a policy's peers loses what they were allowed, and one relabelled into them gains it.
"""
from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, field

from apiary import identity as identities
from apiary import ip
from apiary.agent import state

log = logging.getLogger("apiary.agent.endpoints")

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


class StoreLabels:
    """The label source of store mode: the lab's pods and namespaces under /apiary/objects/.

    A label source has wait_for_pod(namespace, name) (called before the endpoint lock is taken)
    and pod_labels(namespace, name) -> (pod labels, namespace labels, service account) or None
    when there is no such pod; agent/kubernetes.py's KubernetesSource is the other one."""

    def __init__(self, store):
        self.store = store

    def wait_for_pod(self, namespace: str, name: str) -> None:
        """The lab writes a pod before it calls CNI: nothing to wait for."""

    def pod_labels(self, namespace: str, name: str):
        pod = self._object("/apiary/objects/pods/%s/%s" % (namespace, name)) if name else None
        ns = self._object("/apiary/objects/namespaces/_/%s" % namespace)
        # A pod the lab does not know gets no labels of its own (what the lab's tests expect); the
        # lab's pods use the default service account.
        return (((pod or {}).get("metadata") or {}).get("labels") or {},
                ((ns or {}).get("metadata") or {}).get("labels") or {}, "default")

    def _object(self, key: str):
        kv = self.store.get(key)
        return json.loads(kv.value) if kv else None


class EndpointManager:
    def __init__(self, config, store, datapath, node_ip: str, policy=None, labels=None):
        self.config = config
        self.policy = policy  # PolicyManager: writes an endpoint's policy before the endpoint exists
        self.labels = labels or StoreLabels(store)  # where pods' and namespaces' labels come from
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
        namespace = request.get("pod_namespace") or "default"
        pod_name = request.get("pod_name") or ""
        # Outside the lock: a label change of another pod waits for the lock, and the source's
        # cache may be a moment behind the kubelet, which calls CNI right after the pod is bound.
        self.labels.wait_for_pod(namespace, pod_name)
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
            # Read under the lock: a label change arriving meanwhile is applied after this endpoint exists.
            labels = self._identity_labels(namespace, pod_name)
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

    # --- label changes -----------------------------------------------------------------------
    def update_labels(self, namespace: str | None = None, pod_name: str | None = None) -> dict:
        """Give the endpoints of one pod (or of a namespace, or all: None) the identity of their
        current labels. Returns {"changed": [ids], "failed": [ids]} (a failed one keeps its identity
        and is tried again by the next call)."""
        changed, failed = [], []
        with self.lock:
            for ep in list(self.endpoints.values()):
                if (namespace is not None and ep.pod_namespace != namespace) or \
                        (pod_name is not None and ep.pod_name != pod_name):
                    continue
                try:
                    labels = self._identity_labels(ep.pod_namespace, ep.pod_name)
                    if labels == ep.labels:
                        continue
                    identity = self.allocator.allocate(labels)
                except Exception as exc:  # noqa: BLE001 - e.g. etcd unreachable: keep the old identity, retry later
                    if isinstance(exc, EndpointError) and exc.status == 404:
                        continue  # the pod is gone: CNI DEL removes its endpoint
                    log.warning("endpoint %d (%s/%s): identity not updated: %s", ep.id, ep.pod_namespace,
                                ep.pod_name, exc)
                    failed.append(ep.id)
                    continue
                old = ep.labels, ep.identity
                ep.labels, ep.identity = labels, identity
                try:
                    # As at ADD: its policy for the new labels first, then apiary_lxc and the ipcache.
                    self._program(ep)
                    state.write(self._path(ep.id), asdict(ep))
                except Exception as exc:  # noqa: BLE001 - the next call programs it all again
                    ep.labels, ep.identity = old
                    log.warning("endpoint %d (%s/%s): identity %d not fully applied: %s", ep.id,
                                ep.pod_namespace, ep.pod_name, identity, exc)
                    failed.append(ep.id)
                    continue
                log.info("endpoint %d (%s/%s): identity %d -> %d", ep.id, ep.pod_namespace, ep.pod_name,
                         old[1], identity)
                changed.append(ep.id)
        return {"changed": changed, "failed": failed}

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
    def _identity_labels(self, namespace: str, pod_name: str) -> list:
        """The identity labels of a pod from the label source (EndpointError when it cannot say)."""
        try:
            found = self.labels.pod_labels(namespace, pod_name)
        except Exception as exc:  # noqa: BLE001 - e.g. the API server is unreachable: try again later
            raise EndpointError("pod %s/%s: cannot read its labels: %s" % (namespace, pod_name, exc), 503) from exc
        if found is None:
            raise EndpointError("pod %s/%s: not found in the Kubernetes API" % (namespace, pod_name), 404)
        pod_labels, ns_labels, service_account = found
        ns_labels = dict(ns_labels)
        # Kubernetes labels every namespace with its own name.
        ns_labels.setdefault("kubernetes.io/metadata.name", namespace)
        return identities.pod_labels(namespace, pod_labels, ns_labels, service_account=service_account,
                                     cluster=self.config.cluster_name)

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
