"""lab/registry.py against a real HTTP client, on 127.0.0.1 (a free port): manifests and blobs with the
digests, sizes and media types of the layout; an image the lab does not have is refused with the list of
the images it has, in the status line (what containerd shows) and in the OCI error body."""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import ssl
import subprocess
import tempfile
import threading

import pytest

from lab import images, registry
from tests.lab_images.conftest import NAMES


@contextlib.contextmanager
def serving(layout, **tls):
    server = registry.make_server(layout, "127.0.0.1", 0, **tls)
    server.RequestHandlerClass.log_message = lambda *a: None  # quiet test output
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def port(layout):
    with serving(layout) as p:
        yield p


def request(port, method, path, headers=None, context=None):
    """(status, reason, headers, body) of one request."""
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.reason, resp.headers, resp.read()
    finally:
        conn.close()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_api_root(port):
    status, _reason, headers, body = request(port, "GET", "/v2/")
    assert status == 200 and json.loads(body) == {}
    assert headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize("name", sorted(NAMES.values()))
def test_manifest_and_blobs_of_each_image(layout, port, name):
    host, repo, tag = registry.split_name(name)
    desc = images.read_index(layout)[name]

    status, _r, headers, body = request(port, "HEAD", "/v2/%s/manifests/%s?ns=%s" % (repo, tag, host))
    assert status == 200 and body == b""
    assert headers["Docker-Content-Digest"] == desc["digest"]
    assert int(headers["Content-Length"]) == desc["size"]
    assert headers["Content-Type"] == images.MEDIA_MANIFEST

    # By tag and by digest, with and without ?ns= (a client talking to the registry directly).
    for path in ("/v2/%s/manifests/%s?ns=%s" % (repo, tag, host), "/v2/%s/manifests/%s" % (repo, desc["digest"]),
                 "/v2/%s/manifests/%s" % (repo, tag)):
        status, _r, headers, manifest = request(port, "GET", path)
        assert status == 200, path
        assert digest_of(manifest) == desc["digest"] == headers["Docker-Content-Digest"], path
        assert len(manifest) == desc["size"]

    for blob in [json.loads(manifest)["config"], *json.loads(manifest)["layers"]]:
        path = "/v2/%s/blobs/%s?ns=%s" % (repo, blob["digest"], host)
        status, _r, headers, data = request(port, "GET", path)
        assert status == 200
        assert digest_of(data) == blob["digest"] == headers["Docker-Content-Digest"]
        assert int(headers["Content-Length"]) == blob["size"] == len(data)
        status, _r, headers, data = request(port, "HEAD", path)
        assert (status, data, int(headers["Content-Length"])) == (200, b"", blob["size"])


def test_blob_byte_range(layout, port):
    manifest = json.loads(images.read_blob(layout, images.read_index(layout)[NAMES["busybox"]]["digest"]))
    layer = manifest["layers"][0]
    whole = images.read_blob(layout, layer["digest"])
    status, _r, headers, data = request(port, "GET", "/v2/library/busybox/blobs/" + layer["digest"],
                                        {"Range": "bytes=100-199"})
    assert (status, data) == (206, whole[100:200])
    assert headers["Content-Range"] == "bytes 100-199/%d" % len(whole)
    status, _r, _h, data = request(port, "GET", "/v2/library/busybox/blobs/" + layer["digest"],
                                   {"Range": "bytes=%d-" % (len(whole) - 5)})
    assert (status, data) == (206, whole[-5:])


def test_catalog(port):
    status, _r, _h, body = request(port, "GET", "/v2/_catalog")
    assert status == 200
    assert json.loads(body)["repositories"] == ["library/busybox", "library/nginx", "nicolaka/netshoot", "pause"]


@pytest.mark.parametrize("path, wanted", [
    ("/v2/library/redis/manifests/latest?ns=docker.io", "docker.io/library/redis:latest"),
    ("/v2/library/nginx/manifests/1.25?ns=docker.io", "docker.io/library/nginx:1.25"),
    # nginx is the lab's docker.io/library/nginx, not quay.io's.
    ("/v2/library/nginx/manifests/latest?ns=quay.io", "quay.io/library/nginx:latest"),
    ("/v2/library/redis/blobs/sha256:%s?ns=docker.io" % ("a" * 64), "docker.io/library/redis@sha256:" + "a" * 64),
])
def test_unknown_image_is_refused_naming_the_lab_images(port, path, wanted):
    # HEAD first: it is what containerd resolves with, and a HEAD answer has no body, only a status line.
    status, reason, _h, body = request(port, "HEAD", path)
    assert (status, body) == (403, b"")
    assert wanted in reason
    for name in NAMES.values():
        assert name in reason
    status, reason, headers, body = request(port, "GET", path)
    assert status == 403 and headers["Content-Type"] == "application/json"
    [error] = json.loads(body)["errors"]
    assert error["code"] == "DENIED"
    assert wanted in error["message"]
    assert error["detail"] == {"image": wanted, "images": sorted(NAMES.values())}


def test_unknown_blob_of_a_known_image_is_404(port):
    status, _r, _h, body = request(port, "GET", "/v2/library/nginx/blobs/sha256:" + "0" * 64)
    assert status == 404
    assert json.loads(body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    status, _r, _h, _b = request(port, "GET", "/v2/library/nginx/blobs/not-a-digest")
    assert status == 404


def test_https_with_the_given_certificate(layout):
    with tempfile.TemporaryDirectory(prefix="apiary-t-tls-") as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", key,
                        "-out", cert, "-subj", "/CN=apiary-lab-registry", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
        with serving(layout, cert=cert, key=key) as tls_port:
            context = ssl.create_default_context(cafile=cert)
            status, _r, headers, body = request(tls_port, "GET", "/v2/library/nginx/manifests/latest", context=context)
            assert status == 200
            assert digest_of(body) == headers["Docker-Content-Digest"] == \
                images.read_index(layout)[NAMES["nginx"]]["digest"]
            # Plain HTTP to the TLS port gets no registry answer.
            with pytest.raises((http.client.HTTPException, ConnectionError)):
                request(tls_port, "GET", "/v2/")
