"""kube-proxy's iptables mode, reproduced: the rules kube-proxy (1.28 and later) writes for a set of Services.

What Apiary replaces, made faithfully so it can be measured and removed: test fixtures load it into a node
namespace, and bench/services compares it with Apiary's datapath. It follows syncProxyRules in
kubernetes/pkg/proxy/iptables/proxier.go line by line:

- chain names: KUBE-SVC-/SVL-/EXT-/FW- + base32(sha256(servicePortName + protocol))[:16], KUBE-SEP- the same
  with the endpoint ("ip:port") appended; servicePortName is "namespace/name" plus ":portname" if named;
- KUBE-SVC rules pick an endpoint with `-m statistic --mode random --probability 1/n, 1/(n-1), ...`, the last one
  unconditionally; KUBE-SEP rules mark hairpin traffic for masquerade and DNAT;
- the filter table's KUBE-SERVICES / KUBE-EXTERNAL-SERVICES / KUBE-NODEPORTS / KUBE-FORWARD /
  KUBE-PROXY-FIREWALL (and KUBE-FIREWALL, shared with kubelet);
- "large cluster mode" (more than 1000 endpoints) drops the per-endpoint comments;
- a partial sync (one Service changed) rewrites the top-level chains but only that Service's chains.

kube-proxy applies this text with `iptables-restore --noflush` and inserts the jumps from the built-in chains with
`iptables -I` (see node_restore_text). Left out: topology hints, terminating endpoints, and the nfacct counters
(metrics only; kube-proxy leaves them out too when the kernel has no nfacct). Services and endpoints are
ordered by name (kube-proxy iterates a Go map, so its order varies from sync to sync).
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_PROXY_CANARY = "KUBE-PROXY-CANARY"
# Kubelet's anti-martian chain: kube-proxy writes a copy of its rule but never deletes it.
KUBE_FIREWALL = "KUBE-FIREWALL"

LARGE_CLUSTER_ENDPOINTS = 1000
PROTOCOLS = ("TCP", "UDP", "SCTP")

# The jumps kube-proxy ensures from the built-in chains (iptablesJumpChains, then kubelet's two), in that
# order, each inserted at the top: the last one ends up first. (table, chain, from, comment, extra args)
JUMPS = (
    ("filter", KUBE_EXTERNAL_SERVICES, "INPUT", "kubernetes externally-visible service portals", "-m conntrack --ctstate NEW"),
    ("filter", KUBE_EXTERNAL_SERVICES, "FORWARD", "kubernetes externally-visible service portals", "-m conntrack --ctstate NEW"),
    ("filter", KUBE_NODEPORTS, "INPUT", "kubernetes health check service ports", ""),
    ("filter", KUBE_SERVICES, "FORWARD", "kubernetes service portals", "-m conntrack --ctstate NEW"),
    ("filter", KUBE_SERVICES, "OUTPUT", "kubernetes service portals", "-m conntrack --ctstate NEW"),
    ("filter", KUBE_FORWARD, "FORWARD", "kubernetes forwarding rules", ""),
    ("filter", KUBE_PROXY_FIREWALL, "INPUT", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"),
    ("filter", KUBE_PROXY_FIREWALL, "OUTPUT", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"),
    ("filter", KUBE_PROXY_FIREWALL, "FORWARD", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"),
    ("nat", KUBE_SERVICES, "OUTPUT", "kubernetes service portals", ""),
    ("nat", KUBE_SERVICES, "PREROUTING", "kubernetes service portals", ""),
    ("nat", KUBE_POSTROUTING, "POSTROUTING", "kubernetes postrouting rules", ""),
    ("filter", KUBE_FIREWALL, "INPUT", "", ""),
    ("filter", KUBE_FIREWALL, "OUTPUT", "", ""),
)


def port_proto_hash(service_port_name: str, protocol: str) -> str:
    digest = hashlib.sha256((service_port_name + protocol).encode()).digest()
    return base64.b32encode(digest).decode()[:16]


def endpoint_chain_name(service_port_name: str, protocol: str, endpoint: str) -> str:
    digest = hashlib.sha256((service_port_name + protocol + endpoint).encode()).digest()
    return "KUBE-SEP-" + base64.b32encode(digest).decode()[:16]


def probability(n: int) -> str:
    """The statistic match for the first of n remaining endpoints (computeProbability)."""
    return "%0.10f" % (1.0 / n)


def _quote(text: str) -> str:
    return '"%s"' % text


def _ip(where: str, value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("%s: %r is not an IP address" % (where, value)) from None


def _port(where: str, value, allow_zero=False) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not (0 if allow_zero else 1) <= value <= 65535:
        raise ValueError("%s: %r is not a port (1-65535)" % (where, value))
    return value


@dataclass(frozen=True)
class Endpoint:
    """A ready endpoint of a service port; `local` when it runs on this node (Local traffic policies)."""
    ip: str
    port: int
    local: bool = False

    def __str__(self):
        return "[%s]:%d" % (self.ip, self.port) if ":" in self.ip else "%s:%d" % (self.ip, self.port)


@dataclass(frozen=True)
class ServicePort:
    """One port of a Service, with its endpoints: kube-proxy's unit of work (servicePortInfo)."""
    namespace: str
    name: str
    cluster_ip: str
    port: int
    protocol: str = "TCP"
    port_name: str = ""
    endpoints: tuple = ()
    node_port: int = 0
    external_ips: tuple = ()
    load_balancer_ips: tuple = ()
    load_balancer_source_ranges: tuple = ()
    health_check_node_port: int = 0
    # sessionAffinity: ClientIP with this timeout (seconds); None is affinity None.
    affinity_timeout: int | None = None
    external_policy_local: bool = False
    internal_policy_local: bool = False

    def __post_init__(self):
        where = self.name_string
        _ip(where + ": cluster_ip", self.cluster_ip)
        _port(where + ": port", self.port)
        _port(where + ": node_port", self.node_port, allow_zero=True)
        _port(where + ": health_check_node_port", self.health_check_node_port, allow_zero=True)
        if self.protocol not in PROTOCOLS:
            raise ValueError("%s: protocol: %r is not one of %s" % (where, self.protocol, ", ".join(PROTOCOLS)))
        for index, endpoint in enumerate(self.endpoints):
            _ip("%s: endpoints[%d].ip" % (where, index), endpoint.ip)
            _port("%s: endpoints[%d].port" % (where, index), endpoint.port)
        for key in ("external_ips", "load_balancer_ips"):
            for index, address in enumerate(getattr(self, key)):
                _ip("%s: %s[%d]" % (where, key, index), address)
        for index, cidr in enumerate(self.load_balancer_source_ranges):
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                raise ValueError("%s: load_balancer_source_ranges[%d]: %r is not a CIDR" % (where, index, cidr)) from None

    @property
    def service(self) -> tuple:
        return (self.namespace, self.name)

    @property
    def name_string(self) -> str:
        return "%s/%s%s" % (self.namespace, self.name, ":" + self.port_name if self.port_name else "")

    def chain(self, prefix: str) -> str:
        """KUBE-SVC-, KUBE-SVL-, KUBE-EXT- or KUBE-FW- followed by this port's hash."""
        return prefix + port_proto_hash(self.name_string, self.protocol.lower())

    def endpoint_chain(self, endpoint: Endpoint) -> str:
        return endpoint_chain_name(self.name_string, self.protocol.lower(), str(endpoint))

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)

    @property
    def external_local(self) -> bool:
        return self.external_policy_local and self.externally_accessible

    @property
    def uses_cluster_endpoints(self) -> bool:
        return not self.internal_policy_local or (self.externally_accessible and not self.external_local)

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or self.external_local


@dataclass(frozen=True)
class ProxyConfig:
    """kube-proxy's settings that shape its rules (defaults: a kubeadm/Kubespray node)."""
    # 1 << masqueradeBit (14), as iptables-save prints it.
    masquerade_mark: str = "0x4000"
    # The local traffic detector (--cluster-cidr): traffic from outside it to a cluster IP is masqueraded.
    # None: no detector (kube-proxy then writes no such rule).
    cluster_cidr: str | None = None
    masquerade_all: bool = False
    # MASQUERADE --random-fully, which every iptables since 1.6.2 supports.
    random_fully: bool = True
    localhost_nodeports: bool = True
    # nf_conntrack_tcp_be_liberal set on the node: no DROP of INVALID packets.
    conntrack_tcp_liberal: bool = False
    ipv6: bool = False
    # The node's address: a load balancer source range holding it also lets the LB IPs themselves in.
    node_ip: str | None = None


class _Lines:
    def __init__(self):
        self.lines = []

    def write(self, *parts):
        self.lines.append(" ".join(p for p in parts if p))


def _categorize(svc: ServicePort):
    """proxy.CategorizeEndpoints for ready endpoints, sorted as kube-proxy's endpoints map is (by "ip:port")."""
    endpoints = sorted(svc.endpoints, key=str)
    cluster = endpoints if svc.uses_cluster_endpoints else []
    local = [e for e in endpoints if e.local] if svc.uses_local_endpoints else []
    if not svc.uses_local_endpoints:
        return cluster, local, cluster, bool(cluster)
    if not svc.uses_cluster_endpoints:
        return cluster, local, local, bool(endpoints)
    return cluster, local, cluster + [e for e in local if e not in cluster], bool(endpoints)


def _sync(ports, config: ProxyConfig, rewrite=None, stale=()):
    """(filter text, nat text) as syncProxyRules writes them. rewrite: None for a full sync, else the services
    (namespace, name) whose own chains are written (a partial sync); stale: chains to delete."""
    ports = sorted(ports, key=lambda p: (p.name_string, p.protocol))
    filter_chains, filter_rules, nat_chains, nat_rules = _Lines(), _Lines(), _Lines(), _Lines()
    skipped = _Lines()
    mark = config.masquerade_mark

    for chain in (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL):
        filter_chains.write(":%s - [0:0]" % chain)
    for chain in (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ):
        nat_chains.write(":%s - [0:0]" % chain)
    nat_rules.write("-A", KUBE_POSTROUTING, "-m mark ! --mark %s/%s -j RETURN" % (mark, mark))
    nat_rules.write("-A", KUBE_POSTROUTING, "-j MARK --xor-mark", mark)
    nat_rules.write("-A", KUBE_POSTROUTING, "-m comment --comment", _quote("kubernetes service traffic requiring SNAT"),
                    "-j MASQUERADE", "--random-fully" if config.random_fully else "")
    nat_rules.write("-A", KUBE_MARK_MASQ, "-j MARK --or-mark", mark)
    if not config.ipv6 and config.localhost_nodeports:
        filter_chains.write(":%s - [0:0]" % KUBE_FIREWALL)
        filter_rules.write("-A", KUBE_FIREWALL, "-m comment --comment", _quote("block incoming localnet connections"),
                           "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")

    large = sum(len(p.endpoints) for p in ports) > LARGE_CLUSTER_ENDPOINTS

    def comment(text):  # appendServiceCommentLocked
        return "" if large else "-m comment --comment " + text

    for svc in ports:
        proto = svc.protocol.lower()
        name = svc.name_string
        match = "-m %s -p %s" % (proto, proto)
        cluster_eps, local_eps, reachable, has_endpoints = _categorize(svc)
        cluster_chain, local_chain = svc.chain("KUBE-SVC-"), svc.chain("KUBE-SVL-")
        uses_cluster_chain = bool(cluster_eps) and svc.uses_cluster_endpoints
        uses_local_chain = bool(local_eps) and svc.uses_local_endpoints

        internal_chain, has_internal = cluster_chain, has_endpoints
        if svc.internal_policy_local:
            internal_chain, has_internal = local_chain, has_endpoints and bool(local_eps)
        external_policy_chain, has_external = cluster_chain, has_endpoints
        if svc.external_local:
            external_policy_chain, has_external = local_chain, has_endpoints and bool(local_eps)
        ext_chain = svc.chain("KUBE-EXT-")
        uses_ext_chain = has_endpoints and svc.externally_accessible
        fw_chain = svc.chain("KUBE-FW-")
        uses_fw_chain = has_endpoints and bool(svc.load_balancer_ips) and bool(svc.load_balancer_source_ranges)
        lb_chain = fw_chain if uses_fw_chain else ext_chain

        if not has_endpoints:
            internal_target, external_target = "REJECT", "REJECT"
            internal_comment = external_comment = _quote("%s has no endpoints" % name)
        else:
            internal_target = external_target = internal_comment = external_comment = None
            if not has_internal:
                internal_target, internal_comment = "DROP", _quote("%s has no local endpoints" % name)
            if not has_external:
                external_target, external_comment = "DROP", _quote("%s has no local endpoints" % name)

        dest = "-d %s --dport %d" % (svc.cluster_ip, svc.port)
        if has_internal:
            nat_rules.write("-A", KUBE_SERVICES, "-m comment --comment", _quote("%s cluster IP" % name), match, dest,
                            "-j", internal_chain)
        else:
            filter_rules.write("-A", KUBE_SERVICES, "-m comment --comment", internal_comment, match, dest,
                               "-j", internal_target)

        for address in svc.external_ips:
            to = "-d %s --dport %d" % (address, svc.port)
            if has_endpoints:
                nat_rules.write("-A", KUBE_SERVICES, "-m comment --comment", _quote("%s external IP" % name), match, to,
                                "-j", ext_chain)
            if not has_external:
                filter_rules.write("-A", KUBE_EXTERNAL_SERVICES, "-m comment --comment", external_comment, match, to,
                                   "-j", external_target)
        for address in svc.load_balancer_ips:
            to = "-d %s --dport %d" % (address, svc.port)
            if has_endpoints:
                nat_rules.write("-A", KUBE_SERVICES, "-m comment --comment", _quote("%s loadbalancer IP" % name), match,
                                to, "-j", lb_chain)
            if uses_fw_chain:
                filter_rules.write("-A", KUBE_PROXY_FIREWALL, "-m comment --comment",
                                   _quote("%s traffic not accepted by %s" % (name, fw_chain)), match, to, "-j DROP")
        if not has_external:
            for address in svc.load_balancer_ips:
                filter_rules.write("-A", KUBE_EXTERNAL_SERVICES, "-m comment --comment", external_comment, match,
                                   "-d %s --dport %d" % (address, svc.port), "-j", external_target)

        if svc.node_port:
            if has_endpoints:
                nat_rules.write("-A", KUBE_NODEPORTS, "-m comment --comment", name, match,
                                "--dport %d" % svc.node_port, "-j", ext_chain)
            if not has_external:
                filter_rules.write("-A", KUBE_EXTERNAL_SERVICES, "-m comment --comment", external_comment,
                                   "-m addrtype --dst-type LOCAL", match, "--dport %d" % svc.node_port,
                                   "-j", external_target)
        if svc.health_check_node_port:
            filter_rules.write("-A", KUBE_NODEPORTS, "-m comment --comment", _quote("%s health check node port" % name),
                               "-m tcp -p tcp --dport %d -j ACCEPT" % svc.health_check_node_port)

        # A partial sync leaves unchanged services' own chains as they are.
        own_chains, own_rules = nat_chains, nat_rules
        if rewrite is not None and svc.service not in rewrite:
            own_chains = own_rules = skipped

        if has_internal:
            args = "-m comment --comment %s %s %s" % (_quote("%s cluster IP" % name), match, dest)
            if config.masquerade_all:
                own_rules.write("-A", internal_chain, args, "-j", KUBE_MARK_MASQ)
            elif config.cluster_cidr:
                own_rules.write("-A", internal_chain, args, "! -s", config.cluster_cidr, "-j", KUBE_MARK_MASQ)

        if uses_ext_chain:
            own_chains.write(":%s - [0:0]" % ext_chain)
            if not svc.external_local:
                own_rules.write("-A", ext_chain, "-m comment --comment",
                                _quote("masquerade traffic for %s external destinations" % name), "-j", KUBE_MARK_MASQ)
            else:
                if config.cluster_cidr:
                    own_rules.write("-A", ext_chain, "-m comment --comment",
                                    _quote("pod traffic for %s external destinations" % name),
                                    "-s", config.cluster_cidr, "-j", cluster_chain)
                own_rules.write("-A", ext_chain, "-m comment --comment",
                                _quote("masquerade LOCAL traffic for %s external destinations" % name),
                                "-m addrtype --src-type LOCAL -j", KUBE_MARK_MASQ)
                own_rules.write("-A", ext_chain, "-m comment --comment",
                                _quote("route LOCAL traffic for %s external destinations" % name),
                                "-m addrtype --src-type LOCAL -j", cluster_chain)
            if has_external:
                own_rules.write("-A", ext_chain, "-j", external_policy_chain)

        if uses_fw_chain:
            own_chains.write(":%s - [0:0]" % fw_chain)
            head = "-A %s -m comment --comment %s" % (fw_chain, _quote("%s loadbalancer IP" % name))
            ranges = [ipaddress.ip_network(cidr.strip(), strict=False) for cidr in svc.load_balancer_source_ranges]
            for net in ranges:
                own_rules.write(head, "-s", str(net), "-j", ext_chain)
            # A VIP that is a local address loops back with the VIP as its source: let the node reach it.
            if config.node_ip and any(ipaddress.ip_address(config.node_ip) in net for net in ranges):
                for address in svc.load_balancer_ips:
                    own_rules.write(head, "-s", address, "-j", ext_chain)
            own_rules.write("-A", fw_chain, "-m comment --comment",
                            _quote("other traffic to %s will be dropped by KUBE-PROXY-FIREWALL" % name))

        for used, chain, endpoints in ((uses_cluster_chain, cluster_chain, cluster_eps),
                                       (uses_local_chain, local_chain, local_eps)):
            if used:
                own_chains.write(":%s - [0:0]" % chain)
                _service_to_endpoints(own_rules, svc, chain, endpoints, comment)

        for endpoint in reachable:
            sep = svc.endpoint_chain(endpoint)
            own_chains.write(":%s - [0:0]" % sep)
            own_rules.write("-A", sep, comment(name), "-s", endpoint.ip, "-j", KUBE_MARK_MASQ)
            affinity = "-m recent --name %s --set" % sep if svc.affinity_timeout is not None else ""
            own_rules.write("-A", sep, comment(name), affinity, match, "-j DNAT --to-destination", str(endpoint))

    for chain in stale:
        nat_chains.write(":%s - [0:0]" % chain)
        nat_rules.write("-X", chain)

    nodeports_last = "-m addrtype --dst-type LOCAL"
    if config.ipv6:
        nodeports_last += " ! -d ::1/128"
    elif not config.localhost_nodeports:
        nodeports_last += " ! -d 127.0.0.0/8"
    nat_rules.write("-A", KUBE_SERVICES, "-m comment --comment",
                    _quote("kubernetes service nodeports; NOTE: this must be the last rule in this chain"),
                    nodeports_last, "-j", KUBE_NODEPORTS)

    if not config.conntrack_tcp_liberal:
        filter_rules.write("-A", KUBE_FORWARD, "-m conntrack --ctstate INVALID -j DROP")
    filter_rules.write("-A", KUBE_FORWARD, "-m comment --comment", _quote("kubernetes forwarding rules"),
                       "-m mark --mark %s/%s -j ACCEPT" % (mark, mark))
    filter_rules.write("-A", KUBE_FORWARD, "-m comment --comment", _quote("kubernetes forwarding conntrack rule"),
                       "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    return filter_chains.lines + filter_rules.lines, nat_chains.lines + nat_rules.lines


def _service_to_endpoints(rules, svc, chain, endpoints, comment):
    """writeServiceToEndpointRules: affinity checks first, then one probabilistic jump per endpoint."""
    name = svc.name_string
    if svc.affinity_timeout is not None:
        for endpoint in endpoints:
            sep = svc.endpoint_chain(endpoint)
            rules.write("-A", chain, comment(_quote("%s -> %s" % (name, endpoint))),
                        "-m recent --name %s --rcheck --seconds %d --reap -j %s" % (sep, svc.affinity_timeout, sep))
    for index, endpoint in enumerate(endpoints):
        left = len(endpoints) - index
        statistic = "-m statistic --mode random --probability " + probability(left) if left > 1 else ""
        rules.write("-A", chain, comment(_quote("%s -> %s" % (name, endpoint))), statistic,
                    "-j", svc.endpoint_chain(endpoint))


def _text(filter_lines, nat_lines):
    return "*filter\n%s\nCOMMIT\n*nat\n%s\nCOMMIT\n" % ("\n".join(filter_lines), "\n".join(nat_lines))


def restore_text(ports, config: ProxyConfig = ProxyConfig()) -> str:
    """What a full sync hands to `iptables-restore --noflush`: the filter and nat tables."""
    return _text(*_sync(ports, config))


def active_nat_chains(ports, config: ProxyConfig = ProxyConfig()) -> set:
    """The per-service nat chains a full sync writes (what kube-proxy keeps; others of the kind are stale)."""
    _filter, nat = _sync(ports, config)
    return {line[1:].split()[0] for line in nat if line.startswith(":KUBE-") and line[6:9] in ("SVC", "SVL", "EXT", "FW-", "SEP")}


def changed_services(before, after) -> set:
    """(namespace, name) of every Service whose ports or endpoints differ (added and removed ones too)."""
    def by_service(ports):
        grouped = {}
        for port in ports:
            grouped.setdefault(port.service, set()).add(port)
        return grouped
    old, new = by_service(before), by_service(after)
    return {service for service in set(old) | set(new) if old.get(service) != new.get(service)}


def partial_restore_text(before, after, config: ProxyConfig = ProxyConfig()) -> str:
    """The restore input of the partial sync that follows a change from `before` to `after`.

    Top-level chains are rewritten whole; only the changed Services' own chains are written, and chains no
    longer in use are deleted. (In large cluster mode kube-proxy deletes stale chains only once per sync
    period; this always does, so applying it gives exactly the state of a full sync of `after`.)
    """
    stale = sorted(active_nat_chains(before, config) - active_nat_chains(after, config))
    return _text(*_sync(after, config, rewrite=changed_services(before, after), stale=stale))


def node_restore_text(ports, config: ProxyConfig = ProxyConfig()) -> str:
    """Everything kube-proxy leaves on a node, for `iptables-restore --noflush` on a node without it: the
    canary chains it monitors (mangle, nat, filter), a full sync, and the jumps from the built-in chains,
    inserted at the top in the order kube-proxy ensures them."""
    filter_lines, nat_lines = _sync(ports, config)
    if ":%s - [0:0]" % KUBE_FIREWALL not in filter_lines:
        # kube-proxy ensures kubelet's chain and its jumps even when it writes no rule into it.
        filter_lines.insert(0, ":%s - [0:0]" % KUBE_FIREWALL)
    jumps = {"filter": [], "nat": []}
    for table, chain, source, comment, extra in JUMPS:
        jumps[table].append(" ".join(p for p in ("-I", source, "1", extra,
                                                 "-m comment --comment " + _quote(comment) if comment else "",
                                                 "-j", chain) if p))
    canary = ":%s - [0:0]" % KUBE_PROXY_CANARY
    return ("*mangle\n%s\nCOMMIT\n" % canary
            + _text([canary] + filter_lines + jumps["filter"], [canary] + nat_lines + jumps["nat"]))
