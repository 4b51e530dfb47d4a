"""`apiary status` and the published settings in kubeconfig mode (and store mode's Disabled)."""
from __future__ import annotations

import json

import kubernetes.client
import pytest

from tests.agent_k8s.conftest import MASK, POOL
from tests.cni.conftest import apiary, make_node
from tests.helpers import upstream

pytestmark = pytest.mark.lab


def test_status_says_kubernetes_ok_with_the_api_server_version(node):
    version = "v" + upstream.versions()["kubernetes"]
    status = node.status()["kubernetes"]
    assert (status["state"], status["message"]) == ("Ok", version)
    assert {r["resource"] for r in status["resources"]} == {
        "pods", "namespaces", "services", "endpointslices", "networkpolicies", "ciliumnetworkpolicies",
        "ciliumclusterwidenetworkpolicies"}
    text = apiary(node.ns, "status", "--socket", node.socket).stdout
    [line] = [line for line in text.splitlines() if line.startswith("Kubernetes:")]
    assert line.split(":", 1)[1].strip() == "Ok   %s" % version


def test_the_settings_are_published_as_a_configmap(node, api):
    config_map = json.loads(kubernetes.client.CoreV1Api(api).read_namespaced_config_map(
        "apiary-config", "kube-system", _preload_content=False).data)
    data = config_map["data"]
    assert data["cluster-pool-ipv4-cidr"] == POOL
    assert data["cluster-pool-ipv4-mask-size"] == str(MASK)
    assert data["routing-mode"] == "native" and "tunnel-protocol" not in data
    assert data["enable-hubble"] == "false"
    out = node.cluster.kubectl("get", "configmap", "-n", "kube-system", "apiary-config", "-o", "yaml").stdout
    assert "cluster-pool-ipv4-cidr: %s" % POOL in out


def test_store_mode_says_kubernetes_disabled(tmp_path):
    with make_node(tmp_path, mask_size=26) as node:
        assert node.status()["kubernetes"]["state"] == "Disabled"
