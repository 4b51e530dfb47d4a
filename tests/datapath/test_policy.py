"""Policy enforcement in the kernel: apiary_policy entries written by hand (the agent's policy
computation is tested in tests/policy), packets from real pods in namespaces of our own, in native
and tunnel routing mode. Ingress is enforced by to_container on the lxc device whichever way the
packet came (same node, uplink, tunnel); egress by from_container; replies pass through conntrack."""
import os
import socket
import sys
import time

import pytest

from apiary.bpf import maps

from .test_datapath import HERE, ip_of
from .topology import PODS, loaded

DROP_POLICY, DROP_POLICY_DENY = 133, 181
TCP, UDP, ICMP = 6, 17, 1
ECHO_REQUEST = 8
SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
while True:
    c, _ = s.accept(); c.sendall(b"hello"); c.close()
"""
CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)
    print(c.recv(16).decode())
except OSError as exc:
    print("failed: %s" % exc)
"""


@pytest.fixture(scope="module", params=["native", "tunnel"])
def topo(request, bpffs, objects_dir):
    with loaded(request.param, bpffs, objects_dir) as topology:
        for pod in ("n1b", "n2b"):
            for port in (7000, 7001):
                topology.popen(pod, sys.executable, "-c", SERVER, str(port))
        yield topology


def lxc(pod):
    return int(ip_of(pod).rsplit(".", 1)[1])


def identity(pod):
    return PODS[pod][3]


class Policy:
    """Entries of one endpoint, written for a test and put back to allow-all afterwards."""

    def __init__(self, topo, pod):
        self.node = PODS[pod][0]
        self.map = maps.PolicyMap(topo.pin_dir[self.node])
        self.lxc = lxc(pod)
        self.written = []

    def set(self, identity=0, egress=False, protocol=0, port=0, prefix=0, deny=False):
        self.map.set(self.lxc, identity, egress, protocol, port, prefix, deny)
        self.written.append((identity, egress, protocol, port, prefix))

    def enforce(self, egress=False):
        """Drop the direction's allow-all entry: only what the test writes gets through."""
        self.map.delete(self.lxc, 0, egress, 0, 0, 0)

    def entry(self, identity=0, egress=False, protocol=0, port=0, prefix=0):
        for row in self.map.list(self.lxc):
            if (row["identity"], row["egress"], row["protocol"], row["port"], row["port_prefix"]) == \
                    (identity, egress, protocol, port, prefix):
                return row
        return None

    def reset(self):
        for key in self.written:
            self.map.delete(self.lxc, *key)
        for egress in (False, True):
            self.map.set(self.lxc, 0, egress, 0, 0, 0, deny=False)
        self.map.close()


@pytest.fixture
def policy(topo):
    made = []

    def make(pod):
        made.append(Policy(topo, pod))
        return made[-1]
    yield make
    for p in made:
        p.reset()


def connect(topo, client, server, port):
    return topo.run(client, sys.executable, "-c", CLIENT, ip_of(server), str(port), check=False).stdout.strip()


def test_ingress_default_deny_on_every_path(topo, policy):
    before = topo.metrics("n1").get((DROP_POLICY, "ingress"), 0)
    policy("n1b").enforce()
    assert not topo.ping("n1a", ip_of("n1b"))  # same node: redirected by from_container
    assert not topo.ping("n2a", ip_of("n1b"))  # other node: uplink or tunnel
    assert connect(topo, "n2a", "n1b", 7000).startswith("failed")
    assert topo.metrics("n1").get((DROP_POLICY, "ingress"), 0) >= before + 3
    assert topo.ping("n1a", ip_of("n1a").replace(".10", ".1"))  # the node itself is untouched


def test_allow_by_identity_protocol_and_port(topo, policy):
    p = policy("n1b")
    p.enforce()
    p.set(identity("n1a"), protocol=ICMP, port=ECHO_REQUEST, prefix=16)
    p.set(identity("n2a"), protocol=TCP, port=7000, prefix=16)
    assert topo.ping("n1a", ip_of("n1b"))       # the echo reply passes as a reply
    assert not topo.ping("n2a", ip_of("n1b"))   # n2a may only open TCP 7000
    assert connect(topo, "n2a", "n1b", 7000) == "hello"
    assert connect(topo, "n2a", "n1b", 7001).startswith("failed")
    assert connect(topo, "n1a", "n1b", 7000).startswith("failed")  # n1a may only ping
    counted = p.entry(identity("n2a"), protocol=TCP, port=7000, prefix=16)
    assert counted["packets"] >= 3 and counted["bytes"] > 0


def test_port_range_is_a_prefix(topo, policy):
    p = policy("n2b")
    p.enforce()
    p.set(0, protocol=TCP, port=7000, prefix=15)  # 7000-7001, from anyone
    assert connect(topo, "n1a", "n2b", 7000) == "hello"
    assert connect(topo, "n1a", "n2b", 7001) == "hello"
    assert not topo.ping("n1a", ip_of("n2b"))


def test_deny_wins_over_allow_of_any_identity(topo, policy):
    before = topo.metrics("n1").get((DROP_POLICY_DENY, "ingress"), 0)
    p = policy("n1b")
    p.set(identity("n1a"), deny=True)  # allow-all for identity 0 stays
    assert not topo.ping("n1a", ip_of("n1b"))
    assert topo.ping("n2a", ip_of("n1b"))
    assert topo.metrics("n1").get((DROP_POLICY_DENY, "ingress"), 0) > before
    # and a deny for any identity beats a specific allow
    p.enforce()
    p.set(identity("n2a"))
    p.set(0, protocol=ICMP, port=ECHO_REQUEST, prefix=16, deny=True)
    assert not topo.ping("n2a", ip_of("n1b"))
    assert connect(topo, "n2a", "n1b", 7000) == "hello"


def test_egress_enforced_and_replies_pass(topo, policy):
    p = policy("n1a")
    p.enforce(egress=True)
    assert not topo.ping("n1a", ip_of("n2a"))
    assert not topo.ping("n1a", ip_of("n1b"))
    assert topo.ping("n2a", ip_of("n1a"))  # n1a answers: replies of accepted connections pass
    assert topo.metrics("n1").get((DROP_POLICY, "egress"), 0) > 0
    p.set(identity("n2b"), egress=True, protocol=TCP, port=7001, prefix=16)
    assert connect(topo, "n1a", "n2b", 7001) == "hello"
    assert connect(topo, "n1a", "n2b", 7000).startswith("failed")


def test_removing_the_allow_stops_an_established_connection(topo, policy, tmp_path):
    """Cilium's behaviour: packets in the opening direction are checked on every packet."""
    p = policy("n1b")
    p.enforce()
    p.set(identity("n2a"), protocol=TCP, port=7500, prefix=16)
    status = str(tmp_path / "status")
    serving = topo.popen("n1b", sys.executable, os.path.join(HERE, "stream.py"), "serve", "7500", status)
    sending = topo.popen("n2a", sys.executable, os.path.join(HERE, "stream.py"), "send", ip_of("n1b"), "7500", "3")
    try:
        def received():
            try:
                with open(status) as f:
                    return int(f.read() or 0)
            except FileNotFoundError:
                return 0
        deadline = time.monotonic() + 5
        while received() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received() > 0
        p.map.delete(p.lxc, identity("n2a"), False, TCP, 7500, 16)
        time.sleep(0.3)
        stalled = received()
        time.sleep(0.7)
        assert received() == stalled  # nothing more gets in
        p.set(identity("n2a"), protocol=TCP, port=7500, prefix=16)
        deadline = time.monotonic() + 5
        while received() == stalled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received() > stalled  # TCP retransmits and the stream resumes
    finally:
        sending.kill()
        serving.kill()
        sending.wait()
        serving.wait()


def test_source_identity_comes_from_the_tunnel_or_the_ipcache(topo, policy):
    """n1's ipcache is made to lie about n2a. In tunnel mode ingress policy uses the VNI (n2's word
    for n2a's identity), in native mode the ipcache: the same entries give opposite verdicts."""
    p = policy("n1b")
    p.enforce()
    p.set(identity("n2a"), protocol=ICMP, port=ECHO_REQUEST, prefix=16)
    with maps.IpcacheMap(topo.pin_dir["n1"]) as ipcache:
        entry = ipcache.get(ip_of("n2a"))
        ipcache.set(ip_of("n2a") + "/32", 4242, entry["tunnel_endpoint"])
        try:
            assert topo.ping("n2a", ip_of("n1b")) == (topo.mode == "tunnel")
        finally:
            ipcache.set(ip_of("n2a") + "/32", entry["identity"], entry["tunnel_endpoint"])
    assert topo.ping("n2a", ip_of("n1b"))


def test_conntrack_entries_name_both_directions(topo):
    assert topo.ping("n1a", ip_of("n1b"))
    with maps.Map.open(topo.pin_dir["n1"], "apiary_ct4") as ct:
        tuples = {(socket.inet_ntoa(bytes(k.saddr)), socket.inet_ntoa(bytes(k.daddr)), k.nexthdr, k.flags)
                  for k, _ in ct.items()}
    # n1a's egress and n1b's ingress, for the same ping
    assert (ip_of("n1a"), ip_of("n1b"), ICMP, 0) in tuples
    assert (ip_of("n1a"), ip_of("n1b"), ICMP, 1) in tuples
