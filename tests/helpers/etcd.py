"""Run a throwaway etcd for tests, inside a network namespace the test made (never the root one).

    with temp_netns() as ns, running_etcd(ns, tmp_path) as url:
        netns.call_in(ns, lambda: EtcdClient([url]).put("/k", "v"))

Only 127.0.0.1 inside that namespace is used; everything is stopped and removed on exit, also when
the test fails.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest

from apiary import netns

ETCD = shutil.which("etcd") or "/usr/bin/etcd"

# Tests that start etcd need root (ip netns) and the etcd binary.
requires_etcd = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(ETCD) or not shutil.which("nsenter"),
    reason="needs root, ip netns, nsenter and etcd",
)


@contextlib.contextmanager
def temp_netns(prefix: str = "apiary-t-"):
    """Create network namespace `<prefix><random>` with lo up; yield its name; delete it after."""
    name = prefix + secrets.token_hex(4)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _bind_ports(count: int):
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_ports(netns_name: str, count: int = 1):
    """Ports on 127.0.0.1 that nothing listens on inside the namespace (e.g. a dead endpoint)."""
    return netns.call_in(netns_name, _bind_ports, count)


def _healthy(url: str, context=None) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1, context=context) as resp:
            return b'"true"' in resp.read()
    except OSError:
        return False


@contextlib.contextmanager
def running_etcd(netns_name: str, tmp_path, timeout: float = 20.0, tls: dict | None = None, binary: str = ETCD):
    """Start a one-member etcd on 127.0.0.1 (unused ports) inside namespace `netns_name`, its data
    under tmp_path; wait until /health answers; yield the client URL; stop it on exit.

    tls: {"ca", "cert", "key", "client_cert", "client_key"} files: clients are served over https and
    must present a certificate of that CA (as the roles run etcd).
    Raft timing is shortened (heartbeat 50 ms, election 500 ms) so leases as short as 1 s work."""
    client_port, peer_port = free_ports(netns_name, 2)
    url = "%s://127.0.0.1:%d" % ("https" if tls else "http", client_port)
    peer = "http://127.0.0.1:%d" % peer_port
    base = os.path.join(str(tmp_path), "etcd-%s-%d" % (netns_name, client_port))
    os.makedirs(base)
    log_path = os.path.join(base, "etcd.log")
    cmd = ["nsenter", "--net=" + netns.path(netns_name), binary,
           "--name", "t", "--data-dir", os.path.join(base, "data"),
           "--listen-client-urls", url, "--advertise-client-urls", url,
           "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
           "--initial-cluster", "t=" + peer, "--initial-cluster-state", "new",
           "--heartbeat-interval", "50", "--election-timeout", "500",
           "--logger", "zap", "--log-outputs", "stderr"]
    context = None
    if tls:
        cmd += ["--client-cert-auth", "--trusted-ca-file", tls["ca"], "--cert-file", tls["cert"], "--key-file", tls["key"]]
        context = ssl.create_default_context(cafile=tls["ca"])
        context.load_cert_chain(tls["client_cert"], tls["client_key"])
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not netns.call_in(netns_name, _healthy, url, context):
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log_path, errors="replace") as log:
                    tail = log.read()[-2000:]
                raise RuntimeError("etcd in %s did not become healthy (exit %s):\n%s"
                                   % (netns_name, proc.poll(), tail))
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)
