"""The agent's Kubernetes source (kubeconfig mode): pods, namespaces, Services and policies from the
API server, as Cilium's agent watches them (pkg/k8s watchers).

One apiary.k8s.watch.Watcher lists and watches pods (cluster-wide), namespaces, services,
endpointslices, networkpolicies, ciliumnetworkpolicies and ciliumclusterwidenetworkpolicies. Its events feed the
same managers as the store does in store mode, through their `load`/`handle`, under the store's key
form (`/apiary/objects/<plural>/<namespace or _>/<name>`) with the API's objects as values:

- the policy repository (agent/policy.py) gets policies and pods (named ports), as source
  "kubernetes" (the identities still come from the store);
- the service cache (agent/services.py) gets Services and their EndpointSlices (the backends); a
  Service the datapath cannot balance (headless, ExternalName) is passed as absent;
- the endpoints (agent/endpoints.py) take their pods' and namespaces' labels from the watcher's
  cache (this class is their label source), and a label change re-resolves the identity of the
  endpoints it concerns.

Nothing is passed on until every resource has been listed once; then the managers get one full
read (`load`) and everything after as events. Revisions: `revision` counts the Kubernetes events
applied to the managers (the first full read counts as one); it is the revision the managers
record for this source.

At start the agent installs Cilium's policy CRDs (apiary.k8s.crds) and publishes its settings as
the ConfigMap kube-system/apiary-config, as Cilium's cilium-config (every agent writes the same
content, so only the first one writes). Policies the agent cannot enforce are reported on the
object: condition Valid=False (CNP, CCNP) and a Warning Event.
"""
from __future__ import annotations

import collections
import functools
import ipaddress
import json
import logging
import threading
import time

import kubernetes.client
from kubernetes.client.exceptions import ApiException

import apiary.policy as policy_lib
from apiary.errors import UserError
from apiary.k8s import client, crds, events, watch

log = logging.getLogger("apiary.agent.kubernetes")

SOURCE = "kubernetes"  # the policy repository's name for this source
OBJECTS = "/apiary/objects/"
POLICY_RESOURCES = {kind: plural for kind, (_, plural, _) in policy_lib.KINDS.items()}
RESOURCES = ("namespaces", "pods", "services", "endpointslices") + tuple(POLICY_RESOURCES.values())
POD_WAIT = 5.0  # seconds CNI ADD waits for a pod the watch has not brought yet, before a direct GET
PROBE_TIMEOUT = 2.0  # `apiary status` asks the API server with this (connect, read) timeout
BACKOFF = (1.0, 30.0)  # setup steps (CRDs, ConfigMap) that failed are tried again after this
CONFIG_MAP = ("kube-system", "apiary-config")
CONFLICT_ATTEMPTS = 5
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
VALID_MESSAGE = "Policy validation succeeded"
API_PATHS = {"CiliumNetworkPolicy": "/apis/cilium.io/v2/namespaces/{namespace}/ciliumnetworkpolicies",
             "CiliumClusterwideNetworkPolicy": "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies",
             "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"}


# A key and its value as the managers' load() reads them (an etcd KV's shape).
Item = collections.namedtuple("Item", "key value")


def store_key(resource: str, obj: dict) -> str:
    meta = obj["metadata"]
    return "%s%s/%s/%s" % (OBJECTS, resource, meta.get("namespace") or "_", meta["name"])


def policy_object(obj: dict) -> dict:
    """A policy as apiary.policy checks it: the server's own metadata (managedFields, finalizers,
    ...) and status left out."""
    meta = obj.get("metadata") or {}
    out = {k: obj[k] for k in ("apiVersion", "kind", "spec", "specs") if k in obj}
    out["metadata"] = {k: meta[k] for k in ("name", "namespace", "labels", "annotations", "uid") if k in meta}
    return out


def balanced_service(svc: dict) -> dict | None:
    """The Service when the datapath balances it: a ClusterIP, NodePort or LoadBalancer Service with
    an IPv4 cluster IP (headless and ExternalName Services have none); else None."""
    spec = svc.get("spec") or {}
    try:
        ipaddress.IPv4Address(spec.get("clusterIP") or "")
    except ValueError:
        return None
    return svc if spec.get("type", "ClusterIP") in SERVICE_TYPES else None


def _labels_of(obj: dict | None) -> dict:
    return ((obj or {}).get("metadata") or {}).get("labels") or {}


def _identity_of(pod: dict | None) -> tuple:
    """What a pod's identity depends on: its labels and its service account."""
    return _labels_of(pod), ((pod or {}).get("spec") or {}).get("serviceAccountName")


def settings(config, hubble_enabled: bool) -> dict:
    """The ConfigMap's data: the agent's settings under Cilium's cilium-config keys."""
    data = {
        "cluster-name": config.cluster_name,
        "ipam": "cluster-pool",
        "cluster-pool-ipv4-cidr": config.cluster_pool_ipv4_cidr,
        "cluster-pool-ipv4-mask-size": str(config.cluster_pool_ipv4_mask_size),
        "enable-ipv4": "true",
        "enable-ipv6": "false",
        "routing-mode": config.routing_mode,
        "kvstore": "etcd",
        "identity-allocation-mode": "kvstore",
        "bpf-lb-algorithm": config.lb_algorithm,
        "enable-hubble": "true" if hubble_enabled else "false",
    }
    if config.routing_mode == "tunnel":
        data["tunnel-protocol"] = "vxlan"
    if config.lb_algorithm == "maglev":
        data["bpf-lb-maglev-table-size"] = str(config.maglev_table_size)
    return data


class KubernetesSource:
    def __init__(self, config, policy, services, hubble_enabled: bool = False):
        self.config = config
        self.policy, self.services = policy, services
        self.endpoints = None  # the EndpointManager, set before start()
        self.api = client.api_client(config.kubeconfig)
        # `apiary status` must answer at once, also when the API server does not.
        self.probe_api = client.api_client(config.kubeconfig, timeout=(PROBE_TIMEOUT, PROBE_TIMEOUT))
        self.data = settings(config, hubble_enabled)
        self.recorder = events.EventRecorder(self.api, host=config.node_name)
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # a policy version was applied (policy import waits)
        self.pod_arrived = threading.Condition()  # CNI ADD waits on it for a pod the cache has not yet
        self.loaded = False
        self.synced = threading.Event()  # set once the managers have had the first full read
        self.revision = 0
        self.policy_versions: dict[str, str] = {}  # store key -> resourceVersion the repository has
        self.reported: dict[str, str] = {}  # store key -> the problems last reported on the policy
        self.relabel_pending = False  # an identity change failed (e.g. etcd down): tried again later
        self.setup_errors: dict[str, str] = {}
        self.watcher = watch.Watcher(self.api)
        self.reflectors = {}
        for resource in RESOURCES:
            self.reflectors[resource] = self.watcher.subscribe(
                resource,
                on_add=functools.partial(self._event, resource, None),
                on_update=functools.partial(self._event, resource),
                on_delete=lambda obj, resource=resource: self._event(resource, obj, None),
                on_synced=self._load)

    # --- running ----------------------------------------------------------------------------------
    def start(self, stop: threading.Event) -> None:
        threading.Thread(target=self._run, args=(stop,), name="k8s-setup", daemon=True).start()

    def _run(self, stop: threading.Event) -> None:
        """CRDs first (the policy watches need them), then the watches, then the ConfigMap. What failed
        is tried again with backoff while the rest runs: a setup step, the first full read of the
        managers, an identity change (e.g. etcd was down)."""
        steps = [] if self._step("CRDs", self._ensure_crds) else [("CRDs", self._ensure_crds)]
        self.watcher.start()  # also without the CRDs: those watches retry until they exist
        steps.append(("ConfigMap %s/%s" % CONFIG_MAP, self.publish_config))
        delay = BACKOFF[0]
        while not stop.is_set():
            steps = [(what, step) for what, step in steps if not self._step(what, step)]
            if not self.loaded:
                self._step("first read", self._load)
            elif self.relabel_pending:
                self._update_labels()
            failing = bool(steps) or not self.loaded or self.relabel_pending
            # Without failures, a look every second (an identity change may fail later).
            stop.wait(delay if failing else BACKOFF[0])
            delay = min(delay * 2, BACKOFF[1]) if failing else BACKOFF[0]

    def _step(self, what: str, step) -> bool:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the API server may not be reachable yet
            self.setup_errors[what] = client.error_message(exc)
            log.warning("%s: %s; trying again later", what, self.setup_errors[what])
            return False
        self.setup_errors.pop(what, None)
        return True

    def _ensure_crds(self) -> None:
        written = crds.ensure_crds(self.api)
        if written:
            log.info("installed or updated CRDs %s", ", ".join(written))

    def stop(self) -> None:
        if self.watcher.started:
            self.watcher.stop()

    # --- events -----------------------------------------------------------------------------------
    def _load(self) -> None:
        """Once every resource is listed, the managers get one full read of the caches."""
        with self.lock:
            if self.loaded or not all(r.synced.is_set() for r in self.reflectors.values()):
                return
            objects = {name: reflector.list() for name, reflector in self.reflectors.items()}
            self.revision += 1
            policy_items = [Item(store_key("pods", pod), pod) for pod in objects["pods"]]
            service_items = [Item(store_key("endpointslices", s), s) for s in objects["endpointslices"]]
            for svc in objects["services"]:
                if balanced_service(svc) is not None:
                    service_items.append(Item(store_key("services", svc), svc))
            policies = [(store_key(plural, obj), obj) for plural in POLICY_RESOURCES.values()
                        for obj in objects[plural]]
            policy_items += [Item(key, policy_object(obj)) for key, obj in policies]
            self.policy.load(policy_items, self.revision, source=SOURCE)
            self.services.load(service_items, self.revision)
            self.policy_versions = {key: obj["metadata"].get("resourceVersion") for key, obj in policies}
            self.loaded = True
            log.info("kubernetes: %s", ", ".join("%d %s" % (len(v), k) for k, v in objects.items()))
        # Labels changed while the agent was down (restored endpoints keep what they had).
        self._update_labels()
        self.synced.set()
        for key, obj in policies:
            self._report(key, obj)

    def _event(self, resource: str, old: dict | None, new: dict | None) -> None:
        if resource == "pods":
            with self.pod_arrived:
                self.pod_arrived.notify_all()
        obj = new if new is not None else old
        key = store_key(resource, obj)
        with self.lock:
            if not self.loaded:
                return  # _load reads it from the cache
            self.revision += 1
            if resource == "pods":
                self.policy.handle(key, new, self.revision, source=SOURCE)
            elif resource == "endpointslices":
                self.services.handle(key, new, self.revision)
            elif resource == "services":
                self.services.handle(key, balanced_service(new) if new is not None else None, self.revision)
            elif resource in POLICY_RESOURCES.values():
                self.policy.handle(key, policy_object(new) if new is not None else None, self.revision,
                                   source=SOURCE)
                if new is None:
                    self.policy_versions.pop(key, None)
                    self.reported.pop(key, None)
                else:
                    self.policy_versions[key] = new["metadata"].get("resourceVersion")
                self.changed.notify_all()
        # Identity changes: a pod's labels or service account, a namespace's labels (new pods get
        # theirs at CNI ADD; deleted ones lose their endpoint at CNI DEL).
        if old is not None and new is not None:
            if resource == "pods" and _identity_of(old) != _identity_of(new):
                self._update_labels(new["metadata"]["namespace"], new["metadata"]["name"])
            elif resource == "namespaces" and _labels_of(old) != _labels_of(new):
                self._update_labels(new["metadata"]["name"])
        if resource in POLICY_RESOURCES.values() and new is not None:
            self._report(key, new)

    def all_pods(self) -> list:
        """Every pod of the cluster, from the watch's cache (Hubble names flows' addresses with them)."""
        return self.reflectors["pods"].list()

    # --- the cluster DNS's catalogue (apiary.agent.dns.Catalogue) ---------------------------------------
    def service(self, namespace: str, name: str) -> dict | None:
        return self.reflectors["services"].get("%s/%s" % (namespace, name))

    def endpoint_slices(self, namespace: str, name: str) -> list:
        return self.services.endpoint_slices(namespace, name)  # the service cache holds every slice

    def _update_labels(self, namespace: str | None = None, pod_name: str | None = None) -> None:
        if namespace is None:
            self.relabel_pending = False  # before: a failure meanwhile sets it again
        if self.endpoints.update_labels(namespace, pod_name)["failed"]:
            self.relabel_pending = True

    # --- the label source of the endpoints ----------------------------------------------------
    def wait_for_pod(self, namespace: str, name: str, timeout: float = POD_WAIT) -> bool:
        """Until the watch has brought the pod (at most `timeout` seconds); whether it has."""
        pods = self.reflectors["pods"]
        with self.pod_arrived:
            return bool(name) and self.pod_arrived.wait_for(
                lambda: pods.get("%s/%s" % (namespace, name)) is not None, timeout)

    def pod_labels(self, namespace: str, name: str):
        """(pod labels, namespace labels, service account), from the cache or else the API; None
        when there is no such pod."""
        if not name:
            return None
        pod = self.reflectors["pods"].get("%s/%s" % (namespace, name)) or self._read("pod", namespace, name)
        if pod is None:
            return None
        ns = self.reflectors["namespaces"].get(namespace) or self._read("namespace", None, namespace)
        return _labels_of(pod), _labels_of(ns), (pod.get("spec") or {}).get("serviceAccountName") or "default"

    def _read(self, kind: str, namespace: str | None, name: str) -> dict | None:
        core = kubernetes.client.CoreV1Api(self.api)
        try:
            if kind == "pod":
                response = core.read_namespaced_pod(name, namespace, _preload_content=False)
            else:
                response = core.read_namespace(name, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise RuntimeError(client.error_message(exc)) from exc
        return json.loads(response.data)

    # --- reporting on policies ------------------------------------------------------------------
    def _report(self, key: str, obj: dict) -> None:
        """Valid or not, on the object: the Valid condition (CNP, CCNP; written only when it changes)
        and, for a policy this agent cannot enforce, a Warning Event."""
        _, problems = policy_lib.check(policy_object(obj), None)
        message = "; ".join(problems)
        try:
            if obj.get("kind") in events.POLICY_PLURALS:
                valid, reason = (False, "NotEnforceable") if problems else (True, "Valid")
                text = message or VALID_MESSAGE
                said = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Valid"]
                if not said or (said[0].get("status"), said[0].get("reason"), said[0].get("message")) != \
                        ("True" if valid else "False", reason, text):
                    events.set_policy_condition(self.api, obj, valid, reason, text)
            if problems and self.reported.get(key) != message:
                self.recorder.record(obj, "PolicyNotEnforced", message)
            self.reported[key] = message
        except Exception as exc:  # noqa: BLE001 - reporting must not stop the events
            log.warning("%s: cannot report on it: %s", key, client.error_message(exc))

    # --- the ConfigMap --------------------------------------------------------------------------
    def publish_config(self) -> bool:
        """Create or update kube-system/apiary-config; False when it already said the same."""
        namespace, name = CONFIG_MAP
        core = kubernetes.client.CoreV1Api(self.api)
        for _ in range(CONFLICT_ATTEMPTS):
            try:
                current = json.loads(core.read_namespaced_config_map(name, namespace, _preload_content=False).data)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                current = None
            try:
                if current is None:
                    core.create_namespaced_config_map(namespace, {
                        "apiVersion": "v1", "kind": "ConfigMap", "data": self.data,
                        "metadata": {"name": name, "namespace": namespace,
                                     "labels": {"app.kubernetes.io/managed-by": "apiary-agent"}}},
                        _preload_content=False)
                    return True
                if current.get("data") == self.data:
                    return False
                # With its resourceVersion: a concurrent writer makes this a conflict, read again.
                core.replace_namespaced_config_map(name, namespace, dict(current, data=self.data),
                                                   _preload_content=False)
                return True
            except ApiException as exc:
                if exc.status != 409:
                    raise
        raise RuntimeError("ConfigMap %s/%s kept changing (%d conflicts)" % (namespace, name, CONFLICT_ATTEMPTS))

    # --- status -----------------------------------------------------------------------------------
    def status(self) -> dict:
        """`apiary status`'s Kubernetes line: Ok with the API server's version, Failure with why."""
        resources = self.watcher.status()
        out = {"resources": resources, "synced": self.synced.is_set()}
        try:
            version = kubernetes.client.VersionApi(self.probe_api).get_code().git_version
        except Exception as exc:  # noqa: BLE001 - status reports it
            return dict(out, state="Failure", message=client.error_message(exc))
        broken = ["%s: %s" % (r["resource"], r["last_error"] or "not connected") for r in resources
                  if not r["connected"]]
        broken += ["%s: %s" % item for item in self.setup_errors.items()]
        if broken:
            return dict(out, state="Failure", message="%s; %s" % (version, "; ".join(broken)))
        if not self.synced.is_set():
            return dict(out, state="Warning", message="%s; listing %s" % (
                version, ", ".join(r["resource"] for r in resources if not r["synced"])))
        return dict(out, state="Ok", message=version)

    # --- policy import / delete (`apiary policy import|delete`, the network_policy module) ----------
    def _call(self, method: str, path: str, body: dict | None = None) -> dict | None:
        """One request of the API; None for 404. Bodies are checked strictly (kubectl's default)."""
        try:
            response = self.api.call_api(
                path, method, body=body, query_params=[("fieldValidation", "Strict")] if body else [],
                header_params={"Content-Type": "application/json", "Accept": "application/json"},
                auth_settings=["BearerToken"], _return_http_data_only=True, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise UserError("%s %s: %s" % (method, path, client.error_message(exc))) from exc
        return json.loads(response.data)

    @staticmethod
    def _path(kind: str, namespace: str | None, name: str | None = None) -> str:
        return API_PATHS[kind].format(namespace=namespace) + ("/" + name if name else "")

    def apply_policy(self, obj: dict, check: bool) -> tuple:
        """Create or replace a (checked) policy object in the API: (action, before, store key,
        resourceVersion written or None)."""
        kind, meta = obj["kind"], obj["metadata"]
        current = self._call("GET", self._path(kind, meta.get("namespace"), meta["name"]))
        before = policy_lib.check(policy_object(current), None)[0] if current is not None else None
        key = store_key(POLICY_RESOURCES[kind], obj)
        if before == obj:
            return "unchanged", before, key, None
        action = "created" if current is None else "configured"
        if check:
            return action, before, key, None
        if current is None:
            written = self._call("POST", self._path(kind, meta.get("namespace")), obj)
        else:
            body = dict(obj, metadata=dict(meta, resourceVersion=current["metadata"]["resourceVersion"]))
            written = self._call("PUT", self._path(kind, meta.get("namespace"), meta["name"]), body)
        return action, before, key, written["metadata"]["resourceVersion"]

    def delete_policy(self, kind: str, namespace: str | None, name: str, check: bool) -> tuple:
        """(action, before, store key)."""
        current = self._call("GET", self._path(kind, namespace, name))
        if current is None:
            return "not found", None, None
        if not check:
            self._call("DELETE", self._path(kind, namespace, name))
        before = policy_lib.check(policy_object(current), None)[0] or policy_object(current)
        return "deleted", before, store_key(POLICY_RESOURCES[kind], current)

    def wait_policies(self, versions: dict, timeout: float) -> bool:
        """Until the policy repository has these versions ({store key: resourceVersion, None: deleted})."""
        deadline = time.monotonic() + timeout
        with self.lock:
            return self.changed.wait_for(lambda: all(self.policy_versions.get(k) == v for k, v in versions.items()),
                                         max(0.0, deadline - time.monotonic()))
