"""The lab's objects in the store (etcd), as docs/datapath.md "The store" says:

    /apiary/objects/<kind plural>/<namespace>/<name>     e.g. /apiary/objects/pods/default/web
    /apiary/objects/namespaces/_/<name>                  (cluster-scoped objects use "_")

Values are the objects as JSON (metadata, spec, status). The store is reachable only inside the
lab's network namespaces: `connect()` moves the calling process into the first etcd node's
namespace (the CLI is single-threaded and never needs the root namespace afterwards: pod
namespaces are reached with nsenter/setns by path).
"""
from __future__ import annotations

import json

from apiary import netns
from apiary.errors import UserError
from apiary.lab import objects

PREFIX = "/apiary/objects/"


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

    def put(self, obj: dict) -> None:
        meta = obj["metadata"]
        body = {k: v for k, v in obj.items()}
        body["metadata"] = {k: v for k, v in meta.items() if k != "resourceVersion"}
        self.client.put(key(obj["kind"], meta.get("namespace"), meta["name"]),
                        json.dumps(body, sort_keys=True))

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
    return ObjectStore(EtcdClient(endpoints))
