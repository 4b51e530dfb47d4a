"""Keeps this node's ipcache map and routes in step with the store, cluster-wide.

The store holds every node (`/apiary/nodes/`) and every pod IP with its identity
(`/apiary/ipcache/`). This node's ipcache is a function of both plus a few entries of its own
(world, this host, the CIDR identities of the policies); routes to other nodes' pod CIDRs follow
the nodes. Updates are applied as differences, so an unchanged entry is never rewritten. After the
first full read (one read of /apiary/, so every part is from the same revision), the store is
watched; when the watch breaks (etcd restarted, compacted), everything is read again. Policy
objects, identities and pods go to the policy repository (agent/policy.py); Services and pods to the
service cache (agent/services.py). In kubeconfig mode those objects come from the Kubernetes API
(agent/kubernetes.py): the policy repository takes only the identities from here, and the service
cache nothing.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import threading

from apiary import identity as identities
from apiary import ip

log = logging.getLogger("apiary.agent.sync")

NODES = "/apiary/nodes/"
IPCACHE = "/apiary/ipcache/"
# Routes the agent owns carry this protocol number, so they can be listed and removed exactly.
ROUTE_PROTO = "101"
VXLAN_DEVICE = "apiary_vxlan"
RESERVED_ID = {name: ident for ident, name in identities.RESERVED.items()}
HOST, WORLD, REMOTE_NODE = RESERVED_ID["host"], RESERVED_ID["world"], RESERVED_ID["remote-node"]


class StoreSync:
    def __init__(self, config, store, datapath, node: dict):
        self.config = config
        self.store = store
        self.datapath = datapath
        self.node = node  # this node's record: name, ip, pod_cidr, router_ip
        self.nodes: dict[str, dict] = {}
        self.entries: dict[str, dict] = {}  # prefix -> store value
        self.applied: dict[str, tuple] = {}  # prefix -> (identity, tunnel endpoint) in the map
        self.routes: dict[str, dict] = {}  # cidr -> node record routed to
        self.local_prefixes: dict[str, int] = {}  # CIDR identities of the policies: prefix -> identity
        self.policy = None  # PolicyManager, when the agent has one
        self.services = None  # ServiceManager, likewise
        self.lock = threading.Lock()
        self.synced = threading.Event()
        self.revision = 0
        self.errors = 0

    # --- desired state ---------------------------------------------------------------------
    def static_entries(self) -> dict:
        """What the nodes alone decide: world, this host, and every other node and its router IP."""
        want = {"0.0.0.0/0": (WORLD, None)}
        want["%s/32" % self.node["ip"]] = (HOST, None)
        want["%s/32" % self.node["router_ip"]] = (HOST, None)
        if self.config.dns_address:
            want["%s/32" % self.config.dns_address] = (HOST, None)
        for name, node in self.nodes.items():
            if name == self.node["name"]:
                continue
            want["%s/32" % node["ip"]] = (REMOTE_NODE, None)
            want["%s/32" % node["router_ip"]] = (REMOTE_NODE, node["ip"])
        return want

    def entry_value(self, entry: dict) -> tuple:
        remote = entry.get("node") != self.node["name"]
        return int(entry["identity"]), entry.get("tunnel_endpoint") if remote else None

    def desired_ipcache(self) -> dict:
        # CIDR identities first: a pod or node address of the same prefix is more than "a CIDR".
        want = {prefix: (ident, None) for prefix, ident in self.local_prefixes.items() if prefix != "0.0.0.0/0"}
        want.update(self.static_entries())
        for prefix, entry in self.entries.items():
            want[prefix] = self.entry_value(entry)
        return want

    def desired_routes(self) -> dict:
        return {node["pod_cidr"]: node for name, node in self.nodes.items()
                if name != self.node["name"] and node.get("pod_cidr")}

    # --- applying differences --------------------------------------------------------------
    def _set(self, prefix: str, value) -> None:
        """Make the map hold `value` (None: nothing) for `prefix`, touching it only on a change."""
        if value is None:
            if prefix in self.applied:
                self.datapath.ipcache.delete(prefix)
                del self.applied[prefix]
        elif self.applied.get(prefix) != value:
            self.datapath.ipcache.set(prefix, identity=value[0], tunnel_endpoint=value[1])
            self.applied[prefix] = value

    def apply(self) -> None:
        """Everything: after a full read of the store, or when the set of nodes changed."""
        with self.lock:
            want = self.desired_ipcache()
            for prefix in set(self.applied) | set(want):
                self._set(prefix, want.get(prefix))
            routes = self.desired_routes()
            for cidr, node in routes.items():
                if self.routes.get(cidr) != node:
                    ip.run(self.route_args("replace", cidr, node))
                    self.routes[cidr] = node
            for cidr in [c for c in self.routes if c not in routes]:
                ip.run(["route", "del", cidr, "proto", ROUTE_PROTO], check=False)
                del self.routes[cidr]

    def apply_prefix(self, prefix: str) -> None:
        """One pod IP changed in the store: only its entry is looked at (no full recomputation)."""
        with self.lock:
            entry = self.entries.get(prefix)
            if entry is not None:
                value = self.entry_value(entry)
            else:
                value = self.static_entries().get(prefix)
                if value is None and prefix in self.local_prefixes:
                    value = (self.local_prefixes[prefix], None)
            self._set(prefix, value)

    def set_local_prefixes(self, prefixes: dict) -> None:
        """The policies' CIDR identities changed: only those entries are looked at."""
        with self.lock:
            old, self.local_prefixes = self.local_prefixes, dict(prefixes)
            if not self.synced.is_set():
                return  # the first apply() writes them
        for prefix in set(old) | set(prefixes):
            self.apply_prefix(prefix)

    def route_args(self, verb: str, cidr: str, node: dict) -> list:
        if self.config.routing_mode == "tunnel":
            return ["route", verb, cidr, "dev", VXLAN_DEVICE, "src", self.node["router_ip"],
                    "mtu", str(self.config.pod_mtu), "proto", ROUTE_PROTO]
        return ["route", verb, cidr, "via", node["ip"], "dev", self.config.uplink, "proto", ROUTE_PROTO]

    def first_sync(self) -> None:
        """Start from what the map and the routing table hold now (a restarted agent)."""
        self.applied = {e["prefix"]: (e["identity"], e["tunnel_endpoint"]) for e in self.datapath.ipcache.list()}
        self.routes = {}
        for route in ip.query(["route", "show", "proto", ROUTE_PROTO]):
            self.routes[route["dst"]] = None  # unknown target: rewritten once, or removed

    # --- the store -------------------------------------------------------------------------
    def load(self) -> None:
        kvs, revision = self.store.get_prefix("/apiary/")
        with self.lock:
            self.nodes = {kv.key[len(NODES):]: json.loads(kv.value) for kv in kvs if kv.key.startswith(NODES)}
            self.entries = {self.prefix_of(kv.key): json.loads(kv.value) for kv in kvs if kv.key.startswith(IPCACHE)}
            self.revision = revision
        for consumer in (self.policy, self.services):
            if consumer is not None:
                consumer.load(kvs, revision)
        self.apply()
        self.synced.set()

    @staticmethod
    def prefix_of(key: str) -> str:
        address, length = key[len(IPCACHE):].rsplit("/", 1)
        return str(ipaddress.ip_network("%s/%s" % (address, length)))

    def handle(self, event) -> None:
        key = event.kv.key
        self.revision = max(self.revision, event.kv.mod_revision)
        value = event.kv.value if event.type == "PUT" else None
        # Pods matter to both the policy repository (named ports) and the services (endpoints).
        taken = [consumer.handle(key, value, event.kv.mod_revision) for consumer in (self.policy, self.services)
                 if consumer is not None]
        if any(taken):
            return
        with self.lock:
            if key.startswith(NODES):
                name = key[len(NODES):]
                if event.type == "PUT":
                    self.nodes[name] = json.loads(event.kv.value)
                else:
                    self.nodes.pop(name, None)
            elif key.startswith(IPCACHE):
                prefix = self.prefix_of(key)
                if event.type == "PUT":
                    self.entries[prefix] = json.loads(event.kv.value)
                else:
                    self.entries.pop(prefix, None)
            else:
                return
        if key.startswith(IPCACHE):
            self.apply_prefix(prefix)
        else:
            self.apply()

    def run(self, stop: threading.Event) -> None:
        """Full read, then watch; start over after any failure, until `stop` is set."""
        self.first_sync()
        while not stop.is_set():
            try:
                self.load()
                for event in self.store.watch_prefix("/apiary/", start_revision=self.revision + 1, stop=stop):
                    self.handle(event)
            except Exception as exc:  # noqa: BLE001 - the loop must survive store outages
                self.errors += 1
                log.warning("store sync: %s; reading everything again in 1 s", exc)
                stop.wait(1.0)
