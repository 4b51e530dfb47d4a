"""apiary-cni invoked exactly as a container runtime does (CNI_* environment, config on stdin),
against a real agent, etcd and BPF datapath in namespaces of the test's own; compared with
Debian's reference plugins where the spec leaves no room for choice."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.cni.conftest import make_node

REFERENCE_PTP = "/usr/lib/cni/ptp"

pytestmark = pytest.mark.lab


def reference(command, stdin, **env):
    base = {"CNI_COMMAND": command, "CNI_CONTAINERID": "ref1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/nonexistent",
            "CNI_PATH": "/usr/lib/cni", "PATH": "/usr/bin:/bin"}
    base.update(env)
    proc = subprocess.run([REFERENCE_PTP], input=stdin, capture_output=True, text=True, env=base)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


def in_pod(pod_ns, *argv, check=True):
    return subprocess.run(["ip", "netns", "exec", pod_ns, *argv], capture_output=True, text=True, check=check)


def add_pod(node, name, container_id=None):
    pod_ns = node.new_pod_netns()
    code, result, err = node.cni("ADD", pod_ns, container_id=container_id or name, pod=name)
    assert code == 0, (result, err, node.agent_log())
    return pod_ns, result


def test_version_matches_the_reference_plugin(node):
    code, ours, _ = node.cni("VERSION", stdin='{"cniVersion": "1.0.0"}')
    ref_code, ref = reference("VERSION", '{"cniVersion": "1.0.0"}')
    assert code == ref_code == 0
    assert ours["cniVersion"] == ref["cniVersion"] == "1.0.0"
    assert {"0.3.1", "0.4.0", "1.0.0"} <= set(ours["supportedVersions"]) & set(ref["supportedVersions"])


@pytest.mark.parametrize("stdin, code", [
    ("{not json", 6),
    ('{"cniVersion": "9.9.9", "name": "apiary", "type": "apiary-cni"}', 1),
])
def test_bad_config_gets_the_same_error_code_as_the_reference_plugin(node, stdin, code):
    pod_ns = node.new_pod_netns()
    before = node.links()
    rc, ours, _ = node.cni("ADD", pod_ns, stdin=stdin)
    ref_rc, ref = reference("ADD", stdin.replace("apiary-cni", "ptp"))
    assert rc == ref_rc == 1
    assert ours["code"] == ref["code"] == code
    assert node.links() == before
    assert node.status()["ipam"]["allocated"] == 0


def test_add_check_del(node):
    node.put_object("/apiary/objects/pods/default/web", {"metadata": {"name": "web", "labels": {"app": "web"}}})
    pod_ns, result = add_pod(node, "web")
    # The result is the spec's: host interface, pod interface in its sandbox, the /32 with its gateway.
    assert result["cniVersion"] == "1.0.0"
    host_if, pod_if = result["interfaces"]
    assert host_if["name"].startswith("lxc") and pod_if["name"] == "eth0"
    assert pod_if["sandbox"].endswith(pod_ns)
    address, gateway = result["ips"][0]["address"], result["ips"][0]["gateway"]
    pod_ip = address.split("/")[0]
    assert address.endswith("/32") and result["ips"][0]["interface"] == 1
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": gateway}]
    # ...and it is true inside the pod.
    assert "inet %s/32" % pod_ip in in_pod(pod_ns, "ip", "-4", "addr", "show", "eth0").stdout
    assert "default via %s dev eth0" % gateway in in_pod(pod_ns, "ip", "route").stdout

    endpoints = node.endpoints()
    assert [e["ip"] for e in endpoints] == [pod_ip]
    ep = endpoints[0]
    assert ep["identity"] >= 256
    assert "k8s:app=web" in ep["labels"] and "k8s:io.kubernetes.pod.namespace=default" in ep["labels"]
    assert node.ipcache()["%s/32" % pod_ip]["value"].startswith("identity=%d " % ep["identity"])

    # The gateway answers (the datapath answers ARP for it; the node owns the router IP).
    in_pod(pod_ns, "ping", "-c", "1", "-W", "2", gateway)

    # A second ADD of the same container is refused and leaves the first one as it was.
    code, out, _ = node.cni("ADD", pod_ns, container_id="web", pod="web")
    assert code == 1 and "already exists" in out["msg"]
    assert [e["ip"] for e in node.endpoints()] == [pod_ip] and node.status()["ipam"]["allocated"] == 1

    conf = node.conf(prevResult=result)
    code, out, err = node.cni("CHECK", pod_ns, container_id="web", conf=conf)
    assert code == 0, (out, err)
    # CHECK really checks: take the pod's default route away and it fails, naming the problem.
    in_pod(pod_ns, "ip", "route", "del", "default")
    code, out, _ = node.cni("CHECK", pod_ns, container_id="web", conf=conf)
    assert code == 1 and out["code"] == 101 and "default route" in out["msg"] + out.get("details", "")

    code, out, err = node.cni("DEL", pod_ns, container_id="web", conf=conf)
    assert code == 0 and out is None, (out, err)
    assert host_if["name"] not in node.links()
    assert node.endpoints() == []
    assert "%s/32" % pod_ip not in node.ipcache()
    assert node.status()["ipam"]["allocated"] == 0
    # DEL is idempotent, also without the netns (as the spec asks, and as the reference plugin does).
    code, out, _ = node.cni("DEL", None, container_id="web", conf=conf)
    assert code == 0 and out is None


def test_pods_reach_each_other_and_same_labels_share_an_identity(node):
    for name in ("a", "b"):
        node.put_object("/apiary/objects/pods/default/%s" % name, {"metadata": {"name": name, "labels": {"app": "x"}}})
    pod_a, res_a = add_pod(node, "a")
    pod_b, res_b = add_pod(node, "b")
    ip_b = res_b["ips"][0]["address"].split("/")[0]
    in_pod(pod_a, "ping", "-c", "2", "-W", "2", ip_b)
    ids = {e["identity"] for e in node.endpoints()}
    assert len(ids) == 1


def test_missing_netns_is_an_error_and_leaves_nothing(node):
    before = node.links()
    code, out, _ = node.cni("ADD", None, extra_env={"CNI_NETNS": "/run/netns/apiary-t-missing"})
    assert code == 1 and out["code"] == 4 and "CNI_NETNS" in out["msg"]
    assert node.links() == before
    assert node.status()["ipam"]["allocated"] == 0


def test_agent_down_is_try_again_later_and_leaves_nothing(node):
    node.kill_agent()
    pod_ns = node.new_pod_netns()
    before = node.links()
    code, out, _ = node.cni("ADD", pod_ns)
    assert code == 1 and out["code"] == 11
    assert node.links() == before


def test_exhausted_pool(tmp_path):
    # A /30 per node: four addresses, of which one is the router's, so one pod fits.
    with make_node(tmp_path, mask_size=30) as small:
        add_pod(small, "first")
        before = small.links()
        pod_ns = small.new_pod_netns()
        code, out, _ = small.cni("ADD", pod_ns, container_id="second", pod="second")
        assert code == 1 and out["code"] == 100 and "no free address" in out["msg"]
        assert small.links() == before
        assert in_pod(pod_ns, "ip", "-br", "link").stdout.split()[0] == "lo"
        assert small.status()["ipam"]["allocated"] == 1


def test_restart_keeps_endpoints_and_traffic(node):
    pod_a, _ = add_pod(node, "a")
    pod_b, res_b = add_pod(node, "b")
    ip_b = res_b["ips"][0]["address"].split("/")[0]
    before = {e["id"]: (e["ip"], e["identity"]) for e in node.endpoints()}
    node.kill_agent()
    # The datapath forwards without its agent.
    in_pod(pod_a, "ping", "-c", "1", "-W", "2", ip_b)
    node.start_agent()
    assert {e["id"]: (e["ip"], e["identity"]) for e in node.endpoints()} == before
    in_pod(pod_a, "ping", "-c", "1", "-W", "2", ip_b)
    # IPAM survived: a new pod gets a new address.
    _, res_c = add_pod(node, "c")
    assert res_c["ips"][0]["address"].split("/")[0] not in {ip for ip, _ in before.values()}
