"""EtcdClient against a real etcd (inside a test network namespace)."""
import json
import secrets
import socket
import threading
import time
import urllib.request

import pytest

from apiary import netns
from apiary.store import EtcdClient, EtcdCompacted, EtcdError
from tests.helpers.etcd import free_ports

pytestmark = pytest.mark.lab


def run(etcd_ns, func):
    """Run func(url, prefix) inside the etcd namespace, with a key prefix of its own."""
    ns, url = etcd_ns
    return netns.call_in(ns, func, url, "/t/%s/" % secrets.token_hex(4))


def test_get_put_delete(etcd_ns):
    def body(url, p):
        c = EtcdClient([url])
        assert c.get(p + "a") is None
        rev = c.put(p + "a", '{"x": 1}')
        kv = c.get(p + "a")
        assert (kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.version) == \
            (p + "a", '{"x": 1}', rev, rev, 1)
        rev2 = c.put(p + "a", "ünïcode")
        kv = c.get(p + "a")
        assert kv.value == "ünïcode" and kv.mod_revision == rev2 > rev and kv.version == 2
        assert c.delete(p + "a") == 1
        assert c.delete(p + "a") == 0
        assert c.get(p + "a") is None
    run(etcd_ns, body)


def test_prefix(etcd_ns):
    def body(url, p):
        c = EtcdClient([url])
        for k in ("b", "a", "c/d", "c"):
            c.put(p + k, k)
        c.put(p[:-1] + "x", "outside")  # shares the prefix minus its slash: not included
        kvs, rev = c.get_prefix(p)
        assert [kv.key for kv in kvs] == [p + "a", p + "b", p + "c", p + "c/d"]
        assert rev == max(kv.mod_revision for kv in kvs) + 1
        assert [kv.value for kv in c.get_prefix(p + "c")[0]] == ["c", "c/d"]
        assert c.delete_prefix(p + "c") == 2
        assert c.delete_prefix(p) == 2
        assert c.get_prefix(p)[0] == []
        assert c.get(p[:-1] + "x").value == "outside"
        c.delete(p[:-1] + "x")
    run(etcd_ns, body)


def test_create_and_compare_and_swap(etcd_ns):
    def body(url, p):
        c = EtcdClient([url])
        assert c.create(p + "k", "1") is True
        assert c.create(p + "k", "2") is False
        kv = c.get(p + "k")
        assert kv.value == "1"
        assert c.compare_and_swap(p + "k", "3", kv.mod_revision) is True
        assert c.compare_and_swap(p + "k", "4", kv.mod_revision) is False  # stale revision
        assert c.get(p + "k").value == "3"
        assert c.compare_and_swap(p + "new", "x", 0) is True  # 0: only if absent
        assert c.compare_and_swap(p + "new", "y", 0) is False
    run(etcd_ns, body)


def test_txn_raw(etcd_ns):
    def body(url, p):
        c = EtcdClient([url])
        c.put(p + "a", "A")
        out = c.txn([{"key": p + "a", "target": "VALUE", "result": "EQUAL", "value": "A"}],
                    [{"request_put": {"key": p + "b", "value": "B"}},
                     {"request_range": {"key": p + "a"}}],
                    [])
        assert out["succeeded"] is True
        assert out["responses"][1]["response_range"]["kvs"][0]["value"] == "A"
        assert out["responses"][1]["response_range"]["kvs"][0]["key"] == p + "a"
        out = c.txn([{"key": p + "a", "target": "VALUE", "result": "EQUAL", "value": "nope"}],
                    [{"request_put": {"key": p + "c", "value": "C"}}],
                    [{"request_delete_range": {"key": p + "b"}}])
        assert out["succeeded"] is False
        assert c.get(p + "c") is None and c.get(p + "b") is None
    run(etcd_ns, body)


def test_leases_expire_and_revoke(etcd_ns):
    def body(url, p):
        c = EtcdClient([url])
        short = c.lease_grant(1)
        c.put(p + "short", "v", lease=short)
        assert c.get(p + "short").lease == short
        assert c.lease_keepalive(short) >= 1
        long = c.lease_grant(30)
        assert c.create(p + "long", "v", lease=long)
        c.lease_revoke(long)
        assert c.get(p + "long") is None
        c.lease_revoke(long)  # already gone: fine
        deadline = time.monotonic() + 5
        while c.get(p + "short") is not None:
            assert time.monotonic() < deadline, "leased key outlived its 1 s lease"
            time.sleep(0.2)
        assert c.lease_keepalive(short) == 0
    run(etcd_ns, body)


def collect(client, prefix, count, start=None, limit=5.0):
    """Up to `count` events from a watch, with a time limit."""
    stop = threading.Event()
    timer = threading.Timer(limit, stop.set)
    timer.start()
    events = []
    try:
        for ev in client.watch_prefix(prefix, start_revision=start, stop=stop):
            events.append(ev)
            if len(events) == count:
                break
    finally:
        timer.cancel()
    return events


def test_watch_in_order_and_resume(etcd_ns):
    def body(url, p):
        c = EtcdClient([url])
        first = c.put(p + "a", "1")
        c.put(p + "b", "2")
        c.put(p + "a", "3")
        c.delete(p + "b")
        c.put("/elsewhere/" + p, "not watched")
        events = collect(c, p, 4, start=first)
        assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
            ("PUT", p + "a", "1"), ("PUT", p + "b", "2"), ("PUT", p + "a", "3"),
            ("DELETE", p + "b", "")]
        assert [e.kv.mod_revision for e in events] == sorted(e.kv.mod_revision for e in events)
        assert events[2].prev.value == "1" and events[3].prev.value == "2"
        assert events[0].prev is None
        # resume after the second event
        again = collect(c, p, 2, start=events[1].kv.mod_revision + 1)
        assert again == events[2:]
    run(etcd_ns, body)


def test_watch_live_and_stop(etcd_ns):
    def body(url, p):
        c = EtcdClient([url])
        c.put(p + "before", "x")  # before the watch starts: not delivered
        stop = threading.Event()
        seen = []
        started = threading.Event()

        def watcher():
            started.set()
            for ev in c.watch_prefix(p, stop=stop):
                seen.append(ev)

        t = threading.Thread(target=watcher)
        t.start()
        started.wait()
        time.sleep(0.5)
        for i in range(5):
            c.put(p + "k%d" % i, str(i))
        deadline = time.monotonic() + 5
        while len(seen) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped_at = time.monotonic()
        stop.set()
        t.join(3)
        assert not t.is_alive(), "watch did not end after stop was set"
        assert time.monotonic() - stopped_at < 1.5
        assert [e.kv.value for e in seen] == ["0", "1", "2", "3", "4"]
    run(etcd_ns, body)


def test_watch_compacted(etcd_ns):
    def body(url, p):
        c = EtcdClient([url])
        old = c.put(p + "a", "1")
        rev = c.put(p + "a", "2")
        req = urllib.request.Request(url + "/v3/kv/compaction",
                                     data=json.dumps({"revision": str(rev)}).encode())
        urllib.request.urlopen(req, timeout=5).read()
        with pytest.raises(EtcdCompacted) as err:
            collect(c, p, 1, start=old)
        assert err.value.compact_revision == rev
        assert url in str(err.value)
    run(etcd_ns, body)


def test_failover_to_second_endpoint(etcd_ns):
    ns, url = etcd_ns
    dead = "http://127.0.0.1:%d" % free_ports(ns, 1)[0]

    def body(url, p):
        c = EtcdClient([dead, url], timeout=2)
        rev = c.put(p + "k", "v")
        assert c.get(p + "k").value == "v"
        assert c.status()["endpoint"] == url  # stuck to the working one
        events = collect(c, p, 1, start=rev)
        assert events[0].kv.key == p + "k"
        lease = c.lease_grant(5)
        assert c.lease_keepalive(lease) > 0
        assert c.create(p + "created", "v") is True
    run(etcd_ns, body)


def test_lost_answers_fail_over_only_when_safe(etcd_ns):
    def body(url, p):
        mute = socket.socket()  # accepts connections (backlog) and never answers
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        mute_url = "http://127.0.0.1:%d" % mute.getsockname()[1]
        c = EtcdClient([mute_url, url], timeout=0.5)
        assert c.get(p + "nothing") is None  # a read is retried on the next endpoint
        c = EtcdClient([mute_url, url], timeout=0.5)
        with pytest.raises(EtcdError, match="may or may not have been applied") as err:
            c.create(p + "k", "v")  # a txn is not: it may have been applied
        assert mute_url in str(err.value)
        mute.close()
    run(etcd_ns, body)


def test_errors_name_endpoint_and_operation(etcd_ns):
    ns, url = etcd_ns
    dead = "http://127.0.0.1:%d" % free_ports(ns, 1)[0]

    def body(url, p):
        with pytest.raises(EtcdError) as err:
            EtcdClient([dead], timeout=1).put(p + "k", "v")
        assert dead in str(err.value) and ("put " + p + "k") in str(err.value)
        with pytest.raises(EtcdError) as err:  # etcd itself refuses
            EtcdClient([url]).txn([{"key": p, "target": "NOPE", "result": "EQUAL"}], [], [])
        assert url in str(err.value) and "txn" in str(err.value)
        assert err.value.code is not None
    run(etcd_ns, body)


def test_status(etcd_ns):
    def body(url, p):
        st = EtcdClient([url]).status()
        assert st["version"].startswith("3.")
        assert st["leader"] == st["member_id"] != 0
        assert st["db_size"] > 0
    run(etcd_ns, body)


class CuttableProxy:
    """TCP forwarder to etcd whose open connections can be cut (a broken watch stream)."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = "http://127.0.0.1:%d" % self.listener.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.target)
            self.conns += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns = []


def test_watch_reconnects_and_resumes(etcd_ns):
    def body(url, p):
        proxy = CuttableProxy(int(url.rsplit(":", 1)[1]))
        direct = EtcdClient([url])
        watched = EtcdClient([proxy.url])
        stop = threading.Event()
        seen = []

        def watcher():
            for ev in watched.watch_prefix(p, stop=stop):
                seen.append(ev.kv.value)

        t = threading.Thread(target=watcher)
        t.start()
        try:
            time.sleep(0.5)
            direct.put(p + "a", "1")
            direct.put(p + "a", "2")
            deadline = time.monotonic() + 5
            while len(seen) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            proxy.cut()
            direct.put(p + "a", "3")  # while the stream is down
            time.sleep(0.3)
            direct.put(p + "a", "4")
            while len(seen) < 4 and time.monotonic() < deadline + 5:
                time.sleep(0.05)
        finally:
            stop.set()
            t.join(3)
        assert seen == ["1", "2", "3", "4"]
        assert len(proxy.conns) >= 1, "the watch did not reconnect"
    run(etcd_ns, body)
