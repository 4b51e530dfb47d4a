"""The hubble module's decisions without a node: the files it writes, the checks of its input, and the
certificates (a CA, one per node, relay, admin): issued once, kept while good, issued again when the CA changed,
a name changed or the end is near."""
import datetime
import json
import os
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ansible_collections.apiary.cluster.plugins.module_utils import hubble

NODES = [{"name": "node1", "ip": "10.77.101.11"}, {"name": "node2", "ip": "10.77.101.12"}]
RELAY = {"name": "node1", "ip": "10.77.101.11"}


def test_node_and_relay_config_follow_the_contract():
    assert hubble.node_config(True, 4095, "10.77.101.11", 4244, ["drop"], 9965, "/t") == {
        "enabled": True, "event_buffer_capacity": 4095, "listen_address": "10.77.101.11:4244", "metrics": ["drop"],
        "metrics_address": "10.77.101.11:9965", "tls": {"ca": "/t/ca.crt", "cert": "/t/server.crt", "key": "/t/server.key"}}
    off = hubble.node_config(False, 4095, "10.77.101.11", 4244, None, 9965, None)
    assert (off["enabled"], off["metrics"], off["metrics_address"], off["tls"]) == (False, [], None, None)
    etcd_tls = {"ca_file": "/e/ca.pem", "cert_file": "/e/node.pem", "key_file": "/e/node-key.pem"}
    assert hubble.relay_config("node1", "10.77.101.11", ["https://10.77.101.11:2379"], 4244, "/run/a", 4245, None,
                               "/t", etcd_tls) == {
        "node_name": "node1", "etcd_endpoints": ["https://10.77.101.11:2379"], "etcd_tls": etcd_tls, "peer_port": 4244,
        "socket": "/run/a/hubble-relay.sock", "listen_address": "10.77.101.11:4245", "ui_address": None,
        "tls": {"ca": "/t/ca.crt", "cert": "/t/relay.crt", "key": "/t/relay.key"}}


@pytest.mark.parametrize("value", [0, 4096, 5000, 65536, 131071, -1, "x", True, None])
def test_bad_event_buffer_capacity(value):
    with pytest.raises(ValueError):
        hubble.check_event_buffer_capacity(value)


def test_good_event_buffer_capacity():
    assert [hubble.check_event_buffer_capacity(v) for v in (1, 3, "4095", 65535)] == [1, 3, 4095, 65535]


def test_metric_names_and_l7_ones():
    assert hubble.check_metrics(["drop", "flows-to-world:any-drop", "bogus:x"]) == [(2, "bogus:x")]
    assert hubble.unsupported_metrics(["dns:query", "drop", "http"]) == ["dns:query", "http"]


def load(path):
    with open(path, "rb") as handle:
        return x509.load_pem_x509_certificate(handle.read())


def sans(cert):
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(ext.get_values_for_type(x509.DNSName)) + sorted(str(a) for a in ext.get_values_for_type(x509.IPAddress))


def test_certificates_are_issued_with_the_right_names_and_private_keys(tmp_path):
    out = str(tmp_path / "ca")
    issued = hubble.ensure_certificates(out, NODES, RELAY, 3650, 1095, check_mode=False)
    assert issued == {"ca": "missing", "node1": "the CA is new", "node2": "the CA is new", "relay": "the CA is new",
                      "admin": "the CA is new"}
    ca = load(os.path.join(out, "ca.crt"))
    node2 = load(os.path.join(out, "node2.crt"))
    assert node2.issuer == ca.subject
    assert sans(node2) == ["*.default.hubble-grpc.cluster.local", "node2", "10.77.101.12"]
    eku = node2.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    relay_eku = load(os.path.join(out, "relay.crt")).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(relay_eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    admin_eku = load(os.path.join(out, "admin.crt")).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(admin_eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for name in ("ca", "node1", "node2", "relay", "admin"):
        assert stat.S_IMODE(os.stat(os.path.join(out, name + ".key")).st_mode) == 0o600
    # Valid ones are kept: nothing issued, files untouched.
    before = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)}
    assert hubble.ensure_certificates(out, NODES, RELAY, 3650, 1095, check_mode=False) == {}
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)} == before


def test_check_mode_issues_nothing(tmp_path):
    out = str(tmp_path / "ca")
    assert set(hubble.ensure_certificates(out, NODES, None, 3650, 1095, check_mode=True)) == {
        "ca", "node1", "node2", "admin"}
    assert not os.path.exists(out)


def test_a_new_ca_a_new_node_ip_and_a_near_end_reissue(tmp_path):
    out = str(tmp_path / "ca")
    hubble.ensure_certificates(out, NODES, RELAY, 3650, 1095, check_mode=False)
    # Another CA (e.g. copied over): every certificate is no longer signed by it.
    os.unlink(os.path.join(out, "ca.crt"))
    assert set(hubble.ensure_certificates(out, NODES, RELAY, 3650, 1095, check_mode=False)) == {
        "ca", "node1", "node2", "relay", "admin"}
    ca = load(os.path.join(out, "ca.crt"))
    assert all(load(os.path.join(out, n + ".crt")).issuer == ca.subject for n in ("node1", "node2"))
    # node2 moved: only its certificate names the wrong address.
    moved = [NODES[0], {"name": "node2", "ip": "10.77.101.22"}]
    issued = hubble.ensure_certificates(out, moved, RELAY, 3650, 1095, check_mode=False)
    assert list(issued) == ["node2"] and "names" in issued["node2"]
    # A certificate 20 days from its end is issued again (30 days before).
    cert_pem, key_pem = hubble.issue("node1", 20, (ca, _ca_key(out)), ["node1", hubble.SERVER_WILDCARD],
                                     ["10.77.101.11"], server=True)
    hubble.write_private(os.path.join(out, "node1.crt"), cert_pem, 0o644)
    hubble.write_private(os.path.join(out, "node1.key"), key_pem, 0o600)
    issued = hubble.ensure_certificates(out, moved, RELAY, 3650, 1095, check_mode=False)
    assert list(issued) == ["node1"] and issued["node1"].startswith("expires on")
    end = load(os.path.join(out, "node1.crt")).not_valid_after_utc
    assert end - datetime.datetime.now(datetime.timezone.utc) > datetime.timedelta(days=1000)
    # A key that does not belong to its certificate.
    os.replace(os.path.join(out, "admin.key"), os.path.join(out, "relay.key"))
    assert hubble.ensure_certificates(out, moved, RELAY, 3650, 1095, check_mode=False) == {
        "admin": "its key is missing", "relay": "its key does not match"}


def _ca_key(out):
    from cryptography.hazmat.primitives import serialization
    with open(os.path.join(out, "ca.key"), "rb") as handle:
        return serialization.load_pem_private_key(handle.read(), None)


def test_config_json_is_stable_text():
    # The agent's restart trigger is the checksum of this text: the same settings give the same bytes.
    one = json.dumps(hubble.node_config(True, 4095, "10.0.0.1", 4244, ["drop"], 9965, None), sort_keys=True)
    two = json.dumps(hubble.node_config(True, 4095, "10.0.0.1", 4244, ["drop"], 9965, None), sort_keys=True)
    assert one == two
