"""`apiary agent`: one per node. Startup order matters for restart safety:

1. open the pinned maps (the datapath is loaded by the bpf_datapath module, not by the agent);
2. reach the store, claim (or find again) the node's pod CIDR and publish the node;
3. restore saved endpoints, comparing with what the maps hold (nothing of a running pod is removed;
   their policy entries stay as they are until the policies have been read);
4. start the store sync (ipcache, routes, policy and services as differences against the current maps)
   and the API.

With `kubeconfig` in the config (kubeconfig mode), pods, namespaces, Services and policies come from
the Kubernetes API (agent/kubernetes.py) instead of the store; identities, the ipcache and the nodes
stay in the store (docs/kubernetes-api.md).

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
from apiary.errors import UserError
from apiary.agent import api, ipam, state
from apiary.agent.hubble import Hubble, HubbleSettings
from apiary.agent.dns import DnsServer
from apiary.agent.datapath import Datapath
from apiary.agent.endpoints import EndpointError, EndpointManager
from apiary.agent.kubernetes import SOURCE as KUBERNETES, KubernetesSource
from apiary.agent.policy import IDENTITIES_PART, OBJECTS_PART, PolicyManager
from apiary.agent.services import ServiceManager
from apiary.agent.sync import StoreSync
from apiary.datapath import lb
from apiary.k8s import validation
from apiary.observe import events
from apiary.policy import rules
from apiary.observe.metrics import AgentMetrics

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
        self.policy = None
        self.services = None
        self.kubernetes = None  # KubernetesSource, in kubeconfig mode
        self.dns = None
        self.hubble = None
        self.metrics = None
        self.restored = {}

    # --- lifecycle ---------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.config
        os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
        self.hubble_settings = HubbleSettings.load(cfg.state_dir)  # a bad file stops the agent here
        self.datapath = Datapath(cfg.pin_dir, cfg.uplink)
        self.store = cfg.etcd_client()
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
        self.sync = StoreSync(cfg, self.store, self.datapath, self.node)
        # In kubeconfig mode the store still brings the identities, the API the objects.
        sources = {"store": (IDENTITIES_PART,), KUBERNETES: (OBJECTS_PART,)} if cfg.kubeconfig else None
        self.policy = PolicyManager(self.datapath, self.sync, sources)
        self.policy.first_sync()
        self.sync.policy = self.policy
        self.services = ServiceManager(lb.LoadBalancer(cfg.pin_dir, cfg.lb_algorithm, cfg.maglev_table_size,
                                                       node_address=cfg.node_ip), cfg.node_name, cfg.node_ip,
                                       backends_from_slices=bool(cfg.kubeconfig))
        if cfg.kubeconfig:
            self.kubernetes = KubernetesSource(cfg, self.policy, self.services, self.hubble_settings.enabled)
        else:
            self.sync.services = self.services
        self.metrics = AgentMetrics(self.datapath, lambda: len(self.endpoints.list()))
        self.policy.metrics, self.services.metrics = self.metrics.policy_delay, self.metrics.service_delay
        if cfg.dns_address:
            # Kubespray's nodelocaldns address: an address of every node, named in the pods' resolv.conf.
            ip.run(["addr", "replace", "%s/32" % cfg.dns_address, "dev", "lo"])
            catalogue = self.kubernetes if cfg.kubeconfig else self.services
            self.dns = DnsServer(cfg.dns_address, catalogue, cfg.cluster_domain, cfg.upstream_dns_servers).start()
        self.endpoints = EndpointManager(cfg, self.store, self.datapath, cfg.node_ip, self.policy,
                                         labels=self.kubernetes)
        if self.kubernetes is not None:
            self.kubernetes.endpoints = self.endpoints
        self.restored = self.endpoints.restore()
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
        if self.kubernetes is not None:
            self.kubernetes.start(self.stop)
        began = time.monotonic()
        self.sync.synced.wait(30)
        log.info("store synced in %.1f s", time.monotonic() - began)
        if self.kubernetes is not None:
            # Endpoints made before the objects are read get no policy entries: they send nothing yet.
            synced = self.kubernetes.synced.wait(max(0.0, 30 - (time.monotonic() - began)))
            log.info("kubernetes %s after %.1f s", "synced" if synced else "not synced yet",
                     time.monotonic() - began)
        if self.hubble_settings.enabled:
            began = time.monotonic()
            self.hubble = Hubble(self, self.hubble_settings).start(self.metrics)
            log.info("hubble started in %.1f s", time.monotonic() - began)
        else:
            events.set_enabled(self.config.pin_dir, False)  # nobody reads them: no event work in the datapath
        server = api.serve(self.config.socket_path, self)
        threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
        log.info("serving on %s", self.config.socket_path)
        self.stop.wait()
        server.shutdown()
        server.server_close()
        if self.hubble is not None:
            self.hubble.stop()
        if self.kubernetes is not None:
            self.kubernetes.stop()
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
            "kubernetes": self.kubernetes.status() if self.kubernetes is not None else
            {"state": "Disabled", "message": "objects come from the store (lab)"},
            "routing_mode": cfg.routing_mode, "tunnel_protocol": "vxlan" if cfg.routing_mode == "tunnel" else None,
            "pod_cidr": self.node["pod_cidr"], "router_ip": self.node["router_ip"],
            "ipam": {"allocated": len(self.ipam.list()), "capacity": self.ipam.capacity, "cidr": self.node["pod_cidr"]},
            "endpoints": len(self.endpoints.list()),
            "cluster_nodes": sorted(self.sync.nodes), "synced": self.sync.synced.is_set(),
            "sync_errors": self.sync.errors,
            "datapath": self.datapath.status(),
            "uptime_seconds": round(time.time() - self.started, 1),
            "restored": self.restored,
            "hubble": self.hubble.status() if self.hubble else {"state": "Disabled"},
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

    def all_pods(self) -> list:
        """Every pod of the cluster: from the Kubernetes API's watch, or the store (store mode)."""
        return (self.kubernetes or self.services).all_pods()

    def identities(self) -> list:
        return self.endpoints.allocator.list()

    # --- policy import / delete (`apiary policy import|delete`, the network_policy module) ---------
    def _policy_documents(self, body: dict, check_all: bool):
        docs, namespace = body.get("objects"), body.get("namespace") or "default"
        if not isinstance(docs, list):
            raise UserError("policy request: objects must be a list of policy objects")
        if check_all:
            found, problems = validation.check_documents(docs, namespace, rules.CHECKERS)
        else:
            found, problems = validation.identities(docs, namespace)
            problems += ["%s %s: not a policy kind (%s)" % (kind, name, ", ".join(validation.POLICY_KINDS))
                         for kind, _, name in found if kind not in validation.POLICY_KINDS]
        if problems:
            raise UserError("%d problem%s, nothing was changed:\n  %s"
                            % (len(problems), "s" if len(problems) > 1 else "", "\n  ".join(problems)))
        return found

    def _policy_result(self, results: list, revision: int, check: bool) -> dict:
        enforced = True
        if revision and not check:  # wait until this node's datapath has it
            enforced = self.policy.wait_for(revision, timeout=10.0)
        return {"changed": any(r["action"] not in ("unchanged", "not found") for r in results),
                "results": results, "revision": self.policy.revision, "enforced": enforced}

    def policy_import(self, body: dict) -> dict:
        """Validate every object, then store them (nothing is stored when one is bad); in kubeconfig
        mode they are written to the Kubernetes API instead."""
        from apiary.lab.store import ObjectStore, last_applied  # store mode: the lab's imitation

        check = bool(body.get("check"))
        if self.kubernetes is not None:
            return self._kubernetes_policy_change(self._policy_documents(body, check_all=True), check, delete=False)
        store, results, revision = ObjectStore(self.store), [], 0
        for obj in self._policy_documents(body, check_all=True):
            action, before, _, rev = store.apply(obj, check=check)
            revision = max(revision, rev)
            results.append({"object": validation.describe(obj), "action": action,
                            "before": last_applied(before) if before else None, "after": obj})
        return self._policy_result(results, revision, check)

    def policy_delete(self, body: dict) -> dict:
        from apiary.lab.store import key  # store mode: the lab's imitation

        check = bool(body.get("check"))
        if self.kubernetes is not None:
            return self._kubernetes_policy_change(self._policy_documents(body, check_all=False), check, delete=True)
        results, revision = [], 0
        for kind, namespace, name in self._policy_documents(body, check_all=False):
            store_key = key(kind, namespace, name)
            existing = self.store.get(store_key)
            who = "%s %s" % (kind, "%s/%s" % (namespace, name) if namespace else name)
            results.append({"object": who, "action": "deleted" if existing else "not found",
                            "before": json.loads(existing.value) if existing else None, "after": None})
            if existing and not check:
                self.store.delete(store_key)
                revision = max(revision, self.store.status().get("revision", 0))
        return self._policy_result(results, revision, check)

    def _kubernetes_policy_change(self, found: list, check: bool, delete: bool) -> dict:
        """Policies written to (or deleted from) the Kubernetes API; returns once this node's datapath
        has what was written (at most 10 s)."""
        results, versions = [], {}
        for item in found:
            if delete:
                kind, namespace, name = item
                action, before, key = self.kubernetes.delete_policy(kind, namespace, name, check)
                who, after, version = "%s %s" % (kind, "%s/%s" % (namespace, name) if namespace else name), None, None
            else:
                action, before, key, version = self.kubernetes.apply_policy(item, check)
                who, after = validation.describe(item), item
            results.append({"object": who, "action": action, "before": before, "after": after})
            if action in ("created", "configured", "deleted") and not check:
                versions[key] = version
        enforced = self.kubernetes.wait_policies(versions, timeout=10.0) if versions else True
        return {"changed": any(r["action"] not in ("unchanged", "not found") for r in results),
                "results": results, "revision": self.policy.revision, "enforced": enforced}

    def endpoint_summaries(self) -> list:
        return [self.endpoint_summary(ep.id) for ep in self.endpoints.list()]

    def endpoint_summary(self, endpoint_id: int) -> dict:
        return self.endpoints.get(endpoint_id).summary(self.policy.enforcement(endpoint_id))

    def bpf_policy(self, endpoint_id: int | None) -> list:
        """Entries of one endpoint, or of all (None), grouped per endpoint."""
        eps = [self.endpoints.get(endpoint_id)] if endpoint_id is not None else self.endpoints.list()
        return [{"endpoint": ep.id, "path": "%s/apiary_policy (lxc_id %d)" % (self.config.pin_dir, ep.id),
                 "entries": self.policy.bpf_policy(ep.id)} for ep in eps]

    def service_list(self) -> list:
        return self.services.list()

    def map_names(self) -> list:
        return self.datapath.map_names()

    def map_dump(self, name: str) -> list:
        return self.datapath.dump(name)


def _json(data) -> str:
    return json.dumps(data, sort_keys=True)
