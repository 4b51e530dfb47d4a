"""Services in kubeconfig mode: a Service and its EndpointSlices (made by the real EndpointSlice
controller from the pods it selects, or by hand for a Service without a selector) become this node's
frontends and backends; a pod that is not Ready is no backend; a deleted Service is gone."""
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


def test_a_service_without_selector_takes_the_endpointslices_made_for_it(node, api):
    """As the API server's own `kubernetes` Service, or a Service for something outside the cluster: its
    EndpointSlices are written by someone else, and their ports are matched by name."""
    namespace = create_namespace(api)
    core = kubernetes.client.CoreV1Api(api)
    svc = json.loads(core.create_namespaced_service(namespace, {"metadata": {"name": "outside"}, "spec": {
        "ports": [{"name": "https", "port": 443, "targetPort": 6443}, {"name": "dns", "port": 53, "protocol": "UDP"}]}},
        _preload_content=False).data)
    https, dns = ("%s:%s" % (svc["spec"]["clusterIP"], port) for port in ("443/TCP", "53/UDP"))
    eventually(lambda: _backends(node, https) == [], "the frontend without backends", node=node)

    def endpoint_slice(name, addresses, ready=None):
        conditions = {} if ready is None else {"ready": ready}
        return {"metadata": {"name": name, "labels": {"kubernetes.io/service-name": "outside"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [address], "conditions": conditions} for address in addresses],
                "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}, {"name": "dns", "port": 5353,
                                                                               "protocol": "UDP"}]}
    discovery = kubernetes.client.DiscoveryV1Api(api)
    discovery.create_namespaced_endpoint_slice(namespace, endpoint_slice("outside-a", ["10.99.7.1", "10.99.7.2"]),
                                               _preload_content=False)
    discovery.create_namespaced_endpoint_slice(namespace, endpoint_slice("outside-b", ["10.99.7.3"], ready=False),
                                               _preload_content=False)
    # Both slices count; an endpoint whose `ready` is unset is ready, one that says false is not.
    assert eventually(lambda: _backends(node, https), "backends from the slice", node=node) == \
        ["10.99.7.1:6443/TCP", "10.99.7.2:6443/TCP"]
    assert _backends(node, dns) == ["10.99.7.1:5353/UDP", "10.99.7.2:5353/UDP"]
    discovery.patch_namespaced_endpoint_slice("outside-b", namespace, {"endpoints": [
        {"addresses": ["10.99.7.3"], "conditions": {"ready": True}}]}, _preload_content=False)
    eventually(lambda: _backends(node, https) == ["10.99.7.1:6443/TCP", "10.99.7.2:6443/TCP", "10.99.7.3:6443/TCP"],
               "the second slice's endpoint ready", node=node)
    discovery.delete_namespaced_endpoint_slice("outside-a", namespace, _preload_content=False)
    eventually(lambda: _backends(node, https) == ["10.99.7.3:6443/TCP"], "the first slice gone", node=node)
