"""A small etcd v3 client over etcd's JSON gRPC gateway (stdlib only).

Every call is an HTTP/1.1 POST of JSON to `/v3/...` on one endpoint; keys and values travel base64
encoded and are str here (values are JSON text by convention, see docs/datapath.md "The store").
int64 fields come back from the gateway as JSON strings and fields at their default (0, false, "")
are left out; the typed methods below hide both.

Endpoints are tried in order; the client sticks to the last one that answered and moves on to the
next when one cannot be reached (connection refused, timeout, reset) or answers "unavailable".
Calls that must not be applied twice (txn, and so create and compare_and_swap; delete; lease grant)
move on only when the connection could not be made; once sent, a lost answer is an EtcdError that
says the outcome is unknown.
An error etcd itself reports (a bad request, a missing lease) is raised at once as EtcdError,
naming the endpoint and the operation.

An https:// endpoint is reached over TLS, verified against `ca_file`, with the client certificate
`cert_file`/`key_file` (etcd's --client-cert-auth, as the roles run it).

Watches are read from a raw socket (not http.client) so that a watch can notice its stop event
between reads, and reconnect (to the next endpoint if need be) resuming after the last revision it
delivered.
"""
from __future__ import annotations

import base64
import http.client
import json
import random
import select
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

# gRPC status codes that mean "try another member" rather than "your request is wrong".
_GRPC_UNAVAILABLE = 14
_GRPC_NOT_FOUND = 5

_B64_FIELDS = ("key", "range_end", "value")


class EtcdError(Exception):
    """An etcd call failed. `endpoint` and `operation` say where and what; `code` is the gRPC
    status code etcd answered with (None when no endpoint could be reached)."""

    def __init__(self, endpoint: str, operation: str, message: str, code: Optional[int] = None):
        self.endpoint = endpoint
        self.operation = operation
        self.message = message
        self.code = code
        super().__init__("etcd %s at %s: %s" % (operation, endpoint, message))

    def __reduce__(self):  # picklable (errors cross process boundaries, e.g. netns.call_in)
        return (type(self), (self.endpoint, self.operation, self.message, self.code))


class EtcdCompacted(EtcdError):
    """A watch asked for revisions etcd has compacted away: list again, then watch from the
    revision of that listing (`compact_revision` is the oldest one still available)."""

    def __init__(self, endpoint: str, operation: str, compact_revision: int):
        self.compact_revision = compact_revision
        super().__init__(endpoint, operation,
                         "revision compacted (oldest available %d): list again and watch from there"
                         % compact_revision)

    def __reduce__(self):
        return (type(self), (self.endpoint, self.operation, self.compact_revision))


@dataclass(frozen=True)
class KV:
    key: str
    value: str
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0


@dataclass(frozen=True)
class Event:
    type: str  # 'PUT' or 'DELETE'
    kv: KV
    prev: Optional[KV] = None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "surrogateescape")).decode("ascii")


def _unb64(data: str) -> str:
    return base64.b64decode(data).decode("utf-8", "surrogateescape")


def prefix_end(prefix: str) -> str:
    """The range_end that makes [prefix, range_end) cover every key starting with prefix."""
    raw = bytearray(prefix.encode("utf-8", "surrogateescape"))
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw).decode("utf-8", "surrogateescape")
        raw.pop()
    return "\0"  # empty prefix (or all 0xff): every key


def _kv(raw: dict) -> KV:
    return KV(
        key=_unb64(raw.get("key", "")),
        value=_unb64(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        version=int(raw.get("version", 0)),
        lease=int(raw.get("lease", 0)),
    )


def _map_bytes(obj, convert):
    """Apply convert to every key/range_end/value str field at any depth: _b64 for compares and
    ops going out, _unb64 for gateway answers (kvs, prev_kvs, nested txn responses)."""
    if isinstance(obj, dict):
        return {k: (convert(v) if k in _B64_FIELDS and isinstance(v, str) else _map_bytes(v, convert))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_bytes(v, convert) for v in obj]
    return obj


def _split_endpoint(endpoint: str) -> Tuple[str, str, int]:
    url = endpoint if "://" in endpoint else "http://" + endpoint
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("etcd endpoint %s: only http:// and https:// are supported" % endpoint)
    if not parts.hostname:
        raise ValueError("etcd endpoint %s: no host" % endpoint)
    return parts.scheme, parts.hostname, parts.port or 2379


def tls_context(ca_file: Optional[str], cert_file: Optional[str], key_file: Optional[str]) -> ssl.SSLContext:
    """A client context that verifies etcd against its CA and presents our certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def _error_text(data: bytes) -> Tuple[str, Optional[int]]:
    try:
        doc = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        return data.decode("utf-8", "replace").strip()[:300] or "empty answer", None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):  # a streamed error
        doc = doc["error"]
    if isinstance(doc, dict):
        return str(doc.get("message") or doc.get("error") or doc), doc.get("code")
    return str(doc), None


class _Unreachable(Exception):
    """This endpoint could not serve the call; the next one may."""


class EtcdClient:
    def __init__(self, endpoints: List[str], timeout: float = 5.0, ca_file: Optional[str] = None,
                 cert_file: Optional[str] = None, key_file: Optional[str] = None):
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ValueError("EtcdClient needs at least one endpoint")
        self.endpoints = list(endpoints)
        self._addrs = [_split_endpoint(e) for e in self.endpoints]
        self._tls = tls_context(ca_file, cert_file, key_file) \
            if any(scheme == "https" for scheme, _, _ in self._addrs) else None
        self.timeout = timeout
        self._current = 0
        self._lock = threading.Lock()

    # ---- transport -------------------------------------------------------------------------

    def _order(self) -> List[int]:
        with self._lock:
            start = self._current
        n = len(self.endpoints)
        return [(start + i) % n for i in range(n)]

    def _stick(self, idx: int) -> None:
        with self._lock:
            self._current = idx

    def _post_once(self, idx: int, path: str, body: dict, operation: str,
                   idempotent: bool) -> dict:
        scheme, host, port = self._addrs[idx]
        endpoint = self.endpoints[idx]
        payload = json.dumps(body).encode()
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        try:
            try:
                conn.connect()
            except OSError as exc:  # nothing was sent: another endpoint may serve the call
                raise _Unreachable("%s: %s" % (endpoint, exc or type(exc).__name__)) from exc
            try:
                conn.request("POST", path, body=payload,
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                if idempotent:
                    raise _Unreachable("%s: %s" % (endpoint, exc or type(exc).__name__)) from exc
                raise EtcdError(endpoint, operation, "no answer (%s); it may or may not have been "
                                "applied" % (exc or type(exc).__name__)) from exc
        finally:
            conn.close()
        if resp.status != 200:
            message, code = _error_text(data)
            unavailable = code == _GRPC_UNAVAILABLE or resp.status in (502, 503, 504) and code is None
            if unavailable and idempotent:  # e.g. no leader: ask another member
                raise _Unreachable("%s: %s" % (endpoint, message))
            raise EtcdError(endpoint, operation, message, code)
        try:
            doc = json.loads(data.decode("utf-8"))
        except ValueError as exc:
            raise EtcdError(endpoint, operation, "answer is not JSON: %r" % data[:200]) from exc
        if "header" not in doc and ("result" in doc or "error" in doc):  # a streamed message
            if "error" in doc:
                message, code = _error_text(data)
                raise EtcdError(endpoint, operation, message, code)
            doc = doc["result"]
        return doc

    def _call(self, operation: str, path: str, body: dict, idempotent: bool = True) -> dict:
        """POST to the first endpoint that answers. A call that is not idempotent (txn, delete,
        lease grant) moves on to the next endpoint only when it could not even connect: once sent,
        its outcome is unknown, and EtcdError says so rather than applying it twice."""
        failures = []
        for idx in self._order():
            try:
                doc = self._post_once(idx, path, body, operation, idempotent)
            except _Unreachable as exc:
                failures.append(str(exc))
                continue
            self._stick(idx)
            return doc
        raise EtcdError(", ".join(self.endpoints), operation,
                        "no endpoint answered (%s)" % "; ".join(failures))

    # ---- key/value -------------------------------------------------------------------------

    def get(self, key: str) -> Optional[KV]:
        doc = self._call("get %s" % key, "/v3/kv/range", {"key": _b64(key)})
        kvs = doc.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> Tuple[List[KV], int]:
        doc = self._call("get prefix %s" % prefix, "/v3/kv/range",
                         {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                          "sort_order": "ASCEND", "sort_target": "KEY"})
        kvs = sorted((_kv(raw) for raw in doc.get("kvs") or []), key=lambda kv: kv.key)
        return kvs, int(doc["header"].get("revision", 0))

    def put(self, key: str, value: str, lease: int = 0) -> int:
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        doc = self._call("put %s" % key, "/v3/kv/put", body)
        return int(doc["header"].get("revision", 0))

    def delete(self, key: str) -> int:
        doc = self._call("delete %s" % key, "/v3/kv/deleterange", {"key": _b64(key)},
                         idempotent=False)
        return int(doc.get("deleted", 0))

    def delete_prefix(self, prefix: str) -> int:
        doc = self._call("delete prefix %s" % prefix, "/v3/kv/deleterange",
                         {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))},
                         idempotent=False)
        return int(doc.get("deleted", 0))

    def txn(self, compare: List[dict], success: List[dict], failure: List[dict]) -> dict:
        """A raw transaction. Compares and ops are the gateway's JSON with key/range_end/value as
        plain str, e.g. compare {"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": 5},
        op {"request_put": {"key": k, "value": v}}. The answer is the gateway's JSON with those
        fields decoded again, and "succeeded" always present."""
        doc = self._call("txn", "/v3/kv/txn", {"compare": _map_bytes(compare, _b64),
                                               "success": _map_bytes(success, _b64),
                                               "failure": _map_bytes(failure, _b64)},
                         idempotent=False)
        doc = _map_bytes(doc, _unb64)
        doc["succeeded"] = bool(doc.get("succeeded", False))
        return doc

    def create(self, key: str, value: str, lease: int = 0) -> bool:
        """Put key only if it does not exist; True when this call created it."""
        put = {"key": key, "value": value}
        if lease:
            put["lease"] = str(lease)
        doc = self.txn([{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
                       [{"request_put": put}], [])
        return doc["succeeded"]

    def compare_and_swap(self, key: str, value: str, mod_revision: int) -> bool:
        """Put key only if its mod_revision is still `mod_revision` (0: only if absent)."""
        doc = self.txn([{"key": key, "target": "MOD", "result": "EQUAL",
                         "mod_revision": str(mod_revision)}],
                       [{"request_put": {"key": key, "value": value}}], [])
        return doc["succeeded"]

    # ---- leases ----------------------------------------------------------------------------

    def lease_grant(self, ttl: int) -> int:
        doc = self._call("lease grant", "/v3/lease/grant", {"TTL": str(int(ttl))},
                         idempotent=False)
        if doc.get("error"):
            raise EtcdError(self.endpoints[self._current], "lease grant", str(doc["error"]))
        return int(doc["ID"])

    def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; returns its new TTL, 0 when the lease has expired or is unknown
        (grant a new one then)."""
        doc = self._call("lease keepalive %d" % lease_id, "/v3/lease/keepalive",
                         {"ID": str(lease_id)})
        return int(doc.get("TTL", 0))

    def lease_revoke(self, lease_id: int) -> None:
        """Revoke a lease, deleting its keys. A lease that is already gone is not an error."""
        try:
            self._call("lease revoke %d" % lease_id, "/v3/lease/revoke", {"ID": str(lease_id)})
        except EtcdError as exc:
            if exc.code != _GRPC_NOT_FOUND:
                raise

    # ---- maintenance -----------------------------------------------------------------------

    def status(self) -> dict:
        """The status of the endpoint in use: version, leader, db_size, …"""
        doc = self._call("status", "/v3/maintenance/status", {})
        header = doc.get("header", {})
        return {
            "endpoint": self.endpoints[self._current],
            "version": doc.get("version", ""),
            "leader": int(doc.get("leader", 0)),
            "member_id": int(header.get("member_id", 0)),
            "db_size": int(doc.get("dbSize", 0)),
            "db_size_in_use": int(doc.get("dbSizeInUse", 0)),
            "raft_index": int(doc.get("raftIndex", 0)),
            "raft_term": int(doc.get("raftTerm", 0)),
            "revision": int(header.get("revision", 0)),
        }

    # ---- watch -----------------------------------------------------------------------------

    def watch_prefix(self, prefix: str, start_revision: Optional[int] = None,
                     stop: Optional[threading.Event] = None) -> Iterator[Event]:
        """Yield every change under prefix, in revision order, from start_revision (default: changes
        after now). Reconnects (trying the endpoints in turn, with backoff) and resumes after the
        last revision delivered; ends when `stop` is set (checked at least every 0.25 s while idle).
        Raises EtcdCompacted when the revision to resume from is gone."""
        stop = stop or threading.Event()
        next_rev = start_revision
        delay = 0.1
        operation = "watch %s" % prefix
        while not stop.is_set():
            failures = []
            for idx in self._order():
                if stop.is_set():
                    return
                try:
                    for kind, value in self._watch_once(idx, prefix, next_rev, stop, operation):
                        if kind == "revision":  # the watch is established at this revision
                            if next_rev is None:
                                next_rev = value + 1
                            self._stick(idx)
                            delay = 0.1
                        else:
                            next_rev = value.kv.mod_revision + 1
                            yield value
                except _Unreachable as exc:
                    failures.append(str(exc))
                    continue
                if stop.is_set():
                    return
            # every endpoint failed (or the last stream ended): back off, then go round again
            if stop.wait(delay):
                return
            delay = min(delay * 2, 2.0) * (0.8 + 0.4 * random.random())

    def _watch_once(self, idx: int, prefix: str, start: Optional[int],
                    stop: threading.Event, operation: str):
        """One watch stream on one endpoint: yields ("revision", n) once created, then ("event",
        Event). Returns when stop is set; raises _Unreachable when the stream breaks."""
        scheme, host, port = self._addrs[idx]
        endpoint = self.endpoints[idx]
        create = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)), "prev_kv": True,
                  "progress_notify": True}
        if start is not None:
            create["start_revision"] = str(start)
        payload = json.dumps({"create_request": create}).encode()
        request = ("POST /v3/watch HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\n\r\n" % (host, port, len(payload))).encode() + payload
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
            if scheme == "https":
                sock = self._tls.wrap_socket(sock, server_hostname=host)
        except OSError as exc:
            raise _Unreachable("%s: %s" % (endpoint, exc)) from exc
        try:
            _keepalive(sock)
            reader = _StreamReader(sock, stop, endpoint)
            try:
                sock.sendall(request)
                status, headers = reader.read_head(self.timeout)
                if status != 200:
                    message, code = _error_text(reader.read_body(headers, self.timeout))
                    if code == _GRPC_UNAVAILABLE or status in (502, 503, 504):
                        raise _Unreachable("%s: %s" % (endpoint, message))
                    raise EtcdError(endpoint, operation, message, code)
                chunked = "chunked" in headers.get("transfer-encoding", "")
                for line in reader.lines(chunked):
                    if not line.strip():
                        continue
                    try:
                        doc = json.loads(line)
                    except ValueError as exc:
                        raise _Unreachable("%s: bad watch message %r" % (endpoint, line[:200])) from exc
                    if "error" in doc:
                        message, code = _error_text(line)
                        if code == _GRPC_UNAVAILABLE:
                            raise _Unreachable("%s: %s" % (endpoint, message))
                        raise EtcdError(endpoint, operation, message, code)
                    result = doc.get("result", {})
                    if result.get("canceled"):
                        compact = int(result.get("compact_revision", 0))
                        if compact:
                            raise EtcdCompacted(endpoint, operation, compact)
                        raise _Unreachable("%s: watch canceled: %s"
                                           % (endpoint, result.get("cancel_reason", "")))
                    if result.get("created"):
                        yield "revision", int(result.get("header", {}).get("revision", 0))
                    for raw in result.get("events") or []:
                        prev = raw.get("prev_kv")
                        yield "event", Event(type=raw.get("type", "PUT"), kv=_kv(raw["kv"]),
                                             prev=_kv(prev) if prev else None)
            except _Stopped:
                return
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise _Unreachable("%s: %s" % (endpoint, exc or type(exc).__name__)) from exc
        finally:
            sock.close()


def _keepalive(sock: socket.socket) -> None:
    """Notice a dead peer on an idle watch within about 20 s."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 2)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class _StreamReader:
    """Minimal HTTP/1.1 response reader over a blocking socket, polled so stop is noticed."""

    POLL = 0.25

    def __init__(self, sock: socket.socket, stop: threading.Event, endpoint: str):
        self.sock = sock
        self.stop = stop
        self.endpoint = endpoint
        self.buf = b""
        self.eof = False

    def _fill(self, deadline: Optional[float] = None) -> bool:
        """Read more bytes; False when stop was set (or deadline passed: raises)."""
        while True:
            if self.stop.is_set():
                return False
            # TLS may hold decrypted bytes that select() on the socket cannot see.
            pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
            ready = pending or select.select([self.sock], [], [], self.POLL)[0]
            if ready:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("connection closed by etcd")
                self.buf += data
                return True
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("no answer in time")

    def read_head(self, timeout: float):
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(deadline):
                raise _Stopped()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        return status, headers

    def read_body(self, headers: dict, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        if "chunked" in headers.get("transfer-encoding", ""):
            return b"".join(self._chunks(deadline))
        length = int(headers.get("content-length", "0") or 0)
        while len(self.buf) < length:
            if not self._fill(deadline):
                raise _Stopped()
        return self.buf[:length]

    def _chunks(self, deadline: Optional[float] = None):
        while True:
            while b"\r\n" not in self.buf:
                if not self._fill(deadline):
                    return
            size_line = self.buf.split(b"\r\n", 1)[0]
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            start = len(size_line) + 2
            while len(self.buf) < start + size + 2:
                if not self._fill(deadline):
                    return
            data, self.buf = self.buf[start:start + size], self.buf[start + size + 2:]
            if size == 0:
                raise ConnectionError("watch stream ended")
            yield data

    def lines(self, chunked: bool):
        pending = b""
        if chunked:
            source = self._chunks()
        else:
            source = self._raw()
        for data in source:
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                yield line

    def _raw(self):
        while True:
            if self.buf:
                data, self.buf = self.buf, b""
                yield data
            if not self._fill():
                return


class _Stopped(Exception):
    pass
