"""Talking to a node's agent over its unix socket (used by the CLI and by apiary-cni)."""
from __future__ import annotations

import http.client
import json
import socket
import urllib.parse

DEFAULT_SOCKET = "/var/run/apiary/apiary.sock"


class AgentUnreachable(Exception):
    pass


class AgentError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the agent's API, the relay's socket)."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class AgentClient:
    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout: float = 30.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body=None):
        conn = UnixConnection(self.socket_path, self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = json.loads(response.read() or b"null")
        except (OSError, http.client.HTTPException) as exc:
            raise AgentUnreachable("agent at %s: %s" % (self.socket_path, exc)) from exc
        finally:
            conn.close()
        if response.status != 200:
            raise AgentError(response.status, (data or {}).get("error", "HTTP %d" % response.status))
        return data

    def get(self, path: str):
        return self.request("GET", path)

    @staticmethod
    def quote(value: str) -> str:
        return urllib.parse.quote(value, safe="")
