"""The datapath on a real kernel: two nodes and four pods in namespaces of our own, in native and
tunnel routing mode. Forwarding, the ARP responder, anti-spoofing, the VXLAN key, and the loader:
idempotent apply, check mode, replacement under a live TCP stream, remove."""
import json
import os
import socket
import struct
import sys
import time

import pytest

from apiary.bpf import maps
from apiary.datapath import loader

from .topology import PODS, ROUTER, loaded

HERE = os.path.dirname(os.path.abspath(__file__))
DROP_INVALID_SMAC, DROP_INVALID_SIP, DROP_NO_TUNNEL_ENDPOINT = 130, 132, 160


@pytest.fixture(scope="module", params=["native", "tunnel"])
def topo(request, bpffs, objects_dir):
    with loaded(request.param, bpffs, objects_dir) as topology:
        yield topology


def ip_of(pod):
    return PODS[pod][1]


def test_same_node_ping(topo):
    assert topo.ping("n1a", ip_of("n1b"))
    assert topo.ping("n2b", ip_of("n2a"))


def test_cross_node_ping(topo):
    assert topo.ping("n1a", ip_of("n2a"))
    assert topo.ping("n2b", ip_of("n1b"))


def test_pod_reaches_its_node(topo):
    assert topo.ping("n1a", ROUTER["n1"])


@pytest.mark.parametrize("client, server", [("n1a", "n1b"), ("n1a", "n2b"), ("n2a", "n1b")])
def test_tcp(topo, client, server, tmp_path):
    status = str(tmp_path / "status")
    serving = topo.popen(server, sys.executable, os.path.join(HERE, "stream.py"), "serve", "7000", status)
    sending = topo.popen(client, sys.executable, os.path.join(HERE, "stream.py"), "send", ip_of(server), "7000", "0.3")
    sent, served = sending.communicate(timeout=20)[0], serving.communicate(timeout=20)[0]
    assert sent.startswith("sent ") and served.startswith("done "), (sent, served)
    assert sent.split()[1] == served.split()[1]


def test_gateway_mac_comes_from_the_arp_responder(topo):
    # The lxc devices have arp_ignore=8 (topology.py): only from_container can have answered.
    topo.run("n1a", "ip", "neigh", "flush", "dev", "eth0")
    assert topo.ping("n1a", ROUTER["n1"])
    neigh = json.loads(topo.run("n1a", "ip", "-j", "neigh", "show", ROUTER["n1"], "dev", "eth0").stdout)
    assert neigh and neigh[0]["lladdr"] == topo.lxc_mac["n1a"]


def test_spoofed_source_ip_is_dropped_and_counted(topo):
    spoofed = "10.233.64.99"
    before = topo.metrics("n1").get((DROP_INVALID_SIP, "egress"), 0)
    topo.run("n1b", "ip", "addr", "add", spoofed + "/32", "dev", "eth0")
    try:
        assert not topo.ping("n1b", ip_of("n1a"), source=spoofed)
        assert not topo.ping("n1b", ip_of("n2a"), source=spoofed)
    finally:
        topo.run("n1b", "ip", "addr", "del", spoofed + "/32", "dev", "eth0")
    assert topo.metrics("n1").get((DROP_INVALID_SIP, "egress"), 0) >= before + 2
    assert topo.ping("n1b", ip_of("n1a"))


def test_spoofed_mac_is_dropped_and_counted(topo):
    before = topo.metrics("n1").get((DROP_INVALID_SMAC, "egress"), 0)
    topo.run("n1b", "ip", "link", "set", "eth0", "address", "02:00:00:00:66:66")
    try:
        assert not topo.ping("n1b", ip_of("n1a"))
    finally:
        topo.run("n1b", "ip", "link", "set", "eth0", "address", PODS["n1b"][2])
    assert topo.metrics("n1").get((DROP_INVALID_SMAC, "egress"), 0) > before
    assert topo.ping("n1b", ip_of("n1a"))


def _capture_vxlan(seconds):
    """In a node: the (VNI, inner source IP) of the VXLAN packets seen on eth0 for `seconds`."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    sock.bind(("eth0", 0))
    sock.settimeout(0.1)
    seen, end = set(), time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            frame = sock.recv(2048)
        except socket.timeout:
            continue
        ihl = (frame[14] & 0x0F) * 4
        udp = 14 + ihl
        if frame[23] != 17 or struct.unpack("!H", frame[udp + 2:udp + 4])[0] != loader.VXLAN_PORT:
            continue
        vxlan = udp + 8
        vni = int.from_bytes(frame[vxlan + 4:vxlan + 7], "big")
        inner_ip = vxlan + 8 + 14
        seen.add((vni, socket.inet_ntoa(frame[inner_ip + 12:inner_ip + 16])))
    return sorted(seen)


@pytest.mark.parametrize("topo", ["tunnel"], indirect=True)
def test_vni_carries_the_source_identity(topo):
    pinging = topo.popen("n1a", "ping", "-n", "-q", "-c", "5", "-i", "0.2", ip_of("n2a"))
    seen = topo.in_node("n2", _capture_vxlan, 1.2)
    pinging.wait(timeout=5)
    assert (PODS["n1a"][3], ip_of("n1a")) in seen
    assert (PODS["n2a"][3], ip_of("n2a")) not in seen  # replies leave n2, they are not captured arriving


@pytest.mark.parametrize("topo", ["tunnel"], indirect=True)
def test_no_tunnel_endpoint_is_dropped(topo):
    before = topo.metrics("n1").get((DROP_NO_TUNNEL_ENDPOINT, "egress"), 0)
    with maps.IpcacheMap(topo.pin_dir["n1"]) as ipcache:
        entry = ipcache.get(ip_of("n2b"))
        ipcache.delete(ip_of("n2b") + "/32")
        try:
            assert not topo.ping("n1a", ip_of("n2b"))
        finally:
            ipcache.set(ip_of("n2b") + "/32", entry["identity"], entry["tunnel_endpoint"])
    assert topo.metrics("n1").get((DROP_NO_TUNNEL_ENDPOINT, "egress"), 0) > before
    assert topo.ping("n1a", ip_of("n2b"))


# --- the loader ---------------------------------------------------------------------------------
def test_second_apply_changes_nothing(topo, objects_dir):
    for node in ("n1", "n2"):
        result = topo.apply(objects_dir, node)
        assert result["changed"] is False and result["actions"] == []
        assert set(result["programs"]) == set(loader.PROGRAMS)


def test_apply_reattaches_a_detached_endpoint(topo, objects_dir):
    ifindex = topo.ifindex["n1b"]
    assert topo.in_node("n1", loader.detach_endpoint, ifindex)
    assert not topo.in_node("n1", loader.endpoint_attached, topo.pin_dir["n1"], ifindex)
    result = topo.apply(objects_dir, "n1")
    assert result["actions"] == ["attach from_container on %s ingress" % topo.lxc["n1b"],
                                 "attach to_container on %s egress" % topo.lxc["n1b"]]
    assert topo.in_node("n1", loader.endpoint_attached, topo.pin_dir["n1"], ifindex)
    assert topo.ping("n1b", ip_of("n1a"))


def _attached_ids(topo, node):
    devices = ["eth0"] + [topo.lxc[p] for p in PODS if PODS[p][0] == node]
    if topo.mode == "tunnel":
        devices.append("apiary_vxlan")
    return {dev: topo.tc_filters(node, dev, "ingress") for dev in devices}


def test_check_mode_changes_nothing(topo, variant_objects_dir):
    before = _attached_ids(topo, "n1")
    pins = os.listdir(os.path.join(topo.pin_dir["n1"], "progs"))
    with open(topo.state_file("n1")) as f:
        state = f.read()
    result = topo.apply(variant_objects_dir, "n1", check=True)
    assert result["changed"] is True
    assert "load bpf_lxc.o" in " ".join(result["actions"])
    assert "replace from_container on %s ingress" % topo.lxc["n1a"] in result["actions"]
    assert "replace to_container on %s egress" % topo.lxc["n1a"] in result["actions"]
    # Objects the variant build changes are reloaded (bpf_sock.o counts no packets: it stays as it is).
    reloaded = {obj for obj in loader.OBJECTS if "load %s" % obj in " ".join(result["actions"])}
    assert reloaded >= {"bpf_lxc.o", "bpf_host.o", "bpf_overlay.o"}
    for prog, info in result["programs"].items():
        if loader.PROGRAMS[prog] in reloaded:
            assert info == {"id": None, "tag": None}, prog
        else:
            assert info == result["previous_programs"][prog], prog
    assert _attached_ids(topo, "n1") == before
    assert os.listdir(os.path.join(topo.pin_dir["n1"], "progs")) == pins
    with open(topo.state_file("n1")) as f:
        assert f.read() == state


def test_new_objects_replace_the_programs_under_a_live_tcp_stream(topo, variant_objects_dir, tmp_path):
    status = tmp_path / "status"
    serving = topo.popen("n2a", sys.executable, os.path.join(HERE, "stream.py"), "serve", "7001", str(status))
    sending = topo.popen("n1a", sys.executable, os.path.join(HERE, "stream.py"), "send", ip_of("n2a"), "7001", "3")

    def received():
        try:
            return int(status.read_text())
        except (OSError, ValueError):
            return 0

    deadline = time.monotonic() + 5
    while received() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert received() > 0, "the stream never started"
    results = {node: topo.apply(variant_objects_dir, node) for node in ("n1", "n2")}
    at_replace = received()
    for node, result in results.items():
        assert result["changed"] and result["programs"] != result["previous_programs"], node
        assert "replace from_netdev on eth0 ingress" in result["actions"], result["actions"]
    time.sleep(0.5)
    assert received() > at_replace, "no data after the programs were replaced"
    sent, served = sending.communicate(timeout=20)[0], serving.communicate(timeout=20)[0]
    assert sent.startswith("sent ") and served.startswith("done "), (sent, served)
    assert sent.split()[1] == served.split()[1]
    # The new programs run: this build counts forwarded packets (reason 0), the first did not.
    assert topo.metrics("n1").get((0, "egress"), 0) > 0
    assert topo.metrics("n2").get((0, "ingress"), 0) > 0
    # and the pins follow the attachments
    for node in ("n1", "n2"):
        assert topo.apply(variant_objects_dir, node)["changed"] is False


def test_remove_leaves_no_pin_and_no_filter(topo):
    for node in ("n1", "n2"):
        result = topo.in_node(node, loader.remove, topo.pin_dir[node], "eth0", False, topo.state_file(node))
        assert result["changed"]
        assert not os.path.exists(topo.pin_dir[node])
        assert not os.path.exists(topo.state_file(node))
        for device, filters in _attached_ids(topo, node).items():
            assert "bpf" not in filters, (device, filters)
        links = topo.run(node, "ip", "-o", "link").stdout
        assert "apiary_vxlan" not in links
        again = topo.in_node(node, loader.remove, topo.pin_dir[node], "eth0", False, topo.state_file(node))
        assert again == {"changed": False, "actions": [], "previous_programs": {}}
