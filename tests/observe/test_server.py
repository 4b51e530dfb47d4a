"""The node's flow server over TCP inside a scratch network namespace: mutual TLS, server-side
filters, and a follow client that stops reading."""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import time

import pytest

from apiary.observe import server
from apiary.observe.observer import Observer
from tests.observe.conftest import drop, event, in_netns, make_lookup, requires_root

pytestmark = [pytest.mark.lab, requires_root]
T0 = 1795450000.0


def _observer():
    obs = Observer(capacity=100, node_name="node2", lookup=make_lookup())
    obs.add(event(time=T0))
    obs.add(drop(time=T0 + 1))
    obs.add(event(time=T0 + 2, src_port=41001))
    return obs


@pytest.fixture
def tls_server(scratch_ns, pki):
    srv = in_netns(scratch_ns, lambda: server.FlowServer(_observer(), "127.0.0.1", 0, tls=pki["server"])).start()
    try:
        yield scratch_ns, "127.0.0.1:%d" % srv.address[1], pki
    finally:
        srv.stop()


def _flows(ns, target, tls, query="last=10"):
    return in_netns(ns, lambda: list(server.get_stream(target, "/v1/flows?" + query, tls, timeout=5)))


def test_a_client_with_a_valid_certificate_gets_flows(tls_server):
    ns, target, pki = tls_server
    records = _flows(ns, target, pki["client"])
    assert [r["flow"]["verdict"] for r in records] == ["FORWARDED", "DROPPED", "FORWARDED"]
    assert records[1]["flow"]["source"]["pod_name"] == "netpod"
    # filtered on the server
    assert [r["flow"]["verdict"] for r in _flows(ns, target, pki["client"], "verdict=DROPPED")] == ["DROPPED"]
    status = in_netns(ns, server.get_json, target, "/v1/status", pki["client"])
    assert (status["seen_flows"], status["max_flows"]) == (3, 100)


def test_a_bad_filter_is_a_400_naming_the_flag(tls_server):
    ns, target, pki = tls_server
    with pytest.raises(server.StreamError) as exc:
        _flows(ns, target, pki["client"], "verdict=NOPE")
    assert exc.value.status == 400 and "--verdict 'NOPE': unknown verdict" in str(exc.value)


@pytest.mark.parametrize("who", ["no_cert", "stranger"])
def test_a_client_without_a_valid_certificate_is_refused(tls_server, who):
    ns, target, pki = tls_server
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        _flows(ns, target, pki[who])


def test_plain_http_to_the_tls_server_is_refused(tls_server):
    ns, target, _ = tls_server
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        _flows(ns, target, None)


def test_a_follow_client_that_does_not_read_is_dropped_while_the_observer_keeps_going(scratch_ns):
    obs = Observer(capacity=4095, node_name="node2", lookup=make_lookup())
    srv = in_netns(scratch_ns, lambda: server.FlowServer(obs, "127.0.0.1", 0, queue_size=200,
                                                         write_timeout=1.0)).start()
    port = srv.address[1]

    def connect():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /v1/flows?follow=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        return sock

    sock = in_netns(scratch_ns, connect)
    try:
        deadline = time.monotonic() + 5
        while obs.status()["subscribers"] != 1:
            assert time.monotonic() < deadline, "the follow stream never subscribed"
            time.sleep(0.02)
        # Paced like a busy node: the stream is written until the client's socket is full, then the
        # client's queue fills and the observer drops it. add() is never held up meanwhile.
        added, slowest = 0, 0.0
        deadline = time.monotonic() + 30
        while obs.status()["subscribers"]:
            assert time.monotonic() < deadline, "the stuck client was never dropped"
            start = time.perf_counter()
            for _ in range(100):
                obs.add(event(time=T0 + added / 1e6, src_port=added % 60000 + 1))
                added += 1
            slowest = max(slowest, time.perf_counter() - start)
            time.sleep(0.002)
        assert slowest < 0.5, "100 add() calls took %.2f s" % slowest
        for _ in range(10_000):            # and it goes on without the client
            obs.add(event(time=T0 + added / 1e6))
            added += 1
        status = obs.status()
        assert status["dropped_clients"] == 1 and status["seen_flows"] == added
        # The server ended the stream: reading what was sent reaches the end of the connection.
        sock.settimeout(10)
        data = b""
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        lines = body.split(b"\n")
        assert json.loads(lines[0])["flow"]["node_name"] == "node2"
        assert len(lines) < added
        # A new client is served as before.
        obs.add(drop(time=T0 + 1000))
        got = in_netns(scratch_ns, lambda: list(server.get_stream("127.0.0.1:%d" % port, "/v1/flows?last=1")))
        assert got[0]["flow"]["verdict"] == "DROPPED"
    finally:
        sock.close()
        srv.stop()
