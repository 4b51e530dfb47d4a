"""The policy kinds: checking them as the API server and Cilium's agent would, and translating them
to Cilium's rule model.

`check(obj)` returns (normalized object, problems). Every problem names the object and the field:

    CiliumNetworkPolicy network-policy-test/allow-frontend: spec.ingress[0].toPorts[0].ports[0].port:
    "99999" is not a port (0-65535) or a port name

What Apiary cannot enforce (L7 rules, FQDNs, Services, groups, authentication, host policies ...) is
refused with a message that says so, never ignored: a policy that silently enforced less than it says
would be worse than none. `to_rules(obj)` gives the rules exactly as `cilium policy get` prints them
(pkg/k8s/apis/cilium.io/utils/utils.go for Cilium's kinds, pkg/k8s/network_policy.go for
Kubernetes'). docs/policy.md says what is accepted and the choices made.
"""
from __future__ import annotations

import copy
import ipaddress
import json
import re

from apiary.k8s.validation import (IANA_SVC_NAME, Checker, check_dns_label, check_dns_subdomain, check_label_key,
                                   check_label_value, metadata)
from apiary.policy.selector import OPERATORS, EndpointSelector, split_key

# kind -> (apiVersion, plural used in store keys, namespaced)
KINDS = {
    "CiliumNetworkPolicy": ("cilium.io/v2", "ciliumnetworkpolicies", True),
    "CiliumClusterwideNetworkPolicy": ("cilium.io/v2", "ciliumclusterwidenetworkpolicies", False),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies", True),
}

# Label keys Cilium puts on pods and policies (pkg/k8s/apis/cilium.io).
POD_NAMESPACE = "k8s:io.kubernetes.pod.namespace"
POD_NAMESPACE_ANY = "any:io.kubernetes.pod.namespace"
NAMESPACE_LABELS = "io.cilium.k8s.namespace.labels"
POLICY_LABEL = "io.cilium.k8s.policy"
NAME_ANNOTATION = "io.cilium.network.policy.name"  # overrides the NetworkPolicy's name in its labels

ENTITIES = ("world", "cluster", "host", "remote-node", "kube-apiserver", "health", "init", "ingress",
            "unmanaged", "all")
CILIUM_PROTOCOLS = ("TCP", "UDP", "SCTP", "ANY")
K8S_PROTOCOLS = ("TCP", "UDP", "SCTP")
ICMP_FAMILIES = ("IPv4", "IPv6")
ICMP_TYPES = {  # Cilium's names (pkg/policy/api/icmp.go)
    "IPv4": {"EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "Echo": 8, "EchoRequest": 8,
             "RouterAdvertisement": 9, "RouterSelection": 10, "TimeExceeded": 11, "ParameterProblem": 12,
             "Timestamp": 13, "TimestampReply": 14, "Photuris": 40, "ExtendedEchoRequest": 42,
             "ExtendedEchoReply": 43},
    "IPv6": {"DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3, "ParameterProblem": 4,
             "EchoRequest": 128, "EchoReply": 129, "MulticastListenerQuery": 130, "MulticastListenerReport": 131,
             "MulticastListenerDone": 132, "RouterSolicitation": 133, "RouterAdvertisement": 134,
             "NeighborSolicitation": 135, "NeighborAdvertisement": 136, "RedirectMessage": 137,
             "RouterRenumbering": 138, "ICMPNodeInformationQuery": 139, "ICMPNodeInformationResponse": 140,
             "InverseNeighborDiscoverySolicitation": 141, "InverseNeighborDiscoveryAdvertisement": 142,
             "HomeAgentAddressDiscoveryRequest": 144, "HomeAgentAddressDiscoveryReply": 145,
             "MobilePrefixSolicitation": 146, "MobilePrefixAdvertisement": 147,
             "DuplicateAddressRequestCodeSuffix": 157, "DuplicateAddressConfirmationCodeSuffix": 158,
             "ExtendedEchoRequest": 160, "ExtendedEchoReply": 161},
}

L7_REFUSED = ("L7 rules need Apiary's L7 proxy, which does not exist yet; this policy would not be "
              "enforced as written, so it is refused")
_NOT_YET = "not supported by Apiary yet"
_PROXY = "it needs an L7 proxy, which Apiary does not have yet"

# Rule sections and their fields, as Cilium's CRD has them (pkg/policy/api/rule.go, ingress.go,
# egress.go). Fields Apiary cannot enforce map to the reason they are refused.
SECTIONS = ("ingress", "ingressDeny", "egress", "egressDeny")
PEERS = {
    "ingress": ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"),
    "egress": ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities"),
}
_REFUSED_FIELDS = {
    "fromRequires": "fromRequires is %s (Cilium deprecated it)" % _NOT_YET,
    "toRequires": "toRequires is %s (Cilium deprecated it)" % _NOT_YET,
    "fromGroups": "cloud provider groups (fromGroups) are %s" % _NOT_YET,
    "toGroups": "cloud provider groups (toGroups) are %s" % _NOT_YET,
    "fromNodes": "node selectors (fromNodes) are %s" % _NOT_YET,
    "toNodes": "node selectors (toNodes) are %s" % _NOT_YET,
    "toServices": "Service selectors (toServices) are %s" % _NOT_YET,
    "toFQDNs": "DNS-based rules (toFQDNs) are %s: they need a DNS proxy" % _NOT_YET,
    "authentication": "mutual authentication is %s" % _NOT_YET,
}
_ITEM_REFUSED = {
    "ingress": ("fromRequires", "fromGroups", "fromNodes", "authentication"),
    "ingressDeny": ("fromRequires", "fromGroups", "fromNodes"),
    "egress": ("toRequires", "toServices", "toFQDNs", "toGroups", "toNodes", "authentication"),
    "egressDeny": ("toRequires", "toServices", "toGroups", "toNodes"),
}
_PORT_RULE_REFUSED = {
    "serverNames": "TLS server names (serverNames) are %s: %s" % (_NOT_YET, _PROXY),
    "originatingTLS": "TLS origination (originatingTLS) is %s: %s" % (_NOT_YET, _PROXY),
    "terminatingTLS": "TLS termination (terminatingTLS) is %s: %s" % (_NOT_YET, _PROXY),
    "listener": "Envoy listeners (listener) are %s: %s" % (_NOT_YET, _PROXY),
}
_SPEC_FIELDS = ("endpointSelector", "ingress", "ingressDeny", "egress", "egressDeny", "enableDefaultDeny",
                "labels", "description")
_SPEC_REFUSED = {
    "nodeSelector": "host policies (nodeSelector) are %s; select pods with endpointSelector" % _NOT_YET,
    "log": "policy logging (log) is %s" % _NOT_YET,
}
_CIDR_RULE_REFUSED = {
    "cidrGroupRef": "CiliumCIDRGroup references (cidrGroupRef) are %s" % _NOT_YET,
    "cidrGroupSelector": "CiliumCIDRGroup selectors (cidrGroupSelector) are %s" % _NOT_YET,
}
_SOURCE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CILIUM_PORT_NAME = re.compile(r"^([a-zA-Z0-9]-?)*[a-zA-Z](-?[a-zA-Z0-9])*$")  # Cilium's iana.IsSvcName


def _kind_of(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {dict: "a map", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _q(value) -> str:
    return json.dumps(value)


class _PolicyChecker(Checker):
    """lab.objects' checker, with what policies need on top: refused fields and typed lists."""

    def known(self, value, path: str, allowed, refused: dict | None = None, required=()) -> dict:
        """value must be a map of the allowed fields; refused fields are reported with their reason."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.bad(path, "must be a map (got %s)" % _kind_of(value))
            return {}
        refused = refused or {}
        for key in value:
            where = "%s.%s" % (path, key) if path else str(key)
            if key in refused:
                self.bad(where, refused[key])
            elif key not in allowed:
                self.bad(where, "unknown field (supported here: %s)" % ", ".join(allowed))
        for key in required:
            if value.get(key) is None:
                self.bad("%s.%s" % (path, key) if path else key, "required field is missing")
        return value

    def items(self, value, path: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            self.bad(path, "must be a list (got %s)" % _kind_of(value))
            return []
        return value

    def string(self, value, path: str) -> str | None:
        if value is not None and not isinstance(value, str):
            self.bad(path, "must be a string (got %s)" % _kind_of(value))
            return None
        return value


# --- check --------------------------------------------------------------------------------------

def check(obj: dict, default_namespace: str | None = "default") -> tuple:
    """(normalized object or None, problems) for one policy object of any of KINDS."""
    if not isinstance(obj, dict):
        return None, ["policy: must be a map with apiVersion, kind and metadata (got %s)" % _kind_of(obj)]
    kind = obj.get("kind")
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name")
    if not isinstance(kind, str) or kind not in KINDS:
        return None, ["%s: kind: %s is not a policy kind (supported: %s)"
                      % (name or "policy", _q(kind), ", ".join(KINDS))]
    api_version, _, namespaced = KINDS[kind]
    shown = name if isinstance(name, str) and name else "(no name)"
    ns = None
    if namespaced:
        ns = meta.get("namespace") if meta.get("namespace") is not None else default_namespace
        c = _PolicyChecker("%s %s/%s" % (kind, ns if ns is not None else "(no namespace)", shown))
    else:
        c = _PolicyChecker("%s %s" % (kind, shown))
    if obj.get("apiVersion") != api_version:
        c.bad("apiVersion", "%s is not served for %s (use %s)" % (_q(obj.get("apiVersion")), kind, api_version))
    cilium = kind != "NetworkPolicy"
    c.known(obj, "", ("apiVersion", "kind", "metadata") + (("spec", "specs") if cilium else ("spec",)) + ("status",),
            required=("metadata",) if cilium else ("metadata", "spec"))
    out = {"apiVersion": api_version, "kind": kind, "metadata": metadata(c, obj, namespaced, check_dns_subdomain)}
    if namespaced:
        if ns is None:
            c.bad("metadata.namespace", "required field is missing (a %s lives in a namespace)" % kind)
        else:
            msg = check_dns_label(ns, "namespace")
            if msg:
                c.bad("metadata.namespace", msg)
        out["metadata"]["namespace"] = ns
    if cilium:
        if obj.get("spec") is None and obj.get("specs") is None:
            c.bad("spec", "required field is missing (a %s needs spec, or a list of rules in specs)" % kind)
        if obj.get("spec") is not None:
            out["spec"] = _cilium_rule(c, obj["spec"], "spec", ns)
        if obj.get("specs") is not None:
            specs = c.items(obj["specs"], "specs")
            if isinstance(obj["specs"], list) and not specs:
                c.bad("specs", "must not be empty (leave it out, or list rules)")
            out["specs"] = [_cilium_rule(c, rule, "specs[%d]" % i, ns) for i, rule in enumerate(specs)]
    elif obj.get("spec") is not None:
        out["spec"] = _k8s_spec(c, obj["spec"], "spec")
    return (out if not c.problems else None), c.problems


# --- selectors, CIDRs and ports -----------------------------------------------------------------

def _selector(c: _PolicyChecker, value, path: str, cilium: bool) -> dict:
    """A label selector; in Cilium's kinds keys may carry a source (`k8s:app`, `reserved:host`)."""
    sel = c.known(value, path, ("matchLabels", "matchExpressions"))
    out = {}
    labels = sel.get("matchLabels")
    if labels is not None:
        if not isinstance(labels, dict):
            c.bad(path + ".matchLabels", "must be a map of label keys to values (got %s)" % _kind_of(labels))
        else:
            for key, val in labels.items():
                msg = _selector_key_problem(key, cilium) or check_label_value(val)
                if msg:
                    c.bad("%s.matchLabels[%s]" % (path, _q(key) if isinstance(key, str) else repr(key)), msg)
            if labels:
                out["matchLabels"] = dict(labels)
    exprs = []
    for i, expr in enumerate(c.items(sel.get("matchExpressions"), path + ".matchExpressions")):
        epath = "%s.matchExpressions[%d]" % (path, i)
        expr = c.known(expr, epath, ("key", "operator", "values"), required=("key", "operator"))
        key, operator, values = expr.get("key"), expr.get("operator"), expr.get("values")
        if key is not None:
            msg = _selector_key_problem(key, cilium)
            if msg:
                c.bad(epath + ".key", msg)
        if operator is not None and operator not in OPERATORS:
            c.bad(epath + ".operator", "unsupported value %s: supported values: %s"
                  % (_q(operator), ", ".join(_q(o) for o in OPERATORS)))
        if values is not None and (not isinstance(values, list) or not all(isinstance(v, str) for v in values)):
            c.bad(epath + ".values", "must be a list of strings")
            values = None
        if operator in ("In", "NotIn"):
            if not values:
                c.bad(epath + ".values", "must be specified (non-empty) when operator is %s" % operator)
            for j, val in enumerate(values or []):
                msg = check_label_value(val)
                if msg:
                    c.bad("%s.values[%d]" % (epath, j), msg)
        elif operator in ("Exists", "DoesNotExist") and values:
            c.bad(epath + ".values", "may not be specified when operator is %s" % operator)
        item = {"key": key, "operator": operator}
        if operator in ("In", "NotIn") and values:
            item["values"] = list(values)
        exprs.append(item)
    if exprs:
        out["matchExpressions"] = exprs
    return out


def _selector_key_problem(key, cilium: bool) -> str | None:
    if not isinstance(key, str):
        return "invalid label key %r: must be a string" % (key,)
    if cilium and ":" in key:
        source, name = split_key(key)
        if not _SOURCE.match(source):
            return ("invalid label key %r: the source %r before ':' must be lower-case alphanumerics and '-' "
                    "(e.g. k8s:app, reserved:host)" % (key, source))
        msg = check_label_key(name)
        return msg.replace(repr(name), repr(key), 1) if msg else None
    return check_label_key(key)


def _network(c: _PolicyChecker, value, path: str, prefix_required: bool):
    """An ipaddress network (host bits allowed, as Go's netip.ParsePrefix) or None after reporting."""
    if not isinstance(value, str) or not value:
        c.bad(path, "must be a CIDR string such as \"10.0.0.0/8\" (got %s)" % _q(value))
        return None
    if prefix_required and "/" not in value:
        c.bad(path, "%s is not a CIDR: write it with a prefix length, e.g. \"%s/32\"" % (_q(value), value))
        return None
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        c.bad(path, "%s is not a valid CIDR (e.g. \"10.0.0.0/8\" or \"fd00::/64\")" % _q(value))
        return None


def _cidr_rule(c: _PolicyChecker, value, path: str, strict_except: bool, cilium: bool) -> dict:
    """fromCIDRSet/toCIDRSet entry ({cidr, except}) or a NetworkPolicy ipBlock ({cidr, except})."""
    rule = c.known(value, path, ("cidr", "except"), _CIDR_RULE_REFUSED if cilium else None, required=("cidr",))
    out = {"cidr": rule.get("cidr")}
    network = _network(c, rule["cidr"], path + ".cidr", True) if rule.get("cidr") is not None else None
    excepts = []
    for i, item in enumerate(c.items(rule.get("except"), path + ".except")):
        epath = "%s.except[%d]" % (path, i)
        inner = _network(c, item, epath, True)
        if inner is not None and network is not None:
            inside = inner.version == network.version and inner.subnet_of(network)
            if not inside or (strict_except and inner.prefixlen <= network.prefixlen):
                c.bad(epath, "%s is not inside the cidr %s%s" % (_q(item), _q(rule["cidr"]),
                      " (it must be a strict subset)" if strict_except else ""))
        excepts.append(item)
    if excepts:
        out["except"] = excepts
    return out


def _port_number(value):
    """The port as an int when it is a number (int, or a decimal string without leading zeros)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and (value == "0" or not value.startswith("0")):
        return int(value)
    return None


def _cilium_port(c: _PolicyChecker, value, path: str) -> dict:
    port = c.known(value, path, ("port", "endPort", "protocol"))
    out = {}
    raw = port.get("port")
    number = _port_number(raw)
    if raw is None or raw == "":
        c.bad(path + ".port", "required field is missing (a port number, \"0\" for every port, or a port name)")
    elif number is not None:
        if not 0 <= number <= 65535:
            c.bad(path + ".port", "%s is not a port (0-65535) or a port name" % _q(str(raw)))
        out["port"] = str(number)
    elif isinstance(raw, str) and len(raw) <= 15 and _CILIUM_PORT_NAME.match(raw) and "--" not in raw:
        out["port"] = raw.lower()  # Cilium compares port names in lower case
    elif isinstance(raw, str) and raw.isdigit():
        c.bad(path + ".port", "%s: write port numbers without leading zeros" % _q(raw))
    else:
        shown = raw if isinstance(raw, str) else str(raw)
        c.bad(path + ".port", "%s is not a port (0-65535) or a port name" % _q(shown))
    end = c.integer(port.get("endPort"), path + ".endPort", 0, 65535)
    if end is not None:
        if number is None:
            c.bad(path + ".endPort", "needs a numeric port (a range cannot start at a port name)")
        elif number == 0:
            c.bad(path + ".endPort", "needs a port other than 0 (port \"0\" already means every port)")
        elif end < number:
            c.bad(path + ".endPort", "%d is smaller than port %d" % (end, number))
        out["endPort"] = end
    protocol = port.get("protocol", "ANY")
    if protocol not in CILIUM_PROTOCOLS:
        c.bad(path + ".protocol", "unsupported value %s: supported values: %s (ICMP is allowed with icmps)"
              % (_q(protocol), ", ".join(_q(p) for p in CILIUM_PROTOCOLS)))
    out["protocol"] = protocol
    return out


def _http_rule(c: _PolicyChecker, value, path: str) -> None:
    rule = c.known(value, path, ("method", "path", "host", "headers", "headerMatches"))
    for field in ("method", "path", "host"):
        text = c.string(rule.get(field), "%s.%s" % (path, field))
        if text:
            try:
                re.compile(text)
            except re.error as exc:
                c.bad("%s.%s" % (path, field), "%s is not a valid regular expression: %s" % (_q(text), exc))
    c.string_list(rule.get("headers"), path + ".headers")
    for i, match in enumerate(c.items(rule.get("headerMatches"), path + ".headerMatches")):
        mpath = "%s.headerMatches[%d]" % (path, i)
        match = c.known(match, mpath, ("name", "value", "secret", "mismatch"), required=("name",))
        if c.string(match.get("name"), mpath + ".name") == "":
            c.bad(mpath + ".name", "must not be empty")
        c.string(match.get("value"), mpath + ".value")
        if match.get("secret") is not None:
            secret = c.known(match["secret"], mpath + ".secret", ("name", "namespace"), required=("name",))
            c.string(secret.get("name"), mpath + ".secret.name")
            c.string(secret.get("namespace"), mpath + ".secret.namespace")
        mismatch = match.get("mismatch")
        if mismatch is not None and mismatch not in ("LOG", "ADD", "DELETE", "REPLACE"):
            c.bad(mpath + ".mismatch", "unsupported value %s: supported values: \"LOG\", \"ADD\", \"DELETE\", "
                  "\"REPLACE\"" % _q(mismatch))


def _port_rule(c: _PolicyChecker, value, path: str, deny: bool) -> dict:
    """A toPorts entry. Deny rules only have ports (Cilium's PortDenyRule)."""
    if deny:
        rule = c.known(value, path, ("ports",))
    else:
        rule = c.known(value, path, ("ports", "rules"), _PORT_RULE_REFUSED)
    out = {}
    ports = [_cilium_port(c, p, "%s.ports[%d]" % (path, i))
             for i, p in enumerate(c.items(rule.get("ports"), path + ".ports"))]
    if len(ports) > 40:
        c.bad(path + ".ports", "too many ports (%d), the most is 40" % len(ports))
    if ports:
        out["ports"] = ports
    if not deny and "rules" in rule:
        rules = c.known(rule["rules"], path + ".rules", ("http", "kafka", "dns", "l7proto", "l7"))
        for i, http in enumerate(c.items(rules.get("http"), path + ".rules.http")):
            _http_rule(c, http, "%s.rules.http[%d]" % (path, i))
        c.bad(path + ".rules", L7_REFUSED)
    return out


def _icmp_rule(c: _PolicyChecker, value, path: str) -> dict:
    rule = c.known(value, path, ("fields",), required=("fields",))
    fields = []
    for i, field in enumerate(c.items(rule.get("fields"), path + ".fields")):
        fpath = "%s.fields[%d]" % (path, i)
        field = c.known(field, fpath, ("family", "type"), required=("type",))
        family = field.get("family", "IPv4")
        if family not in ICMP_FAMILIES:
            c.bad(fpath + ".family", "unsupported value %s: supported values: \"IPv4\", \"IPv6\"" % _q(family))
        kind = field.get("type")
        number = _port_number(kind)
        if kind is None:
            pass
        elif number is not None:
            if not 0 <= number <= 255:
                c.bad(fpath + ".type", "%s is not an ICMP type (0-255)" % _q(kind))
        else:
            names = ICMP_TYPES[family] if family in ICMP_FAMILIES else ICMP_TYPES["IPv4"]
            if not isinstance(kind, str) or kind not in names:
                c.bad(fpath + ".type", "%s is not an ICMP type (0-255) or an %s type name (%s)"
                      % (_q(kind), family if family in ICMP_FAMILIES else "ICMP", ", ".join(sorted(names))))
        fields.append({"family": family, "type": kind})
    if isinstance(rule.get("fields"), list) and not fields:
        c.bad(path + ".fields", "must list at least one ICMP type")
    if len(fields) > 40:
        c.bad(path + ".fields", "too many types (%d), the most is 40" % len(fields))
    return {"fields": fields}


def icmp_type(family: str, value) -> int:
    """The number of an ICMP type written as a number or one of Cilium's names."""
    number = _port_number(value)
    return number if number is not None else ICMP_TYPES[family][value]


# --- Cilium's rules -----------------------------------------------------------------------------

def _cilium_rule(c: _PolicyChecker, value, path: str, namespace: str | None) -> dict:
    spec = c.known(value, path, _SPEC_FIELDS, _SPEC_REFUSED)
    out = {}
    if "endpointSelector" in spec and spec["endpointSelector"] is not None:
        out["endpointSelector"] = _selector(c, spec["endpointSelector"], path + ".endpointSelector", True)
        if namespace is not None:
            _own_namespace(c, out["endpointSelector"], path + ".endpointSelector", namespace)
    elif "nodeSelector" not in spec and isinstance(value, dict):
        c.bad(path + ".endpointSelector", "required field is missing (it selects the pods the rule applies to; "
              "{} selects every pod%s)" % (" of the namespace" if namespace else ""))
    for section in SECTIONS:
        items = c.items(spec.get(section), "%s.%s" % (path, section))
        rules = [_rule_item(c, item, "%s.%s[%d]" % (path, section, i), section) for i, item in enumerate(items)]
        if rules:
            out[section] = rules
    if isinstance(value, dict) and not any(out.get(s) for s in SECTIONS):
        c.bad(path, "has no ingress, ingressDeny, egress or egressDeny rules, so it would do nothing (Cilium "
              "refuses such a rule too); to deny all ingress, write ingress: [{}]")
    if spec.get("enableDefaultDeny") is not None:
        edd = c.known(spec["enableDefaultDeny"], path + ".enableDefaultDeny", ("ingress", "egress"))
        out["enableDefaultDeny"] = {}
        for direction in ("ingress", "egress"):
            if direction in edd:
                if not isinstance(edd[direction], bool):
                    c.bad("%s.enableDefaultDeny.%s" % (path, direction),
                          "must be true or false (got %s)" % _q(edd[direction]))
                out["enableDefaultDeny"][direction] = edd[direction]
    labels = []
    for i, label in enumerate(c.items(spec.get("labels"), path + ".labels")):
        lpath = "%s.labels[%d]" % (path, i)
        label = c.known(label, lpath, ("key", "value", "source"), required=("key",))
        item = {"key": c.string(label.get("key"), lpath + ".key"),
                "value": c.string(label.get("value", ""), lpath + ".value"),
                "source": c.string(label.get("source") or "unspec", lpath + ".source")}
        if item["source"] == "cilium-generated":
            c.bad(lpath + ".source", "\"cilium-generated\" is reserved for labels Cilium makes")
        labels.append(item)
    if labels:
        out["labels"] = labels
    if c.string(spec.get("description"), path + ".description"):
        out["description"] = spec["description"]
    return out


def _own_namespace(c: _PolicyChecker, selector: dict, path: str, namespace: str) -> None:
    """Cilium replaces a k8s:io.kubernetes.pod.namespace match in a namespaced policy's
    endpointSelector by the policy's namespace (with a warning); Apiary says so instead."""
    found = []
    if POD_NAMESPACE in selector.get("matchLabels", {}):
        found.append(("%s.matchLabels[%s]" % (path, _q(POD_NAMESPACE)), [selector["matchLabels"][POD_NAMESPACE]]))
    for i, expr in enumerate(selector.get("matchExpressions", [])):
        if expr.get("key") == POD_NAMESPACE and expr.get("operator") == "In":
            found.append(("%s.matchExpressions[%d]" % (path, i), expr.get("values") or []))
    for where, values in found:
        if values != [namespace]:
            c.bad(where, "a namespaced policy only selects pods of its own namespace (%s); Cilium would "
                  "replace %s by it, so Apiary refuses the policy" % (_q(namespace), _q(values)))


def _rule_item(c: _PolicyChecker, value, path: str, section: str) -> dict:
    direction = "egress" if section.startswith("egress") else "ingress"
    deny = section.endswith("Deny")
    peers = PEERS[direction]
    refused = {k: _REFUSED_FIELDS[k] for k in _ITEM_REFUSED[section]}
    item = c.known(value, path, peers + ("toPorts", "icmps"), refused)
    out = {}
    present = [p for p in peers if item.get(p) is not None]
    if len(present) > 1:
        c.bad(path, "%s cannot be combined in one rule (Cilium refuses it): write one rule for each"
              % " and ".join(present))
    for field in present:
        fpath = "%s.%s" % (path, field)
        values = c.items(item[field], fpath)
        if isinstance(item[field], list) and not values:
            c.bad(fpath, "must not be empty: an empty list selects nothing, which Cilium tells apart from "
                  "leaving the field out (every peer, when toPorts is given); list peers or leave it out")
        if field.endswith("Endpoints"):
            out[field] = [_selector(c, v, "%s[%d]" % (fpath, i), True) for i, v in enumerate(values)]
        elif field.endswith("Entities"):
            for i, entity in enumerate(values):
                if entity not in ENTITIES:
                    c.bad("%s[%d]" % (fpath, i), "unknown entity %s (known: %s)" % (_q(entity), ", ".join(ENTITIES)))
            out[field] = list(values)
        elif field.endswith("CIDRSet"):
            out[field] = [_cidr_rule(c, v, "%s[%d]" % (fpath, i), False, True) for i, v in enumerate(values)]
        else:
            for i, cidr in enumerate(values):
                _network(c, cidr, "%s[%d]" % (fpath, i), False)
            out[field] = list(values)
    ports = [_port_rule(c, v, "%s.toPorts[%d]" % (path, i), deny)
             for i, v in enumerate(c.items(item.get("toPorts"), path + ".toPorts"))]
    icmps = [_icmp_rule(c, v, "%s.icmps[%d]" % (path, i))
             for i, v in enumerate(c.items(item.get("icmps"), path + ".icmps"))]
    if ports and icmps:
        c.bad(path, "icmps and toPorts cannot be in the same rule (Cilium refuses it): write a separate rule "
              "for each")
    if ports:
        out["toPorts"] = ports
    if icmps:
        out["icmps"] = icmps
    return out


# --- Kubernetes NetworkPolicy -------------------------------------------------------------------

def _k8s_spec(c: _PolicyChecker, value, path: str) -> dict:
    spec = c.known(value, path, ("podSelector", "ingress", "egress", "policyTypes"), required=("podSelector",))
    out = {"podSelector": _selector(c, spec.get("podSelector"), path + ".podSelector", False)}
    for section, peers_field in (("ingress", "from"), ("egress", "to")):
        rules = []
        for i, item in enumerate(c.items(spec.get(section), "%s.%s" % (path, section))):
            ipath = "%s.%s[%d]" % (path, section, i)
            item = c.known(item, ipath, (peers_field, "ports"))
            rule = {}
            peers = [_k8s_peer(c, p, "%s.%s[%d]" % (ipath, peers_field, j))
                     for j, p in enumerate(c.items(item.get(peers_field), "%s.%s" % (ipath, peers_field)))]
            if peers:
                rule[peers_field] = peers
            ports = [_k8s_port(c, p, "%s.ports[%d]" % (ipath, j))
                     for j, p in enumerate(c.items(item.get("ports"), ipath + ".ports"))]
            if ports:
                rule["ports"] = ports
            rules.append(rule)
        if rules:
            out[section] = rules
    types = spec.get("policyTypes")
    if types is None:
        # The API server's default: Ingress, and Egress when there are egress rules.
        types = ["Ingress"] + (["Egress"] if out.get("egress") else [])
    elif not isinstance(types, list) or not all(t in ("Ingress", "Egress") for t in types):
        c.bad(path + ".policyTypes", "must be a list of \"Ingress\" and/or \"Egress\" (got %s)" % _q(types))
        types = []
    elif len(set(types)) != len(types):  # (all strings by now)
        c.bad(path + ".policyTypes", "lists a type twice: %s" % _q(types))
    out["policyTypes"] = list(types)
    for section, kind in (("ingress", "Ingress"), ("egress", "Egress")):
        if out.get(section) and types and kind not in types:
            c.bad("%s.%s" % (path, section), "there are %s rules but policyTypes does not list %s: Kubernetes "
                  "would ignore them while Cilium enforces them, so Apiary refuses the policy (add %s to "
                  "policyTypes, or remove the rules)" % (section, kind, kind))
    return out


def _k8s_peer(c: _PolicyChecker, value, path: str) -> dict:
    peer = c.known(value, path, ("podSelector", "namespaceSelector", "ipBlock"))
    out = {}
    for field in ("podSelector", "namespaceSelector"):
        if peer.get(field) is not None:
            out[field] = _selector(c, peer[field], "%s.%s" % (path, field), False)
    if peer.get("ipBlock") is not None:
        if out:
            c.bad(path, "may not specify more than 1 peer: ipBlock cannot be combined with podSelector or "
                  "namespaceSelector")
        out["ipBlock"] = _cidr_rule(c, peer["ipBlock"], path + ".ipBlock", True, False)
    if isinstance(value, dict) and not out:
        c.bad(path, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
    return out


def _k8s_port(c: _PolicyChecker, value, path: str) -> dict:
    port = c.known(value, path, ("protocol", "port", "endPort"))
    protocol = port.get("protocol", "TCP")
    if protocol not in K8S_PROTOCOLS:
        c.bad(path + ".protocol", "unsupported value %s: supported values: %s"
              % (_q(protocol), ", ".join(_q(p) for p in K8S_PROTOCOLS)))
    out = {"protocol": protocol}
    raw = port.get("port")
    if isinstance(raw, bool) or isinstance(raw, int):
        c.integer(raw, path + ".port", 1, 65535)
        out["port"] = raw
    elif isinstance(raw, str):
        if not (len(raw) <= 15 and IANA_SVC_NAME.match(raw) and re.search("[a-z]", raw) and "--" not in raw):
            c.bad(path + ".port", "%s is not a port name (at most 15 lower-case letters, digits and '-', with a "
                  "letter; a port number is written without quotes)" % _q(raw))
        out["port"] = raw
    elif raw is not None:
        c.bad(path + ".port", "must be a port number or a port name (got %s)" % _kind_of(raw))
    end = port.get("endPort")
    if end is not None:
        c.integer(end, path + ".endPort", 1, 65535)
        if not isinstance(raw, int) or isinstance(raw, bool):
            c.bad(path + ".endPort", "may not be specified unless port is a port number")
        elif isinstance(end, int) and not isinstance(end, bool) and end < raw:
            c.bad(path + ".endPort", "must be greater than or equal to port (%d < %d)" % (end, raw))
        out["endPort"] = end
    return out


# --- translation to Cilium's rules --------------------------------------------------------------

def to_rules(obj: dict) -> list:
    """The object as Cilium's rules (the JSON `cilium policy get` prints), one per spec. The object is
    checked first (ValueError with every problem when it does not pass); metadata.uid, which the
    check drops as the server's, is taken from `obj`."""
    norm, problems = check(obj, "default")
    if problems:
        raise ValueError("\n".join(problems))
    meta = norm["metadata"]
    uid = (obj.get("metadata") or {}).get("uid")
    kind = norm["kind"]
    if kind == "NetworkPolicy":
        name = (meta.get("annotations") or {}).get(NAME_ANNOTATION) or meta["name"]
        return [_k8s_to_rule(norm["spec"], meta["namespace"], _policy_labels(kind, name, meta["namespace"], uid))]
    namespace = meta.get("namespace") if KINDS[kind][2] else None
    specs = ([norm["spec"]] if "spec" in norm else []) + norm.get("specs", [])
    return [_cilium_to_rule(spec, namespace, _policy_labels(kind, meta["name"], namespace, uid, spec.get("labels")))
            for spec in specs]


def _policy_labels(kind: str, name: str, namespace: str | None, uid, extra=None) -> list:
    labels = [{"key": POLICY_LABEL + ".derived-from", "value": kind, "source": "k8s"},
              {"key": POLICY_LABEL + ".name", "value": name, "source": "k8s"}]
    if namespace:
        labels.append({"key": POLICY_LABEL + ".namespace", "value": namespace, "source": "k8s"})
    if uid:
        labels.append({"key": POLICY_LABEL + ".uid", "value": str(uid), "source": "k8s"})
    # A rule's own labels; Cilium leaves an empty value out when it prints them.
    labels += [{k: v for k, v in label.items() if k != "value" or v} for label in extra or []]
    return sorted(labels, key=lambda label: label["key"])  # Cilium sorts a rule's labels by key (stable)


def _cilium_to_rule(spec: dict, namespace: str | None, labels: list) -> dict:
    """utils.go's ParseToCiliumRule."""
    subject = EndpointSelector.from_json(spec["endpointSelector"])
    matches_init = subject.has_key("reserved:init")
    if namespace:
        subject.add_match(POD_NAMESPACE, namespace)
    rule = {"endpointSelector": subject.to_json()}
    for section in SECTIONS:
        if spec.get(section):
            rule[section] = [_cilium_item(item, namespace, matches_init) for item in spec[section]]
    rule["labels"] = labels
    if spec.get("enableDefaultDeny"):
        rule["enableDefaultDeny"] = dict(spec["enableDefaultDeny"])
    if spec.get("description"):
        rule["description"] = spec["description"]
    return rule


def _cilium_item(item: dict, namespace: str | None, matches_init: bool) -> dict:
    out = {}
    for field in ("fromEndpoints", "toEndpoints"):
        if field in item:
            out[field] = [_peer_selector(sel, namespace, matches_init).to_json() for sel in item[field]]
    for field in ("fromCIDR", "fromCIDRSet", "fromEntities", "toCIDR", "toCIDRSet", "toEntities", "toPorts", "icmps"):
        if field in item:
            out[field] = copy.deepcopy(item[field])
    return out


def _peer_selector(selector: dict, namespace: str | None, matches_init: bool) -> EndpointSelector:
    """utils.go's getEndpointSelector: a peer selector is limited to the policy's namespace unless it
    names a namespace (or namespace labels) itself; selectors on reserved: labels are left alone."""
    es = EndpointSelector.from_json(selector)
    if es.has_key_prefix("reserved:"):
        return es
    if not es.has_key(POD_NAMESPACE) and not es.has_key(POD_NAMESPACE_ANY):
        if namespace is None:
            # Clusterwide: only Cilium-managed pods (they have a namespace), unless the rule is for
            # initializing endpoints, which have no labels at all.
            if not matches_init:
                es.add_expression(POD_NAMESPACE, "Exists")
        elif not es.has_key_prefix("k8s:" + NAMESPACE_LABELS) and not es.has_key_prefix("any:" + NAMESPACE_LABELS):
            es.add_match(POD_NAMESPACE, namespace)
    return es


def _k8s_to_rule(spec: dict, namespace: str, labels: list) -> dict:
    """network_policy.go's ParseNetworkPolicy (with endPort)."""
    sections = {}
    for section, peers_field, l3, cidrs in (("ingress", "from", "fromEndpoints", "fromCIDRSet"),
                                            ("egress", "to", "toEndpoints", "toCIDRSet")):
        rules = []
        for item in spec.get(section, []):
            made = []
            for peer in item.get(peers_field) or []:
                rule = {}
                selector = _k8s_peer_selector(peer, namespace)
                if selector is not None:
                    rule[l3] = [selector.to_json()]
                if "ipBlock" in peer:
                    rule[cidrs] = [copy.deepcopy(peer["ipBlock"])]
                made.append(rule)
            if not made:
                made = [{l3: [{}]}]  # no peers: every source (or destination), the wildcard selector
            for rule in made:
                if item.get("ports"):
                    rule["toPorts"] = [{"ports": [_k8s_port_to_cilium(p)]} for p in item["ports"]]
            rules.extend(made)
        sections[section] = rules
    types = spec["policyTypes"]
    # Kubernetes' default deny: a listed policyType without rules isolates that direction.
    if not sections["ingress"] and ("Ingress" in types or "Egress" not in types):
        sections["ingress"] = [{}]
    if not sections["egress"] and "Egress" in types:
        sections["egress"] = [{}]
    subject = EndpointSelector.from_json(spec["podSelector"], default_source="k8s")
    subject.add_match(POD_NAMESPACE, namespace)
    rule = {"endpointSelector": subject.to_json()}
    for section in ("ingress", "egress"):
        if sections[section]:
            rule[section] = sections[section]
    rule["labels"] = labels
    return rule


def _k8s_peer_selector(peer: dict, namespace: str) -> EndpointSelector | None:
    if "namespaceSelector" in peer:
        ns_sel = peer["namespaceSelector"]
        es = EndpointSelector(
            {"%s.%s" % (NAMESPACE_LABELS, k): v for k, v in (ns_sel.get("matchLabels") or {}).items()},
            [dict(e, key="%s.%s" % (NAMESPACE_LABELS, e["key"])) for e in ns_sel.get("matchExpressions") or []],
            default_source="k8s")
        if es.is_wildcard():
            es.add_expression(POD_NAMESPACE, "Exists")  # namespaceSelector {}: pods of every namespace
        pods = EndpointSelector.from_json(peer.get("podSelector"), default_source="k8s")
        for key, value in pods.match_labels.items():
            es.add_match(key, value)
        for key, operator, values in pods.match_expressions:
            es.add_expression(key, operator, values)
        return es
    if "podSelector" in peer:
        es = EndpointSelector.from_json(peer["podSelector"], default_source="k8s")
        es.add_match(POD_NAMESPACE, namespace)
        return es
    return None


def _k8s_port_to_cilium(port: dict) -> dict:
    out = {"port": str(port["port"]) if "port" in port else "0"}
    if port.get("endPort"):
        out["endPort"] = port["endPort"]
    out["protocol"] = port["protocol"]
    return out


# apiary.k8s.validation.check_documents' checkers of the policy kinds (it has resolved the namespace).
CHECKERS = {kind: (lambda obj, ns, who: check(obj, ns)) for kind in KINDS}
