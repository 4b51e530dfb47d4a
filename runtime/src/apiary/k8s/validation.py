"""Kubernetes objects as the API server checks them: the kinds Apiary knows (the object model), names
and labels (DNS-1123, qualified names), metadata, reading manifest files, and checking a whole file
with one checker per kind. Every problem names the object and the field path, e.g.

    CiliumNetworkPolicy network-policy-test/allow-frontend: spec.ingress[0].toPorts[0].ports[0].port: ...

The spec of each kind is checked by who knows it: `apiary.policy.rules` the policy kinds,
`apiary.service` a Service's spec; `check_documents()` takes the checkers, so this layer imports
neither. A checked object is *normalized* (defaults filled in, server-set fields dropped), so two reads
of the same file compare equal. `apiary policy validate`, the agent's `policy import`/`delete` and the
lab's `apiary lab apply` share it.
"""
from __future__ import annotations

import copy
import json
import re
import sys

from apiary.errors import UserError

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

class Checker:
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


def metadata(c: Checker, obj: dict, namespaced: bool, name_rule) -> dict:
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


def check_object(obj, index: int, default_namespace: str, check_kind, namespace_flag: bool = False):
    """(normalized object or None, problems) for document number `index` (1-based). The kind's own
    checker, check_kind[kind](obj, namespace, who), checks the rest; a kind without one is refused."""
    if not isinstance(obj, dict):
        return None, ["document %d: must be a map with apiVersion, kind and metadata" % index]
    kind = obj.get("kind")
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name")
    if kind not in check_kind:
        if kind is None:
            return None, ["document %d: kind: required field is missing (supported: %s)"
                          % (index, ", ".join(check_kind))]
        return None, ["document %d: kind: unknown kind %s (supported: %s)"
                      % (index, json.dumps(kind), ", ".join(check_kind))]
    namespaced = KINDS[kind][2]
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
    if name is None:
        who = "document %d (%s)" % (index, kind)
    return check_kind[kind](obj, ns, who)


def check_documents(docs: list, default_namespace: str, check_kind: dict, namespace_flag: bool = False):
    """(normalized objects, problems) for a whole file: each document checked (check_kind: kind ->
    its checker, see check_object), and the same object twice in one file reported."""
    objects, problems, seen = [], [], {}
    for index, doc in enumerate(docs, 1):
        obj, found = check_object(doc, index, default_namespace, check_kind, namespace_flag)
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
