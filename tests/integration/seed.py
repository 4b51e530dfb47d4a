"""The seed's workloads on the lab's real Kubernetes, command for command as the seed runs them:
`kubectl apply` of examples/network-policy-test, `kubectl get`, `kubectl exec`; the agents read the API
(apiary_kubernetes_objects, true in the lab too). Apiary's own views come from the `apiary` CLI on the host."""
from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

from .conftest import KUBECTL, kubectl, root_netns_snapshot, run_playbook, snapshot_diff, wait_for

LAB = "inventory/lab"
APIARY = "/usr/local/bin/apiary"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "network-policy-test"
STREAM = Path(__file__).resolve().parent / "tcp_stream.py"
NS = "network-policy-test"


def apiary(*args, check=True, timeout=120):
    proc = subprocess.run([APIARY, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError("apiary %s (%d):\n%s%s" % (" ".join(args), proc.returncode, proc.stdout, proc.stderr))
    return proc


def apply_seed():
    """The seed's commands: the namespace, the frontend Deployment, backend and netpod; then wait for them."""
    kubectl("apply", "-f", str(EXAMPLES / "namespace.yaml"))
    for name in ("frontend-deployment.yaml", "backend-pod.yaml", "netpod.yaml"):
        kubectl("apply", "-n", NS, "-f", str(EXAMPLES / name))
    kubectl("rollout", "status", "-n", NS, "deployment/frontend", "--timeout=180s", timeout=200)
    kubectl("wait", "-n", NS, "--for=condition=Ready", "pod", "--all", "--timeout=180s", timeout=200)


def pods(namespace=NS) -> dict:
    items = json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    return {p["metadata"]["name"]: p for p in items if not p["metadata"].get("deletionTimestamp")}


def exec_in(pod, *cmd, check=True, timeout=60, namespace=NS):
    return kubectl("exec", "-n", namespace, pod, "--", *cmd, check=check, timeout=timeout)


def _exec_stream(pod, *args, namespace=NS) -> subprocess.Popen:
    """tcp_stream.py with `args` in the pod (an image with python3: netshoot), fed on stdin; its lines on
    the result's stdout."""
    with open(STREAM) as script:
        return subprocess.Popen([str(KUBECTL), "exec", "-i", "-n", namespace,
                                 pod, "--", "python3", "-", *args], stdin=script, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)


@contextlib.contextmanager
def tcp_stream_from_netpod(server_pod: str, labels: dict, port: int):
    """A long-lived TCP stream (tcp_stream.py) from netpod (node2) to a netshoot pod of its own on node1
    (the seed's nginx and busybox images have no python3). Yields {"client": the client's kubectl exec,
    "server_ip": ...}; at exit "output" holds the client's lines. The processes and the pod go at the
    end, also on failure."""
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": server_pod, "labels": labels},
                "spec": {"nodeName": "node1", "terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "netshoot", "image": "nicolaka/netshoot",
                                         "command": ["sleep", "infinity"]}]}}
    kubectl("apply", "-n", NS, "-f", "-", stdin=json.dumps(manifest))
    stream, server = {}, None
    try:
        kubectl("wait", "-n", NS, "--for=condition=Ready", "pod/" + server_pod, "--timeout=120s", timeout=130)
        stream["server_ip"] = pods()[server_pod]["status"]["podIP"]
        server = _exec_stream(server_pod, "server", str(port))
        time.sleep(2)
        stream["client"] = _exec_stream("netpod", "client", stream["server_ip"], str(port))
        time.sleep(2)
        assert stream["client"].poll() is None, stream["client"].stdout.read()
        yield stream
    finally:
        client = stream.get("client")
        for proc in (client, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
        stream["output"] = client.communicate(timeout=10)[0] if client else ""
        if server:
            server.communicate(timeout=10)
        exec_in("netpod", "pkill", "-f", "python3 - client", check=False)
        kubectl("delete", "pod", "-n", NS, server_pod, "--wait=false", check=False)


# The seed lab this session left up for the next module that wants the same routing mode: its mode and
# the root namespace's snapshot from before it was brought up. A lab takes minutes to bring up; the
# seed's modules (test_hubble, test_pods, test_policy, test_services) share one where their modes meet.
_kept: dict = {}


def _clean_seed() -> bool:
    """Back to the seed alone, as apply_seed() left it: what modules added (policies, Services, extra
    pods, replicas) removed, every agent without policy rules. False when there is no such lab."""
    if not KUBECTL.exists() or kubectl("get", "deployment", "frontend", "-n", NS, check=False).returncode != 0:
        return False
    kubectl("delete", "ciliumnetworkpolicies,networkpolicies,services", "--all", "-n", NS, timeout=180)
    kubectl("delete", "ciliumclusterwidenetworkpolicies", "--all", timeout=180)
    seed = {"backend", "netpod"}
    extra = [name for name in pods() if name not in seed and not name.startswith("frontend-")]
    if extra:
        kubectl("delete", "pod", "-n", NS, *extra, "--wait=false")
    kubectl("scale", "-n", NS, "deployment/frontend", "--replicas=2")
    kubectl("rollout", "status", "-n", NS, "deployment/frontend", "--timeout=180s", timeout=200)
    kubectl("wait", "-n", NS, "--for=condition=Ready", "pod", "--all", "--timeout=180s", timeout=200)
    wait_for("the seed alone", lambda: sorted(pods()) == sorted(
        [*seed, *(n for n in pods() if n.startswith("frontend-"))]) and len(pods()) == 4, timeout=120)
    for node in ("node1", "node2", "node3"):
        wait_for("no policy rules on " + node, lambda: json.loads(apiary(
            "policy", "get", "--node", node).stdout.rpartition("Revision:")[0]) == [], timeout=60)
    return True


def reset_kept() -> None:
    """Reset the lab a seed module left up (conftest: after the last test that uses it)."""
    if _kept:
        before = _kept.pop("before")
        _kept.clear()
        rc, out = run_playbook("reset.yml", LAB)
        assert rc == 0, out[-3000:]
        assert snapshot_diff(before, root_netns_snapshot(include_netns_list=False)) == []


def uses_seed_lab(item) -> bool:
    """Whether a collected test runs on the seed lab (its module's `cluster` fixture comes from here)."""
    return "cluster" in getattr(item, "fixturenames", ()) and \
        getattr(getattr(item, "module", None), "seed_cluster", None) is seed_cluster


@contextlib.contextmanager
def seed_cluster(mode, session):
    """The lab with the seed's pods, in one routing mode. A lab the previous seed module left up in the
    same mode is taken back to the seed alone; otherwise the lab is reset and brought up. It is kept
    for the next one, unless a test of this module failed (then it is reset here); conftest resets it
    after the last test that uses it."""
    failed_before = session.testsfailed
    if _kept.get("mode") != mode or not _clean_seed():
        if _kept:
            reset_kept()
        else:
            run_playbook("reset.yml", LAB)
        _kept.update(before=root_netns_snapshot(include_netns_list=False))
        extra = ["-e", "apiary_routing_mode=%s" % mode]
        rc, out = run_playbook("cluster.yml", LAB, *extra)
        try:
            assert rc == 0, out[-4000:]
            apply_seed()
            _kept["mode"] = mode
        except BaseException:
            reset_kept()
            raise
    try:
        yield {"mode": mode, "extra": ["-e", "apiary_routing_mode=%s" % mode]}
    finally:
        if session.testsfailed != failed_before:
            reset_kept()
