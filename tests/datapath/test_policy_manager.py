"""The agent's policy repository against a real apiary_policy map: a policy change recomputes only
the endpoints that policy selects (before or after the change), and the map ends up with exactly
what a full computation gives. Identity changes still recompute every endpoint."""
import json

import pytest

import apiary.policy as policy_lib
from apiary.agent import policy as agent_policy
from apiary.agent.datapath import Datapath
from apiary.agent.endpoints import Endpoint
from apiary.identity import pod_labels
from apiary.store.etcd import KV

from .topology import PODS, loaded

CNP = "/apiary/objects/ciliumnetworkpolicies/default/"
IDENTITY = "/apiary/identities/id/"


def _policy(name: str, app: str, port: int) -> str:
    return json.dumps({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                       "metadata": {"name": name, "namespace": "default"},
                       "spec": {"endpointSelector": {"matchLabels": {"app": app}},
                                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                                             "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}]}]}})


def _labels(pod: dict) -> list:
    return pod_labels("default", pod, {"kubernetes.io/metadata.name": "default"})


def _endpoint(pod: str, app: str, lxc_id: int) -> Endpoint:
    labels = _labels({"app": app})
    return Endpoint(id=lxc_id, container_id=pod, ifname="eth0", netns="/run/netns/" + pod, host_ifname="lxc" + pod,
                    host_ifindex=0, host_mac="02:00:00:00:00:01", mac=PODS[pod][2], ip=PODS[pod][1],
                    pod_namespace="default", pod_name=pod, labels=labels, identity=PODS[pod][3])


@pytest.fixture
def manager(root_only, bpffs, objects_dir, monkeypatch):
    """A PolicyManager on node n1's real maps, with two endpoints (app a and app b), counting the
    endpoints it computes."""
    with loaded("native", bpffs, objects_dir) as topo:
        datapath = Datapath(topo.pin_dir["n1"], "eth0")
        computed = []
        real = policy_lib.compute

        def counting(rules, labels, *args, **kwargs):
            computed.append(next(label for label in labels if label.startswith("k8s:app=")))
            return real(rules, labels, *args, **kwargs)

        monkeypatch.setattr(agent_policy.policy_lib, "compute", counting)
        pm = agent_policy.PolicyManager(datapath)
        pm.load([KV(CNP + "pa", _policy("pa", "a", 80)), KV(CNP + "pb", _policy("pb", "b", 80)),
                 KV(IDENTITY + "4242", json.dumps({"labels": _labels({"app": "client"})}))], 1)
        for pod, app, lxc_id in (("n1a", "a", 101), ("n1b", "b", 102)):
            pm.endpoint_added(_endpoint(pod, app, lxc_id))
        computed.clear()
        yield pm, datapath, computed


def _ports(datapath, lxc_id: int) -> set:
    return {(row["identity"], row["port"]) for row in datapath.policy.list(lxc_id) if row["port"]}


def test_a_policy_change_recomputes_only_the_endpoints_it_selects(manager):
    pm, datapath, computed = manager
    before_b = datapath.policy.list(102)
    pm.handle(CNP + "pa", _policy("pa", "a", 8080), 2)
    assert computed == ["k8s:app=a"]
    assert _ports(datapath, 101) == {(4242, 8080)}
    assert datapath.policy.list(102) == before_b

    # The policy now selects b instead of a: both are recomputed (a loses it, b gains it).
    computed.clear()
    pm.handle(CNP + "pa", _policy("pa", "b", 9090), 3)
    assert sorted(computed) == ["k8s:app=a", "k8s:app=b"]
    assert _ports(datapath, 101) == set()
    assert {port for _, port in _ports(datapath, 102)} == {80, 9090}

    computed.clear()
    pm.handle(CNP + "pa", None, 4)
    assert computed == ["k8s:app=b"]
    assert {port for _, port in _ports(datapath, 102)} == {80}
    assert pm.revision == 5  # load (1 -> 2) and three changes


def test_a_new_identity_recomputes_every_endpoint(manager):
    pm, datapath, computed = manager
    pm.handle(IDENTITY + "4243", json.dumps({"labels": _labels({"app": "client", "version": "2"})}), 2)
    assert sorted(computed) == ["k8s:app=a", "k8s:app=b"]
    assert _ports(datapath, 101) == _ports(datapath, 102) == {(4242, 80), (4243, 80)}
