"""The hubble role (certificates, hubble.json, the relay's configuration) on two hosts that are this machine
through the local connection, in temporary folders, with no service manager (no process is started, nothing
listens): check mode changes nothing, a run writes the contract's files and notifies the agent, a second run
changes nothing, disabling says so in hubble.json and removes the relay's file and the certificates, and the
reset tasks remove everything."""
from __future__ import annotations

import json
import os
import stat

from .conftest import PLAYBOOKS, VENV_BIN, run_playbook

NODES = {"node1": "10.77.101.11", "node2": "10.77.101.12"}


def inventory(root):
    hosts = "\n".join(
        "    %s: {ip: %s, apiary_node_ip: %s, apiary_state_dir: %s/%s, apiary_run_dir: %s/%s/run}"
        % (n, ip, ip, root, n, root, n) for n, ip in NODES.items())
    text = ("all:\n  vars:\n    ansible_connection: local\n    ansible_python_interpreter: %s\n"
            "    apiary_service_manager: none\n    hubble_test_root: %s\n    apiary_hubble_tls_ca_dir: %s/ca\n"
            "    apiary_hubble_enabled: true\n    apiary_hubble_metrics_enabled: true\n"
            "    apiary_hubble_metrics: [dns, drop, tcp, flow, icmp, http]\n    apiary_hubble_relay_enabled: true\n"
            "    apiary_hubble_ui_enabled: true\n    apiary_hubble_tls_generate: true\n"
            "  hosts:\n%s\n  children:\n    k8s_cluster: {hosts: {node1: {}, node2: {}}}\n"
            "    kube_control_plane: {hosts: {node1: {}}}\n    etcd: {hosts: {node1: {}}}\n"
            % (VENV_BIN / "python", root, root, hosts))
    path = os.path.join(root, "hosts.yml")
    with open(path, "w") as out:
        out.write(text)
    return path


def role(hosts, *args, check=False):
    return run_playbook(PLAYBOOKS / "hubble_role.yml", hosts, *args, check=check)


def read(path):
    with open(path) as handle:
        return json.load(handle)


def test_hubble_role(tmp_path):
    root = str(tmp_path)
    hosts = inventory(root)

    rc, out = run = role(hosts, "--diff", check=True)
    assert rc == 0, out[-4000:]
    assert sorted(os.listdir(root)) == ["hosts.yml"], "check mode wrote something"
    assert run.recap["node1"]["changed"] > 0

    rc, out = run = role(hosts)
    assert rc == 0, out[-4000:]
    assert "[WARNING]: Hubble metrics dns, http need L7 visibility" in out
    for node, ip in NODES.items():
        config = read(os.path.join(root, node, "hubble.json"))
        tls = os.path.join(root, node, "tls/hubble")
        assert config == {"enabled": True, "event_buffer_capacity": 4095, "listen_address": ip + ":4244",
                          "metrics": ["dns", "drop", "tcp", "flow", "icmp", "http"], "metrics_address": ip + ":9965",
                          "tls": {"ca": tls + "/ca.crt", "cert": tls + "/server.crt", "key": tls + "/server.key"}}
        assert stat.S_IMODE(os.stat(tls + "/server.key").st_mode) == 0o600
        with open(tls + "/server.crt") as mine, open(os.path.join(root, "ca", node + ".crt")) as issued:
            assert mine.read() == issued.read()
        assert open(os.path.join(root, node + ".restarts")).read() == "restart\n"  # the agent was told
    relay = read(os.path.join(root, "node1", "hubble-relay.json"))
    assert (relay["listen_address"], relay["ui_address"], relay["peer_port"]) == (
        "10.77.101.11:4245", "10.77.101.11:12000", 4244)
    assert relay["etcd_endpoints"] == ["https://10.77.101.11:2379"]
    assert relay["etcd_tls"] == {"ca_file": "/etc/ssl/etcd/ssl/ca.pem", "cert_file": "/etc/ssl/etcd/ssl/node-node1.pem",
                                 "key_file": "/etc/ssl/etcd/ssl/node-node1-key.pem"}
    assert relay["tls"]["cert"] == os.path.join(root, "node1/tls/hubble/relay.crt") 
    assert os.path.exists(relay["tls"]["cert"])
    assert not os.path.exists(os.path.join(root, "node2", "hubble-relay.json"))
    assert not os.path.exists(os.path.join(root, "node2", "tls/hubble/relay.key"))

    for node in NODES:
        os.unlink(os.path.join(root, node + ".restarts"))
    rc, out = run = role(hosts)
    assert rc == 0 and all(r["changed"] == 0 for r in run.recap.values()), out[-4000:]
    assert not os.path.exists(os.path.join(root, "node1.restarts"))  # unchanged: the agent is left alone
    rc, out = run = role(hosts, "--diff", check=True)
    assert rc == 0 and all(r["changed"] == 0 for r in run.recap.values()), out[-4000:]

    rc, out = role(hosts, "-e", "apiary_hubble_enabled=false")
    assert rc == 0, out[-4000:]
    assert read(os.path.join(root, "node2", "hubble.json"))["enabled"] is False
    assert not os.path.exists(os.path.join(root, "node1", "hubble-relay.json"))
    assert not os.path.exists(os.path.join(root, "node1", "tls/hubble"))
    assert os.path.exists(os.path.join(root, "node1.restarts"))  # changed settings: the agent restarts

    rc, out = role(hosts, "-e", "hubble_test_reset=true")
    assert rc == 0, out[-4000:]
    assert not os.path.exists(os.path.join(root, "node1", "hubble.json"))
    assert not os.path.exists(os.path.join(root, "node1", "tls/hubble"))
    assert not os.path.exists(os.path.join(root, "ca"))
