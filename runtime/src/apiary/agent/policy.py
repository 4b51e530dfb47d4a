"""The agent's policy repository: every policy object of the cluster (from the store, or from the
Kubernetes API in kubeconfig mode) turned into the apiary_policy entries of this node's endpoints.

- The objects are CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and NetworkPolicy under
  /apiary/objects/<plural>/ (written by `apiary lab apply`, `apiary policy import` or the
  network_policy module, all of which validate first; in kubeconfig mode the Kubernetes source
  passes the API's objects under the same keys). apiary.policy translates them to Cilium's
  rules and computes an endpoint's entries from its labels and the identities the cluster knows.
- Identities: the reserved ones, every allocated one (/apiary/identities/id/), and node-local CIDR
  identities (from 2**24, as Cilium's local scope) for the CIDRs the rules name; those are put in
  the ipcache through the store sync, so a packet from an address inside a CIDR carries its identity.
- Changes are differences: after a change the endpoints it concerns are computed again (those the
  changed policy selects before or after; all of them when identities or named ports change;
  endpoints with the same labels and ports share one computation) and only entries that differ are
  written, new ones before stale ones are removed. Counters of unchanged entries are kept.
- Until the first full read of the store, nothing is written: a restarted agent leaves the map as it
  is (the datapath keeps enforcing the last policy) and starts from what the map holds.
- Sources: in store mode the store holds everything. In kubeconfig mode the objects (policies, pods)
  come from the Kubernetes API (agent/kubernetes.py, source "kubernetes") and the identities from the
  store: each source's full read replaces only its part, nothing is written until every source has
  been read once, and each source's revisions are counted apart (an etcd revision and a count of
  Kubernetes events cannot be compared).
"""
from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time

from apiary import identity as identities
import apiary.policy as policy_lib

log = logging.getLogger("apiary.agent.policy")

OBJECTS = "/apiary/objects/"
POLICY_PREFIXES = {"%s%s/" % (OBJECTS, plural): kind for kind, (_, plural, _) in policy_lib.KINDS.items()}
PODS = OBJECTS + "pods/"
CIDR_IDENTITY_BASE = 1 << 24
OBJECTS_PART, IDENTITIES_PART = "objects", "identities"
STORE_ONLY = {"store": (OBJECTS_PART, IDENTITIES_PART)}
PROTOCOLS = {0: "ANY", 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}


def is_policy_key(key: str) -> bool:
    return any(key.startswith(prefix) for prefix in POLICY_PREFIXES)


def _part(key: str) -> str | None:
    """Which part of the repository a key feeds: policies and pods are objects."""
    if is_policy_key(key) or key.startswith(PODS):
        return OBJECTS_PART
    if key.startswith(identities.ID_PREFIX):
        return IDENTITIES_PART
    return None


def decode(value):
    """A value as the store has it (JSON text) or as the Kubernetes source passes it (a dict)."""
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _container_ports(pod: dict) -> dict:
    """Named container ports of a pod: {name: {(port, protocol number)}}."""
    numbers = {"TCP": 6, "UDP": 17, "SCTP": 132}
    ports = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") and port.get("containerPort"):
                ports.setdefault(port["name"], set()).add(
                    (int(port["containerPort"]), numbers.get(port.get("protocol", "TCP"), 6)))
    return ports


def entry_key(row: dict) -> tuple:
    return row["identity"], row["egress"], row["protocol"], row["port"], row["port_prefix"]


class PolicyManager:
    def __init__(self, datapath, sync=None, sources=None):
        self.datapath = datapath  # apiary.agent.datapath.Datapath
        self.sync = sync  # StoreSync: takes the CIDR identities into the ipcache
        # Source name -> the parts its full read replaces (module docstring).
        self.sources = dict(sources or STORE_ONLY)
        self.loaded_sources: set = set()
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.policies: dict[str, list] = {}  # store key -> rules
        self.cluster_identities: dict[int, list] = {}
        self.cidr_identities: dict[str, int] = {}  # prefix -> local identity
        self.pod_ports: dict[tuple, dict] = {}  # (namespace, pod) -> named ports
        self.endpoints: dict[int, object] = {}  # lxc id -> Endpoint
        self.applied: dict[int, dict] = {}  # lxc id -> {entry key: deny}
        self.computed: dict[int, object] = {}  # lxc id -> EndpointPolicy
        self.revision = 1  # Cilium's policy revision: +1 per change of the rules
        # Source -> the last revision of it whose events were handled: the store's etcd revision, the
        # Kubernetes source's count of applied events (agent/kubernetes.py).
        self.revisions = {name: 0 for name in self.sources}
        self.loaded = False
        # Something with observe(seconds) (apiary.observe.metrics.AgentMetrics.policy_delay), or None.
        self.metrics = None

    # --- identities ---------------------------------------------------------------------------
    def identities(self) -> dict:
        known = {ident: list(labels) for ident, labels in identities.RESERVED_LABELS.items()}
        known.update(self.cluster_identities)
        for prefix, ident in self.cidr_identities.items():
            known[ident] = policy_lib.cidr_identity_labels(prefix)
        return known

    def identity_labels(self, ident: int) -> list:
        if ident == 0:
            return ["reserved:unknown"]
        return self.identities().get(ident) or ["unknown identity %d" % ident]

    def _update_cidr_identities(self) -> bool:
        """Node-local identities for the CIDRs the rules name; True when they changed."""
        rules = [rule for rs in self.policies.values() for rule in rs]
        wanted = sorted(policy_lib.cidr_prefixes(rules), key=ipaddress.ip_network)
        kept = {p: i for p, i in self.cidr_identities.items() if p in wanted}
        used = set(kept.values())
        for prefix in wanted:
            if prefix not in kept:
                ident = CIDR_IDENTITY_BASE + 1
                while ident in used:
                    ident += 1
                kept[prefix] = ident
                used.add(ident)
        changed = kept != self.cidr_identities
        self.cidr_identities = kept
        if self.sync is not None:
            self.sync.set_local_prefixes(dict(kept))
        return changed

    # --- the store ----------------------------------------------------------------------------
    def load(self, kvs: list, revision: int, source: str = "store") -> None:
        """A full read of one source (start, or a broken watch): the parts it owns are replaced."""
        parts = self.sources[source]
        with self.lock:
            policies, ids, pods = {}, {}, {}
            for kv in kvs:
                if _part(kv.key) in parts:
                    self._absorb(kv.key, kv.value, policies, ids, pods)
            if OBJECTS_PART in parts:
                if policies != self.policies:
                    self.revision += 1
                self.policies, self.pod_ports = policies, pods
            if IDENTITIES_PART in parts:
                self.cluster_identities = ids
            self.loaded_sources.add(source)
            self.loaded = self.loaded_sources == set(self.sources)
            self._update_cidr_identities()
            if self.loaded:
                self.regenerate()
            self.revisions[source] = revision
            self.changed.notify_all()

    @staticmethod
    def _absorb(key: str, value: str | None, policies: dict, ids: dict, pods: dict) -> bool:
        """Take one key (value None: deleted) into the dicts; False when it is none of ours."""
        if is_policy_key(key):
            if value is None:
                policies.pop(key, None)
            else:
                try:
                    policies[key] = policy_lib.to_rules(decode(value))
                except Exception as exc:  # noqa: BLE001 - one bad object must not stop the rest
                    log.error("policy %s: not valid, ignored (the previous version, if any, is dropped): %s",
                              key, exc)
                    policies.pop(key, None)
            return True
        if key.startswith(identities.ID_PREFIX):
            ident = int(key[len(identities.ID_PREFIX):])
            if value is None:
                ids.pop(ident, None)
            else:
                ids[ident] = decode(value)["labels"]
            return True
        if key.startswith(PODS):
            namespace, name = key[len(PODS):].split("/", 1)
            ports = _container_ports(decode(value)) if value is not None else {}
            if ports:
                pods[(namespace, name)] = ports
            else:
                pods.pop((namespace, name), None)
            return True
        return False

    def handle(self, key: str, value, revision: int, source: str = "store") -> bool:
        """One event of a source (value: JSON text or a dict; None: deleted); True when it was one of ours."""
        if _part(key) not in self.sources[source]:
            return False  # e.g. the lab's objects in the store while objects come from the Kubernetes API
        arrived = time.monotonic()
        with self.lock:
            before_policies = self.policies.get(key)
            before_ports = dict(self.pod_ports)
            if not self._absorb(key, value, self.policies, self.cluster_identities, self.pod_ports):
                return False
            policy_changed = is_policy_key(key) and self.policies.get(key) != before_policies
            identities_changed = key.startswith(identities.ID_PREFIX)
            if policy_changed:
                self.revision += 1
                identities_changed |= self._update_cidr_identities()
            if self.loaded and (identities_changed or self.pod_ports != before_ports):
                self.regenerate()
            elif self.loaded and policy_changed:
                # An endpoint's entries come only from the rules selecting it: the others stay.
                changed_rules = (before_policies or []) + (self.policies.get(key) or [])
                self.regenerate([ep for ep in self.endpoints.values() if policy_lib.selected(changed_rules, ep.labels)])
            if policy_changed and self.loaded and self.metrics is not None:
                # Cilium's policy_implementation_delay: the change arrived -> the datapath has it.
                self.metrics.observe(time.monotonic() - arrived)
            self.revisions[source] = max(self.revisions[source], revision)
            self.changed.notify_all()
            return True

    def wait_for(self, revision: int, timeout: float, source: str = "store") -> bool:
        """Block until the source's events up to `revision` are in the datapath."""
        with self.lock:
            return self.changed.wait_for(lambda: self.revisions[source] >= revision, timeout)

    # --- endpoints ----------------------------------------------------------------------------
    def first_sync(self) -> None:
        """What the map holds now (a restarted agent compares against it)."""
        with self.lock:
            self.applied = {}
            for row in self.datapath.policy.list():
                self.applied.setdefault(row["lxc_id"], {})[entry_key(row)] = row["deny"]

    def endpoint_added(self, ep) -> None:
        """Before the endpoint is in apiary_lxc: its entries are written first (fail closed). Also when
        its labels changed: the entries of the new labels are written, then the stale ones removed."""
        with self.lock:
            self.endpoints[ep.id] = ep
            if self.loaded:
                self._apply(ep, self._compute(ep, {}))

    def endpoint_removed(self, ep) -> None:
        with self.lock:
            self.endpoints.pop(ep.id, None)
            self.computed.pop(ep.id, None)
            for key in self.applied.pop(ep.id, {}):
                self.datapath.policy.delete(ep.id, *key)

    def regenerate(self, endpoints=None) -> None:
        """Compute again and write the differences: every endpoint, or only those given."""
        cache = {}
        for ep in list(self.endpoints.values()) if endpoints is None else endpoints:
            self._apply(ep, self._compute(ep, cache))

    def _compute(self, ep, cache: dict):
        ingress_ports = self.pod_ports.get((ep.pod_namespace, ep.pod_name), {})
        signature = (tuple(sorted(ep.labels)), json.dumps(sorted((k, sorted(v)) for k, v in ingress_ports.items())))
        if signature not in cache:
            egress_ports = {}
            for ports in self.pod_ports.values():
                for name, values in ports.items():
                    egress_ports.setdefault(name, set()).update(values)
            cache[signature] = policy_lib.compute(
                [rule for rs in self.policies.values() for rule in rs], list(ep.labels), self.identities(),
                ingress_named_ports=ingress_ports, egress_named_ports=egress_ports)
        return cache[signature]

    def _apply(self, ep, result) -> None:
        want = {(k.identity, k.egress, k.protocol, k.port, k.port_prefix): v.deny for k, v in result.entries.items()}
        have = self.applied.setdefault(ep.id, {})
        for key, deny in want.items():
            if have.get(key) != deny:
                self.datapath.policy.set(ep.id, *key, deny=deny)
                have[key] = deny
        for key in [k for k in have if k not in want]:
            self.datapath.policy.delete(ep.id, *key)
            del have[key]
        self.computed[ep.id] = result

    # --- views --------------------------------------------------------------------------------
    def enforcement(self, endpoint_id: int) -> tuple:
        result = self.computed.get(endpoint_id)
        if result is None:
            return "Unknown", "Unknown"
        return tuple("Enabled" if on else "Disabled" for on in (result.ingress_enforced, result.egress_enforced))

    def rules(self) -> dict:
        with self.lock:
            ordered = [rule for key in sorted(self.policies) for rule in self.policies[key]]
            return {"policy": ordered, "revision": self.revision}

    def bpf_policy(self, endpoint_id: int) -> list:
        """The endpoint's entries as `cilium bpf policy get` shows them, with the datapath's counters."""
        rows = []
        for row in self.datapath.policy.list(endpoint_id):
            rows.append({
                "policy": "Deny" if row["deny"] else "Allow",
                "direction": "Egress" if row["egress"] else "Ingress",
                "identity": row["identity"], "labels": self.identity_labels(row["identity"]),
                "port": port_text(row["protocol"], row["port"], row["port_prefix"]),
                "bytes": row["bytes"], "packets": row["packets"],
            })
        return rows


def port_text(protocol: int, port: int, prefix: int) -> str:
    """ANY, 80/TCP, 7000-7001/TCP, 8/ICMP, ANY/UDP."""
    name = PROTOCOLS.get(protocol, str(protocol))
    if protocol == 0:
        return "ANY"
    if prefix == 0:
        return "ANY/%s" % name
    last = port + (1 << (16 - prefix)) - 1
    return "%d/%s" % (port, name) if last == port else "%d-%d/%s" % (port, last, name)
