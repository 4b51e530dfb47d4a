"""`apiary lab apply|get|exec|delete` for real, in a one-node lab made only for this module.

The "node" is a network namespace apiary-t-<random> with its own etcd (tests.helpers.etcd); the
lab root (lab.json, pod dirs) is a temporary dir; the node's CNI is Debian's reference plugins
(ptp + host-local, cniVersion 1.0.0). Pods get `apiary-pod-*` namespaces as in the lab; every one
this module made is removed at the end, also after a failure. The root network namespace, the
shared lab (apiary-node*, apiary-fabric, apiary-world) and anything else are never touched; the
root namespace is compared before and after.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from apiary import netns
from apiary.lab import kubelet
from tests.helpers.etcd import requires_etcd, running_etcd, temp_netns
from tests.integration.conftest import root_netns_snapshot, snapshot_diff
from tests.lab import manifests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NS = "network-policy-test"
SUBNET = "10.244.77.0/24"

pytestmark = [
    pytest.mark.lab,
    requires_etcd,
    pytest.mark.skipif(not all(os.path.exists(p) for p in ("/usr/lib/cni/ptp", "/usr/lib/cni/host-local",
                                                             "/usr/sbin/nginx", "/bin/busybox")),
                       reason="needs containernetworking-plugins, nginx-light and busybox-static"),
]


# A chained CNI plugin that records what it was given: env, config, whether the pod was already in
# the store, whether the pod's eth0 still existed (DEL runs in reverse order: before ptp's DEL).
RECORD_PLUGIN = """#!%(python)s
import base64, json, os, subprocess, sys, urllib.request
conf = json.load(sys.stdin)
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
args = dict(kv.split("=", 1) for kv in env["CNI_ARGS"].split(";"))
key = "/apiary/objects/pods/%%s/%%s" %% (args["K8S_POD_NAMESPACE"], args["K8S_POD_NAME"])
req = urllib.request.Request(conf["etcd"] + "/v3/kv/range", data=json.dumps(
    {"key": base64.b64encode(key.encode()).decode()}).encode(), headers={"Content-Type": "application/json"})
in_store = bool(json.load(urllib.request.urlopen(req, timeout=5)).get("kvs"))
eth0 = subprocess.run(["nsenter", "--net=" + env["CNI_NETNS"], "ip", "link", "show", "eth0"],
                      capture_output=True).returncode == 0
os.makedirs(conf["dir"], exist_ok=True)
with open(os.path.join(conf["dir"], "%%s-%%s.json" %% (env["CNI_COMMAND"], args["K8S_POD_NAME"])), "w") as out:
    json.dump({"env": env, "conf": conf, "in_store": in_store, "eth0": eth0}, out)
if env["CNI_COMMAND"] == "ADD":
    json.dump(conf["prevResult"], sys.stdout)
"""


class Lab:
    def __init__(self, root, node_netns, etcd_url):
        self.root = root
        self.node_netns = node_netns
        self.etcd_url = etcd_url

    def cli(self, *args, input=None, check=True, timeout=60):
        env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "runtime", "src"))
        proc = subprocess.run([sys.executable, "-m", "apiary.cli", "lab", "--lab-root", str(self.root), *args],
                              env=env, input=input, capture_output=True, text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, "apiary lab %s -> %d\n%s%s" % (" ".join(args), proc.returncode,
                                                                         proc.stdout, proc.stderr)
        return proc

    def apply(self, text, *extra, check=True):
        return self.cli("apply", "-f", "-", "-n", NS, *extra, input=text, check=check)

    def pods(self) -> dict:
        items = json.loads(self.cli("get", "pods", "-n", NS, "-o", "json").stdout)["items"]
        return {p["metadata"]["name"]: p for p in items}

    def store_keys(self) -> list:
        from apiary.store.etcd import EtcdClient

        def keys(url):
            kvs, _ = EtcdClient([url]).get_prefix("/apiary/")
            return [kv.key for kv in kvs]
        return netns.call_in(self.node_netns, keys, self.etcd_url)

    def sandboxes(self) -> list:
        """sandbox.json of every pod dir this lab has."""
        out = []
        pods_dir = self.root / "pods"
        for uid in os.listdir(pods_dir) if pods_dir.is_dir() else []:
            path = pods_dir / uid / "sandbox.json"
            if path.exists():
                out.append(json.loads(path.read_text()))
        return out


def _kill_netns(name):
    for pid in kubelet.netns_pids(name):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    before = root_netns_snapshot(include_netns_list=False)
    tmp = tmp_path_factory.mktemp("lab")
    made = set()
    with temp_netns() as node_ns, running_etcd(node_ns, tmp) as url:
        subprocess.run(["nsenter", "--net=" + netns.path(node_ns), "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                       check=True)
        conf_dir = tmp / "net.d"
        conf_dir.mkdir()
        plugin_dir = tmp / "cni-bin"
        plugin_dir.mkdir()
        (plugin_dir / "record").write_text(RECORD_PLUGIN % {"python": sys.executable})
        (plugin_dir / "record").chmod(0o755)
        (conf_dir / "10-test.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "apiary-test", "plugins": [{
                "type": "ptp", "ipMasq": False, "mtu": 1500,
                "ipam": {"type": "host-local", "subnet": SUBNET, "routes": [{"dst": "0.0.0.0/0"}],
                         "dataDir": str(tmp / "ipam")}},
                {"type": "record", "dir": str(tmp / "records"), "etcd": url}]}))
        (conf_dir / "20-not-first.conflist").write_text("{}")
        bad_dir = tmp / "net.d-broken"
        bad_dir.mkdir()
        (bad_dir / "10-broken.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "broken", "plugins": [
                {"type": "ptp", "ipam": {"type": "host-local", "subnet": "10.244.78.0/24",
                                         "dataDir": str(tmp / "ipam")}},
                {"type": "no-such-plugin"}]}))
        root = tmp / "root"
        root.mkdir()
        node = {"ip": "10.77.199.1", "state_dir": str(tmp), "bpf_pin_dir": str(tmp), "netns": node_ns}
        (root / "lab.json").write_text(json.dumps({
            "nodes": [dict(node, name="tnode", groups=["kube_control_plane", "kube_node", "etcd"],
                           cni_conf_dir=str(conf_dir)),
                      dict(node, name="tbroken", groups=["kube_node_broken"], cni_conf_dir=str(bad_dir))],
            "etcd_endpoints": [url], "cni_path": ["/usr/lib/cni", str(plugin_dir)]}))
        the_lab = Lab(root, node_ns, url)
        the_lab.made = made
        try:
            yield the_lab
        finally:
            the_lab.cli("delete", "namespace", NS, "--ignore-not-found", check=False)
            for sandbox in the_lab.sandboxes():
                made.add(sandbox["netns"])
            for name in made:  # whatever a failed test left behind
                if name.startswith(kubelet.POD_NETNS_PREFIX):
                    _kill_netns(name)
            shutil.rmtree(root / "pods", ignore_errors=True)
    after = root_netns_snapshot(include_netns_list=False)
    assert before == after, "the root network namespace changed:\n" + "\n".join(snapshot_diff(before, after))


def _remember(lab):
    for sandbox in lab.sandboxes():
        lab.made.add(sandbox["netns"])


def test_apply_the_seed_runs_every_pod(lab):
    out = lab.apply(manifests.seed(node="tnode")).stdout.splitlines()
    _remember(lab)
    assert out == ["namespace/%s created" % NS, "deployment.apps/frontend created", "pod/backend created",
                   "pod/netpod created"]
    wide = lab.cli("get", "pods", "-n", NS, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    rows = {line.split()[0]: line.split() for line in wide[1:]}
    assert len(rows) == 4 and sum(name.startswith("frontend-") for name in rows) == 2
    for name, row in rows.items():
        assert row[1:4] == ["1/1", "Running", "0"], wide
        assert row[5].startswith("10.244.77.") and row[6] == "tnode", wide
    pods = lab.pods()
    for pod in pods.values():
        status = pod["status"]
        assert status["phase"] == "Running" and status["hostIP"] == "10.77.199.1"
        assert netns.exists(status["netns"]) and status["netns"].startswith("apiary-pod-")
        assert all(kubelet.alive(c["pid"], c["procStart"]) for c in status["containerStatuses"])
    deps = lab.cli("get", "deployments", "-n", NS).stdout.splitlines()
    assert deps[1].split()[:4] == ["frontend", "2/2", "2", "2"]
    keys = lab.store_keys()
    assert "/apiary/objects/namespaces/_/%s" % NS in keys
    assert "/apiary/objects/deployments/%s/frontend" % NS in keys
    assert {"/apiary/objects/pods/%s/%s" % (NS, name) for name in pods} <= set(keys)
    assert lab.cli("get", "pods", "netpod", "-n", NS, "-o", "jsonpath={.status.podIP}").stdout == \
        pods["netpod"]["status"]["podIP"]


def test_pods_reach_each_other(lab):
    pods = lab.pods()
    frontend = next(p for n, p in pods.items() if n.startswith("frontend-"))
    page = lab.cli("exec", "-n", NS, "backend", "--", "wget", "-qO-", "http://%s" % frontend["status"]["podIP"])
    assert "Welcome to nginx!" in page.stdout
    ping = lab.cli("exec", "-n", NS, "netpod", "--", "ping", "-c1", "-W2", pods["backend"]["status"]["podIP"])
    assert "1 received" in ping.stdout


def test_cni_is_called_as_libcni_does(lab):
    """Checked on the seed's backend pod (the record plugin saw its ADD, runs after ptp)."""
    records = lab.root.parent / "records"
    add = json.loads((records / "ADD-backend.json").read_text())
    pod = lab.pods()["backend"]
    uid = pod["metadata"]["uid"]
    sid = kubelet.sandbox_id(uid)
    assert add["env"] == {
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": sid, "CNI_NETNS": "/run/netns/" + pod["status"]["netns"],
        "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni:%s" % (lab.root.parent / "cni-bin"),
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=backend;K8S_POD_INFRA_CONTAINER_ID=%s;"
                    "K8S_POD_UID=%s" % (NS, sid, uid)}
    assert add["in_store"] is True, "the pod must be in the store before CNI ADD"
    conf = add["conf"]
    assert conf["name"] == "apiary-test" and conf["cniVersion"] == "1.0.0" and conf["type"] == "record"
    assert conf["prevResult"]["ips"][0]["address"].split("/")[0] == pod["status"]["podIP"]
    cache = os.path.join(pod["status"]["podDir"], "cni", "apiary-test-%s-eth0" % sid)
    cached = json.load(open(cache))
    assert cached["kind"] == "cniCacheV1" and cached["result"] == conf["prevResult"]


def test_containers_have_their_own_hostname_hosts_and_resolv_conf(lab):
    assert lab.cli("exec", "-n", NS, "backend", "--", "hostname").stdout.strip() == "backend"
    ip = lab.pods()["netpod"]["status"]["podIP"]
    etc = lab.cli("exec", "-n", NS, "netpod", "--", "cat", "/etc/hosts", "/etc/resolv.conf").stdout
    assert "%s\tnetpod" % ip in etc
    assert "search %s.svc.cluster.local svc.cluster.local cluster.local" % NS in etc
    assert subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip() != "netpod"
    # busybox's applets come first in busybox pods; exit codes pass through
    wget = lab.cli("exec", "-n", NS, "backend", "--", "which", "wget").stdout.strip()
    assert wget.endswith("/busybox/bin/wget") and os.path.realpath(wget) == os.path.realpath("/bin/busybox")
    assert lab.cli("exec", "-n", NS, "backend", "--", "sh", "-c", "exit 3", check=False).returncode == 3
    assert lab.cli("exec", "backend", "-n", NS, "-i", "--", "cat", input="from stdin\n").stdout == "from stdin\n"
    assert "Backend Pod is Running" in lab.cli("logs", "-n", NS, "backend").stdout


def test_reapply_is_unchanged(lab):
    before = {n: p["status"]["containerStatuses"][0]["pid"] for n, p in lab.pods().items()}
    out = lab.apply(manifests.seed(node="tnode")).stdout.splitlines()
    assert out == ["namespace/%s unchanged" % NS, "deployment.apps/frontend unchanged", "pod/backend unchanged",
                   "pod/netpod unchanged"]
    assert {n: p["status"]["containerStatuses"][0]["pid"] for n, p in lab.pods().items()} == before


def test_scaling_adds_and_removes_pods(lab):
    old = {n: p for n, p in lab.pods().items() if n.startswith("frontend-")}
    assert lab.apply(manifests.FRONTEND.format(replicas=3)).stdout.strip() == "deployment.apps/frontend configured"
    _remember(lab)
    three = {n: p for n, p in lab.pods().items() if n.startswith("frontend-")}
    assert len(three) == 3 and set(old) < set(three)
    assert all(p["status"]["phase"] == "Running" for p in three.values())
    lab.apply(manifests.FRONTEND.format(replicas=1))
    one = {n: p for n, p in lab.pods().items() if n.startswith("frontend-")}
    assert len(one) == 1
    for name in set(three) - set(one):
        gone = three[name]
        assert not netns.exists(gone["status"]["netns"])
        assert not os.path.exists(gone["status"]["podDir"])
        assert not any(kubelet.alive(c["pid"], c["procStart"]) for c in gone["status"]["containerStatuses"])



def _pod(name, command):
    return manifests.BACKEND.replace("name: backend", "name: " + name).replace(
        "['sh', '-c', 'echo Backend Pod is Running; sleep 3600']", json.dumps(command))


def test_container_ends_and_start_errors_show_in_status(lab):
    text = "---\n".join([_pod("done", ["true"]), _pod("fails", ["sh", "-c", "exit 2"]),
                         _pod("nocmd", ["no-such-command"])])
    proc = lab.apply(text, check=False)
    _remember(lab)
    assert proc.returncode == 1 and proc.stdout.splitlines() == ["pod/done created", "pod/fails created",
                                                                 "pod/nocmd created"]
    assert "pod/nocmd in namespace %s failed (StartError)" % NS in proc.stderr and "no-such-command" in proc.stderr
    deadline = time.monotonic() + 10
    while True:
        rows = {line.split()[0]: line.split() for line in
                lab.cli("get", "pods", "done", "fails", "nocmd", "-n", NS).stdout.splitlines()[1:]}
        if rows["done"][2] == "Completed" and rows["fails"][2] == "Error" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert rows["done"][1:3] == ["0/1", "Completed"]
    assert rows["fails"][1:3] == ["0/1", "Error"]
    assert rows["nocmd"][1:3] == ["0/1", "StartError"]
    fails = lab.pods()["fails"]
    assert fails["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 2
    nocmd = lab.pods()["nocmd"]
    assert not netns.exists(kubelet.pod_netns(nocmd["metadata"]["uid"]))
    out = lab.cli("delete", "pod", "done", "fails", "nocmd", "-n", NS).stdout.splitlines()
    assert out == ['pod "done" deleted', 'pod "fails" deleted', 'pod "nocmd" deleted']


def test_cni_failure_undoes_the_pod(lab):
    broken = manifests.BACKEND.replace("name: backend", "name: broken").replace("spec:\n", "spec:\n  nodeName: tbroken\n", 1)
    proc = lab.apply(broken, check=False)
    assert proc.returncode == 1 and proc.stdout.strip() == "pod/broken created"
    assert "pod/broken in namespace %s failed (FailedCreatePodSandBox)" % NS in proc.stderr
    assert 'failed to find plugin \\"no-such-plugin\\"' in proc.stderr or "no-such-plugin" in proc.stderr
    pod = lab.pods()["broken"]
    assert pod["status"]["phase"] == "Failed" and pod["status"]["reason"] == "FailedCreatePodSandBox"
    row = [line.split() for line in lab.cli("get", "pods", "broken", "-n", NS).stdout.splitlines()][1]
    assert row[1:3] == ["0/1", "FailedCreatePodSandBox"]
    uid = pod["metadata"]["uid"]
    assert not netns.exists(kubelet.pod_netns(uid))
    assert not os.path.exists(kubelet.pod_dir(str(lab.root), uid))
    assert lab.cli("delete", "pod", "broken", "-n", NS).stdout.strip() == 'pod "broken" deleted'


def test_delete_leaves_nothing(lab):
    pods = lab.pods()
    proc = lab.cli("delete", "-f", "-", "-n", NS, input=manifests.seed(node="tnode"))
    assert proc.stdout.splitlines() == ['deployment.apps "frontend" deleted', 'pod "backend" deleted',
                                        'pod "netpod" deleted', 'namespace "%s" deleted' % NS]
    for pod in pods.values():
        status = pod["status"]
        assert not netns.exists(status["netns"])
        assert not os.path.exists(status["podDir"])
        for cs in status["containerStatuses"]:
            assert not kubelet.alive(cs["pid"], cs["procStart"])
            assert not kubelet.alive(cs["shimPid"], None) or kubelet.netns_pids(status["netns"]) == []
    assert [k for k in lab.store_keys() if k.startswith("/apiary/objects/") and "/default" not in k] == []
    delete = json.loads((lab.root.parent / "records" / "DEL-backend.json").read_text())
    assert delete["eth0"] is True, "DEL must run the plugins in reverse order (record before ptp)"
    assert delete["conf"]["prevResult"]["ips"][0]["address"].split("/")[0] == pods["backend"]["status"]["podIP"]
    assert os.listdir(lab.root / "pods") in ([], [".lock"])
    assert not os.listdir(os.path.join(lab.root.parent, "ipam", "apiary-test")) or \
        set(os.listdir(os.path.join(lab.root.parent, "ipam", "apiary-test"))) <= {"lock", "last_reserved_ip.0"}
    again = lab.cli("delete", "pod", "backend", "-n", NS, check=False)
    assert again.returncode == 1 and again.stderr.strip() == 'Error from server (NotFound): pods "backend" not found'
    assert lab.cli("delete", "pod", "backend", "-n", NS, "--ignore-not-found").returncode == 0

