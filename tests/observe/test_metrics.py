"""Hubble's and the agent's Prometheus metrics: what decoded events count, the text exposition format, the
implementation-delay hooks, and a real Prometheus (Debian's) scraping a MetricsServer in a scratch namespace."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from apiary import netns
from apiary.observe import metrics
from tests.helpers.etcd import temp_netns
from tests.helpers.prometheus import requires_prometheus, running_prometheus

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def event(**changes) -> dict:
    """A decoded event (docs/hubble.md §1): a forwarded TCP SYN from a pod to another pod."""
    base = {
        "type": "trace", "event_type": 4, "sub_type": 0, "time": 1795450000.5, "verdict": "FORWARDED",
        "drop_reason": 0, "drop_reason_desc": "", "observation_point": "to-endpoint", "endpoint_id": 1234,
        "traffic_direction": "ingress", "is_reply": False, "src_identity": 12345, "dst_identity": 23456,
        "src_ip": "10.233.64.10", "dst_ip": "10.233.65.11", "protocol": "TCP", "src_port": 41000,
        "dst_port": 80, "icmp_type": None, "icmp_code": None, "tcp_flags": ["SYN"], "orig_ip": None,
        "orig_port": None, "netns_cookie": 0, "ifindex": 17, "length": 74,
    }
    base.update(changes)
    return base


def drop(**changes) -> dict:
    return event(**dict({"type": "drop", "event_type": 1, "sub_type": 133, "verdict": "DROPPED", "drop_reason": 133,
                         "drop_reason_desc": "Policy denied", "observation_point": ""}, **changes))


# A small scene: 3 policy drops (2 TCP, 1 ICMP echo), a SYN, its SYN-ACK reply, a FIN, a DNS query to the
# world and a policy verdict.
SCENE = [
    drop(), drop(src_port=41001),
    drop(protocol="ICMPv4", src_port=0, dst_port=0, icmp_type=8, icmp_code=0, tcp_flags=[]),
    event(),
    event(is_reply=True, tcp_flags=["SYN", "ACK"], src_port=80, dst_port=41000, observation_point="to-stack"),
    event(tcp_flags=["FIN", "ACK"]),
    event(protocol="UDP", dst_port=53, tcp_flags=[], dst_identity=2, observation_point="to-stack"),
    event(type="policy-verdict", event_type=5, sub_type=0, observation_point=""),
]


def series(text: str) -> dict:
    """Exposition text -> {'name{labels}': value} for the sample lines."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_hubble_metrics_count_as_hubble_does():
    hubble = metrics.HubbleMetrics(["dns", "drop", "tcp", "flow", "icmp", "http", "port-distribution", "policy",
                                    "flows-to-world:any-drop"])
    for e in SCENE:
        hubble.process(e)
    got = series(hubble.render())
    assert got == {
        'hubble_flows_processed_total{type="Drop",subtype="",verdict="DROPPED"}': 3,
        'hubble_flows_processed_total{type="PolicyVerdict",subtype="",verdict="FORWARDED"}': 1,
        'hubble_flows_processed_total{type="Trace",subtype="to-endpoint",verdict="FORWARDED"}': 2,
        'hubble_flows_processed_total{type="Trace",subtype="to-stack",verdict="FORWARDED"}': 2,
        'hubble_drop_total{reason="POLICY_DENIED",protocol="ICMPv4"}': 1,
        'hubble_drop_total{reason="POLICY_DENIED",protocol="TCP"}': 2,
        'hubble_tcp_flags_total{flag="FIN",family="IPv4"}': 1,
        'hubble_tcp_flags_total{flag="SYN",family="IPv4"}': 2,  # the SYN and the policy-verdict's SYN
        'hubble_tcp_flags_total{flag="SYN-ACK",family="IPv4"}': 1,
        'hubble_icmp_total{family="IPv4",type="EchoRequest"}': 1,
        # Forwarded, not replies: the SYN, the FIN, the DNS query, the verdict.
        'hubble_port_distribution_total{protocol="TCP",port="80"}': 3,
        'hubble_port_distribution_total{protocol="UDP",port="53"}': 1,
        'hubble_policy_verdicts_total{direction="ingress",match="unknown",action="forwarded"}': 1,
        'hubble_flows_to_world_total{protocol="UDP",verdict="FORWARDED"}': 1,
    }
    assert "# TYPE hubble_drop_total counter" in hubble.render()
    # dns and http are accepted but export nothing: said, not hidden.
    assert hubble.unsupported() == ["dns: needs L7 (DNS proxy) visibility", "http: needs L7 (HTTP proxy) visibility"]


def test_only_the_enabled_metrics_are_kept_and_lost_events_always_are():
    hubble = metrics.HubbleMetrics(["drop"])
    for e in SCENE:
        hubble.process(e)
    hubble.lost_events("perf_event_ring_buffer", 7)
    hubble.lost_events("perf_event_ring_buffer", 0)
    names = {key.split("{")[0] for key in series(hubble.render())}
    assert names == {"hubble_drop_total", "hubble_lost_events_total"}
    assert series(hubble.render())['hubble_lost_events_total{source="perf_event_ring_buffer"}'] == 7
    assert hubble.unsupported() == []
    assert [m.name for m in metrics.HubbleMetrics([]).metrics()] == ["hubble_lost_events_total"]


def test_drop_reasons_are_hubbles_enum_names():
    hubble = metrics.HubbleMetrics(["drop"])
    hubble.process(drop(drop_reason=181, drop_reason_desc="Policy denied by denylist"))
    hubble.process(drop(drop_reason=169, protocol="UDP"))
    hubble.process(drop(drop_reason=250))
    assert set(series(hubble.render())) == {
        'hubble_drop_total{reason="POLICY_DENY",protocol="TCP"}',
        'hubble_drop_total{reason="FIB_LOOKUP_FAILED",protocol="UDP"}',
        'hubble_drop_total{reason="DROP_REASON_UNKNOWN",protocol="TCP"}'}


@pytest.mark.parametrize("bad", [["bogus"], ["drop", "flow", "dnss:query"], [":drop"]])
def test_unknown_metric_names_are_errors_naming_them(bad):
    with pytest.raises(ValueError) as info:
        metrics.HubbleMetrics(bad)
    assert "is not a Hubble metric" in str(info.value)
    assert repr([b for b in bad if b.split(":")[0] not in metrics.HUBBLE_METRICS][0]) in str(info.value)


def test_exposition_format_escapes_labels_and_renders_histograms():
    counter = metrics.Counter("x_total", "a help\nline", ("a",))
    counter.inc(('say "hi"\\\n',), 2)
    hist = metrics.Histogram("d_seconds", "delay", buckets=(0.1, 1))
    for value in (0.05, 0.1, 0.5, 3):
        hist.observe(value)
    text = metrics.render([counter, hist])
    assert text == (
        "# HELP x_total a help\\nline\n# TYPE x_total counter\n"
        'x_total{a="say \\"hi\\"\\\\\\n"} 2\n'
        "# HELP d_seconds delay\n# TYPE d_seconds histogram\n"
        'd_seconds_bucket{le="0.1"} 2\nd_seconds_bucket{le="1"} 3\nd_seconds_bucket{le="+Inf"} 4\n'
        "d_seconds_sum 3.65\nd_seconds_count 4\n")


class FakeMetricsMap:
    def list(self):
        return [{"reason": 0, "reason_name": "Forwarded", "direction": "egress", "count": 10, "bytes": 1000},
                {"reason": 0, "reason_name": "Forwarded", "direction": "ingress", "count": 8, "bytes": 800},
                {"reason": 133, "reason_name": "Policy denied", "direction": "ingress", "count": 3, "bytes": 222}]


class FakeDatapath:
    metrics = FakeMetricsMap()


def test_agent_metrics_read_the_datapath_counters_at_scrape_time():
    agent = metrics.AgentMetrics(FakeDatapath(), endpoint_count=lambda: 4)
    agent.policy_delay.observe(0.002)
    got = series(agent.render())
    assert got['apiary_drop_count_total{reason="Policy denied",direction="ingress"}'] == 3
    assert got['apiary_drop_bytes_total{reason="Policy denied",direction="ingress"}'] == 222
    assert got['apiary_forward_count_total{direction="egress"}'] == 10
    assert got['apiary_forward_count_total{direction="ingress"}'] == 8
    assert got["apiary_endpoint_count"] == 4
    assert got["apiary_policy_implementation_delay_seconds_count"] == 1
    assert got['apiary_policy_implementation_delay_seconds_bucket{le="0.001"}'] == 0
    assert got['apiary_policy_implementation_delay_seconds_bucket{le="0.0025"}'] == 1
    assert got["apiary_service_implementation_delay_seconds_count"] == 0


class FakePolicyMap:
    def __init__(self):
        self.entries = {}

    def set(self, lxc_id, *key, deny):
        self.entries[(lxc_id,) + key] = deny

    def delete(self, lxc_id, *key):
        self.entries.pop((lxc_id,) + key, None)

    def list(self):
        return []


def test_policy_manager_observes_the_implementation_delay_of_a_change():
    from apiary.agent.policy import PolicyManager, is_policy_key

    class Datapath:
        policy = FakePolicyMap()

    manager = PolicyManager(Datapath())
    agent = metrics.AgentMetrics()
    manager.metrics = agent.policy_delay
    manager.load([], 1)
    assert agent.policy_delay.counts == [0] * (len(agent.policy_delay.buckets) + 1)
    policy = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
              "metadata": {"name": "p", "namespace": "default"},
              "spec": {"endpointSelector": {"matchLabels": {"app": "x"}}, "ingress": [{}]}}
    key = "/apiary/objects/ciliumnetworkpolicies/default/p"
    assert is_policy_key(key), "the store key of a CiliumNetworkPolicy changed: update this test"
    assert manager.handle(key, json.dumps(policy), 2)
    assert sum(agent.policy_delay.counts) == 1
    assert 0 <= agent.policy_delay.sum < 1
    # The same policy again is no change: nothing to implement, nothing observed.
    manager.handle(key, json.dumps(policy), 3)
    assert sum(agent.policy_delay.counts) == 1


# --- a real Prometheus ------------------------------------------------------------------------------------
SERVER = """
import json, sys, time
from apiary.observe import metrics
hubble = metrics.HubbleMetrics(json.loads(sys.argv[2]))
for e in json.load(open(sys.argv[1])):
    hubble.process(e)
hubble.lost_events("perf_event_ring_buffer", 5)
agent = metrics.AgentMetrics(endpoint_count=lambda: 2)
agent.service_delay.observe(0.003)
server = metrics.MetricsServer("127.0.0.1", 9965, [hubble.render, agent.render]).start()
print("ready", flush=True)
time.sleep(600)
"""


def _scrape(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


@pytest.mark.lab
@requires_prometheus
def test_prometheus_scrapes_the_hubble_metrics(tmp_path):
    (tmp_path / "events.json").write_text(json.dumps(SCENE))
    (tmp_path / "server.py").write_text(SERVER)
    with temp_netns() as ns:
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(tmp_path / "server.py"), str(tmp_path / "events.json"),
             json.dumps(["drop", "flow", "tcp", "icmp", "dns", "http"])],
            env=dict(os.environ, PYTHONPATH=os.path.join(REPO, "runtime", "src")),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert server.stdout.readline().strip() == "ready", server.communicate(timeout=5)[0]
            content_type, text = netns.call_in(ns, _scrape, "http://127.0.0.1:9965/metrics")
            assert content_type == metrics.CONTENT_TYPE
            assert 'hubble_drop_total{reason="POLICY_DENIED",protocol="TCP"} 2' in text.splitlines()
            with running_prometheus(ns, tmp_path, ["127.0.0.1:9965"]) as prom:
                drops = prom.wait_for("hubble_drop_total", lambda r: len(r) == 2)
                assert sorted((d["metric"]["reason"], d["metric"]["protocol"], d["value"]) for d in drops) == [
                    ("POLICY_DENIED", "ICMPv4", 1.0), ("POLICY_DENIED", "TCP", 2.0)]
                assert all(d["metric"]["instance"] == "127.0.0.1:9965" and d["metric"]["job"] == "apiary"
                           for d in drops)
                flows = prom.query('sum by (type) (hubble_flows_processed_total)')
                assert {f["metric"]["type"]: f["value"] for f in flows} == {"Drop": 3, "Trace": 4, "PolicyVerdict": 1}
                syn = prom.query('hubble_tcp_flags_total{flag="SYN"}')
                assert [s["value"] for s in syn] == [2.0]
                assert [s["value"] for s in prom.query("hubble_lost_events_total")] == [5.0]
                assert [s["value"] for s in prom.query("apiary_endpoint_count")] == [2.0]
                # Histograms come through as Prometheus reads them: quantiles can be computed.
                p50 = prom.query("histogram_quantile(0.5, apiary_service_implementation_delay_seconds_bucket)")
                assert len(p50) == 1 and 0.0025 < p50[0]["value"] <= 0.005
                # Metrics not enabled are not there at all.
                assert prom.query("hubble_port_distribution_total") == []
                assert [t["health"] for t in prom.targets()] == ["up"]
        finally:
            server.kill()
            server.wait()
