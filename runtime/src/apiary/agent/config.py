"""The agent's configuration: a JSON file written by the `agent` role (<state dir>/agent.json)."""
from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass

from apiary.errors import UserError

ROUTING_MODES = ("native", "tunnel")
# VXLAN adds 50 bytes (outer Ethernet 14 + IP 20 + UDP 8 + VXLAN 8) to every pod packet.
TUNNEL_OVERHEAD = 50


@dataclass
class AgentConfig:
    node_name: str
    node_ip: str
    etcd_endpoints: list
    cluster_pool_ipv4_cidr: str
    cluster_pool_ipv4_mask_size: int
    routing_mode: str
    state_dir: str
    run_dir: str
    pin_dir: str
    uplink: str = "eth0"
    device_mtu: int = 1500
    cluster_name: str = "default"
    dns_address: str | None = None  # the node-local DNS address the agent serves the cluster's names on
    cluster_domain: str = "cluster.local"  # the kubelet's clusterDomain (Kubespray's dns_domain)
    upstream_dns_servers: tuple = ()  # where names outside the cluster domain are asked (none: REFUSED)
    lb_algorithm: str = "random"
    maglev_table_size: int = 16381
    # etcd's CA and this node's client certificate (https:// endpoints; etcd requires client certificates)
    etcd_ca_file: str | None = None
    etcd_cert_file: str | None = None
    etcd_key_file: str | None = None
    # Kubernetes objects (pods, namespaces, Services, policies) come from the API server this kubeconfig
    # reaches (agent/kubernetes.py); without it they come from the store, as the lab writes them.
    kubeconfig: str | None = None

    def etcd_client(self):
        from apiary.store.etcd import EtcdClient

        return EtcdClient(self.etcd_endpoints, ca_file=self.etcd_ca_file, cert_file=self.etcd_cert_file,
                          key_file=self.etcd_key_file)

    @property
    def socket_path(self) -> str:
        return os.path.join(self.run_dir, "apiary.sock")

    @property
    def pod_mtu(self) -> int:
        return self.device_mtu - (TUNNEL_OVERHEAD if self.routing_mode == "tunnel" else 0)

    @classmethod
    def load(cls, path: str) -> "AgentConfig":
        try:
            with open(path) as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise UserError("agent config %s: %s" % (path, exc)) from exc
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("node_name", "node_ip", "etcd_endpoints", "cluster_pool_ipv4_cidr",
                               "cluster_pool_ipv4_mask_size", "routing_mode", "state_dir", "run_dir", "pin_dir")
                   if k not in data]
        if missing:
            raise UserError("agent config %s: missing %s" % (path, ", ".join(missing)))
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError("agent config %s: unknown field(s) %s" % (path, ", ".join(unknown)))
        config = cls(**data)
        config.validate(path)
        return config

    def validate(self, where: str) -> None:
        if self.routing_mode not in ROUTING_MODES:
            raise UserError("%s: routing_mode: %r is not one of %s" % (where, self.routing_mode, ", ".join(ROUTING_MODES)))
        try:
            pool = ipaddress.ip_network(self.cluster_pool_ipv4_cidr)
            ipaddress.ip_address(self.node_ip)
        except ValueError as exc:
            raise UserError("%s: %s" % (where, exc)) from exc
        for server in self.upstream_dns_servers:
            try:
                ipaddress.IPv4Address(server)
            except ValueError as exc:
                raise UserError("%s: upstream_dns_servers: %s" % (where, exc)) from exc
        if self.kubeconfig is not None and not (isinstance(self.kubeconfig, str) and self.kubeconfig.startswith("/")):
            raise UserError("%s: kubeconfig: %r is not an absolute path" % (where, self.kubeconfig))
        if not pool.prefixlen < int(self.cluster_pool_ipv4_mask_size) <= 30:
            raise UserError("%s: cluster_pool_ipv4_mask_size: %s does not fit in %s"
                            % (where, self.cluster_pool_ipv4_mask_size, pool))
