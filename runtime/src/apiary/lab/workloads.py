"""The lab's API server, scheduler and controllers, run by `apiary lab apply|get|delete|exec`.

- apply: the whole file is checked first (apiary.lab.objects, plus what needs the store: the
  namespace exists, a Pod's spec is unchanged); nothing is applied when anything is wrong.
  Namespaces are applied first, then the rest in file order. The manifest as applied is kept in
  the `kubectl.kubernetes.io/last-applied-configuration` annotation; the same manifest again is
  `unchanged`.
- scheduler: spec.nodeName if set (a lab node), else the kube_node with the fewest pods.
- Deployment controller (runs on apply and when one of its pods is deleted): `replicas` pods
  `<name>-<pod-template-hash>-<5 random>` labelled pod-template-hash; a changed template gets a
  new hash, new pods are started, then the old ones are deleted.
- A pod whose setup failed is kept in the store as phase Failed with the reason
  (FailedCreatePodSandBox, StartError) and message; the next apply retries it (a Deployment
  replaces it), delete removes it.
"""
from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import random
import sys
import uuid

from apiary import service
from apiary.errors import UserError
from apiary.lab import kubelet as kubelet_mod
from apiary.lab import objects
from apiary.lab import store as lab_store

SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' rand.SafeEncodeString alphabet


def template_hash(template: dict) -> str:
    """10 characters from the pod template's content (stable for the same template)."""
    digest = int.from_bytes(hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()[:8], "big")
    out = ""
    for _ in range(10):
        digest, rest = divmod(digest, len(SAFE_ALPHABET))
        out += SAFE_ALPHABET[rest]
    return out


def random_suffix(n: int = 5) -> str:
    return "".join(random.choice(SAFE_ALPHABET) for _ in range(n))


def _not_found(kind: str, name: str) -> str:
    plural = objects.plural(kind) + (".apps" if kind == "Deployment" else "")
    return "Error from server (NotFound): %s %s not found" % (plural, json.dumps(name))


def owner_uid(pod: dict) -> str | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "Deployment" and ref.get("controller"):
            return ref.get("uid")
    return None


def needs_setup(pod: dict) -> bool:
    """A pod whose setup failed (kept as Failed with the reason) or never finished (an apply that was
    interrupted: still Pending; apply holds the lock, so no other apply is setting it up)."""
    status = pod.get("status") or {}
    return status.get("reason") in ("FailedCreatePodSandBox", "StartError") or status.get("phase") in (None, "Pending")


class Cluster:
    def __init__(self, lab: dict, lab_root: str, store, out=None, err=None, kubelet=None):
        self.lab = lab
        self.lab_root = lab_root
        self.store = store
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.kubelet = kubelet or kubelet_mod.Kubelet(lab, lab_root)
        self.failures = []

    # --- helpers -------------------------------------------------------------------------------

    @property
    def node_names(self) -> list:
        return [n["name"] for n in self.lab.get("nodes", [])]

    @property
    def kube_nodes(self) -> list:
        return [n["name"] for n in self.lab.get("nodes", []) if "kube_node" in n.get("groups", [])]

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _warn(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    def lock(self):
        """An exclusive lock for changes (apply/delete), so two CLIs never race on one pod."""
        directory = os.path.join(self.lab_root, "pods")
        os.makedirs(directory, exist_ok=True)
        handle = open(os.path.join(directory, ".lock"), "w")
        fcntl.flock(handle, fcntl.LOCK_EX)
        return handle

    _now = staticmethod(lab_store.now)

    def _new_meta(self, obj: dict, existing: dict | None) -> dict:
        return lab_store.new_metadata(obj, existing)

    @staticmethod
    def _last_applied(existing: dict):
        return lab_store.last_applied(existing)

    # --- apply ---------------------------------------------------------------------------------

    def check(self, docs: list, namespace: str, namespace_flag: bool = False) -> list:
        """The file's objects, normalized; raises UserError listing every problem."""
        objs, problems = objects.check_documents(docs, namespace, self.node_names, namespace_flag)
        known = {n["metadata"]["name"] for n in self.store.list("Namespace")} | {"default"}
        in_file = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}
        services = self.store.list("Service") if any(o["kind"] == "Service" for o in objs) else []
        pods = {}  # namespace -> its pods, read once per file
        for obj in objs:
            meta = obj["metadata"]
            if objects.KINDS[obj["kind"]][2] and meta["namespace"] not in known | in_file:
                problems.append("%s: metadata.namespace: namespaces %s not found (create it first: a "
                                "Namespace object earlier in this file, or applied before)"
                                % (objects.describe(obj), json.dumps(meta["namespace"])))
            if obj["kind"] == "Service":
                if meta["namespace"] not in pods:
                    pods[meta["namespace"]] = self.store.list("Pod", meta["namespace"])
                problems += self._service_problems(obj, services, pods[meta["namespace"]])
            if obj["kind"] == "Pod":
                existing = self.store.get("Pod", meta["namespace"], meta["name"])
                if existing is not None:
                    before = self._last_applied(existing)
                    before_spec = before.get("spec") if before else existing.get("spec")
                    if before_spec != obj["spec"]:
                        problems.append("%s: spec: Forbidden: pod updates may not change fields other than "
                                        "metadata.labels and metadata.annotations (delete the pod, then apply "
                                        "again)" % objects.describe(obj))
        if problems:
            raise UserError("%d problem%s in the file, nothing was applied:\n  %s"
                            % (len(problems), "s" if len(problems) > 1 else "", "\n  ".join(problems)))
        return objs

    def apply(self, docs: list, namespace: str, namespace_flag: bool = False) -> int:
        objs = self.check(docs, namespace, namespace_flag)
        ordered = [o for o in objs if o["kind"] == "Namespace"] + [o for o in objs if o["kind"] != "Namespace"]
        for obj in ordered:
            if obj["kind"] != "Namespace":
                self.ensure_namespace(obj["metadata"]["namespace"])
            verb = getattr(self, "_apply_" + obj["kind"].lower())(obj)
            self._say("%s/%s %s" % (objects.resource(obj["kind"]), obj["metadata"]["name"], verb))
        for failure in self.failures:
            self._warn("apiary: %s" % failure)
        return 1 if self.failures else 0

    def ensure_namespace(self, name: str) -> None:
        if self.store.get("Namespace", None, name) is None:
            if name != "default":
                raise UserError(_not_found("Namespace", name))
            self._apply_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def _apply_namespace(self, obj: dict) -> str:
        existing = self.store.get("Namespace", None, obj["metadata"]["name"])
        if existing is not None and self._last_applied(existing) == obj:
            return "unchanged"
        meta = self._new_meta(obj, existing)
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        self.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": meta,
                        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
        return "created" if existing is None else "configured"

    def _apply_pod(self, obj: dict) -> str:
        meta = obj["metadata"]
        existing = self.store.get("Pod", meta["namespace"], meta["name"])
        if existing is None:
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": self._new_meta(obj, None),
                   "spec": copy.deepcopy(obj["spec"])}
            self._start(pod)
            return "created"
        verb = "unchanged"
        if self._last_applied(existing) != obj:
            new_meta = self._new_meta(obj, existing)
            existing["metadata"].update({k: new_meta[k] for k in ("annotations",)})
            existing["metadata"]["labels"] = new_meta.get("labels") or {}
            self.store.put(existing)
            verb = "configured"
        if needs_setup(existing):
            for warning in self.kubelet.teardown(existing, grace=0):  # what an interrupted setup left
                self._warn("apiary: warning: pod/%s: %s" % (meta["name"], warning))
            self._start(existing)  # retry, as the kubelet would
        return verb

    # --- services ------------------------------------------------------------------------------

    @property
    def service_cidr(self) -> str:
        if not self.lab.get("service_cidr"):
            raise UserError("lab.json has no service_cidr: re-run cluster.yml to update the lab")
        return self.lab["service_cidr"]

    def _service_problems(self, obj: dict, services: list, pods: list) -> list:
        """What the API server would refuse: addresses and NodePorts taken or out of range, named ports
        no selected pod has. `services` (the stored ones) takes this file's Services as they come, so
        that two in one file cannot collide either."""
        meta = obj["metadata"]
        same = lambda other: (other["metadata"]["namespace"], other["metadata"]["name"]) == (  # noqa: E731
            meta["namespace"], meta["name"])
        existing = next((other for other in services if same(other)), None)
        allocated = copy.deepcopy(obj)
        problems = service.allocate(allocated, existing, [o for o in services if not same(o)], self.service_cidr)
        problems += service.named_port_problems(allocated, pods)
        services[:] = [o for o in services if not same(o)] + [allocated]
        return problems

    def _apply_service(self, obj: dict) -> str:
        meta = obj["metadata"]
        existing = self.store.get("Service", meta["namespace"], meta["name"])
        if existing is not None and self._last_applied(existing) == obj:
            return "unchanged"
        allocated = copy.deepcopy(obj)
        others = [o for o in self.store.list("Service") if (o["metadata"]["namespace"], o["metadata"]["name"])
                  != (meta["namespace"], meta["name"])]
        problems = service.allocate(allocated, existing, others, self.service_cidr)
        if problems:  # check() found none: only a concurrent apply can get here
            raise UserError("\n".join(problems))
        self.store.put({"apiVersion": "v1", "kind": "Service", "metadata": self._new_meta(obj, existing),
                        "spec": allocated["spec"]})
        return "created" if existing is None else "configured"

    def _apply_policy(self, obj: dict) -> str:
        return self.store.apply(obj)[0]

    _apply_ciliumnetworkpolicy = _apply_ciliumclusterwidenetworkpolicy = _apply_networkpolicy = _apply_policy

    def _apply_deployment(self, obj: dict) -> str:
        meta = obj["metadata"]
        existing = self.store.get("Deployment", meta["namespace"], meta["name"])
        if existing is not None and self._last_applied(existing) == obj:
            verb = "unchanged"
            dep = existing
        else:
            dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": self._new_meta(obj, existing),
                   "spec": copy.deepcopy(obj["spec"])}
            dep["metadata"]["generation"] = int((existing or {}).get("metadata", {}).get("generation", 0)) + 1
            dep["status"] = {"observedGeneration": dep["metadata"]["generation"]}
            self.store.put(dep)
            verb = "created" if existing is None else "configured"
        self.reconcile(dep)
        return verb

    # --- scheduler and kubelet -----------------------------------------------------------------

    def schedule(self, pod: dict) -> None:
        if pod["spec"].get("nodeName"):
            return
        nodes = self.kube_nodes
        if not nodes:
            raise UserError("no lab node is in the kube_node group: %s cannot be scheduled"
                            % objects.describe(pod))
        counts = {name: 0 for name in nodes}
        for other in self.store.list("Pod"):
            node = other.get("spec", {}).get("nodeName")
            if node in counts and not (other.get("status") or {}).get("reason"):
                counts[node] += 1
        pod["spec"]["nodeName"] = min(nodes, key=lambda n: (counts[n], nodes.index(n)))

    def _start(self, pod: dict) -> bool:
        self.schedule(pod)
        try:
            self.kubelet.run_pod(pod, self.store.put)
        except kubelet_mod.PodFailed as exc:
            self.failures.append("pod/%s in namespace %s failed (%s): %s; everything done for it was undone, "
                                 "it is kept as Failed (apply again to retry, or delete it)"
                                 % (pod["metadata"]["name"], pod["metadata"]["namespace"], exc.reason, exc.message))
            return False
        return True

    # --- the Deployment controller ---------------------------------------------------------------

    def owned_pods(self, dep: dict) -> list:
        uid = dep["metadata"]["uid"]
        return [p for p in self.store.list("Pod", dep["metadata"]["namespace"]) if owner_uid(p) == uid]

    def reconcile(self, dep: dict) -> None:
        spec = dep["spec"]
        thash = template_hash(spec["template"])
        pods = self.owned_pods(dep)
        current = [p for p in pods if p["metadata"].get("labels", {}).get("pod-template-hash") == thash]
        old = [p for p in pods if p not in current]
        broken = [p for p in current if needs_setup(p)]
        active = [p for p in current if p not in broken]
        for pod in broken:  # a ReplicaSet replaces failed pods
            self._remove_pod(pod)
        missing = spec["replicas"] - len(active)
        for _ in range(max(missing, 0)):
            self._start(self._pod_from_template(dep, thash))
        if missing < 0:
            # Like a ReplicaSet scaling down: pods not running first, then the newest.
            def rank(p):
                live = self.kubelet.live_status(p)
                ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in live.get("conditions", []))
                return (ready, p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"])
            for pod in sorted(active, key=rank)[: -missing]:
                self._remove_pod(pod)
        for pod in old:
            self._remove_pod(pod)

    def _pod_from_template(self, dep: dict, thash: str) -> dict:
        template = dep["spec"]["template"]
        ns = dep["metadata"]["namespace"]
        while True:
            name = "%s-%s-%s" % (dep["metadata"]["name"], thash, random_suffix())
            if self.store.get("Pod", ns, name) is None:
                break
        labels = dict(template["metadata"].get("labels") or {})
        labels["pod-template-hash"] = thash
        meta = {"name": name, "namespace": ns, "labels": labels, "uid": str(uuid.uuid4()),
                "creationTimestamp": self._now(),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"],
                                     "uid": dep["metadata"]["uid"], "controller": True,
                                     "blockOwnerDeletion": True}]}
        if template["metadata"].get("annotations"):
            meta["annotations"] = dict(template["metadata"]["annotations"])
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": copy.deepcopy(template["spec"])}

    # --- delete --------------------------------------------------------------------------------

    def _remove_pod(self, pod: dict, grace: int | None = None) -> None:
        for warning in self.kubelet.teardown(pod, grace):
            self._warn("apiary: warning: pod/%s: %s" % (pod["metadata"]["name"], warning))
        self.store.delete("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"])

    def delete(self, kind: str, namespace: str | None, name: str, ignore_not_found: bool = False) -> bool:
        """Delete one object (and what it owns); prints kubectl's line. False when it was not found."""
        ns = namespace if objects.KINDS[kind][2] else None
        obj = self.store.get(kind, ns, name)
        if obj is None:
            if not ignore_not_found:
                self._warn(_not_found(kind, name))
            return ignore_not_found
        if kind == "Pod":
            self._remove_pod(obj)
            owner = owner_uid(obj)
            if owner:  # the Deployment's controller replaces it, as a ReplicaSet would
                for dep in self.store.list("Deployment", ns):
                    if dep["metadata"]["uid"] == owner:
                        self.reconcile(dep)
        elif kind == "Deployment":
            self.store.delete(kind, ns, name)
            for pod in self.owned_pods(obj):
                self._remove_pod(pod)
        elif kind in objects.POLICY_KINDS or kind == "Service":
            self.store.delete(kind, ns, name)
        elif kind == "Namespace":
            if name == "default":
                self._warn('Error from server (Forbidden): namespaces "default" is forbidden: this namespace '
                           'may not be deleted')
                return False
            for dep in self.store.list("Deployment", name):
                self.store.delete("Deployment", name, dep["metadata"]["name"])
            for owned_kind in ("CiliumNetworkPolicy", "NetworkPolicy", "Service"):
                for owned in self.store.list(owned_kind, name):
                    self.store.delete(owned_kind, name, owned["metadata"]["name"])
            for pod in self.store.list("Pod", name):
                self._remove_pod(pod)
            self.store.delete(kind, None, name)
        self._say('%s "%s" deleted' % (objects.resource(kind), name))
        return True

    def delete_file(self, docs: list, namespace: str, namespace_flag: bool, ignore_not_found: bool) -> int:
        idents, problems = objects.identities(docs, namespace, namespace_flag)
        if problems:
            raise UserError("%d problem%s in the file, nothing was deleted:\n  %s"
                            % (len(problems), "s" if len(problems) > 1 else "", "\n  ".join(problems)))
        ok = True
        # What is in a namespace first, the namespaces last (the mirror of apply's order).
        for kind, ns, name in [i for i in idents if i[0] != "Namespace"] + [i for i in idents if i[0] == "Namespace"]:
            ok = self.delete(kind, ns, name, ignore_not_found) and ok
        return 0 if ok else 1

    # --- reading -------------------------------------------------------------------------------

    def pod_view(self, pod: dict) -> dict:
        """The pod as `get` shows it: its status checked live."""
        view = copy.deepcopy(pod)
        view["status"] = self.kubelet.live_status(pod)
        return view

    def deployment_view(self, dep: dict, pods: list | None = None) -> dict:
        view = copy.deepcopy(dep)
        pods = self.owned_pods(dep) if pods is None else pods
        thash = template_hash(dep["spec"]["template"])
        ready = updated = 0
        for pod in pods:
            status = self.kubelet.live_status(pod)
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])):
                ready += 1
            if pod["metadata"].get("labels", {}).get("pod-template-hash") == thash:
                updated += 1
        view["status"] = {"observedGeneration": dep["metadata"].get("generation", 1), "replicas": len(pods),
                          "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": ready}
        return view
