"""The kube-proxy iptables generator (apiary.kubeproxy) against what kube-proxy itself writes: chain names seen on
real clusters, the scenario of kube-proxy's own overall-rules test (ClusterIP, NodePort, external IP,
LoadBalancer with Local policy and with source ranges, no endpoints), probabilities, affinity, large cluster
mode, partial syncs and bad input."""
import pytest

from ansible_collections.apiary.cluster.plugins.module_utils.kube_proxy import is_owned
from apiary.kubeproxy import (
    Endpoint,
    ProxyConfig,
    ServicePort,
    changed_services,
    node_restore_text,
    partial_restore_text,
    port_proto_hash,
    probability,
    restore_text,
)

# kube-proxy's unit-test proxier: cluster CIDR 10.0.0.0/8, mark 0x4000, no --random-fully.
TEST_CONFIG = ProxyConfig(cluster_cidr="10.0.0.0/8", random_fully=False)


def tables(text):
    """{table: {chain: [rules in order]}}, plus the declared chains under ":" (order-free, as kube-proxy's
    tests compare: its services come from a Go map)."""
    result, table = {}, None
    for line in text.splitlines():
        if line.startswith("*"):
            table = result.setdefault(line[1:], {":": set()})
        elif line.startswith(":"):
            table[":"].add(line[1:].split()[0])
        elif line.startswith(("-A ", "-I ")):
            chain = line.split()[1]
            table.setdefault(chain, []).append(line)
        elif line.startswith("-X "):
            table.setdefault("-X", []).append(line.split()[1])
    return result


@pytest.mark.parametrize("name, protocol, chain", [
    # As on every kubeadm cluster (iptables-save of any node).
    ("default/kubernetes:https", "tcp", "NPX46M4PTMTKRN6Y"),
    ("kube-system/kube-dns:dns", "udp", "TCOU7JCQXEZGVUNU"),
    ("kube-system/kube-dns:dns-tcp", "tcp", "ERIFXISQEP7F7OF4"),
    ("kube-system/kube-dns:metrics", "tcp", "JD5MR3NA4I4DYORP"),
])
def test_chain_hashes_are_kube_proxys(name, protocol, chain):
    assert port_proto_hash(name, protocol) == chain
    namespace, rest = name.split("/")
    svc = ServicePort(namespace, rest.split(":")[0], "10.96.0.1", 443, protocol=protocol.upper(),
                      port_name=rest.split(":")[1])
    assert svc.chain("KUBE-SVC-") == "KUBE-SVC-" + chain
    assert len(svc.chain("KUBE-SVC-")) <= 28  # iptables' limit on chain names


def overall_scenario():
    """kube-proxy's TestOverallIPTablesRulesWithMultipleServices, in this module's terms."""
    E = Endpoint
    return [
        ServicePort("ns1", "svc1", "172.30.0.41", 80, port_name="p80", endpoints=(E("10.180.0.1", 80),)),
        ServicePort("ns2", "svc2", "172.30.0.42", 80, port_name="p80", node_port=3001, external_policy_local=True,
                    load_balancer_ips=("1.2.3.4",), external_ips=("192.168.99.22",), health_check_node_port=30000,
                    endpoints=(E("10.180.0.2", 80),)),
        ServicePort("ns3", "svc3", "172.30.0.43", 80, port_name="p80", node_port=3003, endpoints=(E("10.180.0.3", 80),)),
        ServicePort("ns4", "svc4", "172.30.0.44", 80, port_name="p80", external_ips=("192.168.99.33",),
                    endpoints=(E("10.180.0.4", 80), E("10.180.0.5", 80, local=True))),
        ServicePort("ns5", "svc5", "172.30.0.45", 80, port_name="p80", node_port=3002, load_balancer_ips=("5.6.7.8",),
                    load_balancer_source_ranges=(" 203.0.113.0/25",), endpoints=(E("10.180.0.3", 80),)),
        ServicePort("ns6", "svc6", "172.30.0.46", 80, port_name="p80"),
    ]


def test_overall_rules_are_kube_proxys():
    got = tables(restore_text(overall_scenario(), TEST_CONFIG))
    nat, filt = got["nat"], got["filter"]
    assert filt[":"] == {"KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-FORWARD",
                         "KUBE-PROXY-FIREWALL"}
    assert nat[":"] == {"KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING",
                        "KUBE-EXT-4SW47YFZTEDKD3PK", "KUBE-EXT-GNZBNJ2PO5MGZ6GT", "KUBE-EXT-NUKIZ6OKUXPJNT4C",
                        "KUBE-EXT-X27LE4BHSL4DOUIK", "KUBE-FW-NUKIZ6OKUXPJNT4C",
                        "KUBE-SEP-C6EBXVWJJZMIWKLZ", "KUBE-SEP-I77PXRDZVX7PMWMN", "KUBE-SEP-OYPFS5VJICHGATKP",
                        "KUBE-SEP-RS4RBKLTHTF2IUXJ", "KUBE-SEP-SXIVWICOYRO3J4NJ", "KUBE-SEP-UKSFD7AGPMPPLUHC",
                        "KUBE-SVC-4SW47YFZTEDKD3PK", "KUBE-SVC-GNZBNJ2PO5MGZ6GT", "KUBE-SVC-NUKIZ6OKUXPJNT4C",
                        "KUBE-SVC-X27LE4BHSL4DOUIK", "KUBE-SVC-XPGD46QRK7WJZT7O"}

    # The filter table: no endpoints -> REJECT, Local policy without local endpoints -> DROP of external traffic.
    assert filt["KUBE-NODEPORTS"] == [
        '-A KUBE-NODEPORTS -m comment --comment "ns2/svc2:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT']
    assert filt["KUBE-SERVICES"] == [
        '-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT']
    no_local = '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" '
    assert filt["KUBE-EXTERNAL-SERVICES"] == [
        no_local + "-m tcp -p tcp -d 192.168.99.22 --dport 80 -j DROP",
        no_local + "-m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP",
        no_local + "-m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP"]
    assert filt["KUBE-PROXY-FIREWALL"] == [
        '-A KUBE-PROXY-FIREWALL -m comment --comment "ns5/svc5:p80 traffic not accepted by KUBE-FW-NUKIZ6OKUXPJNT4C" '
        "-m tcp -p tcp -d 5.6.7.8 --dport 80 -j DROP"]
    assert filt["KUBE-FORWARD"] == [
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
        "RELATED,ESTABLISHED -j ACCEPT"]

    # nat: captures, then the nodeports jump last.
    assert [r.split(" -j ")[-1] for r in nat["KUBE-SERVICES"]] == [
        "KUBE-SVC-XPGD46QRK7WJZT7O", "KUBE-SVC-GNZBNJ2PO5MGZ6GT", "KUBE-EXT-GNZBNJ2PO5MGZ6GT",
        "KUBE-EXT-GNZBNJ2PO5MGZ6GT", "KUBE-SVC-X27LE4BHSL4DOUIK", "KUBE-SVC-4SW47YFZTEDKD3PK",
        "KUBE-EXT-4SW47YFZTEDKD3PK", "KUBE-SVC-NUKIZ6OKUXPJNT4C", "KUBE-FW-NUKIZ6OKUXPJNT4C", "KUBE-NODEPORTS"]
    assert nat["KUBE-SERVICES"][0] == ('-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp '
                                       "-d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O")
    assert nat["KUBE-SERVICES"][-1] == (
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in '
        'this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    assert nat["KUBE-NODEPORTS"] == [
        "-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT",
        "-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK",
        "-A KUBE-NODEPORTS -m comment --comment ns5/svc5:p80 -m tcp -p tcp --dport 3002 -j KUBE-EXT-NUKIZ6OKUXPJNT4C"]
    assert nat["KUBE-EXT-GNZBNJ2PO5MGZ6GT"] == [  # Local policy, no local endpoint: no final jump
        '-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" '
        "-s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT",
        '-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external '
        'destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
        '-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external '
        'destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT']
    assert nat["KUBE-EXT-X27LE4BHSL4DOUIK"] == [
        '-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" '
        "-j KUBE-MARK-MASQ",
        "-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK"]
    assert nat["KUBE-FW-NUKIZ6OKUXPJNT4C"] == [
        '-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 loadbalancer IP" -s 203.0.113.0/25 '
        "-j KUBE-EXT-NUKIZ6OKUXPJNT4C",
        '-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "other traffic to ns5/svc5:p80 will be dropped by '
        'KUBE-PROXY-FIREWALL"']
    assert nat["KUBE-POSTROUTING"] == [
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE']
    assert nat["KUBE-MARK-MASQ"] == ["-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"]
    assert nat["KUBE-SVC-4SW47YFZTEDKD3PK"] == [
        '-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 '
        "--dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
        '-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random '
        "--probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC",
        '-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ']
    assert nat["KUBE-SEP-SXIVWICOYRO3J4NJ"] == [
        "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ",
        "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination "
        "10.180.0.1:80"]


def four_backends(index=0, **extra):
    endpoints = tuple(Endpoint("10.233.%d.%d" % (64 + i, 10 + index % 200), 8080) for i in range(4))
    return ServicePort("bench", "svc-%d" % index, "10.233.%d.%d" % (index // 250, 1 + index % 250), 80,
                       port_name="http", endpoints=endpoints, **extra)


def test_each_endpoint_is_picked_with_one_over_the_remaining():
    assert [probability(n) for n in (4, 3, 2)] == ["0.2500000000", "0.3333333333", "0.5000000000"]
    svc = four_backends()
    rules = tables(restore_text([svc]))["nat"][svc.chain("KUBE-SVC-")]
    picks = [r for r in rules if "KUBE-SEP-" in r]
    assert [r.split("--probability ")[1].split()[0] for r in picks[:3]] == ["0.2500000000", "0.3333333333",
                                                                              "0.5000000000"]
    assert "statistic" not in picks[3]  # the last endpoint takes whatever is left
    # Endpoints are ordered by "ip:port" as kube-proxy's endpoints map is, whatever order they came in.
    shuffled = ServicePort("bench", "svc-0", svc.cluster_ip, 80, port_name="http", endpoints=svc.endpoints[::-1])
    assert restore_text([shuffled]) == restore_text([svc])
    # No cluster CIDR configured: kube-proxy has no local-traffic detector and writes no masquerade rule there.
    assert not any("KUBE-MARK-MASQ" in r for r in rules)
    # Each endpoint chain hashes the service port name, protocol and endpoint together.
    assert len({r.split()[-1] for r in picks}) == 4


def test_client_ip_affinity():
    svc = ServicePort("default", "web", "10.233.0.20", 80, endpoints=(Endpoint("10.233.64.9", 80),),
                      affinity_timeout=10800)
    nat = tables(restore_text([svc]))["nat"]
    sep = svc.endpoint_chain(svc.endpoints[0])
    assert nat[svc.chain("KUBE-SVC-")][0] == (
        '-A %s -m comment --comment "default/web -> 10.233.64.9:80" -m recent --name %s --rcheck --seconds 10800 '
        "--reap -j %s" % (svc.chain("KUBE-SVC-"), sep, sep))
    assert nat[sep][1] == ("-A %s -m comment --comment default/web -m recent --name %s --set -m tcp -p tcp -j DNAT "
                           "--to-destination 10.233.64.9:80" % (sep, sep))


def test_large_clusters_drop_the_endpoint_comments():
    small = restore_text([four_backends(i) for i in range(250)])     # 1000 endpoints
    large = restore_text([four_backends(i) for i in range(251)])     # 1004: kube-proxy's large cluster mode
    assert '--comment "bench/svc-0:http -> ' in small
    assert "-> " not in large and "--comment bench/svc-0:http -s" not in large
    assert '"bench/svc-0:http cluster IP"' in large  # service-level comments stay


def test_partial_sync_writes_only_the_changed_service():
    before = [four_backends(i) for i in range(3)]
    changed = ServicePort("bench", "svc-1", before[1].cluster_ip, 80, port_name="http",
                          endpoints=before[1].endpoints[:3])
    after = [before[0], changed, before[2]]
    assert changed_services(before, after) == {("bench", "svc-1")}
    partial = tables(partial_restore_text(before, after))["nat"]
    stale = before[1].endpoint_chain(before[1].endpoints[3])  # the endpoint that went away
    assert partial["-X"] == [stale]
    own = {c for c in partial[":"] if c.startswith(("KUBE-SVC-", "KUBE-SEP-"))}
    # (A stale chain is declared too: that flushes it before -X deletes it.)
    assert own == {changed.chain("KUBE-SVC-"), stale} | {changed.endpoint_chain(e) for e in changed.endpoints}
    # Top-level chains are written whole: every service is still captured.
    assert len([r for r in partial["KUBE-SERVICES"] if "cluster IP" in r]) == 3
    # A removed service: its chains are deleted, its capture is gone.
    gone = tables(partial_restore_text(before, before[:2]))["nat"]
    assert set(gone["-X"]) == {before[2].chain("KUBE-SVC-")} | {before[2].endpoint_chain(e) for e in before[2].endpoints}
    assert len([r for r in gone["KUBE-SERVICES"] if "cluster IP" in r]) == 2


def test_source_ranges_holding_the_node_let_the_lb_ip_in():
    svc = ServicePort("ns5", "svc5", "172.30.0.45", 80, port_name="p80", load_balancer_ips=("5.6.7.8",),
                      load_balancer_source_ranges=("192.168.0.0/24",), endpoints=(Endpoint("10.180.0.3", 80),))
    fw = svc.chain("KUBE-FW-")
    rules = tables(restore_text([svc], ProxyConfig(node_ip="192.168.0.2")))["nat"][fw]
    assert [r.split(" -j ")[0].split()[-1] for r in rules[:2]] == ["192.168.0.0/24", "5.6.7.8"]
    assert len(tables(restore_text([svc], ProxyConfig(node_ip="10.9.9.9")))["nat"][fw]) == 2


def test_node_rules_insert_the_jumps_in_kube_proxys_order():
    node = tables(node_restore_text([four_backends()]))
    assert node["mangle"][":"] == {"KUBE-PROXY-CANARY"}
    # Each jump is inserted at the top, so the last ensured is first: the order seen on kube-proxy nodes.
    inserted = [r.split(" -j ")[-1] for r in node["filter"]["INPUT"]][::-1]
    assert inserted == ["KUBE-FIREWALL", "KUBE-PROXY-FIREWALL", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES"]
    assert node["nat"]["PREROUTING"] == ['-I PREROUTING 1 -m comment --comment "kubernetes service portals" '
                                         "-j KUBE-SERVICES"]


def test_every_generated_chain_is_one_the_module_removes_except_kubelets():
    text = node_restore_text(overall_scenario(), TEST_CONFIG)
    for table, chains in tables(text).items():
        for chain in chains[":"]:
            assert is_owned(table, chain) == (chain != "KUBE-FIREWALL"), (table, chain)


def test_ipv6():
    svc = ServicePort("default", "web6", "fd00:10:96::10", 80, node_port=30080,
                      endpoints=(Endpoint("fd00:10:244::5", 80),))
    text = restore_text([svc], ProxyConfig(ipv6=True))
    assert "--to-destination [fd00:10:244::5]:80" in text
    assert "-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS" in text
    assert "KUBE-FIREWALL" not in text


@pytest.mark.parametrize("fields, words", [
    ({"cluster_ip": "10.233.0.300"}, "ns/svc:http: cluster_ip: '10.233.0.300' is not an IP address"),
    ({"port": 70000}, "ns/svc:http: port: 70000 is not a port"),
    ({"node_port": -1}, "ns/svc:http: node_port: -1 is not a port"),
    ({"protocol": "ICMP"}, "ns/svc:http: protocol: 'ICMP' is not one of TCP, UDP, SCTP"),
    ({"endpoints": (Endpoint("10.0.0.1", 80), Endpoint("pod-a", 80))}, "ns/svc:http: endpoints[1].ip"),
    ({"endpoints": (Endpoint("10.0.0.1", 0),)}, "ns/svc:http: endpoints[0].port"),
    ({"external_ips": ("1.2.3",)}, "ns/svc:http: external_ips[0]"),
    ({"load_balancer_source_ranges": ("10.0.0.0/33",)}, "ns/svc:http: load_balancer_source_ranges[0]"),
])
def test_bad_input_names_the_field(fields, words):
    args = dict(namespace="ns", name="svc", port_name="http", cluster_ip="10.233.0.5", port=80)
    args.update(fields)
    with pytest.raises(ValueError) as error:
        ServicePort(**args)
    assert words in str(error.value)
