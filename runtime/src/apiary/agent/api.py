"""The agent's local API: HTTP/1.1 with JSON bodies on a root-only unix socket.

Routes (see docs/datapath.md): status, endpoints (list/get/health, PUT from apiary-cni ADD,
DELETE from DEL), identities, maps, IPAM; and Hubble's /v1/flows and /v1/monitor streams (docs/hubble.md).
"""
from __future__ import annotations

import json
import logging
import os
import re
import socketserver
import urllib.parse
from http.server import BaseHTTPRequestHandler

from apiary.agent.endpoints import EndpointError
from apiary.agent.ipam import PoolExhausted
from apiary.errors import UserError
from apiary.observe import server

log = logging.getLogger("apiary.agent.api")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(path: str, agent) -> _Server:
    """Bind the socket (mode 0600 in a 0700 folder) and return the server; call serve_forever()."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    os.chmod(os.path.dirname(path), 0o700)
    if os.path.exists(path):
        os.unlink(path)
    old = os.umask(0o177)
    try:
        server = _Server(path, _handler(agent))
    finally:
        os.umask(old)
    return server


def _handler(agent):
    routes = [
        ("GET", r"/v1/status", lambda m, body: agent.status()),
        ("GET", r"/v1/endpoints", lambda m, body: agent.endpoint_summaries()),
        ("GET", r"/v1/endpoints/(\d+)", lambda m, body: agent.endpoint_summary(int(m[1]))),
        ("GET", r"/v1/endpoints/(\d+)/health", lambda m, body: agent.endpoints.health(int(m[1]))),
        ("PUT", r"/v1/endpoints", lambda m, body: agent.endpoint_summary(agent.endpoints.create(body).id)),
        ("DELETE", r"/v1/endpoints/([^/]+)(?:/([^/]+))?", lambda m, body: agent.delete_endpoint(m[1], m[2])),
        ("GET", r"/v1/identities", lambda m, body: agent.identities()),
        ("GET", r"/v1/policy", lambda m, body: agent.policy.rules()),
        ("PUT", r"/v1/policy", lambda m, body: agent.policy_import(body)),
        ("DELETE", r"/v1/policy", lambda m, body: agent.policy_delete(body)),
        ("GET", r"/v1/bpf/policy", lambda m, body: agent.bpf_policy(None)),
        ("GET", r"/v1/bpf/policy/(\d+)", lambda m, body: agent.bpf_policy(int(m[1]))),
        ("GET", r"/v1/service", lambda m, body: agent.service_list()),
        ("GET", r"/v1/map", lambda m, body: agent.map_names()),
        ("GET", r"/v1/map/([a-z0-9_]+)", lambda m, body: agent.map_dump(m[1])),
        ("POST", r"/v1/ipam", lambda m, body: agent.ipam_allocate(body)),
        ("DELETE", r"/v1/ipam/(.+)", lambda m, body: agent.ipam_release(m[1])),
    ]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def address_string(self):  # unix sockets have no peer address
            return "local"

        def log_message(self, fmt, *args):
            log.debug(fmt, *args)

        def _dispatch(self, method):
            path, _, query = self.path.partition("?")
            if method == "GET" and server.handle_stream(self, path, query, agent.hubble and agent.hubble.observer):
                return  # /v1/flows, /v1/monitor: streams (apiary.observe.server)
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else {}
                for verb, pattern, func in routes:
                    match = re.fullmatch(pattern, urllib.parse.unquote(self.path.split("?")[0]))
                    if verb == method and match:
                        self._reply(200, func(match, body))
                        return
                self._reply(404, {"error": "no route %s %s" % (method, self.path)})
            except EndpointError as exc:
                self._reply(exc.status, {"error": str(exc)})
            except UserError as exc:
                self._reply(400, {"error": str(exc)})
            except PoolExhausted as exc:
                self._reply(507, {"error": str(exc)})
            except ValueError as exc:
                self._reply(400, {"error": "bad request: %s" % exc})
            except Exception as exc:  # noqa: BLE001 - the agent keeps serving
                log.exception("%s %s", method, self.path)
                self._reply(500, {"error": "%s: %s" % (type(exc).__name__, exc)})

        def _reply(self, code, data):
            payload = json.dumps(data, sort_keys=True).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self):
            self._dispatch("GET")

        def do_PUT(self):
            self._dispatch("PUT")

        def do_POST(self):
            self._dispatch("POST")

        def do_DELETE(self):
            self._dispatch("DELETE")

    return Handler
