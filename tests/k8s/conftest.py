"""A real kube-apiserver and etcd per test module (in a throwaway network namespace), and helpers.

Tests that stop, restart or compact take a cluster of their own (`own_cluster`); the others share
the module's and keep to a namespace of their own."""
from __future__ import annotations

import json
import secrets
import threading

import kubernetes.client
import pytest

from apiary.k8s import client, crds
from apiary.k8s.watch import key_of
from tests.helpers import kube_apiserver


def _cluster(base_dir):
    why = kube_apiserver.missing()
    if why:  # bootstrap builds the binaries and CI runs as root: a missing piece is a failure
        pytest.fail(why)
    return kube_apiserver.running_kube_apiserver(str(base_dir))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with _cluster(tmp_path_factory.mktemp("kube")) as c:
        with c.inside():  # once, for the CRDs every test of the module may use
            crds.ensure_crds(client.api_client(c.kubeconfig))
        yield c


@pytest.fixture
def own_cluster(tmp_path):
    with _cluster(tmp_path) as c, c.inside():
        crds.ensure_crds(client.api_client(c.kubeconfig))
        yield c


@pytest.fixture
def inside(cluster):
    """The test's thread (and the watchers it starts) in the module cluster's namespace."""
    with cluster.inside():
        yield cluster


@pytest.fixture
def api(inside):
    return client.api_client(inside.kubeconfig)


@pytest.fixture
def namespace(api):
    return make_namespace(api)


def make_namespace(api, labels=None) -> str:
    name = "t-" + secrets.token_hex(4)
    kubernetes.client.CoreV1Api(api).create_namespace(
        {"metadata": {"name": name, "labels": labels or {}}}, _preload_content=False)
    return name


def pod(name: str, node: str | None = None, labels: dict | None = None) -> dict:
    spec = {"containers": [{"name": "c", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def create_pod(api, namespace: str, name: str, **kwargs) -> dict:
    resp = kubernetes.client.CoreV1Api(api).create_namespaced_pod(namespace, pod(name, **kwargs),
                                                                  _preload_content=False)
    return json.loads(resp.data)


def label_pod(api, namespace: str, name: str, **labels) -> dict:
    resp = kubernetes.client.CoreV1Api(api).patch_namespaced_pod(name, namespace, {"metadata": {"labels": labels}},
                                                                 _preload_content=False)
    return json.loads(resp.data)


def delete_pod(api, namespace: str, name: str) -> None:
    # No kubelet runs: without a grace period of 0 the pod would wait for one to confirm.
    kubernetes.client.CoreV1Api(api).delete_namespaced_pod(name, namespace, grace_period_seconds=0,
                                                           _preload_content=False)


class Recorder:
    """Handlers that write down what they are given, in order: ("add"|"delete", key, obj),
    ("update", key, old, new), ("synced",)."""

    def __init__(self):
        self.events: list[tuple] = []
        self.changed = threading.Condition()

    def _put(self, *event) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def handlers(self) -> dict:
        return {"on_add": lambda obj: self._put("add", key_of(obj), obj),
                "on_update": lambda old, new: self._put("update", key_of(new), old, new),
                "on_delete": lambda obj: self._put("delete", key_of(obj), obj),
                "on_synced": lambda: self._put("synced")}

    def wait_for(self, *event, timeout: float = 60.0) -> int:
        """Wait until an event with these leading fields was delivered; its index."""
        def find():
            return next((i for i, e in enumerate(self.events) if e[:len(event)] == event), None)
        with self.changed:
            self.changed.wait_for(lambda: find() is not None, timeout)
            index = find()
        assert index is not None, "never delivered: %r; delivered: %r" % (event, self.brief())
        return index

    def brief(self, start: int = 0) -> list[tuple]:
        """The events as (what, key) only."""
        return [e[:2] for e in self.events[start:]]
