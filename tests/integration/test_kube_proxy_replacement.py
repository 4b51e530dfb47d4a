"""Issue 5's kube-proxy side on the 3-node lab, through cluster.yml and the kube_proxy_replacement role: kube-proxy's
rules (and rules that are not kube-proxy's) are put into node2's namespace; apiary_kube_proxy_replacement=true
removes exactly kube-proxy's (check mode first lists them and changes nothing), a second run changes nothing,
false hands the nodes back and kube-proxy's rules load again. The lab is reset afterwards, also on failure, and
the host's root namespace is the same as before."""
import os

import pytest

from apiary.kubeproxy import node_restore_text
from tests.helpers.kubeproxy import CONFIG, FOREIGN, kube_proxy_chains, restore, save, services, without

from .conftest import root_netns_snapshot, run_playbook, snapshot_diff

pytestmark = pytest.mark.lab

LAB = "inventory/lab"
NODES = ("node1", "node2", "node3")
NODE2 = "apiary-node2"
KUBE_PROXY = node_restore_text(services(), CONFIG)


def state_file(node):
    return "/var/lib/apiary-lab/%s/kube-proxy-replacement.json" % node


def cluster(replace, *args, check=False):
    return run_playbook("cluster.yml", LAB, "-e", "apiary_kube_proxy_replacement=%s" % replace, *args, check=check)


def changed_by_this_role(out):
    """(task, host) of every `changed` result of the kube_proxy_replacement role's tasks. (The whole play's
    changed=0 is test_cluster's: other roles rebuild when the source tree changes between runs.)"""
    changed, task = [], None
    for line in out.splitlines():
        if line.startswith("TASK ["):
            task = line[len("TASK ["):].split("]")[0]
        elif line.startswith("changed: [") and task and task.startswith("apiary.cluster.kube_proxy_replacement :"):
            changed.append((task, line.split("[")[1].split("]")[0]))
    return changed


@pytest.fixture(scope="module")
def lab():
    """The lab without kube-proxy replacement, node2 holding kube-proxy's rules and others; reset at the end."""
    run_playbook("reset.yml", LAB)
    before = root_netns_snapshot(include_netns_list=False)
    try:
        rc, out = cluster("false")
        assert rc == 0, out[-4000:]
        restore(NODE2, "nft", KUBE_PROXY)
        restore(NODE2, "nft", FOREIGN)
        yield save(NODE2, "nft")
    finally:
        rc, out = run_playbook("reset.yml", LAB)
        assert rc == 0, out[-3000:]
        assert snapshot_diff(before, root_netns_snapshot(include_netns_list=False)) == []


def test_check_mode_lists_kube_proxys_chains_and_changes_nothing(lab):
    rc, out = cluster("true", "--diff", check=True)
    assert rc == 0, out[-4000:]
    assert save(NODE2, "nft") == lab
    assert not any(os.path.exists(state_file(n)) for n in NODES)
    # The diff shows node2's tables before (with kube-proxy's chains) and after (without).
    assert "iptables nat" in out and ":KUBE-SVC-" in out and "KUBE-SEP-" in out
    assert ("apiary.cluster.kube_proxy_replacement : KPR | Remove kube-proxy's iptables rules, or hand the node "
            "back to kube-proxy", "node2") in changed_by_this_role(out)


def test_enabling_removes_exactly_kube_proxys_rules(lab):
    rc, out = run = cluster("true")
    assert rc == 0, out[-4000:]
    assert save(NODE2, "nft") == without(lab, kube_proxy_chains(KUBE_PROXY))  # the rest byte-identical
    assert "no Kubernetes API reachable: no kubeconfig given" in out  # said, not pretended
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
    rc, out = cluster("false")
    assert rc == 0 and changed_by_this_role(out) == [], out[-6000:]
    # kube-proxy can program node2 again (kubelet's KUBE-FIREWALL jumps were kept: its EnsureRule adds none).
    restore(NODE2, "nft", "".join(line + "\n" for line in KUBE_PROXY.splitlines()
                                  if not (line.startswith("-I") and line.endswith("-j KUBE-FIREWALL"))))
    assert sorted(save(NODE2, "nft").splitlines()) == sorted(lab.splitlines())
