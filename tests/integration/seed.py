"""The seed's workloads on the lab's real Kubernetes, command for command as the seed runs them:
`kubectl apply` of examples/network-policy-test, `kubectl get`, `kubectl exec`; the agents read the API
(apiary_kubernetes_objects, true in the lab too). Apiary's own views come from the `apiary` CLI on the host."""
from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

from .conftest import KUBECTL, kubectl, root_netns_snapshot, run_playbook, snapshot_diff

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


def exec_stream(pod, *args, namespace=NS) -> subprocess.Popen:
    """tcp_stream.py with `args` in the pod (an image with python3: netshoot), fed on stdin; its lines on
    the result's stdout."""
    with open(STREAM) as script:
        return subprocess.Popen([str(KUBECTL), "exec", "-i", "-n", namespace,
                                 pod, "--", "python3", "-", *args], stdin=script, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)


@contextlib.contextmanager
def seed_cluster(mode):
    """The lab with the seed's pods, in one routing mode; reset afterwards, also on failure."""
    run_playbook("reset.yml", LAB)
    before = root_netns_snapshot(include_netns_list=False)
    extra = ["-e", "apiary_routing_mode=%s" % mode]
    rc, out = run_playbook("cluster.yml", LAB, *extra)
    try:
        assert rc == 0, out[-4000:]
        apply_seed()
        yield {"mode": mode, "extra": extra}
    finally:
        rc, out = run_playbook("reset.yml", LAB)
        assert rc == 0, out[-3000:]
        assert snapshot_diff(before, root_netns_snapshot(include_netns_list=False)) == []
