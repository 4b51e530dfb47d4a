"""The flow API over HTTP/1.1: one streaming implementation for a node's flow server (TCP, mTLS), the
agent's unix socket (GET /v1/flows, /v1/monitor) and the relay.

    GET /v1/flows?<filter>&since=&until=&last=&first=&follow=1  -> NDJSON: {"flow": {...}},
        {"lost_events": {"source", "num_events_lost"}}, (relay) {"node_status": {...}}, and a last
        {"error": "..."} when the server ends the stream (e.g. the client was too slow)
    GET /v1/monitor?type=drop&type=trace                       -> NDJSON of decoded events (live)
    GET /v1/status                                             -> JSON

Streams are written by the client's own handler thread, never by Observer.add: a client that does not
read fills its socket, then its queue, and is dropped; the observer does not wait for it.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import select
import socket
import socketserver
import ssl
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from apiary.agent.client import UnixConnection
from apiary.errors import UserError
from apiary.observe import filters

log = logging.getLogger("apiary.observe.server")

MONITOR_TYPES = ("drop", "trace", "policy-verdict", "trace-sock")
STREAM_HEADERS = {"Content-Type": "application/x-ndjson", "Cache-Control": "no-store", "Connection": "close"}


# --- TLS -------------------------------------------------------------------------------------------
def server_context(tls: dict) -> ssl.SSLContext:
    """Server side of mutual TLS: our cert and key; a client must present a cert signed by the CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls["cert"], tls["key"])
    ctx.load_verify_locations(tls["ca"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(tls: dict) -> ssl.SSLContext:
    """Client side: the server's cert must be signed by the CA; ours goes with every connection.
    Peers are dialled by IP and node certificates name the node, so the CA is what is checked."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(tls["ca"])
    if tls.get("cert"):
        ctx.load_cert_chain(tls["cert"], tls["key"])
    return ctx


# --- backends: where records come from -------------------------------------------------------------
class ObserverBackend:
    """A node's observer behind the flow API."""

    def __init__(self, observer, queue_size: int = 10000):
        self.observer = observer
        self.queue_size = queue_size

    def flows(self, query):
        # Lines, not dicts: a flow's JSON line is built once and shared by every client.
        if query.follow:
            return self.observer.follow(query, queue_size=self.queue_size, encoded=True)
        return self.observer.get_flows(query, encoded=True)

    def monitor(self, types):
        return self.observer.events(types, queue_size=self.queue_size)

    def status(self) -> dict:
        return self.observer.status()


def _backend(obj):
    return obj if hasattr(obj, "flows") else ObserverBackend(obj)


# --- the handler side ------------------------------------------------------------------------------
def reply_json(handler, code: int, data) -> None:
    payload = json.dumps(data, sort_keys=True).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def _client_gone(sock) -> bool:
    """True when the client closed its side (a follow stream would otherwise linger until it writes)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        if isinstance(sock, ssl.SSLSocket):
            old = sock.gettimeout()
            sock.settimeout(0)
            try:
                return sock.recv(1) == b""
            except (ssl.SSLWantReadError, BlockingIOError):
                return False
            finally:
                sock.settimeout(old)
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def stream(handler, records, write_timeout: float = 10.0) -> None:
    """Write records (dicts, or bytes: a ready NDJSON line; None = nothing new, check the client) as
    NDJSON until they end or the client goes away or stops reading for write_timeout seconds."""
    handler.close_connection = True
    handler.send_response(200)
    for key, value in STREAM_HEADERS.items():
        handler.send_header(key, value)
    handler.end_headers()
    sock = handler.connection
    sock.settimeout(write_timeout)
    buf = []
    try:
        handler.wfile.flush()
        for rec in records:
            if rec is not None:
                buf.append(rec if type(rec) is bytes else (json.dumps(rec, separators=(",", ":")) + "\n").encode())
                if len(buf) < 256:
                    continue
            if buf:
                sock.sendall(b"".join(buf))
                buf = []
            elif _client_gone(sock):
                return
        if buf:
            sock.sendall(b"".join(buf))
    except (OSError, ValueError) as exc:   # the client went away or stopped reading
        log.debug("stream to %s ended: %s", handler.address_string(), exc)
    finally:
        close = getattr(records, "close", None)
        if close:
            close()


def handle_stream(handler, path: str, query: str, observer, write_timeout: float = 10.0) -> bool:
    """Serve GET /v1/flows or /v1/monitor for a BaseHTTPRequestHandler; False for other paths.

    `observer` is an Observer (or a backend with flows/monitor/status), None when hubble is off."""
    if path not in ("/v1/flows", "/v1/monitor"):
        return False
    if observer is None:
        reply_json(handler, 404, {"error": "hubble is disabled on this node"})
        return True
    backend = _backend(observer)
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    try:
        if path == "/v1/flows":
            records = backend.flows(filters.parse(params))
        else:
            types = params.pop("type", [])
            unknown = [t for t in types if t not in MONITOR_TYPES]
            if unknown or params:
                raise UserError("--type %r: unknown event type (one of %s)" % (unknown[0], ", ".join(MONITOR_TYPES))
                                if unknown else "/v1/monitor takes only type=, not %s" % ", ".join(params))
            if not hasattr(backend, "monitor"):
                reply_json(handler, 404, {"error": "monitor streams one node's events: ask the node's agent"})
                return True
            records = backend.monitor(set(types))
    except UserError as exc:
        reply_json(handler, 400, {"error": str(exc)})
        return True
    stream(handler, records, write_timeout)
    return True


def make_handler(backend, write_timeout: float = 10.0, extra=None):
    """A handler class for the flow API on `backend`; `extra(handler, path, query) -> bool` may serve
    more routes (the relay's UI)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "apiary-hubble"

        def setup(self):
            if isinstance(self.request, ssl.SSLSocket):
                # The handshake runs here, in the client's thread, not in the accepting one.
                self.request.settimeout(10)
                self.request.do_handshake()
                self.request.settimeout(None)
            super().setup()

        def address_string(self):
            return self.client_address[0] if isinstance(self.client_address, tuple) else "local"

        def log_message(self, fmt, *args):
            log.debug(fmt, *args)

        def do_GET(self):
            path, _, query = self.path.partition("?")
            try:
                if handle_stream(self, path, query, backend, write_timeout):
                    return
                if path == "/v1/status":
                    reply_json(self, 200, backend.status())
                elif not (extra and extra(self, path, query)):
                    reply_json(self, 404, {"error": "no route GET %s" % path})
            except Exception as exc:  # noqa: BLE001 - the server keeps serving
                log.exception("GET %s", self.path)
                try:
                    reply_json(self, 500, {"error": "%s: %s" % (type(exc).__name__, exc)})
                except OSError:
                    pass

    return Handler


# --- servers -------------------------------------------------------------------------------------
class HttpServer(ThreadingHTTPServer):
    """ThreadingHTTPServer without its reverse DNS lookup of the listening address when it binds
    (socket.getfqdn): on a node whose resolver does not answer that is seconds of timeouts per server.
    The flow server, the relay, the metrics and the page all listen through it."""
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _TCPServer(HttpServer):

    def __init__(self, address, handler, tls=None):
        self.tls_context = server_context(tls) if tls else None
        super().__init__(address, handler)

    def get_request(self):
        sock, addr = super().get_request()
        if self.tls_context is not None:
            sock = self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        # Refused handshakes (no or a wrong client certificate) end here: worth a line, not a traceback.
        log.info("connection from %s ended: %s", client_address[0], _last_error())


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        log.info("local connection ended: %s", _last_error())


def _last_error() -> str:
    import sys

    exc = sys.exc_info()[1]
    return "%s: %s" % (type(exc).__name__, exc)


class Service:
    """One listening HTTP server in a background thread."""

    def __init__(self, server):
        self.server = server
        self.thread = None

    @property
    def address(self):
        return self.server.server_address

    def start(self) -> "Service":
        self.thread = threading.Thread(target=self.server.serve_forever, name="flow-api", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread is not None:
            self.server.shutdown()
        self.server.server_close()


def serve_tcp(host: str, port: int, handler, tls=None) -> Service:
    return Service(_TCPServer((host, port), handler, tls))


def serve_unix(path: str, handler) -> Service:
    """A root-only unix socket (mode 0600 in a folder created 0700)."""
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        os.makedirs(folder, mode=0o700)
    if os.path.exists(path):
        os.unlink(path)
    old = os.umask(0o177)
    try:
        return Service(_UnixServer(path, handler))
    finally:
        os.umask(old)


class FlowServer(Service):
    """A node's flow server (Hubble's :4244): the observer's flows over TCP, mTLS when tls is given."""

    def __init__(self, observer, host: str = "0.0.0.0", port: int = 4244, tls=None, queue_size: int = 10000,
                 write_timeout: float = 10.0):
        super().__init__(_TCPServer((host, port), make_handler(ObserverBackend(observer, queue_size),
                                                               write_timeout), tls))


# --- the client side -------------------------------------------------------------------------------
class StreamError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def is_unix_target(target: str) -> bool:
    return "/" in target or target.endswith(".sock")


def connect(target: str, tls=None, timeout=30.0) -> http.client.HTTPConnection:
    """A connection to a unix socket path or host:port (HTTPS with our client cert when tls is given)."""
    if is_unix_target(target):
        return UnixConnection(target, timeout)
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError("--server %r: expected a unix socket path or HOST:PORT" % target)
    if tls:
        return http.client.HTTPSConnection(host, int(port), timeout=timeout, context=client_context(tls))
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def get_json(target: str, path: str, tls=None, timeout=10.0):
    conn = connect(target, tls, timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        data = json.loads(resp.read() or b"null")
    finally:
        conn.close()
    if resp.status != 200:
        raise StreamError(resp.status, (data or {}).get("error", "HTTP %d" % resp.status))
    return data


CHUNK = 65536


def read_lines(resp):
    """The complete lines of an NDJSON response as they arrive, several at a time: bytes of one or more
    lines, each ending with a newline (a last line cut short by the end of the stream is left out).
    Read in chunks, not line by line: a follow stream may carry 100,000 records a second."""
    rest = b""
    while True:
        data = resp.read1(CHUNK)
        if not data:
            return
        data = rest + data if rest else data
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            yield data[:cut] if rest else data


def get_stream(target: str, path: str, tls=None, timeout=30.0, follow_timeout=None):
    """Yield the records of an NDJSON stream; StreamError for an error reply. With follow_timeout the
    socket's timeout is changed once the reply has started (None: wait for records as long as it takes)."""
    for lines in get_lines(target, path, tls, timeout, follow_timeout):
        for line in lines.split(b"\n"):
            if line.strip():
                yield json.loads(line)


def get_lines(target: str, path: str, tls=None, timeout=30.0, follow_timeout=None):
    """get_stream() without parsing: the stream's lines as read_lines() gives them."""
    conn = connect(target, tls, timeout)
    try:
        conn.request("GET", path)
        sock = conn.sock        # the response keeps it, http.client forgets it ("Connection: close")
        resp = conn.getresponse()
        if resp.status != 200:
            try:
                message = json.loads(resp.read() or b"{}").get("error")
            except ValueError:
                message = None
            raise StreamError(resp.status, message or "HTTP %d" % resp.status)
        sock.settimeout(follow_timeout)
        yield from read_lines(resp)
    finally:
        conn.close()
