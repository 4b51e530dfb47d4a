"""The API server or the agent down: the datapath keeps its state, `apiary status` says what is
wrong, and the agent catches up with what changed meanwhile."""
from __future__ import annotations

import json

import kubernetes.client
import pytest

from apiary.k8s import client
from tests.agent_k8s.conftest import (cnp, create_cnp, create_namespace, create_pod, delete_cnp, eventually,
                                      inside_of, label_pod, pings, policy_names)

pytestmark = pytest.mark.lab


def _setup(node, api):
    """server and client pods; the server accepts the client only."""
    namespace = create_namespace(api)
    for name in ("server", "client"):
        create_pod(api, namespace, name, {"app": name})
    _, server_ip = node.add_pod(namespace, "server")
    client_ns, _ = node.add_pod(namespace, "client")
    create_cnp(api, cnp("allow-client", namespace, {"app": "server"}, {"app": "client"}))
    eventually(lambda: "allow-client" in policy_names(node), "the policy", node=node)
    eventually(lambda: pings(client_ns, server_ip), "the client reaching the server", node=node)
    return namespace, server_ip, client_ns


def _entries(node) -> set:
    """Every endpoint's apiary_policy entries, without their counters."""
    return {(ep["endpoint"], e["direction"], e["identity"], e["port"], e["policy"])
            for ep in node.cli("bpf", "policy", "get", "--all") for e in ep["entries"]}


def _config_map_version(api) -> str:
    return json.loads(kubernetes.client.CoreV1Api(api).read_namespaced_config_map(
        "apiary-config", "kube-system", _preload_content=False).data)["metadata"]["resourceVersion"]


def test_api_server_down_keeps_the_datapath_and_the_agent_catches_up(own_node):
    node = own_node
    with inside_of(node) as api:
        namespace, server_ip, client_ns = _setup(node, api)
        client_id = node.endpoint_of(namespace, "client")["identity"]
        policy_entries = _entries(node)

        node.cluster.stop()
        status = eventually(lambda: (s := node.status()["kubernetes"])["state"] == "Failure" and s,
                            "status Failure", node=node)
        assert "refused" in status["message"], status
        # The datapath keeps enforcing what it had: the client passes, entries unchanged.
        assert pings(client_ns, server_ip)
        assert _entries(node) == policy_entries
        assert "allow-client" in policy_names(node)

        # Meanwhile another API server (on the same etcd) relabels the client out of the allowed peers.
        with node.cluster.extra_server() as other:
            label_pod(client.api_client(other.kubeconfig), namespace, "client", app="moved")
        assert node.endpoint_of(namespace, "client")["identity"] == client_id  # nothing seen yet

        node.cluster.start()
        eventually(lambda: node.status()["kubernetes"]["state"] == "Ok", "status Ok again", node=node)
        moved = eventually(lambda: (e := node.endpoint_of(namespace, "client"))["identity"] != client_id and e,
                           "the client's new identity", node=node)
        assert "k8s:app=moved" in moved["labels"]
        eventually(lambda: not pings(client_ns, server_ip), "the moved client denied", node=node)


def test_a_restarted_agent_catches_up_with_what_changed_while_it_was_down(own_node):
    node = own_node
    with inside_of(node) as api:
        namespace, server_ip, client_ns = _setup(node, api)
        before = {e["id"]: e for e in node.endpoints()}
        config_map = _config_map_version(api)

        node.kill_agent()
        assert pings(client_ns, server_ip)  # the datapath forwards without its agent
        label_pod(api, namespace, "client", app="moved")
        delete_cnp(api, namespace, "allow-client")
        create_cnp(api, cnp("allow-trusted", namespace, {"app": "server"}, {"app": "trusted"}))
        node.start_agent()

        eventually(lambda: policy_names(node) >= {"allow-trusted"}, "the new policy", node=node)
        assert "allow-client" not in policy_names(node)
        after = {e["id"]: e for e in node.endpoints()}
        assert set(after) == set(before)  # the same endpoints, restored
        client_ep = eventually(lambda: (e := node.endpoint_of(namespace, "client")) and "k8s:app=moved" in e["labels"]
                               and e, "the client's labels while the agent was down", node=node)
        assert client_ep["identity"] != before[client_ep["id"]]["identity"]
        assert node.etcd("/apiary/ipcache/%s/32" % client_ep["ip"])["identity"] == client_ep["identity"]
        eventually(lambda: not pings(client_ns, server_ip), "the client denied by the new policy", node=node)

        # And it follows changes again: trusted now.
        label_pod(api, namespace, "client", app="trusted")
        eventually(lambda: pings(client_ns, server_ip), "the trusted client allowed", node=node)
        # The ConfigMap said the same: the restarted agent did not write it.
        assert _config_map_version(api) == config_map
