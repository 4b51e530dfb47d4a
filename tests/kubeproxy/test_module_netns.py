"""kube-proxy's rules (from apiary.kubeproxy) in a real iptables, inside network namespaces made here and always
deleted: the generator's partial sync equals a full one, and the kube_proxy_replacement module removes exactly
kube-proxy's chains and jumps (check mode, present, again, absent, kube-proxy taking over again) with the nft and
the legacy backend, while every other rule stays byte-identical. The Kubernetes API part runs against a kubectl
test double (there is no cluster on this machine)."""
import json
import os
import secrets
import subprocess
import sys

import pytest

from apiary import netns
from apiary.kubeproxy import Endpoint, ServicePort, node_restore_text, partial_restore_text
from tests.helpers.kubeproxy import (
    CONFIG,
    CONFIG6,
    FOREIGN,
    FOREIGN6,
    inside,
    kube_proxy_chains,
    restore,
    save,
    services,
    without,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE = os.path.join(ROOT, "plugins", "modules", "kube_proxy_replacement.py")

pytestmark = pytest.mark.lab


@pytest.fixture
def node():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    name = "apiary-t-" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run_module(args, node=None, check_mode=False, diff=False):
    argv = ([] if node is None else ["nsenter", "--net=" + netns.path(node)]) + [sys.executable, MODULE]
    args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
    proc = subprocess.run(argv, input=json.dumps({"ANSIBLE_MODULE_ARGS": args}), capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "collections")))
    return json.loads(proc.stdout)


def test_partial_sync_gives_what_a_full_sync_gives(node):
    """One service changes (an endpoint goes, another service is removed): kube-proxy's partial restore on top
    of the old rules leaves exactly the rules a full sync of the new state writes."""
    before = services(count=4)
    changed = ServicePort("default", "svc1", before[1].cluster_ip, 80, port_name="http", node_port=30081,
                          endpoints=before[1].endpoints[:2] + (Endpoint("10.233.70.5", 8080),))
    after = [before[0], changed, before[2]]
    restore(node, "nft", node_restore_text(before, CONFIG))
    restore(node, "nft", partial_restore_text(before, after, CONFIG))
    patched = save(node, "nft")

    for table in ("filter", "nat", "mangle"):  # start again from nothing
        inside(node, "iptables-nft", "-t", table, "-F")
        inside(node, "iptables-nft", "-t", table, "-X")
    restore(node, "nft", node_restore_text(after, CONFIG))
    assert patched == save(node, "nft")
    assert "svc3" not in patched and "10.233.70.5:8080" in patched


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_present_removes_exactly_kube_proxys_rules(node, backend, tmp_path):
    kube_proxy = node_restore_text(services(), CONFIG)
    foreign = FOREIGN if backend == "nft" else FOREIGN.split("*filter")[1].join(["*filter", ""])  # no hint: counted
    restore(node, backend, kube_proxy)
    restore(node, backend, foreign)
    families = ["iptables"]
    if backend == "nft":
        restore(node, backend, node_restore_text(services(family=6), CONFIG6), family="ip6tables")
        restore(node, backend, FOREIGN6, family="ip6tables")
        families.append("ip6tables")
    before = {f: save(node, backend, f) for f in families}
    chains = {"iptables": kube_proxy_chains(kube_proxy),
              "ip6tables": kube_proxy_chains(node_restore_text(services(family=6), CONFIG6))}
    args = {"state_file": str(tmp_path / "kpr.json")}

    check = run_module(args, node, check_mode=True, diff=True)
    assert check["changed"] and not check.get("failed"), check
    assert check["backend"] == backend
    for family in families:
        for table, names in chains[family].items():
            assert set(check["removed"]["%s/%s" % (family, table)]["chains"]) == names
    assert {d["before_header"] for d in check["diff"]} >= {"iptables nat", "iptables filter", "iptables mangle"}
    assert check["kube_api"] == {"reachable": False, "daemonset": None,
                                 "msg": "no Kubernetes API reachable: no kubeconfig given"}
    assert {f: save(node, backend, f) for f in families} == before  # check mode changed nothing
    assert not (tmp_path / "kpr.json").exists()

    present = run_module(args, node)
    assert present["changed"] and not present.get("failed"), present
    assert present["removed"] == check["removed"]
    for family in families:
        after = save(node, backend, family)
        assert after == without(before[family], chains[family])  # everything else byte-identical
        assert "MY-CHAIN" in after and "KUBE-FIREWALL" in after and "KUBE-SVC" not in after
    assert json.loads((tmp_path / "kpr.json").read_text()) == {"kube_proxy_replacement": True,
                                                               "iptables_backend": backend}

    again = run_module(args, node)
    assert again["changed"] is False and again["removed"] == {}, again

    absent = dict(args, state="absent")
    handed_back = run_module(absent, node)
    assert handed_back["changed"] and "kube-proxy must be (re)started" in handed_back["msg"]
    assert not (tmp_path / "kpr.json").exists()
    assert run_module(absent, node)["changed"] is False

    # kube-proxy takes over: its own restore applies cleanly and gives back the same rules as at first. (Kubelet's
    # KUBE-FIREWALL jumps stayed, so kube-proxy's EnsureRule adds none: its own jumps now sit above them.)
    restore(node, backend, "".join(line + "\n" for line in kube_proxy.splitlines()
                                   if not (line.startswith("-I") and line.endswith("-j KUBE-FIREWALL"))))
    if backend == "nft":
        restore(node, backend, "".join(line + "\n" for line in node_restore_text(services(family=6), CONFIG6)
                                       .splitlines() if not line.endswith("-j KUBE-FIREWALL")), family="ip6tables")
    for family in families:
        again = save(node, backend, family)
        assert sorted(again.splitlines()) == sorted(before[family].splitlines())
        assert without(again, chains[family]) == without(before[family], chains[family])


@pytest.fixture
def kubectl(tmp_path):
    """A kubectl test double: answers `get` as told (present, absent, unreachable) and logs every call."""
    log = tmp_path / "kubectl.log"
    answers = {
        "present": "echo daemonset.apps/kube-proxy",
        "absent": "echo 'Error from server (NotFound): daemonsets.apps \"kube-proxy\" not found' >&2; exit 1",
        "unreachable": "echo 'The connection to the server 10.77.101.11:6443 was refused' >&2; exit 1",
    }
    kubeconfig = tmp_path / "admin.conf"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")

    def make(answer):
        path = tmp_path / "kubectl"
        path.write_text('#!/bin/sh\necho "$*" >> %s\ncase "$*" in *" get "*) %s ;; esac\n' % (log, answers[answer]))
        path.chmod(0o755)
        return {"kubectl": str(path), "kubeconfig": str(kubeconfig)}

    make.calls = lambda: log.read_text().splitlines() if log.exists() else []
    return make


def test_the_daemonset_is_deleted_through_the_api(kubectl, tmp_path):
    args = dict(kubectl("present"), iptables=False)
    check = run_module(args, check_mode=True)
    assert check["changed"] and check["kube_api"]["daemonset"] == "would be deleted", check
    assert not any(" delete " in c for c in kubectl.calls())

    done = run_module(args)
    assert done["changed"] and done["kube_api"] == {"reachable": True, "daemonset": "deleted",
                                                    "msg": "kube-proxy DaemonSet deleted"}, done
    assert kubectl.calls()[-1] == ("--kubeconfig %s delete -n kube-system daemonset kube-proxy --cascade=foreground "
                                   "--wait=true --timeout=120s" % args["kubeconfig"])
    assert done["backend"] is None and done["removed"] == {}  # iptables: false leaves this node's rules alone

    gone = run_module(dict(kubectl("absent"), iptables=False))
    assert gone["changed"] is False and gone["kube_api"]["daemonset"] == "absent", gone
    # Handing back never deletes anything through the API.
    back = run_module(dict(kubectl("present"), iptables=False, state="absent"))
    assert back["changed"] is False and back["kube_api"]["daemonset"] == "present", back
    assert sum(" delete " in c for c in kubectl.calls()) == 1


def test_an_unreachable_api_fails_before_any_change(node, kubectl, tmp_path):
    restore(node, "nft", node_restore_text(services(), CONFIG))
    before = save(node, "nft")
    failed = run_module(dict(kubectl("unreachable"), state_file=str(tmp_path / "kpr.json")), node)
    assert failed.get("failed"), failed
    assert failed["msg"].startswith("kubeconfig: %s: the Kubernetes API did not answer" % kubectl("unreachable")["kubeconfig"])
    assert save(node, "nft") == before and not (tmp_path / "kpr.json").exists()


def test_a_missing_kubeconfig_is_reported_not_pretended(kubectl, tmp_path):
    missing = str(tmp_path / "nowhere.conf")
    result = run_module(dict(kubectl("present"), kubeconfig=missing, iptables=False))
    assert result["changed"] is False
    assert result["kube_api"]["msg"] == "no Kubernetes API reachable: no kubeconfig at " + missing
    assert any("no kubeconfig at" in str(w) for w in result.get("warnings", [])), result
    assert kubectl.calls() == []
