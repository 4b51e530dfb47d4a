"""`apiary agent`: one per node. Startup order matters for restart safety:

1. open the pinned maps (the datapath is loaded by the bpf_datapath module, not by the agent);
2. reach the store, claim (or find again) the node's pod CIDR and publish the node;
3. restore saved endpoints, comparing with what the maps hold (nothing of a running pod is removed);
4. start the store sync (ipcache + routes as differences against the current map) and the API.

When the agent stops or is killed, the datapath keeps forwarding with what the maps hold.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time

from apiary import ip
from apiary.agent import api, ipam, state
from apiary.agent.datapath import Datapath
from apiary.agent.endpoints import EndpointError, EndpointManager
from apiary.agent.sync import StoreSync
from apiary.store.etcd import EtcdClient

log = logging.getLogger("apiary.agent")


class Agent:
    def __init__(self, config):
        self.config = config
        self.started = time.time()
        self.stop = threading.Event()
        self.datapath = None
        self.store = None
        self.node = None
        self.ipam = None
        self.endpoints = None
        self.sync = None
        self.restored = {}

    # --- lifecycle ---------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.config
        os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
        self.datapath = Datapath(cfg.pin_dir, cfg.uplink)
        self.store = EtcdClient(cfg.etcd_endpoints)
        self._wait_for_store()
        cidr = ipam.claim_node_cidr(self.store, cfg.node_name, cfg.cluster_pool_ipv4_cidr,
                                    cfg.cluster_pool_ipv4_mask_size)
        self.node = {"name": cfg.node_name, "ip": cfg.node_ip, "pod_cidr": cidr,
                     "router_ip": ipam.router_ip(cidr), "routing_mode": cfg.routing_mode}
        # The router IP (the pods' gateway) is an address of the node itself.
        ip.run(["addr", "replace", "%s/32" % self.node["router_ip"], "dev", "lo"])
        self.store.put("/apiary/nodes/%s" % cfg.node_name, _json(self.node))
        state.write(os.path.join(cfg.state_dir, "agent-node.json"), self.node)
        self.ipam = ipam.PodIpam(cidr, os.path.join(cfg.state_dir, "ipam"))
        self.endpoints = EndpointManager(cfg, self.store, self.datapath, cfg.node_ip)
        self.restored = self.endpoints.restore()
        self.sync = StoreSync(cfg, self.store, self.datapath, self.node)
        log.info("node %s: pod CIDR %s, router %s, %d endpoint(s) restored, %d removed", cfg.node_name, cidr,
                 self.node["router_ip"], len(self.restored["restored"]), len(self.restored["removed"]))

    def _wait_for_store(self) -> None:
        delay = 0.2
        while not self.stop.is_set():
            try:
                self.store.status()
                return
            except Exception as exc:  # noqa: BLE001 - keep trying; the datapath runs meanwhile
                log.warning("store not reachable yet: %s", exc)
                self.stop.wait(delay)
                delay = min(delay * 2, 5.0)
        raise SystemExit(0)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        self.setup()
        threading.Thread(target=self.sync.run, args=(self.stop,), name="store-sync", daemon=True).start()
        self.sync.synced.wait(30)
        server = api.serve(self.config.socket_path, self)
        threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
        log.info("serving on %s", self.config.socket_path)
        self.stop.wait()
        server.shutdown()
        server.server_close()
        return 0

    # --- API operations ------------------------------------------------------------------
    def status(self) -> dict:
        cfg = self.config
        try:
            store = self.store.status()
            kvstore = {"state": "Ok", "message": "etcd %s, leader %s" % (store.get("version"), store.get("leader"))}
        except Exception as exc:  # noqa: BLE001 - status reports it
            kvstore = {"state": "Failure", "message": str(exc)}
        return {
            "node": cfg.node_name, "node_ip": cfg.node_ip, "hostname": socket.gethostname(),
            "kvstore": kvstore,
            "kubernetes": {"state": "Disabled", "message": "objects come from the store (lab)"},
            "routing_mode": cfg.routing_mode, "tunnel_protocol": "vxlan" if cfg.routing_mode == "tunnel" else None,
            "pod_cidr": self.node["pod_cidr"], "router_ip": self.node["router_ip"],
            "ipam": {"allocated": len(self.ipam.list()), "capacity": self.ipam.capacity, "cidr": self.node["pod_cidr"]},
            "endpoints": len(self.endpoints.list()),
            "cluster_nodes": sorted(self.sync.nodes), "synced": self.sync.synced.is_set(),
            "sync_errors": self.sync.errors,
            "datapath": self.datapath.status(),
            "uptime_seconds": round(time.time() - self.started, 1),
            "restored": self.restored,
        }

    def ipam_allocate(self, body: dict) -> dict:
        owner = body.get("owner")
        if not owner:
            raise EndpointError("ipam request: missing owner")
        return {"ip": self.ipam.allocate(owner), "gateway": self.node["router_ip"], "cidr": self.node["pod_cidr"],
                "mtu": self.config.pod_mtu, "routing_mode": self.config.routing_mode}

    def ipam_release(self, owner: str) -> dict:
        return {"released": self.ipam.release(owner)}

    def delete_endpoint(self, container_id: str, ifname: str | None) -> dict:
        ep = self.endpoints.delete(container_id, ifname)
        return {"deleted": ep.summary() if ep else None}

    def identities(self) -> list:
        return self.endpoints.allocator.list()

    def map_names(self) -> list:
        return self.datapath.map_names()

    def map_dump(self, name: str) -> list:
        return self.datapath.dump(name)


def _json(data) -> str:
    return json.dumps(data, sort_keys=True)
