"""What check() refuses: every problem names the object and the exact field; all problems are reported."""
import copy

import pytest
import yaml

from apiary.policy import check
from apiary.policy.rules import L7_REFUSED
from tests.policy.seed import SEED, load

WHO = "CiliumNetworkPolicy network-policy-test/p"
NP = "NetworkPolicy network-policy-test/np"


def cnp(spec_yaml: str, name="p") -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": "network-policy-test"}, "spec": yaml.safe_load(spec_yaml)}


def np(spec_yaml: str) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "np", "namespace": "network-policy-test"}, "spec": yaml.safe_load(spec_yaml)}


def problems(obj, default_namespace="default"):
    norm, found = check(obj, default_namespace)
    assert (norm is None) == bool(found)
    return found


BASE = "endpointSelector: {matchLabels: {role: frontend}}\n"

# (spec, the problem expected: "<field path>: <message start>")
CNP_CASES = [
    # unknown fields, wrong types
    (BASE + "ingres: [{}]", "spec.ingres: unknown field"),
    (BASE + "ingress: [{fromEndpoint: [{}]}]", "spec.ingress[0].fromEndpoint: unknown field"),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '80', proto: TCP}]}]}]", "spec.ingress[0].toPorts[0].ports[0].proto: unknown field"),
    (BASE + "ingress: {fromEndpoints: [{}]}", "spec.ingress: must be a list (got a map)"),
    (BASE + "ingress: [{toPorts: {ports: []}}]", "spec.ingress[0].toPorts: must be a list (got a map)"),
    ("endpointSelector: {matchLabels: [role]}\ningress: [{}]", "spec.endpointSelector.matchLabels: must be a map"),
    (BASE + "ingress: [{fromEndpoints: [{matchLabels: {role: 3}}]}]", 'spec.ingress[0].fromEndpoints[0].matchLabels["role"]: invalid label value 3'),
    # ports
    (BASE + "ingress: [{toPorts: [{ports: [{port: '99999', protocol: TCP}]}]}]",
     'spec.ingress[0].toPorts[0].ports[0].port: "99999" is not a port (0-65535) or a port name'),
    (BASE + "ingress: [{toPorts: [{ports: [{port: 70000}]}]}]", 'spec.ingress[0].toPorts[0].ports[0].port: "70000" is not a port'),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '-1'}]}]}]", 'spec.ingress[0].toPorts[0].ports[0].port: "-1" is not a port'),
    (BASE + "ingress: [{toPorts: [{ports: [{port: 'http--alt'}]}]}]", 'spec.ingress[0].toPorts[0].ports[0].port: "http--alt" is not a port'),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '080'}]}]}]", "spec.ingress[0].toPorts[0].ports[0].port: \"080\": write port numbers without leading zeros"),
    (BASE + "ingress: [{toPorts: [{ports: [{protocol: TCP}]}]}]", "spec.ingress[0].toPorts[0].ports[0].port: required field is missing"),
    (BASE + "ingress: [{toPorts: [{ports: [{port: http, endPort: 90}]}]}]", "spec.ingress[0].toPorts[0].ports[0].endPort: needs a numeric port"),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '100', endPort: 90}]}]}]", "spec.ingress[0].toPorts[0].ports[0].endPort: 90 is smaller than port 100"),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '100', endPort: 70000}]}]}]", "spec.ingress[0].toPorts[0].ports[0].endPort: must be between 0 and 65535"),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '100', endPort: '200'}]}]}]", "spec.ingress[0].toPorts[0].ports[0].endPort: must be an integer"),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '0', endPort: 200}]}]}]", "spec.ingress[0].toPorts[0].ports[0].endPort: needs a port other than 0"),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '80', protocol: ICMP}]}]}]", 'spec.ingress[0].toPorts[0].ports[0].protocol: unsupported value "ICMP"'),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '80', protocol: tcp}]}]}]", 'spec.ingress[0].toPorts[0].ports[0].protocol: unsupported value "tcp"'),
    # CIDRs
    (BASE + "ingress: [{fromCIDR: [10.0.0.0/33]}]", 'spec.ingress[0].fromCIDR[0]: "10.0.0.0/33" is not a valid CIDR'),
    (BASE + "egress: [{toCIDR: [not-an-ip]}]", 'spec.egress[0].toCIDR[0]: "not-an-ip" is not a valid CIDR'),
    (BASE + "egress: [{toCIDRSet: [{cidr: 10.0.0.1}]}]", 'spec.egress[0].toCIDRSet[0].cidr: "10.0.0.1" is not a CIDR: write it with a prefix length'),
    (BASE + "egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/24]}]}]",
     'spec.egress[0].toCIDRSet[0].except[0]: "192.168.0.0/24" is not inside the cidr "10.0.0.0/8"'),
    (BASE + "egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.0.0.0/4]}]}]",
     'spec.egress[0].toCIDRSet[0].except[0]: "10.0.0.0/4" is not inside the cidr "10.0.0.0/8"'),
    (BASE + "egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: ['fd00::/64']}]}]",
     'spec.egress[0].toCIDRSet[0].except[0]: "fd00::/64" is not inside the cidr'),
    (BASE + "egress: [{toCIDRSet: [{except: [10.0.0.0/16]}]}]", "spec.egress[0].toCIDRSet[0].cidr: required field is missing"),
    (BASE + "egress: [{toCIDRSet: [{cidrGroupRef: office}]}]", "spec.egress[0].toCIDRSet[0].cidrGroupRef: CiliumCIDRGroup references (cidrGroupRef) are not supported by Apiary yet"),
    # L7: the http fields are checked first, then the rules are refused
    (BASE + "ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{path: '(('}]}}]}]",
     'spec.ingress[0].toPorts[0].rules.http[0].path: "((" is not a valid regular expression'),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: '['}]}}]}]",
     'spec.ingress[0].toPorts[0].rules.http[0].method: "[" is not a valid regular expression'),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{host: 3}]}}]}]",
     "spec.ingress[0].toPorts[0].rules.http[0].host: must be a string"),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{headers: [1]}]}}]}]",
     "spec.ingress[0].toPorts[0].rules.http[0].headers: must be a list of strings"),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{headerMatches: [{value: x}]}]}}]}]",
     "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].name: required field is missing"),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{headerMatches: [{name: X, mismatch: DROP}]}]}}]}]",
     'spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch: unsupported value "DROP"'),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{path: /public, verb: GET}]}}]}]",
     "spec.ingress[0].toPorts[0].rules.http[0].verb: unknown field"),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET, path: /public}]}}]}]",
     "spec.ingress[0].toPorts[0].rules: " + L7_REFUSED),
    (BASE + "egress: [{toPorts: [{ports: [{port: '53', protocol: ANY}], rules: {dns: [{matchPattern: '*'}]}}]}]",
     "spec.egress[0].toPorts[0].rules: " + L7_REFUSED),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '9092', protocol: TCP}], rules: {kafka: [{topic: t}]}}]}]",
     "spec.ingress[0].toPorts[0].rules: " + L7_REFUSED),
    (BASE + "ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {l7proto: r2d2}}]}]",
     "spec.ingress[0].toPorts[0].rules: " + L7_REFUSED),
    (BASE + "ingressDeny: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{}]}}]}]",
     "spec.ingressDeny[0].toPorts[0].rules: unknown field"),
    # selectors
    (BASE + "ingress: [{fromEndpoints: [{matchLabels: {'bad key!': x}}]}]", 'spec.ingress[0].fromEndpoints[0].matchLabels["bad key!"]: invalid label key'),
    (BASE + "ingress: [{fromEndpoints: [{matchLabels: {role: 'a b'}}]}]", "spec.ingress[0].fromEndpoints[0].matchLabels[\"role\"]: invalid label value 'a b'"),
    (BASE + "ingress: [{fromEndpoints: [{matchLabels: {'K8S:role': x}}]}]", 'spec.ingress[0].fromEndpoints[0].matchLabels["K8S:role"]: invalid label key'),
    (BASE + "ingress: [{fromEndpoints: [{matchExpressions: [{key: role, operator: Equals, values: [a]}]}]}]",
     'spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator: unsupported value "Equals"'),
    (BASE + "ingress: [{fromEndpoints: [{matchExpressions: [{key: role, operator: In, values: []}]}]}]",
     "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values: must be specified (non-empty) when operator is In"),
    (BASE + "ingress: [{fromEndpoints: [{matchExpressions: [{key: role, operator: NotIn}]}]}]",
     "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values: must be specified (non-empty) when operator is NotIn"),
    (BASE + "ingress: [{fromEndpoints: [{matchExpressions: [{key: role, operator: Exists, values: [a]}]}]}]",
     "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values: may not be specified when operator is Exists"),
    (BASE + "ingress: [{fromEndpoints: [{matchExpressions: [{operator: Exists}]}]}]",
     "spec.ingress[0].fromEndpoints[0].matchExpressions[0].key: required field is missing"),
    (BASE + "ingress: [{fromEndpoints: [{matchExpressions: [{key: 'a b', operator: Exists}]}]}]",
     "spec.ingress[0].fromEndpoints[0].matchExpressions[0].key: invalid label key"),
    (BASE + "ingress: [{fromEndpoints: [{matchExpressions: [{key: role, operator: In, values: ['x y']}]}]}]",
     "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values[0]: invalid label value"),
    ("endpointSelector: {matchExpressions: [{key: role, operator: In}]}\ningress: [{}]",
     "spec.endpointSelector.matchExpressions[0].values: must be specified"),
    (BASE + "ingress: [{fromEndpoints: []}]", "spec.ingress[0].fromEndpoints: must not be empty"),
    (BASE + "egress: [{toEntities: []}]", "spec.egress[0].toEntities: must not be empty"),
    (BASE + "ingress: [{fromEndpoints: [{}], fromCIDR: [10.0.0.0/8]}]",
     "spec.ingress[0]: fromEndpoints and fromCIDR cannot be combined in one rule (Cilium refuses it)"),
    # entities
    (BASE + "ingress: [{fromEntities: [moon]}]", 'spec.ingress[0].fromEntities[0]: unknown entity "moon"'),
    (BASE + "egress: [{toEntities: [world, none]}]", 'spec.egress[0].toEntities[1]: unknown entity "none"'),
    # ICMP
    (BASE + "ingress: [{icmps: [{fields: [{type: 256}]}]}]", 'spec.ingress[0].icmps[0].fields[0].type: 256 is not an ICMP type (0-255)'),
    (BASE + "ingress: [{icmps: [{fields: [{type: -1}]}]}]", 'spec.ingress[0].icmps[0].fields[0].type: -1 is not an ICMP type (0-255)'),
    (BASE + "ingress: [{icmps: [{fields: [{type: Ping}]}]}]", 'spec.ingress[0].icmps[0].fields[0].type: "Ping" is not an ICMP type (0-255) or an IPv4 type name'),
    (BASE + "ingress: [{icmps: [{fields: [{family: IPv4, type: PacketTooBig}]}]}]", 'spec.ingress[0].icmps[0].fields[0].type: "PacketTooBig" is not an ICMP type'),
    (BASE + "ingress: [{icmps: [{fields: [{family: IPv5, type: 8}]}]}]", 'spec.ingress[0].icmps[0].fields[0].family: unsupported value "IPv5"'),
    (BASE + "ingress: [{icmps: [{fields: [{family: IPv4}]}]}]", "spec.ingress[0].icmps[0].fields[0].type: required field is missing"),
    (BASE + "ingress: [{icmps: [{fields: []}]}]", "spec.ingress[0].icmps[0].fields: must list at least one ICMP type"),
    (BASE + "ingress: [{icmps: [{fields: [{type: 8}]}], toPorts: [{ports: [{port: '80'}]}]}]",
     "spec.ingress[0]: icmps and toPorts cannot be in the same rule (Cilium refuses it)"),
    (BASE + "egressDeny: [{icmps: [{fields: [{type: 8}]}], toPorts: [{ports: [{port: '80'}]}]}]",
     "spec.egressDeny[0]: icmps and toPorts cannot be in the same rule"),
    # the rule itself
    ("ingress: [{}]", "spec.endpointSelector: required field is missing"),
    ("nodeSelector: {matchLabels: {node: a}}\ningress: [{}]", "spec.nodeSelector: host policies (nodeSelector) are not supported by Apiary yet"),
    (BASE.strip(), "spec: has no ingress, ingressDeny, egress or egressDeny rules, so it would do nothing"),
    (BASE + "ingress: []", "spec: has no ingress, ingressDeny, egress or egressDeny rules"),
    (BASE + "ingress: [{}]\nenableDefaultDeny: {ingress: 'no'}", 'spec.enableDefaultDeny.ingress: must be true or false (got "no")'),
    (BASE + "ingress: [{}]\nenableDefaultDeny: {ingres: false}", "spec.enableDefaultDeny.ingres: unknown field"),
    (BASE + "ingress: [{}]\nlog: {value: x}", "spec.log: policy logging (log) is not supported by Apiary yet"),
    (BASE + "ingress: [{}]\nlabels: [{value: x}]", "spec.labels[0].key: required field is missing"),
    (BASE + "ingress: [{}]\ndescription: 3", "spec.description: must be a string"),
    ("endpointSelector: {matchLabels: {k8s:io.kubernetes.pod.namespace: other}}\ningress: [{}]",
     'spec.endpointSelector.matchLabels["k8s:io.kubernetes.pod.namespace"]: a namespaced policy only selects pods of its own namespace ("network-policy-test")'),
]

# Fields refused as "not supported by Apiary yet": (section, item yaml, field path)
REFUSED = [
    ("ingress", "{fromRequires: [{matchLabels: {env: prod}}]}", "spec.ingress[0].fromRequires"),
    ("egress", "{toRequires: [{matchLabels: {env: prod}}]}", "spec.egress[0].toRequires"),
    ("egress", "{toFQDNs: [{matchName: example.com}]}", "spec.egress[0].toFQDNs"),
    ("egress", "{toServices: [{k8sService: {serviceName: s, namespace: n}}]}", "spec.egress[0].toServices"),
    ("egress", "{toGroups: [{aws: {securityGroupsIds: [sg-1]}}]}", "spec.egress[0].toGroups"),
    ("ingress", "{fromGroups: [{aws: {securityGroupsIds: [sg-1]}}]}", "spec.ingress[0].fromGroups"),
    ("ingress", "{fromNodes: [{matchLabels: {a: b}}]}", "spec.ingress[0].fromNodes"),
    ("egress", "{toNodes: [{matchLabels: {a: b}}]}", "spec.egress[0].toNodes"),
    ("ingress", "{fromEntities: [world], authentication: {mode: required}}", "spec.ingress[0].authentication"),
    ("egress", "{toPorts: [{ports: [{port: '443', protocol: TCP}], serverNames: [example.com]}]}", "spec.egress[0].toPorts[0].serverNames"),
    ("egress", "{toPorts: [{ports: [{port: '443', protocol: TCP}], originatingTLS: {secret: {name: s}}}]}", "spec.egress[0].toPorts[0].originatingTLS"),
    ("ingress", "{toPorts: [{ports: [{port: '443', protocol: TCP}], terminatingTLS: {secret: {name: s}}}]}", "spec.ingress[0].toPorts[0].terminatingTLS"),
    ("egress", "{toPorts: [{ports: [{port: '80', protocol: TCP}], listener: {envoyConfig: {name: e}, name: l}}]}", "spec.egress[0].toPorts[0].listener"),
    ("egressDeny", "{toServices: [{k8sService: {serviceName: s}}]}", "spec.egressDeny[0].toServices"),
    ("ingressDeny", "{fromRequires: [{matchLabels: {env: prod}}]}", "spec.ingressDeny[0].fromRequires"),
]

NP_CASES = [
    ("podSelector: {}\ningress: [{ports: [{port: 80, protocol: ICMP}]}]", 'spec.ingress[0].ports[0].protocol: unsupported value "ICMP": supported values: "TCP", "UDP", "SCTP"'),
    ("podSelector: {}\ningress: [{ports: [{port: 0}]}]", "spec.ingress[0].ports[0].port: must be between 1 and 65535"),
    ("podSelector: {}\ningress: [{ports: [{port: 65536}]}]", "spec.ingress[0].ports[0].port: must be between 1 and 65535"),
    ("podSelector: {}\ningress: [{ports: [{port: '80'}]}]", 'spec.ingress[0].ports[0].port: "80" is not a port name'),
    ("podSelector: {}\ningress: [{ports: [{port: Http}]}]", 'spec.ingress[0].ports[0].port: "Http" is not a port name'),
    ("podSelector: {}\ningress: [{ports: [{port: http, endPort: 90}]}]", "spec.ingress[0].ports[0].endPort: may not be specified unless port is a port number"),
    ("podSelector: {}\ningress: [{ports: [{endPort: 90}]}]", "spec.ingress[0].ports[0].endPort: may not be specified unless port is a port number"),
    ("podSelector: {}\ningress: [{ports: [{port: 100, endPort: 90}]}]", "spec.ingress[0].ports[0].endPort: must be greater than or equal to port (90 < 100)"),
    ("podSelector: {}\ningress: [{from: [{}]}]", "spec.ingress[0].from[0]: must specify a peer"),
    ("podSelector: {}\ningress: [{from: [{podSelector: {}, ipBlock: {cidr: 10.0.0.0/8}}]}]", "spec.ingress[0].from[0]: may not specify more than 1 peer"),
    ("podSelector: {}\negress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]",
     'spec.egress[0].to[0].ipBlock.except[0]: "10.0.0.0/8" is not inside the cidr "10.0.0.0/8" (it must be a strict subset)'),
    ("podSelector: {}\negress: [{to: [{ipBlock: {cidr: 10.0.0.0/40}}]}]", 'spec.egress[0].to[0].ipBlock.cidr: "10.0.0.0/40" is not a valid CIDR'),
    ("podSelector: {}\npolicyTypes: [Ingress, Foo]", 'spec.policyTypes: must be a list of "Ingress" and/or "Egress"'),
    ("podSelector: {}\npolicyTypes: [Ingress, Ingress]", "spec.policyTypes: lists a type twice"),
    ("podSelector: {}\npolicyTypes: [Ingress]\negress: [{}]", "spec.egress: there are egress rules but policyTypes does not list Egress"),
    ("podSelector: {}\npolicyTypes: [Egress]\ningress: [{}]", "spec.ingress: there are ingress rules but policyTypes does not list Ingress"),
    ("ingress: [{}]", "spec.podSelector: required field is missing"),
    ("podSelector: {matchLabels: {'k8s:app': x}}", 'spec.podSelector.matchLabels["k8s:app"]: invalid label key'),
    ("podSelector: {}\ningress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In}]}}]}]",
     "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values: must be specified"),
    ("podSelector: {}\ningress: [{froms: []}]", "spec.ingress[0].froms: unknown field"),
    ("podSelector: {}\ningress: [{ports: [{port: 80, protocol: TCP, name: web}]}]", "spec.ingress[0].ports[0].name: unknown field"),
]


@pytest.mark.parametrize("spec,expected", CNP_CASES, ids=[e.split(":")[0] + "|" + e.split(": ")[1][:30] for _, e in CNP_CASES])
def test_cilium_policy_refused(spec, expected):
    found = problems(cnp(spec))
    assert "%s: %s" % (WHO, expected) in "\n".join(found), found


@pytest.mark.parametrize("section,item,path", REFUSED, ids=[p for _, _, p in REFUSED])
def test_unsupported_features_are_refused_not_ignored(section, item, path):
    found = problems(cnp(BASE + "%s: [%s]" % (section, item)))
    assert any(p.startswith("%s: %s: " % (WHO, path)) and "not supported by Apiary yet" in p for p in found), found


@pytest.mark.parametrize("spec,expected", NP_CASES, ids=[e.split(":")[0] for _, e in NP_CASES])
def test_network_policy_refused(spec, expected):
    found = problems(np(spec))
    assert "%s: %s" % (NP, expected) in "\n".join(found), found


def test_every_problem_is_reported_not_just_the_first():
    found = problems(cnp(BASE + """\
ingress:
- toPorts: [{ports: [{port: '99999'}, {port: '80', protocol: ICMP}]}]
- fromEntities: [moon]
egress:
- toFQDNs: [{matchName: example.com}]
- toCIDR: [300.0.0.0/8]
"""))
    paths = [p.split(": ")[1] for p in found]
    assert paths == ["spec.ingress[0].toPorts[0].ports[0].port", "spec.ingress[0].toPorts[0].ports[1].protocol",
                     "spec.ingress[1].fromEntities[0]", "spec.egress[0].toFQDNs", "spec.egress[1].toCIDR[0]"], found
    assert all(p.startswith(WHO + ": ") for p in found)


def test_l7_is_refused_even_when_the_http_fields_are_fine():
    found = problems(cnp(BASE + "ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET}]}}]}]"))
    assert found == ["%s: spec.ingress[0].toPorts[0].rules: %s" % (WHO, L7_REFUSED)]


def test_object_level_problems_name_the_object():
    obj = cnp(BASE + "ingress: [{}]", name="Allow_Frontend")
    obj["apiVersion"] = "cilium.io/v1"
    obj["extra"] = 1
    found = problems(obj)
    who = "CiliumNetworkPolicy network-policy-test/Allow_Frontend"
    assert '%s: apiVersion: "cilium.io/v1" is not served for CiliumNetworkPolicy (use cilium.io/v2)' % who in found
    assert any(p.startswith(who + ": extra: unknown field") for p in found)
    assert any(p.startswith(who + ": metadata.name: name 'Allow_Frontend' must be a DNS-1123 subdomain") for p in found)


def test_metadata_problems():
    obj = cnp(BASE + "ingress: [{}]")
    obj["metadata"]["labels"] = {"bad key!": "x"}
    obj["metadata"]["namespace"] = "Bad_NS"
    found = problems(obj)
    assert any(p.startswith('CiliumNetworkPolicy Bad_NS/p: metadata.labels["bad key!"]: invalid label key') for p in found)
    assert any(p.startswith("CiliumNetworkPolicy Bad_NS/p: metadata.namespace: namespace 'Bad_NS' must be a DNS-1123 label")
               for p in found)
    obj = cnp(BASE + "ingress: [{}]")
    del obj["metadata"]["name"]
    assert problems(obj) == ["CiliumNetworkPolicy network-policy-test/(no name): metadata.name: required field is missing"]
    obj = cnp(BASE + "ingress: [{}]")
    del obj["metadata"]["namespace"]
    assert problems(obj, default_namespace=None) == [
        "CiliumNetworkPolicy (no namespace)/p: metadata.namespace: required field is missing (a CiliumNetworkPolicy "
        "lives in a namespace)"]


def test_spec_or_specs():
    obj = cnp(BASE + "ingress: [{}]")
    del obj["spec"]
    assert problems(obj) == ["%s: spec: required field is missing (a CiliumNetworkPolicy needs spec, or a list of "
                             "rules in specs)" % WHO]
    obj["specs"] = []
    assert problems(obj)[-1] == "%s: specs: must not be empty (leave it out, or list rules)" % WHO
    obj["specs"] = [yaml.safe_load(BASE + "ingress: [{}]"), yaml.safe_load("ingress: [{}]")]
    assert problems(obj) == ["%s: specs[1].endpointSelector: required field is missing (it selects the pods the rule "
                             "applies to; {} selects every pod of the namespace)" % WHO]


def test_kinds_and_clusterwide_names():
    obj = cnp(BASE + "ingress: [{fromEntities: [moon]}]")
    obj["kind"] = "CiliumClusterwideNetworkPolicy"
    assert problems(obj) == ['CiliumClusterwideNetworkPolicy p: spec.ingress[0].fromEntities[0]: unknown entity "moon" '
                             "(known: world, cluster, host, remote-node, kube-apiserver, health, init, ingress, "
                             "unmanaged, all)"]
    obj["kind"] = "Pod"
    assert problems(obj) == ['p: kind: "Pod" is not a policy kind (supported: CiliumNetworkPolicy, '
                             'CiliumClusterwideNetworkPolicy, NetworkPolicy)']
    assert problems("text") == ["policy: must be a map with apiVersion, kind and metadata (got a string)"]


# --- what passes, and how it is normalized --------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SEED))
def test_seed_policies_pass_unchanged(name):
    obj = load(SEED[name])
    norm, found = check(copy.deepcopy(obj), "network-policy-test")
    assert found == []
    assert norm["spec"] == obj["spec"]
    assert norm["metadata"] == {"name": name, "namespace": "network-policy-test"}
    assert check(norm, "network-policy-test") == (norm, [])  # the same object applied twice compares equal


def test_normalization_fills_defaults_and_drops_server_fields():
    obj = cnp(BASE + """\
ingress:
- fromEndpoints: [{matchLabels: {role: backend}, matchExpressions: []}]
  toPorts: [{ports: [{port: 80}, {port: HTTP-Alt}]}]
- icmps: [{fields: [{type: 8}, {type: EchoRequest, family: IPv6}]}]
egress: []
""")
    obj["metadata"].update({"uid": "u-1", "resourceVersion": "7", "creationTimestamp": "2024-01-01T00:00:00Z",
                            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "net"}})
    obj["status"] = {"conditions": []}
    norm, found = check(obj)
    assert found == []
    assert norm["metadata"] == {"name": "p", "namespace": "network-policy-test", "annotations": {"team": "net"}}
    assert "status" not in norm
    assert norm["spec"]["ingress"] == [
        {"fromEndpoints": [{"matchLabels": {"role": "backend"}}],
         "toPorts": [{"ports": [{"port": "80", "protocol": "ANY"}, {"port": "http-alt", "protocol": "ANY"}]}]},
        {"icmps": [{"fields": [{"family": "IPv4", "type": 8}, {"family": "IPv6", "type": "EchoRequest"}]}]}]
    assert "egress" not in norm["spec"]
    assert check(norm) == (norm, [])


def test_network_policy_normalization():
    norm, found = check(np("""\
podSelector: {matchLabels: {app: db}}
ingress:
- from: []
  ports: [{port: 5432}, {port: 8000, endPort: 8080, protocol: UDP}]
egress:
- to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
"""))
    assert found == []
    assert norm["spec"] == {
        "podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"ports": [{"protocol": "TCP", "port": 5432},
                               {"protocol": "UDP", "port": 8000, "endPort": 8080}]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}],
        "policyTypes": ["Ingress", "Egress"]}
    assert check(norm) == (norm, [])


def test_accepted_shapes():
    for spec in [
        BASE + "ingress: [{}]",
        BASE + "ingress: [{fromEntities: [world, cluster, host, remote-node, kube-apiserver, health, init, ingress, unmanaged, all]}]",
        BASE + "ingressDeny: [{fromCIDRSet: [{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}], toPorts: [{ports: [{port: '22', protocol: TCP}]}]}]",
        BASE + "egress: [{toCIDR: [10.0.0.1, 'fd00::/64']}]",
        BASE + "egress: [{toEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': kube-system, k8s-app: kube-dns}}], "
               "toPorts: [{ports: [{port: '53', protocol: ANY}, {port: '8000', endPort: 9000, protocol: SCTP}]}]}]",
        BASE + "egressDeny: [{toEntities: [world], icmps: [{fields: [{type: 0}, {family: IPv6, type: PacketTooBig}]}]}]",
        BASE + "ingress: [{fromEndpoints: [{matchLabels: {'reserved:host': ''}}]}]\nenableDefaultDeny: {ingress: false}\n"
               "description: lets the host in\nlabels: [{key: team, value: net, source: custom}]",
        "endpointSelector: {matchExpressions: [{key: role, operator: NotIn, values: [db]}, {key: debug, operator: DoesNotExist}]}\n"
        "egress: [{toPorts: [{ports: [{port: dns, protocol: UDP}]}]}]",
        "endpointSelector: {matchLabels: {k8s:io.kubernetes.pod.namespace: network-policy-test}}\ningress: [{}]",
    ]:
        assert problems(cnp(spec)) == [], spec
    assert problems(np("podSelector: {}\npolicyTypes: [Ingress, Egress]")) == []
    assert problems(np("podSelector: {}\ningress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {a: b}}}]}]")) == []


def test_every_policy_in_the_examples_passes_unchanged():
    import glob
    import os
    root = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
    seen = 0
    for path in sorted(glob.glob(os.path.join(root, "**", "*.y*ml"), recursive=True)):
        with open(path) as handle:
            for doc in yaml.safe_load_all(handle):
                if isinstance(doc, dict) and doc.get("kind") in ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy",
                                                                 "NetworkPolicy"):
                    norm, found = check(doc, "network-policy-test")
                    assert found == [], path
                    assert norm["spec"] == doc["spec"], path
                    seen += 1
    assert seen >= 1
