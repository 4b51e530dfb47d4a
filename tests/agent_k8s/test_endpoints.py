"""Endpoints in kubeconfig mode: a pod's identity comes from its labels in the Kubernetes API (and its
namespace's, and its service account), and follows them when they change on a running pod."""
from __future__ import annotations

import pytest

from tests.agent_k8s.conftest import (cnp, create_cnp, create_namespace, create_pod, delete_cnp, eventually,
                                      label_namespace, label_pod, pings)

pytestmark = pytest.mark.lab


def _identity_everywhere(node, pod_ip: str) -> tuple:
    """(the ipcache entry's identity in etcd, in this node's ipcache map, in apiary_lxc)."""
    stored = node.etcd("/apiary/ipcache/%s/32" % pod_ip)
    cached = node.ipcache().get("%s/32" % pod_ip)
    lxc = node.lxc().get(pod_ip)
    return ((stored or {}).get("identity"), cached and int(cached["value"].split()[0].split("=")[1]),
            lxc and lxc["identity"])


def test_labels_and_identity_come_from_the_api(node, api):
    namespace = create_namespace(api, {"team": "blue"})
    create_pod(api, namespace, "web", {"app": "web", "pod-template-hash": "abc"}, service_account="robot")
    _, pod_ip = node.add_pod(namespace, "web")
    ep = node.endpoint_of(namespace, "web")
    assert "k8s:app=web" in ep["labels"]
    assert "k8s:io.cilium.k8s.namespace.labels.team=blue" in ep["labels"]
    assert "k8s:io.cilium.k8s.policy.serviceaccount=robot" in ep["labels"]
    assert "k8s:io.kubernetes.pod.namespace=%s" % namespace in ep["labels"]
    assert not any("pod-template-hash" in label for label in ep["labels"])  # Cilium's filter
    assert ep["identity"] >= 256
    assert _identity_everywhere(node, pod_ip) == (ep["identity"],) * 3
    # The identity is the one the cluster has for exactly these labels.
    [identity] = [i for i in node.cli("identity", "list") if i["id"] == ep["identity"]]
    assert sorted(identity["labels"]) == sorted(ep["labels"])


def test_add_for_a_pod_the_api_does_not_have_is_refused_and_leaves_nothing(node, api):
    namespace = create_namespace(api)
    before_links, before_allocated = node.links(), node.status()["ipam"]["allocated"]
    pod_ns = node.new_pod_netns()
    code, out, _ = node.cni("ADD", pod_ns, container_id="ghost", pod="ghost", namespace=namespace)
    assert code == 1 and "not found in the Kubernetes API" in out["msg"], out
    assert node.endpoint_of(namespace, "ghost") is None
    assert node.links() == before_links
    assert node.status()["ipam"]["allocated"] == before_allocated


def test_relabelling_the_pod_changes_its_identity_and_back(node, api):
    namespace = create_namespace(api)
    create_pod(api, namespace, "p", {"app": "one"})
    _, pod_ip = node.add_pod(namespace, "p")
    first = node.endpoint_of(namespace, "p")

    label_pod(api, namespace, "p", app="two")
    second = eventually(lambda: (e := node.endpoint_of(namespace, "p")) and "k8s:app=two" in e["labels"] and e,
                        "the endpoint has the new labels", node=node)
    assert "k8s:app=one" not in second["labels"]
    assert second["id"] == first["id"] and second["identity"] != first["identity"]
    assert _identity_everywhere(node, pod_ip) == (second["identity"],) * 3

    label_pod(api, namespace, "p", app="one")
    back = eventually(lambda: (e := node.endpoint_of(namespace, "p")) and "k8s:app=one" in e["labels"] and e,
                      "the endpoint has its first labels again", node=node)
    assert back["identity"] == first["identity"]  # the same labels, the same identity
    assert _identity_everywhere(node, pod_ip) == (first["identity"],) * 3


def test_relabelling_the_namespace_changes_the_identity_of_its_pods(node, api):
    namespace = create_namespace(api, {"env": "dev"})
    other = create_namespace(api, {"env": "dev"})
    for ns in (namespace, other):
        create_pod(api, ns, "p", {"app": "x"})
    _, pod_ip = node.add_pod(namespace, "p")
    node.add_pod(other, "p")
    first, bystander = node.endpoint_of(namespace, "p"), node.endpoint_of(other, "p")

    label_namespace(api, namespace, env="prod")
    changed = eventually(lambda: (e := node.endpoint_of(namespace, "p")) and
                         "k8s:io.cilium.k8s.namespace.labels.env=prod" in e["labels"] and e,
                         "the namespace's new label on its endpoint", node=node)
    assert changed["identity"] != first["identity"]
    assert _identity_everywhere(node, pod_ip) == (changed["identity"],) * 3
    assert node.endpoint_of(other, "p") == bystander  # another namespace's pod is left alone

    label_namespace(api, namespace, env="dev")
    eventually(lambda: node.endpoint_of(namespace, "p")["identity"] == first["identity"],
               "the first identity again", node=node)
    assert _identity_everywhere(node, pod_ip) == (first["identity"],) * 3


def test_a_relabelled_pod_loses_and_gains_what_a_policy_allows_its_peers(node, api):
    namespace = create_namespace(api)
    create_pod(api, namespace, "server", {"app": "server"})
    create_pod(api, namespace, "client", {"app": "client"})
    create_pod(api, namespace, "stranger", {"app": "stranger"})
    _, server_ip = node.add_pod(namespace, "server")
    client_ns, _ = node.add_pod(namespace, "client")
    stranger_ns, _ = node.add_pod(namespace, "stranger")
    create_cnp(api, cnp("server", namespace, {"app": "server"}, {"app": "client"}))
    try:
        eventually(lambda: node.endpoint_of(namespace, "server")["policy_ingress"] == "Enabled",
                   "the server's ingress policy", node=node)
        assert pings(client_ns, server_ip)
        assert not pings(stranger_ns, server_ip)

        # Out of the allowed peers: denied; into them: allowed (both ways, both pods).
        label_pod(api, namespace, "client", app="stranger")
        label_pod(api, namespace, "stranger", app="client")
        eventually(lambda: not pings(client_ns, server_ip), "the relabelled client denied", node=node)
        eventually(lambda: pings(stranger_ns, server_ip), "the relabelled stranger allowed", node=node)

        label_pod(api, namespace, "client", app="client")
        eventually(lambda: pings(client_ns, server_ip), "the client allowed again", node=node)
    finally:
        delete_cnp(api, namespace, "server")
