"""Reporting back on Kubernetes objects: Events, and the `Valid` condition of Cilium policies.

    recorder = EventRecorder(api, host="node1")
    recorder.record(cnp, "PolicyNotEnforced", "spec.egress[0].toFQDNs: DNS-based rules are not supported")
    set_policy_condition(api, cnp, False, "NotEnforceable", "spec.egress[0].toFQDNs: ...")

`kubectl describe` shows the Event; `kubectl get cnp` shows the condition in its VALID column.
Both are written only when something changed: the same Event again raises its count, an unchanged
condition is not written at all (an agent that re-reads its policies does not flood the API).
"""
from __future__ import annotations

import datetime
import json
import threading
import time

import kubernetes.client
from kubernetes.client.exceptions import ApiException

POLICY_PLURALS = {"CiliumNetworkPolicy": "ciliumnetworkpolicies",
                  "CiliumClusterwideNetworkPolicy": "ciliumclusterwidenetworkpolicies"}
CONFLICT_ATTEMPTS = 5


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Records core/v1 Events on objects, as client-go's recorder does (one per object, reason and
    message; a repeat raises the count and lastTimestamp)."""

    def __init__(self, api, component: str = "apiary-agent", host: str | None = None):
        self.core = kubernetes.client.CoreV1Api(api)
        self.component, self.host = component, host
        self.recorded: dict[tuple, dict] = {}  # (uid, type, reason, message) -> the Event written
        self.lock = threading.Lock()

    def record(self, obj: dict, reason: str, message: str, type: str = "Warning") -> dict:
        """Record an Event about `obj` (a dict from the API); returns the Event as the API server has it."""
        if type not in ("Normal", "Warning"):
            raise ValueError("event type must be Normal or Warning, not %r" % type)
        meta = obj["metadata"]
        key = (meta.get("uid"), type, reason, message)
        with self.lock:
            previous = self.recorded.get(key)
            if previous is not None:
                event = self._repeat(previous)
                if event is not None:
                    self.recorded[key] = event
                    return event
            event = self._create(obj, reason, message, type)
            self.recorded[key] = event
            return event

    def _create(self, obj: dict, reason: str, message: str, type: str) -> dict:
        meta = obj["metadata"]
        # Events of cluster-scoped objects (nodes, CCNPs) live in "default", as client-go puts them.
        namespace = meta.get("namespace") or "default"
        stamp = now()
        involved = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
                    "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}
        if meta.get("namespace"):
            involved["namespace"] = meta["namespace"]
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "%s.%x" % (meta["name"], time.time_ns()), "namespace": namespace},
            "involvedObject": involved, "reason": reason, "message": message, "type": type,
            "source": {"component": self.component, **({"host": self.host} if self.host else {})},
            "reportingComponent": self.component, "reportingInstance": self.host or "",
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        return json.loads(self.core.create_namespaced_event(namespace, body, _preload_content=False).data)

    def _repeat(self, event: dict) -> dict | None:
        """Count one more occurrence of `event`; None when it is gone (Events expire after an hour)."""
        patch = {"count": int(event.get("count") or 1) + 1, "lastTimestamp": now()}
        try:
            return json.loads(self.core.patch_namespaced_event(
                event["metadata"]["name"], event["metadata"]["namespace"], patch, _preload_content=False).data)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


def set_policy_condition(api, policy: dict, valid: bool, reason: str, message: str,
                         condition_type: str = "Valid") -> bool:
    """Set status.conditions[type=Valid] of a CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy
    through its status subresource. Returns False when it already said the same (nothing written).

    The status is read fresh and written with its resourceVersion, so a condition someone else set
    at the same time is kept (a conflict is read again), never overwritten."""
    custom = kubernetes.client.CustomObjectsApi(api)
    plural = POLICY_PLURALS[policy["kind"]]
    name, namespace = policy["metadata"]["name"], policy["metadata"].get("namespace")
    where = ("cilium.io", "v2", namespace, plural, name) if namespace else ("cilium.io", "v2", plural, name)
    get = custom.get_namespaced_custom_object_status if namespace else custom.get_cluster_custom_object_status
    patch = custom.patch_namespaced_custom_object_status if namespace else custom.patch_cluster_custom_object_status
    status = "True" if valid else "False"
    for _ in range(CONFLICT_ATTEMPTS):
        current = json.loads(get(*where, _preload_content=False).data)
        conditions = (current.get("status") or {}).get("conditions") or []
        old = next((c for c in conditions if c.get("type") == condition_type), None)
        if old and (old.get("status"), old.get("reason"), old.get("message")) == (status, reason, message):
            return False
        condition = {"type": condition_type, "status": status, "reason": reason, "message": message,
                     # The time it last changed between True and False, as for every condition.
                     "lastTransitionTime": old["lastTransitionTime"] if old and old.get("status") == status
                     and old.get("lastTransitionTime") else now()}
        body = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                "status": {"conditions": [c for c in conditions if c.get("type") != condition_type] + [condition]}}
        try:
            patch(*where, body, _preload_content=False)
            return True
        except ApiException as exc:
            if exc.status != 409:
                raise
    raise RuntimeError("%s %s: status kept changing (%d conflicts)" % (policy["kind"], name, CONFLICT_ATTEMPTS))
