"""Services into the datapath's load-balancing maps (bpf/lib/lb.h, docs/datapath.md "Services").

A frontend (address, port, protocol) has a master entry and one entry per backend slot in
apiary_lb4_services, per scope: the one backend set, or, when externalTrafficPolicy and
internalTrafficPolicy disagree, an external set (scope 0) and an in-cluster set (scope 1), as Cilium's
two-scope lookup. Backends (apiary_lb4_backends) are shared by id between frontends; the frontend's ID
is its reverse-NAT index. With the Maglev algorithm each frontend scope also has a table of M backend
ids, computed here from the backend set alone, so every node computes the same one.

Changes are incremental: upsert() and delete() touch only the entries of the frontend they are given
(its slots, tables, reverse NAT and affinity pairs, and backends no other frontend uses). The order
keeps the datapath consistent at every step: backends before the slots that name them, slots before
the master entry that counts them, stale slots after it.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import ipaddress

from apiary.bpf import maps
from apiary.errors import UserError

KINDS = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalIP")
STATES = ("active", "terminating")
ALGORITHMS = tuple(maps.LbConfigMap.ALGORITHMS)
# Cilium's choices for the Maglev table size (--bpf-lb-maglev-table-size): primes, M >> 100 * backends.
MAGLEV_TABLE_SIZES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
DEFAULT_MAGLEV_TABLE_SIZE = 16381
SCOPE_EXTERNAL, SCOPE_INTERNAL = 0, 1
# bpf/lib/lb.h
SVC_FLAG_EXTERNAL_IP = 1 << 0
SVC_FLAG_NODEPORT = 1 << 1
SVC_FLAG_LOADBALANCER = 1 << 2
SVC_FLAG_AFFINITY = 1 << 3
SVC_FLAG_LOCAL_SCOPE = 1 << 4
SVC_FLAG_ROUTABLE = 1 << 5
SVC_FLAG2_INT_LOCAL_SCOPE = 1 << 0
SVC_FLAG2_TWO_SCOPES = 1 << 1
KIND_FLAGS = {"ClusterIP": 0, "NodePort": SVC_FLAG_NODEPORT | SVC_FLAG_ROUTABLE,
              "LoadBalancer": SVC_FLAG_LOADBALANCER | SVC_FLAG_ROUTABLE,
              "ExternalIP": SVC_FLAG_EXTERNAL_IP | SVC_FLAG_ROUTABLE}
MAX_BACKENDS = 0xFFFF


def _check_address(what: str, address: str) -> None:
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise UserError("%s: %r is not an IPv4 address" % (what, address)) from None


def _check_port(what: str, port: int) -> None:
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise UserError("%s: port %r is out of range (1-65535)" % (what, port))


@dataclasses.dataclass(frozen=True)
class Frontend:
    """One address of a service: its ClusterIP, a node address for a NodePort, a LoadBalancer or an
    external IP. local_only_external: externalTrafficPolicy Local; local_only_internal:
    internalTrafficPolicy Local; affinity_timeout: sessionAffinity ClientIP's timeout in seconds."""
    address: str
    port: int
    protocol: str = "TCP"
    kind: str = "ClusterIP"
    local_only_external: bool = False
    local_only_internal: bool = False
    affinity_timeout: int | None = None

    def __post_init__(self):
        _check_address("frontend", self.address)
        _check_port("frontend %s" % self.address, self.port)
        maps.protocol_number(self.protocol)
        if self.kind not in KINDS:
            raise UserError("frontend %s: type %r is not one of %s" % (self, self.kind, ", ".join(KINDS)))
        if self.affinity_timeout is not None and not 1 <= self.affinity_timeout <= 0xFFFFFFFF:
            raise UserError("frontend %s: affinity timeout %r is out of range" % (self, self.affinity_timeout))

    def __str__(self) -> str:
        return "%s:%d/%s" % (self.address, self.port, self.protocol)


@dataclasses.dataclass(frozen=True)
class Backend:
    """A backend by id (shared between the frontends that name it); local: on this node."""
    id: int
    address: str
    port: int
    protocol: str = "TCP"
    local: bool = False
    state: str = "active"

    def __post_init__(self):
        if not isinstance(self.id, int) or not 1 <= self.id <= 0xFFFFFFFF:
            raise UserError("backend id %r is out of range (1-4294967295)" % (self.id,))
        _check_address("backend %d" % self.id, self.address)
        _check_port("backend %d" % self.id, self.port)
        maps.protocol_number(self.protocol)
        if self.state not in STATES:
            raise UserError("backend %d: state %r is not one of %s" % (self.id, self.state, ", ".join(STATES)))

    @property
    def name(self) -> str:
        """What Maglev hashes: the same backend is the same name on every node, whatever its id."""
        return "%s:%d/%s" % (self.address, self.port, self.protocol)


# --- Maglev (Eisenbud et al., NSDI 2016; Cilium's pkg/maglev) ------------------------------------------
def _offset_skip(name: str, m: int) -> tuple[int, int]:
    digest = hashlib.sha256(name.encode()).digest()
    h1, h2 = int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:16], "little")
    return h1 % m, h2 % (m - 1) + 1


def maglev_table(backends: list, m: int) -> list:
    """The Maglev lookup table of size m (a prime) for backends (ids or names): every backend walks
    its own permutation of the slots (offset and skip from hashes of its name), and the backends take
    turns claiming their next free slot until all are taken. Backends are sorted first, so the same set
    gives the same table on every node; each gets m/n slots give or take one; removing one backend
    moves little more than its own slots."""
    if m not in MAGLEV_TABLE_SIZES:
        raise UserError("maglev table size %r is not one of %s" % (m, ", ".join(map(str, MAGLEV_TABLE_SIZES))))
    ordered = sorted(set(backends), key=str)
    if not ordered:
        return []
    permutations = [_offset_skip(str(b), m) for b in ordered]
    following = [0] * len(ordered)
    table: list = [None] * m
    filled = 0
    while True:
        for i, (offset, skip) in enumerate(permutations):
            slot = (offset + following[i] * skip) % m
            while table[slot] is not None:
                following[i] += 1
                slot = (offset + following[i] * skip) % m
            table[slot] = ordered[i]
            following[i] += 1
            filled += 1
            if filled == m:
                return table


# --- the datapath's flow hashes (bpf/lib/hash.h), to predict a Maglev pick ---------------------------------
def _rol32(word: int, shift: int) -> int:
    return ((word << shift) | (word >> (32 - shift))) & 0xFFFFFFFF


def jhash_3words(a: int, b: int, c: int, initval: int) -> int:
    mask = 0xFFFFFFFF
    initval = (initval + 0xDEADBEEF + (3 << 2)) & mask
    a, b, c = (a + initval) & mask, (b + initval) & mask, (c + initval) & mask
    c ^= b; c = (c - _rol32(b, 14)) & mask  # noqa: E702 (the kernel's __jhash_final, line by line)
    a ^= c; a = (a - _rol32(c, 11)) & mask  # noqa: E702
    b ^= a; b = (b - _rol32(a, 25)) & mask  # noqa: E702
    c ^= b; c = (c - _rol32(b, 16)) & mask  # noqa: E702
    a ^= c; a = (a - _rol32(c, 4)) & mask  # noqa: E702
    b ^= a; b = (b - _rol32(a, 14)) & mask  # noqa: E702
    c ^= b; c = (c - _rol32(b, 24)) & mask  # noqa: E702
    return c


def _wire(address: str) -> int:
    """A __be32 as the datapath's u32 arithmetic sees it (little-endian load of network-order bytes)."""
    return int.from_bytes(ipaddress.IPv4Address(address).packed, "little")


def _wire_port(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def socket_hash(cookie: int, protocol: str) -> int:
    """bpf_sock.c's hash of a socket (its SO_COOKIE): the Maglev slot of a socket-level translation."""
    return jhash_3words(cookie & 0xFFFFFFFF, cookie >> 32, 0, maps.protocol_number(protocol))


def flow_hash(saddr: str, sport: int, daddr: str, dport: int, protocol: str) -> int:
    """lib/nodeport.h's hash of a packet's 5-tuple: the Maglev slot of a tc-level translation."""
    ports = (_wire_port(sport) << 16) | _wire_port(dport)
    return jhash_3words(_wire(saddr), _wire(daddr), ports, maps.protocol_number(protocol))


# --- the writer -----------------------------------------------------------------------------------------
class LoadBalancer:
    """The services of one node's datapath (its pin dir). One writer per node: backend reference
    counts are kept here, read back from the maps when it starts."""

    def __init__(self, pin_dir: str, algorithm: str = "random", maglev_table_size: int = DEFAULT_MAGLEV_TABLE_SIZE,
                 node_address: str | None = None):
        """node_address: the node's IP, the source of NodePort traffic SNATed to a remote backend."""
        if algorithm not in ALGORITHMS:
            raise UserError("load balancing algorithm %r is not one of %s" % (algorithm, ", ".join(ALGORITHMS)))
        if maglev_table_size not in MAGLEV_TABLE_SIZES:
            raise UserError("maglev table size %r is not one of %s"
                            % (maglev_table_size, ", ".join(map(str, MAGLEV_TABLE_SIZES))))
        self.algorithm, self.maglev_table_size = algorithm, maglev_table_size
        self.services = maps.ServiceMap(pin_dir)
        self.backends = maps.BackendMap(pin_dir)
        self.reverse_nat = maps.ReverseNatMap(pin_dir)
        self.affinity_match = maps.AffinityMatchMap(pin_dir)
        self.maglev = maps.MaglevMap(pin_dir)
        self.config = maps.LbConfigMap(pin_dir)
        # (address, port, protocol) -> {scope: backend ids of its slots}; frontend ID -> frontend key.
        self._slots: dict = {}
        self._ids: dict = {}
        self._refs: collections.Counter = collections.Counter()  # backend id -> slots naming it
        for key, value in self.services.items():
            if key.backend_slot == 0:
                frontend = (maps.ip4_str(key.address), maps.port_int(key.dport), maps.PROTOCOL_NAMES[key.proto])
                self._slots.setdefault(frontend, {})[key.scope] = self._read_slots(frontend, key.scope, value)
                self._ids[value.rev_nat_index] = frontend
        for scopes in self._slots.values():
            self._count(scopes, +1)
        config = self.config.get()
        if self._slots and config["algorithm"] == "maglev" and algorithm == "maglev" and \
                config["maglev_table_size"] != maglev_table_size:
            raise UserError("the Maglev tables of %d frontends have %d slots, not %d: delete the services "
                            "before changing the table size" % (len(self._slots), config["maglev_table_size"],
                                                                maglev_table_size))
        if node_address is not None:
            _check_address("node address", node_address)
        self.config.set(algorithm, maglev_table_size, node_address)

    def close(self) -> None:
        for pinned in (self.services, self.backends, self.reverse_nat, self.affinity_match, self.maglev, self.config):
            pinned.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read_slots(self, frontend: tuple, scope: int, master) -> list[int]:
        ids = []
        for slot in range(1, master.count + master.qcount + 1):
            value = self.services.get(*frontend, slot=slot, scope=scope)
            if value is not None:
                ids.append(value.backend_id)
        return ids

    def _count(self, scopes: dict, sign: int) -> None:
        """Backend reference counts, kept as slots come and go, so that a change costs the same with
        10 or 10,000 frontends."""
        for ids in scopes.values():
            for backend_id in ids:
                self._refs[backend_id] += sign
                if self._refs[backend_id] <= 0:
                    del self._refs[backend_id]

    @staticmethod
    def _backend_sets(frontend: Frontend, backends: list[Backend]) -> dict:
        """{scope: (active, terminating)} the frontend's backend sets, as Cilium's two-scope services:
        a ClusterIP serves only clients in the cluster (internalTrafficPolicy); the others serve
        outside clients with the external set and, when the policies differ, in-cluster clients with
        the internal one."""
        def pick(local_only: bool, state: str) -> list[Backend]:
            return [b for b in backends if b.state == state and (b.local or not local_only)]

        if frontend.kind == "ClusterIP":
            scopes = {SCOPE_EXTERNAL: frontend.local_only_internal}
        else:
            scopes = {SCOPE_EXTERNAL: frontend.local_only_external}
            if frontend.local_only_internal != frontend.local_only_external:
                scopes[SCOPE_INTERNAL] = frontend.local_only_internal
        return {scope: (pick(local, "active"), pick(local, "terminating")) for scope, local in scopes.items()}

    def _master(self, service_id: int, frontend: Frontend, scope: int, active: list, terminating: list,
                two_scopes: bool) -> maps.Lb4Service:
        flags = KIND_FLAGS[frontend.kind]
        if frontend.affinity_timeout:
            flags |= SVC_FLAG_AFFINITY
        if frontend.local_only_external and frontend.kind != "ClusterIP":
            flags |= SVC_FLAG_LOCAL_SCOPE
        flags2 = (SVC_FLAG2_INT_LOCAL_SCOPE if frontend.local_only_internal else 0) | \
            (SVC_FLAG2_TWO_SCOPES if two_scopes else 0)
        return maps.Lb4Service(backend_id=frontend.affinity_timeout or 0, count=len(active), qcount=len(terminating),
                               rev_nat_index=service_id, flags=flags, flags2=flags2)

    def upsert(self, service_id: int, frontend: Frontend, backends: list[Backend]) -> None:
        """Make the frontend (with ID service_id, also its reverse-NAT index) serve these backends."""
        if not isinstance(service_id, int) or not 1 <= service_id <= 0xFFFF:
            raise UserError("frontend %s: service ID %r is out of range (1-65535)" % (frontend, service_id))
        fkey = (frontend.address, frontend.port, frontend.protocol)
        holder = self._ids.get(service_id)
        if holder is not None and holder != fkey:
            raise UserError("frontend %s: service ID %d is %s's" % (frontend, service_id, "%s:%d/%s" % holder))
        ids = [b.id for b in backends]
        if len(set(ids)) != len(ids):
            raise UserError("frontend %s: backend ids are not unique" % frontend)
        if len(backends) > MAX_BACKENDS:
            raise UserError("frontend %s: more than %d backends" % (frontend, MAX_BACKENDS))
        sets = self._backend_sets(frontend, backends)
        old = self._slots.get(fkey, {})
        old_id = self._master_id(fkey)

        for backend in backends:
            self.backends.set(backend.id, backend.address, backend.port, backend.protocol, backend.state)
        self.reverse_nat.set(service_id, frontend.address, frontend.port)
        active_ids = {b.id for active, _ in sets.values() for b in active}
        for backend_id in active_ids:
            self.affinity_match.add(backend_id, service_id)
        written = {}
        for scope, (active, terminating) in sets.items():
            if self.algorithm == "maglev":
                if active:
                    by_name = {b.name: b.id for b in active}
                    self.maglev.set_table(service_id, scope, [by_name[n] for n in
                                                              maglev_table(list(by_name), self.maglev_table_size)])
                else:
                    self.maglev.remove(service_id, scope)
            slots = [b.id for b in active + terminating]
            for slot, backend_id in enumerate(slots, 1):
                self.services.set(*fkey, slot, scope, maps.Lb4Service(backend_id=backend_id, rev_nat_index=service_id))
            self.services.set(*fkey, 0, scope, self._master(service_id, frontend, scope, active, terminating,
                                                            len(sets) > 1))
            for slot in range(len(slots) + 1, len(old.get(scope, [])) + 1):
                self.services.remove(*fkey, slot, scope)
            written[scope] = slots
        for scope in set(old) - set(sets):  # the in-cluster set of a service that no longer has two
            self._remove_scope(fkey, scope, len(old[scope]), old_id)
        self._count(old, -1)
        self._count(written, +1)
        self._slots[fkey] = written
        self._ids[service_id] = fkey

        old_backends = {b for ids in old.values() for b in ids}
        if old_id is not None and old_id != service_id:  # the frontend got a new ID: the old one goes
            self._forget_id(old_id, old_backends)
        else:
            for backend_id in old_backends - active_ids:
                self.affinity_match.remove(backend_id, service_id)
        self._delete_unreferenced(old_backends - set(ids))

    def delete(self, frontend: Frontend) -> bool:
        """Remove the frontend and what only it used; False when it was not there."""
        fkey = (frontend.address, frontend.port, frontend.protocol)
        old = self._slots.pop(fkey, None)
        if old is None:
            return False
        self._count(old, -1)
        service_id = self._master_id(fkey)
        # The external master first: from then on the datapath no longer finds the frontend.
        for scope in sorted(old):
            self._remove_scope(fkey, scope, len(old[scope]), service_id)
        old_backends = {b for ids in old.values() for b in ids}
        if service_id is not None:
            self._forget_id(service_id, old_backends)
        self._delete_unreferenced(old_backends)
        return True

    def _master_id(self, fkey: tuple) -> int | None:
        master = self.services.get(*fkey, slot=0, scope=SCOPE_EXTERNAL)
        return None if master is None else master.rev_nat_index

    def _remove_scope(self, fkey: tuple, scope: int, slots: int, service_id: int | None) -> None:
        for slot in range(0, slots + 1):
            self.services.remove(*fkey, slot, scope)
        if service_id is not None:
            self.maglev.remove(service_id, scope)

    def _forget_id(self, service_id: int, backends: set[int]) -> None:
        """Entries of a frontend ID no frontend has any more."""
        self.reverse_nat.delete(service_id)
        for scope in (SCOPE_EXTERNAL, SCOPE_INTERNAL):
            self.maglev.remove(service_id, scope)
        for backend_id in backends:
            self.affinity_match.remove(backend_id, service_id)
        self._ids.pop(service_id, None)

    def _delete_unreferenced(self, candidates: set[int]) -> None:
        for backend_id in [b for b in candidates if b not in self._refs]:
            self.backends.delete(backend_id)

    def list(self) -> list[dict]:
        """Rows for `apiary service list`: {id, frontend "ip:port/PROTO", type, backends: [{id, address,
        state}]}, by ID."""
        names = {flag: kind for kind, flag in KIND_FLAGS.items()}
        rows = []
        for row in self.services.list():
            if row["slot"] != 0 or row["scope"] != SCOPE_EXTERNAL:
                continue
            address, rest = row["frontend"].rsplit(":", 1)
            port, protocol = rest.split("/")
            ids = []
            for scope in (SCOPE_EXTERNAL, SCOPE_INTERNAL):
                master = self.services.get(address, int(port), protocol, 0, scope)
                if master is not None:
                    ids += [i for i in self._read_slots((address, int(port), protocol), scope, master) if i not in ids]
            backends = [self.backends.get(i) for i in ids]
            rows.append({"id": row["rev_nat_index"], "frontend": row["frontend"],
                         "type": names.get(row["flags"] & (SVC_FLAG_EXTERNAL_IP | SVC_FLAG_NODEPORT |
                                                           SVC_FLAG_LOADBALANCER | SVC_FLAG_ROUTABLE), "ClusterIP"),
                         "backends": [b for b in backends if b is not None]})
        return rows
