"""`apiary hubble-relay`: the cluster-wide flow API (Hubble Relay).

Peers are the nodes the agents publish in the store (/apiary/nodes/<name>, {"name", "ip"}); each runs
a flow server on peer_port. A query goes to every peer (mTLS with the relay's certificate when tls is
set); answers are merged by time (--last N: the last N of all), and a peer that fails is reported in
the stream ({"node_status": ...}) and in /v1/status instead of failing the query. The relay serves the
same /v1/flows API on its unix socket and on listen_address, and the web UI on ui_address.

Config (JSON): node_name, etcd_endpoints, peer_port (4244), socket, listen_address ("ip:port" or null),
ui_address ("ip:port" or null), tls ({ca, cert, key} or null), discovery_interval (seconds, 30).
"""
from __future__ import annotations

import json
import logging
import queue
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from apiary.errors import UserError
from apiary.observe import server
from apiary.observe.flow import parse_rfc3339, rfc3339
from apiary.store.etcd import EtcdClient

log = logging.getLogger("apiary.observe.relay")

NODES_PREFIX = "/apiary/nodes/"
QUERY_FRESHNESS = 2.0  # seconds
DEFAULT_SOCKET = "/var/run/apiary/hubble-relay.sock"
UI_RECENT = 2000            # flows the UI's service map is drawn from


def load_config(path: str) -> dict:
    try:
        with open(path) as handle:
            cfg = json.load(handle)
    except (OSError, ValueError) as exc:
        raise UserError("relay config %s: %s" % (path, exc)) from exc
    if not isinstance(cfg, dict):
        raise UserError("relay config %s: expected a JSON object" % path)
    defaults = {"node_name": "", "peer_port": 4244, "socket": DEFAULT_SOCKET, "listen_address": None,
                "ui_address": None, "tls": None, "discovery_interval": 30, "etcd_tls": None}
    unknown = set(cfg) - set(defaults) - {"etcd_endpoints"}
    if unknown:
        raise UserError("relay config %s: unknown field(s) %s" % (path, ", ".join(sorted(unknown))))
    cfg = dict(defaults, **cfg)
    endpoints = cfg.get("etcd_endpoints")
    if not endpoints or not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
        raise UserError("relay config %s: etcd_endpoints: a list of URLs is required" % path)
    if not isinstance(cfg["peer_port"], int) or not 0 < cfg["peer_port"] < 65536:
        raise UserError("relay config %s: peer_port: %r is not a port" % (path, cfg["peer_port"]))
    for key in ("listen_address", "ui_address"):
        if cfg[key] is not None:
            split_address(cfg[key], "relay config %s: %s" % (path, key))
    if cfg["etcd_tls"] is not None and not isinstance(cfg["etcd_tls"], dict):
        raise UserError("relay config %s: etcd_tls: expected {ca_file, cert_file, key_file}" % path)
    if cfg["tls"] is not None:
        missing = [k for k in ("ca", "cert", "key") if not (cfg["tls"] or {}).get(k)]
        if missing:
            raise UserError("relay config %s: tls: %s missing" % (path, ", ".join(missing)))
    return cfg


def split_address(text: str, what: str):
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UserError("%s: %r is not ip:port" % (what, text))
    return host, int(port)


# Records travel as the peers' NDJSON lines (bytes), not parsed: a flow record is the line of an object
# whose one key is "flow".
FLOW_LINE = b'{"flow"'
TIME_AT = len(b'{"flow":{"time":"')


def _time_key(line: bytes) -> bytes:
    """A flow line's time as sortable bytes. Flow times are RFC 3339 in UTC with nanoseconds, a fixed
    width, so the texts sort as the times do; an Apiary node writes the time first, where it is sliced
    out without parsing the line."""
    end = TIME_AT + 30
    if line.startswith(b'{"flow":{"time":"') and line[end - 11:end - 10] == b"." and line[end - 1:end + 1] == b'Z"':
        return line[TIME_AT:end]
    return rfc3339(parse_rfc3339(json.loads(line)["flow"]["time"])).encode()    # another layout


def _node_status(name: str, state: str, message: str = "") -> dict:
    return {"node_status": {"state_change": state, "node_names": [name], "message": message}}


class Relay:
    """The relay's backend for server.make_handler: flows(query), status()."""

    def __init__(self, etcd_endpoints, peer_port: int = 4244, tls=None, discovery_interval: float = 30,
                 queue_size: int = 10000, timeout: float = 10.0, etcd_tls=None):
        self.store = EtcdClient(etcd_endpoints, **(etcd_tls or {}))
        self.peer_port = peer_port
        self.tls = tls
        self.discovery_interval = discovery_interval
        self.queue_size = queue_size
        self.timeout = timeout
        self._peers = []
        self._discovered = 0.0
        self._discovery_error = None
        self._lock = threading.Lock()

    # --- peers ---------------------------------------------------------------------------------
    def discover(self) -> list:
        """The nodes in the store as peers [{name, address}]; the last list if the store is unreachable."""
        try:
            kvs, _ = self.store.get_prefix(NODES_PREFIX)
            peers = []
            for kv in kvs:
                try:
                    node = json.loads(kv.value)
                    peers.append({"name": node["name"], "address": "%s:%d" % (node["ip"], self.peer_port)})
                except (ValueError, KeyError, TypeError):
                    log.warning("%s: not a node record, skipped", kv.key)
            with self._lock:
                self._peers, self._discovered, self._discovery_error = peers, time.monotonic(), None
        except Exception as exc:  # noqa: BLE001 - keep the peers we knew
            log.warning("peer discovery: %s", exc)
            with self._lock:
                self._discovery_error = str(exc)
        return self.peers()

    def peers(self) -> list:
        """The nodes to ask: read again when older than QUERY_FRESHNESS (one etcd read), so a query
        right after a node joined asks it too."""
        with self._lock:
            stale = time.monotonic() - self._discovered > min(self.discovery_interval, QUERY_FRESHNESS)
        if stale:
            return self.discover()
        with self._lock:
            return list(self._peers)

    # --- queries -------------------------------------------------------------------------------
    def _ask(self, peer, path):
        """The peer's records, each its NDJSON line (bytes)."""
        return [line + b"\n" for lines in server.get_lines(peer["address"], path, self.tls, timeout=self.timeout,
                                                             follow_timeout=self.timeout)
                for line in lines.split(b"\n") if line.strip()]

    def flows(self, query):
        peers = self.peers()
        if query.follow:
            return self._follow(peers, query)
        path = "/v1/flows?" + query.query_string()
        out, flows = [], []
        with ThreadPoolExecutor(max_workers=max(1, min(32, len(peers)))) as pool:
            futures = [(peer, pool.submit(self._ask, peer, path)) for peer in peers]
            for peer, future in futures:
                try:
                    records = future.result()
                except Exception as exc:  # noqa: BLE001 - reported in the stream, the rest still answer
                    out.append(_node_status(peer["name"], "NODE_UNAVAILABLE", "%s: %s" % (peer["address"], exc)))
                    continue
                for line in records:
                    (flows if line.startswith(FLOW_LINE) else out).append(line)
        if not peers:
            out.append(_node_status("", "NODE_UNAVAILABLE", "no peers: no node in the store (%s)"
                                    % (self._discovery_error or "none published under %s" % NODES_PREFIX)))
        flows.sort(key=_time_key)
        if query.last:
            flows = flows[-query.last:]
        elif query.first:
            flows = flows[:query.first]
        return out + flows

    def _follow(self, peers, query):
        """Every peer's follow stream, forwarded as records come (None when idle): the peers' lines
        pass through unparsed, as read (several lines at a time)."""
        path = "/v1/flows?" + query.query_string()
        # Bounded by bytes, about 1 KiB per record: an item is a read of up to server.CHUNK bytes.
        records = queue.Queue(maxsize=max(2, self.queue_size * 1024 // server.CHUNK))
        stop = threading.Event()
        overflow = threading.Event()
        conns = []

        def pump(peer):
            try:
                conn = server.connect(peer["address"], self.tls, self.timeout)
                conn.request("GET", path)
                sock = conn.sock    # the response keeps it; http.client forgets it
                conns.append(sock)
                resp = conn.getresponse()
                if resp.status != 200:
                    raise server.StreamError(resp.status, json.loads(resp.read() or b"{}").get("error", ""))
                sock.settimeout(None)
                for lines in server.read_lines(resp):
                    if stop.is_set():
                        return
                    records.put_nowait(lines)
                    # a full queue raises queue.Full: the relay's client is too slow
                raise ConnectionError("the peer ended the stream")
            except queue.Full:
                overflow.set()
            except Exception as exc:  # noqa: BLE001 - one peer's failure is a status line, not the end
                if not stop.is_set():
                    try:
                        records.put_nowait(_node_status(peer["name"], "NODE_UNAVAILABLE",
                                                        "%s: %s" % (peer["address"], exc)))
                    except queue.Full:
                        overflow.set()

        if not peers:
            yield _node_status("", "NODE_UNAVAILABLE", "no peers: no node in the store")
        for peer in peers:
            threading.Thread(target=pump, args=(peer,), name="relay-peer-%s" % peer["name"], daemon=True).start()
        try:
            while True:
                if overflow.is_set():
                    yield {"error": "client too slow: relay queue of about %d records full" % self.queue_size}
                    return
                try:
                    rec = records.get(timeout=0.2)
                except queue.Empty:
                    yield None
                    continue
                yield rec
                if records.empty():
                    yield None
        finally:
            stop.set()
            for sock in conns:      # unblocks the pumps' reads
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def status(self) -> dict:
        peers = self.peers()

        def one(peer):
            try:
                st = server.get_json(peer["address"], "/v1/status", self.tls, timeout=self.timeout)
                return dict(peer, state="connected", status=st)
            except Exception as exc:  # noqa: BLE001
                return dict(peer, state="error", error=str(exc))

        with ThreadPoolExecutor(max_workers=max(1, min(32, len(peers)))) as pool:
            results = list(pool.map(one, peers))
        up = [r for r in results if r["state"] == "connected"]
        return {"peers": results, "num_connected_nodes": len(up), "num_unavailable_nodes": len(results) - len(up),
                "num_flows": sum(r["status"].get("num_flows", 0) for r in up),
                "max_flows": sum(r["status"].get("max_flows", 0) for r in up),
                "seen_flows": sum(r["status"].get("seen_flows", 0) for r in up),
                "discovery_error": self._discovery_error}

    # --- the UI's data -------------------------------------------------------------------------
    def recent_flows(self, namespace, last):
        from apiary.observe import filters

        params = {"last": [str(last or UI_RECENT)]}
        if namespace:
            params["namespace"] = [namespace]
        return [json.loads(rec)["flow"] for rec in self.flows(filters.parse(params))
                if type(rec) is bytes and rec.startswith(FLOW_LINE)]


def _ui_server(relay, host, port):
    """The UI (the other half of issue 6 writes apiary.observe.ui); a 503 page until it exists."""
    try:
        from apiary.observe import servicemap, ui
    except ImportError as exc:
        missing = str(exc)

        def unavailable(handler, path, query):
            server.reply_json(handler, 503, {"error": "the hubble UI is not installed (%s)" % missing})
            return True

        return server.serve_tcp(host, port, server.make_handler(relay, extra=unavailable))
    return ui.UIServer(host, port, relay.recent_flows,
                       lambda: servicemap.namespaces(relay.recent_flows(None, UI_RECENT)))


def run(cfg: dict) -> int:
    relay = Relay(cfg["etcd_endpoints"], cfg["peer_port"], cfg["tls"], cfg["discovery_interval"],
                  etcd_tls=cfg["etcd_tls"])
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    handler = server.make_handler(relay)
    services = [server.serve_unix(cfg["socket"], handler)]
    if cfg["listen_address"]:
        host, port = split_address(cfg["listen_address"], "listen_address")
        services.append(server.serve_tcp(host, port, handler, cfg["tls"]))
    if cfg["ui_address"]:
        host, port = split_address(cfg["ui_address"], "ui_address")
        services.append(_ui_server(relay, host, port))
    for svc in services:
        svc.start()
    log.info("hubble-relay %s: serving on %s%s%s, %d peer(s)", cfg["node_name"], cfg["socket"],
             ", %s" % cfg["listen_address"] if cfg["listen_address"] else "",
             ", UI on %s" % cfg["ui_address"] if cfg["ui_address"] else "", len(relay.discover()))
    while not stop.wait(cfg["discovery_interval"]):
        relay.discover()
    for svc in services:
        svc.stop()
    return 0
