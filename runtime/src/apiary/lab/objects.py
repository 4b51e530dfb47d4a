"""What `apiary lab apply` accepts: reading manifests and checking them as the API server would.

Kinds: Namespace (v1), Pod (v1), Deployment (apps/v1), Service (v1, its spec checked by
apiary.service), and the policy kinds (checked by
apiary.policy.rules: CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy). Names and labels follow Kubernetes' rules
(DNS-1123, qualified names). Every problem names the object and the field path, e.g.

    Pod network-policy-test/backend: metadata.labels["bad key!"]: invalid label key ...

`check_documents()` checks a whole file and returns every problem, so that nothing is applied
when anything is wrong. A checked object is *normalized*: defaults filled in (namespace,
protocol TCP, replicas 1, ...) and fields the lab does not keep (status, uid, ...) dropped, so two
applies of the same file compare equal.
"""
from __future__ import annotations

import copy
import json
import re
import sys

from apiary.errors import UserError
from apiary.lab import images

# kind -> (apiVersion, plural used in store keys and messages, namespaced, kubectl resource name)
KINDS = {
    "Namespace": ("v1", "namespaces", False, "namespace"),
    "Pod": ("v1", "pods", True, "pod"),
    "Deployment": ("apps/v1", "deployments", True, "deployment.apps"),
    "Service": ("v1", "services", True, "service"),
    "CiliumNetworkPolicy": ("cilium.io/v2", "ciliumnetworkpolicies", True, "ciliumnetworkpolicy.cilium.io"),
    "CiliumClusterwideNetworkPolicy": ("cilium.io/v2", "ciliumclusterwidenetworkpolicies", False,
                                       "ciliumclusterwidenetworkpolicy.cilium.io"),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies", True, "networkpolicy.networking.k8s.io"),
}
POLICY_KINDS = ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", "NetworkPolicy")

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# Fields of stored objects that the server sets; accepted in input (e.g. `get -o json` output
# applied again) and dropped.
_SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields",
                    "selfLink", "ownerReferences", "deletionTimestamp")


class Problems(list):
    """Messages collected while checking; each already names the object and field."""


def parse_manifests(text: str, source: str = "-") -> list:
    """Documents of a YAML (multi-document) or JSON file, `kind: List` expanded; empty documents
    are skipped. Raises ValueError with a readable message when the text does not parse."""
    import yaml  # PyYAML: only needed to read manifests

    stripped = text.lstrip()
    try:
        if stripped.startswith("{") or stripped.startswith("["):
            try:
                docs = [json.loads(text)]
            except ValueError:
                docs = list(yaml.safe_load_all(text))
        else:
            docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ValueError("%s: not valid YAML or JSON: %s" % (source, exc)) from None
    out = []
    for doc in docs:
        if doc is None:
            continue
        if isinstance(doc, list):
            out.extend(doc)
        elif isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            out.extend(doc["items"])
        else:
            out.append(doc)
    return out


def read_file(path: str) -> list:
    """The documents of a manifest file ("-": stdin); UserError when unreadable, unparsable or empty."""
    if path == "-":
        text, source = sys.stdin.read(), "stdin"
    else:
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError as exc:
            raise UserError("cannot read %s: %s" % (path, exc.strerror)) from None
        source = path
    try:
        docs = parse_manifests(text, source)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not docs:
        raise UserError("no objects passed to apply (%s is empty)" % source)
    return docs


def describe(obj: dict) -> str:
    """`Kind namespace/name` (cluster-scoped: `Kind name`) for messages."""
    meta = obj.get("metadata") or {}
    if KINDS.get(obj.get("kind"), (None, None, True))[2] and meta.get("namespace"):
        return "%s %s/%s" % (obj["kind"], meta["namespace"], meta.get("name"))
    return "%s %s" % (obj.get("kind"), meta.get("name"))


def resource(kind: str) -> str:
    """kubectl's name for the kind in `pod/x created` (deployment.apps, pod, namespace)."""
    return KINDS[kind][3]


def plural(kind: str) -> str:
    return KINDS[kind][1]


# --- names and labels ---------------------------------------------------------------------------

def check_dns_label(value, what="name") -> str | None:
    if not isinstance(value, str) or not value:
        return "%s is required (a string)" % what
    if len(value) > 63:
        return "%s %r must be no more than 63 characters" % (what, value)
    if not DNS1123_LABEL.match(value):
        return ("%s %r must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending "
                "with a letter or digit (e.g. 'my-name', regex used for validation is "
                "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')" % (what, value))
    return None


def check_dns_subdomain(value, what="name") -> str | None:
    if not isinstance(value, str) or not value:
        return "%s is required (a string)" % what
    if len(value) > 253:
        return "%s %r must be no more than 253 characters" % (what, value)
    if not DNS1123_SUBDOMAIN.match(value):
        return ("%s %r must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', starting "
                "and ending with a letter or digit (e.g. 'example.com', regex used for validation is "
                "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')" % (what, value))
    return None


def check_label_key(key) -> str | None:
    if not isinstance(key, str) or not key:
        return "invalid label key %r: must be a non-empty string" % (key,)
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return "invalid label key %r: prefix part must be non-empty" % key
        if len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix):
            return ("invalid label key %r: prefix part must be a DNS-1123 subdomain of at most 253 "
                    "characters (e.g. 'example.com')" % key)
    if not name:
        return "invalid label key %r: name part must be non-empty" % key
    if len(name) > 63:
        return "invalid label key %r: name part must be no more than 63 characters" % key
    if not QUALIFIED_NAME.match(name):
        return ("invalid label key %r: name part must consist of alphanumeric characters, '-', '_' or "
                "'.', and must start and end with an alphanumeric character (e.g. 'MyName', 'my.name' "
                "or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
                % key)
    return None


def check_label_value(value) -> str | None:
    if not isinstance(value, str):
        return ("invalid label value %s: must be a string (quote it in YAML, e.g. \"%s\")"
                % (json.dumps(value), json.dumps(value).strip('"')))
    if len(value) > 63:
        return "invalid label value %r: must be no more than 63 characters" % value
    if value and not QUALIFIED_NAME.match(value):
        return ("invalid label value %r: a valid label must be an empty string or consist of alphanumeric "
                "characters, '-', '_' or '.', and must start and end with an alphanumeric character "
                "(regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')" % value)
    return None


def check_labels(labels, path: str, problems: list) -> dict:
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        problems.append("%s: must be a map of label keys to values" % path)
        return {}
    for key, value in labels.items():
        field = "%s[%s]" % (path, json.dumps(key) if isinstance(key, str) else repr(key))
        msg = check_label_key(key) or check_label_value(value)
        if msg:
            problems.append("%s: %s" % (field, msg))
    return dict(labels)


def selector_matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


# --- the checker --------------------------------------------------------------------------------

class _Checker:
    """Checks one object, collecting problems prefixed with the object's description."""

    def __init__(self, who: str):
        self.who = who
        self.problems = []

    def bad(self, path: str, message: str) -> None:
        self.problems.append("%s: %s: %s" % (self.who, path, message) if path else "%s: %s" % (self.who, message))

    def fields(self, value, path: str, allowed, required=()) -> dict:
        """value must be a map; reports unknown and missing fields; returns it (or {})."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.bad(path, "must be a map (got %s)" % type(value).__name__)
            return {}
        for key in value:
            if key not in allowed:
                self.bad("%s.%s" % (path, key) if path else key,
                         "unknown or unsupported field (supported here: %s)" % ", ".join(allowed))
        for key in required:
            if value.get(key) is None:
                self.bad("%s.%s" % (path, key) if path else key, "required field is missing")
        return value

    def string_list(self, value, path: str) -> list | None:
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.bad(path, "must be a list of strings (quote numbers, e.g. \"3600\")")
            return None
        return list(value)

    def integer(self, value, path: str, low: int, high: int | None = None) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(path, "must be an integer (got %s)" % json.dumps(value))
            return None
        if value < low or (high is not None and value > high):
            self.bad(path, "must be between %d and %s (got %d)" % (low, high if high is not None else "∞", value))
            return None
        return value


def _metadata(c: _Checker, obj: dict, namespaced: bool, name_rule) -> dict:
    meta = c.fields(obj.get("metadata"), "metadata",
                    ("name", "namespace", "labels", "annotations") + _SERVER_METADATA, required=("name",))
    out = {}
    if meta.get("name") is not None:
        msg = name_rule(meta["name"], "name")
        if msg:
            c.bad("metadata.name", msg)
        out["name"] = meta["name"]
    if namespaced:
        out["namespace"] = meta.get("namespace")
    problems = []
    labels = check_labels(meta.get("labels"), "metadata.labels", problems)
    for p in problems:
        c.problems.append("%s: %s" % (c.who, p))
    if labels:
        out["labels"] = labels
    annotations = meta.get("annotations")
    if annotations is not None:
        if not isinstance(annotations, dict):
            c.bad("metadata.annotations", "must be a map of keys to string values")
        else:
            for key, value in annotations.items():
                field = "metadata.annotations[%s]" % json.dumps(key if isinstance(key, str) else repr(key))
                msg = check_label_key(key)
                if msg:
                    c.bad(field, msg.replace("label key", "annotation key"))
                elif not isinstance(value, str):
                    c.bad(field, "annotation value must be a string (quote it in YAML)")
            annotations = {k: v for k, v in annotations.items()
                           if k != "kubectl.kubernetes.io/last-applied-configuration"}
            if annotations:
                out["annotations"] = dict(annotations)
    return out


_POD_SPEC_FIELDS = ("containers", "nodeName", "restartPolicy", "terminationGracePeriodSeconds")
_CONTAINER_FIELDS = ("name", "image", "command", "args", "ports", "env", "workingDir", "imagePullPolicy")


def _pod_spec(c: _Checker, spec, path: str, lab_nodes) -> dict:
    spec = c.fields(spec, path, _POD_SPEC_FIELDS, required=("containers",))
    out = {}
    containers = spec.get("containers")
    if containers is not None and (not isinstance(containers, list) or not containers):
        c.bad(path + ".containers", "must be a non-empty list of containers")
        containers = []
    seen = set()
    out_containers = []
    for i, container in enumerate(containers or []):
        cpath = "%s.containers[%d]" % (path, i)
        container = c.fields(container, cpath, _CONTAINER_FIELDS, required=("name", "image"))
        item = {}
        name = container.get("name")
        if name is not None:
            msg = check_dns_label(name, "container name")
            if msg:
                c.bad(cpath + ".name", msg)
            elif name in seen:
                c.bad(cpath + ".name", "duplicate container name %r" % name)
            seen.add(name)
            item["name"] = name
        image = container.get("image")
        if image is not None:
            if not isinstance(image, str) or images.image_kind(image) is None:
                c.bad(cpath + ".image", "unknown image %s: the lab runs Debian programs for these images "
                      "only: %s" % (json.dumps(image), images.KNOWN))
            item["image"] = image
        for field in ("command", "args"):
            value = c.string_list(container.get(field), "%s.%s" % (cpath, field))
            if value is not None:
                item[field] = value
        ports = container.get("ports")
        if ports is not None:
            if not isinstance(ports, list):
                c.bad(cpath + ".ports", "must be a list")
                ports = []
            item["ports"] = []
            for j, port in enumerate(ports):
                ppath = "%s.ports[%d]" % (cpath, j)
                port = c.fields(port, ppath, ("containerPort", "protocol", "name"), required=("containerPort",))
                entry = {}
                number = c.integer(port.get("containerPort"), ppath + ".containerPort", 1, 65535)
                if number is not None:
                    entry["containerPort"] = number
                protocol = port.get("protocol", "TCP")
                if protocol not in ("TCP", "UDP", "SCTP"):
                    c.bad(ppath + ".protocol", "unsupported value %s: supported values: \"TCP\", \"UDP\", "
                          "\"SCTP\"" % json.dumps(protocol))
                entry["protocol"] = protocol
                if port.get("name") is not None:
                    pname = port["name"]
                    if not isinstance(pname, str) or len(pname) > 15 or not IANA_SVC_NAME.match(pname) \
                            or not re.search("[a-z]", pname):
                        c.bad(ppath + ".name", "must be an IANA_SVC_NAME: at most 15 lowercase letters, digits "
                              "and '-', with at least one letter (got %s)" % json.dumps(pname))
                    entry["name"] = pname
                item["ports"].append(entry)
        env = container.get("env")
        if env is not None:
            if not isinstance(env, list):
                c.bad(cpath + ".env", "must be a list of {name, value}")
                env = []
            item["env"] = []
            for j, var in enumerate(env):
                epath = "%s.env[%d]" % (cpath, j)
                var = c.fields(var, epath, ("name", "value"), required=("name",))
                if var.get("name") is not None and (not isinstance(var["name"], str)
                                                    or not re.match(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", var["name"])):
                    c.bad(epath + ".name", "must be a C identifier-like name (letters, digits, '_', '-', '.', "
                          "not starting with a digit)")
                if var.get("value") is not None and not isinstance(var["value"], str):
                    c.bad(epath + ".value", "must be a string (quote it in YAML)")
                item["env"].append({"name": var.get("name"), "value": var.get("value") or ""})
        if container.get("workingDir") is not None:
            if not isinstance(container["workingDir"], str) or not container["workingDir"].startswith("/"):
                c.bad(cpath + ".workingDir", "must be an absolute path")
            item["workingDir"] = container["workingDir"]
        pull = container.get("imagePullPolicy")
        if pull is not None:
            if pull not in ("Always", "IfNotPresent", "Never"):
                c.bad(cpath + ".imagePullPolicy", "unsupported value %s: supported values: \"Always\", "
                      "\"IfNotPresent\", \"Never\" (the lab's images are local programs)" % json.dumps(pull))
            item["imagePullPolicy"] = pull
        out_containers.append(item)
    out["containers"] = out_containers
    node = spec.get("nodeName")
    if node is not None:
        if not isinstance(node, str) or node not in lab_nodes:
            c.bad(path + ".nodeName", "%s is not a lab node (lab nodes: %s)"
                  % (json.dumps(node), ", ".join(lab_nodes) or "none"))
        out["nodeName"] = node
    restart = spec.get("restartPolicy", "Always")
    if restart not in ("Always", "OnFailure", "Never"):
        c.bad(path + ".restartPolicy", "unsupported value %s: supported values: \"Always\", \"OnFailure\", "
              "\"Never\"" % json.dumps(restart))
    out["restartPolicy"] = restart
    grace = c.integer(spec.get("terminationGracePeriodSeconds"), path + ".terminationGracePeriodSeconds", 0)
    out["terminationGracePeriodSeconds"] = 30 if grace is None else grace
    return out


def check_object(obj, index: int, default_namespace: str, lab_nodes=(), namespace_flag: bool = False):
    """(normalized object or None, problems) for document number `index` (1-based)."""
    if not isinstance(obj, dict):
        return None, ["document %d: must be a map with apiVersion, kind and metadata" % index]
    kind = obj.get("kind")
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name")
    if kind not in KINDS:
        if kind is None:
            return None, ["document %d: kind: required field is missing (supported: %s)"
                          % (index, ", ".join(KINDS))]
        return None, ["document %d: kind: unknown kind %s (supported: %s)"
                      % (index, json.dumps(kind), ", ".join(KINDS))]
    api_version, _, namespaced, _ = KINDS[kind]
    if namespaced:
        ns = meta.get("namespace")
        if ns is None:
            ns = default_namespace
        elif namespace_flag and ns != default_namespace:
            return None, ["%s %s/%s: metadata.namespace: the namespace from the provided object %s does "
                          "not match the namespace %s: you must pass '--namespace=%s' to perform this "
                          "operation" % (kind, ns, name, json.dumps(ns), json.dumps(default_namespace), ns)]
        who = "%s %s/%s" % (kind, ns, name if name is not None else "(no name)")
    else:
        ns = None
        who = "%s %s" % (kind, name if name is not None else "(no name)")
    if kind in POLICY_KINDS:
        from apiary.policy import rules  # the policy kinds are apiary.policy's to check

        return rules.check(obj, ns)
    c = _Checker(who)
    if name is None:
        c.who = "document %d (%s)" % (index, kind)
    if obj.get("apiVersion") != api_version:
        c.bad("apiVersion", "%s is not served for %s (use %s)" % (json.dumps(obj.get("apiVersion")), kind,
                                                                 api_version))
    c.fields(obj, "", ("apiVersion", "kind", "metadata", "spec", "status"),
             required=("metadata",) if kind == "Namespace" else ("metadata", "spec"))
    name_rule = check_dns_label if kind == "Namespace" else check_dns_subdomain
    out = {"apiVersion": api_version, "kind": kind, "metadata": _metadata(c, obj, namespaced, name_rule)}
    if namespaced:
        out["metadata"]["namespace"] = ns
        msg = check_dns_label(ns, "namespace")
        if msg:
            c.bad("metadata.namespace", msg)
    if kind == "Namespace":
        spec = c.fields(obj.get("spec"), "spec", ("finalizers",))
        if spec.get("finalizers") not in (None, ["kubernetes"]):
            c.bad("spec.finalizers", "only [\"kubernetes\"] is supported")
    elif kind == "Pod":
        out["spec"] = _pod_spec(c, obj.get("spec"), "spec", lab_nodes)
    elif kind == "Deployment":
        out["spec"] = _deployment_spec(c, obj.get("spec"), lab_nodes)
    elif kind == "Service":
        from apiary import service  # the Service spec is apiary.service's to check

        out["spec"] = service.check_spec(c, obj.get("spec"))
    return (out if not c.problems else None), c.problems


def _deployment_spec(c: _Checker, spec, lab_nodes) -> dict:
    spec = c.fields(spec, "spec", ("replicas", "selector", "template", "strategy", "revisionHistoryLimit",
                                   "progressDeadlineSeconds", "minReadySeconds", "paused"),
                    required=("selector", "template"))
    out = {}
    replicas = c.integer(spec.get("replicas"), "spec.replicas", 0, 1000)
    out["replicas"] = 1 if replicas is None else replicas
    selector = c.fields(spec.get("selector"), "spec.selector", ("matchLabels",), required=("matchLabels",))
    problems = []
    match = check_labels(selector.get("matchLabels"), "spec.selector.matchLabels", problems)
    for p in problems:
        c.problems.append("%s: %s" % (c.who, p))
    if spec.get("selector") is not None and selector.get("matchLabels") is not None and not match:
        c.bad("spec.selector.matchLabels", "must not be empty (an empty selector would select every pod)")
    out["selector"] = {"matchLabels": match}
    template = c.fields(spec.get("template"), "spec.template", ("metadata", "spec"), required=("spec",))
    tmeta = c.fields(template.get("metadata"), "spec.template.metadata", ("labels", "annotations", "name"))
    problems = []
    labels = check_labels(tmeta.get("labels"), "spec.template.metadata.labels", problems)
    for p in problems:
        c.problems.append("%s: %s" % (c.who, p))
    if "pod-template-hash" in labels:
        c.bad('spec.template.metadata.labels["pod-template-hash"]', "is set by the lab, leave it out")
    if match and not problems and not selector_matches(match, labels):
        c.bad("spec.selector.matchLabels", "does not match spec.template.metadata.labels (selector %s, "
              "template labels %s)" % (json.dumps(match, sort_keys=True), json.dumps(labels, sort_keys=True)))
    tm = {"labels": labels}
    if isinstance(tmeta.get("annotations"), dict) and tmeta["annotations"]:
        tm["annotations"] = dict(tmeta["annotations"])
    out["template"] = {"metadata": tm, "spec": _pod_spec(c, template.get("spec"), "spec.template.spec", lab_nodes)}
    strategy = c.fields(spec.get("strategy"), "spec.strategy", ("type", "rollingUpdate"))
    stype = strategy.get("type", "RollingUpdate")
    if stype not in ("RollingUpdate", "Recreate"):
        c.bad("spec.strategy.type", "unsupported value %s: supported values: \"Recreate\", \"RollingUpdate\""
              % json.dumps(stype))
    out["strategy"] = {"type": stype}
    for field in ("revisionHistoryLimit", "progressDeadlineSeconds", "minReadySeconds"):
        c.integer(spec.get(field), "spec." + field, 0)
    if spec.get("paused"):
        c.bad("spec.paused", "pausing a Deployment is not supported in the lab")
    return out


def check_documents(docs: list, default_namespace: str, lab_nodes=(), namespace_flag: bool = False):
    """(normalized objects, problems) for a whole file: each document checked, and the same object
    twice in one file reported."""
    objects, problems, seen = [], [], {}
    for index, doc in enumerate(docs, 1):
        obj, found = check_object(doc, index, default_namespace, lab_nodes, namespace_flag)
        problems.extend(found)
        if obj is None:
            continue
        ident = identity(obj)
        if ident in seen:
            problems.append("%s: appears twice in the file (documents %d and %d)" % (describe(obj), seen[ident], index))
            continue
        seen[ident] = index
        objects.append(obj)
    return objects, problems


def identity(obj: dict):
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace"), meta["name"]


def desired_part(obj: dict) -> dict:
    """What apply compares to decide created/configured/unchanged: labels, annotations and spec."""
    meta = obj.get("metadata") or {}
    part = {"labels": meta.get("labels") or {}, "annotations": meta.get("annotations") or {}}
    if "spec" in obj:
        part["spec"] = obj["spec"]
    return copy.deepcopy(part)


def identities(docs: list, default_namespace: str, namespace_flag: bool = False):
    """(kind, namespace, name) of each document, for `delete -f` (only what names the object is
    checked: an object that would not apply can still be deleted). Returns (idents, problems)."""
    idents, problems = [], []
    for index, doc in enumerate(docs, 1):
        if not isinstance(doc, dict):
            problems.append("document %d: must be a map with apiVersion, kind and metadata" % index)
            continue
        kind = doc.get("kind")
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        name = meta.get("name")
        if kind not in KINDS:
            problems.append("document %d: kind: unknown kind %s (supported: %s)"
                            % (index, json.dumps(kind), ", ".join(KINDS)))
            continue
        if not isinstance(name, str) or not name:
            problems.append("document %d (%s): metadata.name: required field is missing" % (index, kind))
            continue
        ns = None
        if KINDS[kind][2]:
            ns = meta.get("namespace") or default_namespace
            if namespace_flag and meta.get("namespace") and ns != default_namespace:
                problems.append("%s %s/%s: metadata.namespace: the namespace from the provided object %s does "
                                "not match the namespace %s: you must pass '--namespace=%s' to perform this "
                                "operation" % (kind, ns, name, json.dumps(ns), json.dumps(default_namespace), ns))
                continue
        idents.append((kind, ns, name))
    return idents, problems
