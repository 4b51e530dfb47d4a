"""The whole ground floor on the lab: cluster.yml up, again (changed=0), check mode, repair,
reset, and the host's root network namespace untouched throughout."""
import json
import os
import subprocess

import pytest

from apiary.datapath.loader import cgroup2_mount

from .conftest import root_netns_snapshot, run_playbook, snapshot_diff

pytestmark = pytest.mark.lab

LAB = "inventory/lab"
NODES = ("node1", "node2", "node3")


def lab_nodes():
    out = subprocess.run(["/usr/local/bin/apiary", "lab", "get", "nodes", "-o", "json"],
                         capture_output=True, text=True)
    return out.returncode, {n["name"]: n for n in json.loads(out.stdout or "[]")}


def leftovers():
    """Everything of the lab that reset must remove."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    found += [n for n in netns if n.startswith("apiary-")]
    for path in ("/var/lib/apiary-lab", "/sys/fs/bpf/apiary", "/opt/apiary", "/usr/local/bin/apiary", "/opt/cni",
                 os.path.join(cgroup2_mount(), "apiary-lab")):  # the lab's cgroups (pods, socket programs)
        if os.path.lexists(path):
            found.append(path)
    # The lab's processes run from its folder (not, say, a `flock /tmp/apiary-lab.lock` around a test run).
    procs = subprocess.run(["pgrep", "-af", "/var/lib/apiary-lab"], capture_output=True, text=True).stdout
    found += [line for line in procs.splitlines() if "pytest" not in line]
    return found


@pytest.fixture(scope="module")
def fresh_lab():
    """Start from no lab; always reset at the end, also when a test fails."""
    run_playbook("reset.yml", LAB)
    assert leftovers() == [], "a lab was left over before the test"
    before = root_netns_snapshot(include_netns_list=False)
    yield before
    rc, out = run_playbook("reset.yml", LAB)
    assert rc == 0, out[-3000:]


def test_check_mode_on_a_fresh_lab_changes_nothing(fresh_lab):
    rc, out = run = run_playbook("cluster.yml", LAB, "--diff", check=True)
    recap = run.recap
    assert rc == 0, out[-3000:]
    assert leftovers() == []
    # The diff says what would be created.
    assert "apiary-node1" in out and "apiary-fabric" in out
    assert recap["localhost"]["changed"] > 0
    assert snapshot_diff(fresh_lab, root_netns_snapshot(include_netns_list=False)) == []


def test_cluster_comes_up(fresh_lab):
    rc, out = run = run_playbook("cluster.yml", LAB)
    recap = run.recap
    assert rc == 0, out[-3000:]
    assert all(recap[n]["failed"] == 0 for n in NODES)
    rc, nodes = lab_nodes()
    assert rc == 0, nodes
    assert sorted(nodes) == list(NODES)
    assert all(n["status"] == "Ready" for n in nodes.values()), nodes
    assert nodes["node1"]["etcd"] == "healthy"
    assert snapshot_diff(fresh_lab, root_netns_snapshot(include_netns_list=False)) == []


def test_second_run_changes_nothing(fresh_lab):
    rc, out = run = run_playbook("cluster.yml", LAB)
    recap = run.recap
    assert rc == 0, out[-3000:]
    changed = {host: r["changed"] for host, r in recap.items() if r["changed"]}
    assert changed == {}, out[-6000:]


def test_check_diff_on_a_converged_lab_reports_no_change(fresh_lab):
    rc, out = run = run_playbook("cluster.yml", LAB, "--diff", check=True)
    recap = run.recap
    assert rc == 0, out[-3000:]
    assert {h: r["changed"] for h, r in recap.items() if r["changed"]} == {}, out[-6000:]


def test_a_deleted_node_is_repaired(fresh_lab):
    subprocess.run(["ip", "netns", "del", "apiary-node2"], check=True)
    rc, nodes = lab_nodes()
    assert nodes["node2"]["status"] == "NotReady"
    rc, out = run = run_playbook("cluster.yml", LAB)
    recap = run.recap
    assert rc == 0, out[-3000:]
    rc, nodes = lab_nodes()
    assert nodes["node2"]["status"] == "Ready", nodes["node2"]
    assert snapshot_diff(fresh_lab, root_netns_snapshot(include_netns_list=False)) == []


def test_invalid_inventory_stops_before_any_change(fresh_lab):
    # Against the running lab: the bad value is refused and nothing (not even the lab) changes.
    rc, out = run = run_playbook("cluster.yml", LAB, "-e", "apiary_cluster_pool_ipv4_cidr=10.77.101.0/24")
    recap = run.recap
    assert rc != 0
    assert "apiary_cluster_pool_ipv4_cidr" in out and "overlaps apiary_lab_underlay_cidr" in out
    assert "node1: " in out
    assert all(r["changed"] == 0 for r in recap.values())


def test_reset_leaves_nothing(fresh_lab):
    rc, out = run_playbook("reset.yml", LAB)
    assert rc == 0, out[-3000:]
    assert leftovers() == []
    assert snapshot_diff(fresh_lab, root_netns_snapshot(include_netns_list=False)) == []
