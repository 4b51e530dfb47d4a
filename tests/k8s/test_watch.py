"""apiary.k8s.watch against a real kube-apiserver and etcd: the first list, the order of events,
resuming dropped watches, relisting after 410 Gone, bookmarks, stop(), an API server that goes away,
and one watcher serving every resource to many subscribers."""
from __future__ import annotations

import json
import secrets
import time

import kubernetes.client
import pytest

from apiary.k8s import client, watch
from tests.k8s.conftest import Recorder, create_pod, delete_pod, label_pod, make_namespace

FAST = (0.1, 1.0)  # backoff: the tests wait for recoveries, not for 30 s pauses


def in_namespace(namespace: str) -> str:
    return "metadata.namespace=" + namespace


def eventually(check, timeout: float = 60.0, what: str = "condition"):
    """Poll `check` until it returns something true (a wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "%s never held" % what
        time.sleep(0.1)


@pytest.fixture
def started():
    """start(x): starts a reflector or watcher and stops it after the test, also when it fails."""
    running = []

    def start(thing):
        running.append(thing)
        return thing.start()
    yield start
    for thing in running:
        thing.stop()


def reflector(api, namespace, recorder=None, **options):
    r = watch.Reflector(api, "pods", field_selector=in_namespace(namespace), backoff=FAST, **options)
    if recorder is not None:
        r.add_handler(**recorder.handlers())
    return r


def test_first_list_is_delivered_in_pages_then_synced(api, namespace, started):
    for i in range(7):
        create_pod(api, namespace, "p%d" % i)
    rec = Recorder()
    r = started(reflector(api, namespace, rec, page_size=3))  # three pages
    rec.wait_for("synced")
    expected = [("add", "%s/p%d" % (namespace, i)) for i in range(7)]
    assert sorted(rec.brief()[:-1]) == expected
    assert rec.brief()[-1] == ("synced",)  # after every object of the list, in the handlers' order
    assert r.synced.is_set()
    assert sorted(watch.key_of(obj) for obj in r.list()) == [key for _, key in expected]
    cached = r.get(namespace + "/p3")
    assert (cached["kind"], cached["apiVersion"]) == ("Pod", "v1")  # list items get them, as watch events have
    assert r.status()["connected"] and r.lists == 1


def test_changes_are_delivered_in_order_with_old_and_new(api, namespace, started):
    rec = Recorder()
    r = started(reflector(api, namespace, rec))
    rec.wait_for("synced")
    create_pod(api, namespace, "a")
    create_pod(api, namespace, "b")
    label_pod(api, namespace, "a", step="1")
    delete_pod(api, namespace, "b")
    label_pod(api, namespace, "a", step="2")
    delete_pod(api, namespace, "a")
    done = rec.wait_for("delete", namespace + "/a")
    a, b = namespace + "/a", namespace + "/b"
    # A pod's deletion is two events: deletionTimestamp set (an update), then gone.
    assert rec.brief(1) == [("add", a), ("add", b), ("update", a), ("update", b), ("delete", b),
                            ("update", a), ("update", a), ("delete", a)]
    updates = [e for e in rec.events if e[0] == "update"]
    assert [(old["metadata"].get("labels", {}), new["metadata"].get("labels", {}), "deletionTimestamp" in new["metadata"])
            for _, _, old, new in updates] == [({}, {"step": "1"}, False), ({}, {}, True),
                                               ({"step": "1"}, {"step": "2"}, False),
                                               ({"step": "2"}, {"step": "2"}, True)]
    assert rec.events[done][2]["metadata"]["labels"] == {"step": "2"}  # a delete carries the last state
    assert r.list() == [] and r.get(a) is None


def test_a_failing_handler_is_logged_and_the_others_still_run(api, namespace, started, caplog):
    rec = Recorder()

    def broken(obj):
        raise RuntimeError("handler broke on %s" % obj["metadata"]["name"])
    r = reflector(api, namespace)
    r.add_handler(on_add=broken)
    r.add_handler(**rec.handlers())
    started(r)
    rec.wait_for("synced")
    create_pod(api, namespace, "first")
    create_pod(api, namespace, "second")
    rec.wait_for("add", namespace + "/second")
    assert rec.brief(1) == [("add", namespace + "/first"), ("add", namespace + "/second")]
    assert r.handler_errors == 2
    assert "handler broke on first" in caplog.text and "handler broke on second" in caplog.text


def test_stop_ends_a_long_watch_at_once(api, namespace):
    r = reflector(api, namespace, watch_timeout=600).start()
    assert r.synced.wait(60)
    eventually(lambda: r.watches >= 1 and r.connected, what="watch open")
    r.stop()
    # Without shutting the socket down, the watch thread would sit in a read for up to 20 minutes.
    assert not r.alive()


def test_a_dropped_connection_resumes_without_missing_or_repeating(inside, api, namespace, started):
    with inside.proxy() as proxy:
        rec = Recorder()
        r = started(reflector(client.api_client(proxy.kubeconfig), namespace, rec))
        rec.wait_for("synced")
        for round_ in range(3):
            for i in range(3):
                create_pod(api, namespace, "p%d-%d" % (round_, i))
            rec.wait_for("add", "%s/p%d-2" % (namespace, round_))
            eventually(lambda: proxy.cut(), what="an open connection to cut")
            # Changes while the reflector reconnects, made directly: it must get them from its watch.
            label_pod(api, namespace, "p%d-0" % round_, seen="no")
            delete_pod(api, namespace, "p%d-1" % round_)  # an update (deletionTimestamp), then a delete
        create_pod(api, namespace, "last")
        rec.wait_for("add", namespace + "/last")
        # Events arrive in order, so anything delivered twice would be in by now.
        got = rec.brief(1)
        expected = []
        for round_ in range(3):
            expected += [("add", "%s/p%d-%d" % (namespace, round_, i)) for i in range(3)]
            expected += [("update", "%s/p%d-0" % (namespace, round_)), ("update", "%s/p%d-1" % (namespace, round_)),
                         ("delete", "%s/p%d-1" % (namespace, round_))]
        assert got == expected + [("add", namespace + "/last")]
        assert r.lists == 1  # every watch resumed where the last one stopped; nothing listed again
        assert r.watches >= 4 and proxy.accepted >= 4


def test_gone_relists_and_delivers_only_the_differences(own_cluster, started):
    api = client.api_client(own_cluster.kubeconfig)
    namespace = make_namespace(api)
    for name in ("keep", "change", "remove", "again"):
        create_pod(api, namespace, name)
    rec = Recorder()
    r = started(reflector(api, namespace, rec))
    rec.wait_for("synced")
    listed_at = r.resource_version
    start = len(rec.events)
    own_cluster.stop()
    # While it is down, another API server on the same etcd changes things, and etcd forgets the
    # history: the reflector's resourceVersion is gone when its API server returns.
    with own_cluster.extra_server() as other:
        other_api = client.api_client(other.kubeconfig)
        create_pod(other_api, namespace, "new")
        label_pod(other_api, namespace, "change", changed="yes")
        delete_pod(other_api, namespace, "remove")
        delete_pod(other_api, namespace, "again")
        create_pod(other_api, namespace, "again")  # the same name, another object (uid)
        assert own_cluster.compact_etcd() > int(listed_at)
    own_cluster.start()
    rec.wait_for("add", namespace + "/new")
    create_pod(api, namespace, "after")
    rec.wait_for("add", namespace + "/after")
    got = rec.brief(start)

    def key(name):
        return namespace + "/" + name
    assert sorted(got[:2]) == [("delete", key("again")), ("delete", key("remove"))]  # deletes first
    assert sorted(got[2:5]) == [("add", key("again")), ("add", key("new")), ("update", key("change"))]
    assert got[5:] == [("add", key("after"))]  # "keep" did not change: nothing about it
    update = next(e for e in rec.events[start:] if e[0] == "update")
    assert (update[2]["metadata"].get("labels", {}), update[3]["metadata"]["labels"]) == ({}, {"changed": "yes"})
    assert r.lists == 2
    assert sorted(watch.key_of(o) for o in r.list()) == [key(n) for n in ("after", "again", "change", "keep", "new")]


def test_bookmarks_move_the_resource_version(api, namespace, started):
    elsewhere = make_namespace(api)
    rec = Recorder()
    # Short watches: the API server sends a bookmark 2 s before each one ends.
    r = started(reflector(api, namespace, rec, watch_timeout=3))
    rec.wait_for("synced")
    listed_at = int(r.resource_version)
    other = create_pod(api, elsewhere, "not-ours")
    changed_at = int(other["metadata"]["resourceVersion"])
    assert changed_at > listed_at
    eventually(lambda: r.bookmarks > 0 and int(r.resource_version) >= changed_at, what="a bookmark past the change")
    assert rec.brief() == [("synced",)]  # nothing of ours changed; only bookmarks moved it
    assert r.lists == 1 and r.events == 0


def test_api_server_down_is_reported_and_recovered(own_cluster, started):
    api = client.api_client(own_cluster.kubeconfig)
    rec = Recorder()
    watcher = watch.Watcher(api, backoff=FAST)
    watcher.subscribe("namespaces", **rec.handlers())
    started(watcher)
    assert watcher.wait_synced(60)
    [state] = watcher.status()
    assert state["connected"] and state["last_error"] is None
    own_cluster.stop()
    # First the open watch breaks, then every new attempt is refused.
    state = eventually(lambda: next((s for s in watcher.status() if not s["connected"]
                                     and "refused" in (s["last_error"] or "")), None), what="the failure reported")
    assert state["last_error_time"] and state["synced"]  # still synced: the cache stays as it was
    own_cluster.start()
    eventually(lambda: watcher.status()[0]["connected"], what="reconnected")
    name = make_namespace(api)
    rec.wait_for("add", name)
    assert watcher.status()[0]["synced"]


def _create_one_of_each(api, namespace: str, node: str, other_node: str) -> dict:
    """One object per watched resource; returns {resource: key}."""
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    suffix = secrets.token_hex(3)
    core.create_node({"metadata": {"name": node}}, _preload_content=False)
    create_pod(api, namespace, "here", node=node)
    create_pod(api, namespace, "there", node=other_node)
    core.create_namespaced_service(namespace, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80, "protocol": "TCP"}]}}, _preload_content=False)
    kubernetes.client.DiscoveryV1Api(api).create_namespaced_endpoint_slice(namespace, {
        "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}}, "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.233.64.5"]}], "ports": [{"port": 80, "protocol": "TCP"}]},
        _preload_content=False)
    kubernetes.client.NetworkingV1Api(api).create_namespaced_network_policy(namespace, {
        "metadata": {"name": "deny"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}},
        _preload_content=False)
    rule = {"endpointSelector": {}, "ingress": [{}]}
    custom.create_namespaced_custom_object("cilium.io", "v2", namespace, "ciliumnetworkpolicies", {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "allow"}, "spec": rule},
        _preload_content=False)
    custom.create_cluster_custom_object("cilium.io", "v2", "ciliumclusterwidenetworkpolicies", {
        "apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "all-" + suffix}, "spec": rule}, _preload_content=False)
    return {"nodes": node, "pods": namespace + "/there", "services": namespace + "/web",
            "endpointslices": namespace + "/web-1", "networkpolicies": namespace + "/deny",
            "ciliumnetworkpolicies": namespace + "/allow", "ciliumclusterwidenetworkpolicies": "all-" + suffix}


def test_one_watcher_serves_every_resource_and_many_subscribers(api, namespace, started):
    watcher = watch.Watcher(api, backoff=FAST)
    recorders = {name: Recorder() for name in watch.RESOURCES}
    for name, rec in recorders.items():
        watcher.subscribe(name, **rec.handlers())
    second = Recorder()  # another manager of the cluster's pods: the same reflector
    assert watcher.subscribe("pods", **second.handlers()) is watcher.reflectors[("pods", None, None)]
    node, other_node = "node-" + secrets.token_hex(3), "node-" + secrets.token_hex(3)
    local = Recorder()  # this node's pods only
    watcher.subscribe("pods", field_selector=watch.on_node(node), **local.handlers())
    assert len(watcher.reflectors) == len(watch.RESOURCES) + 1
    started(watcher)
    assert watcher.wait_synced(60)
    recorders["namespaces"].wait_for("add", namespace)  # made before the start: in the first list
    keys = _create_one_of_each(api, namespace, node, other_node)
    for name, key in keys.items():
        add = recorders[name].events[recorders[name].wait_for("add", key)]
        assert add[2]["metadata"]["name"] == key.split("/")[-1]
        assert add[2]["kind"] == watch.RESOURCES[name].kind
    second.wait_for("add", namespace + "/there")
    assert [e for e in second.brief() if e[1:] and e[1].startswith(namespace)] == \
        [e for e in recorders["pods"].brief() if e[1:] and e[1].startswith(namespace)]
    local.wait_for("add", namespace + "/here")
    assert [e[1] for e in local.events if e[0] == "add"] == [namespace + "/here"]
    status = watcher.status()
    assert len(status) == len(watch.RESOURCES) + 1
    assert all(s["connected"] and s["synced"] and s["last_error"] is None for s in status), json.dumps(status)
    assert "pods(%s)" % watch.on_node(node) in [s["resource"] for s in status]


def test_subscribing_after_the_start_is_refused(api):
    watcher = watch.Watcher(api)
    watcher.subscribe("pods")
    watcher.start()
    try:
        with pytest.raises(RuntimeError, match="before the watcher starts"):
            watcher.subscribe("nodes")
        with pytest.raises(RuntimeError, match="before the watcher starts"):
            watcher.subscribe("pods")
    finally:
        watcher.stop()
    with pytest.raises(ValueError, match="unknown resource 'pod'"):
        watch.Watcher(api).subscribe("pod")
