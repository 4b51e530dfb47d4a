"""Inventory validation: what is accepted, normalised, and rejected (naming host and variable)."""
import pytest

from ansible_collections.apiary.cluster.plugins.module_utils.inventory import (
    validate_cluster,
    validate_host,
)

GOOD = {
    "apiary_routing_mode": "native",
    "apiary_cluster_pool_ipv4_cidr": "10.233.64.0/18",
    "apiary_cluster_pool_ipv4_mask_size": "24",
    "kube_service_addresses": "10.233.0.0/18",
    "ip": "10.77.101.11",
    "apiary_hubble_metrics": [],
    "kube_version": "1.37.2",
    "apiary_kube_supported_versions": ["1.37.2"],
}
NODE = ["k8s_cluster", "kube_node"]


def check(groups=NODE, **overrides):
    hostvars = dict(GOOD)
    hostvars.update(overrides)
    return validate_host("node1", hostvars, groups)


def test_good_inventory_is_normalised():
    result = check()
    assert result.errors == []
    assert result.settings["apiary_cluster_pool_ipv4_mask_size"] == 24  # string from a template -> int
    assert result.settings["apiary_routing_mode"] == "native"
    assert result.settings["apiary_node_ip"] == "10.77.101.11"
    assert (result.settings["apiary_lb_algorithm"], result.settings["apiary_lb_maglev_table_size"]) == ("random", 16381)
    assert check(apiary_dns_address="169.254.25.10").settings["apiary_dns_address"] == "169.254.25.10"
    chosen = check(apiary_lb_algorithm="maglev", apiary_lb_maglev_table_size="65521")  # a templated string
    assert (chosen.settings["apiary_lb_algorithm"], chosen.settings["apiary_lb_maglev_table_size"]) == ("maglev", 65521)


def test_kubernetes_settings_are_derived():
    result = check(kube_version="v1.37.2", kube_service_addresses="10.96.0.0/12")
    assert result.errors == []
    assert result.settings["kube_version"] == "1.37.2"  # Kubespray writes it without the v
    assert result.settings["kube_apiserver_ip"] == "10.96.0.1"  # the `kubernetes` Service


@pytest.mark.parametrize("overrides, variable, words", [
    ({"kube_version": "1.99.0"}, "kube_version", "not a Kubernetes release this collection knows (1.37.2)"),
    ({"dns_domain": "Cluster_Local"}, "dns_domain", "is not a DNS domain"),
    ({"kube_proxy_mode": "ipvs"}, "kube_proxy_mode", "only iptables"),
    ({"upstream_dns_servers": "10.0.0.2"}, "upstream_dns_servers", "must be a list of IPv4 addresses"),
    ({"upstream_dns_servers": ["10.0.0.2", "dns.example"]}, "upstream_dns_servers[1]", "is not a valid IP address"),
    ({"kubelet_cgroup_driver": "cgroupv1"}, "kubelet_cgroup_driver", "not one of systemd, cgroupfs"),
    ({"kubeconfig_localhost": "maybe"}, "kubeconfig_localhost", "must be a boolean"),
    ({"apiary_routing_mode": "geneve"}, "apiary_routing_mode", "not one of native, tunnel"),
    ({"apiary_dns_address": "10.233.0.3"}, "apiary_dns_address", "not inside kube_service_addresses"),
    ({"apiary_dns_address": "dns"}, "apiary_dns_address", "not a valid IP address"),
    ({"apiary_sock_lb_cgroup": "/"}, "apiary_sock_lb_cgroup", "never the root cgroup"),
    ({"apiary_sock_lb_cgroup": "kubepods/../.."}, "apiary_sock_lb_cgroup", "never the root cgroup"),
    ({"apiary_lb_algorithm": "round-robin"}, "apiary_lb_algorithm", "not one of random, maglev"),
    ({"apiary_lb_maglev_table_size": 1000}, "apiary_lb_maglev_table_size", "not one of Maglev's table sizes 251"),
    ({"apiary_lb_maglev_table_size": "big"}, "apiary_lb_maglev_table_size", "not one of Maglev's table sizes"),
    ({"apiary_cluster_pool_ipv4_cidr": "10.233.64.1/18"}, "apiary_cluster_pool_ipv4_cidr", "host bits"),
    ({"apiary_cluster_pool_ipv4_cidr": "10.233.300.0/18"}, "apiary_cluster_pool_ipv4_cidr", "not a valid CIDR"),
    ({"apiary_cluster_pool_ipv4_cidr": "fd00::/64"}, "apiary_cluster_pool_ipv4_cidr", "not IPv4"),
    ({"kube_service_addresses": "10.233.0.0/16"}, "apiary_cluster_pool_ipv4_cidr", "overlaps kube_service_addresses"),
    ({"apiary_cluster_pool_ipv4_mask_size": "16"}, "apiary_cluster_pool_ipv4_mask_size", "longer than the pool's /18"),
    ({"apiary_cluster_pool_ipv4_mask_size": "big"}, "apiary_cluster_pool_ipv4_mask_size", "must be a number"),
    ({"ip": "10.233.64.9"}, "ip", "inside apiary_cluster_pool_ipv4_cidr"),
    ({"ip": "10.233.0.1"}, "ip", "inside kube_service_addresses"),
    ({"ip": "node-one"}, "ip", "not a valid IP"),
    ({"apiary_lab_underlay_cidr": "10.77.101.0/24", "ip": "10.77.102.5"}, "ip", "outside the lab underlay"),
    ({"apiary_lab_underlay_cidr": "10.233.96.0/24"}, "apiary_cluster_pool_ipv4_cidr", "overlaps apiary_lab_underlay_cidr"),
    ({"apiary_hubble_enabled": "maybe"}, "apiary_hubble_enabled", "must be a boolean"),
    ({"apiary_hubble_metrics": ["dns", "bogus"]}, "apiary_hubble_metrics[1]", "not a Hubble metric"),
    ({"apiary_hubble_metrics": "dns"}, "apiary_hubble_metrics", "must be a list"),
    ({"apiary_hubble_event_buffer_capacity": 4096}, "apiary_hubble_event_buffer_capacity",
     "one less than a power of two"),
    ({"apiary_hubble_event_buffer_capacity": 131071}, "apiary_hubble_event_buffer_capacity", "at most 65535"),
    ({"apiary_hubble_event_buffer_capacity": "many"}, "apiary_hubble_event_buffer_capacity", "must be a number"),
    ({"apiary_hubble_listen_port": 70000}, "apiary_hubble_listen_port", "is not a port"),
    ({"apiary_hubble_metrics_port": "metrics"}, "apiary_hubble_metrics_port", "must be a port number"),
    ({"apiary_hubble_listen_port": 4244, "apiary_hubble_ui_port": 4244}, "apiary_hubble_ui_port",
     "4244 is also apiary_hubble_listen_port"),
    ({"apiary_hubble_tls_dir": "tls/hubble"}, "apiary_hubble_tls_dir", "must be an absolute folder path"),
    ({"apiary_hubble_ui_enabled": True, "apiary_hubble_relay_enabled": False}, "apiary_hubble_ui_enabled",
     "set apiary_hubble_relay_enabled too"),
    ({"kube_network_plugin": "calico"}, "kube_network_plugin", "Apiary is the network plugin"),
    ({"cilium_tunnel_mode": "geneve"}, "cilium_tunnel_mode", "vxlan, disabled"),
    ({"cilium_kube_proxy_replacement": "partial"}, "cilium_kube_proxy_replacement", "not supported"),
    ({"apiary_ignore_preflight_errors": "kernel"}, "apiary_ignore_preflight_errors", "must be a list"),
    ({"kube_proxy_strict_arp": "sometimes"}, "kube_proxy_strict_arp", "must be a boolean"),
])
def test_bad_values_name_host_and_variable(overrides, variable, words):
    result = check(**overrides)
    matching = [e for e in result.errors if e.startswith("node1: %s: " % variable)]
    assert matching, result.errors
    assert any(words in e for e in matching), matching


def test_host_in_no_group_is_rejected():
    result = check(groups=[])
    assert any(e.startswith("node1: groups: the host is in no group") for e in result.errors)


def test_kubespray_aliases_are_read_with_a_notice():
    result = check(cilium_tunnel_mode="vxlan", apiary_routing_mode=None, kube_network_node_prefix=26,
                   apiary_cluster_pool_ipv4_mask_size=None, cilium_enable_hubble=True,
                   cilium_kube_proxy_replacement="strict", kube_network_plugin="cilium")
    assert result.errors == []
    assert result.settings["apiary_routing_mode"] == "tunnel"
    assert result.settings["apiary_cluster_pool_ipv4_mask_size"] == 26
    assert result.settings["apiary_hubble_enabled"] is True
    assert result.settings["apiary_kube_proxy_replacement"] is True
    assert "cilium_tunnel_mode (Kubespray) is read as apiary_routing_mode" in result.notices
    assert "kube_network_plugin: cilium is read as apiary" in result.notices
    # Hubble has landed: no "no effect so far" notice for it any more.
    assert not any("apiary_hubble_enabled is on" in n for n in result.notices)


def test_hubble_settings_are_normalised_and_l7_metrics_are_named():
    result = check(apiary_hubble_event_buffer_capacity="65535", apiary_hubble_listen_port="4244",
                   apiary_hubble_metrics_port=9965, apiary_hubble_relay_port=4245, apiary_hubble_ui_port=12000,
                   apiary_hubble_tls_dir="/var/lib/apiary/tls/hubble/", apiary_hubble_metrics_enabled="true",
                   apiary_hubble_metrics=["dns", "drop", "http:sourceContext=pod", "flows-to-world:any-drop"])
    assert result.errors == []
    assert result.settings["apiary_hubble_event_buffer_capacity"] == 65535
    assert result.settings["apiary_hubble_listen_port"] == 4244
    assert result.settings["apiary_hubble_tls_dir"] == "/var/lib/apiary/tls/hubble"
    assert any("dns, http:sourceContext=pod need L7 visibility" in n for n in result.notices), result.notices
    assert check(apiary_hubble_event_buffer_capacity=1).settings["apiary_hubble_event_buffer_capacity"] == 1


def test_hubble_install_alias_sets_relay_and_ui():
    result = check(cilium_hubble_install=True)
    assert result.settings["apiary_hubble_relay_enabled"] is True
    assert result.settings["apiary_hubble_ui_enabled"] is True


def test_conflicting_alias_and_apiary_variable_is_an_error():
    result = check(cilium_tunnel_mode="vxlan", apiary_routing_mode="native")
    assert any(e.startswith("node1: apiary_routing_mode: conflicts with Kubespray's cilium_tunnel_mode")
               for e in result.errors)


def test_seed_metallb_config_is_accepted():
    seed = {"address_pools": {"primary": {"ip_range": ["192.168.56.200-192.168.56.209"], "auto_assign": True}},
            "layer2": ["primary"]}
    result = check(metallb_enabled=True, metallb_protocol="layer2", metallb_config=seed)
    assert result.errors == []
    assert result.settings["metallb_config"]["address_pools"]["primary"]["auto_assign"] is True


@pytest.mark.parametrize("config, variable, words", [
    ({"address_pools": {"p": {"ip_range": ["10.0.0.9-10.0.0.1"]}}}, "metallb_config.address_pools.p.ip_range[0]", "ends before"),
    ({"address_pools": {"p": {"ip_range": []}}}, "metallb_config.address_pools.p.ip_range", "non-empty list"),
    ({"address_pools": {"p": {"ip_range": ["10.0.0.0/30"], "color": "red"}}}, "metallb_config.address_pools.p.color", "not a known key"),
    ({"address_pools": {"p": {"ip_range": ["10.0.0.0/30"], "auto_assign": "perhaps"}}}, "metallb_config.address_pools.p.auto_assign", "boolean"),
    ({"address_pools": {"a": {"ip_range": ["10.0.0.0/29"]}, "b": {"ip_range": ["10.0.0.4-10.0.0.20"]}}},
     "metallb_config.address_pools.b.ip_range[0]", "overlaps pool a"),
    ({"address_pools": {"p": {"ip_range": ["10.0.0.0/30"]}}, "layer2": ["q"]}, "metallb_config.layer2[0]", "not in address_pools"),
    ({"layer3": {}}, "metallb_config.layer3", "not supported"),
])
def test_bad_metallb_config_names_the_field(config, variable, words):
    result = check(metallb_config=config)
    assert any(e.startswith("node1: %s: " % variable) and words in e for e in result.errors), result.errors


def test_metallb_bgp_protocol_is_refused():
    assert any("metallb_protocol" in e for e in check(metallb_protocol="bgp").errors)


def test_duplicate_node_addresses_across_hosts():
    errors = validate_cluster({"node1": "10.77.101.11", "node2": "10.77.101.11", "node3": "10.77.101.13"})
    assert errors == ["node2: ip: 10.77.101.11 is also the address of node1"]


def test_kube_proxy_replacement_is_wired_so_no_notice_says_it_has_no_effect():
    result = check(cilium_kube_proxy_replacement="strict")
    assert result.settings["apiary_kube_proxy_replacement"] is True
    assert not any("apiary_kube_proxy_replacement is on" in n for n in result.notices), result.notices
