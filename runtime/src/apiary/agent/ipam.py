"""IP address management: the node's pod CIDR (claimed in the store) and pod IPs (on disk).

Like Cilium's cluster-pool mode: the cluster pool is cut into one CIDR per node, claimed once in
the store and kept for good (a restarted agent gets the same one). Within it, the first address is
the node's router IP (the pods' gateway) and each pod gets the next free one. Allocations are
files named by IP holding their owner (CNI container id + interface), like the reference
host-local plugin, so they survive agent restarts.
"""
from __future__ import annotations

import ipaddress
import os
import threading


class PoolExhausted(Exception):
    pass


def claim_node_cidr(store, node_name: str, pool: str, mask_size: int) -> str:
    """The node's pod CIDR: the one it claimed before, else the first free one in the pool."""
    prefix = "/apiary/ipam/nodes/"
    kvs, _ = store.get_prefix(prefix)
    for kv in kvs:
        if kv.value == node_name:
            return kv.key[len(prefix):].replace("_", "/")
    taken = {kv.key[len(prefix):] for kv in kvs}
    for subnet in ipaddress.ip_network(pool).subnets(new_prefix=int(mask_size)):
        key = str(subnet).replace("/", "_")
        if key not in taken and store.create(prefix + key, node_name):
            return str(subnet)
    raise PoolExhausted("cluster pool %s has no free /%s for node %s" % (pool, mask_size, node_name))


def router_ip(cidr: str) -> str:
    return str(next(ipaddress.ip_network(cidr).hosts()))


class PodIpam:
    """Pod addresses from the node's CIDR; thread-safe; one file per allocated IP."""

    def __init__(self, cidr: str, directory: str):
        self.network = ipaddress.ip_network(cidr)
        self.directory = directory
        self.lock = threading.Lock()
        os.makedirs(directory, mode=0o700, exist_ok=True)

    @property
    def capacity(self) -> int:
        """Addresses pods can get: the CIDR's hosts minus the router IP."""
        return max(self.network.num_addresses - 3, 0)

    def _allocations(self) -> dict:
        found = {}
        for name in os.listdir(self.directory):
            try:
                ip = ipaddress.ip_address(name)
            except ValueError:
                continue
            with open(os.path.join(self.directory, name)) as handle:
                found[str(ip)] = handle.read().strip()
        return found

    def allocate(self, owner: str) -> str:
        with self.lock:
            allocations = self._allocations()
            for ip, holder in allocations.items():
                if holder == owner:
                    return ip
            hosts = list(self.network.hosts())[1:]  # the first is the router IP
            last = self._last()
            # Continue after the last address handed out (as host-local does), so a released
            # address is not reused at once by the next pod.
            start = next((i + 1 for i, ip in enumerate(hosts) if str(ip) == last), 0)
            for ip in hosts[start:] + hosts[:start]:
                if str(ip) not in allocations:
                    path = os.path.join(self.directory, str(ip))
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "w") as handle:
                        handle.write(owner + "\n")
                    self._set_last(str(ip))
                    return str(ip)
            raise PoolExhausted("node pod CIDR %s has no free address" % self.network)

    def release(self, owner: str) -> list:
        with self.lock:
            released = [ip for ip, holder in self._allocations().items() if holder == owner]
            for ip in released:
                os.unlink(os.path.join(self.directory, ip))
            return released

    def owner_of(self, ip: str) -> str | None:
        return self._allocations().get(ip)

    def list(self) -> dict:
        return self._allocations()

    def _last(self):
        try:
            with open(os.path.join(self.directory, "last_reserved_ip")) as handle:
                return handle.read().strip()
        except FileNotFoundError:
            return None

    def _set_last(self, ip: str) -> None:
        with open(os.path.join(self.directory, "last_reserved_ip"), "w") as handle:
            handle.write(ip)

