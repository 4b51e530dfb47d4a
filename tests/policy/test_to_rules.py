"""to_rules(): the rules as `cilium policy get` prints them (utils.go for Cilium's kinds,
network_policy.go for Kubernetes')."""
import pytest
import yaml

from apiary.policy import to_rules
from tests.policy.seed import ALLOW_FRONTEND, load

NS = "network-policy-test"


def labels(kind, name, namespace=NS, uid=None):
    out = [{"key": "io.cilium.k8s.policy.derived-from", "value": kind, "source": "k8s"},
           {"key": "io.cilium.k8s.policy.name", "value": name, "source": "k8s"}]
    if namespace:
        out.append({"key": "io.cilium.k8s.policy.namespace", "value": namespace, "source": "k8s"})
    if uid:
        out.append({"key": "io.cilium.k8s.policy.uid", "value": uid, "source": "k8s"})
    return out


def obj(kind, spec_yaml, name="p", namespace=NS, **meta):
    api = "networking.k8s.io/v1" if kind == "NetworkPolicy" else "cilium.io/v2"
    metadata = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata.update(meta)
    return {"apiVersion": api, "kind": kind, "metadata": metadata, "spec": yaml.safe_load(spec_yaml)}


def test_seed_policy_as_cilium_prints_it():
    policy = load(ALLOW_FRONTEND)
    policy["metadata"]["uid"] = "36d6b7bb-0b6d-4b4c-9d0a-0c6a1f0a8e11"
    assert to_rules(policy) == [{
        "endpointSelector": {"matchLabels": {"any:role": "frontend", "k8s:io.kubernetes.pod.namespace": NS}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"any:role": "backend", "k8s:io.kubernetes.pod.namespace": NS}}],
                     "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}],
        "labels": labels("CiliumNetworkPolicy", "allow-frontend", uid="36d6b7bb-0b6d-4b4c-9d0a-0c6a1f0a8e11")}]


def test_without_uid_there_is_no_uid_label_and_bad_objects_raise():
    assert to_rules(load(ALLOW_FRONTEND))[0]["labels"] == labels("CiliumNetworkPolicy", "allow-frontend")
    with pytest.raises(ValueError, match=r"spec.ingress\[0\].fromEntities\[0\]: unknown entity"):
        to_rules(obj("CiliumNetworkPolicy", "endpointSelector: {}\ningress: [{fromEntities: [moon]}]"))


def test_namespace_scoping_of_peer_selectors():
    rules = to_rules(obj("CiliumNetworkPolicy", """\
endpointSelector: {}
ingress:
- fromEndpoints:
  - {}
  - matchLabels: {k8s:io.kubernetes.pod.namespace: other, app: a}
  - matchLabels: {io.kubernetes.pod.namespace: other}
  - matchLabels: {io.cilium.k8s.namespace.labels.team: blue}
  - matchExpressions: [{key: 'k8s:io.cilium.k8s.namespace.labels.env', operator: Exists}]
  - matchLabels: {reserved:host: ''}
  - matchExpressions: [{key: io.kubernetes.pod.namespace, operator: NotIn, values: [kube-system]}]
egress:
- toEndpoints: [{matchLabels: {app: b}}]
  toPorts: [{ports: [{port: '53', protocol: UDP}]}]
"""))
    assert rules[0]["endpointSelector"] == {"matchLabels": {"k8s:io.kubernetes.pod.namespace": NS}}
    assert rules[0]["ingress"] == [{"fromEndpoints": [
        {"matchLabels": {"k8s:io.kubernetes.pod.namespace": NS}},
        {"matchLabels": {"any:app": "a", "k8s:io.kubernetes.pod.namespace": "other"}},
        {"matchLabels": {"any:io.kubernetes.pod.namespace": "other"}},
        {"matchLabels": {"any:io.cilium.k8s.namespace.labels.team": "blue"}},
        {"matchExpressions": [{"key": "k8s:io.cilium.k8s.namespace.labels.env", "operator": "Exists"}]},
        {"matchLabels": {"reserved:host": ""}},
        {"matchExpressions": [{"key": "any:io.kubernetes.pod.namespace", "operator": "NotIn", "values": ["kube-system"]}]},
    ]}]
    assert rules[0]["egress"] == [{"toEndpoints": [{"matchLabels": {"any:app": "b", "k8s:io.kubernetes.pod.namespace": NS}}],
                                   "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}]}]


def test_clusterwide_policy():
    rules = to_rules(obj("CiliumClusterwideNetworkPolicy", """\
endpointSelector: {matchLabels: {app: web}}
ingress:
- fromEndpoints: [{}, {matchLabels: {app: lb}}, {matchLabels: {k8s:io.kubernetes.pod.namespace: edge}}]
- fromEntities: [world]
  toPorts: [{ports: [{port: '443'}]}]
egressDeny:
- toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
""", name="web", namespace=None, uid="u-9"))
    exists = {"key": "k8s:io.kubernetes.pod.namespace", "operator": "Exists"}
    assert rules == [{
        "endpointSelector": {"matchLabels": {"any:app": "web"}},
        "ingress": [{"fromEndpoints": [{"matchExpressions": [exists]},
                                       {"matchLabels": {"any:app": "lb"}, "matchExpressions": [exists]},
                                       {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "edge"}}]},
                    {"fromEntities": ["world"], "toPorts": [{"ports": [{"port": "443", "protocol": "ANY"}]}]}],
        "egressDeny": [{"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]}],
        "labels": labels("CiliumClusterwideNetworkPolicy", "web", namespace=None, uid="u-9")}]


def test_clusterwide_policy_for_initializing_endpoints_adds_no_namespace():
    rules = to_rules(obj("CiliumClusterwideNetworkPolicy", """\
endpointSelector: {matchLabels: {reserved:init: ''}}
egress: [{toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]}]
""", namespace=None))
    assert rules[0]["egress"] == [{"toEndpoints": [{"matchLabels": {"any:k8s-app": "kube-dns"}}]}]
    assert rules[0]["endpointSelector"] == {"matchLabels": {"reserved:init": ""}}


def test_specs_enable_default_deny_description_and_rule_labels():
    policy = obj("CiliumNetworkPolicy", "{}")
    del policy["spec"]
    policy["specs"] = yaml.safe_load("""\
- endpointSelector: {matchLabels: {app: a}}
  ingress: [{}]
  enableDefaultDeny: {ingress: false}
  description: observe only
  labels: [{key: team, value: net, source: custom}, {key: audited}]
- endpointSelector: {matchLabels: {app: b}}
  egressDeny: [{toEntities: [world], icmps: [{fields: [{type: EchoRequest}]}]}]
""")
    first, second = to_rules(policy)
    assert first == {
        "endpointSelector": {"matchLabels": {"any:app": "a", "k8s:io.kubernetes.pod.namespace": NS}},
        "ingress": [{}],
        "labels": sorted(labels("CiliumNetworkPolicy", "p") + [{"key": "team", "value": "net", "source": "custom"},
                                                              {"key": "audited", "source": "unspec"}],
                         key=lambda label: label["key"]),
        "enableDefaultDeny": {"ingress": False},
        "description": "observe only"}
    assert second["egressDeny"] == [{"toEntities": ["world"],
                                     "icmps": [{"fields": [{"family": "IPv4", "type": "EchoRequest"}]}]}]
    assert second["labels"] == labels("CiliumNetworkPolicy", "p")


# --- Kubernetes NetworkPolicy -------------------------------------------------------------------

def np_rules(spec, **meta):
    return to_rules(obj("NetworkPolicy", spec, name="np", **meta))


def test_k8s_default_deny_ingress():
    assert np_rules("podSelector: {}\npolicyTypes: [Ingress]", uid="u-1") == [{
        "endpointSelector": {"matchLabels": {"k8s:io.kubernetes.pod.namespace": NS}},
        "ingress": [{}],
        "labels": labels("NetworkPolicy", "np", uid="u-1")}]
    # no policyTypes: Ingress by default
    assert np_rules("podSelector: {}")[0]["ingress"] == [{}]


def test_k8s_default_deny_egress_only():
    rules = np_rules("podSelector: {matchLabels: {app: db}}\npolicyTypes: [Egress]")
    assert rules == [{"endpointSelector": {"matchLabels": {"k8s:app": "db", "k8s:io.kubernetes.pod.namespace": NS}},
                      "egress": [{}], "labels": labels("NetworkPolicy", "np")}]


def test_k8s_peers_ports_and_ip_blocks():
    rules = np_rules("""\
podSelector:
  matchLabels: {app: db}
  matchExpressions: [{key: tier, operator: In, values: [data]}]
ingress:
- from:
  - podSelector: {matchLabels: {app: api}}
  - namespaceSelector: {matchLabels: {team: blue}}
    podSelector: {matchLabels: {app: job}}
  - namespaceSelector: {}
  - ipBlock: {cidr: 172.16.0.0/12, except: [172.16.1.0/24]}
  ports:
  - port: 5432
  - {port: 8000, endPort: 8080, protocol: UDP}
  - {port: metrics}
  - {protocol: SCTP}
egress:
- to: [{namespaceSelector: {matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}}]
""")
    ports = [{"ports": [{"port": "5432", "protocol": "TCP"}]},
             {"ports": [{"port": "8000", "endPort": 8080, "protocol": "UDP"}]},
             {"ports": [{"port": "metrics", "protocol": "TCP"}]},
             {"ports": [{"port": "0", "protocol": "SCTP"}]}]
    assert rules == [{
        "endpointSelector": {"matchLabels": {"k8s:app": "db", "k8s:io.kubernetes.pod.namespace": NS},
                             "matchExpressions": [{"key": "k8s:tier", "operator": "In", "values": ["data"]}]},
        "ingress": [
            {"fromEndpoints": [{"matchLabels": {"k8s:app": "api", "k8s:io.kubernetes.pod.namespace": NS}}], "toPorts": ports},
            {"fromEndpoints": [{"matchLabels": {"k8s:io.cilium.k8s.namespace.labels.team": "blue", "k8s:app": "job"}}],
             "toPorts": ports},
            {"fromEndpoints": [{"matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "Exists"}]}],
             "toPorts": ports},
            {"fromCIDRSet": [{"cidr": "172.16.0.0/12", "except": ["172.16.1.0/24"]}], "toPorts": ports}],
        "egress": [{"toEndpoints": [{"matchExpressions": [
            {"key": "k8s:io.cilium.k8s.namespace.labels.env", "operator": "NotIn", "values": ["prod"]}]}]}],
        "labels": labels("NetworkPolicy", "np")}]


def test_k8s_empty_from_or_to_is_every_peer():
    rules = np_rules("""\
podSelector: {}
ingress: [{ports: [{port: 80}]}, {}]
egress: [{to: []}]
""")
    assert rules[0]["ingress"] == [{"fromEndpoints": [{}], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]},
                                   {"fromEndpoints": [{}]}]
    assert rules[0]["egress"] == [{"toEndpoints": [{}]}]


def test_k8s_policy_name_annotation_and_default_namespace():
    rules = to_rules(obj("NetworkPolicy", "podSelector: {}", name="np", namespace=None,
                         annotations={"io.cilium.network.policy.name": "shown"}))
    assert rules[0]["labels"] == labels("NetworkPolicy", "shown", namespace="default")
    assert rules[0]["endpointSelector"] == {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "default"}}
