"""Security identities: Cilium's pod labels, label validation, and allocation through etcd."""
import json
import multiprocessing
import random
import secrets

import pytest

from apiary import netns
from apiary.identity import (ID_PREFIX, MAX_ID, MIN_ID, RESERVED, IdentityAllocator, LabelError,
                             labels_hash, normalize, pod_labels, validate_label)
from apiary.store import EtcdClient

# ---- labels (no etcd) -------------------------------------------------------------------------


def test_pod_labels_match_cilium_for_the_seed_example():
    # `cilium identity list` for a pod labelled role=frontend in namespace network-policy-test
    # (Kubernetes ≥1.21 labels every namespace with kubernetes.io/metadata.name).
    assert pod_labels("network-policy-test", {"role": "frontend"},
                      {"kubernetes.io/metadata.name": "network-policy-test"}) == [
        "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=network-policy-test",
        "k8s:io.cilium.k8s.policy.cluster=default",
        "k8s:io.cilium.k8s.policy.serviceaccount=default",
        "k8s:io.kubernetes.pod.namespace=network-policy-test",
        "k8s:role=frontend",
    ]


def test_pod_labels_filter_like_cilium():
    got = pod_labels("ns", {"app": "web", "pod-template-hash": "5d8f7b", "app.kubernetes.io/name": "web",
                            "controller-revision-hash": "x1", "statefulset.kubernetes.io/pod-name": "w-0",
                            "io.cilium.k8s.policy.serviceaccount": "admin",  # spoofing attempt
                            "io.cilium.k8s.namespace.labels.team": "red",    # spoofing attempt
                            "io.kubernetes.pod.namespace": "other"},
                     {"team": "blue"}, service_account="web-sa", cluster="lab")
    assert got == sorted([
        "k8s:app=web", "k8s:app.kubernetes.io/name=web",
        "k8s:io.cilium.k8s.namespace.labels.team=blue",
        "k8s:io.cilium.k8s.policy.cluster=lab",
        "k8s:io.cilium.k8s.policy.serviceaccount=web-sa",
        "k8s:io.kubernetes.pod.namespace=ns",
    ])
    assert "k8s:io.cilium.k8s.policy.serviceaccount=default" not in pod_labels("ns", {}, {}, "")


@pytest.mark.parametrize("label, words", [
    ("role=frontend", "no source"),
    ("K8S:role=x", "source"),
    ("k8s:=x", "empty key"),
    ("k8s:-role=x", "key name"),
    ("k8s:role-=x", "key name"),
    ("k8s:" + "a" * 64 + "=x", "longer than 63"),
    ("k8s:Example.com/role=x", "DNS subdomain"),
    ("k8s:/role=x", "empty prefix"),
    ("k8s:" + "a." * 127 + "a/role=x", "253"),
    ("k8s:example.com/=x", "empty name"),
    ("k8s:role=" + "v" * 64, "value is longer than 63"),
    ("k8s:role=front end", "value"),
    ("k8s:role=-x", "value"),
    ("reserved:nope", "reserved"),
    ("reserved:host=1", "reserved"),
    ("k8s:io.cilium.k8s.namespace.labels.Bad_/x=1", "DNS subdomain"),
])
def test_label_validation_names_the_label(label, words):
    with pytest.raises(LabelError) as err:
        validate_label(label)
    assert repr(label) in str(err.value) and words in str(err.value)


def test_valid_labels():
    for label in ("k8s:role=frontend", "k8s:role=", "k8s:app.kubernetes.io/name=a_b.c-d",
                  "k8s:a=" + "v" * 63, "k8s:" + "a." * 126 + "a/" + "n" * 63 + "=x",
                  "reserved:host", "container:x.y_z=1",
                  "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=default"):
        assert validate_label(label) == label


def test_label_sets():
    assert normalize(["k8s:b=1", "k8s:a=2", "k8s:b=1"]) == ["k8s:a=2", "k8s:b=1"]
    assert labels_hash(["k8s:b=1", "k8s:a=2"]) == labels_hash(["k8s:a=2", "k8s:b=1"])
    with pytest.raises(LabelError, match="same key twice"):
        normalize(["k8s:role=a", "k8s:role=b"])
    with pytest.raises(LabelError, match="at least one"):
        normalize([])
    with pytest.raises(LabelError, match="not one string"):
        normalize("k8s:role=a")


def test_reserved_identities_need_no_etcd():
    alloc = IdentityAllocator(client=None)  # any etcd call would fail
    assert RESERVED == {1: "host", 2: "world", 3: "unmanaged", 4: "health", 5: "init",
                        6: "remote-node", 7: "kube-apiserver", 8: "ingress"}
    for ident, name in RESERVED.items():
        assert alloc.get(ident) == ["reserved:" + name]
        assert alloc.allocate(["reserved:" + name]) == ident
        assert alloc.lookup(["reserved:" + name]) == ident
    assert alloc.get(0) is None and alloc.get(100) is None and alloc.get(MAX_ID + 1) is None
    with pytest.raises(LabelError, match="reserved"):
        alloc.allocate(["reserved:host", "k8s:role=x"])


# ---- allocation through etcd ------------------------------------------------------------------




def run(etcd_ns, func, *args):
    ns, url = etcd_ns
    return netns.call_in(ns, func, url, secrets.token_hex(4), *args)


@pytest.mark.lab
def test_same_labels_same_id_from_two_clients(etcd_ns):
    def body(url, tag):
        a = IdentityAllocator(EtcdClient([url]))
        b = IdentityAllocator(EtcdClient([url]))
        front = ["k8s:role=frontend", "k8s:test=" + tag]
        back = ["k8s:role=backend", "k8s:test=" + tag]
        ida = a.allocate(front)
        assert MIN_ID <= ida <= MAX_ID
        assert b.allocate(list(reversed(front))) == ida
        assert b.lookup(front) == ida
        idb = b.allocate(back)
        assert idb != ida and a.allocate(back) == idb
        assert a.get(ida) == sorted(front) and b.get(idb) == sorted(back)
        assert IdentityAllocator(EtcdClient([url])).get(ida) == sorted(front)  # from etcd
        assert a.lookup(["k8s:role=nobody", "k8s:test=" + tag]) is None
        # the store layout of docs/datapath.md
        c = EtcdClient([url])
        assert json.loads(c.get(ID_PREFIX + str(ida)).value) == {"id": ida, "labels": sorted(front)}
        assert json.loads(c.get("/apiary/identities/labels/" + labels_hash(front)).value) == ida
        listed = a.list()
        assert [i["id"] for i in listed] == sorted(i["id"] for i in listed)
        assert listed[:8] == [{"id": i, "labels": ["reserved:" + n], "reserved": True}
                              for i, n in RESERVED.items()]
        assert {"id": ida, "labels": sorted(front), "reserved": False} in listed
        assert {"id": idb, "labels": sorted(back), "reserved": False} in listed
    run(etcd_ns, body)


@pytest.mark.lab
def test_colliding_draws_retry(etcd_ns):
    def body(url, tag):
        # same seed: both allocators draw the same ids, so the second one collides and redraws
        a = IdentityAllocator(EtcdClient([url]), rng=random.Random(7))
        b = IdentityAllocator(EtcdClient([url]), rng=random.Random(7))
        ida = a.allocate(["k8s:n=1", "k8s:test=" + tag])
        idb = b.allocate(["k8s:n=2", "k8s:test=" + tag])
        assert ida != idb
        # no more random draws: list the used ids and pick a free one
        c = IdentityAllocator(EtcdClient([url]), rng=random.Random(7))
        c.RANDOM_TRIES = 0
        idc = c.allocate(["k8s:n=3", "k8s:test=" + tag])
        assert idc not in (ida, idb)
    run(etcd_ns, body)


def _allocate_all(url, sets, barrier, queue):
    alloc = IdentityAllocator(EtcdClient([url]))
    order = list(range(len(sets)))
    random.shuffle(order)
    barrier.wait(10)
    queue.put({i: alloc.allocate(sets[i]) for i in order})


@pytest.mark.lab
def test_concurrent_processes_agree(etcd_ns):
    workers = 8

    def body(url, tag):
        sets = [["k8s:app=a%d" % i, "k8s:test=" + tag] for i in range(6)]
        ctx = multiprocessing.get_context("fork")
        barrier, queue = ctx.Barrier(workers), ctx.Queue()
        procs = [ctx.Process(target=_allocate_all, args=(url, sets, barrier, queue))
                 for _ in range(workers)]
        for p in procs:
            p.start()
        try:
            results = [queue.get(timeout=20) for _ in procs]
        finally:
            for p in procs:
                p.join(5)
                if p.is_alive():
                    p.kill()
        assert all(r == results[0] for r in results), results
        ids = list(results[0].values())
        assert len(set(ids)) == len(sets)
        stored = [i for i in IdentityAllocator(EtcdClient([url])).list()
                  if "k8s:test=" + tag in i["labels"]]
        assert sorted(i["id"] for i in stored) == sorted(ids)  # one id per set, no strays
    run(etcd_ns, body)
