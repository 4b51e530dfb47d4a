"""The datapath's pinned maps from Python: ctypes mirrors of bpf/lib/maps.h and typed views of them.

The Structures below must match the C layout byte for byte (tests/datapath/test_layout.py compares
them with the BTF of the built objects). The typed maps take and return plain values: IP and prefix
strings, MAC strings "02:00:00:00:00:01", dicts.
"""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket

from apiary.bpf import libbpf
from apiary.errors import UserError

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
# Big-endian fields (__be16/__be32) are kept as the raw bytes the kernel sees: read and written with
# the helpers below, never as host integers.
be16, be32 = ctypes.c_uint8 * 2, ctypes.c_uint8 * 4
MAC = ctypes.c_uint8 * 6

ENDPOINT_KEY_IPV4 = 1
ENDPOINT_KEY_IPV6 = 2
# An ipcache prefix length also counts cluster_id, pad and family (32 bits): a /32 host is 64.
IPCACHE_PREFIX_BITS = 32
METRIC_DIRECTIONS = {1: "ingress", 2: "egress"}
# apiary_policy keys: the bits always matched (identity, endpoint, direction), then protocol and port.
POLICY_STATIC_PREFIX = 32 + 16 + 8
POLICY_FULL_PREFIX = POLICY_STATIC_PREFIX + 8 + 16
# Metrics reasons: 0 forwarded, else Cilium's drop reason numbers (bpf/lib/drop.h).
REASONS = {
    0: "Forwarded",
    130: "Invalid source mac",
    132: "Invalid source ip",
    133: "Policy denied",
    134: "Invalid packet",
    139: "Unknown L3 protocol",
    141: "Error writing to packet",
    147: "No tunnel key",
    158: "Service backend not found",
    160: "No tunnel endpoint",
    167: "No mapping for NAT masquerade",
    169: "FIB lookup failed",
    181: "Policy denied by denylist",
}


class V4V6(ctypes.Union):
    _fields_ = [("ip4", be32), ("ip6", u8 * 16)]


class EndpointKey(ctypes.Structure):
    _fields_ = [("addr", V4V6), ("family", u8), ("pad", u8 * 3)]


class EndpointInfo(ctypes.Structure):
    _fields_ = [("ifindex", u32), ("lxc_id", u16), ("flags", u16), ("sec_identity", u32), ("mac", MAC),
                ("node_mac", MAC), ("pad", u32)]


class IpcacheKey(ctypes.Structure):
    _fields_ = [("prefixlen", u32), ("cluster_id", u16), ("pad", u8), ("family", u8), ("addr", V4V6)]


class RemoteEndpointInfo(ctypes.Structure):
    _fields_ = [("sec_identity", u32), ("tunnel_endpoint", be32), ("node_id", u16), ("key", u8), ("flags", u8)]


class PolicyKey(ctypes.Structure):
    _fields_ = [("prefixlen", u32), ("sec_label", u32), ("lxc_id", u16), ("egress", u8), ("protocol", u8),
                ("dport", be16), ("pad", u16)]


class PolicyEntry(ctypes.Structure):
    _fields_ = [("deny", u8), ("pad", u8 * 7), ("packets", u64), ("bytes", u64)]


class Ipv4CtTuple(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("daddr", be32), ("saddr", be32), ("dport", be16), ("sport", be16), ("nexthdr", u8), ("flags", u8)]


class CtEntry(ctypes.Structure):
    _fields_ = [("packets", u64), ("bytes", u64), ("lifetime", u32), ("flags", u16), ("rev_nat_index", u16),
                ("src_sec_id", u32), ("tx_flags_seen", u8), ("rx_flags_seen", u8), ("pad", u16),
                ("last_tx_report", u32), ("last_rx_report", u32)]


class Lb4Key(ctypes.Structure):
    _fields_ = [("address", be32), ("dport", be16), ("backend_slot", u16), ("proto", u8), ("scope", u8),
                ("pad", u16)]


class Lb4Service(ctypes.Structure):
    _fields_ = [("backend_id", u32), ("count", u16), ("rev_nat_index", u16), ("flags", u8), ("flags2", u8),
                ("qcount", u16)]


class Lb4Backend(ctypes.Structure):
    _fields_ = [("address", be32), ("port", be16), ("proto", u8), ("flags", u8)]


class Lb4ReverseNat(ctypes.Structure):
    _fields_ = [("address", be32), ("port", be16), ("pad", u16)]


class Lb4AffinityKey(ctypes.Structure):
    _fields_ = [("client_id", u64), ("rev_nat_index", u16), ("netns_cookie", u8), ("pad", u8 * 5)]


class LbAffinityVal(ctypes.Structure):
    _fields_ = [("last_used", u64), ("backend_id", u32), ("pad", u32)]


class LbAffinityMatch(ctypes.Structure):
    _fields_ = [("backend_id", u32), ("rev_nat_index", u16), ("pad", u16)]


class Lb4ReverseSkKey(ctypes.Structure):
    _fields_ = [("cookie", u64), ("address", be32), ("port", be16), ("pad", u16)]


class Lb4ReverseSk(ctypes.Structure):
    _fields_ = [("address", be32), ("port", be16), ("rev_nat_index", u16)]


class Lb4NatEntry(ctypes.Structure):
    _fields_ = [("saddr", be32), ("daddr", be32), ("sport", be16), ("dport", be16), ("lifetime", u32),
                ("rev_nat_index", u16), ("pad", u16)]


class LbConfig(ctypes.Structure):
    _fields_ = [("maglev_table_size", u32), ("node_address", be32), ("algorithm", u8), ("pad", u8 * 3)]


class FlowEvent(ctypes.Structure):
    _fields_ = [("type", u8), ("sub_type", u8), ("flags", u8), ("proto", u8), ("lxc_id", u16), ("pad", u16),
                ("ktime", u64), ("src_identity", u32), ("dst_identity", u32), ("saddr", be32), ("daddr", be32),
                ("sport", be16), ("dport", be16), ("tcp_flags", u8), ("icmp_type", u8), ("icmp_code", u8),
                ("pad2", u8), ("orig_addr", be32), ("orig_port", be16), ("pad3", u16), ("ifindex", u32),
                ("len", u32), ("cookie", u64)]


class EventsConfig(ctypes.Structure):
    _fields_ = [("enabled", u8), ("pad", u8 * 3)]


class MetricsKey(ctypes.Structure):
    _fields_ = [("reason", u8), ("dir", u8), ("pad", u16)]


class MetricsValue(ctypes.Structure):
    _fields_ = [("count", u64), ("bytes", u64)]


# C struct name -> its mirror (what the layout test compares).
STRUCTS = {
    "v4v6": V4V6, "endpoint_key": EndpointKey, "endpoint_info": EndpointInfo, "ipcache_key": IpcacheKey,
    "remote_endpoint_info": RemoteEndpointInfo, "policy_key": PolicyKey, "policy_entry": PolicyEntry,
    "ipv4_ct_tuple": Ipv4CtTuple, "ct_entry": CtEntry, "lb4_key": Lb4Key, "lb4_service": Lb4Service,
    "lb4_backend": Lb4Backend, "lb4_reverse_nat": Lb4ReverseNat, "lb4_affinity_key": Lb4AffinityKey,
    "lb_affinity_val": LbAffinityVal, "lb_affinity_match": LbAffinityMatch, "lb4_reverse_sk_key": Lb4ReverseSkKey,
    "lb4_reverse_sk": Lb4ReverseSk, "lb4_nat_entry": Lb4NatEntry, "lb_config": LbConfig,
    "metrics_key": MetricsKey, "metrics_value": MetricsValue, "flow_event": FlowEvent,
    "events_config": EventsConfig,
}
# Pinned map name -> (key type, value type, per-CPU). apiary_events (a ring buffer) has neither.
LAYOUTS = {
    "apiary_lxc": (EndpointKey, EndpointInfo, False),
    "apiary_ipcache": (IpcacheKey, RemoteEndpointInfo, False),
    "apiary_policy": (PolicyKey, PolicyEntry, False),
    "apiary_ct4": (Ipv4CtTuple, CtEntry, False),
    "apiary_lb4_services": (Lb4Key, Lb4Service, False),
    "apiary_lb4_backends": (u32, Lb4Backend, False),
    "apiary_lb4_reverse_nat": (u16, Lb4ReverseNat, False),
    "apiary_lb4_affinity": (Lb4AffinityKey, LbAffinityVal, False),
    "apiary_lb_affinity_match": (LbAffinityMatch, u32, False),
    "apiary_lb4_maglev": (u32, u32, False),  # value: the inner table's fd (update) or id (lookup)
    "apiary_lb4_reverse_sk": (Lb4ReverseSkKey, Lb4ReverseSk, False),
    "apiary_lb4_nat": (Ipv4CtTuple, Lb4NatEntry, False),
    "apiary_lb_config": (u32, LbConfig, False),
    "apiary_metrics": (MetricsKey, MetricsValue, True),
    "apiary_events_config": (u32, EventsConfig, False),
    "apiary_events_lost": (u32, u64, True),
}
MAP_NAMES = tuple(LAYOUTS) + ("apiary_events",)
# L4 protocols of services by name, as Kubernetes spells them.
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()}


# --- value conversions ----------------------------------------------------------------------------
def mac_bytes(mac: str) -> MAC:
    parts = mac.split(":")
    if len(parts) != 6:
        raise UserError("%r is not a MAC address (like 02:00:00:00:00:01)" % mac)
    try:
        return MAC(*(int(p, 16) for p in parts))
    except ValueError:
        raise UserError("%r is not a MAC address (like 02:00:00:00:00:01)" % mac) from None


def mac_str(raw) -> str:
    return ":".join("%02x" % b for b in bytes(raw))


def _address(text: str) -> ipaddress._BaseAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise UserError("%r is not an IP address" % text) from None


def _set_addr(addr: V4V6, ip) -> int:
    """Store an address in the union; returns the key family."""
    if ip.version == 4:
        ctypes.memmove(addr.ip4, ip.packed, 4)
        return ENDPOINT_KEY_IPV4
    ctypes.memmove(addr.ip6, ip.packed, 16)
    return ENDPOINT_KEY_IPV6


def _get_addr(addr: V4V6, family: int):
    return ipaddress.ip_address(bytes(addr.ip4) if family == ENDPOINT_KEY_IPV4 else bytes(addr.ip6))


def ip4_be(text: str | None) -> be32:
    """An IPv4 address (None: 0.0.0.0) as the 4 network-order bytes of a __be32 field."""
    return be32(*_address(text or "0.0.0.0").packed)


def port_be(port: int) -> be16:
    """A port as the 2 network-order bytes of a __be16 field."""
    if not 0 <= port <= 65535:
        raise UserError("port %d is out of range (0-65535)" % port)
    return be16(*port.to_bytes(2, "big"))


def port_int(raw) -> int:
    return int.from_bytes(bytes(raw), "big")


def protocol_number(name: str) -> int:
    if name not in PROTOCOLS:
        raise UserError("protocol %r is not one of %s" % (name, ", ".join(PROTOCOLS)))
    return PROTOCOLS[name]


def ip4_str(raw) -> str | None:
    """The address in a __be32 field; None for 0.0.0.0 (unset)."""
    data = bytes(raw)
    return None if data == bytes(4) else socket.inet_ntoa(data)


# --- a pinned map -----------------------------------------------------------------------------------
class Map(libbpf.Closable):
    """A map pinned in bpffs, with ctypes key and value types. For a per-CPU map a lookup returns one
    value per possible CPU."""

    def __init__(self, path: str, key_type, value_type, percpu: bool = False):
        self.path, self.key_type, self.value_type, self.percpu = path, key_type, value_type, percpu
        try:
            self.fd = libbpf.obj_get(path)
        except libbpf.LibbpfError as exc:
            if exc.errno == errno.ENOENT:
                raise UserError("no map pinned at %s (is the datapath loaded? `apiary datapath apply`)" % path) from None
            raise
        info = libbpf.map_info(self.fd)
        want = (ctypes.sizeof(key_type), ctypes.sizeof(value_type))
        if (info["key_size"], info["value_size"]) != want:
            self.close()
            raise UserError("map %s has %d-byte keys and %d-byte values; this runtime expects %d and %d "
                            "(objects and runtime from different versions?)" % ((path, info["key_size"],
                                                                                 info["value_size"]) + want))
        self._ncpus = libbpf.num_possible_cpus() if percpu else 1
        # Per-CPU values come as one 8-byte aligned slot per possible CPU.
        self._stride = (ctypes.sizeof(value_type) + 7) & ~7

    @classmethod
    def open(cls, pin_dir: str, name: str) -> "Map":
        key_type, value_type, percpu = LAYOUTS[name]
        return cls(os.path.join(pin_dir, name), key_type, value_type, percpu)

    def close(self) -> None:
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
            self.fd = None

    def _values(self, buf):
        values = [self.value_type.from_buffer_copy(buf, cpu * self._stride) for cpu in range(self._ncpus)]
        return values if self.percpu else values[0]

    def lookup(self, key):
        buf = ctypes.create_string_buffer(self._stride * self._ncpus)
        return self._values(buf) if libbpf.map_lookup(self.fd, key, buf) else None

    def update(self, key, value, flags: int = libbpf.BPF_ANY) -> None:
        libbpf.map_update(self.fd, key, value, flags)

    def delete(self, key) -> bool:
        return libbpf.map_delete(self.fd, key)

    def keys(self):
        key, following = None, self.key_type()
        while libbpf.map_get_next_key(self.fd, key, following):
            key, following = following, self.key_type()
            yield key

    def items(self):
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:  # deleted meanwhile
                yield key, value


class _TypedMap(Map):
    NAME = ""

    def __init__(self, pin_dir: str):
        key_type, value_type, percpu = LAYOUTS[self.NAME]
        super().__init__(os.path.join(pin_dir, self.NAME), key_type, value_type, percpu)


class EndpointMap(_TypedMap):
    """apiary_lxc: this node's endpoints by IP."""
    NAME = "apiary_lxc"

    @staticmethod
    def key(ip: str) -> EndpointKey:
        key = EndpointKey()
        key.family = _set_addr(key.addr, _address(ip))
        return key

    @staticmethod
    def _dict(key: EndpointKey, info: EndpointInfo) -> dict:
        return {"ip": str(_get_addr(key.addr, key.family)), "ifindex": info.ifindex, "lxc_id": info.lxc_id,
                "flags": info.flags, "identity": info.sec_identity, "mac": mac_str(info.mac),
                "node_mac": mac_str(info.node_mac)}

    def set(self, ip: str, ifindex: int, lxc_id: int, identity: int, mac: str, node_mac: str, flags: int = 0) -> None:
        info = EndpointInfo(ifindex=ifindex, lxc_id=lxc_id, flags=flags, sec_identity=identity,
                            mac=mac_bytes(mac), node_mac=mac_bytes(node_mac))
        self.update(self.key(ip), info)

    def get(self, ip: str) -> dict | None:
        key = self.key(ip)
        info = self.lookup(key)
        return None if info is None else self._dict(key, info)

    def delete(self, ip: str) -> bool:
        return super().delete(self.key(ip))

    def list(self) -> list[dict]:
        return sorted((self._dict(k, v) for k, v in self.items()), key=lambda e: _address(e["ip"]))


class IpcacheMap(_TypedMap):
    """apiary_ipcache: prefixes ("10.233.65.4/32"; a bare address is a host) to identity and node."""
    NAME = "apiary_ipcache"

    @staticmethod
    def key(prefix: str) -> IpcacheKey:
        try:
            net = ipaddress.ip_network(prefix, strict=True)
        except ValueError as exc:
            raise UserError("%r is not an IP prefix: %s" % (prefix, exc)) from None
        key = IpcacheKey(prefixlen=IPCACHE_PREFIX_BITS + net.prefixlen)
        key.family = _set_addr(key.addr, net.network_address)
        return key

    @staticmethod
    def _value(info: RemoteEndpointInfo) -> dict:
        return {"identity": info.sec_identity, "tunnel_endpoint": ip4_str(info.tunnel_endpoint),
                "node_id": info.node_id, "key": info.key, "flags": info.flags}

    def set(self, prefix: str, identity: int, tunnel_endpoint: str | None = None, node_id: int = 0,
            key: int = 0, flags: int = 0) -> None:
        info = RemoteEndpointInfo(sec_identity=identity, tunnel_endpoint=ip4_be(tunnel_endpoint), node_id=node_id,
                                  key=key, flags=flags)
        self.update(self.key(prefix), info)

    def get(self, address_or_prefix: str) -> dict | None:
        """What the datapath sees: the longest prefix in the map that holds the address (or prefix)."""
        info = self.lookup(self.key(address_or_prefix))
        return None if info is None else self._value(info)

    def delete(self, prefix: str) -> bool:
        return super().delete(self.key(prefix))

    def list(self) -> list[dict]:
        entries = []
        for key, info in self.items():
            prefix = "%s/%d" % (_get_addr(key.addr, key.family), key.prefixlen - IPCACHE_PREFIX_BITS)
            entries.append(dict(self._value(info), prefix=prefix))
        return sorted(entries, key=lambda e: ipaddress.ip_network(e["prefix"]))


class MetricsMap(_TypedMap):
    """apiary_metrics: packets and bytes per (reason, direction), summed over the CPUs."""
    NAME = "apiary_metrics"

    def list(self) -> list[dict]:
        rows = []
        for key, per_cpu in self.items():
            rows.append({"reason": key.reason, "reason_name": REASONS.get(key.reason, "reason %d" % key.reason),
                         "direction": METRIC_DIRECTIONS.get(key.dir, str(key.dir)),
                         "count": sum(v.count for v in per_cpu), "bytes": sum(v.bytes for v in per_cpu)})
        return sorted(rows, key=lambda r: (r["reason"], r["direction"]))


class PolicyMap(_TypedMap):
    """apiary_policy: the policy entries of every endpoint of the node (one LPM trie; see
    bpf/lib/maps.h). Entries are (lxc_id, identity, egress, protocol, port, port_prefix) -> deny, with
    the datapath's packet and byte counters."""
    NAME = "apiary_policy"

    @staticmethod
    def key(lxc_id: int, identity: int, egress: bool, protocol: int, port: int, port_prefix: int) -> PolicyKey:
        if protocol == 0 and (port or port_prefix):
            raise UserError("policy entry: a port needs a protocol")
        if not 0 <= port_prefix <= 16 or not 0 <= port <= 65535:
            raise UserError("policy entry: port %d/%d out of range" % (port, port_prefix))
        prefix = POLICY_STATIC_PREFIX + (8 + port_prefix if protocol else 0)
        return PolicyKey(prefixlen=prefix, sec_label=identity, lxc_id=lxc_id, egress=1 if egress else 0,
                         protocol=protocol, dport=be16(*port.to_bytes(2, "big")))

    @staticmethod
    def _dict(key: PolicyKey, entry: PolicyEntry) -> dict:
        bits = key.prefixlen - POLICY_STATIC_PREFIX
        return {"lxc_id": key.lxc_id, "identity": key.sec_label, "egress": bool(key.egress),
                "protocol": key.protocol if bits else 0, "port": int.from_bytes(bytes(key.dport), "big"),
                "port_prefix": max(bits - 8, 0), "deny": bool(entry.deny), "packets": entry.packets,
                "bytes": entry.bytes}

    def set(self, lxc_id: int, identity: int, egress: bool, protocol: int, port: int, port_prefix: int,
            deny: bool) -> None:
        """Write an entry; the counters of an entry that exists are kept (only the verdict changes)."""
        key = self.key(lxc_id, identity, egress, protocol, port, port_prefix)
        entry = self.lookup(key) or PolicyEntry()
        entry.deny = 1 if deny else 0
        self.update(key, entry)

    def delete(self, lxc_id: int, identity: int, egress: bool, protocol: int, port: int, port_prefix: int) -> bool:
        return super().delete(self.key(lxc_id, identity, egress, protocol, port, port_prefix))

    def list(self, lxc_id: int | None = None) -> list[dict]:
        rows = [self._dict(k, v) for k, v in self.items() if lxc_id is None or k.lxc_id == lxc_id]
        return sorted(rows, key=lambda r: (r["lxc_id"], r["egress"], r["identity"], r["protocol"], r["port"],
                                           r["port_prefix"]))


# --- services (bpf/lib/lb.h) -------------------------------------------------------------------------
def _endpoint(address, port, proto) -> str:
    """"10.96.0.10:80/TCP", as `apiary service list` shows frontends and backends."""
    return "%s:%d/%s" % (ip4_str(address) or "0.0.0.0", port_int(port), PROTOCOL_NAMES.get(proto, str(proto)))


class ServiceMap(_TypedMap):
    """apiary_lb4_services: per frontend (address, port, protocol) and scope, the master entry (slot 0)
    and one entry per backend slot."""
    NAME = "apiary_lb4_services"

    @staticmethod
    def key(address: str, port: int, protocol: str, slot: int = 0, scope: int = 0) -> Lb4Key:
        return Lb4Key(address=ip4_be(address), dport=port_be(port), backend_slot=slot,
                      proto=protocol_number(protocol), scope=scope)

    def get(self, address: str, port: int, protocol: str, slot: int = 0, scope: int = 0) -> Lb4Service | None:
        return self.lookup(self.key(address, port, protocol, slot, scope))

    def set(self, address: str, port: int, protocol: str, slot: int, scope: int, value: Lb4Service) -> None:
        self.update(self.key(address, port, protocol, slot, scope), value)

    def remove(self, address: str, port: int, protocol: str, slot: int, scope: int) -> bool:
        return self.delete(self.key(address, port, protocol, slot, scope))

    def list(self) -> list[dict]:
        rows = [{"frontend": _endpoint(k.address, k.dport, k.proto), "scope": k.scope, "slot": k.backend_slot,
                 "backend_id": v.backend_id, "count": v.count, "qcount": v.qcount, "rev_nat_index": v.rev_nat_index,
                 "flags": v.flags, "flags2": v.flags2} for k, v in self.items()]
        return sorted(rows, key=lambda r: (r["rev_nat_index"], r["scope"], r["slot"]))


class BackendMap(_TypedMap):
    """apiary_lb4_backends: backend id -> address, port, protocol and state."""
    NAME = "apiary_lb4_backends"
    STATES = {0: "active", 1: "terminating"}

    def set(self, backend_id: int, address: str, port: int, protocol: str, state: str = "active") -> None:
        flags = {name: number for number, name in self.STATES.items()}[state]
        self.update(u32(backend_id), Lb4Backend(address=ip4_be(address), port=port_be(port),
                                                proto=protocol_number(protocol), flags=flags))

    @classmethod
    def _dict(cls, backend_id: int, value: Lb4Backend) -> dict:
        return {"id": backend_id, "address": _endpoint(value.address, value.port, value.proto),
                "state": cls.STATES.get(value.flags, str(value.flags))}

    def get(self, backend_id: int) -> dict | None:
        value = self.lookup(u32(backend_id))
        return None if value is None else self._dict(backend_id, value)

    def delete(self, backend_id: int) -> bool:
        return super().delete(u32(backend_id))

    def list(self) -> list[dict]:
        return sorted((self._dict(k.value, v) for k, v in self.items()), key=lambda r: r["id"])


class ReverseNatMap(_TypedMap):
    """apiary_lb4_reverse_nat: frontend ID -> the frontend's address and port."""
    NAME = "apiary_lb4_reverse_nat"

    def set(self, index: int, address: str, port: int) -> None:
        self.update(u16(index), Lb4ReverseNat(address=ip4_be(address), port=port_be(port)))

    def get(self, index: int) -> tuple[str, int] | None:
        value = self.lookup(u16(index))
        return None if value is None else (ip4_str(value.address), port_int(value.port))

    def delete(self, index: int) -> bool:
        return super().delete(u16(index))


class AffinityMatchMap(_TypedMap):
    """apiary_lb_affinity_match: the (backend, frontend ID) pairs an affinity entry may use."""
    NAME = "apiary_lb_affinity_match"

    def add(self, backend_id: int, index: int) -> None:
        self.update(LbAffinityMatch(backend_id=backend_id, rev_nat_index=index), u32(0))

    def remove(self, backend_id: int, index: int) -> bool:
        return self.delete(LbAffinityMatch(backend_id=backend_id, rev_nat_index=index))

    def list(self) -> list[tuple[int, int]]:
        return sorted((k.backend_id, k.rev_nat_index) for k in self.keys())


class MaglevMap(_TypedMap):
    """apiary_lb4_maglev: (scope << 16 | frontend ID) -> the frontend's Maglev table, an inner array of
    backend ids that is written whole and swapped in with one update."""
    NAME = "apiary_lb4_maglev"

    @staticmethod
    def key(index: int, scope: int) -> u32:
        return u32(scope << 16 | index)

    def set_table(self, index: int, scope: int, backend_ids: list[int]) -> None:
        size = len(backend_ids)
        fd = libbpf.array_map_create("apiary_maglev", ctypes.sizeof(u32), size, inner=True)
        try:
            libbpf.map_update_batch(fd, (u32 * size)(*range(size)), (u32 * size)(*backend_ids), size)
            self.update(self.key(index, scope), u32(fd))
        finally:
            os.close(fd)

    def table(self, index: int, scope: int) -> list[int] | None:
        """The table as the datapath sees it (for tests and `apiary map get`); None when there is none."""
        map_id = self.lookup(self.key(index, scope))
        if map_id is None:
            return None
        fd = libbpf.map_fd_by_id(map_id.value)
        try:
            size, value = libbpf.map_info(fd)["max_entries"], u32()
            table = []
            for slot in range(size):
                libbpf.map_lookup(fd, u32(slot), value)
                table.append(value.value)
            return table
        finally:
            os.close(fd)

    def remove(self, index: int, scope: int) -> bool:
        return self.delete(self.key(index, scope))


class LbConfigMap(_TypedMap):
    """apiary_lb_config: the backend selection algorithm and the Maglev table size."""
    NAME = "apiary_lb_config"
    ALGORITHMS = {"random": 0, "maglev": 1}

    def get(self) -> dict:
        value = self.lookup(u32(0))
        names = {number: name for name, number in self.ALGORITHMS.items()}
        return {"algorithm": names.get(value.algorithm, str(value.algorithm)),
                "maglev_table_size": value.maglev_table_size, "node_address": ip4_str(value.node_address)}

    def set(self, algorithm: str, maglev_table_size: int, node_address: str | None = None) -> None:
        self.update(u32(0), LbConfig(algorithm=self.ALGORITHMS[algorithm], maglev_table_size=maglev_table_size,
                                     node_address=ip4_be(node_address)))


class NatMap(_TypedMap):
    """apiary_lb4_nat: the tc path's translations, keyed by a packet's tuple as it arrives."""
    NAME = "apiary_lb4_nat"
    DIRECTIONS = {0: "forward", 1: "reply"}

    def list(self) -> list[dict]:
        rows = []
        for k, v in self.items():
            rows.append({"from": (ip4_str(k.saddr), port_int(k.sport), ip4_str(k.daddr), port_int(k.dport)),
                         "protocol": PROTOCOL_NAMES.get(k.nexthdr, str(k.nexthdr)),
                         "direction": self.DIRECTIONS.get(k.flags, str(k.flags)),
                         "to": (ip4_str(v.saddr), port_int(v.sport), ip4_str(v.daddr), port_int(v.dport)),
                         "rev_nat_index": v.rev_nat_index, "lifetime": v.lifetime})
        return rows
