"""The lab: topology, netns connection, lab_service and etcd, on real namespaces.

The standard-lab tests run in file order (absent -> check -> up -> again -> repair -> etcd -> reset);
the `lab_reset` fixture tears the lab down at the end whatever happens. Tests that need no
standard lab use their own apiary-t-* namespaces (netns_factory deletes them).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from apiary.datapath.loader import cgroup2_mount

from tests.integration.conftest import (LAB_INVENTORY, PLAYBOOKS, netns_list, root_netns_snapshot, run_ansible,
                      run_on_controller, run_playbook, snapshot_diff)

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
]

LAB_NETNS = {"apiary-fabric", "apiary-world", "apiary-node1", "apiary-node2", "apiary-node3"}
LAB_ROOT = "/var/lib/apiary-lab"


def in_netns(netns, *argv, check=False):
    return subprocess.run(["nsenter", "--net=/run/netns/%s" % netns, "--", *argv],
                          capture_output=True, text=True, timeout=30, check=check)


def netns_pids(netns):
    return subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()


def ping(netns, address):
    return in_netns(netns, "ping", "-c1", "-W2", address).returncode == 0


def adhoc_stdout(out):
    """The command output of a one-host ad-hoc `command` run (after 'host | CHANGED | rc=0 >>')."""
    return out.split(">>\n", 1)[1]


# --- the standard lab, in order --------------------------------------------------------------
def test_check_mode_on_absent_lab_changes_nothing(lab_reset):
    before = root_netns_snapshot()
    rc, out = run_playbook(PLAYBOOKS / "lab.yml", LAB_INVENTORY, "--diff", check=True)
    assert rc == 0, out
    assert "netns apiary-node2: create" in out
    assert "apiary-node2 eth0: add 10.77.101.12/24" in out
    assert snapshot_diff(before, root_netns_snapshot()) == []
    assert not os.path.exists(LAB_ROOT)


def test_lab_up_connects_nodes_and_world_without_touching_root(lab_reset):
    before = root_netns_snapshot(include_netns_list=False)
    run = run_playbook(PLAYBOOKS / "lab.yml")
    assert run.rc == 0, run.stdout
    assert LAB_NETNS <= set(netns_list())
    assert ping("apiary-node1", "10.77.101.12")
    assert ping("apiary-node3", "10.77.101.11")
    assert ping("apiary-node2", "10.77.101.1")      # the gateway, in the world
    assert ping("apiary-node2", "198.51.100.1")     # "the internet"
    assert snapshot_diff(before, root_netns_snapshot(include_netns_list=False)) == []
    with open(os.path.join(LAB_ROOT, "lab.json")) as f:
        lab = json.load(f)
    assert lab["etcd_endpoints"] == ["https://10.77.101.11:2379"]
    assert lab["etcd_tls"] == {"ca_file": LAB_ROOT + "/node1/ssl/etcd/ca.pem",
                               "cert_file": LAB_ROOT + "/node1/ssl/etcd/node-node1.pem",
                               "key_file": LAB_ROOT + "/node1/ssl/etcd/node-node1-key.pem"}
    node2 = next(n for n in lab["nodes"] if n["name"] == "node2")
    assert node2 == {"name": "node2", "netns": "apiary-node2", "ip": "10.77.101.12",
                     "groups": ["k8s_cluster", "kube_node"], "state_dir": LAB_ROOT + "/node2",
                     "bpf_pin_dir": "/sys/fs/bpf/apiary/node2", "run_dir": LAB_ROOT + "/node2/run",
                     "cni_conf_dir": LAB_ROOT + "/node2/cni/net.d", "cgroup": "apiary-lab/node2"}
    # The node's pods run in its own cgroup (created by the lab), where its socket programs go.
    assert os.path.isdir(os.path.join(cgroup2_mount(), "apiary-lab", "node2"))
    # Where the lab's kubelet finds CNI plugins: apiary-cni (in the lab's folder), then Debian's.
    assert lab["cni_path"] == [LAB_ROOT + "/cni/bin", "/usr/lib/cni"]


def test_lab_second_run_changes_nothing(lab_reset):
    run = run_playbook(PLAYBOOKS / "lab.yml")
    assert run.rc == 0, run.stdout
    assert run.recap["localhost"]["changed"] == 0, run.stdout


def test_lab_repairs_a_namespace_deleted_by_hand(lab_reset):
    subprocess.run(["ip", "netns", "del", "apiary-node2"], check=True)
    run = run_playbook(PLAYBOOKS / "lab.yml", LAB_INVENTORY, "--diff")
    assert run.rc == 0, run.stdout
    assert "netns apiary-node2: create" in run.stdout
    assert ping("apiary-node1", "10.77.101.12")
    assert ping("apiary-node2", "10.77.101.1")
    run = run_playbook(PLAYBOOKS / "lab.yml")
    assert run.recap["localhost"]["changed"] == 0, run.stdout


def test_netns_connection_sees_only_the_node(lab_reset, tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  hosts:\n    node:\n      ansible_host: apiary-node2\n"
        "      ansible_connection: apiary.cluster.netns\n      ansible_python_interpreter: /usr/bin/python3\n"
        "    gone:\n      ansible_host: apiary-t-missing\n      ansible_connection: apiary.cluster.netns\n")
    rc, out = run_ansible("node", inventory, "-m", "command", "-a", "ip -j addr")
    assert rc == 0, out
    links = json.loads(adhoc_stdout(out))
    assert sorted(link["ifname"] for link in links) == ["eth0", "lo"]
    eth0 = next(link for link in links if link["ifname"] == "eth0")
    assert [a["local"] for a in eth0["addr_info"] if a["family"] == "inet"] == ["10.77.101.12"]
    # nsenter keeps the host's mounts: bpffs stays visible (ip netns exec would hide it).
    rc, out = run_ansible("node", inventory, "-m", "command", "-a", "findmnt -n -o FSTYPE /sys/fs/bpf")
    assert rc == 0 and adhoc_stdout(out).strip() == "bpf", out
    rc, out = run_ansible("gone", inventory, "-m", "ping")
    assert rc != 0
    assert "network namespace apiary-t-missing does not exist; re-run cluster.yml to repair the lab" in out


def test_etcd_in_the_lab_is_healthy_from_another_node(lab_reset):
    run = run_playbook(PLAYBOOKS / "lab_etcd.yml")
    assert run.rc == 0, run.stdout
    certs = LAB_ROOT + "/node1/ssl/etcd/"
    tls = ["--cacert", certs + "ca.pem", "--cert", certs + "member-node1.pem", "--key", certs + "member-node1-key.pem"]
    health = in_netns("apiary-node2", "curl", "-s", "-m", "5", *tls, "https://10.77.101.11:2379/health")
    assert json.loads(health.stdout)["health"] == "true", health
    # No plain-text control traffic: no HTTP listener, and TLS without a client certificate is refused.
    plain = in_netns("apiary-node2", "curl", "-s", "-m", "5", "http://10.77.101.11:2379/health")
    assert '"health":"true"' not in plain.stdout
    anonymous = in_netns("apiary-node2", "curl", "-s", "-m", "5", "--cacert", certs + "ca.pem",
                         "https://10.77.101.11:2379/health")
    assert anonymous.returncode != 0 and '"health":"true"' not in anonymous.stdout, anonymous
    run = run_playbook(PLAYBOOKS / "lab_etcd.yml")
    assert run.rc == 0, run.stdout
    assert {host: r["changed"] for host, r in run.recap.items()} == {"localhost": 0, "node1": 0}, run.stdout


def test_lab_reset_leaves_nothing(lab_reset):
    before = lab_reset
    rc, out = run_playbook(PLAYBOOKS / "lab_reset.yml")
    assert rc == 0, out
    assert not LAB_NETNS & set(netns_list())
    assert not os.path.exists(LAB_ROOT)
    assert not os.path.exists("/sys/fs/bpf/apiary")
    assert not os.path.exists(os.path.join(cgroup2_mount(), "apiary-lab"))
    assert subprocess.run(["pgrep", "-f", LAB_ROOT + "/bin/etcd"], capture_output=True).returncode == 1
    assert snapshot_diff(before, root_netns_snapshot()) == []


# --- no standard lab needed ------------------------------------------------------------------
def test_bad_input_names_node_and_field_and_creates_nothing(netns_factory):
    fabric, world, n1, n2 = (netns_factory(create=False) for _ in range(4))
    before = netns_list()
    rc, out = run_on_controller("apiary.cluster.lab_topology", {
        "fabric_netns": fabric, "world_netns": world,
        "nodes": [{"name": "t1", "netns": n1, "ip": "10.77.101.21"},
                  {"name": "t2", "netns": n2, "ip": "10.9.9.9"}]})
    assert rc != 0
    assert "nodes[1] (t2): ip 10.9.9.9 is outside underlay_cidr 10.77.101.0/24" in out
    assert netns_list() == before


def test_topology_absent_removes_only_its_namespaces_and_their_processes(netns_factory):
    fabric, world, n1 = (netns_factory(create=False) for _ in range(3))
    bystander = netns_factory()
    args = {"fabric_netns": fabric, "world_netns": world, "underlay_cidr": "10.77.199.0/24",
            "gateway_ip": "10.77.199.1", "nodes": [{"name": "t1", "netns": n1, "ip": "10.77.199.11"}]}
    rc, out = run_on_controller("apiary.cluster.lab_topology", args)
    assert rc == 0, out
    sleeper = subprocess.Popen(["nsenter", "--net=/run/netns/%s" % n1, "--", "sleep", "300"])
    try:
        rc, out = run_on_controller("apiary.cluster.lab_topology", dict(args, state="absent"))
        assert rc == 0, out
        assert sleeper.wait(timeout=15) is not None
    finally:
        sleeper.kill()
    remaining = set(netns_list())
    assert not {fabric, world, n1} & remaining
    assert bystander in remaining


@pytest.fixture
def service_host(netns_factory, tmp_path):
    """An inventory with one host inside a fresh namespace, and a run dir for lab_service."""
    netns = netns_factory()
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    svc:\n      ansible_host: %s\n"
                         "      ansible_connection: apiary.cluster.netns\n"
                         "      ansible_python_interpreter: /usr/bin/python3\n" % netns)
    return netns, inventory, tmp_path / "run"


def lab_service(inventory, **args):
    rc, out = run_ansible("svc", inventory, "-m", "apiary.cluster.lab_service", "-a", json.dumps(args))
    return rc, out


def child_pid(run_dir, name):
    try:
        with open(run_dir / ("%s.state" % name)) as f:
            return json.load(f).get("child_pid")
    except (OSError, ValueError):
        return None


def test_lab_service_supervises_restarts_and_stops(service_host):
    netns, inventory, run_dir = service_host
    args = {"name": "sleeper", "command": ["sleep", "300"], "run_dir": str(run_dir), "restart_delay": 0.2}

    rc, out = lab_service(inventory, **args)
    assert rc == 0 and "CHANGED" in out, out
    first = child_pid(run_dir, "sleeper")
    assert first
    # It runs inside the node's namespace, not the host's.
    assert str(first) in netns_pids(netns)

    rc, out = lab_service(inventory, **args)
    assert rc == 0 and "SUCCESS" in out and "changed: false" in out, out

    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while child_pid(run_dir, "sleeper") in (None, first) and time.monotonic() < deadline:
        time.sleep(0.1)
    second = child_pid(run_dir, "sleeper")
    assert second not in (None, first)
    assert "restarting" in (run_dir / "sleeper.log").read_text()

    rc, out = lab_service(inventory, **dict(args, command=["sleep", "301"]))
    assert rc == 0 and "CHANGED" in out, out
    assert child_pid(run_dir, "sleeper") not in (None, second)

    rc, out = lab_service(inventory, name="sleeper", run_dir=str(run_dir), state="stopped")
    assert rc == 0 and "CHANGED" in out, out
    assert netns_pids(netns) == []
    assert not (run_dir / "sleeper.pid").exists()
    rc, out = lab_service(inventory, name="sleeper", run_dir=str(run_dir), state="stopped")
    assert rc == 0 and "changed: false" in out, out


def test_lab_service_check_mode_starts_nothing(service_host):
    netns, inventory, run_dir = service_host
    rc, out = run_ansible("svc", inventory, "-m", "apiary.cluster.lab_service", "--check", "--diff",
                          "-a", json.dumps({"name": "sleeper", "command": ["sleep", "300"], "run_dir": str(run_dir)}))
    assert rc == 0 and "CHANGED" in out, out
    assert '"sleep"' in out          # the diff shows what would run
    assert netns_pids(netns) == []
