"""The apiary.cluster.hubble module run by Ansible (local connection, temporary folders; no network): check mode
and diff change nothing, a second run changes nothing, disabling says so and removes the relay's file, bad
input fails naming the option, and certificates are issued once."""
from __future__ import annotations

import json
import os
import re

import yaml

from .conftest import run_on_controller

MODULE = "apiary.cluster.hubble"


def params(tmp_path, **changes):
    base = dict(state_dir=str(tmp_path / "state"), run_dir=str(tmp_path / "run"), node_name="node1",
                node_ip="10.77.101.11", enabled=True, metrics_enabled=True, metrics=["dns", "drop", "flow", "http"],
                tls_dir=str(tmp_path / "tls"), relay=True, ui=True, etcd_endpoints=["http://10.77.101.11:2379"])
    base.update(changes)
    return base


def result(run):
    """The module's result: what the ad-hoc command prints after "localhost | STATUS =>" (YAML here)."""
    _rc, out = run
    match = re.search(r"^localhost \| \w+!? => ?", out, re.M)
    assert match, out
    return yaml.safe_load(out[match.end():])


def read(path):
    with open(path) as handle:
        return json.load(handle)


def test_writes_idempotently_with_check_mode_and_diff(tmp_path):
    state = tmp_path / "state"
    run = run_on_controller(MODULE, params(tmp_path), "--check", "--diff")
    assert run.rc == 0, run.stdout
    assert not state.exists()  # check mode wrote nothing
    assert '"enabled": true' in run.stdout and "hubble-relay.json" in run.stdout  # the diff shows both files
    checked = result(run)
    assert checked["changed"] is True

    run = run_on_controller(MODULE, params(tmp_path))
    assert run.rc == 0, run.stdout
    done = result(run)
    assert done["changed"] is True and done["checksum"] == checked["checksum"]
    assert done["unsupported_metrics"] == ["dns", "http"]
    assert "[WARNING]: Hubble metrics dns, http need L7 visibility" in run.stdout
    assert read(state / "hubble.json") == {
        "enabled": True, "event_buffer_capacity": 4095, "listen_address": "10.77.101.11:4244",
        "metrics": ["dns", "drop", "flow", "http"], "metrics_address": "10.77.101.11:9965",
        "tls": {"ca": str(tmp_path / "tls/ca.crt"), "cert": str(tmp_path / "tls/server.crt"),
                "key": str(tmp_path / "tls/server.key")}}
    assert read(state / "hubble-relay.json") == {
        "node_name": "node1", "etcd_endpoints": ["http://10.77.101.11:2379"], "etcd_tls": None, "peer_port": 4244,
        "socket": str(tmp_path / "run/hubble-relay.sock"), "listen_address": "10.77.101.11:4245",
        "ui_address": "10.77.101.11:12000",
        "tls": {"ca": str(tmp_path / "tls/ca.crt"), "cert": str(tmp_path / "tls/relay.crt"),
                "key": str(tmp_path / "tls/relay.key")}}

    again = result(run_on_controller(MODULE, params(tmp_path)))
    assert again["changed"] is False and again["checksum"] == done["checksum"]
    assert result(run_on_controller(MODULE, params(tmp_path), "--check", "--diff"))["changed"] is False


def test_disabling_says_so_and_removes_the_relay_file(tmp_path):
    state = tmp_path / "state"
    assert run_on_controller(MODULE, params(tmp_path)).rc == 0
    run = run_on_controller(MODULE, params(tmp_path, enabled=False), "--check")
    assert result(run)["changed"] is True and (state / "hubble-relay.json").exists()
    off = result(run_on_controller(MODULE, params(tmp_path, enabled=False)))
    assert off["changed"] is True and off["relay_config"] is None
    assert read(state / "hubble.json") == {"enabled": False, "event_buffer_capacity": 4095,
                                           "listen_address": "10.77.101.11:4244", "metrics": [],
                                           "metrics_address": None, "tls": None}
    assert not (state / "hubble-relay.json").exists()
    # Metrics off, Hubble on: no metrics, no address.
    result(run_on_controller(MODULE, params(tmp_path, metrics_enabled=False, relay=False)))
    config = read(state / "hubble.json")
    assert (config["enabled"], config["metrics"], config["metrics_address"]) == (True, [], None)


def test_bad_input_fails_naming_the_option(tmp_path):
    for changes, words in [
        (dict(event_buffer_capacity=4096), "event_buffer_capacity: 4096 must be one less than a power of two"),
        (dict(listen_port=0), "listen_port: 0 is not a port"),
        (dict(metrics=["drop", "dnss"]), "metrics[1]: 'dnss' is not a Hubble metric"),
        (dict(node_ip="node-one"), "node_ip: 'node-one' is not an IP address"),
        (dict(etcd_endpoints=[]), "etcd_endpoints: the relay finds the nodes in the store"),
    ]:
        run = run_on_controller(MODULE, params(tmp_path, **changes))
        assert run.rc != 0 and words in run.stdout, (changes, run.stdout)
    assert not (tmp_path / "state").exists()
    run = run_on_controller(MODULE, dict(certificates=dict(dir=str(tmp_path / "ca"), nodes={"node1": "node-one"})))
    assert run.rc != 0 and "certificates.nodes.node1: 'node-one' is not an IP address" in run.stdout


def test_certificates_are_issued_once(tmp_path):
    args = dict(certificates=dict(dir=str(tmp_path / "ca"), nodes={"node1": "10.77.101.11"},
                                  relay_node={"name": "node1", "ip": "10.77.101.11"}))
    planned = result(run_on_controller(MODULE, args, "--check", "--diff"))
    assert planned["changed"] is True and set(planned["issued"]) == {"ca", "node1", "relay", "admin"}
    assert not (tmp_path / "ca").exists()
    assert result(run_on_controller(MODULE, args))["changed"] is True
    assert sorted(os.listdir(tmp_path / "ca")) == ["admin.crt", "admin.key", "ca.crt", "ca.key", "node1.crt",
                                                   "node1.key", "relay.crt", "relay.key"]
    assert result(run_on_controller(MODULE, args))["changed"] is False
    assert result(run_on_controller(MODULE, args, "--check"))["changed"] is False
