"""Issue 3 on the lab's real Kubernetes, as the seed walks it: the seed's pods applied with kubectl across
three nodes, the agent's CLI, both routing modes, and a TCP stream that survives agents killed with
SIGKILL and a cluster.yml re-run."""
from __future__ import annotations

import ipaddress
import json
import subprocess
import time

import pytest

from .conftest import kubectl, run_playbook
from .seed import LAB, NS, apiary, exec_in, pods, seed_cluster, tcp_stream_from_netpod

pytestmark = pytest.mark.lab


# The order of the modes lets the next seed module take this one's last lab (seed.py).
@pytest.fixture(scope="module", params=["native", "tunnel"])
def cluster(request):
    with seed_cluster(request.param, request.session) as lab:
        yield lab


def test_seed_pods_run_with_ips_from_their_nodes_cidr(cluster):
    found = pods()
    frontends = [n for n in found if n.startswith("frontend-")]
    assert len(frontends) == 2 and "backend" in found and "netpod" in found
    assert found["netpod"]["spec"]["nodeName"] == "node2"
    cidrs = {}
    for node in ("node1", "node2", "node3"):
        cidrs[node] = json.loads(apiary("status", "--node", node, "-o", "json").stdout)["pod_cidr"]
    for name, pod in found.items():
        assert pod["status"]["phase"] == "Running", (name, pod["status"])
        ip = ipaddress.ip_address(pod["status"]["podIP"])
        assert ip in ipaddress.ip_network(cidrs[pod["spec"]["nodeName"]]), (name, ip)
    wide = kubectl("get", "pods", "-n", NS, "-o", "wide").stdout
    assert "netpod" in wide and "node2" in wide and found["netpod"]["status"]["podIP"] in wide


def test_ping_same_node_and_cross_node(cluster):
    found = pods()
    netpod_node = found["netpod"]["spec"]["nodeName"]
    targets = [p for n, p in found.items() if n != "netpod"]
    assert {p["spec"]["nodeName"] == netpod_node for p in targets} == {True, False}, \
        "the seed's pods should land on netpod's node and on others"
    for pod in targets:
        out = exec_in("netpod", "ping", "-c", "1", "-W", "3", pod["status"]["podIP"], check=False)
        assert out.returncode == 0, (pod["metadata"]["name"], pod["spec"]["nodeName"], out.stdout, out.stderr)


def test_pod_mtu_follows_the_routing_mode(cluster):
    # apiary_device_mtu (1500) less the VXLAN overhead in tunnel mode.
    link = json.loads(exec_in("netpod", "ip", "-j", "link", "show", "eth0").stdout)[0]
    assert link["mtu"] == (1450 if cluster["mode"] == "tunnel" else 1500)


def test_backend_fetches_the_frontend_page_across_nodes(cluster):
    for name, pod in pods().items():
        if name.startswith("frontend-"):
            page = exec_in("backend", "wget", "-qO-", "http://%s/" % pod["status"]["podIP"]).stdout
            assert "Welcome to nginx!" in page


def test_agent_cli_on_every_node(cluster):
    found = pods()
    netpod = found["netpod"]
    endpoints = json.loads(apiary("endpoint", "list", "--node", "node2", "-o", "json").stdout)
    mine = [e for e in endpoints if e["ip"] == netpod["status"]["podIP"]]
    assert len(mine) == 1
    ep = mine[0]
    assert "k8s:app=netpod" in ep["labels"] and "k8s:io.kubernetes.pod.namespace=%s" % NS in ep["labels"]
    table = apiary("endpoint", "list", "--node", "node2").stdout
    assert table.splitlines()[0].split()[:3] == ["ENDPOINT", "POLICY", "(ingress)"]
    assert str(ep["id"]) in table and "k8s:app=netpod" in table
    health = apiary("endpoint", "health", str(ep["id"]), "--node", "node2").stdout
    assert "Overall Health:   OK" in health and "Connected:        yes" in health

    # The same labels get the same identity on every node: both frontends share one.
    ids = set()
    for node in ("node1", "node2", "node3"):
        for e in json.loads(apiary("endpoint", "list", "--node", node, "-o", "json").stdout):
            if "k8s:role=frontend" in e["labels"]:
                ids.add(e["identity"])
    assert len(ids) == 1
    identities = json.loads(apiary("identity", "list", "--node", "node3", "-o", "json").stdout)
    by_id = {i["id"]: i["labels"] for i in identities}
    assert by_id[1] == ["reserved:host"] and by_id[2] == ["reserved:world"] and by_id[6] == ["reserved:remote-node"]
    assert "k8s:role=frontend" in by_id[ids.pop()]

    # ipcache on another node knows netpod, with its identity and (remote) tunnel endpoint.
    ipcache = {e["key"]: e for e in json.loads(apiary("map", "get", "ipcache", "--node", "node1", "-o", "json").stdout)}
    entry = ipcache["%s/32" % netpod["status"]["podIP"]]
    assert entry["identity"] == ep["identity"] and entry["tunnel_endpoint"] == "10.77.101.12"
    assert ipcache["0.0.0.0/0"]["identity"] == 2 and ipcache["10.77.101.11/32"]["identity"] == 1
    assert ipcache["10.77.101.12/32"]["identity"] == 6
    text = apiary("map", "get", "cilium_ipcache", "--node", "node1").stdout
    assert "%s/32" % netpod["status"]["podIP"] in text and "identity=%d" % ep["identity"] in text

    status = apiary("status", "--node", "node1").stdout
    assert "KVStore:" in status and "Ok" in status
    assert ("Tunnel" in status) if cluster["mode"] == "tunnel" else ("Native" in status)


def test_tcp_stream_survives_agent_kill_and_cluster_rerun(cluster):
    with tcp_stream_from_netpod("streamer", {"app": "streamer"}, 7070) as stream:
        client = stream["client"]
        for node in ("node1", "node2", "node3"):
            # The supervisor's child is the agent: kill the agent itself, not its supervisor.
            agents = subprocess.run(["pgrep", "-f", "apiary agent --config /var/lib/apiary-lab/%s/" % node],
                                    capture_output=True, text=True).stdout.split()
            assert agents, "no agent process for %s" % node
            subprocess.run(["kill", "-9", *agents], check=True)
        time.sleep(3)
        assert client.poll() is None, client.stdout.read()
        rc, out = run_playbook("cluster.yml", LAB, *cluster["extra"])
        assert rc == 0, out[-3000:]
        time.sleep(2)
        assert client.poll() is None, client.stdout.read()
    output = stream["output"]
    # The client reports each echoed message; it must have gone on without an error.
    lines = output.split()
    assert "error" not in output.lower(), output[-2000:]
    assert len(lines) >= 20, output[-2000:]
