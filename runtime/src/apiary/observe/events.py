"""Datapath events: reading the apiary_events ring buffer and decoding its records (docs/hubble.md §1).

The reader is on the hot path (the datapath may emit 100k+ events a second): a record is decoded
with one struct unpack, addresses through a small cache, and handed to the sink as a plain dict.
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import time

from apiary.bpf import libbpf, maps

log = logging.getLogger("apiary.observe.events")

# struct flow_event (bpf/lib/maps.h): 64 bytes, little-endian host fields, network-order addresses.
RECORD = struct.Struct("<BBBBHHQII4s4sHHBBBB4sHHIIQ")
assert RECORD.size == 64

DROP, TRACE, POLICY_VERDICT, TRACE_SOCK = 1, 4, 5, 7
TYPE_NAMES = {DROP: "drop", TRACE: "trace", POLICY_VERDICT: "policy-verdict", TRACE_SOCK: "trace-sock"}
OBSERVATION_POINTS = {0: "to-endpoint", 1: "to-proxy", 2: "to-host", 3: "to-stack", 4: "to-overlay",
                      5: "from-endpoint", 6: "from-proxy", 7: "from-host", 8: "from-stack", 9: "from-overlay",
                      10: "from-network", 11: "to-network"}
XLATE_POINTS = {1: "pre-xlate-fwd", 2: "post-xlate-fwd", 3: "pre-xlate-rev", 4: "post-xlate-rev"}
PROTOCOLS = {6: "TCP", 17: "UDP", 1: "ICMPv4", 132: "SCTP"}
TCP_FLAGS = ((0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"), (0x20, "URG"),
             (0x40, "ECE"), (0x80, "CWR"))
F_REPLY, F_INGRESS, F_EGRESS, F_DENIED = 0x01, 0x02, 0x04, 0x08

_addresses: dict = {}


def _ip(raw: bytes) -> str:
    text = _addresses.get(raw)
    if text is None:
        if len(_addresses) > 65536:
            _addresses.clear()
        text = _addresses[raw] = socket.inet_ntoa(raw)
    return text


def _flags(value: int) -> list:
    return [name for bit, name in TCP_FLAGS if value & bit]


def clock_offset() -> float:
    """Seconds to add to bpf_ktime_get_ns() (CLOCK_MONOTONIC) to get the wall clock."""
    return time.time() - time.monotonic()


def _template(etype: int, sub_type: int, flags: int, proto: int, tcp_flags: int) -> dict:
    """An event with the fields that depend only on these header fields, in decode()'s key order; the
    others are zero and filled in per record."""
    dropped = etype == DROP or (etype == POLICY_VERDICT and flags & F_DENIED)
    if etype == TRACE_SOCK:
        verdict, point = "TRANSLATED", XLATE_POINTS.get(sub_type, str(sub_type))
    else:
        verdict, point = ("DROPPED" if dropped else "FORWARDED"), OBSERVATION_POINTS.get(sub_type, "") \
            if etype == TRACE else ""
    return {
        "type": TYPE_NAMES.get(etype, str(etype)),
        "event_type": etype,
        "sub_type": sub_type,
        "time": 0.0,
        "verdict": verdict,
        "drop_reason": sub_type if dropped else 0,
        "drop_reason_desc": maps.REASONS.get(sub_type, "Unknown reason %d" % sub_type) if dropped else "",
        "observation_point": point,
        "endpoint_id": 0,
        "traffic_direction": "ingress" if flags & F_INGRESS else "egress" if flags & F_EGRESS else "unknown",
        "is_reply": bool(flags & F_REPLY),
        "src_identity": 0,
        "dst_identity": 0,
        "src_ip": "",
        "dst_ip": "",
        "protocol": PROTOCOLS.get(proto, str(proto)),
        "src_port": 0,
        "dst_port": 0,
        "icmp_type": None,
        "icmp_code": None,
        "tcp_flags": _flags(tcp_flags) if proto == 6 else [],
        "orig_ip": None,
        "orig_port": None,
        "netns_cookie": 0,
        "ifindex": 0,
        "length": 0,
    }


_templates: dict = {}
NO_ADDRESS = bytes(4)


def decode(data: bytes, offset: float | None = None) -> dict:
    """One record as an event (docs/hubble.md §1). Events are read-only: they share parts (the
    tcp_flags list) with other events of the same kind."""
    (etype, sub_type, flags, proto, lxc_id, _, ktime, src_id, dst_id, saddr, daddr, sport, dport, tcp_flags,
     icmp_type, icmp_code, _, orig_addr, orig_port, _, ifindex, length, cookie) = RECORD.unpack_from(data)
    if offset is None:
        offset = clock_offset()
    # The fields that depend on the kind of event only come from a per-kind template: copying it is
    # cheaper than building them for every record (the reader's hot path).
    key = (etype, sub_type, flags, proto, tcp_flags)
    template = _templates.get(key)
    if template is None:
        if len(_templates) > 4096:
            _templates.clear()
        template = _templates[key] = _template(*key)
    event = template.copy()
    event["time"] = ktime / 1e9 + offset
    event["endpoint_id"] = lxc_id
    event["src_identity"] = src_id
    event["dst_identity"] = dst_id
    event["src_ip"] = _addresses.get(saddr) or _ip(saddr)
    event["dst_ip"] = _addresses.get(daddr) or _ip(daddr)
    if proto == 1:
        event["icmp_type"], event["icmp_code"] = icmp_type, icmp_code
    else:
        # Ports are network order in the record: swap the little-endian reads.
        event["src_port"] = ((sport & 0xFF) << 8) | (sport >> 8)
        event["dst_port"] = ((dport & 0xFF) << 8) | (dport >> 8)
    if orig_addr != NO_ADDRESS:  # translated: by the socket LB (trace-sock) or NodePort at tc (trace)
        event["orig_ip"] = _ip(orig_addr)
        event["orig_port"] = ((orig_port & 0xFF) << 8) | (orig_port >> 8)
    event["netns_cookie"] = cookie
    event["ifindex"] = ifindex
    event["length"] = length
    return event


def set_enabled(pin_dir: str, enabled: bool) -> None:
    """Switch the datapath's events on or off (apiary_events_config)."""
    with maps.Map.open(pin_dir, "apiary_events_config") as config:
        config.update(maps.u32(0), maps.EventsConfig(enabled=1 if enabled else 0))


def lost_count(pin_dir: str) -> int:
    """Events the datapath could not put in the ring, summed over CPUs, since it was loaded."""
    with maps.Map.open(pin_dir, "apiary_events_lost") as lost:
        return sum(value.value for value in lost.lookup(maps.u32(0)) or [])


class EventReader:
    """Drains apiary_events into `sink(event)` until `stop` is set; datapath losses go to `on_lost(n)`
    as they grow. Run it in its own thread."""

    def __init__(self, pin_dir: str, sink, on_lost=None, poll_ms: int = 200):
        self.pin_dir = pin_dir
        self.sink = sink
        self.on_lost = on_lost
        self.poll_ms = poll_ms
        self.read = 0
        self.errors = 0

    def run(self, stop) -> None:
        fd = libbpf.obj_get(os.path.join(self.pin_dir, "apiary_events"))
        try:
            with libbpf.RingBuffer(fd) as ring:
                reported = lost_count(self.pin_dir)
                last_check = time.monotonic()
                offset = clock_offset()
                while not stop.is_set():
                    records = ring.poll(self.poll_ms)
                    for data in records:
                        try:
                            self.sink(decode(data, offset))
                        except Exception:  # noqa: BLE001 - one bad consumer must not stop the reader
                            self.errors += 1
                            log.exception("event sink failed")
                    self.read += len(records)
                    now = time.monotonic()
                    if now - last_check >= 1.0:
                        last_check, offset = now, clock_offset()
                        lost = lost_count(self.pin_dir)
                        if lost > reported and self.on_lost:
                            self.on_lost(lost - reported)
                        reported = lost
        finally:
            os.close(fd)
