"""A one-node cluster whose agent reads its objects from a real kube-apiserver (kubeconfig mode).

As tests/cni/conftest.py's node (a node namespace with an uplink, its own etcd for identities and
the ipcache, the datapath under a private pin folder, the agent in that namespace, apiary-cni called
as a runtime would), plus etcd and kube-apiserver of the Kubernetes API (tests/helpers/kube_apiserver.py)
listening on 127.0.0.1 inside the same node namespace, and the agent's config naming its kubeconfig.
Nothing is made outside namespaces the fixture creates; everything is removed afterwards, also on
failure.

Tests talk to the API server from inside the node's namespace (fixture `inside`), as kubectl would
on the node.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time

import kubernetes.client
import pytest

from apiary import netns
from apiary.k8s import client
from apiary.store.etcd import EtcdClient
from tests.cni.conftest import OBJECTS, ROOT, Node, apiary
from tests.helpers import kube_apiserver
from tests.helpers.bpffs import private_bpffs
from tests.helpers.etcd import running_etcd, temp_netns

NODE = "tnode"
POOL = "10.233.64.0/18"
MASK = 26
WAIT = 60.0  # the longest a test waits for the agent to catch up (a bound on a wait, not a timing)


def eventually(check, what: str, timeout: float = WAIT, node=None):
    """Poll `check` until it returns something true; its value. On a timeout the assertion names
    what never held (and shows the agent's log)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("%s never held (last: %r)%s" % (what, value, "\nagent log:\n" + node.agent_log()
                                                                   if node is not None else ""))
        time.sleep(0.1)


class K8sNode(Node):
    """tests/cni's Node, with the Kubernetes API it reads (`cluster`) and views of the agent."""

    def __init__(self, ns, pin_dir, state_dir, config, cluster):
        super().__init__(ns, pin_dir, state_dir, config)
        self.cluster = cluster

    def cli(self, *args) -> object:
        """`apiary ARGS --socket <agent> -o json`, parsed."""
        return json.loads(apiary(self.ns, *args, "--socket", self.socket, "-o", "json").stdout)

    def endpoint_of(self, namespace: str, pod: str) -> dict | None:
        return next((e for e in self.endpoints() if (e["pod_namespace"], e["pod_name"]) == (namespace, pod)), None)

    def lxc(self) -> dict:
        return {e["key"]: e for e in self.cli("map", "get", "lxc")}

    def etcd(self, key: str) -> dict | None:
        kv = netns.call_in(self.ns, lambda: EtcdClient(self.config["etcd_endpoints"]).get(key))
        return json.loads(kv.value) if kv else None

    def add_pod(self, namespace: str, name: str) -> tuple:
        """CNI ADD for a pod of the API; (pod netns, its IP)."""
        pod_ns = self.new_pod_netns()
        code, result, err = self.cni("ADD", pod_ns, container_id="%s-%s" % (namespace, name), pod=name,
                                     namespace=namespace)
        assert code == 0, (result, err, self.agent_log())
        return pod_ns, result["ips"][0]["address"].split("/")[0]


@contextlib.contextmanager
def kube_api_in(ns: str, base_dir: str):
    """etcd + kube-apiserver + kube-controller-manager (EndpointSlices only) on 127.0.0.1 inside an
    existing namespace (the node's); stopped and removed on exit."""
    directory = tempfile.mkdtemp(prefix="apiary-kube-", dir=base_dir)
    cluster = kube_apiserver.KubeCluster(ns, directory)
    try:
        cluster.start_etcd()
        cluster.main = cluster.add_server("apiserver")
        cluster.start_controller_manager()  # Services' EndpointSlices, the agent's backends
        yield cluster
    finally:
        cluster.close()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def make_k8s_node(base_dir: str):
    why = kube_apiserver.missing()
    if why:
        pytest.skip(why)
    if not (OBJECTS / "bpf_lxc.o").exists():
        subprocess.run(["make", "-s", "-C", str(ROOT), "bpf"], check=True)
    with private_bpffs() as bpffs, temp_netns() as ns, running_etcd(ns, base_dir) as url, \
            kube_api_in(ns, base_dir) as cluster:
        pin_dir = os.path.join(bpffs, "node")
        state_dir = os.path.join(base_dir, "state")
        os.makedirs(state_dir)
        # The node's uplink: one end of a veth pair that stays inside the node's namespace.
        subprocess.run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", "10.99.0.2/24", "dev", "eth0"], check=True)
        for dev in ("eth0", "eth0peer"):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", key], check=True)
        config = {"node_name": NODE, "node_ip": "10.99.0.2", "etcd_endpoints": [url],
                  "cluster_pool_ipv4_cidr": POOL, "cluster_pool_ipv4_mask_size": MASK,
                  "routing_mode": "native", "state_dir": state_dir, "run_dir": os.path.join(base_dir, "run"),
                  "pin_dir": pin_dir, "uplink": "eth0", "kubeconfig": cluster.kubeconfig}
        with open(os.path.join(state_dir, "agent.json"), "w") as handle:
            json.dump(config, handle)
        node = K8sNode(ns, pin_dir, state_dir, config, cluster)
        # The Node object a kubelet would register: the EndpointSlice controller skips pods on unknown nodes.
        registered = cluster.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "Node",
                                                                           "metadata": {"name": NODE}}))
        assert registered.returncode == 0, registered.stderr
        try:
            apiary(ns, "datapath", "apply", "--objects", str(OBJECTS), "--pin-dir", pin_dir, "--uplink", "eth0",
                   "--routing-mode", "native")
            node.start_agent()
            # Objects are read once every resource is listed (the CRDs included).
            eventually(lambda: node.status()["kubernetes"]["state"] == "Ok", "kubernetes Ok", node=node)
            yield node
        finally:
            node.kill_agent()
            for pod in node.pods:
                subprocess.run(["ip", "netns", "del", pod], check=False)
            apiary(ns, "datapath", "remove", "--pin-dir", pin_dir, "--uplink", "eth0", check=False)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One node for the module's tests; each test keeps to a namespace of its own."""
    with make_k8s_node(str(tmp_path_factory.mktemp("k8snode"))) as made:
        yield made


@pytest.fixture
def own_node(tmp_path):
    """A node of the test's own, for tests that stop the agent or the API server."""
    with make_k8s_node(str(tmp_path)) as made:
        yield made


@contextlib.contextmanager
def inside_of(node: K8sNode):
    with node.cluster.inside():
        yield client.api_client(node.cluster.kubeconfig)


@pytest.fixture
def api(node):
    """An admin client of the module node's API server; the test's thread is in the node's namespace."""
    with inside_of(node) as made:
        yield made


# --- objects ----------------------------------------------------------------------------------------

def create_namespace(api, labels: dict | None = None) -> str:
    name = "t-" + secrets.token_hex(4)
    kubernetes.client.CoreV1Api(api).create_namespace({"metadata": {"name": name, "labels": labels or {}}},
                                                      _preload_content=False)
    return name


def label_namespace(api, name: str, **labels) -> None:
    kubernetes.client.CoreV1Api(api).patch_namespace(name, {"metadata": {"labels": labels}}, _preload_content=False)


def create_pod(api, namespace: str, name: str, labels: dict, service_account: str | None = None,
               ports: list | None = None) -> dict:
    spec = {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox", "ports": ports or []}]}
    if service_account:
        spec["serviceAccountName"] = service_account
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec}
    return json.loads(kubernetes.client.CoreV1Api(api).create_namespaced_pod(namespace, body,
                                                                             _preload_content=False).data)


def label_pod(api, namespace: str, name: str, **labels) -> None:
    """Set labels (a value None removes the label)."""
    kubernetes.client.CoreV1Api(api).patch_namespaced_pod(name, namespace, {"metadata": {"labels": labels}},
                                                          _preload_content=False)


def set_pod_status(api, namespace: str, name: str, pod_ip: str, ready: bool = True) -> None:
    """What the kubelet reports once the pod runs (no kubelet runs here)."""
    status = {"phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "hostIP": "10.99.0.2",
              "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    kubernetes.client.CoreV1Api(api).patch_namespaced_pod_status(name, namespace, {"status": status},
                                                                 _preload_content=False)


def delete_pod(api, namespace: str, name: str) -> None:
    kubernetes.client.CoreV1Api(api).delete_namespaced_pod(name, namespace, grace_period_seconds=0,
                                                           _preload_content=False)


def cnp(name: str, namespace: str, selector: dict, from_labels: dict) -> dict:
    """A CiliumNetworkPolicy: endpoints with `selector` accept anything from `from_labels` only."""
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"endpointSelector": {"matchLabels": selector},
                     "ingress": [{"fromEndpoints": [{"matchLabels": from_labels}]}]}}


def create_cnp(api, body: dict) -> dict:
    custom = kubernetes.client.CustomObjectsApi(api)
    return json.loads(custom.create_namespaced_custom_object(
        "cilium.io", "v2", body["metadata"]["namespace"], "ciliumnetworkpolicies", body, _preload_content=False).data)


def read_cnp(api, namespace: str, name: str) -> dict:
    custom = kubernetes.client.CustomObjectsApi(api)
    return json.loads(custom.get_namespaced_custom_object("cilium.io", "v2", namespace, "ciliumnetworkpolicies",
                                                          name, _preload_content=False).data)


def delete_cnp(api, namespace: str, name: str) -> None:
    kubernetes.client.CustomObjectsApi(api).delete_namespaced_custom_object(
        "cilium.io", "v2", namespace, "ciliumnetworkpolicies", name, _preload_content=False)


def policy_names(node: K8sNode) -> set:
    """Names of the policies in the agent's repository (`apiary policy get`)."""
    rules = node.cli("policy", "get")["policy"]
    return {label["value"] for rule in rules for label in rule["labels"] if label["key"] == "io.cilium.k8s.policy.name"}


def pings(pod_ns: str, address: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", pod_ns, "ping", "-c", "1", "-W", "1", address],
                          capture_output=True).returncode == 0
