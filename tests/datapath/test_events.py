"""Datapath events (bpf/lib/events.h) read from the real apiary_events ring buffer: what the kernel
reports for new connections, replies, policy verdicts and drops, how established traffic is
aggregated, and that nothing is emitted while events are switched off."""
import sys
import threading
import time

import pytest

from apiary.observe import events

from .test_datapath import ip_of
from .test_policy import CLIENT, SERVER, Policy, identity, lxc
from .topology import loaded


@pytest.fixture(scope="module")
def topo(bpffs, objects_dir):
    with loaded("native", bpffs, objects_dir) as topology:
        topology.popen("n1b", sys.executable, "-c", SERVER, "7000")
        yield topology


class Recorder:
    """Reads node n1's ring buffer in a thread while a test runs."""

    def __init__(self, topo, node="n1"):
        self.pin_dir = topo.pin_dir[node]
        self.events, self.lost = [], 0
        self.stop = threading.Event()
        self.reader = events.EventReader(self.pin_dir, self.events.append, self._lost, poll_ms=50)
        self.thread = threading.Thread(target=self.reader.run, args=(self.stop,), daemon=True)

    def _lost(self, n):
        self.lost += n

    def __enter__(self):
        events.set_enabled(self.pin_dir, True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        events.set_enabled(self.pin_dir, False)
        time.sleep(0.3)
        self.stop.set()
        self.thread.join(5)

    def settle(self, seconds=0.4):
        time.sleep(seconds)
        return list(self.events)


def matching(found, **want):
    return [e for e in found if all(e[k] == v for k, v in want.items())]


def connect(topo, client, server, port):
    return topo.run(client, sys.executable, "-c", CLIENT, ip_of(server), str(port), check=False).stdout.strip()


def test_new_connection_reply_and_verdict(topo):
    with Recorder(topo) as rec:
        assert connect(topo, "n1a", "n1b", 7000) == "hello"
        found = rec.settle()
    client, server = ip_of("n1a"), ip_of("n1b")
    syn = matching(found, type="trace", observation_point="from-endpoint", src_ip=client, dst_ip=server,
                   dst_port=7000, is_reply=False)
    assert syn and syn[0]["tcp_flags"] == ["SYN"] and syn[0]["protocol"] == "TCP"
    assert syn[0]["endpoint_id"] == lxc("n1a") and syn[0]["traffic_direction"] == "egress"
    assert (syn[0]["src_identity"], syn[0]["dst_identity"]) == (identity("n1a"), identity("n1b"))
    assert abs(syn[0]["time"] - time.time()) < 5
    into = matching(found, type="trace", observation_point="to-endpoint", dst_ip=server, is_reply=False)
    assert into and into[0]["endpoint_id"] == lxc("n1b") and into[0]["traffic_direction"] == "ingress"
    # The SYN-ACK: a reply, leaving the server (its connection is an ingress one).
    synack = matching(found, type="trace", src_ip=server, dst_ip=client, is_reply=True,
                      observation_point="from-endpoint")
    assert synack and synack[0]["tcp_flags"] == ["SYN", "ACK"] and synack[0]["traffic_direction"] == "ingress"
    verdicts = matching(found, type="policy-verdict", dst_ip=server, verdict="FORWARDED")
    assert {v["traffic_direction"] for v in verdicts} == {"egress", "ingress"}


def test_drop_is_reported_with_reason_and_policy_verdict(topo):
    p = Policy(topo, "n1b")
    try:
        p.enforce()
        with Recorder(topo) as rec:
            assert connect(topo, "n1a", "n1b", 7000).startswith("failed")
            found = rec.settle()
    finally:
        p.reset()
    drops = matching(found, type="drop", dst_ip=ip_of("n1b"), dst_port=7000)
    assert drops, found
    drop = drops[0]
    assert (drop["drop_reason"], drop["drop_reason_desc"], drop["verdict"]) == (133, "Policy denied", "DROPPED")
    assert drop["endpoint_id"] == lxc("n1b") and drop["traffic_direction"] == "ingress"
    assert (drop["src_identity"], drop["dst_identity"]) == (identity("n1a"), identity("n1b"))
    # Every retransmitted SYN is a drop of its own: drops are never aggregated.
    assert len(drops) >= 2
    denied = matching(found, type="policy-verdict", verdict="DROPPED", dst_ip=ip_of("n1b"))
    assert denied and denied[0]["traffic_direction"] == "ingress" and denied[0]["drop_reason"] == 133


def test_established_traffic_is_aggregated(topo):
    with Recorder(topo) as rec:
        topo.run("n1a", "ping", "-c", "40", "-i", "0.02", "-q", ip_of("n2b"))
        found = rec.settle()
    requests = matching(found, type="trace", src_ip=ip_of("n1a"), dst_ip=ip_of("n2b"), is_reply=False)
    replies = matching(found, type="trace", src_ip=ip_of("n2b"), dst_ip=ip_of("n1a"), is_reply=True)
    # 40 echo requests and 40 replies in under a second: the first of each direction is reported.
    assert len(requests) == 1 and requests[0]["icmp_type"] == 8 and requests[0]["protocol"] == "ICMPv4"
    assert len(replies) == 1 and replies[0]["icmp_type"] == 0


def test_nothing_is_emitted_while_switched_off(topo):
    rec = Recorder(topo)
    rec.thread.start()  # reading, but events stay off
    try:
        assert connect(topo, "n1a", "n1b", 7000) == "hello"
        assert rec.settle() == []
    finally:
        rec.stop.set()
        rec.thread.join(5)


def test_full_ring_is_counted_as_lost(topo):
    """With nobody reading, a flood of drops overflows the ring; every lost record is counted."""
    pin_dir = topo.pin_dir["n1"]
    p = Policy(topo, "n1b")
    before = events.lost_count(pin_dir)
    events.set_enabled(pin_dir, True)
    try:
        p.enforce()
        # ~150k denied UDP datagrams at ~110k records of room (lib/maps.h EVENTS_RING_SIZE).
        flood = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                 "for i in range(150000):\n    s.sendto(b'x', (%r, 9))\n" % ip_of("n1b"))
        topo.run("n1a", sys.executable, "-c", flood)
    finally:
        events.set_enabled(pin_dir, False)
        p.reset()
    # Drain what is in the ring so that later tests start empty.
    stop = threading.Event()
    drained = []
    reader = events.EventReader(pin_dir, drained.append, poll_ms=50)
    thread = threading.Thread(target=reader.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(2)
    stop.set()
    thread.join(5)
    lost = events.lost_count(pin_dir) - before
    assert lost > 0
    assert len(drained) + lost >= 150000 * 0.99  # a few datagrams may never reach the pod's device
