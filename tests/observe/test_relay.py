"""The relay over two nodes' flow servers (mTLS) found through etcd, all inside a scratch namespace;
`apiary observe` end to end against the relay's unix socket."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from apiary import netns
from apiary.observe import server
from apiary.observe.observer import Observer
from apiary.store.etcd import EtcdClient
from tests.helpers.etcd import free_ports, requires_etcd, running_etcd
from tests.observe.conftest import drop, event, in_netns, make_lookup

pytestmark = [pytest.mark.lab, requires_etcd]
SRC = os.path.join(os.path.dirname(__file__), "..", "..", "runtime", "src")


@pytest.fixture
def cluster(scratch_ns, pki, tmp_path):
    """node1 (127.0.0.2) and node2 (127.0.0.3) serve flows; node3 (127.0.0.4) is published but dead."""
    with running_etcd(scratch_ns, tmp_path) as url:
        port = free_ports(scratch_ns)[0]
        store = EtcdClient([url])
        for name, ip in (("node1", "127.0.0.2"), ("node2", "127.0.0.3"), ("node3", "127.0.0.4")):
            netns.call_in(scratch_ns, store.put, "/apiary/nodes/" + name, json.dumps({"name": name, "ip": ip}))
        obs = {name: Observer(capacity=100, node_name=name, lookup=make_lookup()) for name in ("node1", "node2")}
        t0 = time.time() - 100  # at setup, not at import: `--since 5m` below is relative to now
        for n in range(10):     # interleaved in time: node1 even seconds, node2 odd
            obs["node%d" % (n % 2 + 1)].add((drop if n == 9 else event)(time=t0 + n, src_port=1000 + n))
        servers = [in_netns(scratch_ns, lambda n=n, ip=ip: server.FlowServer(obs[n], ip, port, tls=pki["server"]))
                   .start() for n, ip in (("node1", "127.0.0.2"), ("node2", "127.0.0.3"))]
        sock = str(tmp_path / "relay" / "hubble-relay.sock")
        config = tmp_path / "relay.json"
        config.write_text(json.dumps({"node_name": "node1", "etcd_endpoints": [url], "peer_port": port,
                                      "socket": sock, "listen_address": None, "ui_address": None,
                                      "tls": pki["client"], "discovery_interval": 1}))
        log = open(tmp_path / "relay.log", "wb")
        relay = subprocess.Popen(["nsenter", "--net=" + netns.path(scratch_ns), sys.executable, "-m", "apiary.cli",
                                  "hubble-relay", "--config", str(config)], env=dict(os.environ, PYTHONPATH=SRC),
                                 stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 15
            while not os.path.exists(sock):
                assert relay.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / "relay.log").read_text()
                time.sleep(0.05)
            assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
            yield {"socket": sock, "obs": obs}
        finally:
            relay.send_signal(signal.SIGTERM)
            try:
                relay.wait(5)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait()
            log.close()
            for srv in servers:
                srv.stop()


def _flows(records):
    return [r["flow"] for r in records if "flow" in r]


def test_the_relay_merges_by_time_and_reports_the_dead_peer(cluster):
    records = list(server.get_stream(cluster["socket"], "/v1/flows?last=20"))
    flows = _flows(records)
    assert [f["l4"]["TCP"]["source_port"] for f in flows] == list(range(1000, 1010))
    assert [f["node_name"] for f in flows[:4]] == ["node1", "node2", "node1", "node2"]
    dead = [r["node_status"] for r in records if "node_status" in r]
    assert len(dead) == 1 and dead[0]["node_names"] == ["node3"] and dead[0]["state_change"] == "NODE_UNAVAILABLE"
    assert "127.0.0.4" in dead[0]["message"]
    # --last N is the last N of the cluster, filters run on the nodes
    last3 = _flows(server.get_stream(cluster["socket"], "/v1/flows?last=3"))
    assert [f["l4"]["TCP"]["source_port"] for f in last3] == [1007, 1008, 1009]
    dropped = _flows(server.get_stream(cluster["socket"], "/v1/flows?verdict=DROPPED"))
    assert [(f["node_name"], f["verdict"]) for f in dropped] == [("node2", "DROPPED")]
    status = server.get_json(cluster["socket"], "/v1/status")
    assert (status["num_connected_nodes"], status["num_unavailable_nodes"], status["seen_flows"]) == (2, 1, 10)
    assert {p["name"]: p["state"] for p in status["peers"]} == {"node1": "connected", "node2": "connected",
                                                               "node3": "error"}


def test_the_relay_follows_every_node(cluster):
    stream = server.get_stream(cluster["socket"], "/v1/flows?follow=1&protocol=udp", timeout=10,
                               follow_timeout=10)
    first = next(stream)          # node3's failure comes first: the live ones have nothing yet
    assert first["node_status"]["node_names"] == ["node3"]
    time.sleep(0.5)               # the relay's streams to the nodes are open
    cluster["obs"]["node1"].add(event(time=time.time(), protocol="UDP", tcp_flags=[], dst_port=53))
    cluster["obs"]["node2"].add(event(time=time.time(), protocol="UDP", tcp_flags=[], dst_port=5353))
    cluster["obs"]["node2"].add(event(time=time.time()))     # TCP: filtered out on the node
    got = sorted(next(stream)["flow"]["node_name"] for _ in range(2))
    assert got == ["node1", "node2"]
    stream.close()


def _observe(sock, *args):
    return subprocess.run([sys.executable, "-m", "apiary.cli", "observe", "--server", sock, *args],
                          env=dict(os.environ, PYTHONPATH=SRC), capture_output=True, text=True, timeout=60)


def test_apiary_observe_end_to_end(cluster):
    sock = cluster["socket"]
    out = _observe(sock, "--last", "4", "-o", "json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["flow"]["l4"]["TCP"]["source_port"] for r in lines if "flow" in r] == [1006, 1007, 1008, 1009]

    out = _observe(sock, "--verdict", "DROPPED")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1
    assert "[node2]: network-policy-test/netpod:1009 (ID:12345) <> network-policy-test/frontend-6d8f9c-abcde:80 " \
           "(ID:23456) Policy denied DROPPED (TCP Flags: SYN)" in out.stdout
    assert "NODE UNAVAILABLE: node3" in out.stderr

    out = _observe(sock, "--from-pod", "network-policy-test/netpod", "--since", "5m", "-o", "table")
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()
    assert rows[0].split() == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    assert len(rows) == 11 and "to-endpoint" in rows[1]

    out = _observe(sock, "--verdict", "DROP")
    assert out.returncode == 2 and out.stdout == ""
    assert "--verdict 'DROP': unknown verdict" in out.stderr
    out = _observe(sock, "--to-ip", "10.0.0.0/40")
    assert out.returncode == 2 and "--to-ip '10.0.0.0/40'" in out.stderr
    out = _observe(sock, "--since", "yesterday")
    assert out.returncode == 2 and "--since 'yesterday'" in out.stderr
