"""Services in kubeconfig mode: a Service and the pods it selects, from the Kubernetes API, become
this node's frontends and backends; a pod that is not Ready is no backend; a deleted Service is gone."""
from __future__ import annotations

import json

import kubernetes.client
import pytest

from tests.agent_k8s.conftest import create_namespace, create_pod, delete_pod, eventually, set_pod_status

pytestmark = pytest.mark.lab


def _backends(node, frontend: str):
    """The backends of one frontend in `apiary service list`, or None when there is no such frontend."""
    for svc in node.cli("service", "list"):
        if svc["frontend"] == frontend:
            return sorted(b["address"] for b in svc["backends"])
    return None


def test_a_service_and_its_pods_become_frontend_and_backends(node, api):
    namespace = create_namespace(api)
    core = kubernetes.client.CoreV1Api(api)
    ports = [{"name": "http", "containerPort": 8080}]
    for name, address in (("web-1", "10.233.70.11"), ("web-2", "10.233.70.12")):
        create_pod(api, namespace, name, {"app": "web"}, ports=ports)
        set_pod_status(api, namespace, name, address)
    create_pod(api, namespace, "other", {"app": "other"}, ports=ports)
    set_pod_status(api, namespace, "other", "10.233.70.13")
    svc = json.loads(core.create_namespaced_service(namespace, {
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}},
        _preload_content=False).data)
    frontend = "%s:80/TCP" % svc["spec"]["clusterIP"]
    assert eventually(lambda: _backends(node, frontend), "the Service's frontend with backends", node=node) == \
        ["10.233.70.11:8080/TCP", "10.233.70.12:8080/TCP"]
    [row] = [s for s in node.cli("service", "list") if s["frontend"] == frontend]
    assert row["type"] == "ClusterIP"

    # Not Ready: no backend any more; terminating (deleted): likewise.
    set_pod_status(api, namespace, "web-2", "10.233.70.12", ready=False)
    eventually(lambda: _backends(node, frontend) == ["10.233.70.11:8080/TCP"], "web-2 out of the backends", node=node)
    delete_pod(api, namespace, "web-1")
    eventually(lambda: _backends(node, frontend) == [], "no backend left", node=node)
    set_pod_status(api, namespace, "web-2", "10.233.70.12", ready=True)
    eventually(lambda: _backends(node, frontend) == ["10.233.70.12:8080/TCP"], "web-2 back", node=node)

    core.delete_namespaced_service("web", namespace, _preload_content=False)
    eventually(lambda: _backends(node, frontend) is None, "the frontend removed", node=node)


def test_a_headless_service_is_not_balanced(node, api):
    namespace = create_namespace(api)
    create_pod(api, namespace, "db", {"app": "db"})
    set_pod_status(api, namespace, "db", "10.233.70.21")
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespaced_service(namespace, {"metadata": {"name": "db"}, "spec": {
        "clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 5432}]}}, _preload_content=False)
    # A Service made after it shows the agent has seen the headless one (events of one resource are in order).
    made = json.loads(core.create_namespaced_service(namespace, {"metadata": {"name": "after"}, "spec": {
        "selector": {"app": "db"}, "ports": [{"port": 5432}]}}, _preload_content=False).data)
    eventually(lambda: _backends(node, "%s:5432/TCP" % made["spec"]["clusterIP"]), "the next Service", node=node)
    assert not any(s["frontend"].startswith("None") for s in node.cli("service", "list"))
    resources = node.status()["kubernetes"]["resources"]
    assert resources and all(r["handler_errors"] == 0 for r in resources)
