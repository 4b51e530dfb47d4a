"""A read-only OCI registry for the lab's images (the OCI layout lab/images.py writes).

    python -m lab.registry --root build/images --listen 10.77.101.1:5000 [--cert C --key K]

The lab runs it in its "world" namespace, which stands for the internet; every node's containerd uses it
as the server of every registry (certs.d/_default/hosts.toml: `server = "http://10.77.101.1:5000"`, see
docs/lab-images.md), so `image: nginx` with its implicit `:latest` (imagePullPolicy Always) is pulled as
from Docker Hub. Served (OCI distribution spec,
pull side only):

    GET      /v2/                                      200 {}
    GET      /v2/_catalog                              the repositories
    GET|HEAD /v2/<name>/manifests/<tag or digest>      Content-Type: the manifest's media type
    GET|HEAD /v2/<name>/blobs/<digest>                 single byte ranges too (206)

A mirror is asked with `?ns=<registry>` (docker.io, registry.k8s.io), so `library/nginx` means
docker.io/library/nginx; without it a name matches any registry's repository of that name.

An image the lab does not have is answered 403 DENIED, not 404, with the list of the lab's images both
in the OCI error body and as the status line's reason phrase. containerd resolves a reference with a
HEAD request (core/remotes/docker/resolver.go, Resolve): a 404 becomes "<ref>: not found", its body never
read; any other 4xx becomes ErrUnexpectedStatus (core/remotes/errors), printed as "unexpected status from
HEAD request to <url>: <resp.Status>", resp.Status being the status line after the protocol ("403 <reason
phrase>"). A HEAD answer has no body, so the reason phrase is what every containerd 2.x shows; since
containerd PR #13547 (merged 2026-07; the lab's 2.4.2 has it) a HEAD answered 403 is followed by a GET whose OCI
error body is appended ("denied: <message>"; only DENIED, UNAUTHORIZED, UNAVAILABLE, UNSUPPORTED and
TOOMANYREQUESTS print by name, others as "unknown"). 403 is also not retried (408, 429 and 5xx are; 405
turns HEAD into GET).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import ssl
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler

from apiary.observe.server import HttpServer

from lab import images as oci

PATH_RE = re.compile(r"^/v2/(?P<name>[a-z0-9]+(?:[._/-][a-z0-9]+)*)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")
RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")
CHUNK = 1 << 20


def split_name(name: str) -> tuple[str, str, str]:
    """docker.io/library/nginx:latest -> (docker.io, library/nginx, latest)."""
    host, _, rest = name.partition("/")
    repo, _, tag = rest.rpartition(":")
    return host, repo, tag


class Layout:
    """The OCI layout's index, read again when index.json changes (a rebuild needs no restart)."""

    def __init__(self, root: str):
        self.root = root
        self._lock = threading.Lock()
        self._stamp = None
        self._images: dict[str, dict] = {}

    def images(self) -> dict[str, dict]:
        st = os.stat(os.path.join(self.root, "index.json"))
        with self._lock:
            if self._stamp != (st.st_mtime_ns, st.st_size, st.st_ino):
                self._images = oci.read_index(self.root)
                self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            return self._images

    def names(self) -> list[str]:
        return sorted(self.images())

    def repository_known(self, ns: str | None, repo: str) -> bool:
        return any(split_name(n)[1] == repo and (ns is None or split_name(n)[0] == ns) for n in self.images())

    def manifest(self, ns: str | None, repo: str, ref: str) -> dict | None:
        """The descriptor of repo's manifest by tag or digest, None if the lab has no such image."""
        for name, desc in sorted(self.images().items()):
            host, name_repo, tag = split_name(name)
            if name_repo == repo and (ns is None or host == ns) and ref in (tag, desc["digest"]):
                return desc
        return None

    def blob(self, digest: str) -> str | None:
        try:
            path = oci.blob_path(self.root, digest)
        except ValueError:
            return None
        return path if os.path.isfile(path) else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: containerd fetches many blobs over one connection
    server_version = "apiary-lab-registry"
    layout: Layout  # set by make_server

    def do_GET(self):
        self.answer(body=True)

    def do_HEAD(self):
        self.answer(body=False)

    def answer(self, body: bool):
        url = urllib.parse.urlsplit(self.path)
        ns = urllib.parse.parse_qs(url.query).get("ns", [None])[0]
        if url.path in ("/v2", "/v2/"):
            return self.send_json(200, {}, body)
        if url.path == "/v2/_catalog":
            repos = sorted({split_name(n)[1] for n in self.layout.names()})
            return self.send_json(200, {"repositories": repos}, body)
        match = PATH_RE.match(url.path)
        if not match:
            return self.send_error_json(404, "NAME_INVALID", "not a registry API path: %s" % url.path, body)
        repo, kind, ref = match.group("name", "kind", "ref")
        if kind == "manifests":
            desc = self.layout.manifest(ns, repo, ref)
            if desc is None:
                return self.unknown_image(ns, repo, ref, body)
            return self.send_blob(oci.blob_path(self.layout.root, desc["digest"]), desc["digest"],
                                  desc["mediaType"], body)
        if not self.layout.repository_known(ns, repo):
            return self.unknown_image(ns, repo, ref, body)
        path = self.layout.blob(ref)
        if path is None:
            return self.send_error_json(404, "BLOB_UNKNOWN", "blob unknown to registry: %s" % ref, body)
        return self.send_blob(path, ref, "application/octet-stream", body)

    def unknown_image(self, ns, repo, ref, body):
        wanted = "%s/%s%s%s" % (ns, repo, "@" if ":" in ref else ":", ref) if ns else "%s:%s" % (repo, ref)
        message = "%s is not an image of the Apiary lab; the lab has: %s" % (wanted, ", ".join(self.layout.names()))
        # 403 DENIED (the spec's pair) with the message as the reason phrase too: see the module's docstring.
        self.send_error_json(403, "DENIED", message, body, reason=message,
                             detail={"image": wanted, "images": self.layout.names()})

    def send_error_json(self, status, code, message, body, reason=None, detail=None):
        error = {"code": code, "message": message}
        if detail is not None:
            error["detail"] = detail
        self.send_json(status, {"errors": [error]}, body, reason=reason)

    def send_json(self, status, obj, body, reason=None):
        data = json.dumps(obj, sort_keys=True).encode() + b"\n"
        # The status line is latin-1 and one line: keep the reason printable ASCII.
        self.send_response(status, reason and re.sub(r"[^\x20-\x7e]", "?", reason))
        self.send_header("Content-Type", "application/json")
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def send_blob(self, path, digest, media_type, body):
        size = os.path.getsize(path)
        start, end = 0, size - 1
        ranged = RANGE_RE.match(self.headers.get("Range", ""))
        if ranged:
            start = int(ranged.group(1))
            end = min(int(ranged.group(2)), size - 1) if ranged.group(2) else size - 1
            if start > end:
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % size)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Type", media_type)
        self.send_header("Docker-Content-Digest", digest)
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if ranged:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
        self.end_headers()
        if not body:
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)


class Server(HttpServer):
    """The project's HttpServer (no reverse DNS lookup at bind), over IPv6 too, with optional TLS whose
    handshake happens in the connection's thread, not in the accepting one. The lab depends on the
    product: runtime/src is on the path (the lab role and the tests put it there)."""

    def __init__(self, address, handler, tls_context: ssl.SSLContext | None = None):
        self.tls_context = tls_context
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def get_request(self):
        sock, addr = super().get_request()
        if self.tls_context is not None:
            sock = self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        # A client that goes away mid-blob (a cancelled pull) is worth a line, not a traceback.
        print("registry: connection from %s ended: %s" % (client_address[0], sys.exc_info()[1]), file=sys.stderr)


def make_server(root: str, host: str, port: int, cert: str | None = None, key: str | None = None) -> Server:
    """A registry serving the OCI layout `root` on host:port (port 0: any free port), HTTPS if `cert`."""
    layout = Layout(root)
    layout.images()  # fail now on a missing or broken layout, not at the first pull
    context = None
    if cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
    handler = type("LayoutHandler", (Handler,), {"layout": layout})
    return Server((host, port), handler, context)


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % value)
    return host.strip("[]"), int(port)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Serve the lab's OCI image layout read-only.")
    parser.add_argument("--root", default="build/images", help="OCI image layout (make lab-images)")
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 5000), help="HOST:PORT")
    parser.add_argument("--cert", help="TLS certificate (PEM); plain HTTP without it")
    parser.add_argument("--key", help="the certificate's key (PEM)")
    args = parser.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    if not os.path.exists(os.path.join(args.root, "index.json")):
        parser.error("no OCI image layout at %s (make lab-images writes build/images)" % args.root)
    server = make_server(args.root, *args.listen, cert=args.cert, key=args.key)
    print("registry: %s://%s:%d serves %s" % ("https" if args.cert else "http", *server.server_address[:2],
                                                 ", ".join(server.RequestHandlerClass.layout.names())),
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
