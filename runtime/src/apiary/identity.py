"""Security identities, as in Cilium: a numeric id per distinct set of labels, the same on every node.

A label is `source:key=value` (`reserved:host` has no value). A pod's identity comes from its labels,
its namespace's labels, its service account and the cluster name (`pod_labels`). Ids 1-8 are
reserved (docs/datapath.md, "Reserved identities"); ids for label sets are allocated in etcd from
256 to 65535 (`IdentityAllocator`), under

    /apiary/identities/id/<id>                 {"id": <id>, "labels": [sorted labels]}
    /apiary/identities/labels/<labels_hash>    "<id>"

Both keys are created in one transaction that requires both to be absent, so a label set never gets
two ids and an id never gets two label sets, whichever nodes race.

How an id is picked: at random among 256-65535, not the lowest free one. Nodes allocating different
label sets at the same moment then rarely want the same id (with "lowest free" they would all want
it and all but one would retry, again and again); and an id that is released one day is not handed
out again at once, while other nodes may still have it in their ipcache and policy maps (Cilium
draws at random for the same reasons). When random draws keep colliding (a nearly full space) the
allocator lists the used ids and draws among the free ones.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from typing import Dict, Iterable, List, Optional

from .errors import UserError

RESERVED: Dict[int, str] = {
    1: "host",
    2: "world",
    3: "unmanaged",
    4: "health",
    5: "init",
    6: "remote-node",
    7: "kube-apiserver",
    8: "ingress",
}
RESERVED_LABELS: Dict[int, List[str]] = {i: ["reserved:" + name] for i, name in RESERVED.items()}
MIN_ID = 256
MAX_ID = 65535

PREFIX = "/apiary/identities/"
ID_PREFIX = PREFIX + "id/"
LABELS_PREFIX = PREFIX + "labels/"

# Label keys Cilium sets on every pod (pkg/k8s/apis/cilium.io constants).
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels"
POLICY_LABEL_PREFIX = "io.cilium.k8s.policy"
POLICY_CLUSTER_LABEL = POLICY_LABEL_PREFIX + ".cluster"
POLICY_SERVICEACCOUNT_LABEL = POLICY_LABEL_PREFIX + ".serviceaccount"

_SOURCE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(r"^%s(\.%s)*$" % (_DNS_LABEL, _DNS_LABEL))

# Cilium's default identity-relevant label filter (pkg/labelsfilter): a key is dropped when an
# "ignore" expression matches at its start, unless an "include" one matches a longer start.
_INCLUDE = [re.escape(POD_NAMESPACE_LABEL), re.escape(NAMESPACE_LABELS_PREFIX),
            re.escape("app.kubernetes.io"), re.escape(POLICY_CLUSTER_LABEL)]
_IGNORE = [r"io\.kubernetes", r"kubernetes\.io", re.escape("statefulset.kubernetes.io/pod-name"),
           re.escape("apps.kubernetes.io/pod-index"),
           re.escape("batch.kubernetes.io/job-completion-index"), r".*beta\.kubernetes\.io",
           r"k8s\.io", r"pod-template-generation", r"pod-template-hash",
           r"controller-revision-hash", r"annotation.*", r"etcd_node"]
_INCLUDE_RE = [re.compile(e) for e in _INCLUDE]
_IGNORE_RE = [re.compile(e) for e in _IGNORE]


class LabelError(UserError, ValueError):
    """A label (or label set) that is not valid; the message names it."""


class IdentityError(Exception):
    """The allocator could not allocate (the id space is full, or too much contention)."""


# ---- labels ---------------------------------------------------------------------------------

def parse_label(label: str):
    """(source, key, value) of `source:key=value` (value '' when there is no '=')."""
    if not isinstance(label, str):
        raise LabelError("label %r: not a string" % (label,))
    source, sep, rest = label.partition(":")
    if not sep:
        raise LabelError("label %r: no source (write source:key=value, e.g. k8s:role=frontend)"
                         % label)
    key, _, value = rest.partition("=")
    return source, key, value


def _check_key(label: str, key: str) -> None:
    if not key:
        raise LabelError("label %r: empty key" % label)
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            raise LabelError("label %r: key %r has an empty prefix before '/'" % (label, key))
        if len(prefix) > 253:
            raise LabelError("label %r: key prefix %r is longer than 253 characters"
                             % (label, prefix[:40] + "…"))
        if not _DNS_SUBDOMAIN.match(prefix):
            raise LabelError("label %r: key prefix %r is not a DNS subdomain (lower-case "
                             "alphanumerics, '-' and '.')" % (label, prefix))
    if not name:
        raise LabelError("label %r: key %r has an empty name" % (label, key))
    if len(name) > 63:
        raise LabelError("label %r: key name %r is longer than 63 characters" % (label, name))
    if not _NAME.match(name):
        raise LabelError("label %r: key name %r must be alphanumerics, '-', '_' or '.', starting "
                         "and ending with an alphanumeric" % (label, name))


def validate_label(label: str) -> str:
    """Check one label; returns it unchanged or raises LabelError naming it.

    Keys follow Kubernetes: an optional DNS-subdomain prefix (≤253) and '/', then a name of ≤63
    characters; values ≤63 characters of the same alphabet, or empty. Keys that Cilium derives
    from namespace labels (`io.cilium.k8s.namespace.labels.<namespace label key>`) are checked on
    the namespace label's own key, as Kubernetes checked it."""
    source, key, value = parse_label(label)
    if not _SOURCE.match(source):
        raise LabelError("label %r: source %r must be lower-case alphanumerics and '-'"
                         % (label, source))
    if source == "reserved":
        if key not in RESERVED.values() or value:
            raise LabelError("label %r: not a reserved label (reserved:%s)"
                             % (label, "|".join(RESERVED.values())))
        return label
    ns_prefix = NAMESPACE_LABELS_PREFIX + "."
    _check_key(label, key[len(ns_prefix):] if key.startswith(ns_prefix) else key)
    if len(value) > 63:
        raise LabelError("label %r: value is longer than 63 characters" % label)
    if value and not _NAME.match(value):
        raise LabelError("label %r: value %r must be alphanumerics, '-', '_' or '.', starting and "
                         "ending with an alphanumeric" % (label, value))
    return label


def normalize(labels: Iterable[str]) -> List[str]:
    """Validated, de-duplicated, sorted labels; one value per source:key."""
    if isinstance(labels, str):
        raise LabelError("labels %r: expected a list of labels, not one string" % labels)
    out = sorted(set(validate_label(label) for label in labels))
    if not out:
        raise LabelError("an identity needs at least one label")
    seen = {}
    for label in out:
        source, key, _ = parse_label(label)
        other = seen.setdefault((source, key), label)
        if other != label:
            raise LabelError("labels %r and %r: the same key twice" % (other, label))
    return out


def labels_hash(labels: Iterable[str]) -> str:
    """sha256 (hex) of the normalized labels as compact JSON: the key of the label-set index."""
    text = json.dumps(normalize(labels), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _identity_relevant(key: str) -> bool:
    """Cilium's default label filter for k8s labels (see _INCLUDE/_IGNORE)."""
    def longest(exprs, pick):
        lengths = [m.end() for m in (e.search(key) for e in exprs) if m and m.start() == 0]
        return pick(lengths) if lengths else 0
    ignored = longest(_IGNORE_RE, min)
    return ignored == 0 or longest(_INCLUDE_RE, max) > ignored


def pod_labels(pod_namespace: str, pod_labels: dict, namespace_labels: dict,
               service_account: str = "default", cluster: str = "default") -> List[str]:
    """The identity labels Cilium gives a pod, sorted.

    k8s:<key>=<value> per pod label (minus the ones Cilium's default filter drops, such as
    pod-template-hash), k8s:io.cilium.k8s.namespace.labels.<key>=<value> per namespace label,
    k8s:io.kubernetes.pod.namespace=<ns>, k8s:io.cilium.k8s.policy.serviceaccount=<sa> (none when
    sa is empty) and k8s:io.cilium.k8s.policy.cluster=<cluster>.

    As Cilium, pod labels under io.cilium.k8s.policy are dropped (a pod must not claim another
    service account); unlike Cilium, so are pod labels under io.cilium.k8s.namespace.labels (a pod
    must not claim its namespace's labels either)."""
    merged: Dict[str, str] = {}
    for key, value in (pod_labels or {}).items():
        if key.startswith(POLICY_LABEL_PREFIX) or key.startswith(NAMESPACE_LABELS_PREFIX):
            continue
        merged[key] = value
    for key, value in (namespace_labels or {}).items():
        merged["%s.%s" % (NAMESPACE_LABELS_PREFIX, key)] = value
    merged[POD_NAMESPACE_LABEL] = pod_namespace
    if service_account:
        merged[POLICY_SERVICEACCOUNT_LABEL] = service_account
    merged[POLICY_CLUSTER_LABEL] = cluster
    return normalize("k8s:%s=%s" % (key, "" if value is None else value)
                     for key, value in merged.items() if _identity_relevant(key))


def reserved_id(labels: Iterable[str]) -> Optional[int]:
    """The reserved id whose label set this is, else None."""
    labels = sorted(set(labels))
    for ident, reserved in RESERVED_LABELS.items():
        if labels == reserved:
            return ident
    return None


# ---- allocation -----------------------------------------------------------------------------

class IdentityAllocator:
    """Numeric identities for label sets, shared through etcd (an apiary.store.EtcdClient).

    Allocated identities never change, so answers are cached in the process."""

    RANDOM_TRIES = 8      # random draws before listing the used ids
    MAX_ATTEMPTS = 64

    def __init__(self, client, rng: Optional[random.Random] = None):
        self.client = client
        self._rng = rng or random.SystemRandom()
        self._by_hash: Dict[str, int] = {}
        self._by_id: Dict[int, List[str]] = {}
        self._lock = threading.Lock()

    def _remember(self, ident: int, labels: List[str], digest: str) -> int:
        with self._lock:
            self._by_hash[digest] = ident
            self._by_id[ident] = labels
        return ident

    def lookup(self, labels: Iterable[str]) -> Optional[int]:
        """The id of this label set if one is allocated (or reserved), without allocating."""
        labels = normalize(labels)
        ident = reserved_id(labels)
        if ident is not None:
            return ident
        digest = labels_hash(labels)
        if digest in self._by_hash:
            return self._by_hash[digest]
        kv = self.client.get(LABELS_PREFIX + digest)
        return self._remember(int(json.loads(kv.value)), labels, digest) if kv else None

    def allocate(self, labels: Iterable[str]) -> int:
        """The id of this label set, allocating one if it has none yet (same set, same id, on
        every node)."""
        labels = normalize(labels)
        ident = reserved_id(labels)
        if ident is not None:
            return ident
        if any(label.startswith("reserved:") for label in labels):
            raise LabelError("labels %s: reserved labels only make up the reserved identities"
                             % ", ".join(labels))
        digest = labels_hash(labels)
        if digest in self._by_hash:
            return self._by_hash[digest]
        labels_key = LABELS_PREFIX + digest
        for attempt in range(self.MAX_ATTEMPTS):
            candidate = self._candidate(attempt)
            id_key = ID_PREFIX + str(candidate)
            value = json.dumps({"id": candidate, "labels": labels})
            out = self.client.txn(
                [{"key": id_key, "target": "CREATE", "result": "EQUAL", "create_revision": 0},
                 {"key": labels_key, "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
                [{"request_put": {"key": id_key, "value": value}},
                 {"request_put": {"key": labels_key, "value": json.dumps(candidate)}}],
                [{"request_range": {"key": labels_key}}])
            if out["succeeded"]:
                return self._remember(candidate, labels, digest)
            kvs = out["responses"][0]["response_range"].get("kvs") or []
            if kvs:  # the label set has an id already (maybe just given by another node)
                return self._remember(int(json.loads(kvs[0]["value"])), labels, digest)
            # else the id was taken by another label set: draw again
        raise IdentityError("labels %s: no identity allocated after %d attempts"
                            % (", ".join(labels), self.MAX_ATTEMPTS))

    def _candidate(self, attempt: int) -> int:
        if attempt < self.RANDOM_TRIES:
            return self._rng.randint(MIN_ID, MAX_ID)
        kvs, _ = self.client.get_prefix(ID_PREFIX)
        used = set()
        for kv in kvs:
            try:
                used.add(int(kv.key[len(ID_PREFIX):]))
            except ValueError:
                continue
        free = MAX_ID - MIN_ID + 1 - len(used & set(range(MIN_ID, MAX_ID + 1)))
        if free <= 0:
            raise IdentityError("no free identity left in %d-%d" % (MIN_ID, MAX_ID))
        while True:  # at least one id is free: draw until one is
            ident = self._rng.randint(MIN_ID, MAX_ID)
            if ident not in used:
                return ident

    def get(self, ident: int) -> Optional[List[str]]:
        """The labels of an id; None when it is not allocated. Reserved ids need no etcd."""
        ident = int(ident)
        if ident in RESERVED_LABELS:
            return list(RESERVED_LABELS[ident])
        if not MIN_ID <= ident <= MAX_ID:
            return None
        if ident in self._by_id:
            return list(self._by_id[ident])
        kv = self.client.get(ID_PREFIX + str(ident))
        if kv is None:
            return None
        labels = json.loads(kv.value)["labels"]
        self._remember(ident, labels, labels_hash(labels))
        return list(labels)

    def list(self) -> List[dict]:
        """Every identity, reserved and allocated: [{id, labels, reserved}] sorted by id."""
        out = [{"id": i, "labels": list(labels), "reserved": True}
               for i, labels in RESERVED_LABELS.items()]
        kvs, _ = self.client.get_prefix(ID_PREFIX)
        for kv in kvs:
            doc = json.loads(kv.value)
            out.append({"id": int(doc["id"]), "labels": list(doc["labels"]), "reserved": False})
        return sorted(out, key=lambda item: item["id"])
