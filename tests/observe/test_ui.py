"""The relay's web page: the service map built from flows, the page's API, and the page itself rendered by a real
headless Chromium (Debian's) inside a scratch network namespace, checked on the DOM it produced."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from apiary.observe import servicemap, ui
from tests.helpers.chromium import CHROMIUM, child_text, render
from tests.helpers.etcd import temp_netns

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NS = "network-policy-test"


def endpoint(pod=None, namespace=NS, app=None, identity=12345, labels=None):
    if pod is None:
        return {"ID": 0, "identity": identity, "labels": labels or [], "namespace": "", "pod_name": ""}
    labels = list(labels or []) + (["k8s:app=%s" % app] if app else []) + ["k8s:io.kubernetes.pod.namespace=" + namespace]
    return {"ID": 100, "identity": identity, "namespace": namespace, "labels": labels, "pod_name": pod,
            "node_name": "node1"}


def flow(src, dst, verdict="FORWARDED", port=80, protocol="TCP", reply=False, second=0, **extra):
    l4 = {protocol: {"source_port": 40000 + second, "destination_port": port}} if protocol in ("TCP", "UDP") \
        else {protocol: {"type": 8, "code": 0}}
    out = {"time": "2026-11-23T16:02:%02d.000000001Z" % second, "verdict": verdict,
           "IP": {"source": "10.233.64.%d" % (10 + second), "destination": "10.233.65.11", "ipVersion": "IPv4"},
           "l4": l4, "source": src, "destination": dst, "Type": "L3_L4", "node_name": "node1", "is_reply": reply,
           "Summary": "%s Flags: SYN" % protocol if protocol == "TCP" else protocol}
    if verdict == "DROPPED":
        out.update(drop_reason=133, drop_reason_desc="POLICY_DENIED")
    out.update(extra)
    return out


FRONTEND = endpoint("frontend-7d4b9c8f6-xk2lp", app="frontend", identity=20001)
FRONTEND2 = endpoint("frontend-7d4b9c8f6-q2w4x", app="frontend", identity=20001)
BACKEND = endpoint("backend-6b8f7c5d4-zx9vb", identity=20002)  # no app label: the name without its hashes
NETPOD = endpoint("netpod", identity=20003)
OTHER = endpoint("client-54d8fbc9b7-j7k2m", namespace="default", app="client", identity=20004)
WORLD = endpoint(identity=2, labels=["reserved:world"])

FLOWS = [
    flow(BACKEND, FRONTEND, second=1, destination_service={"name": "frontend", "namespace": NS}),
    flow(FRONTEND, BACKEND, port=40001, reply=True, second=2),  # a reply: no edge of its own
    flow(BACKEND, FRONTEND2, second=3),
    flow(NETPOD, FRONTEND, verdict="DROPPED", second=4),
    flow(NETPOD, FRONTEND2, verdict="DROPPED", second=5),
    flow(NETPOD, FRONTEND, verdict="DROPPED", protocol="ICMPv4", second=6),
    flow(FRONTEND, WORLD, port=53, protocol="UDP", second=7),
    flow(OTHER, BACKEND, port=8080, second=8),
    flow(endpoint("db-0", namespace="storage", app="db"), endpoint("cache-0", namespace="storage"), port=6379,
         second=9),  # another namespace only: not on this map
    flow(BACKEND, FRONTEND, verdict="TRANSLATED", second=10, Type="SOCK"),  # a translation is not a connection
]


def test_workload_names_group_pods():
    assert servicemap.workload_name("frontend-7d4b9c8f6-xk2lp", []) == "frontend"
    assert servicemap.workload_name("node-exporter-x7k2p", []) == "node-exporter"
    assert servicemap.workload_name("netpod", []) == "netpod"
    assert servicemap.workload_name("web-0", []) == "web-0"
    assert servicemap.workload_name("anything-abcde", ["k8s:app=api"]) == "api"
    # "abcde" has vowels: not a generated suffix.
    assert servicemap.workload_name("nginx-abcde", []) == "nginx-abcde"


def test_service_map_has_workloads_as_nodes_and_flows_as_edges():
    got = servicemap.build(FLOWS, NS)
    assert [(n["id"], n["name"], n["kind"]) for n in got["nodes"]] == [
        ("network-policy-test/backend", "backend", "workload"),
        ("network-policy-test/frontend", "frontend", "workload"),
        ("network-policy-test/netpod", "netpod", "workload"),
        ("default/client", "default/client", "external-workload"),
        ("reserved:world", "world", "reserved"),
    ]
    frontend = [n for n in got["nodes"] if n["name"] == "frontend"][0]
    assert frontend["pods"] == ["frontend-7d4b9c8f6-q2w4x", "frontend-7d4b9c8f6-xk2lp"]
    edges = {(e["source"], e["destination"], e["port"], e["protocol"]):
             (e["forwarded"], e["dropped"], e["is_dropped"]) for e in got["edges"]}
    assert edges == {
        ("network-policy-test/backend", "network-policy-test/frontend", 80, "TCP"): (2, 0, False),
        ("network-policy-test/netpod", "network-policy-test/frontend", 80, "TCP"): (0, 2, True),
        ("network-policy-test/netpod", "network-policy-test/frontend", None, "ICMPv4"): (0, 1, True),
        ("network-policy-test/frontend", "reserved:world", 53, "UDP"): (1, 0, False),
        ("default/client", "network-policy-test/backend", 8080, "TCP"): (1, 0, False),
    }
    dropped = [e for e in got["edges"] if e["protocol"] == "TCP" and e["is_dropped"]][0]
    assert dropped["drop_reasons"] == ["POLICY_DENIED"]
    served = [e for e in got["edges"] if e["services"]]
    assert [e["services"] for e in served] == [["network-policy-test/frontend"]]
    assert servicemap.build(FLOWS, "nothing-here") == {"namespace": "nothing-here", "nodes": [], "edges": []}
    assert servicemap.namespaces(FLOWS) == ["default", NS, "storage"]


def flows_for(namespace, last):
    return ui.touching(FLOWS, namespace, last)


def namespaces():
    return servicemap.namespaces(FLOWS)


def test_api_answers_and_refuses_bad_queries():
    code, kind, body = ui.respond("/", flows_for, namespaces)
    assert code == 200 and kind.startswith("text/html") and body == ui.page()
    assert json.loads(ui.respond("/api/namespaces", flows_for, namespaces)[2]) == {
        "namespaces": ["default", NS, "storage"]}
    code, _, body = ui.respond("/api/flows?namespace=default&last=5", flows_for, namespaces)
    assert code == 200 and [f["time"][17:19] for f in json.loads(body)["flows"]] == ["08"]
    code, _, body = ui.respond("/api/flows?namespace=%s&last=2" % NS, flows_for, namespaces)
    assert [f["time"][17:19] for f in json.loads(body)["flows"]] == ["08", "10"]
    code, _, body = ui.respond("/api/servicemap?namespace=" + NS, flows_for, namespaces)
    assert json.loads(body) == servicemap.build(FLOWS, NS)
    for target, words in [("/api/flows?namespace=x&last=abc", "last: 'abc'"), ("/api/flows?last=3", "namespace"),
                          ("/api/servicemap", "namespace"), ("/api/flows?namespace=x&last=0", "last: '0'")]:
        code, _, body = ui.respond(target, flows_for, namespaces)
        assert code == 400 and words in json.loads(body)["error"], (target, body)
    assert ui.respond("/nope", flows_for, namespaces)[0] == 404


def test_page_is_self_contained():
    text = ui.page().decode()
    # Nothing fetched from elsewhere: no scheme-qualified or protocol-relative src/href, no fetch of a full URL.
    for needle in ('src="http', "src='http", 'href="http', 'src="//', "fetch(\"http", "fetch('http", "@import"):
        assert needle not in text
    assert "<script>" in text and "<style>" in text and 'src="' not in text


# --- the page in a real headless Chromium ---------------------------------------------------------------
SERVER = """
import json, sys, time
from apiary.observe import servicemap, ui
flows = json.load(open(sys.argv[1]))
ui.UIServer("127.0.0.1", 12000, lambda ns, last: ui.touching(flows, ns, last),
            lambda: servicemap.namespaces(flows)).start()
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture
def page_server(tmp_path):
    (tmp_path / "flows.json").write_text(json.dumps(FLOWS))
    (tmp_path / "server.py").write_text(SERVER)
    with temp_netns() as ns:
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(tmp_path / "server.py"), str(tmp_path / "flows.json")],
            env=dict(os.environ, PYTHONPATH=os.path.join(REPO, "runtime", "src")),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert server.stdout.readline().strip() == "ready", server.communicate(timeout=5)[0]
            yield ns, "http://127.0.0.1:12000"
        finally:
            server.kill()
            server.wait()


requires_chromium = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(CHROMIUM),
                                       reason="needs root (ip netns) and Debian's chromium")


@pytest.mark.lab
@requires_chromium
def test_chromium_renders_the_service_map_and_the_flow_table(page_server, tmp_path):
    ns, base = page_server
    dom, html = render(ns, base + "/?namespace=" + NS, tmp_path)
    assert dom.find("svg", id="servicemap", data_namespace=NS), html[-3000:]
    nodes = {e["attrs"]["data-node-id"]: e for e in dom.find("g", cls="node")}
    assert sorted(nodes) == sorted(["network-policy-test/backend", "network-policy-test/frontend",
                                    "network-policy-test/netpod", "default/client", "reserved:world"]), html[-3000:]
    assert child_text(nodes["network-policy-test/frontend"], "text") == "frontend"
    assert child_text(nodes["reserved:world"], "text") == "world"
    assert all(len(n["children"]) >= 2 and n["children"][0]["tag"] == "rect" for n in nodes.values())

    edges = {(e["attrs"]["data-source"], e["attrs"]["data-destination"], e["attrs"]["data-port"],
              e["attrs"]["data-protocol"]): e for e in dom.find("g", cls="edge")}
    assert sorted(edges) == sorted([
        ("network-policy-test/backend", "network-policy-test/frontend", "80", "TCP"),
        ("network-policy-test/netpod", "network-policy-test/frontend", "80", "TCP"),
        ("network-policy-test/netpod", "network-policy-test/frontend", "", "ICMPv4"),
        ("network-policy-test/frontend", "reserved:world", "53", "UDP"),
        ("default/client", "network-policy-test/backend", "8080", "TCP"),
    ])
    dropped = {key for key, e in edges.items() if "dropped" in e["attrs"]["class"].split()}
    assert dropped == {("network-policy-test/netpod", "network-policy-test/frontend", "80", "TCP"),
                       ("network-policy-test/netpod", "network-policy-test/frontend", "", "ICMPv4")}
    served = edges[("network-policy-test/backend", "network-policy-test/frontend", "80", "TCP")]
    assert child_text(served, "text") == "80/TCP" and served["attrs"]["data-forwarded"] == "2"
    assert child_text(edges[("network-policy-test/netpod", "network-policy-test/frontend", "80", "TCP")],
                      "text") == "80/TCP dropped"
    assert all(e["children"][0]["tag"] == "line" for e in edges.values())

    # The table: the namespace's 9 flows, newest first, drops marked.
    rows = dom.find("tr", cls="flow")
    cells = [{c["attrs"]["class"]: c["text"] for c in row["children"]} for row in rows]
    assert [c["time"][17:19] for c in cells] == ["10", "08", "07", "06", "05", "04", "03", "02", "01"]
    marked = [c["verdict"] for row, c in zip(rows, cells) if "dropped" in row["attrs"]["class"].split()]
    assert marked == ["DROPPED"] * 3
    netpod = cells[4]
    assert netpod["source"] == "network-policy-test/netpod:40005"
    assert netpod["destination"] == "network-policy-test/frontend-7d4b9c8f6-q2w4x:80"
    assert netpod["summary"] == "TCP Flags: SYN (POLICY_DENIED)"
    assert cells[2]["destination"] == "reserved:world:53"
    # The picker offers every namespace with the one from the URL chosen.
    options = dom.find("option")
    assert [o["text"] for o in options] == ["default", NS, "storage"]
    assert [o["text"] for o in options if "selected" in o["attrs"]] == [NS]


@pytest.mark.lab
@requires_chromium
def test_chromium_without_a_namespace_picks_one_and_shows_only_its_flows(page_server, tmp_path):
    ns, base = page_server
    dom, html = render(ns, base + "/", tmp_path)
    # No ?namespace=: "default" is preferred when it has flows.
    assert dom.find("svg", id="servicemap", data_namespace="default"), html[-3000:]
    assert sorted(e["attrs"]["data-node-id"] for e in dom.find("g", cls="node")) == [
        "default/client", "network-policy-test/backend"]
    assert len(dom.find("tr", cls="flow")) == 1
    assert not dom.find("g", cls="dropped")
