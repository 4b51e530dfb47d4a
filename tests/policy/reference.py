"""Reference evaluators for the policy tests.

- `datapath_allows`: what the datapath does with an endpoint's entries: two longest-prefix lookups
  over (protocol, port), the remote identity's and identity 0's; a deny from either drops, an allow
  from either passes, no match drops.
- `rules_allow`: the verdict read straight from the rules (no entries), written independently of
  apiary.policy.compute, so the two can be compared packet by packet.
"""
import ipaddress

from apiary.policy.selector import EndpointSelector

TCP, UDP, SCTP, ICMP, ICMPV6 = 6, 17, 132, 1, 58


def lookup(entries: dict, identity: int, egress: bool, protocol: int, port: int):
    """Longest-prefix match among the entries of one identity: the PolicyValue, or None."""
    best, best_len = None, -1
    for key, value in entries.items():
        if key.identity != identity or key.egress != egress:
            continue
        if key.protocol == 0:
            length = 0
        elif key.protocol != protocol:
            continue
        else:
            shift = 16 - key.port_prefix
            if key.port_prefix and port >> shift != key.port >> shift:
                continue
            length = 8 + key.port_prefix
        assert length != best_len, "two entries of the same length match: %s" % key
        if length > best_len:
            best, best_len = value, length
    return best


def datapath_allows(policy, identity: int, egress: bool, protocol: int, port: int) -> bool:
    hits = [lookup(policy.entries, identity, egress, protocol, port), lookup(policy.entries, 0, egress, protocol, port)]
    if any(hit is not None and hit.deny for hit in hits):
        return False
    return any(hit is not None for hit in hits)


# --- the rules, read directly -------------------------------------------------------------------

_ENTITY = {"world": {"reserved:world"}, "host": {"reserved:host", "reserved:kube-apiserver"},
           "remote-node": {"reserved:remote-node"}, "kube-apiserver": {"reserved:kube-apiserver"},
           "health": {"reserved:health"}, "init": {"reserved:init"}, "ingress": {"reserved:ingress"},
           "unmanaged": {"reserved:unmanaged"}}


def _cidr_of(labels):
    for label in labels:
        if label.startswith("cidr:"):
            text = label[5:]
            return ipaddress.ip_network(text if "." in text else text.replace("-", ":"))
    return None


def _peer_matches(item, prefix, labels, identity):
    fields = [prefix + f for f in ("Endpoints", "CIDR", "CIDRSet", "Entities")]
    if not any(f in item for f in fields):
        return True
    for sel in item.get(prefix + "Endpoints", []):
        if EndpointSelector.from_json(sel).matches(labels):
            return True
    for entity in item.get(prefix + "Entities", []):
        if entity == "all" or (entity == "cluster" and "reserved:world" not in labels) or \
                set(labels) & _ENTITY.get(entity, set()):
            return True
    mine = _cidr_of(labels)
    rules = [{"cidr": c} for c in item.get(prefix + "CIDR", [])] + item.get(prefix + "CIDRSet", [])
    for rule in rules:
        net = ipaddress.ip_network(rule["cidr"], strict=False)
        if net.prefixlen == 0 and identity == 2:
            return True
        if mine is not None and mine.version == net.version and mine.subnet_of(net) and not any(
                mine.subnet_of(ipaddress.ip_network(e, strict=False)) for e in rule.get("except", [])
                if ipaddress.ip_network(e, strict=False).version == mine.version):
            return True
    return False


_ICMP_NAMES = {"IPv4": {"EchoReply": 0, "EchoRequest": 8, "Echo": 8}, "IPv6": {"EchoRequest": 128, "EchoReply": 129}}


def _l4_matches(item, protocol, port, named):
    if not item.get("toPorts") and not item.get("icmps"):
        return True
    for rule in item.get("toPorts", []):
        if not rule.get("ports"):
            return True
        for p in rule["ports"]:
            numbers = {"TCP": TCP, "UDP": UDP, "SCTP": SCTP}
            protos = set(numbers.values()) if p.get("protocol", "ANY") == "ANY" else {numbers[p["protocol"]]}
            if p["port"] == "0":
                if p.get("protocol", "ANY") == "ANY" or protocol in protos:
                    return True
                continue
            if protocol not in protos:
                continue
            if p["port"].isdigit():
                first = int(p["port"])
                if first <= port <= max(first, p.get("endPort") or first):
                    return True
            elif (port, protocol) in named.get(p["port"], set()):
                return True
    for icmp in item.get("icmps", []):
        for f in icmp["fields"]:
            family = f.get("family", "IPv4")
            kind = f["type"] if isinstance(f["type"], int) else _ICMP_NAMES[family][f["type"]]
            if protocol == (ICMP if family == "IPv4" else ICMPV6) and port == kind:
                return True
    return False


def rules_allow(rules, endpoint_labels, identities, identity, egress, protocol, port,
                ingress_named=None, egress_named=None, allow_localhost=True) -> bool:
    direction = "egress" if egress else "ingress"
    prefix = "to" if egress else "from"
    named = (egress_named if egress else ingress_named) or {}
    labels = identities[identity]
    mine = [r for r in rules if EndpointSelector.from_json(r["endpointSelector"]).matches(endpoint_labels)]
    with_rules = [r for r in mine if r.get(direction) or r.get(direction + "Deny")]
    enforced = any((r.get("enableDefaultDeny") or {}).get(direction, True) for r in with_rules)
    if "reserved:init" in endpoint_labels:
        enforced = True

    def hit(section):
        return any(_peer_matches(item, prefix, labels, identity) and _l4_matches(item, protocol, port, named)
                   and (item.get(prefix + "Endpoints") or item.get(prefix + "CIDR") or item.get(prefix + "CIDRSet")
                        or item.get(prefix + "Entities") or item.get("toPorts") or item.get("icmps"))
                   for r in with_rules for item in r.get(section) or [])

    if hit(direction + "Deny"):
        return False
    if not enforced:
        return True
    if hit(direction):
        return True
    return not egress and allow_localhost and identity == 1
