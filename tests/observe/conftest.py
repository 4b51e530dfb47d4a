"""Shared pieces of the observe tests: synthetic decoded events (docs/hubble.md §1), a lookup with the
seed's pods, throwaway certificates, and running code inside a scratch network namespace."""
from __future__ import annotations

import datetime
import os

import pytest

from apiary import netns
from apiary.observe.flow import StaticLookup

NS = "network-policy-test"
NETPOD = {"ID": 101, "identity": 12345, "namespace": NS, "pod_name": "netpod", "labels": ["k8s:app=netpod"],
          "node_name": "node1", "ip": "10.233.64.10"}
FRONTEND = {"ID": 202, "identity": 23456, "namespace": NS, "pod_name": "frontend-6d8f9c-abcde",
            "labels": ["k8s:app=frontend", "k8s:tier=web"], "node_name": "node2"}
BACKEND = {"ID": 303, "identity": 34567, "namespace": NS, "pod_name": "backend-7c9d-xyz12",
           "labels": ["k8s:app=backend"], "node_name": "node1", "ip": "10.233.64.20"}
OTHER = {"ID": 404, "identity": 45678, "namespace": "default", "pod_name": "client", "labels": ["k8s:app=client"],
         "node_name": "node3"}


def make_lookup() -> StaticLookup:
    return StaticLookup(
        endpoints={"10.233.64.10": NETPOD, "10.233.65.11": FRONTEND, "10.233.64.20": BACKEND, "10.233.66.5": OTHER},
        services={"10.96.0.50:80/TCP": {"name": "frontend", "namespace": NS}},
        cookies={4242: BACKEND})


def event(**changes) -> dict:
    """A decoded event with every key of apiary.observe.events.decode(); a TCP SYN netpod -> frontend."""
    base = {"type": "trace", "event_type": 4, "sub_type": 0, "time": 1795450000.5, "verdict": "FORWARDED",
            "drop_reason": 0, "drop_reason_desc": "", "observation_point": "to-endpoint", "endpoint_id": 202,
            "traffic_direction": "ingress", "is_reply": False, "src_identity": 12345, "dst_identity": 23456,
            "src_ip": "10.233.64.10", "dst_ip": "10.233.65.11", "protocol": "TCP", "src_port": 41000,
            "dst_port": 80, "icmp_type": None, "icmp_code": None, "tcp_flags": ["SYN"], "orig_ip": None,
            "orig_port": None, "netns_cookie": 0, "ifindex": 17, "length": 74}
    base.update(changes)
    return base


def drop(**changes) -> dict:
    return event(**dict({"type": "drop", "event_type": 1, "sub_type": 133, "verdict": "DROPPED", "drop_reason": 133,
                         "drop_reason_desc": "Policy denied", "observation_point": ""}, **changes))


@pytest.fixture
def lookup():
    return make_lookup()


# --- network namespace -----------------------------------------------------------------------------
requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ip netns)")


in_netns = netns.call_in_thread  # a thread in a scratch namespace (servers and clients of the tests)


@pytest.fixture
def scratch_ns():
    from tests.helpers.etcd import temp_netns

    with temp_netns("apiary-t-obs-") as name:
        subprocess_lo(name)
        yield name


def subprocess_lo(name: str) -> None:
    import subprocess

    # 127.0.0.2-4 stand for nodes' addresses: all of 127/8 is local on lo.
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)


# --- certificates ----------------------------------------------------------------------------------
def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write(path, key, cert):
    from cryptography.hazmat.primitives import serialization

    with open(path + ".key", "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(path + ".crt", "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def _cert(name, key, issuer_name, issuer_key, ca=False, client=False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path):
    """A CA with a server and a client certificate, and a client certificate from another CA:
    {"server": {ca, cert, key}, "client": {...}, "no_cert": {ca}, "other_ca": {...}}."""
    out = {}
    for ca_name in ("ca", "other-ca"):
        ca_key = _key()
        _write(str(tmp_path / ca_name), ca_key, _cert(ca_name, ca_key, ca_name, ca_key, ca=True))
        out[ca_name] = ca_key
    paths = {}
    for name, ca_name in (("server", "ca"), ("client", "ca"), ("stranger", "other-ca")):
        key = _key()
        _write(str(tmp_path / name), key, _cert(name, key, ca_name, out[ca_name]))
        paths[name] = {"ca": str(tmp_path / "ca.crt"), "cert": str(tmp_path / (name + ".crt")),
                       "key": str(tmp_path / (name + ".key"))}
    paths["no_cert"] = {"ca": str(tmp_path / "ca.crt"), "cert": None, "key": None}
    return paths
