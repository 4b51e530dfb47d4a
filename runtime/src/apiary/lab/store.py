"""The lab's objects in the store (etcd), as docs/datapath.md "The store" says:

    /apiary/objects/<kind plural>/<namespace>/<name>     e.g. /apiary/objects/pods/default/web
    /apiary/objects/namespaces/_/<name>                  (cluster-scoped objects use "_")

Values are the objects as JSON (metadata, spec, status). The store is reachable only inside the
lab's network namespaces: `connect()` moves the calling process into the first etcd node's
namespace (the CLI is single-threaded and never needs the root namespace afterwards: pod
namespaces are reached with nsenter/setns by path).
"""
from __future__ import annotations

import copy
import datetime
import json
import uuid

from apiary import netns
from apiary.errors import UserError
from apiary.lab import objects

PREFIX = "/apiary/objects/"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_metadata(obj: dict, existing: dict | None) -> dict:
    """The metadata to store for an applied object: the manifest as applied in the last-applied
    annotation (as kubectl apply keeps it), uid and creation time kept from the stored object."""
    meta = copy.deepcopy(obj["metadata"])
    annotations = dict(meta.get("annotations") or {})
    annotations[LAST_APPLIED] = json.dumps(obj, sort_keys=True)
    meta["annotations"] = annotations
    old = (existing or {}).get("metadata") or {}
    meta["uid"] = old.get("uid") or str(uuid.uuid4())
    meta["creationTimestamp"] = old.get("creationTimestamp") or now()
    if old.get("ownerReferences"):
        meta["ownerReferences"] = old["ownerReferences"]
    return meta


def last_applied(existing: dict):
    """The manifest a stored object was last applied from (None if unknown)."""
    text = ((existing.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def key(kind: str, namespace: str | None, name: str) -> str:
    return "%s%s/%s/%s" % (PREFIX, objects.plural(kind), namespace or "_", name)


class ObjectStore:
    """Objects by kind/namespace/name on top of an EtcdClient-like client (get, get_prefix, put,
    delete)."""

    def __init__(self, client):
        self.client = client

    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        kv = self.client.get(key(kind, namespace, name))
        return self._decode(kv) if kv else None

    def list(self, kind: str, namespace: str | None = None) -> list:
        prefix = "%s%s/" % (PREFIX, objects.plural(kind))
        if namespace is not None and objects.KINDS[kind][2]:
            prefix += namespace + "/"
        kvs, _ = self.client.get_prefix(prefix)
        return [self._decode(kv) for kv in kvs]

    def put(self, obj: dict) -> int:
        """Store the object; returns the store's revision after the write."""
        meta = obj["metadata"]
        body = {k: v for k, v in obj.items()}
        body["metadata"] = {k: v for k, v in meta.items() if k != "resourceVersion"}
        return self.client.put(key(obj["kind"], meta.get("namespace"), meta["name"]),
                               json.dumps(body, sort_keys=True))

    def apply(self, obj: dict, check: bool = False) -> tuple:
        """kubectl apply of a checked, normalized object that has no controller behind it (a policy,
        a namespace): ("created" | "configured" | "unchanged", the stored object before, after, revision).
        With check=True nothing is written."""
        meta = obj["metadata"]
        existing = self.get(obj["kind"], meta.get("namespace"), meta["name"])
        if existing is not None and last_applied(existing) == obj:
            return "unchanged", existing, existing, 0
        stored = copy.deepcopy(obj)
        stored["metadata"] = new_metadata(obj, existing)
        revision = 0 if check else self.put(stored)
        return ("created" if existing is None else "configured"), existing, stored, revision

    def delete(self, kind: str, namespace: str | None, name: str) -> bool:
        return bool(self.client.delete(key(kind, namespace, name)))

    @staticmethod
    def _decode(kv) -> dict:
        obj = json.loads(kv.value)
        if getattr(kv, "mod_revision", 0):
            obj.setdefault("metadata", {})["resourceVersion"] = str(kv.mod_revision)
        return obj


def store_node(lab: dict) -> dict:
    for node in lab.get("nodes", []):
        if "etcd" in node.get("groups", []):
            return node
    raise UserError("lab.json names no etcd node (no node is in the etcd group)")


def connect(lab: dict) -> ObjectStore:
    """Enter the first etcd node's network namespace and return the store client."""
    from apiary.store.etcd import EtcdClient

    endpoints = lab.get("etcd_endpoints") or []
    if not endpoints:
        raise UserError("lab.json has no etcd_endpoints: is the lab up (scripts/lab-up.sh)?")
    node = store_node(lab)
    if not netns.exists(node["netns"]):
        raise UserError("the store's node %s has no network namespace %s: is the lab up?"
                        % (node["name"], node["netns"]))
    netns.enter(node["netns"])
    return ObjectStore(EtcdClient(endpoints, **(lab.get("etcd_tls") or {})))
