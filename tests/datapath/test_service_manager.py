"""The agent's service cache against a node's real load-balancing maps: Services and the pods they
select become frontends and backends; a pod event reprograms only the Services that select it; a
restarted agent keeps its IDs and drops what was deleted while it was down."""
import json

import pytest

from apiary.agent import services as agent_services
from apiary.datapath import lb
from apiary.store.etcd import KV

from .topology import loaded

SVC = "/apiary/objects/services/shop/"
POD = "/apiary/objects/pods/shop/"
NODE_IP = "10.99.0.1"


def _service(name: str, selector: dict, cluster_ip: str, **spec) -> KV:
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
            "spec": dict({"type": "ClusterIP", "selector": selector, "clusterIP": cluster_ip,
                          "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"}],
                          "sessionAffinity": "None", "externalTrafficPolicy": "Cluster",
                          "internalTrafficPolicy": "Cluster"}, **spec)}
    return KV(SVC + name, json.dumps(body))


def _pod(name: str, ip: str, node: str, labels: dict, port: int = 8080) -> KV:
    body = {"metadata": {"name": name, "namespace": "shop", "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": port, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": ip}}
    return KV(POD + name, json.dumps(body))


def _table(manager) -> dict:
    return {row["frontend"]: sorted(b["address"] for b in row["backends"]) for row in manager.list()}


@pytest.fixture
def node(root_only, bpffs, objects_dir):
    with loaded("native", bpffs, objects_dir) as topo:
        yield topo.pin_dir["n1"]


def _manager(pin_dir):
    return agent_services.ServiceManager(lb.LoadBalancer(pin_dir, node_address=NODE_IP), "n1", NODE_IP)


def test_services_and_their_pods_become_frontends_and_backends(node, monkeypatch):
    manager = _manager(node)
    manager.load([_service("web", {"app": "web"}, "10.233.0.10"),
                  _service("api", {"app": "api"}, "10.233.0.11", type="NodePort",
                           ports=[{"protocol": "TCP", "port": 81, "targetPort": 9000, "nodePort": 30081}]),
                  _pod("web-1", "10.233.64.10", "n1", {"app": "web"}),
                  _pod("web-2", "10.233.65.10", "n2", {"app": "web"}),
                  _pod("api-1", "10.233.65.11", "n2", {"app": "api"})], 5)
    assert _table(manager) == {
        "10.233.0.10:80/TCP": ["10.233.64.10:8080/TCP", "10.233.65.10:8080/TCP"],
        "10.233.0.11:81/TCP": ["10.233.65.11:9000/TCP"],
        "%s:30081/TCP" % NODE_IP: ["10.233.65.11:9000/TCP"]}
    assert {row["frontend"]: row["type"] for row in manager.list()}["%s:30081/TCP" % NODE_IP] == "NodePort"

    # A web pod leaves: only web's frontend is written again.
    written = []
    real = manager.lb.upsert
    monkeypatch.setattr(manager.lb, "upsert", lambda *args: (written.append(str(args[1])), real(*args)))
    manager.handle(POD + "web-2", None, 6)
    assert written == ["10.233.0.10:80/TCP"]
    assert _table(manager)["10.233.0.10:80/TCP"] == ["10.233.64.10:8080/TCP"]
    # A pod no Service selects writes nothing.
    written.clear()
    manager.handle(POD + "db-1", _pod("db-1", "10.233.64.12", "n1", {"app": "db"}).value, 7)
    assert written == []
    # A Service deleted: its frontends go, the other's stay; its backend's ID is let go, and its
    # frontend IDs are not handed to the next Service at once (connections may still name them).
    api_ids = {row["id"] for row in manager.list() if row["frontend"] != "10.233.0.10:80/TCP"}
    manager.handle(SVC + "api", None, 8)
    assert set(_table(manager)) == {"10.233.0.10:80/TCP"}
    assert manager.store_revision == 8
    assert set(manager.backend_ids) == {"10.233.64.10:8080/TCP"}
    manager.handle(SVC + "db", _service("db", {"app": "db"}, "10.233.0.12").value, 9)
    assert {row["id"] for row in manager.list() if row["frontend"] == "10.233.0.12:80/TCP"}.isdisjoint(api_ids)
    assert _table(manager)["10.233.0.12:80/TCP"] == ["10.233.64.12:8080/TCP"]


def test_a_restarted_agent_keeps_ids_and_drops_what_was_deleted_meanwhile(node):
    first = _manager(node)
    web, api = _service("web", {"app": "web"}, "10.233.0.10"), _service("api", {"app": "api"}, "10.233.0.11")
    pods = [_pod("web-1", "10.233.64.10", "n1", {"app": "web"}), _pod("api-1", "10.233.64.11", "n1", {"app": "api"})]
    first.load([web, api] + pods, 3)
    ids = {row["frontend"]: row["id"] for row in first.list()}
    first.lb.close()

    again = _manager(node)  # api was deleted while the agent was down
    again.load([web] + pods, 4)
    assert {row["frontend"]: row["id"] for row in again.list()} == {"10.233.0.10:80/TCP": ids["10.233.0.10:80/TCP"]}
    assert _table(again) == {"10.233.0.10:80/TCP": ["10.233.64.10:8080/TCP"]}
