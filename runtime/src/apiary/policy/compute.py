"""The policy of one endpoint as policy map entries (Cilium's pkg/policy repository.go, rules, mapstate).

An entry is (remote identity, direction, protocol, port block) -> allow or deny. The datapath looks
up two keys per packet, the remote identity's and identity 0's (any identity), each by longest prefix
over (protocol, port); it drops when either says deny, passes when either says allow, and drops when
neither matches. The entries are resolved for that:

- within one identity, an allow inside a deny's range becomes a deny (else the longer allow would win
  the lookup); a deny inside a broader allow is kept as the more specific entry;
- an allow for a specific identity inside a deny for every identity (0) becomes a deny too, and a
  deny for identity 0 inside a broader allow for a specific identity is copied to that identity, so
  the lookup of one identity alone gives the right verdict as well.

Protocol 0 is any protocol (port 0, prefix 0); port_prefix 0 is any port, 16 one port, 1..15 an
aligned block of 2**(16 - prefix) ports; for ICMP the port is the ICMP type.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from apiary.policy.rules import PEERS, icmp_type
from apiary.policy.selector import EndpointSelector, LabelSet

PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
ICMP_PROTOCOLS = {"IPv4": 1, "IPv6": 58}
WORLD = 2
# Derived-from labels of the entries Cilium makes itself (pkg/policy/mapstate.go).
ALLOW_ANY = {False: "reserved:io.cilium.policy.derived-from=allow-any-ingress",
             True: "reserved:io.cilium.policy.derived-from=allow-any-egress"}
ALLOW_LOCALHOST = "reserved:io.cilium.policy.derived-from=allow-localhost-ingress"
# Entities, as the reserved labels they select (pkg/policy/api/entity.go). `host` also takes the
# kube-apiserver identity: in Cilium the host carries that label when the apiserver runs there.
ENTITY_LABELS = {
    "world": ("reserved:world",), "host": ("reserved:host", "reserved:kube-apiserver"),
    "remote-node": ("reserved:remote-node",), "kube-apiserver": ("reserved:kube-apiserver",),
    "health": ("reserved:health",), "init": ("reserved:init",), "ingress": ("reserved:ingress",),
    "unmanaged": ("reserved:unmanaged",),
}


@dataclass(frozen=True, order=True)
class PolicyKey:
    identity: int      # remote security identity; 0 = any identity (wildcard)
    egress: bool       # False: ingress (traffic into the endpoint), True: egress
    protocol: int      # IP protocol number; 0 = any protocol (then port == 0 and port_prefix == 0)
    port: int          # destination port (for ICMP: the ICMP type); the first port of a block
    port_prefix: int   # 0 = any port; 16 = exactly `port`; 1..15: the aligned block of 2**(16-port_prefix) ports

    def covers(self, other: "PolicyKey") -> bool:
        """Whether this key's (protocol, port block) contains other's (identities are not compared)."""
        if self.protocol == 0:
            return True
        if self.protocol != other.protocol or other.port_prefix < self.port_prefix:
            return False
        shift = 16 - self.port_prefix
        return other.port >> shift == self.port >> shift


@dataclass(frozen=True)
class PolicyValue:
    deny: bool
    derived_from: tuple  # sorted label strings of the rules that produced it


@dataclass
class EndpointPolicy:
    ingress_enforced: bool
    egress_enforced: bool
    entries: dict = field(default_factory=dict)  # PolicyKey -> PolicyValue


# --- helpers for callers ------------------------------------------------------------------------

def selected(rules: list, endpoint_labels) -> list:
    """The rules whose endpointSelector selects an endpoint with these labels."""
    labels = LabelSet(endpoint_labels)
    return [rule for rule in rules
            if "endpointSelector" in rule and EndpointSelector.from_json(rule["endpointSelector"]).matches(labels)]


def _cidrs_of(item: dict, direction: str):
    """(network, [except networks]) of an item's CIDR peers."""
    prefix = "from" if direction == "ingress" else "to"
    for cidr in item.get(prefix + "CIDR") or []:
        yield ipaddress.ip_network(cidr, strict=False), []
    for rule in item.get(prefix + "CIDRSet") or []:
        yield (ipaddress.ip_network(rule["cidr"], strict=False),
               [ipaddress.ip_network(e, strict=False) for e in rule.get("except") or []])


def cidr_prefixes(rules: list) -> set:
    """Every CIDR and except CIDR the rules name, canonical (e.g. "10.0.0.0/8"). The agent gives each
    its own CIDR identity in the ipcache, so an address inside an except gets another identity than
    one in the rest of the CIDR. /0 is left out: the world identity stands for it."""
    out = set()
    for rule in rules:
        for section in ("ingress", "ingressDeny", "egress", "egressDeny"):
            direction = "egress" if section.startswith("egress") else "ingress"
            for item in rule.get(section) or []:
                for network, excepts in _cidrs_of(item, direction):
                    out.update(str(n) for n in [network] + excepts if n.prefixlen)
    return out


def cidr_identity_labels(prefix: str) -> list:
    """The labels of a CIDR identity: cidr:<prefix> (IPv6 with '-' for ':', as Cilium) and reserved:world."""
    network = ipaddress.ip_network(prefix, strict=False)
    return ["cidr:%s" % str(network).replace(":", "-"), "reserved:world"]


def _label_network(label: str):
    """The network of a cidr: label, or None."""
    if not label.startswith("cidr:"):
        return None
    text = label[len("cidr:"):].split("=", 1)[0]
    for candidate in (text, text.replace("-", ":")):
        try:
            return ipaddress.ip_network(candidate, strict=False)
        except ValueError:
            pass
    return None


def port_blocks(first: int, last: int) -> list:
    """The fewest aligned (port, port_prefix) blocks that cover first..last."""
    blocks = []
    while first <= last:
        size = first & -first if first else 1 << 16
        while size > last - first + 1:
            size >>= 1
        blocks.append((first, 17 - size.bit_length()))
        first += size
    return blocks


# --- compute ------------------------------------------------------------------------------------

class _Identities:
    """The cluster's identities, prepared for selecting."""

    def __init__(self, identities: dict):
        self.labels = {ident: LabelSet(labels) for ident, labels in identities.items() if ident != 0}
        self.raw = {ident: set(labels) for ident, labels in identities.items() if ident != 0}
        self.networks = {}
        for ident, labels in identities.items():
            nets = [n for n in (_label_network(label) for label in labels) if n is not None]
            if nets:
                self.networks[ident] = nets

    def select(self, selector: dict) -> set:
        es = EndpointSelector.from_json(selector)
        if es.is_wildcard():
            return {0}
        return {ident for ident, labels in self.labels.items() if es.matches(labels)}

    def entity(self, name: str) -> set:
        if name == "all":
            return {0}
        if name == "cluster":  # everything but the world and CIDR identities
            return {ident for ident, labels in self.raw.items()
                    if "reserved:world" not in labels and ident not in self.networks}
        wanted = ENTITY_LABELS[name]
        return {ident for ident, labels in self.raw.items() if any(w in labels for w in wanted)}

    def cidr(self, network, excepts) -> set:
        out = set()
        if network.prefixlen == 0:  # 0.0.0.0/0 and ::/0 take in the world identity
            out |= {ident for ident, labels in self.raw.items()
                    if labels == {"reserved:world"} or ident == WORLD}
        for ident, nets in self.networks.items():
            for net in nets:
                if net.version == network.version and net.subnet_of(network) and not any(
                        net.version == e.version and net.subnet_of(e) for e in excepts):
                    out.add(ident)
        return out


def _peers(item: dict, direction: str, ids: _Identities):
    """The identities an item's peers select, or None when it names no peer."""
    endpoints, _, _, entities = PEERS[direction]
    if not any(item.get(f) is not None for f in PEERS[direction]):
        return None
    out = set()
    for selector in item.get(endpoints) or []:
        out |= ids.select(selector)
    for name in item.get(entities) or []:
        out |= ids.entity(name)
    for network, excepts in _cidrs_of(item, direction):
        out |= ids.cidr(network, excepts)
    return {0} if 0 in out else out


def _l4(item: dict, named_ports: dict):
    """(protocol, port, port_prefix) triples of an item's toPorts/icmps, or None when it has neither."""
    if not item.get("toPorts") and not item.get("icmps"):
        return None
    out = set()
    for port_rule in item.get("toPorts") or []:
        ports = port_rule.get("ports") or []
        if not ports:
            out.add((0, 0, 0))  # a port rule without ports: every port of every protocol
        for port in ports:
            protocol = port.get("protocol", "ANY")
            numbers = list(PROTOCOLS.values()) if protocol == "ANY" else [PROTOCOLS[protocol]]
            text = str(port["port"])
            if not text.isdigit():  # a named port: the numbers it stands for, narrowed by the protocol
                for number, proto in named_ports.get(text.lower(), ()):
                    if proto in numbers:
                        out.add((proto, number, 16))
                continue
            first = int(text)
            if first == 0:
                out.update([(0, 0, 0)] if protocol == "ANY" else [(p, 0, 0) for p in numbers])
                continue
            last = max(first, port.get("endPort") or first)
            for proto in numbers:
                out.update((proto, start, prefix) for start, prefix in port_blocks(first, last))
    for icmp in item.get("icmps") or []:
        for f in icmp.get("fields") or []:
            family = f.get("family") or "IPv4"
            out.add((ICMP_PROTOCOLS[family], icmp_type(family, f["type"]), 16))
    return out


def _rule_labels(rule: dict) -> set:
    out = set()
    for label in rule.get("labels") or []:
        value = label.get("value") or ""
        out.add("%s:%s%s" % (label.get("source") or "unspec", label["key"], "=" + value if value else ""))
    return out


def _default_deny(rule: dict, section: str) -> bool:
    """Cilium's Rule.Sanitize default: deny by default in a direction the rule has rules for."""
    value = (rule.get("enableDefaultDeny") or {}).get(section)
    return True if value is None else bool(value)


def compute(rules: list, endpoint_labels: list, identities: dict, *, ingress_named_ports: dict | None = None,
            egress_named_ports: dict | None = None, allow_localhost: bool = True) -> EndpointPolicy:
    """The entries of one endpoint (its labels) given every rule of the cluster (to_rules output) and
    every identity the cluster knows ({id: labels}). Named ports: {name: {(port, protocol number)}},
    the endpoint's own for ingress, every pod's for egress."""
    ids = _Identities(identities)
    mine = selected(rules, endpoint_labels)
    named = {False: ingress_named_ports or {}, True: egress_named_ports or {}}
    init = "reserved:init" in set(endpoint_labels)
    allow, deny = {}, {}
    enforced = {}
    for egress, direction in ((False, "ingress"), (True, "egress")):
        with_rules = [r for r in mine if r.get(direction) or r.get(direction + "Deny")]
        # repository.go: a direction is enforced when a rule selecting the endpoint has rules for it
        # and asks for default deny (enableDefaultDeny, true unless set false); init endpoints always.
        enforced[egress] = init or any(_default_deny(r, direction) for r in with_rules)
        for rule in with_rules:
            sources = _rule_labels(rule)
            for section, target in ((direction, allow), (direction + "Deny", deny)):
                for item in rule.get(section) or []:
                    peers = _peers(item, direction, ids)
                    l4 = _l4(item, named[egress])
                    if peers is None and l4 is None:
                        continue  # an empty rule: it enforces the direction and allows nothing
                    # No ports: every protocol. Ports that resolve to nothing (an unknown port name)
                    # give no entry at all, never "every port".
                    for ident in {0} if peers is None else peers:
                        for proto, port, prefix in [(0, 0, 0)] if l4 is None else l4:
                            key = PolicyKey(ident, egress, proto, port, prefix)
                            target.setdefault(key, set()).update(sources)
        if not enforced[egress]:
            # Not enforced: everything is allowed but what a deny rule denies (Cilium's allow-any).
            for key in [k for k in allow if k.egress == egress]:
                del allow[key]
            allow[PolicyKey(0, egress, 0, 0, 0)] = {ALLOW_ANY[egress]}
    if allow_localhost and enforced[False]:
        # Cilium's allow-localhost: node health checks and kubelet probes come from the host.
        host = PolicyKey(1, False, 0, 0, 0)
        if not any(k in deny for k in (host, replace(host, identity=0))):
            allow.setdefault(host, set()).add(ALLOW_LOCALHOST)
    return EndpointPolicy(enforced[False], enforced[True], _resolve(allow, deny))


def _resolve(allow: dict, deny: dict) -> dict:
    """Entries such that deny always wins, for the two-lookup datapath and for one identity alone."""
    deny = {k: set(v) for k, v in deny.items()}
    kept = {}
    for key, sources in allow.items():
        covering = [d for d in deny if d.egress == key.egress and d.identity in (key.identity, 0) and d.covers(key)]
        if covering:
            # An allow inside a deny's range would win the longest-prefix lookup: it becomes a deny.
            target = deny.setdefault(key, set())
            for d in covering:
                target |= deny[d]
        else:
            kept[key] = sources
    for key in kept:
        if key.identity == 0:
            continue
        for d in [d for d in deny if d.identity == 0 and d.egress == key.egress and key.covers(d)]:
            # A wildcard deny narrower than this identity's allow: the identity gets it as well.
            deny.setdefault(replace(d, identity=key.identity), set()).update(deny[d])
    entries = {k: PolicyValue(False, tuple(sorted(v))) for k, v in kept.items()}
    entries.update({k: PolicyValue(True, tuple(sorted(v))) for k, v in deny.items()})
    return dict(sorted(entries.items()))
