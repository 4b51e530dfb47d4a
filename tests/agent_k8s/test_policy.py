"""Policies in kubeconfig mode: CiliumNetworkPolicies and NetworkPolicies written to the Kubernetes API
reach the agent's repository and the datapath, leave them when deleted, and what the agent cannot
enforce is reported on the object; `apiary policy import|delete` write to the API."""
from __future__ import annotations

import json

import kubernetes.client
import pytest
import yaml

from tests.agent_k8s.conftest import (cnp, create_cnp, create_namespace, create_pod, delete_cnp, eventually,
                                      pings, policy_names, read_cnp)
from tests.cni.conftest import apiary

pytestmark = pytest.mark.lab


HOST = 1  # the node itself may always reach its pods (Cilium's allow-localhost)


def _ingress(node, endpoint_id: int) -> set:
    """(identity, verdict) of the endpoint's ingress entries in apiary_policy, but the host's."""
    [entries] = node.cli("bpf", "policy", "get", str(endpoint_id))
    return {(e["identity"], e["policy"]) for e in entries["entries"]
            if e["direction"] == "Ingress" and e["identity"] != HOST}


def _pair(node, api):
    namespace = create_namespace(api)
    create_pod(api, namespace, "server", {"app": "server"})
    create_pod(api, namespace, "client", {"app": "client"})
    _, server_ip = node.add_pod(namespace, "server")
    client_ns, _ = node.add_pod(namespace, "client")
    return namespace, server_ip, client_ns, node.endpoint_of(namespace, "server"), node.endpoint_of(namespace, "client")


def test_a_cnp_from_the_api_is_enforced_and_removed_when_deleted(node, api):
    namespace, server_ip, client_ns, server, client = _pair(node, api)
    assert _ingress(node, server["id"]) == {(0, "Allow")}  # no policy: everything
    name = "allow-client-" + namespace
    create_cnp(api, cnp(name, namespace, {"app": "server"}, {"app": "client"}))
    eventually(lambda: name in policy_names(node), "the policy in the repository", node=node)
    [rule] = [r for r in node.cli("policy", "get")["policy"]
              if {"key": "io.cilium.k8s.policy.name", "value": name, "source": "k8s"} in r["labels"]]
    assert {"key": "io.cilium.k8s.policy.namespace", "value": namespace, "source": "k8s"} in rule["labels"]
    assert any(label["key"] == "io.cilium.k8s.policy.uid" for label in rule["labels"])
    eventually(lambda: _ingress(node, server["id"]) == {(client["identity"], "Allow")},
               "the client's identity allowed into the server, nothing else", node=node)
    assert node.endpoint_of(namespace, "server")["policy_ingress"] == "Enabled"
    assert _ingress(node, client["id"]) == {(0, "Allow")}  # not selected
    assert pings(client_ns, server_ip)

    delete_cnp(api, namespace, name)
    eventually(lambda: name not in policy_names(node), "the policy gone from the repository", node=node)
    eventually(lambda: _ingress(node, server["id"]) == {(0, "Allow")}, "the server open again", node=node)
    assert node.endpoint_of(namespace, "server")["policy_ingress"] == "Disabled"


def test_a_networkpolicy_from_the_api_is_enforced(node, api):
    namespace, server_ip, client_ns, server, client = _pair(node, api)
    body = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny-all", "namespace": namespace},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}}}  # ingress, no rule: nothing allowed
    kubernetes.client.NetworkingV1Api(api).create_namespaced_network_policy(namespace, body, _preload_content=False)
    eventually(lambda: _ingress(node, server["id"]) == set(), "the server's ingress closed", node=node)
    assert not pings(client_ns, server_ip)
    kubernetes.client.NetworkingV1Api(api).delete_namespaced_network_policy("deny-all", namespace,
                                                                            _preload_content=False)
    eventually(lambda: pings(client_ns, server_ip), "the server open again", node=node)


def test_what_cannot_be_enforced_is_reported_on_the_object(node, api):
    namespace = create_namespace(api)
    good = cnp("good", namespace, {"app": "x"}, {"app": "y"})
    bad = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
           "metadata": {"name": "bad", "namespace": namespace},
           "spec": {"endpointSelector": {"matchLabels": {"app": "x"}},
                    "egress": [{"toFQDNs": [{"matchName": "example.com"}]}]}}
    create_cnp(api, good)
    create_cnp(api, bad)

    def valid(name):
        return next((c for c in (read_cnp(api, namespace, name).get("status") or {}).get("conditions") or []
                     if c["type"] == "Valid"), None)
    assert eventually(lambda: valid("good"), "good's Valid condition", node=node)["status"] == "True"
    condition = eventually(lambda: valid("bad"), "bad's Valid condition", node=node)
    assert condition["status"] == "False" and condition["reason"] == "NotEnforceable"
    assert "spec.egress[0].toFQDNs" in condition["message"]
    def events_of_bad():
        events = kubernetes.client.CoreV1Api(api).list_namespaced_event(namespace, _preload_content=False)
        return [e for e in json.loads(events.data)["items"] if e["involvedObject"]["name"] == "bad"]
    # The event follows the condition (a loaded machine shows the gap).
    [event] = eventually(events_of_bad, "bad's event", node=node)
    assert event["reason"] == "PolicyNotEnforced" and event["type"] == "Warning"
    assert "toFQDNs" in event["message"] and event["source"]["host"] == "tnode"
    names = policy_names(node)
    assert "good" in names and "bad" not in names
    # `kubectl get cnp` shows it in the VALID column.
    out = node.cluster.kubectl("get", "cnp", "-n", namespace).stdout
    rows = [(line.split()[0], line.split()[-1]) for line in out.splitlines()[1:]]
    assert rows == [("bad", "False"), ("good", "True")], out


def _policy_command(node, verb: str, path) -> dict:
    return json.loads(apiary(node.ns, "policy", verb, "-f", str(path), "--socket", node.socket, "-o", "json").stdout)


def test_policy_import_and_delete_write_to_the_api(node, api, tmp_path):
    namespace, server_ip, client_ns, server, client = _pair(node, api)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(cnp("imported", namespace, {"app": "server"}, {"app": "nobody"})))
    result = _policy_command(node, "import", path)
    assert [r["action"] for r in result["results"]] == ["created"] and result["enforced"] is True
    # It is in the API, and it was in this node's datapath when the command returned.
    assert read_cnp(api, namespace, "imported")["spec"]["endpointSelector"] == {"matchLabels": {"app": "server"}}
    assert _ingress(node, server["id"]) == set()
    again = _policy_command(node, "import", path)
    assert [r["action"] for r in again["results"]] == ["unchanged"] and again["changed"] is False

    result = _policy_command(node, "delete", path)
    assert [r["action"] for r in result["results"]] == ["deleted"] and result["enforced"] is True
    assert _ingress(node, server["id"]) == {(0, "Allow")}
    with pytest.raises(kubernetes.client.exceptions.ApiException) as gone:
        read_cnp(api, namespace, "imported")
    assert gone.value.status == 404
