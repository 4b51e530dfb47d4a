"""Issue 5's kube-proxy side on the 3-node lab, with the real kube-proxy (iptables mode) that the kube_proxy role
runs on every node when apiary_kube_proxy_replacement is false. node2 also holds rules that are not kube-proxy's.
true stops kube-proxy and removes exactly its rules (check mode first lists them and changes nothing): node2's
tables are again what they were before kube-proxy ever ran; a second run changes nothing; false runs kube-proxy
again and its rules come back. The lab is reset afterwards, also on failure, and the host's root namespace is the
same as before."""
import os
import subprocess
import time

import pytest

from tests.helpers.kubeproxy import FOREIGN, restore, save

from .conftest import root_netns_snapshot, run_playbook, snapshot_diff, wait_for

pytestmark = pytest.mark.lab

LAB = "inventory/lab"
NODES = ("node1", "node2", "node3")
NODE2 = "apiary-node2"


def state_file(node):
    return "/var/lib/apiary-lab/%s/kube-proxy-replacement.json" % node


def cluster(replace, *args, check=False):
    return run_playbook("cluster.yml", LAB, "-e", "apiary_kube_proxy_replacement=%s" % replace, *args, check=check)


def changed_by_this_role(out):
    """(task, host) of every `changed` result of the kube_proxy and kube_proxy_replacement roles' tasks. (The whole play's
    changed=0 is test_cluster's: other roles rebuild when the source tree changes between runs.)"""
    changed, task = [], None
    for line in out.splitlines():
        if line.startswith("TASK ["):
            task = line[len("TASK ["):].split("]")[0]
        elif line.startswith("changed: [") and task and task.startswith("apiary.cluster.kube_proxy"):
            changed.append((task, line.split("[")[1].split("]")[0]))
    return changed


def kube_proxies():
    return subprocess.run(["pgrep", "-f", "/var/lib/apiary-lab/.*/kube-proxy --config"], capture_output=True,
                          text=True).stdout.split()


def without_kubelets_firewall(saved):
    """The tables less kubelet's KUBE-FIREWALL chain and jumps, which kube-proxy writes a copy of and leaves."""
    return "".join(line + "\n" for line in saved.splitlines() if "KUBE-FIREWALL" not in line)


def synced(node):
    """node's tables once kube-proxy has programmed the `kubernetes` Service and left them alone for 2 s."""
    def stable():
        first = save(node, "nft")
        if "KUBE-SEP-" not in first:
            return None
        time.sleep(2)
        return first if save(node, "nft") == first else None
    return wait_for("kube-proxy's rules on " + node, stable, timeout=90)


@pytest.fixture(scope="module")
def lab():
    """{"before": node2's tables before kube-proxy ever ran, "with": with its rules}: the lab replacing
    kube-proxy (its default), then handed to kube-proxy; node2 also holds rules that are not kube-proxy's.
    Reset at the end."""
    run_playbook("reset.yml", LAB)
    before = root_netns_snapshot(include_netns_list=False)
    try:
        rc, out = cluster("true")
        assert rc == 0, out[-4000:]
        assert not kube_proxies()
        restore(NODE2, "nft", FOREIGN)
        tables = {"before": save(NODE2, "nft")}
        rc, out = cluster("false")
        assert rc == 0, out[-4000:]
        assert len(kube_proxies()) == 3
        tables["with"] = synced(NODE2)
        yield tables
    finally:
        rc, out = run_playbook("reset.yml", LAB)
        assert rc == 0, out[-3000:]
        assert snapshot_diff(before, root_netns_snapshot(include_netns_list=False)) == []


def test_check_mode_lists_kube_proxys_chains_and_changes_nothing(lab):
    rc, out = cluster("true", "--diff", check=True)
    assert rc == 0, out[-4000:]
    assert save(NODE2, "nft") == lab["with"] and len(kube_proxies()) == 3
    assert not any(os.path.exists(state_file(n)) for n in NODES)
    # The diff shows node2's tables before (with kube-proxy's chains) and after (without).
    assert "iptables nat" in out and ":KUBE-SVC-" in out and "KUBE-SEP-" in out
    assert ("apiary.cluster.kube_proxy_replacement : KPR | Remove kube-proxy's iptables rules, or hand the node "
            "back to kube-proxy", "node2") in changed_by_this_role(out)


def test_enabling_removes_exactly_kube_proxys_rules(lab):
    rc, out = run = cluster("true")
    assert rc == 0, out[-4000:]
    assert not kube_proxies()
    # As before kube-proxy ever ran, byte for byte (but for kubelet's KUBE-FIREWALL, which stays).
    after = save(NODE2, "nft")
    assert "KUBE-SERVICES" not in after and "KUBE-PROXY-CANARY" not in after, after
    assert without_kubelets_firewall(after) == without_kubelets_firewall(lab["before"])
    # Through the lab's API (admin.conf on node1): Kubespray's kube-proxy DaemonSet would be deleted first;
    # the kube_proxy role runs kube-proxy as a node service, so there is none.
    assert "kube-proxy DaemonSet is absent" in out
    assert all(os.path.exists(state_file(n)) for n in NODES)
    assert all(run.recap[n]["failed"] == 0 for n in NODES)


def test_second_run_changes_nothing(lab):
    rc, out = cluster("true")
    assert rc == 0, out[-4000:]
    assert changed_by_this_role(out) == [], out[-6000:]


def test_disabling_hands_the_nodes_back_to_kube_proxy(lab):
    rc, out = cluster("false")
    assert rc == 0, out[-4000:]
    assert "kube-proxy must be (re)started" in out
    assert not any(os.path.exists(state_file(n)) for n in NODES)
    assert {host for _task, host in changed_by_this_role(out)} == set(NODES)
    # The kube_proxy role ran kube-proxy again, and it programs node2 as before.
    assert len(kube_proxies()) == 3
    assert sorted(synced(NODE2).splitlines()) == sorted(lab["with"].splitlines())
    rc, out = cluster("false")
    assert rc == 0 and changed_by_this_role(out) == [], out[-6000:]
