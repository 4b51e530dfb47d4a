"""Issue 6 on the lab's real Kubernetes (the seed applied with kubectl), as the seed uses Hubble: `apiary observe` through the relay shows the seed's
policy drops and the backend's connection to the frontend Service (translated), `apiary monitor`
streams one node's raw events, every node's metrics are scraped by a real Prometheus, the relay's
page renders the service map in a real Chromium, and the flow servers refuse clients without a
certificate of the cluster's CA."""
from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time

import pytest

from apiary import netns
from tests.helpers.prometheus import running_prometheus
from tests.helpers.chromium import render

from .conftest import kubectl, wait_for
from .seed import APIARY, EXAMPLES, NS, apiary, pods, seed_cluster
from .test_policy import can_fetch, can_ping, frontends, ip_of

pytestmark = pytest.mark.lab

NODES = {"node1": "10.77.101.11", "node2": "10.77.101.12", "node3": "10.77.101.13"}
LAB_ROOT = "/var/lib/apiary-lab"


@pytest.fixture(scope="module")
def cluster(request):
    with seed_cluster("native", request.session) as lab:
        kubectl("apply", "-n", NS, "-f", str(EXAMPLES / "frontend-service.yaml"))
        kubectl("apply", "-n", NS, "-f", str(EXAMPLES / "frontend-backend-policy.yaml"))
        wait_for("the agents to enforce allow-frontend",
                 lambda: not can_ping("netpod", ip_of(frontends()[0])), timeout=30)
        yield lab


def observe(*args, check=True):
    """`apiary observe ... -o json`: the flows (and lost-event records) as dicts."""
    out = apiary("observe", *args, "-o", "json", check=check).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def flows_of(records):
    return [r["flow"] for r in records if "flow" in r]


def until(func, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = func()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_observe_shows_the_policy_drops_cluster_wide(cluster):
    netpod = pods()["netpod"]
    for frontend in frontends():
        assert not can_ping("netpod", ip_of(frontend))
        assert not can_fetch("netpod", ip_of(frontend))

    def drops():
        return [f for f in flows_of(observe("--verdict", "DROPPED", "--from-pod", "%s/netpod" % NS))
                if f["destination"].get("pod_name", "").startswith("frontend-")]
    found = until(drops)
    assert found, "no drop of netpod -> frontend through the relay"
    # Both frontends (on two nodes) are seen: the relay asks every node.
    assert {f["destination"]["pod_name"] for f in found} == set(frontends())
    assert {f["node_name"] for f in found} == {pods()[f]["spec"]["nodeName"] for f in frontends()}
    for flow in found:
        assert flow["verdict"] == "DROPPED" and flow["drop_reason_desc"] == "POLICY_DENIED"
        assert flow["source"]["namespace"] == NS and flow["source"]["pod_name"] == "netpod"
        assert flow["source"]["identity"] > 255 and flow["destination"]["identity"] > 255
        assert flow["source"]["node_name"] == netpod["spec"]["nodeName"]
        assert flow["destination"]["node_name"] == pods()[flow["destination"]["pod_name"]]["spec"]["nodeName"]
    assert {("ICMPv4" in f["l4"]) or ("TCP" in f["l4"]) for f in found} == {True}
    assert any("TCP" in f["l4"] and f["l4"]["TCP"]["destination_port"] == 80 for f in found)
    # The compact view says it in words, with the pods' names.
    compact = apiary("observe", "--verdict", "DROPPED", "--from-pod", "%s/netpod" % NS, "--last", "5").stdout
    assert "%s/netpod" % NS in compact and "Policy denied" in compact and "DROPPED" in compact


def test_observe_backend_through_the_service_translated(cluster):
    assert can_fetch("backend", "frontend")

    def backend_flows():
        return flows_of(observe("--pod", "%s/backend" % NS, "--since", "1m"))
    found = until(lambda: [f for f in backend_flows() if f.get("Type") == "SOCK"])
    assert found, "no socket translation of backend -> frontend"
    sock = found[-1]
    assert sock["destination_service"] == {"name": "frontend", "namespace": NS}
    assert sock["source"]["pod_name"] == "backend" and sock["verdict"] == "TRANSLATED"
    l3 = [f for f in backend_flows() if f.get("Type") == "L3_L4" and "TCP" in f["l4"]
          and f["destination"].get("pod_name", "").startswith("frontend-")
          and f["l4"]["TCP"]["destination_port"] == 80 and f["verdict"] == "FORWARDED"]
    assert l3, "no forwarded TCP flow backend -> frontend pod"
    assert any(f["l4"]["TCP"]["flags"].get("SYN") for f in l3)


def test_monitor_streams_one_nodes_drops(cluster):
    node = pods()[frontends()[0]]["spec"]["nodeName"]
    proc = subprocess.Popen([APIARY, "monitor", "--node", node, "-t", "drop"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        can_ping("netpod", ip_of(frontends()[0]))
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "drop (Policy denied)" in out and ip_of(frontends()[0]) in out
    assert "-> endpoint" not in out  # -t drop: no traces


def test_bad_filters_are_refused(cluster):
    for args, word in ((["--verdict", "NOPE"], "--verdict"), (["--from-ip", "10.1.2"], "--from-ip"),
                       (["--since", "5 parsecs"], "--since")):
        proc = apiary("observe", *args, check=False)
        assert proc.returncode == 2 and word in proc.stderr, (args, proc.stderr)


def test_status_reports_hubble_and_kernel_drops(cluster):
    status = json.loads(apiary("status", "--node", "node1", "-o", "json").stdout)
    hubble = status["hubble"]
    assert hubble["state"] == "Ok" and hubble["observer"]["max_flows"] == 4095 and hubble["tls"]
    assert hubble["kernel_drops"]["state"] in ("Ok", "Unavailable")
    text = apiary("status", "--node", "node1").stdout
    assert "Hubble:" in text and "Kernel drops:" in text and hubble["kernel_drops"]["state"] in text


CA_DIR = os.path.join(LAB_ROOT, "hubble-ca")  # apiary_hubble_tls_ca_dir in the lab


def _handshake(address, context):
    import socket
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return tls.recv(64)


def test_flow_servers_require_a_client_certificate(cluster):
    address = json.load(open(os.path.join(LAB_ROOT, "node2", "hubble.json")))["listen_address"]

    def attempt(client):
        context = ssl.create_default_context(cafile=os.path.join(CA_DIR, "ca.crt"))
        context.check_hostname = False
        if client:
            context.load_cert_chain(os.path.join(CA_DIR, client + ".crt"), os.path.join(CA_DIR, client + ".key"))
        try:
            return _handshake(address, context)
        except (ssl.SSLError, OSError) as exc:
            return repr(exc)
    # From node1's namespace (the relay's node), never the root namespace.
    assert netns.call_in("apiary-node1", attempt, "admin").startswith(b"HTTP/1.1 200")
    for client in (None, "node3"):  # no certificate; a server certificate (not for clients)
        refused = netns.call_in("apiary-node1", attempt, client)
        assert isinstance(refused, str) and "SSL" in refused or "reset" in refused, (client, refused)


def test_prometheus_scrapes_every_node(cluster, tmp_path):
    # Drops and a served request to count; then the real Prometheus, in node1's namespace.
    can_ping("netpod", ip_of(frontends()[0]))
    can_fetch("backend", "frontend")
    targets = ["%s:9965" % address for address in NODES.values()]
    with running_prometheus("apiary-node1", tmp_path, targets) as prom:
        up = prom.wait_for("up", lambda r: len(r) == 3 and all(s["value"] == 1 for s in r))
        assert sorted(s["metric"]["instance"] for s in up) == sorted(targets)
        every_node = lambda r: len({s["metric"]["instance"] for s in r}) == 3  # noqa: E731
        prom.wait_for("hubble_flows_processed_total", every_node)
        drops = prom.wait_for('hubble_drop_total{reason="POLICY_DENIED"}', lambda r: r and sum(
            s["value"] for s in r) > 0)
        frontend_nodes = {NODES[pods()[f]["spec"]["nodeName"]] + ":9965" for f in frontends()}
        assert {s["metric"]["instance"] for s in drops} <= frontend_nodes | {NODES["node2"] + ":9965"}
        assert {s["metric"]["protocol"] for s in drops} >= {"ICMPv4"}
        prom.wait_for('hubble_tcp_flags_total{flag="SYN"}', lambda r: r and sum(s["value"] for s in r) > 0)
        prom.wait_for('hubble_icmp_total{type="EchoRequest"}', lambda r: bool(r))
        # The agent's own: the policy applied above took some time to reach every node's datapath.
        prom.wait_for("apiary_policy_implementation_delay_seconds_count", lambda r: every_node(r) and all(
            s["value"] >= 1 for s in r))
        prom.wait_for("apiary_endpoint_count", lambda r: every_node(r) and sum(s["value"] for s in r) == 4)
        # dns and http are asked for (the seed's list) but need L7 visibility: no series, said in status.
        assert prom.query("hubble_dns_queries_total") == [] and prom.query("hubble_http_requests_total") == []
    status = json.loads(apiary("status", "--node", "node1", "-o", "json").stdout)["hubble"]
    assert sorted(text.split(":")[0] for text in status["metrics_unsupported"]) == ["dns", "http"]


def test_the_relay_page_renders_the_service_map(cluster, tmp_path):
    for frontend in frontends():
        can_ping("netpod", ip_of(frontend))
    can_fetch("backend", "frontend")
    ui = json.load(open(os.path.join(LAB_ROOT, "node1", "hubble-relay.json")))["ui_address"]
    dom, html = render("apiary-node1", "http://%s/?namespace=%s" % (ui, NS), tmp_path)
    assert dom.find("svg", id="servicemap", data_namespace=NS), html[-3000:]
    nodes = {e["attrs"]["data-node-id"] for e in dom.find("g", cls="node")}
    assert {"%s/%s" % (NS, name) for name in ("frontend", "backend", "netpod")} <= nodes, nodes
    edges = {(e["attrs"]["data-source"], e["attrs"]["data-destination"], e["attrs"]["data-protocol"]): e
             for e in dom.find("g", cls="edge")}
    drop = edges[("%s/netpod" % NS, "%s/frontend" % NS, "ICMPv4")]
    assert "dropped" in drop["attrs"]["class"].split()
    served = edges[("%s/backend" % NS, "%s/frontend" % NS, "TCP")]
    assert "dropped" not in served["attrs"]["class"].split()
    rows = dom.find("tr", cls="flow")
    assert rows and any("dropped" in row["attrs"]["class"].split() for row in rows)
