"""A real kube-apiserver on a real etcd for tests, inside a throwaway network namespace.

    with running_kube_apiserver(tmp_path) as cluster, cluster.inside():
        api = client.api_client(cluster.kubeconfig)     # admin (O=system:masters), TLS both ways
        ...
        cluster.stop(); cluster.start()                  # the same API server again, same port and data
        with cluster.extra_server() as other: ...        # a second API server on the same etcd

Both listen on 127.0.0.1 inside namespace `apiary-t-<random>` and nowhere else; the host's root
namespace is never touched. `inside()` moves the calling thread (and the threads it starts, e.g. a
watcher's) into that namespace and back. Processes, the namespace and every file are removed on
exit, also when the test fails. Binaries: tests/helpers/upstream.py (etcd falls back to Debian's
/usr/bin/etcd until the upstream one is built).
"""
from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from apiary import netns
from tests.helpers import upstream
from tests.helpers.etcd import free_ports, temp_netns

SERVICE_CIDR = "10.233.0.0/18"
DEBIAN_ETCD = "/usr/bin/etcd"


def etcd_binary() -> str:
    try:
        return upstream.binary("etcd")
    except RuntimeError:
        if os.path.exists(DEBIAN_ETCD):
            return DEBIAN_ETCD
        raise


def missing() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    for tool in ("ip", "nsenter"):
        if not shutil.which(tool):
            return "needs %s" % tool
    try:
        upstream.binary("kube-apiserver")
        etcd_binary()
    except RuntimeError as exc:
        return str(exc)
    return None


# --- certificates -------------------------------------------------------------------------------

def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: x509.Name, key, issuer_cert=None, issuer_key=None, ca=False, server_names=(),
          client=False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                        critical=True)
    else:
        usages = ([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH] if server_names or not client else []) + \
            ([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names:
        alt = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in server_names]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(parts)


def make_pki(directory: str) -> dict:
    """A CA, the API server's serving certificate (127.0.0.1 and the Service names), the service
    account signing key, and an admin client certificate (O=system:masters). Returns file paths."""
    files = {}

    def write(name: str, data: bytes) -> str:
        path = os.path.join(directory, name)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(data)
        files[name] = path
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(_name("apiary-test-ca"), ca_key, ca=True)
    write("ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    first_service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
    for name, subject, extra in (
            ("apiserver", _name("kube-apiserver"),
             {"server_names": ("127.0.0.1", first_service_ip, "localhost", "kubernetes", "kubernetes.default",
                               "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")}),
            ("admin", _name("kubernetes-admin", "system:masters"), {"client": True}),
            # etcd's gateway connects to its own gRPC server with the serving certificate: both usages.
            ("etcd", _name("etcd-member"), {"server_names": ("127.0.0.1",), "client": True})):
        key = ec.generate_private_key(ec.SECP256R1())
        write(name + ".key", _pem_key(key))
        write(name + ".crt", _cert(subject, key, ca, ca_key, **extra).public_bytes(serialization.Encoding.PEM))
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write("sa.key", _pem_key(sa_key))
    write("sa.pub", sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return files


def write_kubeconfig(path: str, server: str, pki: dict) -> str:
    """A kubeconfig as kubeadm's admin.conf: the CA and the admin client certificate inline."""
    def inline(name):
        with open(pki[name], "rb") as f:
            return base64.b64encode(f.read()).decode()

    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "admin@apiary-test",
        "clusters": [{"name": "apiary-test", "cluster": {"server": server,
                                                         "certificate-authority-data": inline("ca.crt")}}],
        "users": [{"name": "admin", "user": {"client-certificate-data": inline("admin.crt"),
                                             "client-key-data": inline("admin.key")}}],
        "contexts": [{"name": "admin@apiary-test", "context": {"cluster": "apiary-test", "user": "admin"}}],
    }
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        yaml.safe_dump(config, f)
    return path


# --- processes ----------------------------------------------------------------------------------

def _stop(proc: subprocess.Popen | None, sig=signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: str, size: int = 3000) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-size:]


def _get(url: str, context: ssl.SSLContext | None = None, data: bytes | None = None):
    """(status, body) of a GET (POST with data) from inside the namespace; status 0 when nothing answers."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


class ApiServerProcess:
    """One kube-apiserver process on a fixed port (stop() and start() again keep the port)."""

    def __init__(self, cluster: "KubeCluster", port: int, name: str):
        self.cluster, self.port, self.name = cluster, port, name
        self.url = "https://127.0.0.1:%d" % port
        self.log_path = os.path.join(cluster.directory, name + ".log")
        self.kubeconfig = write_kubeconfig(os.path.join(cluster.directory, name + ".kubeconfig"),
                                           self.url, cluster.pki)
        self.proc: subprocess.Popen | None = None

    def command(self) -> list:
        pki = self.cluster.pki
        return ["nsenter", "--net=" + netns.path(self.cluster.netns), upstream.binary("kube-apiserver"),
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port=%d" % self.port,
                "--etcd-servers=" + self.cluster.etcd_url,
                "--service-cluster-ip-range=" + SERVICE_CIDR,
                "--authorization-mode=Node,RBAC",
                "--client-ca-file=" + pki["ca.crt"],
                "--tls-cert-file=" + pki["apiserver.crt"], "--tls-private-key-file=" + pki["apiserver.key"],
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file=" + pki["sa.pub"],
                "--service-account-signing-key-file=" + pki["sa.key"],
                # No controller manager makes the namespaces' "default" service accounts.
                "--disable-admission-plugins=ServiceAccount",
                # Compaction is the tests' to decide (compact_etcd), not every 5 minutes.
                "--etcd-compaction-interval=0",
                # The "kubernetes" Service's endpoints may not be a loopback address; nothing here needs them.
                "--endpoint-reconciler-type=none",
                "--profiling=false"]

    def start(self, timeout: float = 90.0) -> "ApiServerProcess":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        context = self.cluster.ssl_context()
        while netns.call_in_thread(self.cluster.netns, _get, self.url + "/readyz", context)[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("kube-apiserver %s did not become ready (exit %s):\n%s"
                                   % (self.name, self.proc.returncode, _tail(self.log_path)))
            time.sleep(0.25)
        return self

    def stop(self) -> None:
        _stop(self.proc)


class KubeCluster:
    """etcd and the API server(s) of one test, in one network namespace."""

    def __init__(self, netns_name: str, directory: str):
        self.netns = netns_name
        self.directory = directory
        self.pki = make_pki(directory)
        self.etcd_proc: subprocess.Popen | None = None
        self.etcd_url = ""
        self.servers: list[ApiServerProcess] = []
        self.main: ApiServerProcess | None = None
        self.controller_manager: subprocess.Popen | None = None

    @property
    def kubeconfig(self) -> str:
        return self.main.kubeconfig

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.pki["ca.crt"])
        context.load_cert_chain(self.pki["admin.crt"], self.pki["admin.key"])
        return context

    def start_etcd(self, timeout: float = 30.0) -> None:
        client_port, peer_port = free_ports(self.netns, 2)
        self.etcd_url = "http://127.0.0.1:%d" % client_port
        peer = "http://127.0.0.1:%d" % peer_port
        log_path = os.path.join(self.directory, "etcd.log")
        cmd = ["nsenter", "--net=" + netns.path(self.netns), etcd_binary(),
               "--name", "t", "--data-dir", os.path.join(self.directory, "etcd-data"),
               "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", "t=" + peer, "--initial-cluster-state", "new",
               "--logger", "zap", "--log-outputs", "stderr"]
        with open(log_path, "wb") as log:
            self.etcd_proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while b'"true"' not in netns.call_in_thread(self.netns, _get, self.etcd_url + "/health")[1]:
            if self.etcd_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("etcd did not become healthy (exit %s):\n%s"
                                   % (self.etcd_proc.poll(), _tail(log_path)))
            time.sleep(0.1)

    def add_server(self, name: str) -> ApiServerProcess:
        server = ApiServerProcess(self, free_ports(self.netns, 1)[0], name)
        self.servers.append(server)
        return server.start()

    def start_controller_manager(self, controllers: str = "endpointslice") -> None:
        """The upstream kube-controller-manager with just `controllers` (the EndpointSlice controller
        makes Services' slices from the pods they select), against the main API server, serving nothing."""
        log_path = os.path.join(self.directory, "kube-controller-manager.log")
        cmd = ["nsenter", "--net=" + netns.path(self.netns), upstream.binary("kube-controller-manager"),
               "--kubeconfig", self.kubeconfig, "--controllers", controllers, "--leader-elect=false",
               "--secure-port=0"]
        with open(log_path, "ab") as log:
            self.controller_manager = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                       stdin=subprocess.DEVNULL, start_new_session=True)
        time.sleep(0.5)
        if self.controller_manager.poll() is not None:
            raise RuntimeError("kube-controller-manager exited (%s):\n%s"
                               % (self.controller_manager.returncode, _tail(log_path)))

    # --- what tests do with it ----------------------------------------------------------------
    def stop(self) -> None:
        """Stop the main API server (etcd keeps running)."""
        self.main.stop()

    def start(self) -> None:
        """Start the main API server again, on the same port and data."""
        self.main.start()

    @contextlib.contextmanager
    def extra_server(self):
        """A second API server on the same etcd, e.g. to change objects while the main one is down."""
        server = self.add_server("apiserver-%d" % len(self.servers))
        try:
            yield server
        finally:
            server.stop()

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision (what the API server does every 5
        minutes), so watches from older resourceVersions get 410 Gone. Returns the revision."""
        status, body = netns.call_in_thread(self.netns, _get, self.etcd_url + "/v3/kv/range",
                                            None, json.dumps({"key": "AA=="}).encode())
        assert status == 200, body
        revision = int(json.loads(body)["header"]["revision"])
        status, body = netns.call_in_thread(self.netns, _get, self.etcd_url + "/v3/kv/compaction", None,
                                            json.dumps({"revision": str(revision), "physical": True}).encode())
        assert status == 200, body
        return revision

    def kubectl(self, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
        """Upstream kubectl against the main API server, inside the namespace."""
        cmd = ["nsenter", "--net=" + netns.path(self.netns), upstream.binary("kubectl"),
               "--kubeconfig", self.kubeconfig, *args]
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)

    @contextlib.contextmanager
    def proxy(self):
        """A TCP proxy to the main API server (TLS passes through it); yields it with its own
        kubeconfig. Its cut() drops every open connection, as a network failure would."""
        proxy = TcpProxy(self.netns, self.main.port)
        proxy.kubeconfig = write_kubeconfig(os.path.join(self.directory, "proxy-%d.kubeconfig" % proxy.port),
                                            "https://127.0.0.1:%d" % proxy.port, self.pki)
        try:
            yield proxy
        finally:
            proxy.close()

    @contextlib.contextmanager
    def inside(self):
        """Run the calling thread (and threads it starts) in the cluster's namespace; back after."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            netns.enter(self.netns)
            try:
                yield self
            finally:
                netns.enter("/proc/%d/fd/%d" % (os.getpid(), own))
        finally:
            os.close(own)

    def close(self) -> None:
        _stop(self.controller_manager)
        for server in self.servers:
            server.stop()
        _stop(self.etcd_proc)


class TcpProxy:
    """127.0.0.1:<port> -> 127.0.0.1:<target> inside a namespace, with cut() to drop its connections."""

    def __init__(self, netns_name: str, target: int):
        self.netns, self.target = netns_name, target
        self.listener = netns.call_in_thread(netns_name, socket.create_server, ("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        self.accepted = 0
        threading.Thread(target=self._serve, name="test-proxy", daemon=True).start()

    def _serve(self) -> None:
        netns.enter(self.netns)  # the connections to the target are made from here
        while True:
            try:
                downstream, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return  # closed
            with self.lock:
                self.accepted += 1
                self.open += [downstream, upstream]
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> int:
        """Drop every open connection; returns how many were open."""
        with self.lock:
            sockets, self.open = self.open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return len(sockets) // 2

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.cut()


@contextlib.contextmanager
def running_kube_apiserver(base_dir: str | None = None):
    """etcd + kube-apiserver in a new network namespace; yields the KubeCluster; removes it all after."""
    directory = tempfile.mkdtemp(prefix="apiary-kube-", dir=base_dir)
    try:
        with temp_netns() as ns:
            cluster = KubeCluster(ns, directory)
            try:
                cluster.start_etcd()
                cluster.main = cluster.add_server("apiserver")
                yield cluster
            finally:
                cluster.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
