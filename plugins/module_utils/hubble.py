# -*- coding: utf-8 -*-
# Copyright (c) Apiary developers
# Apache-2.0 (see galaxy.yml)
"""Hubble's files on a node and its certificates, for the hubble module.

- node_config() / relay_config(): the JSON the agent (<state_dir>/hubble.json) and the relay
  (<state_dir>/hubble-relay.json) read; the contract is docs/hubble.md ("Role and variables").
- Certificates (apiary_hubble_tls_generate): a CA, a server certificate per node, one for the relay
  (client of the nodes, server of `apiary observe`) and one for an admin/CLI client, issued on the
  controller with the `cryptography` package. A certificate is kept while it is signed by the current
  CA, names what it must name and is not near expiry; otherwise it is issued again.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

HUBBLE_METRICS = (
    "dns", "drop", "tcp", "flow", "flows-to-world", "icmp", "http", "port-distribution", "policy",
)
# The datapath sees L3/L4 only; Hubble derives these from L7 proxy records.
NEEDS_L7 = ("dns", "http")
# Cilium's hubble-event-buffer-capacity: one less than a power of two, at most 65535.
MAX_EVENT_BUFFER_CAPACITY = 65535
# As Cilium's certgen names the node certificates' wildcard (cluster "default").
SERVER_WILDCARD = "*.default.hubble-grpc.cluster.local"
RELAY_NAME = "*.hubble-relay.cluster.local"
ADMIN_NAME = "hubble-admin"
CA_NAME = "Apiary Hubble CA"
# A certificate this close to its end is issued again.
RENEW_BEFORE = datetime.timedelta(days=30)


def check_event_buffer_capacity(value):
    """The ring size: an int 2^n - 1 (1 ... 65535); ValueError with the reason otherwise."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number, got %r" % (value,))
    if isinstance(value, bool) or not 0 < number <= MAX_EVENT_BUFFER_CAPACITY or number & (number + 1):
        raise ValueError("%r must be one less than a power of two and at most %d (1, 3, 7, ..., 4095, ..., %d), "
                         "as Cilium's hubble-event-buffer-capacity" % (value, MAX_EVENT_BUFFER_CAPACITY,
                                                                        MAX_EVENT_BUFFER_CAPACITY))
    return number


def check_port(value):
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("must be a port number, got %r" % (value,))
    if isinstance(value, bool) or not 0 < number < 65536:
        raise ValueError("%r is not a port (1-65535)" % (value,))
    return number


def metric_name(metric):
    """Hubble allows options after a colon ("flows-to-world:any-drop"); the name is what counts."""
    return str(metric).split(":", 1)[0]


def check_metrics(metrics):
    """The names that are not Hubble metrics, as (index, value)."""
    return [(i, m) for i, m in enumerate(metrics) if metric_name(m) not in HUBBLE_METRICS]


def unsupported_metrics(metrics):
    return [m for m in metrics if metric_name(m) in NEEDS_L7]


def tls_files(tls_dir, name):
    """{ca, cert, key} paths of certificate `name` in a node's TLS folder."""
    return {"ca": os.path.join(tls_dir, "ca.crt"), "cert": os.path.join(tls_dir, name + ".crt"),
            "key": os.path.join(tls_dir, name + ".key")}


def node_config(enabled, event_buffer_capacity, node_ip, listen_port, metrics, metrics_port, tls_dir):
    """hubble.json: what the agent reads at start. metrics None: metrics are off."""
    return {
        "enabled": bool(enabled),
        "event_buffer_capacity": event_buffer_capacity,
        "listen_address": "%s:%d" % (node_ip, listen_port),
        "metrics": list(metrics or []),
        "metrics_address": "%s:%d" % (node_ip, metrics_port) if metrics is not None else None,
        "tls": tls_files(tls_dir, "server") if tls_dir else None,
    }


def relay_config(node_name, node_ip, etcd_endpoints, peer_port, run_dir, relay_port, ui_port, tls_dir,
                 etcd_tls=None):
    """hubble-relay.json: what `apiary hubble-relay --config FILE` reads. ui_port None: no page.
    etcd_tls: {ca_file, cert_file, key_file} for https:// etcd endpoints."""
    return {
        "node_name": node_name,
        "etcd_endpoints": list(etcd_endpoints),
        "etcd_tls": dict(etcd_tls) if etcd_tls else None,
        "peer_port": peer_port,
        "socket": os.path.join(run_dir, "hubble-relay.sock"),
        "listen_address": "%s:%d" % (node_ip, relay_port),
        "ui_address": "%s:%d" % (node_ip, ui_port) if ui_port else None,
        "tls": tls_files(tls_dir, "relay") if tls_dir else None,
    }


# --- certificates ---------------------------------------------------------------------------------------
def _crypto():
    """The cryptography package, imported when certificates are asked for only (nodes writing their
    hubble.json do not need it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _not_after(cert):
    end = getattr(cert, "not_valid_after_utc", None)
    return end if end is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def _read(path):
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        return handle.read()


def load_cert(path):
    x509 = _crypto()[0]
    data = _read(path)
    if data is None:
        return None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        return None


def _sans(cert):
    x509 = _crypto()[0]
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {("dns", n) for n in ext.get_values_for_type(x509.DNSName)}
    return names | {("ip", str(a)) for a in ext.get_values_for_type(x509.IPAddress)}


def wanted_sans(dns_names, ips):
    return {("dns", n) for n in dns_names} | {("ip", str(ipaddress.ip_address(a))) for a in ips}


def cert_problem(cert, key_pem, ca_cert, dns_names=(), ips=()):
    """Why a certificate must be issued again, or None when it is good."""
    x509, _hashes, serialization, ec, _eku, _name = _crypto()
    if cert is None:
        return "missing"
    if _not_after(cert) - _now() < RENEW_BEFORE:
        return "expires on %s" % _not_after(cert).date()
    if ca_cert is not None:
        if cert.issuer != ca_cert.subject:
            return "not issued by the current CA"
        try:
            ca_cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        except Exception:  # InvalidSignature, or a CA of another key type
            return "not signed by the current CA"
    if _sans(cert) != wanted_sans(dns_names, ips):
        return "names %s instead of %s" % (sorted(_sans(cert)), sorted(wanted_sans(dns_names, ips)))
    if key_pem is None:
        return "its key is missing"
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return "its key is not readable"
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, public) != \
            cert.public_key().public_bytes(serialization.Encoding.PEM, public):
        return "its key does not match"
    return None


def _new_key():
    _x509, _hashes, serialization, ec, _eku, _name = _crypto()
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return key, pem


def issue(common_name, days, ca=None, dns_names=(), ips=(), server=False, client=False):
    """(cert PEM, key PEM). ca=None: a self-signed CA; else ca=(ca cert, ca key) signs it."""
    x509, hashes, serialization, _ec, eku, name_oid = _crypto()
    key, key_pem = _new_key()
    subject = x509.Name([x509.NameAttribute(name_oid.COMMON_NAME, common_name)])
    now = _now()
    builder = (x509.CertificateBuilder().subject_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days)))
    if ca is None:
        builder = builder.issuer_name(subject).add_extension(x509.BasicConstraints(ca=True, path_length=0),
                                                             critical=True)
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
        signer = key
    else:
        ca_cert, signer = ca
        builder = builder.issuer_name(ca_cert.subject).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True)
        usages = ([eku.SERVER_AUTH] if server else []) + ([eku.CLIENT_AUTH] if client else [])
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        names = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(signer, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def certificate_plan(nodes, relay_node):
    """Every certificate to hold, as name -> (common name, dns names, ips, server, client).
    nodes: [{name, ip}]; relay_node: {name, ip} or None."""
    plan = {}
    for node in nodes:
        plan[node["name"]] = (node["name"], [node["name"], SERVER_WILDCARD], [node["ip"]], True, False)
    if relay_node is not None:
        plan["relay"] = ("hubble-relay", [relay_node["name"], RELAY_NAME], [relay_node["ip"]], True, True)
    plan["admin"] = (ADMIN_NAME, [ADMIN_NAME], [], False, True)
    return plan


def write_private(path, data, mode):
    """Write through a temporary file in the same folder, then rename: never half a key."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def ensure_certificates(directory, nodes, relay_node, ca_days, days, check_mode):
    """Issue what is missing or bad in `directory` (<name>.crt / <name>.key, ca.crt / ca.key).
    Returns {name: reason} of what was (or, in check mode, would be) issued."""
    x509, _h, serialization, _ec, _eku, _n = _crypto()
    issued = {}
    ca_crt, ca_key = os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key")
    ca_cert = load_cert(ca_crt)
    reason = cert_problem(ca_cert, _read(ca_key), None)
    if reason is not None:
        issued["ca"] = reason
        ca_cert = None
        if not check_mode:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            cert_pem, key_pem = issue(CA_NAME, ca_days)
            write_private(ca_key, key_pem, 0o600)
            write_private(ca_crt, cert_pem, 0o644)
            ca_cert = x509.load_pem_x509_certificate(cert_pem)
    ca_signer = serialization.load_pem_private_key(_read(ca_key), None) if ca_cert is not None else None
    for name, (common, dns_names, ips, server, client) in sorted(certificate_plan(nodes, relay_node).items()):
        crt, key = os.path.join(directory, name + ".crt"), os.path.join(directory, name + ".key")
        # A new CA (or one only planned in check mode) makes every certificate new.
        reason = "the CA is new" if ca_cert is None or "ca" in issued else \
            cert_problem(load_cert(crt), _read(key), ca_cert, dns_names, ips)
        if reason is None:
            continue
        issued[name] = reason
        if not check_mode:
            cert_pem, key_pem = issue(common, days, (ca_cert, ca_signer), dns_names, ips, server, client)
            write_private(key, key_pem, 0o600)
            write_private(crt, cert_pem, 0o644)
    return issued
