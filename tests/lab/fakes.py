"""In-memory stand-ins for the store client and the kubelet, for tests that need no namespaces."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KV:
    key: str
    value: str
    mod_revision: int = 0


class MemoryEtcd:
    """get, get_prefix, put, delete as apiary.store.etcd.EtcdClient has them."""

    def __init__(self):
        self.data = {}
        self.revision = 0

    def get(self, key):
        return self.data.get(key)

    def get_prefix(self, prefix):
        return [self.data[k] for k in sorted(self.data) if k.startswith(prefix)], self.revision

    def put(self, key, value):
        self.revision += 1
        self.data[key] = KV(key, value, self.revision)
        return self.revision

    def delete(self, key):
        return 1 if self.data.pop(key, None) is not None else 0


class FakeKubelet:
    """Records what it was asked to do; pods 'run' with an IP from a counter."""

    def __init__(self, fail=None):
        self.started, self.stopped = [], []
        self.fail = fail or set()
        self.next_ip = 10

    def run_pod(self, pod, save):
        from apiary.lab.kubelet import PodFailed
        pod["status"] = {"phase": "Pending"}
        save(pod)
        if pod["metadata"]["name"] in self.fail:
            pod["status"] = {"phase": "Failed", "reason": "FailedCreatePodSandBox", "message": "boom"}
            save(pod)
            raise PodFailed("FailedCreatePodSandBox", "boom")
        self.next_ip += 1
        pod["status"] = {"phase": "Running", "podIP": "10.233.64.%d" % self.next_ip, "containerStatuses": [
            {"name": c["name"], "ready": True, "restartCount": 0, "state": {"running": {}}}
            for c in pod["spec"]["containers"]], "conditions": [{"type": "Ready", "status": "True"}]}
        save(pod)
        self.started.append(pod["metadata"]["name"])
        return pod

    def teardown(self, pod, grace=None):
        self.stopped.append(pod["metadata"]["name"])
        return []

    def live_status(self, pod):
        return pod.get("status") or {}
