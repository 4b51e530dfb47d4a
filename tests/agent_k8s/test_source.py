"""The Kubernetes source as the endpoints' label source, in this process against the node's API
server: labels from the watch's cache or else read from the API, and CNI ADD's wait for a pod the
watch has not brought yet."""
from __future__ import annotations

import threading

import pytest

from apiary.agent.config import AgentConfig
from apiary.agent.kubernetes import KubernetesSource
from tests.agent_k8s.conftest import create_namespace, create_pod

pytestmark = pytest.mark.lab


class Manager:
    """Takes what a manager would be given (the source passes it on once everything is listed)."""

    def __init__(self):
        self.loads, self.events = [], []

    def load(self, items, revision, source=None):
        self.loads.append(({item.key for item in items}, revision))

    def handle(self, key, value, revision, source=None):
        self.events.append((key, value is not None, revision))
        return True


class Endpoints:
    def update_labels(self, namespace=None, pod_name=None):
        return {"changed": [], "failed": []}


@pytest.fixture
def source(node, api):
    made = KubernetesSource(AgentConfig.load(node.state_dir + "/agent.json"), Manager(), Manager())
    made.endpoints = Endpoints()
    yield made
    made.stop()


def test_labels_are_read_from_the_api_when_the_cache_does_not_have_them(source, api):
    namespace = create_namespace(api, {"team": "red"})
    create_pod(api, namespace, "p", {"app": "p"}, service_account="robot")
    # The watch is not started: nothing is cached.
    assert source.reflectors["pods"].get("%s/p" % namespace) is None
    assert source.pod_labels(namespace, "p") == (
        {"app": "p"}, {"team": "red", "kubernetes.io/metadata.name": namespace}, "robot")
    assert source.pod_labels(namespace, "missing") is None


def test_add_waits_for_a_pod_the_watch_has_not_brought_yet(source, api):
    namespace = create_namespace(api)
    source.watcher.start()
    assert source.synced.wait(60)  # one full read for each manager, then events
    assert [revision for _, revision in source.policy.loads] == [1] == [r for _, r in source.services.loads]
    found = []
    waiter = threading.Thread(target=lambda: found.append(source.wait_for_pod(namespace, "late", timeout=60)))
    waiter.start()
    assert waiter.is_alive()  # the pod does not exist yet: it waits
    create_pod(api, namespace, "late", {"app": "late"})
    waiter.join(60)
    assert found == [True]
    assert source.pod_labels(namespace, "late")[0] == {"app": "late"}
    # The pod went to the policy repository as an event after the full read, with a later revision (the
    # service cache takes EndpointSlices, not pods).
    key = "/apiary/objects/pods/%s/late" % namespace
    assert [revision > 1 for k, present, revision in source.policy.events if k == key and present] == [True]
    assert not [k for k, _, _ in source.services.events if k == key]
