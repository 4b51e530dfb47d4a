"""A one-node cluster of our own for CNI and agent tests: a node namespace with an uplink, its own
etcd, the datapath loaded under a private pin folder, and the agent running in that namespace.
Everything lives in namespaces these fixtures create and is removed afterwards, also on failure."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apiary import netns
from tests.helpers.bpffs import private_bpffs
from tests.helpers.etcd import running_etcd, temp_netns

ROOT = Path(__file__).resolve().parents[2]
OBJECTS = ROOT / "build" / "bpf"
RUNTIME = ROOT / "runtime" / "src"


def python_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(RUNTIME))
    env.update(extra)
    return env


def apiary(node_ns: str, *args, check=True, timeout=60) -> subprocess.CompletedProcess:
    """Run `apiary ARGS` inside the node's namespace (as the node's runtime would)."""
    proc = subprocess.run(["nsenter", "--net=" + netns.path(node_ns), sys.executable, "-m", "apiary.cli", *args],
                          capture_output=True, text=True, env=python_env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError("apiary %s failed (%d):\n%s%s" % (" ".join(args), proc.returncode, proc.stdout, proc.stderr))
    return proc


class Node:
    """The node namespace, its agent and a way to call apiary-cni exactly as a container runtime does."""

    def __init__(self, ns, pin_dir, state_dir, config):
        self.ns, self.pin_dir, self.state_dir, self.config = ns, pin_dir, state_dir, config
        self.socket = os.path.join(config["run_dir"], "apiary.sock")
        self.agent_proc = None
        self.pods = []

    # --- agent ---------------------------------------------------------------------------------
    def start_agent(self):
        log = open(os.path.join(self.state_dir, "agent.log"), "ab")
        self.agent_proc = subprocess.Popen(
            ["nsenter", "--net=" + netns.path(self.ns), sys.executable, "-m", "apiary.cli", "agent",
             "--config", os.path.join(self.state_dir, "agent.json")],
            stdout=log, stderr=subprocess.STDOUT, env=python_env(), start_new_session=True)
        deadline = time.monotonic() + 30
        while apiary(self.ns, "status", "--socket", self.socket, "-o", "json", check=False).returncode != 0:
            if self.agent_proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("agent did not start:\n" + self.agent_log())
            time.sleep(0.2)

    def kill_agent(self, sig=signal.SIGKILL):
        if self.agent_proc and self.agent_proc.poll() is None:
            os.killpg(self.agent_proc.pid, sig)
            self.agent_proc.wait(10)

    def agent_log(self) -> str:
        with open(os.path.join(self.state_dir, "agent.log"), errors="replace") as handle:
            return handle.read()[-4000:]

    def status(self) -> dict:
        return json.loads(apiary(self.ns, "status", "--socket", self.socket, "-o", "json").stdout)

    def endpoints(self) -> list:
        return json.loads(apiary(self.ns, "endpoint", "list", "--socket", self.socket, "-o", "json").stdout)

    def ipcache(self) -> dict:
        entries = json.loads(apiary(self.ns, "map", "get", "ipcache", "--socket", self.socket, "-o", "json").stdout)
        return {e["key"]: e for e in entries}

    # --- pods and CNI --------------------------------------------------------------------------
    def new_pod_netns(self) -> str:
        name = "apiary-t-%s" % secrets.token_hex(4)
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.pods.append(name)
        return name

    def cni(self, command, pod_ns=None, container_id="c1", ifname="eth0", conf=None, stdin=None,
            pod="pod", namespace="default", extra_env=None):
        """Invoke apiary-cni in the node's namespace with CNI_* environment and the config on stdin."""
        env = python_env(CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_IFNAME=ifname,
                         CNI_PATH="/opt/cni/bin:/usr/lib/cni",
                         CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s" % (namespace, pod))
        if pod_ns:
            env["CNI_NETNS"] = netns.path(pod_ns)
        env.update(extra_env or {})
        if stdin is None:
            stdin = json.dumps(conf if conf is not None else self.conf())
        proc = subprocess.run(["nsenter", "--net=" + netns.path(self.ns), sys.executable, "-m", "apiary.cni.plugin"],
                              input=stdin, capture_output=True, text=True, env=env, timeout=60)
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
        return proc.returncode, out, proc.stderr

    def conf(self, **extra) -> dict:
        conf = {"cniVersion": "1.0.0", "name": "apiary", "type": "apiary-cni", "agent-socket": self.socket}
        conf.update(extra)
        return conf

    def links(self) -> list[str]:
        out = subprocess.run(["ip", "-n", self.ns, "-j", "link"], capture_output=True, text=True, check=True).stdout
        return [link["ifname"] for link in json.loads(out)]

    def put_object(self, key: str, obj: dict) -> None:
        from apiary.store.etcd import EtcdClient

        netns.call_in(self.ns, lambda: EtcdClient(self.config["etcd_endpoints"]).put(key, json.dumps(obj)))


@pytest.fixture
def node(tmp_path):
    """One node (native routing) with pool 10.233.64.0/18 cut into /26 per node."""
    with make_node(tmp_path, mask_size=26) as made:
        yield made


@contextlib.contextmanager
def make_node(tmp_path, mask_size):
    if not (OBJECTS / "bpf_lxc.o").exists():
        subprocess.run(["make", "-s", "-C", str(ROOT), "bpf"], check=True)
    with private_bpffs() as bpffs, temp_netns() as ns, running_etcd(ns, tmp_path) as url:
        pin_dir = os.path.join(bpffs, "node")
        state_dir = str(tmp_path / "state")
        os.makedirs(state_dir)
        # The node's uplink: one end of a veth pair that stays inside the node's namespace.
        subprocess.run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", "10.99.0.2/24", "dev", "eth0"], check=True)
        for dev in ("eth0", "eth0peer"):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", key], check=True)
        config = {"node_name": "tnode", "node_ip": "10.99.0.2", "etcd_endpoints": [url],
                  "cluster_pool_ipv4_cidr": "10.233.64.0/18", "cluster_pool_ipv4_mask_size": mask_size,
                  "routing_mode": "native", "state_dir": state_dir, "run_dir": str(tmp_path / "run"),
                  "pin_dir": pin_dir, "uplink": "eth0"}
        with open(os.path.join(state_dir, "agent.json"), "w") as handle:
            json.dump(config, handle)
        node = Node(ns, pin_dir, state_dir, config)
        try:
            apiary(ns, "datapath", "apply", "--objects", str(OBJECTS), "--pin-dir", pin_dir, "--uplink", "eth0",
                   "--routing-mode", "native")
            node.start_agent()
            yield node
        finally:
            node.kill_agent()
            for pod in node.pods:
                subprocess.run(["ip", "netns", "del", pod], check=False)
            apiary(ns, "datapath", "remove", "--pin-dir", pin_dir, "--uplink", "eth0", check=False)
