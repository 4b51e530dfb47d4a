# -*- coding: utf-8 -*-
# Copyright: Apiary developers
# Apache-2.0
"""Inventory validation and normalisation, shared by the validate_inventory action plugin and tests.

Everything here is pure: it takes the variables of one host (already templated) plus the
cluster-wide facts it needs, and returns errors, notices and the normalised settings. Nothing
on any host is touched, so a bad inventory stops the play before any change.
"""
from __future__ import annotations

import ipaddress
import re

from ansible_collections.apiary.cluster.plugins.module_utils.hubble import (
    HUBBLE_METRICS,
    check_event_buffer_capacity,
    check_port,
    unsupported_metrics,
)

ROUTING_MODES = ("native", "tunnel")
# Service load balancing (Cilium's loadBalancer.algorithm and maglev.tableSize: primes, M >> 100 x backends).
LB_ALGORITHMS = ("random", "maglev")
MAGLEV_TABLE_SIZES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
# Groups a host must belong to (at least one) to be part of an Apiary inventory.
KNOWN_GROUPS = ("kube_control_plane", "kube_node", "etcd", "calico_rr", "apiary_lab")

# Kubespray variable -> (Apiary variable, converter to Apiary's value). The seed's inventories
# set these; they are read as ours, with a one-line notice.
def _tunnel_mode(value):
    mapping = {"vxlan": "tunnel", "disabled": "native"}
    if value not in mapping:
        raise ValueError("must be one of vxlan, disabled (Apiary tunnels with VXLAN only)")
    return mapping[value]


def _kpr(value):
    if isinstance(value, str) and value.lower() in ("strict", "true"):
        return True
    if isinstance(value, str) and value.lower() in ("disabled", "false"):
        return False
    if isinstance(value, bool):
        return value
    raise ValueError("must be true, false, strict or disabled (partial/probe modes are not supported)")


def _same(value):
    return value


ALIASES = {
    "cilium_enable_hubble": ("apiary_hubble_enabled", _same),
    "cilium_enable_hubble_metrics": ("apiary_hubble_metrics_enabled", _same),
    "cilium_hubble_metrics": ("apiary_hubble_metrics", _same),
    "cilium_hubble_install": (("apiary_hubble_relay_enabled", "apiary_hubble_ui_enabled"), _same),
    "cilium_hubble_tls_generate": ("apiary_hubble_tls_generate", _same),
    "cilium_kube_proxy_replacement": ("apiary_kube_proxy_replacement", _kpr),
    "cilium_tunnel_mode": ("apiary_routing_mode", _tunnel_mode),
    "cilium_pool_cidr": ("apiary_cluster_pool_ipv4_cidr", _same),
    "cilium_pool_mask_size": ("apiary_cluster_pool_ipv4_mask_size", _same),
    "kube_pods_subnet": ("apiary_cluster_pool_ipv4_cidr", _same),
    "kube_network_node_prefix": ("apiary_cluster_pool_ipv4_mask_size", _same),
}

# Settings that are validated and normalised now but whose feature has not landed yet: using
# them is never silent, the user is told they have no effect so far.
NOT_YET_EFFECTIVE = {
    "metallb_enabled": "MetalLB-style load-balancer IPs",
}

BOOLEANS = (
    "apiary_kube_proxy_replacement", "apiary_hubble_enabled", "apiary_hubble_metrics_enabled",
    "apiary_hubble_relay_enabled", "apiary_hubble_ui_enabled", "apiary_hubble_tls_generate",
    "metallb_enabled", "apiary_bpffs_persistent", "apiary_install_packages", "kube_proxy_strict_arp",
    "kubeconfig_localhost", "kubectl_localhost", "kubelet_fail_cgroup_v1", "apiary_kubernetes_objects",
)
KUBELET_CGROUP_DRIVERS = ("systemd", "cgroupfs")

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class Result(object):
    """Errors and notices for one host, plus the normalised settings to publish as facts."""

    def __init__(self, host):
        self.host = host
        self.errors = []
        self.notices = []
        self.settings = {}

    def error(self, variable, message):
        self.errors.append("%s: %s: %s" % (self.host, variable, message))

    def notice(self, message):
        self.notices.append(message)


def to_bool(value):
    """Ansible's notion of a boolean, but strict: anything else is an error, not False."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("must be a boolean (true/false), got %r" % (value,))


def parse_network(value):
    """An IPv4 network with no host bits set (10.233.64.0/18, not 10.233.64.1/18)."""
    if not isinstance(value, str):
        raise ValueError("must be an IPv4 CIDR string such as 10.233.64.0/18, got %r" % (value,))
    try:
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError("%r is not a valid CIDR" % value)
    if net.version != 4:
        raise ValueError("%r is not IPv4 (IPv6 pools are not supported yet)" % value)
    if str(net) != value.strip():
        raise ValueError("%r has host bits set; did you mean %s?" % (value, net))
    return net


def parse_ip(value):
    try:
        ip = ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise ValueError("%r is not a valid IP address" % (value,))
    if ip.version != 4:
        raise ValueError("%r is not IPv4" % (value,))
    return ip


def parse_ip_range(value):
    """MetalLB's ip_range entries: a CIDR (192.168.56.0/28) or a range (a.b.c.d-a.b.c.e)."""
    text = str(value).strip()
    if "-" in text:
        first, last = (parse_ip(part) for part in text.split("-", 1))
        if last < first:
            raise ValueError("range %r ends before it starts" % text)
        return first, last
    net = parse_network(text)
    return net[0], net[-1]


def _resolve_aliases(hostvars, result):
    """Read Kubespray's variables as ours; a conflicting pair is an error, not a guess."""
    for alias in sorted(ALIASES):
        if alias not in hostvars or hostvars[alias] is None:
            continue
        targets, convert = ALIASES[alias]
        try:
            value = convert(hostvars[alias])
        except ValueError as exc:
            result.error(alias, str(exc))
            continue
        for target in _targets(targets):
            ours = hostvars.get(target)
            if ours is not None and str(ours) != str(value) and not _equal_loosely(ours, value):
                result.error(
                    target,
                    "conflicts with Kubespray's %s (%r vs %r): set only one of them" % (alias, ours, value),
                )
                continue
            hostvars[target] = value
        result.notice("%s (Kubespray) is read as %s" % (alias, ", ".join(_targets(targets))))


def _targets(targets):
    return (targets,) if isinstance(targets, str) else targets


def _equal_loosely(a, b):
    try:
        return to_bool(a) == to_bool(b)
    except ValueError:
        return False


def _check_network_plugin(hostvars, result):
    plugin = hostvars.get("kube_network_plugin")
    if plugin is None or plugin == "apiary":
        return
    if plugin == "cilium":
        result.notice("kube_network_plugin: cilium is read as apiary")
        return
    result.error(
        "kube_network_plugin",
        "is %r: Apiary is the network plugin here; set it to apiary (or cilium)" % (plugin,),
    )


def _check_groups(groups_of_host, result):
    if not set(groups_of_host) & set(KNOWN_GROUPS):
        result.error(
            "groups",
            "the host is in no group (%s); add it to kube_control_plane, kube_node or etcd"
            % (", ".join(groups_of_host) or "ungrouped"),
        )


def _check_networks(hostvars, result):
    """Pod pool, service range, node address and (in the lab) underlay must not overlap."""
    nets = {}
    for variable in ("apiary_cluster_pool_ipv4_cidr", "kube_service_addresses", "apiary_lab_underlay_cidr"):
        if hostvars.get(variable) is None:
            continue
        try:
            nets[variable] = parse_network(hostvars[variable])
        except ValueError as exc:
            result.error(variable, str(exc))
    names = sorted(nets)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            if nets[first].overlaps(nets[second]):
                result.error(first, "%s overlaps %s (%s)" % (nets[first], second, nets[second]))

    pool = nets.get("apiary_cluster_pool_ipv4_cidr")
    mask = hostvars.get("apiary_cluster_pool_ipv4_mask_size")
    try:
        mask = int(mask)
    except (TypeError, ValueError):
        result.error("apiary_cluster_pool_ipv4_mask_size", "must be a number, got %r" % (mask,))
        mask = None
    if mask is not None and pool is not None and not pool.prefixlen < mask <= 30:
        result.error(
            "apiary_cluster_pool_ipv4_mask_size",
            "%d must be longer than the pool's /%d and at most 30" % (mask, pool.prefixlen),
        )
    if pool is not None:
        result.settings["apiary_cluster_pool_ipv4_cidr"] = str(pool)
    if mask is not None:
        result.settings["apiary_cluster_pool_ipv4_mask_size"] = mask

    if hostvars.get("ip") is not None:
        try:
            node_ip = parse_ip(hostvars["ip"])
        except ValueError as exc:
            result.error("ip", str(exc))
        else:
            result.settings["apiary_node_ip"] = str(node_ip)
            for variable, net in nets.items():
                inside = node_ip in net
                if variable == "apiary_lab_underlay_cidr" and not inside:
                    result.error("ip", "%s is outside the lab underlay %s" % (node_ip, net))
                elif variable != "apiary_lab_underlay_cidr" and inside:
                    result.error("ip", "%s lies inside %s (%s)" % (node_ip, variable, net))

    if hostvars.get("apiary_dns_address") is not None:
        try:
            dns = parse_ip(hostvars["apiary_dns_address"])
        except ValueError as exc:
            result.error("apiary_dns_address", str(exc))
        else:
            clash = [variable for variable, net in sorted(nets.items()) if dns in net]
            if clash or str(dns) == result.settings.get("apiary_node_ip"):
                result.error("apiary_dns_address", "%s must be an address of its own (link-local, as Kubespray's "
                             "169.254.25.10), not inside %s" % (dns, clash[0] if clash else "ip"))
            else:
                result.settings["apiary_dns_address"] = str(dns)


def _check_routing(hostvars, result):
    mode = hostvars.get("apiary_routing_mode")
    if mode not in ROUTING_MODES:
        result.error("apiary_routing_mode", "%r is not one of %s" % (mode, ", ".join(ROUTING_MODES)))
    else:
        result.settings["apiary_routing_mode"] = mode


def _check_load_balancing(hostvars, result):
    algorithm = hostvars.get("apiary_lb_algorithm", "random")
    if algorithm not in LB_ALGORITHMS:
        result.error("apiary_lb_algorithm", "%r is not one of %s" % (algorithm, ", ".join(LB_ALGORITHMS)))
    else:
        result.settings["apiary_lb_algorithm"] = algorithm
    cgroup = str(hostvars.get("apiary_sock_lb_cgroup", "kubepods.slice")).strip("/")
    if not cgroup or any(part in ("", ".", "..") for part in cgroup.split("/")):
        # The root cgroup would put the connects of every process of the host through the programs.
        result.error("apiary_sock_lb_cgroup", "%r must name a cgroup below the cgroup2 mount (e.g. kubepods.slice), "
                     "never the root cgroup" % hostvars.get("apiary_sock_lb_cgroup"))
    else:
        result.settings["apiary_sock_lb_cgroup"] = cgroup
    size = hostvars.get("apiary_lb_maglev_table_size", 16381)
    try:
        size = int(size)
    except (TypeError, ValueError):
        size = None
    if size not in MAGLEV_TABLE_SIZES:
        result.error("apiary_lb_maglev_table_size", "%r is not one of Maglev's table sizes %s"
                     % (hostvars.get("apiary_lb_maglev_table_size"), ", ".join(map(str, MAGLEV_TABLE_SIZES))))
    else:
        result.settings["apiary_lb_maglev_table_size"] = size


def _check_booleans(hostvars, result):
    for variable in BOOLEANS:
        if variable not in hostvars:
            continue
        try:
            result.settings[variable] = to_bool(hostvars[variable])
        except ValueError as exc:
            result.error(variable, str(exc))
    for variable, feature in sorted(NOT_YET_EFFECTIVE.items()):
        if result.settings.get(variable):
            result.notice("%s is on, but %s is not part of Apiary yet: the setting has no effect so far"
                          % (variable, feature))


def _check_hubble_metrics(hostvars, result):
    metrics = hostvars.get("apiary_hubble_metrics", [])
    if not isinstance(metrics, list):
        result.error("apiary_hubble_metrics", "must be a list, got %r" % (metrics,))
        return
    for index, metric in enumerate(metrics):
        # Hubble allows options after a colon (e.g. "http:sourceContext=pod"); the name is what counts.
        name = str(metric).split(":", 1)[0]
        if name not in HUBBLE_METRICS:
            result.error("apiary_hubble_metrics[%d]" % index,
                         "%r is not a Hubble metric (%s)" % (metric, ", ".join(HUBBLE_METRICS)))
    result.settings["apiary_hubble_metrics"] = [str(m) for m in metrics]
    try:
        metrics_on = to_bool(hostvars.get("apiary_hubble_metrics_enabled", False))
    except ValueError:
        metrics_on = False  # reported by _check_booleans
    if metrics_on and unsupported_metrics(metrics):
        result.notice("apiary_hubble_metrics: %s need L7 visibility the datapath does not have: accepted, they "
                      "export no series" % ", ".join(unsupported_metrics(metrics)))


HUBBLE_PORTS = ("apiary_hubble_listen_port", "apiary_hubble_metrics_port", "apiary_hubble_relay_port",
                "apiary_hubble_ui_port")


def _check_hubble(hostvars, result):
    """The ring size, the ports (all different: they share the node's address) and the TLS folder."""
    if hostvars.get("apiary_hubble_event_buffer_capacity") is not None:
        try:
            result.settings["apiary_hubble_event_buffer_capacity"] = check_event_buffer_capacity(
                hostvars["apiary_hubble_event_buffer_capacity"])
        except ValueError as exc:
            result.error("apiary_hubble_event_buffer_capacity", str(exc))
    owner = {}
    for variable in HUBBLE_PORTS:
        if hostvars.get(variable) is None:
            continue
        try:
            port = check_port(hostvars[variable])
        except ValueError as exc:
            result.error(variable, str(exc))
            continue
        if port in owner:
            result.error(variable, "%d is also %s: each needs a port of its own" % (port, owner[port]))
            continue
        owner[port] = variable
        result.settings[variable] = port
    tls_dir = hostvars.get("apiary_hubble_tls_dir")
    if tls_dir is not None:
        if not isinstance(tls_dir, str) or not tls_dir.startswith("/") or tls_dir.rstrip("/") == "":
            result.error("apiary_hubble_tls_dir", "%r must be an absolute folder path (not /)" % (tls_dir,))
        else:
            result.settings["apiary_hubble_tls_dir"] = tls_dir.rstrip("/")
    # The page is the relay's: it cannot run without it (Cilium's hubble.ui needs hubble.relay too).
    try:
        ui, relay = to_bool(hostvars.get("apiary_hubble_ui_enabled", False)), \
            to_bool(hostvars.get("apiary_hubble_relay_enabled", False))
    except ValueError:
        return  # reported by _check_booleans
    if ui and not relay:
        result.error("apiary_hubble_ui_enabled", "the page is served by the relay: set apiary_hubble_relay_enabled "
                     "too")


def _check_metallb(hostvars, result):
    protocol = hostvars.get("metallb_protocol", "layer2")
    if protocol != "layer2":
        result.error("metallb_protocol", "%r is not supported (only layer2)" % (protocol,))
    config = hostvars.get("metallb_config") or {}
    if not isinstance(config, dict):
        result.error("metallb_config", "must be a mapping, got %r" % (config,))
        return
    unknown = sorted(set(config) - {"address_pools", "layer2", "layer3"})
    for key in unknown:
        result.error("metallb_config.%s" % key, "is not a known key (address_pools, layer2)")
    if "layer3" in config:
        result.error("metallb_config.layer3", "BGP (layer3) advertisement is not supported (use layer2)")
    pools = config.get("address_pools") or {}
    if not isinstance(pools, dict):
        result.error("metallb_config.address_pools", "must be a mapping of pool name to pool")
        pools = {}
    normalised = {}
    seen = []
    for name, pool in pools.items():
        where = "metallb_config.address_pools.%s" % name
        if not isinstance(pool, dict):
            result.error(where, "must be a mapping with ip_range and auto_assign")
            continue
        for key in sorted(set(pool) - {"ip_range", "auto_assign", "avoid_buggy_ips"}):
            result.error("%s.%s" % (where, key), "is not a known key (ip_range, auto_assign)")
        ranges = pool.get("ip_range")
        if not isinstance(ranges, list) or not ranges:
            result.error(where + ".ip_range", "must be a non-empty list of ranges or CIDRs")
            continue
        for index, text in enumerate(ranges):
            try:
                first, last = parse_ip_range(text)
            except ValueError as exc:
                result.error("%s.ip_range[%d]" % (where, index), str(exc))
                continue
            for other_name, other_first, other_last in seen:
                if first <= other_last and other_first <= last:
                    result.error("%s.ip_range[%d]" % (where, index),
                                 "%s overlaps pool %s" % (text, other_name))
            seen.append((name, first, last))
        try:
            auto_assign = to_bool(pool.get("auto_assign", True))
        except ValueError as exc:
            result.error(where + ".auto_assign", str(exc))
            continue
        normalised[name] = {"ip_range": [str(r) for r in ranges], "auto_assign": auto_assign}
    layer2 = config.get("layer2") or []
    if not isinstance(layer2, list):
        result.error("metallb_config.layer2", "must be a list of pool names")
        layer2 = []
    for index, name in enumerate(layer2):
        if name not in pools:
            result.error("metallb_config.layer2[%d]" % index, "names pool %r, which is not in address_pools" % (name,))
    result.settings["metallb_config"] = {"address_pools": normalised, "layer2": list(layer2)}


def _check_kubernetes(hostvars, result):
    """kube_version must be a release the collection knows; kube_apiserver_ip is derived here."""
    version = str(hostvars.get("kube_version", "")).lstrip("v")
    supported = [str(v) for v in hostvars.get("apiary_kube_supported_versions") or []]
    if version not in supported:
        result.error("kube_version", "%r is not a Kubernetes release this collection knows (%s)"
                     % (hostvars.get("kube_version"), ", ".join(supported) or "none"))
    else:
        result.settings["kube_version"] = version
    mode = hostvars.get("kube_proxy_mode", "iptables")
    if mode != "iptables":
        result.error("kube_proxy_mode", "%r is not supported: only iptables (the mode whose rules "
                     "apiary_kube_proxy_replacement removes exactly)" % (mode,))
    driver = hostvars.get("kubelet_cgroup_driver", "systemd")
    if driver not in KUBELET_CGROUP_DRIVERS:
        result.error("kubelet_cgroup_driver", "%r is not one of %s" % (driver, ", ".join(KUBELET_CGROUP_DRIVERS)))
    try:
        services = parse_network(hostvars.get("kube_service_addresses", "10.233.0.0/18"))
    except ValueError:
        return  # reported by _check_networks
    # The `kubernetes` Service takes the range's first address, as kube-apiserver allocates it.
    result.settings["kube_apiserver_ip"] = str(services[1])


DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _check_dns(hostvars, result):
    """dns_domain (the cluster's DNS domain) and upstream_dns_servers (Kubespray's: where names outside
    it are asked; a list of IPv4 addresses)."""
    domain = str(hostvars.get("dns_domain", "cluster.local"))
    if not all(DNS_LABEL.match(label) for label in domain.split(".")):
        result.error("dns_domain", "%r is not a DNS domain (lowercase labels of letters, digits and '-')" % domain)
    servers = hostvars.get("upstream_dns_servers", [])
    if not isinstance(servers, list):
        result.error("upstream_dns_servers", "must be a list of IPv4 addresses, got %r" % (servers,))
        return
    for i, server in enumerate(servers):
        try:
            parse_ip(server)
        except ValueError as exc:
            result.error("upstream_dns_servers[%d]" % i, str(exc))


def _check_ignore_list(hostvars, result):
    value = hostvars.get("apiary_ignore_preflight_errors", [])
    if not isinstance(value, list):
        result.error("apiary_ignore_preflight_errors", "must be a list of check names, got %r" % (value,))


def validate_host(host, hostvars, groups_of_host):
    """Validate one host's (templated) variables. Returns a Result; hostvars is not modified."""
    result = Result(host)
    hostvars = dict(hostvars)
    _check_groups(groups_of_host, result)
    _resolve_aliases(hostvars, result)
    _check_network_plugin(hostvars, result)
    _check_routing(hostvars, result)
    _check_load_balancing(hostvars, result)
    _check_networks(hostvars, result)
    _check_booleans(hostvars, result)
    _check_hubble_metrics(hostvars, result)
    _check_hubble(hostvars, result)
    _check_metallb(hostvars, result)
    _check_kubernetes(hostvars, result)
    _check_dns(hostvars, result)
    _check_ignore_list(hostvars, result)
    return result


def validate_cluster(node_ips):
    """Checks across hosts: every node has its own address. node_ips: {host: ip or None}."""
    errors = []
    owner = {}
    for host in sorted(node_ips):
        ip = node_ips[host]
        if ip is None:
            continue
        if ip in owner:
            errors.append("%s: ip: %s is also the address of %s" % (host, ip, owner[ip]))
        else:
            owner[ip] = host
    return errors


# Every variable validate_host reads: the action plugin templates exactly these.
VARIABLES = sorted(
    set(ALIASES) | {t for targets, _ in ALIASES.values() for t in _targets(targets)} | set(BOOLEANS) | {
        "kube_network_plugin", "apiary_routing_mode", "apiary_cluster_pool_ipv4_cidr",
        "apiary_cluster_pool_ipv4_mask_size", "kube_service_addresses", "apiary_lab_underlay_cidr",
        "ip", "apiary_hubble_metrics", "metallb_protocol", "metallb_config",
        "apiary_ignore_preflight_errors", "apiary_lb_algorithm", "apiary_lb_maglev_table_size",
        "apiary_dns_address", "apiary_sock_lb_cgroup", "apiary_hubble_event_buffer_capacity",
        "apiary_hubble_tls_dir", "kube_version", "apiary_kube_supported_versions", "kubelet_cgroup_driver",
    } | set(HUBBLE_PORTS)
)
