"""Cilium's policy CRDs (apiary.k8s.crds) on a real API server: established, idempotent, and refusing
malformed policies with the field named."""
from __future__ import annotations

import copy
import json

import kubernetes.client
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from apiary.k8s import crds
from apiary.k8s.client import error_message

CNP = "ciliumnetworkpolicies.cilium.io"
CCNP = "ciliumclusterwidenetworkpolicies.cilium.io"

VALID_RULE = {
    "endpointSelector": {"matchLabels": {"app": "backend"}},
    "ingress": [{
        "fromEndpoints": [{"matchLabels": {"app": "frontend"}},
                          {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]}],
        "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}, {"port": "8000", "endPort": 8080}],
                     "rules": {"http": [{"method": "GET", "path": "/"}]}}],
    }, {"fromCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}], "fromEntities": ["world"],
        "icmps": [{"fields": [{"type": 8, "family": "IPv4"}, {"type": "EchoRequest"}]}]}],
    "egress": [{"toFQDNs": [{"matchName": "example.com"}], "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}],
                                                                       "rules": {"dns": [{"matchPattern": "*"}]}}]},
               {"toServices": [{"k8sService": {"serviceName": "db", "namespace": "data"}}]}],
    "egressDeny": [{"toCIDR": ["192.0.2.0/24"], "toPorts": [{"ports": [{"port": "22"}]}]}],
    "labels": [{"key": "team", "value": "a"}],
    "enableDefaultDeny": {"ingress": True, "egress": False},
    "description": "frontend to backend",
}


def cnp(name: str, rule=None, **extra) -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": name},
            "spec": copy.deepcopy(rule if rule is not None else VALID_RULE), **extra}


def create_strict(api, namespace: str | None, body: dict) -> dict:
    """Create as kubectl does: with fieldValidation=Strict, so unknown fields are refused rather than
    dropped (kubernetes 22.6's generated functions have no parameter for it)."""
    plural = "ciliumnetworkpolicies" if namespace else "ciliumclusterwidenetworkpolicies"
    path = "/apis/cilium.io/v2/" + ("namespaces/%s/" % namespace if namespace else "") + plural
    resp = api.call_api(path, "POST", query_params=[("fieldValidation", "Strict")], body=body,
                        header_params={"Content-Type": "application/json", "Accept": "application/json"},
                        auth_settings=["BearerToken"], _return_http_data_only=True, _preload_content=False)
    return json.loads(resp.data)


def read_crd(api, name: str) -> dict:
    ext = kubernetes.client.ApiextensionsV1Api(api)
    return json.loads(ext.read_custom_resource_definition(name, _preload_content=False).data)


def test_both_crds_share_one_schema():
    cnp_crd, ccnp_crd = crds.definitions()
    assert (cnp_crd["spec"]["scope"], ccnp_crd["spec"]["scope"]) == ("Namespaced", "Cluster")
    assert cnp_crd["spec"]["names"]["shortNames"] == ["cnp", "ciliumnp"]
    assert ccnp_crd["spec"]["names"]["shortNames"] == ["ccnp"]
    assert cnp_crd["spec"]["versions"] == ccnp_crd["spec"]["versions"]


def test_crds_are_established_and_a_second_ensure_writes_nothing(api):
    before = {}
    for name in (CNP, CCNP):  # the module fixture ran ensure_crds once already
        crd = read_crd(api, name)
        assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"
        [version] = crd["spec"]["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v2", True, True)
        assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Age", "Valid"]
        assert "status" in version["subresources"]
        assert crd["spec"]["names"]["categories"] == ["cilium", "ciliumpolicy"]
        before[name] = crd["metadata"]["resourceVersion"]
    assert crds.ensure_crds(api) == []
    assert {name: read_crd(api, name)["metadata"]["resourceVersion"] for name in before} == before


def test_a_changed_crd_is_put_back_once(api):
    ext = kubernetes.client.ApiextensionsV1Api(api)
    crd = read_crd(api, CNP)
    crd["spec"]["names"]["shortNames"] = ["cnp"]  # someone removed one
    crd["spec"]["versions"][0]["additionalPrinterColumns"] = []
    ext.replace_custom_resource_definition(CNP, crd, _preload_content=False)
    assert crds.ensure_crds(api) == [CNP]
    restored = read_crd(api, CNP)
    assert restored["spec"]["names"]["shortNames"] == ["cnp", "ciliumnp"]
    assert [c["name"] for c in restored["spec"]["versions"][0]["additionalPrinterColumns"]] == ["Age", "Valid"]
    assert crds.ensure_crds(api) == []


def test_a_valid_policy_is_accepted_as_written(api, namespace):
    got = create_strict(api, namespace, cnp("allow"))
    assert got["spec"] == VALID_RULE  # nothing pruned: every field is in the schema
    specs = {"specs": [VALID_RULE, {"endpointSelector": {}, "egress": [{"toEntities": ["cluster"]}]}]}
    got = create_strict(api, namespace, {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                                         "metadata": {"name": "many"}, **specs})
    assert got["specs"] == specs["specs"]
    ccnp = {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": "hosts-" + namespace},
            "spec": {"nodeSelector": {"matchLabels": {"role": "worker"}}, "ingress": [{"fromEntities": ["cluster"]}]}}
    assert create_strict(api, None, ccnp)["spec"] == ccnp["spec"]
    # Like Cilium's CRD, the API server takes a policy without spec and specs (the agent refuses it).
    assert "spec" not in create_strict(api, namespace, {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                                                        "metadata": {"name": "empty"}})


def _set(path: str, value):
    """A change of VALID_RULE at a dotted path (list indexes as numbers)."""
    def change(rule):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target = rule
        for part in parents:
            target = target[part]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
        return rule
    return change


@pytest.mark.parametrize("change, field, words", [
    (_set("ingress.0.toPorts.0.ports.0.port", 80), "spec.ingress[0].toPorts[0].ports[0].port", "string"),
    (_set("ingress.0.toPorts.0.ports.0.port", "99999"), "spec.ingress[0].toPorts[0].ports[0].port", "should match"),
    (_set("ingress.0.toPorts.0.ports.0.port", "65536"), "spec.ingress[0].toPorts[0].ports[0].port", "should match"),
    (_set("ingress.0.toPorts.0.ports.0.protocol", "HTTP"), "spec.ingress[0].toPorts[0].ports[0].protocol",
     "supported values"),
    (_set("ingress.0.toPorts.0.ports.1.endPort", 70000), "spec.ingress[0].toPorts[0].ports[1].endPort",
     "less than or equal to 65535"),
    (_set("ingress.1.fromEntities", ["everything"]), "spec.ingress[1].fromEntities[0]", "supported values"),
    (_set("ingress.1.fromCIDR", "10.0.0.0/8"), "spec.ingress[1].fromCIDR", "array"),
    (_set("endpointSelector.matchLabels.app", 5), "spec.endpointSelector.matchLabels.app", "string"),
    (_set("ingress.0.fromEndpoints.1.matchExpressions.0.operator", "Is"),
     "spec.ingress[0].fromEndpoints[1].matchExpressions[0].operator", "supported values"),
    (_set("enableDefaultDeny.ingress", "yes"), "spec.enableDefaultDeny.ingress", "boolean"),
    (_set("nodeSelector", {}), "spec", "oneOf"),  # both selectors
    (_set("endpointSelector", KeyError), "spec", "oneOf"),  # neither
    (lambda rule: {"endpointSelector": {}}, "spec", "anyOf"),  # no section
    (_set("ingress.0.fromEndpoint", []), 'unknown field "spec.ingress[0].fromEndpoint"', ""),  # a typo
])
def test_a_malformed_policy_is_refused_with_the_field_named(api, namespace, change, field, words):
    body = cnp("bad", change(copy.deepcopy(VALID_RULE)))
    with pytest.raises(ApiException) as refused:
        create_strict(api, namespace, body)
    message = error_message(refused.value)
    assert refused.value.status in (400, 422), message
    assert field in message and words in message, message
    with pytest.raises(ApiException, match="404"):  # nothing was made
        kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(
            "cilium.io", "v2", namespace, "ciliumnetworkpolicies", "bad")


def test_an_unknown_top_level_field_is_refused(api, namespace):
    with pytest.raises(ApiException) as refused:
        create_strict(api, namespace, cnp("typo", specz=[]))
    assert 'unknown field "specz"' in error_message(refused.value)


def test_kubectl_uses_the_names_columns_and_validation(inside, namespace):
    bad = cnp("bad", _set("ingress.0.toPorts.0.ports.0.protocol", "HTTP")(copy.deepcopy(VALID_RULE)))
    out = inside.kubectl("create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(bad))
    assert out.returncode != 0 and "spec.ingress[0].toPorts[0].ports[0].protocol" in out.stderr, out.stderr
    out = inside.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(cnp("good")))
    assert out.returncode == 0, out.stderr
    for name in ("cnp", "ciliumnp", "ciliumnetworkpolicies"):
        out = inside.kubectl("get", name, "-n", namespace)
        assert out.returncode == 0, out.stderr
        header, row = out.stdout.splitlines()
        assert header.split() == ["NAME", "AGE", "VALID"] and row.split()[0] == "good"
    out = inside.kubectl("get", "cilium", "-n", namespace, "-o", "name")  # the category
    assert "ciliumnetworkpolicy.cilium.io/good" in out.stdout.split(), out.stderr
