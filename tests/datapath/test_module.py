"""The bpf_datapath module around the real runtime, in a node namespace of our own: present,
idempotent, check mode with diff, absent, and a node without the runtime."""
import json
import os
import secrets
import subprocess
import sys

import pytest

from apiary import netns

from .conftest import ROOT

MODULE = os.path.join(ROOT, "plugins", "modules", "bpf_datapath.py")


@pytest.fixture
def node(root_only, tmp_path):
    name = "apiary-t-" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "eth0", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def apiary_bin(tmp_path):
    """An `apiary` command running this checkout's runtime."""
    path = tmp_path / "apiary"
    path.write_text("#!/bin/sh\nPYTHONPATH=%s exec %s -m apiary.cli \"$@\"\n"
                    % (os.path.join(ROOT, "runtime", "src"), sys.executable))
    path.chmod(0o755)
    return str(path)


def run_module(node, args, check_mode=False, diff=False):
    args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
    proc = subprocess.run(["nsenter", "--net=" + netns.path(node), sys.executable, MODULE],
                          input=json.dumps({"ANSIBLE_MODULE_ARGS": args}), capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "collections")))
    return json.loads(proc.stdout)


def test_present_check_diff_absent(node, apiary_bin, bpffs, objects_dir, variant_objects_dir, tmp_path):
    args = {"objects_dir": objects_dir, "pin_dir": os.path.join(bpffs, node), "routing_mode": "tunnel",
            "state_file": str(tmp_path / "datapath.json"), "apiary_bin": apiary_bin}
    first = run_module(node, args)
    assert first["changed"] and not first.get("failed"), first
    assert "create apiary_vxlan" in first["actions"][0]
    assert set(first["programs"]) == {"from_container", "to_container", "from_netdev", "from_overlay", "to_overlay",
                                      "sock4_connect", "sock4_sendmsg", "sock4_recvmsg", "sock4_getpeername"}
    assert run_module(node, args)["changed"] is False

    check = run_module(node, dict(args, objects_dir=variant_objects_dir), check_mode=True, diff=True)
    assert check["changed"] and "from_netdev id %d" % first["programs"]["from_netdev"]["id"] in check["diff"]["before"]
    assert "from_netdev id None" in check["diff"]["after"]
    assert run_module(node, args)["changed"] is False  # check mode changed nothing

    # A new uplink: the old one loses its filter.
    subprocess.run(["ip", "-n", node, "link", "add", "eth1", "type", "veth", "peer", "name", "peer1"], check=True)
    moved = run_module(node, dict(args, uplink="eth1"))
    assert moved["actions"] == ["detach from_netdev from eth0 ingress (the uplink is now eth1)",
                                "attach from_netdev on eth1 ingress"], moved
    assert "bpf" not in subprocess.run(["tc", "-n", node, "filter", "show", "dev", "eth0", "ingress"],
                                       capture_output=True, text=True).stdout
    args["uplink"] = "eth1"

    absent = dict(args, state="absent")
    del absent["objects_dir"]
    assert run_module(node, absent)["changed"]
    assert run_module(node, absent)["changed"] is False
    assert not os.path.exists(os.path.join(bpffs, node))


def test_a_node_without_runtime(node, bpffs, objects_dir, tmp_path):
    args = {"pin_dir": os.path.join(bpffs, node), "apiary_bin": str(tmp_path / "missing")}
    gone = run_module(node, dict(args, state="absent"))
    assert gone["changed"] is False and "not installed" in gone["msg"]
    check = run_module(node, dict(args, objects_dir=objects_dir), check_mode=True)
    assert check["changed"] and not check.get("failed")
    failed = run_module(node, dict(args, objects_dir=objects_dir))
    assert failed["failed"] and "runtime" in failed["msg"]
