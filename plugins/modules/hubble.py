#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Apiary developers
# Apache-2.0 (see galaxy.yml)
from __future__ import annotations

DOCUMENTATION = r"""
module: hubble
short_description: Write a node's Hubble settings (and the relay's), or issue Hubble's TLS certificates
description:
  - Without O(certificates), writes O(state_dir)C(/hubble.json), which the agent reads when it starts (whether
    Hubble is on, the flow ring's size, where flows (O(listen_port)) and metrics (O(metrics_port)) are served,
    the metrics and the node's TLS files). With O(enabled=false) the file says so (the agent then observes nothing).
  - With O(relay) (and O(enabled)), also writes O(state_dir)C(/hubble-relay.json) for
    C(apiary hubble-relay --config FILE); otherwise that file is removed.
  - With O(certificates) (run it on the controller), issues into C(certificates.dir) a CA (C(ca.crt), C(ca.key)), a
    server certificate per node (C(<node>.crt), SANs the node's name and IP and
    V(*.default.hubble-grpc.cluster.local)), one for the relay (C(relay.crt), client of the nodes and server of
    clients) and one for an admin/CLI client (C(admin.crt)). Keys are written 0600. A certificate is kept while the
    current CA signed it, it names what it must and is more than 30 days from its end; else it is issued again
    (a new CA re-issues all). Needs the C(cryptography) package.
  - C(dns) and C(http) metrics need L7 visibility the datapath does not have; they are accepted, export no series
    and are named in a warning and in RV(unsupported_metrics).
author: Apiary developers
version_added: 0.1.0
attributes:
  check_mode:
    support: full
    description: Reports what would be written, removed or issued; changes nothing.
  diff_mode:
    support: full
    description: The JSON files before and after; for certificates, which would be issued and why.
options:
  state_dir:
    description: The node's Apiary state folder (apiary_state_dir). Required without O(certificates).
    type: path
  run_dir:
    description: The node's run folder (apiary_run_dir); the relay's unix socket is there.
    type: path
    default: /var/run/apiary
  node_name:
    description: The node's name (inventory_hostname).
    type: str
  node_ip:
    description: The node's address; flows, metrics, the relay and the page are served there.
    type: str
  enabled:
    description: Hubble on the node (apiary_hubble_enabled).
    type: bool
    default: false
  event_buffer_capacity:
    description: Flows kept in the node's ring; one less than a power of two, at most 65535 (as Cilium's).
    type: int
    default: 4095
  listen_port:
    description: The node's flow server port (Cilium's hubble-listen-address port); the relay's peers' port.
    type: int
    default: 4244
  metrics_enabled:
    description: Serve Prometheus metrics on O(metrics_port).
    type: bool
    default: false
  metrics:
    description: Hubble's metric names (options after a colon accepted), as apiary_hubble_metrics.
    type: list
    elements: str
    default: []
  metrics_port:
    description: The metrics port.
    type: int
    default: 9965
  tls_dir:
    description: The node's folder holding C(ca.crt), C(server.crt), C(server.key) (and the relay's C(relay.crt),
      C(relay.key)). Unset, flows are served without TLS.
    type: path
  relay:
    description: Run the relay here (the first kube_control_plane node).
    type: bool
    default: false
  relay_port:
    description: The relay's port for clients.
    type: int
    default: 4245
  ui:
    description: The relay also serves the web page on O(ui_port).
    type: bool
    default: false
  ui_port:
    description: The page's port.
    type: int
    default: 12000
  etcd_endpoints:
    description: The store's endpoints; the relay finds the nodes there.
    type: list
    elements: str
    default: []
  etcd_tls:
    description: etcd's CA and the relay's client certificate, for https:// endpoints.
    type: dict
    suboptions:
      ca_file:
        description: etcd's CA.
        type: path
        required: true
      cert_file:
        description: The client certificate.
        type: path
        required: true
      key_file:
        description: Its key.
        type: path
        required: true
  certificates:
    description: Issue certificates instead of writing node files.
    type: dict
    suboptions:
      dir:
        description: The folder (on the controller) holding the CA and every certificate.
        type: path
        required: true
      nodes:
        description: Every node's name and its address, as a mapping.
        type: dict
        required: true
      relay_node:
        description: The relay's node (C(name), C(ip)); no relay certificate without it.
        type: dict
      ca_days:
        description: Days the CA is valid.
        type: int
        default: 3650
      days:
        description: Days a certificate is valid.
        type: int
        default: 1095
notes:
  - The agent reads hubble.json when it starts; the role restarts it when the file changed (RV(checksum)).
"""

EXAMPLES = r"""
- name: Issue the certificates, once, on the controller
  apiary.cluster.hubble:
    certificates:
      dir: "{{ inventory_dir }}/credentials/hubble"
      nodes: {node1: 10.77.101.11, node2: 10.77.101.12}
      relay_node: {name: node1, ip: 10.77.101.11}
  delegate_to: localhost
  run_once: true

- name: Hubble on a node, relay and page included
  apiary.cluster.hubble:
    state_dir: /var/lib/apiary
    node_name: node1
    node_ip: 10.77.101.11
    enabled: true
    metrics_enabled: true
    metrics: [drop, tcp, flow, icmp]
    tls_dir: /var/lib/apiary/tls/hubble
    relay: true
    ui: true
    etcd_endpoints: ["http://10.77.101.11:2379"]
"""

RETURN = r"""
config:
  description: The content of hubble.json (null with O(certificates)).
  returned: always
  type: dict
  sample: {enabled: true, event_buffer_capacity: 4095, listen_address: "10.77.101.11:4244", metrics: [drop],
           metrics_address: "10.77.101.11:9965", tls: null}
relay_config:
  description: The content of hubble-relay.json, or null when this node runs no relay.
  returned: always
  type: dict
checksum:
  description: SHA-256 of hubble.json as it is (or, in check mode, would be); the agent's restart trigger.
  returned: always
  type: str
unsupported_metrics:
  description: Enabled metrics that export no series here (need L7 visibility).
  returned: always
  type: list
  sample: [dns, http]
issued:
  description: With O(certificates), each certificate issued (or that would be) and why.
  returned: always
  type: dict
  sample: {ca: missing, node1: missing, relay: the CA is new}
"""

import hashlib
import ipaddress
import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.apiary.cluster.plugins.module_utils.hubble import (
    check_event_buffer_capacity,
    check_metrics,
    check_port,
    ensure_certificates,
    node_config,
    relay_config,
    unsupported_metrics,
    write_private,
)

HUBBLE_JSON = "hubble.json"
RELAY_JSON = "hubble-relay.json"


def render(data):
    return None if data is None else json.dumps(data, indent=2, sort_keys=True) + "\n"


class Files(object):
    def __init__(self, module):
        self.module = module
        self.changed = False
        self.diff = []

    def put(self, path, text):
        """Make `path` hold `text` (None: no file)."""
        before = None
        if os.path.exists(path):
            with open(path) as handle:
                before = handle.read()
        if before == text:
            return
        self.changed = True
        self.diff.append(dict(before_header=path, after_header=path, before=before or "", after=text or ""))
        if self.module.check_mode:
            return
        if text is None:
            os.unlink(path)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_private(path, text.encode(), 0o644)


def checked(module, name, check, value):
    try:
        return check(value)
    except ValueError as exc:
        module.fail_json(msg="%s: %s" % (name, exc))


def certificates(module):
    spec = module.params["certificates"]
    nodes = [{"name": name, "ip": ip} for name, ip in sorted(spec["nodes"].items())]
    relay = spec.get("relay_node")
    checks = [("certificates.nodes.%s" % n["name"], n) for n in nodes] + ([("certificates.relay_node", relay)]
                                                                           if relay else [])
    for where, node in checks:
        if not node.get("name") or not node.get("ip"):
            module.fail_json(msg="%s: needs a name and an ip, got %r" % (where, node))
        try:
            ipaddress.ip_address(str(node["ip"]))
        except ValueError:
            module.fail_json(msg="%s: %r is not an IP address" % (where, node["ip"]))
    if not nodes:
        module.fail_json(msg="certificates.nodes: no node to issue a certificate for")
    for name in ("ca_days", "days"):
        if spec[name] <= 30:
            module.fail_json(msg="certificates.%s: %d days is too short (certificates are renewed 30 days "
                                 "before their end)" % (name, spec[name]))
    try:
        issued = ensure_certificates(spec["dir"], nodes, relay, spec["ca_days"],
                                     spec["days"], module.check_mode)
    except ImportError as exc:
        module.fail_json(msg="certificates: the cryptography package is needed on the controller (%s)" % exc)
    result = dict(changed=bool(issued), issued=issued, config=None, relay_config=None, checksum=None,
                  unsupported_metrics=[])
    if module._diff and issued:
        result["diff"] = dict(before_header=spec["dir"], after_header=spec["dir"], before="",
                              after="".join("%s.crt issued: %s\n" % (n, r) for n, r in sorted(issued.items())))
    module.exit_json(**result)


def main():
    node = dict(type="dict", options=dict(name=dict(type="str"), ip=dict(type="str")))
    module = AnsibleModule(
        argument_spec=dict(
            state_dir=dict(type="path"),
            run_dir=dict(type="path", default="/var/run/apiary"),
            node_name=dict(type="str"),
            node_ip=dict(type="str"),
            enabled=dict(type="bool", default=False),
            event_buffer_capacity=dict(type="raw", default=4095),
            listen_port=dict(type="raw", default=4244),
            metrics_enabled=dict(type="bool", default=False),
            metrics=dict(type="list", elements="str", default=[]),
            metrics_port=dict(type="raw", default=9965),
            tls_dir=dict(type="path"),
            relay=dict(type="bool", default=False),
            relay_port=dict(type="raw", default=4245),
            ui=dict(type="bool", default=False),
            ui_port=dict(type="raw", default=12000),
            etcd_endpoints=dict(type="list", elements="str", default=[]),
            etcd_tls=dict(type="dict", options=dict(ca_file=dict(type="path", required=True),
                                                    cert_file=dict(type="path", required=True),
                                                    key_file=dict(type="path", required=True))),
            certificates=dict(type="dict", options=dict(
                dir=dict(type="path", required=True),
                nodes=dict(type="dict", required=True),
                relay_node=node,
                ca_days=dict(type="int", default=3650),
                days=dict(type="int", default=1095),
            )),
        ),
        mutually_exclusive=[("certificates", "state_dir")],
        required_one_of=[("certificates", "state_dir")],
        supports_check_mode=True,
    )
    params = module.params
    if params["certificates"] is not None:
        certificates(module)

    for name in ("node_name", "node_ip"):
        if not params[name]:
            module.fail_json(msg="%s: is required to write %s" % (name, HUBBLE_JSON))
    try:
        ipaddress.ip_address(params["node_ip"])
    except ValueError:
        module.fail_json(msg="node_ip: %r is not an IP address" % params["node_ip"])
    capacity = checked(module, "event_buffer_capacity", check_event_buffer_capacity, params["event_buffer_capacity"])
    ports = dict((name, checked(module, name, check_port, params[name]))
                 for name in ("listen_port", "metrics_port", "relay_port", "ui_port"))
    bad = check_metrics(params["metrics"])
    if bad:
        module.fail_json(msg="metrics[%d]: %r is not a Hubble metric" % bad[0])
    if params["relay"] and params["enabled"] and not params["etcd_endpoints"]:
        module.fail_json(msg="etcd_endpoints: the relay finds the nodes in the store; give its endpoints")

    metrics = params["metrics"] if params["enabled"] and params["metrics_enabled"] else None
    config = node_config(params["enabled"], capacity, params["node_ip"], ports["listen_port"], metrics,
                         ports["metrics_port"], params["tls_dir"] if params["enabled"] else None)
    relay = None
    if params["enabled"] and params["relay"]:
        relay = relay_config(params["node_name"], params["node_ip"], params["etcd_endpoints"], ports["listen_port"],
                             params["run_dir"], ports["relay_port"], ports["ui_port"] if params["ui"] else None,
                             params["tls_dir"], params["etcd_tls"])
    files = Files(module)
    text = render(config)
    files.put(os.path.join(params["state_dir"], HUBBLE_JSON), text)
    files.put(os.path.join(params["state_dir"], RELAY_JSON), render(relay))
    unsupported = unsupported_metrics(metrics or [])
    if unsupported:
        module.warn("Hubble metrics %s need L7 visibility the datapath does not have: they are accepted but export "
                    "no series (apiary status lists them)" % ", ".join(unsupported))
    result = dict(changed=files.changed, config=config, relay_config=relay, issued={},
                  checksum=hashlib.sha256(text.encode()).hexdigest(), unsupported_metrics=unsupported)
    if module._diff:
        result["diff"] = files.diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
