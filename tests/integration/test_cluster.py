"""The whole ground floor on the lab: cluster.yml up, again (changed=0), check mode, repair,
reset, and the host's root network namespace untouched throughout."""
import glob
import json
import os
import subprocess

import pytest

from apiary.datapath.loader import cgroup2_mount

from .conftest import kubectl, root_netns_snapshot, run_playbook, snapshot_diff, wait_for

pytestmark = pytest.mark.lab

LAB = "inventory/lab"
NODES = ("node1", "node2", "node3")


def cluster_yml(*args, check=False):
    return run_playbook("cluster.yml", LAB, *args, check=check)


def lab_nodes():
    out = subprocess.run(["/usr/local/bin/apiary", "lab", "get", "nodes", "-o", "json"],
                         capture_output=True, text=True)
    return out.returncode, {n["name"]: n for n in json.loads(out.stdout or "[]")}


def v1_cgroups():
    """The kubelet's cgroupfs folders of the lab in every cgroup v1 hierarchy."""
    return [path for path in glob.glob("/sys/fs/cgroup/*/apiary-lab") if "/unified/" not in path]


def leftovers():
    """Everything of the lab that reset must remove."""
    found = v1_cgroups()
    with open("/proc/self/mountinfo") as mounts:  # container filesystems, pod namespaces, volumes
        found += [line.split()[4] for line in mounts if "/var/lib/apiary-lab" in line.split()[4]]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    # (apiary-t-* belong to other tests' own fixtures, which remove them.)
    found += [n for n in netns if n.startswith("apiary-") and not n.startswith("apiary-t-")]
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
    rc, out = run = cluster_yml("--diff", check=True)
    recap = run.recap
    assert rc == 0, out[-3000:]
    assert leftovers() == []
    # The diff says what would be created.
    assert "apiary-node1" in out and "apiary-fabric" in out
    assert recap["localhost"]["changed"] > 0
    assert snapshot_diff(fresh_lab, root_netns_snapshot(include_netns_list=False)) == []


def test_cluster_comes_up(fresh_lab):
    rc, out = run = cluster_yml()
    recap = run.recap
    assert rc == 0, out[-3000:]
    assert all(recap[n]["failed"] == 0 for n in NODES)
    rc, nodes = lab_nodes()
    assert rc == 0, nodes
    assert sorted(nodes) == list(NODES)
    assert all(n["status"] == "Ready" for n in nodes.values()), nodes
    assert nodes["node1"]["etcd"] == "healthy"
    assert snapshot_diff(fresh_lab, root_netns_snapshot(include_netns_list=False)) == []


def test_kubernetes_nodes_are_ready_and_run_pods_across_nodes(fresh_lab):
    nodes = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == list(NODES)
    for node in nodes:
        ready = [c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready == ["True"], node["status"]["conditions"]
        assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.37.2"
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"] == "containerd://2.4.2"
    assert "Kubernetes control plane is running at https://10.77.101.11:6443" in kubectl("cluster-info").stdout
    assert os.path.exists("inventory/lab/artifacts/admin.conf")

    # Pods scheduled by the real scheduler, started by the kubelets through containerd, networked by
    # apiary-cni and the agent: a web server on node1 reached from node3, by pod IP.
    kubectl("create", "namespace", "ktest")
    kubectl("run", "web", "-n", "ktest", "--image=nginx", "--overrides",
            json.dumps({"spec": {"nodeName": "node1"}}))
    kubectl("run", "client", "-n", "ktest", "--image=busybox", "--overrides",
            json.dumps({"spec": {"nodeName": "node3"}}), "--", "sleep", "3600")
    kubectl("run", "missing", "-n", "ktest", "--image=redis")
    kubectl("wait", "-n", "ktest", "--for=condition=Ready", "pod/web", "pod/client", "--timeout=120s")
    web = json.loads(kubectl("get", "pod", "web", "-n", "ktest", "-o", "json").stdout)
    assert web["status"]["podIP"].startswith("10.233."), web["status"]
    page = kubectl("exec", "-n", "ktest", "client", "--", "wget", "-qO-", "http://%s/" % web["status"]["podIP"])
    assert "Welcome to nginx!" in page.stdout
    # kubectl logs and exec reach the kubelets (the API server's kubelet client certificate).
    assert "GET / HTTP/1.1" in kubectl("logs", "-n", "ktest", "web").stdout

    # An image the lab does not have fails to pull, naming the images it has.
    def pull_error():
        pod = json.loads(kubectl("get", "pod", "missing", "-n", "ktest", "-o", "json").stdout)
        for status in pod["status"].get("containerStatuses") or []:
            waiting = status["state"].get("waiting") or {}
            if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff") and waiting.get("message"):
                return waiting["message"]
        return None
    message = wait_for("the pull of an unknown image to fail", pull_error)
    assert "docker.io/library/nginx:latest" in message and "docker.io/library/busybox:latest" in message, message
    kubectl("delete", "namespace", "ktest", "--wait=false")


CNP = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web-from-allowed
spec:
  endpointSelector:
    matchLabels:
      app: web
  ingress:
    - fromEndpoints:
        - matchLabels:
            role: allowed
"""


def endpoint_labels(node, pod_ip):
    out = subprocess.run(["/usr/local/bin/apiary", "endpoint", "list", "--node", node, "-o", "json"],
                         capture_output=True, text=True, check=True).stdout
    found = [ep["labels"] for ep in json.loads(out) if ep["ip"] == pod_ip]
    return found[0] if found else None


def test_pods_reach_the_api_server_through_the_kubernetes_service(fresh_lab):
    """default/kubernetes has no selector: its backend is the API server's own EndpointSlice (node1's
    address), which every agent balances to; a pod on another node reaches it by name."""
    for node in NODES:
        rows = json.loads(subprocess.run(["/usr/local/bin/apiary", "service", "list", "--node", node, "-o", "json"],
                                         capture_output=True, text=True, check=True).stdout)
        [row] = [r for r in rows if r["frontend"] == "10.233.0.1:443/TCP"]
        assert [b["address"] for b in row["backends"]] == ["10.77.101.11:6443/TCP"], (node, row)
    kubectl("create", "namespace", "kapi-svc")
    try:
        kubectl("run", "curl", "-n", "kapi-svc", "--image=nicolaka/netshoot", "--overrides",
                json.dumps({"spec": {"nodeName": "node3"}}), "--", "sleep", "3600")
        kubectl("wait", "-n", "kapi-svc", "--for=condition=Ready", "pod/curl", "--timeout=120s", timeout=130)
        # /version is open to anyone (system:public-info-viewer); the certificate is the cluster CA's.
        out = kubectl("exec", "-n", "kapi-svc", "curl", "--", "curl", "-s", "-m", "10",
                      "--cacert", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
                      "https://kubernetes.default.svc.cluster.local/version").stdout
        assert json.loads(out)["gitVersion"] == "v1.37.2", out
    finally:
        kubectl("delete", "namespace", "kapi-svc", "--wait=false")


def test_agents_read_the_kubernetes_api(fresh_lab):
    """The agents watch the API (apiary_kubernetes_objects): labels, policies and status come from it."""
    status = json.loads(subprocess.run(["/usr/local/bin/apiary", "status", "--node", "node2", "-o", "json"],
                                       capture_output=True, text=True, check=True).stdout)
    assert status["kubernetes"]["state"] == "Ok" and "v1.37.2" in status["kubernetes"]["message"], status["kubernetes"]
    config = kubectl("get", "configmap", "-n", "kube-system", "apiary-config", "-o", "yaml").stdout
    assert "cluster-pool-ipv4-cidr: 10.233.64.0/18" in config, config
    kubectl("get", "crd", "ciliumnetworkpolicies.cilium.io", "ciliumclusterwidenetworkpolicies.cilium.io")

    kubectl("create", "namespace", "kapi")
    kubectl("run", "web", "-n", "kapi", "--image=nginx", "--labels=app=web", "--overrides",
            json.dumps({"spec": {"nodeName": "node1"}}))
    kubectl("run", "client", "-n", "kapi", "--image=busybox", "--labels=role=other", "--overrides",
            json.dumps({"spec": {"nodeName": "node2"}}), "--", "sleep", "3600")
    kubectl("wait", "-n", "kapi", "--for=condition=Ready", "pod/web", "pod/client", "--timeout=120s")
    web_ip = kubectl("get", "pod", "web", "-n", "kapi", "-o", "jsonpath={.status.podIP}").stdout
    # The endpoint's identity comes from the pod's labels in the API.
    assert "k8s:app=web" in endpoint_labels("node1", web_ip)

    def fetch():
        # (busybox-static's `wget -T` crashes: `timeout` bounds it instead)
        return kubectl("exec", "-n", "kapi", "client", "--", "timeout", "4", "wget", "-qO-", "http://%s/" % web_ip,
                       check=False).returncode == 0
    assert fetch()
    kubectl("apply", "-n", "kapi", "-f", "-", stdin=CNP)
    assert "web-from-allowed" in kubectl("get", "cnp", "-n", "kapi").stdout
    wait_for("the policy to deny the client", lambda: not fetch(), timeout=60)
    # Relabelled into the policy's peers, the running client gets a new identity and is let in.
    kubectl("label", "pod", "client", "-n", "kapi", "role=allowed", "--overwrite")
    wait_for("the relabelled client to be allowed", fetch, timeout=60)
    kubectl("delete", "namespace", "kapi", "--wait=false")


def changed_tasks(out):
    """The tasks that reported a change, with the hosts' lines (what to look at when changed != 0)."""
    found, task = [], None
    for line in out.splitlines():
        if line.startswith("TASK ["):
            task = line
        elif line.startswith("changed:") and task:
            found.append("%s %s" % (task.split("]")[0] + "]", line))
    return found


def test_second_run_changes_nothing(fresh_lab):
    rc, out = run = cluster_yml()
    recap = run.recap
    assert rc == 0, out[-3000:]
    changed = {host: r["changed"] for host, r in recap.items() if r["changed"]}
    assert changed == {}, changed_tasks(out)


def test_check_diff_on_a_converged_lab_reports_no_change(fresh_lab):
    rc, out = run = cluster_yml("--diff", check=True)
    recap = run.recap
    assert rc == 0, out[-3000:]
    assert {h: r["changed"] for h, r in recap.items() if r["changed"]} == {}, out[-6000:]


def test_a_deleted_node_is_repaired(fresh_lab):
    subprocess.run(["ip", "netns", "del", "apiary-node2"], check=True)
    rc, nodes = lab_nodes()
    assert nodes["node2"]["status"] == "NotReady"
    rc, out = cluster_yml()
    assert rc == 0, out[-3000:]
    rc, nodes = lab_nodes()
    assert nodes["node2"]["status"] == "Ready", nodes["node2"]
    # Its kubelet is back too (cluster.yml's last play waits for every node to be Ready).
    ready = kubectl("get", "node", "node2", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}")
    assert ready.stdout == "True", ready.stdout
    assert snapshot_diff(fresh_lab, root_netns_snapshot(include_netns_list=False)) == []


def test_invalid_inventory_stops_before_any_change(fresh_lab):
    # Against the running lab: the bad value is refused and nothing (not even the lab) changes.
    rc, out = run = cluster_yml("-e", "apiary_cluster_pool_ipv4_cidr=10.77.101.0/24")
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
