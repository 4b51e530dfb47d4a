"""compute(): verdicts for concrete packets, in the style of Kubernetes' network-policy e2e suite.

Each test builds a small cluster (pods a, b, c in namespaces x, y, z; tests/policy/seed.py), applies
policies, and asks whether a packet gets through: src's egress entries and dst's ingress entries are
evaluated as the datapath does (tests/policy/reference.py: two longest-prefix lookups, the remote
identity's and identity 0's, deny from either wins)."""
import random

import pytest

from apiary.policy import PolicyKey, PolicyValue, compute, port_blocks, selected, to_rules
from apiary.policy.compute import ALLOW_ANY, ALLOW_LOCALHOST
from tests.policy.reference import ICMP, ICMPV6, SCTP, TCP, UDP, datapath_allows, lookup, rules_allow
from tests.policy.seed import ALLOW_FRONTEND, FRONTEND_ICMP, NAMESPACES, PODS, Cluster, load

XA, XB, XC = ("x", "a"), ("x", "b"), ("x", "c")
YA, YB, YC = ("y", "a"), ("y", "b"), ("y", "c")
ZA = ("z", "a")
HOST, WORLD, REMOTE_NODE, KUBE_APISERVER, HEALTH = 1, 2, 6, 7, 4
ALL_PODS = [(ns, pod) for ns in NAMESPACES for pod in PODS]


def np(name, ns, spec):
    return "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: %s, namespace: %s}\nspec:\n%s" % (
        name, ns, "\n".join("  " + line for line in spec.strip().splitlines()))


def cnp(name, ns, spec, kind="CiliumNetworkPolicy"):
    meta = "{name: %s, namespace: %s}" % (name, ns) if ns else "{name: %s}" % name
    return "apiVersion: cilium.io/v2\nkind: %s\nmetadata: %s\nspec:\n%s" % (
        kind, meta, "\n".join("  " + line for line in spec.strip().splitlines()))


def reachable(cluster, dst, protocol=TCP, port=80):
    """The pods that can reach dst."""
    return {src for src in ALL_PODS if src != dst and cluster.can(src, dst, protocol, port)}


# --- no policy, default deny ------------------------------------------------------------------------

def test_no_policy_allows_everything_with_one_wildcard_entry_per_direction():
    c = Cluster()
    policy = c.policy(XA)
    assert not policy.ingress_enforced and not policy.egress_enforced
    assert policy.entries == {PolicyKey(0, False, 0, 0, 0): PolicyValue(False, (ALLOW_ANY[False],)),
                              PolicyKey(0, True, 0, 0, 0): PolicyValue(False, (ALLOW_ANY[True],))}
    assert reachable(c, XA) == set(ALL_PODS) - {XA}
    assert c.can(XA, "8.8.8.8", UDP, 53) and c.can("8.8.8.8", XA, ICMP, 8)


def test_deny_all_ingress_in_a_namespace():
    c = Cluster(np("deny-all", "x", "podSelector: {}\npolicyTypes: [Ingress]"))
    for pod in (XA, XB, XC):
        assert reachable(c, pod) == set(), pod
        assert c.policy(pod).ingress_enforced and not c.policy(pod).egress_enforced
    assert reachable(c, YA) == set(ALL_PODS) - {YA}
    assert c.can(XA, YB) and c.can(XA, "1.1.1.1")  # egress is not enforced
    assert not c.can("1.1.1.1", XA)
    # allow-localhost: the host (kubelet probes, node health checks) still gets in
    assert c.can(HOST, XA, TCP, 8080) and not c.can(REMOTE_NODE, XA)
    assert c.policy(XA).entries[PolicyKey(1, False, 0, 0, 0)] == PolicyValue(False, (ALLOW_LOCALHOST,))


def test_without_allow_localhost_the_host_is_denied_too():
    c = Cluster(np("deny-all", "x", "podSelector: {}\npolicyTypes: [Ingress]"), allow_localhost=False)
    assert not c.can(HOST, XA)
    assert PolicyKey(1, False, 0, 0, 0) not in c.policy(XA).entries


def test_empty_cilium_ingress_rule_enforces_and_allows_nothing():
    c = Cluster(cnp("lockdown", "x", "endpointSelector: {matchLabels: {pod: a}}\ningress: [{}]"))
    assert reachable(c, XA) == set()
    assert reachable(c, XB) == set(ALL_PODS) - {XB}
    entries = c.policy(XA).entries
    assert [k for k in entries if not k.egress] == [PolicyKey(1, False, 0, 0, 0)]  # only allow-localhost


def test_deny_all_egress():
    c = Cluster(np("no-egress", "x", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]"))
    assert not c.policy(XA).ingress_enforced and c.policy(XA).egress_enforced
    assert not c.can(XA, XB) and not c.can(XA, YB, UDP, 53) and not c.can(XA, "8.8.8.8")
    assert c.can(XB, XA) and c.can(YA, XA)
    assert PolicyKey(0, False, 0, 0, 0) in c.policy(XA).entries  # ingress: the wildcard allow


# --- peers --------------------------------------------------------------------------------------------

def test_allow_from_a_namespace():
    c = Cluster(np("from-y", "x", """\
podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
"""))
    assert reachable(c, XA) == {YA, YB, YC}
    assert reachable(c, XB) == set(ALL_PODS) - {XB}


def test_allow_from_pods_of_a_namespace_and_same_namespace_pod_selector():
    c = Cluster(np("mixed", "x", """\
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    podSelector: {matchLabels: {pod: b}}
  - podSelector: {matchExpressions: [{key: pod, operator: In, values: [c]}]}
"""))
    assert reachable(c, XA) == {YB, XC}


def test_allow_from_every_namespace():
    c = Cluster(np("all-ns", "x", """\
podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{namespaceSelector: {}}]}]
"""))
    assert reachable(c, XA) == set(ALL_PODS) - {XA}
    assert not c.can("1.2.3.4", XA) and not c.can(REMOTE_NODE, XA)  # pods only


def test_allow_from_everywhere_with_empty_from():
    c = Cluster(np("open", "x", "podSelector: {matchLabels: {pod: a}}\ningress: [{}]"))
    assert c.policy(XA).ingress_enforced
    assert reachable(c, XA) == set(ALL_PODS) - {XA}
    assert c.can("1.2.3.4", XA, UDP, 9) and c.can(REMOTE_NODE, XA)
    assert PolicyKey(0, False, 0, 0, 0) in c.policy(XA).entries


def test_cilium_peer_selector_is_scoped_to_the_policy_namespace():
    c = Cluster(cnp("from-b", "x", "endpointSelector: {matchLabels: {pod: a}}\ningress: [{fromEndpoints: [{matchLabels: {pod: b}}]}]"))
    assert reachable(c, XA) == {XB}
    c = Cluster(cnp("from-b", "x", "endpointSelector: {matchLabels: {pod: a}}\n"
                                   "ingress: [{fromEndpoints: [{matchLabels: {pod: b, k8s:io.kubernetes.pod.namespace: y}}]}]"))
    assert reachable(c, XA) == {YB}


def test_clusterwide_policy_selects_pods_everywhere():
    c = Cluster(cnp("cw", None, "endpointSelector: {matchLabels: {pod: a}}\ningress: [{fromEndpoints: [{matchLabels: {pod: b}}]}]",
                    kind="CiliumClusterwideNetworkPolicy"))
    for ns in NAMESPACES:
        assert reachable(c, (ns, "a")) == {("x", "b"), ("y", "b"), ("z", "b")}


# --- ports --------------------------------------------------------------------------------------------

def test_allow_by_port_and_protocol():
    c = Cluster(np("port80", "x", "podSelector: {matchLabels: {pod: a}}\ningress: [{ports: [{port: 80}]}]"))
    assert c.can(XB, XA, TCP, 80) and c.can(YC, XA, TCP, 80)
    assert not c.can(XB, XA, TCP, 81) and not c.can(XB, XA, UDP, 80) and not c.can(XB, XA, ICMP, 8)


def test_cilium_any_protocol_is_tcp_udp_and_sctp():
    c = Cluster(cnp("dns", "x", "endpointSelector: {matchLabels: {pod: a}}\ningress: [{toPorts: [{ports: [{port: '53'}]}]}]"))
    assert c.can(XB, XA, TCP, 53) and c.can(XB, XA, UDP, 53) and c.can(XB, XA, SCTP, 53)
    assert not c.can(XB, XA, ICMP, 53) and not c.can(XB, XA, UDP, 54)
    assert {(k.protocol, k.port, k.port_prefix) for k in c.policy(XA).entries if k.identity == 0 and not k.egress} == {
        (TCP, 53, 16), (UDP, 53, 16), (SCTP, 53, 16)}


def test_port_range_with_end_port_is_minimal_prefix_blocks():
    c = Cluster(np("range", "x", "podSelector: {matchLabels: {pod: a}}\ningress: [{ports: [{port: 8000, endPort: 8080}]}]"))
    for port, ok in [(7999, False), (8000, True), (8031, True), (8064, True), (8080, True), (8081, False), (80, False)]:
        assert c.can(XB, XA, TCP, port) == ok, port
    blocks = sorted((k.port, k.port_prefix) for k in c.policy(XA).entries if k.protocol == TCP)
    assert blocks == [(8000, 10), (8064, 12), (8080, 16)]


@pytest.mark.parametrize("first,last", [(0, 65535), (1, 65535), (80, 80), (1024, 2047), (1000, 1999), (65535, 65535), (3, 17)])
def test_port_blocks_cover_exactly_and_minimally(first, last):
    blocks = port_blocks(first, last)
    covered = [p for start, prefix in blocks for p in range(start, start + (1 << (16 - prefix)))]
    assert covered == list(range(first, last + 1))
    assert all(start % (1 << (16 - prefix)) == 0 for start, prefix in blocks)
    assert len(blocks) <= 2 * 16
    if first == 0 and last == 65535:
        assert blocks == [(0, 0)]


def test_named_ports_ingress_and_egress():
    ports = {XA: {"http": {(8080, TCP)}, "dns": {(53, UDP), (53, TCP)}}, YB: {"http": {(9090, TCP)}}}
    c = Cluster(np("named", "x", """\
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress, Egress]
ingress: [{ports: [{port: http}, {port: nope}]}]
egress: [{ports: [{port: http}, {port: dns, protocol: UDP}]}]
"""), named_ports=ports)
    # ingress: the endpoint's own container ports
    assert c.can(XB, XA, TCP, 8080) and not c.can(XB, XA, TCP, 80) and not c.can(XB, XA, TCP, 9090)
    # egress: the union over the cluster's pods, narrowed by the protocol
    assert c.can(XA, YB, TCP, 9090) and c.can(XA, YC, TCP, 8080) and c.can(XA, YC, UDP, 53)
    assert not c.can(XA, YC, TCP, 53)
    assert all(k.port != 0 for k in c.policy(XA).entries if k.protocol)  # "nope" made no entry


def test_an_unresolved_named_port_in_a_deny_rule_denies_nothing():
    c = Cluster(cnp("no-admin", "x", """\
endpointSelector: {matchLabels: {pod: a}}
ingress: [{fromEntities: [all]}]
ingressDeny: [{fromEntities: [world], toPorts: [{ports: [{port: admin, protocol: TCP}]}]}]
"""), named_ports={XA: {"admin": {(9000, TCP)}}})
    assert not c.can("1.1.1.1", XA, TCP, 9000) and c.can("1.1.1.1", XA, TCP, 80) and c.can(XB, XA, TCP, 9000)
    assert c.can("1.1.1.1", XB, TCP, 9000)  # x/b has no port named admin: the rule does not apply there
    c = Cluster(cnp("no-admin", "x", """\
endpointSelector: {}
ingress: [{fromEntities: [all]}]
ingressDeny: [{fromEntities: [world], toPorts: [{ports: [{port: admin, protocol: TCP}]}]}]
"""))
    assert c.can("1.1.1.1", XB, TCP, 9000) and [k for k in c.policy(XB).entries if k.identity == WORLD] == []


def test_icmp_rules():
    c = Cluster(cnp("ping", "x", """\
endpointSelector: {matchLabels: {pod: a}}
ingress:
- fromEndpoints: [{matchLabels: {pod: b}}]
  icmps: [{fields: [{type: 8}, {family: IPv6, type: EchoRequest}]}]
"""))
    assert c.can(XB, XA, ICMP, 8) and c.can(XB, XA, ICMPV6, 128)
    assert not c.can(XB, XA, ICMP, 0) and not c.can(XB, XA, TCP, 8) and not c.can(XC, XA, ICMP, 8)


def test_seed_policies():
    c = Cluster(ALLOW_FRONTEND, FRONTEND_ICMP)
    frontend = ["k8s:role=frontend", "k8s:io.kubernetes.pod.namespace=network-policy-test"]
    backend = 400
    netpod = 401
    c.identities[backend] = ["k8s:role=backend", "k8s:io.kubernetes.pod.namespace=network-policy-test"]
    c.identities[netpod] = ["k8s:app=netpod", "k8s:io.kubernetes.pod.namespace=network-policy-test"]
    policy = compute(c.rules, frontend, c.identities)
    assert policy.ingress_enforced and not policy.egress_enforced
    assert datapath_allows(policy, backend, False, TCP, 80) and not datapath_allows(policy, backend, False, ICMP, 8)
    assert datapath_allows(policy, netpod, False, ICMP, 8) and datapath_allows(policy, netpod, False, TCP, 443)
    assert not datapath_allows(policy, 258, False, TCP, 80)  # x/c: another namespace
    assert policy.entries[PolicyKey(backend, False, TCP, 80, 16)].derived_from == (
        "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy", "k8s:io.cilium.k8s.policy.name=allow-frontend",
        "k8s:io.cilium.k8s.policy.namespace=network-policy-test")


# --- CIDRs and entities -------------------------------------------------------------------------------

def test_ip_block_with_except():
    c = Cluster(np("out", "x", """\
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}], ports: [{port: 443}]}]
"""))
    assert c.can(XA, "10.2.3.4", TCP, 443) and c.can(XA, "10.255.0.1", TCP, 443)
    assert not c.can(XA, "10.1.2.3", TCP, 443) and not c.can(XA, "8.8.8.8", TCP, 443)
    assert not c.can(XA, "10.2.3.4", TCP, 80) and not c.can(XA, XB, TCP, 443)


def test_cidr_0_0_0_0_takes_in_the_world_identity():
    c = Cluster(cnp("internet", "x", """\
endpointSelector: {matchLabels: {pod: a}}
egress: [{toCIDRSet: [{cidr: 0.0.0.0/0, except: [192.168.0.0/16]}]}]
"""))
    assert c.can(XA, "8.8.8.8") and not c.can(XA, "192.168.1.1") and not c.can(XA, XB)
    assert c.identity_of("8.8.8.8") == WORLD


def test_entities():
    c = Cluster(cnp("ents", "x", """\
endpointSelector: {matchLabels: {pod: a}}
ingress: [{fromEntities: [host, remote-node]}]
egress: [{toEntities: [world]}, {toEntities: [cluster], toPorts: [{ports: [{port: '53', protocol: UDP}]}]}]
""", ), cnp("cidr-peer", "y", "endpointSelector: {}\negress: [{toCIDR: [10.9.0.0/16]}]"))
    assert c.can(HOST, XA) and c.can(KUBE_APISERVER, XA) and c.can(REMOTE_NODE, XA)
    assert not c.can(XB, XA) and not c.can(HEALTH, XA) and not c.can("8.8.8.8", XA)
    assert c.can(XA, "8.8.8.8", TCP, 443) and c.can(XA, "10.9.1.1", TCP, 443)  # world takes in CIDR identities
    assert c.can(XA, YB, UDP, 53) and c.can(XA, HOST, UDP, 53) and not c.can(XA, YB, TCP, 53)
    assert c.policy(XA).entries.get(PolicyKey(c.identity_of("10.9.1.1"), True, UDP, 53, 16)) is None  # cluster: no CIDRs


def test_entity_all_is_identity_zero():
    c = Cluster(cnp("all", "x", """\
endpointSelector: {matchLabels: {pod: a}}
ingress: [{fromEntities: [all], toPorts: [{ports: [{port: '22', protocol: TCP}]}]}]
"""))
    assert [k for k in c.policy(XA).entries if not k.egress and k.identity != 1] == [PolicyKey(0, False, TCP, 22, 16)]


# --- several policies, deny, enableDefaultDeny ----------------------------------------------------

def test_multiple_policies_are_a_union():
    c = Cluster(np("p1", "x", """\
podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]
"""), np("p2", "x", """\
podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: c}}}], ports: [{port: 443}]}]
"""))
    assert c.can(XB, XA, TCP, 80) and not c.can(XB, XA, TCP, 443)
    assert c.can(YC, XA, TCP, 443) and not c.can(YC, XA, TCP, 80)
    assert reachable(c, XA, TCP, 80) == {XB} and reachable(c, XA, TCP, 443) == {YC}


def test_specific_deny_beats_wildcard_allow():
    """allow on identity 0 (every peer), deny on one identity: the datapath's remote-identity lookup must see it."""
    c = Cluster(cnp("open", "x", "endpointSelector: {matchLabels: {pod: a}}\ningress: [{fromEntities: [all]}]"),
                cnp("no-b-80", "x", "endpointSelector: {matchLabels: {pod: a}}\n"
                                    "ingressDeny: [{fromEndpoints: [{matchLabels: {pod: b}}], toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]"))
    assert not c.can(XB, XA, TCP, 80)
    assert c.can(XB, XA, TCP, 81) and c.can(XB, XA, UDP, 80) and c.can(XC, XA, TCP, 80) and c.can("1.1.1.1", XA)
    entries = c.policy(XA).entries
    assert entries[PolicyKey(0, False, 0, 0, 0)].deny is False
    assert entries[PolicyKey(257, False, TCP, 80, 16)].deny is True


def test_wildcard_deny_beats_specific_allow():
    """allow for one identity on every port, deny on port 80 from every peer (identity 0)."""
    c = Cluster(cnp("from-b", "x", "endpointSelector: {matchLabels: {pod: a}}\ningress: [{fromEndpoints: [{matchLabels: {pod: b}}]}]"),
                cnp("no-80", "x", "endpointSelector: {matchLabels: {pod: a}}\ningressDeny: [{toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]"))
    assert not c.can(XB, XA, TCP, 80) and c.can(XB, XA, TCP, 81) and c.can(XB, XA, ICMP, 8)
    assert not c.can(XC, XA, TCP, 81)
    entries = c.policy(XA).entries
    b = c.identity_of(XB)
    # the wildcard deny is copied to b, so b's own lookup gives the verdict as well
    assert entries[PolicyKey(0, False, TCP, 80, 16)].deny and entries[PolicyKey(b, False, TCP, 80, 16)].deny
    assert lookup(entries, b, False, TCP, 80).deny and not lookup(entries, b, False, TCP, 81).deny


def test_allow_inside_a_deny_range_becomes_a_deny():
    c = Cluster(cnp("web", "x", "endpointSelector: {matchLabels: {pod: a}}\n"
                                "ingress: [{fromEndpoints: [{matchLabels: {pod: b}}], toPorts: [{ports: [{port: '8080', protocol: TCP}]}]}]"),
                cnp("no-high", "x", "endpointSelector: {matchLabels: {pod: a}}\n"
                                    "ingressDeny: [{toPorts: [{ports: [{port: '8000', endPort: 8191, protocol: TCP}]}]}]"),
                cnp("no-c", "x", "endpointSelector: {matchLabels: {pod: a}}\ningressDeny: [{fromEndpoints: [{matchLabels: {pod: c}}]}]"),
                cnp("c-dns", "x", "endpointSelector: {matchLabels: {pod: a}}\n"
                                  "ingress: [{fromEndpoints: [{matchLabels: {pod: c}}], toPorts: [{ports: [{port: '53', protocol: UDP}]}]}]"))
    b, cc = c.identity_of(XB), c.identity_of(XC)
    entries = c.policy(XA).entries
    assert entries[PolicyKey(b, False, TCP, 8080, 16)] == PolicyValue(True, (
        "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy", "k8s:io.cilium.k8s.policy.name=no-high",
        "k8s:io.cilium.k8s.policy.namespace=x"))
    assert entries[PolicyKey(cc, False, UDP, 53, 16)].deny  # inside the deny of every port for c
    assert not c.can(XB, XA, TCP, 8080) and not c.can(XC, XA, UDP, 53)


def test_deny_applies_in_a_direction_that_is_not_enforced():
    c = Cluster(cnp("no-smtp", "x", """\
endpointSelector: {}
egressDeny: [{toPorts: [{ports: [{port: '25', protocol: TCP}]}]}]
enableDefaultDeny: {egress: false}
"""))
    policy = c.policy(XA)
    assert not policy.egress_enforced
    assert not c.can(XA, "8.8.8.8", TCP, 25) and c.can(XA, "8.8.8.8", TCP, 587) and c.can(XA, YB, UDP, 25)
    assert policy.entries == {PolicyKey(0, False, 0, 0, 0): PolicyValue(False, (ALLOW_ANY[False],)),
                              PolicyKey(0, True, 0, 0, 0): PolicyValue(False, (ALLOW_ANY[True],)),
                              PolicyKey(0, True, TCP, 25, 16): PolicyValue(True, (
                                  "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
                                  "k8s:io.cilium.k8s.policy.name=no-smtp", "k8s:io.cilium.k8s.policy.namespace=x"))}


def test_enable_default_deny_false_and_how_rules_combine():
    observe = cnp("observe", "x", """\
endpointSelector: {matchLabels: {pod: a}}
ingress: [{fromEndpoints: [{matchLabels: {pod: b}}]}]
enableDefaultDeny: {ingress: false}
""")
    c = Cluster(observe)
    assert not c.policy(XA).ingress_enforced
    assert reachable(c, XA) == set(ALL_PODS) - {XA}
    assert [k for k in c.policy(XA).entries if not k.egress] == [PolicyKey(0, False, 0, 0, 0)]
    # one rule asking for default deny is enough (repository.go: any rule)
    c = Cluster(observe, np("lock", "x", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]"))
    assert c.policy(XA).ingress_enforced
    assert reachable(c, XA) == {XB}
    # enableDefaultDeny only speaks for its direction
    c = Cluster(cnp("both", "x", """\
endpointSelector: {matchLabels: {pod: a}}
ingress: [{fromEndpoints: [{matchLabels: {pod: b}}]}]
egress: [{toEndpoints: [{matchLabels: {pod: b}}]}]
enableDefaultDeny: {ingress: false}
"""))
    assert not c.policy(XA).ingress_enforced and c.policy(XA).egress_enforced
    assert c.can(XC, XA) and not c.can(XA, XC) and c.can(XA, XB)


def test_init_endpoints_are_always_enforced():
    c = Cluster()
    policy = compute(c.rules, ["reserved:init"], c.identities)
    assert policy.ingress_enforced and policy.egress_enforced
    assert list(policy.entries) == [PolicyKey(1, False, 0, 0, 0)]


def test_selected():
    rules = to_rules(load(ALLOW_FRONTEND)) + to_rules(load(FRONTEND_ICMP))
    frontend = ["k8s:role=frontend", "k8s:io.kubernetes.pod.namespace=network-policy-test"]
    assert selected(rules, frontend) == rules
    assert selected(rules, ["k8s:role=frontend", "k8s:io.kubernetes.pod.namespace=other"]) == []


# --- every verdict against the rules, for random policies -------------------------------------------

_PEERS = ["fromEndpoints: [{matchLabels: {pod: b}}]", "fromEndpoints: [{matchLabels: {pod: c, k8s:io.kubernetes.pod.namespace: y}}]",
          "fromEntities: [all]", "fromEntities: [world]", "fromEntities: [cluster]", "fromEntities: [host]",
          "fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]", "fromCIDR: [0.0.0.0/0]", ""]
_L4 = ["toPorts: [{ports: [{port: '80', protocol: TCP}]}]", "toPorts: [{ports: [{port: '80'}]}]",
       "toPorts: [{ports: [{port: '0', protocol: UDP}]}]", "toPorts: [{ports: [{port: '0'}]}]",
       "toPorts: [{ports: [{port: '64', endPort: 127, protocol: TCP}]}]", "toPorts: [{ports: [{port: '70', endPort: 90}]}]",
       "toPorts: [{ports: [{port: 'http', protocol: TCP}]}]", "icmps: [{fields: [{type: 8}]}]",
       "icmps: [{fields: [{family: IPv6, type: EchoRequest}]}]", ""]
_PACKETS = [(p, port) for p in (TCP, UDP, SCTP) for port in (0, 53, 64, 69, 70, 79, 80, 81, 90, 127, 128, 8080)] + [
    (ICMP, 8), (ICMP, 0), (ICMPV6, 128), (ICMPV6, 129)]


def _random_item(rng, direction):
    peer, l4 = rng.choice(_PEERS), rng.choice(_L4)
    if direction == "egress":
        peer = peer.replace("from", "to")
    return "{%s}" % ", ".join(part for part in (peer, l4) if part)


def _random_policy(rng, index):
    lines = ["endpointSelector: {matchLabels: {pod: %s}}" % rng.choice(["a", "a", "b"])]
    for section in ("ingress", "ingressDeny", "egress", "egressDeny"):
        if rng.random() < 0.45:
            items = [_random_item(rng, "egress" if section.startswith("egress") else "ingress")
                     for _ in range(rng.randint(1, 3))]
            lines.append("%s: [%s]" % (section, ", ".join(items)))
    if len(lines) == 1:
        lines.append("ingress: [%s]" % _random_item(rng, "ingress"))
    if rng.random() < 0.25:
        lines.append("enableDefaultDeny: {%s: false}" % rng.choice(["ingress", "egress"]))
    return cnp("r%d" % index, "x", "\n".join(lines))


@pytest.mark.parametrize("seed", range(60))
def test_datapath_verdicts_equal_the_rules(seed):
    rng = random.Random(seed)
    c = Cluster(*[_random_policy(rng, i) for i in range(rng.randint(1, 4))],
                named_ports={XA: {"http": {(8080, TCP)}}, YB: {"http": {(80, TCP)}}})
    egress_named = {"http": {(8080, TCP), (80, TCP)}}
    peers = [XB, XC, ("y", "c"), HOST, WORLD, REMOTE_NODE, c.identity_of("10.2.0.1"), c.identity_of("10.1.0.1")]
    for pod in (XA, XB):
        policy = c.policy(pod)
        labels = c.identities[c.pods[pod]]
        for peer in peers:
            ident = c.identity_of(peer)
            for egress in (False, True):
                for protocol, port in _PACKETS:
                    want = rules_allow(c.rules, labels, c.identities, ident, egress, protocol, port,
                                       ingress_named=c.named_ports.get(pod, {}), egress_named=egress_named)
                    got = datapath_allows(policy, ident, egress, protocol, port)
                    assert got == want, (pod, peer, egress, protocol, port, c.rules)
                    # one identity's own lookup, when it finds an entry, gives the same verdict
                    own = lookup(policy.entries, ident, egress, protocol, port)
                    if own is not None:
                        assert (not own.deny) == want, (pod, peer, egress, protocol, port)
