"""Decoded datapath events (docs/hubble.md §1) as flows in Hubble's JSON shape (§2).

Enrichment (pod, namespace, labels, node, service) comes from a `lookup` object; StaticLookup is the
dict-backed one for tests and tools.
"""
from __future__ import annotations

import json
import operator
import time

# Cilium's reserved identities (pkg/identity/numericidentity.go).
RESERVED_IDENTITIES = {
    0: "reserved:unknown", 1: "reserved:host", 2: "reserved:world", 3: "reserved:unmanaged",
    4: "reserved:health", 5: "reserved:init", 6: "reserved:remote-node", 7: "reserved:kube-apiserver",
    8: "reserved:ingress", 9: "reserved:world-ipv4", 10: "reserved:world-ipv6",
}

# Hubble's DropReason enum names (flow.proto) for Cilium's drop reason numbers.
DROP_REASONS = {
    130: "INVALID_SOURCE_MAC", 131: "INVALID_DESTINATION_MAC", 132: "INVALID_SOURCE_IP",
    133: "POLICY_DENIED", 134: "INVALID_PACKET_DROPPED", 135: "CT_TRUNCATED_OR_INVALID_HEADER",
    136: "CT_MISSING_TCP_ACK_FLAG", 137: "CT_UNKNOWN_L4_PROTOCOL", 138: "CT_CANNOT_CREATE_ENTRY_FROM_PACKET",
    139: "UNSUPPORTED_L3_PROTOCOL", 140: "MISSED_TAIL_CALL", 141: "ERROR_WRITING_TO_PACKET",
    142: "UNKNOWN_L4_PROTOCOL", 143: "UNKNOWN_ICMPV4_CODE", 144: "UNKNOWN_ICMPV4_TYPE",
    147: "ERROR_RETRIEVING_TUNNEL_KEY", 150: "UNKNOWN_L3_TARGET_ADDRESS", 151: "STALE_OR_UNROUTABLE_IP",
    152: "NO_MATCHING_LOCAL_CONTAINER_FOUND", 153: "ERROR_WHILE_CORRECTING_L3_CHECKSUM",
    154: "ERROR_WHILE_CORRECTING_L4_CHECKSUM", 155: "CT_MAP_INSERTION_FAILED",
    157: "IP_FRAGMENTATION_NOT_SUPPORTED", 158: "SERVICE_BACKEND_NOT_FOUND",
    160: "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT", 163: "UNKNOWN_CONNECTION_TRACKING_STATE",
    164: "LOCAL_HOST_IS_UNREACHABLE", 165: "NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION",
    166: "UNSUPPORTED_L2_PROTOCOL", 167: "NO_MAPPING_FOR_NAT_MASQUERADE",
    168: "UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE", 169: "FIB_LOOKUP_FAILED",
    170: "ENCAPSULATION_TRAFFIC_IS_PROHIBITED", 171: "INVALID_IDENTITY", 172: "UNKNOWN_SENDER",
    173: "NAT_NOT_NEEDED", 174: "IS_A_CLUSTERIP", 176: "FORBIDDEN_ICMPV6_MESSAGE",
    177: "DENIED_BY_LB_SRC_RANGE_CHECK", 178: "SOCKET_LOOKUP_FAILED", 179: "SOCKET_ASSIGN_FAILED",
    181: "POLICY_DENY", 196: "TTL_EXCEEDED",
}

# Hubble's SocketTranslationPoint names for trace-sock sub-types.
SOCK_XLATE_POINTS = {
    "pre-xlate-fwd": "SOCK_XLATE_POINT_PRE_DIRECTION_FWD", "post-xlate-fwd": "SOCK_XLATE_POINT_POST_DIRECTION_FWD",
    "pre-xlate-rev": "SOCK_XLATE_POINT_PRE_DIRECTION_REV", "post-xlate-rev": "SOCK_XLATE_POINT_POST_DIRECTION_REV",
}

ICMPV4_TYPES = {0: "EchoReply", 3: "DestinationUnreachable", 4: "SourceQuench", 5: "Redirect", 8: "EchoRequest",
                11: "TimeExceeded", 12: "ParameterProblem", 13: "Timestamp", 14: "TimestampReply"}


def rfc3339(seconds: float) -> str:
    """UTC with nanoseconds, as Hubble prints flow times."""
    ns = int(round(seconds * 1e9))
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + ".%09dZ" % frac


def parse_rfc3339(text: str) -> float:
    """Seconds since the epoch from an RFC 3339 time (any number of fraction digits, Z or ±hh:mm)."""
    import calendar
    import re

    match = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)",
                         text.strip())
    if not match:
        raise ValueError("%r is not an RFC 3339 time (like 2025-11-23T18:22:53Z)" % text)
    y, mo, d, h, mi, s, frac, zone = match.groups()
    seconds = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s), 0, 0, 0))
    if frac:
        seconds += int(frac) / 10 ** len(frac)
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds


def icmp_name(icmp_type, icmp_code=None) -> str:
    name = ICMPV4_TYPES.get(icmp_type, "Type%s" % icmp_type)
    return name if not icmp_code else "%s(Code%d)" % (name, icmp_code)


class StaticLookup:
    """Enrichment from plain dicts: endpoints by IP, identity labels, services by "ip:port/PROTO",
    endpoints by network namespace cookie."""

    def __init__(self, endpoints=None, identities=None, services=None, cookies=None):
        self.endpoints = endpoints or {}
        self.identities = identities or {}
        self.services = services or {}
        self.cookies = cookies or {}

    def endpoint(self, ip: str):
        return self.endpoints.get(ip)

    def identity_labels(self, identity: int) -> list:
        return list(self.identities.get(identity) or ([RESERVED_IDENTITIES[identity]]
                                                      if identity in RESERVED_IDENTITIES else []))

    def service(self, ip: str, port: int, protocol: str):
        return self.services.get("%s:%s/%s" % (ip, port, protocol.upper()))

    def endpoint_of_cookie(self, cookie: int):
        return self.cookies.get(cookie)


def _endpoint(lookup, ep, ip, identity) -> dict:
    """Hubble's Endpoint: the pod when the IP is one, else only the identity and its labels."""
    if ep:
        return {"ID": ep.get("ID", 0), "identity": ep.get("identity", identity),
                "namespace": ep.get("namespace", ""), "labels": sorted(ep.get("labels") or []),
                "pod_name": ep.get("pod_name", ""), "node_name": ep.get("node_name", "")}
    labels = lookup.identity_labels(identity) if identity else []
    if not labels and identity in RESERVED_IDENTITIES:
        labels = [RESERVED_IDENTITIES[identity]]
    return {"ID": 0, "identity": identity, "namespace": "", "labels": sorted(labels), "pod_name": "",
            "node_name": ""}


def _l4(event) -> dict:
    proto = event["protocol"]
    if proto in ("TCP", "UDP", "SCTP"):
        l4 = {"source_port": event["src_port"], "destination_port": event["dst_port"]}
        if proto == "TCP":
            l4["flags"] = {flag: True for flag in event.get("tcp_flags") or []}
        return {proto: l4}
    if proto == "ICMPv4":
        return {"ICMPv4": {"type": event.get("icmp_type") or 0, "code": event.get("icmp_code") or 0}}
    return {}


def summary(event) -> str:
    proto = event["protocol"]
    if proto == "TCP":
        return "TCP Flags: %s" % ", ".join(event.get("tcp_flags") or []) if event.get("tcp_flags") else "TCP"
    if proto == "ICMPv4":
        return "ICMPv4 %s" % icmp_name(event.get("icmp_type"), event.get("icmp_code"))
    return proto


def _set_ip(value) -> bool:
    return bool(value) and value != "0.0.0.0"


def _tail(event, node_name: str) -> dict:
    """The flow's keys after `destination` that depend only on the kind of event (not on its addresses,
    ports or time), in to_flow's order; `destination_service` (last) is added by the caller."""
    sock = event["type"] == "trace-sock"
    tail = {
        "Type": "SOCK" if sock else "L3_L4",
        "node_name": node_name,
        "event_type": {"type": event["event_type"], "sub_type": event["sub_type"]},
        "traffic_direction": event["traffic_direction"].upper() if event["traffic_direction"] != "unknown"
        else "TRAFFIC_DIRECTION_UNKNOWN",
        "is_reply": bool(event["is_reply"]),
        "source_names": [],
        "destination_names": [],
        "Summary": summary(event),
    }
    if event["verdict"] == "DROPPED" or event["drop_reason"]:
        tail["drop_reason"] = event["drop_reason"]
        tail["drop_reason_desc"] = DROP_REASONS.get(event["drop_reason"], "DROP_REASON_UNKNOWN")
    if event["type"] == "trace":
        tail["trace_observation_point"] = event["observation_point"].upper().replace("-", "_")
    if sock:
        tail["sock_xlate_point"] = SOCK_XLATE_POINTS.get(event["observation_point"], "SOCK_XLATE_POINT_UNKNOWN")
        tail["socket_cookie"] = event["netns_cookie"]
    if event["type"] == "policy-verdict":
        tail["policy_match_type"] = 0
    return tail


def _service(lookup, protocol: str, dst_ip: str, dst_port: int):
    if protocol in ("TCP", "UDP", "SCTP") and dst_port:
        svc = lookup.service(dst_ip, dst_port, protocol)
        if svc:
            return {"name": svc["name"], "namespace": svc["namespace"]}
    return None


def to_flow(event: dict, node_name: str, lookup) -> dict:
    """One decoded event as a Hubble flow (a dict in `hubble observe -o json`'s shape)."""
    sock = event["type"] == "trace-sock"
    src_ip, dst_ip = event["src_ip"], event["dst_ip"]
    dst_port = event["dst_port"]
    if sock:
        # The client is the pod owning the socket's network namespace; the destination the address the
        # socket asked for (the service) when the datapath reports it.
        src_ep = lookup.endpoint_of_cookie(event["netns_cookie"])
        if not _set_ip(src_ip) and src_ep and src_ep.get("ip"):
            src_ip = src_ep["ip"]
        if _set_ip(event.get("orig_ip")):
            dst_ip, dst_port = event["orig_ip"], event["orig_port"] or dst_port
    else:
        src_ep = lookup.endpoint(src_ip)
    dst_ep = lookup.endpoint(dst_ip)
    l4event = dict(event, dst_port=dst_port)
    flow = {
        "time": rfc3339(event["time"]),
        "verdict": event["verdict"],
        "IP": {"source": src_ip, "destination": dst_ip, "ipVersion": "IPv4"},
        "l4": _l4(l4event),
        "source": _endpoint(lookup, src_ep, src_ip, event["src_identity"]),
        "destination": _endpoint(lookup, dst_ep, dst_ip, event["dst_identity"]),
    }
    flow.update(_tail(l4event, node_name))
    # A translated packet (NodePort at tc) names the frontend it was sent to: that is its service.
    svc = _service(lookup, event["protocol"], event.get("orig_ip") or dst_ip, event.get("orig_port") or dst_port)
    if svc:
        flow["destination_service"] = svc
    return flow


def _json(value) -> str:
    return json.dumps(value, separators=(",", ":"))


# What _tail() and the l4 layout depend on (besides tcp_flags, a list).
_KIND = operator.itemgetter("type", "event_type", "sub_type", "verdict", "drop_reason", "observation_point",
                            "traffic_direction", "is_reply", "protocol", "icmp_type", "icmp_code")
_CACHE_LIMIT = 65536


class _Kind:
    """What flows of one kind of event share: the tail dict and the JSON pieces around the addresses."""

    __slots__ = ("tail", "verdict_json", "ports", "l4_format", "tail_json")

    def __init__(self, event, node_name):
        self.tail = _tail(event, node_name)
        self.verdict_json = _json(event["verdict"])
        self.tail_json = _json(self.tail)[1:-1]
        proto = event["protocol"]
        self.ports = proto in ("TCP", "UDP", "SCTP")
        if self.ports:      # the ports vary within a kind: left as %d
            flags = ',"flags":' + _json(_l4(event)["TCP"]["flags"]) if proto == "TCP" else ""
            self.l4_format = '{"%s":{"source_port":%%d,"destination_port":%%d%s}}' % (proto, flags)
        else:
            self.l4_format = _json(_l4(event))


class Converter:
    """to_flow() for one node, with caches, and the flow's JSON line (`{"flow": ...}` as
    json.dumps(..., separators=(",", ":")) writes it) built from cached pieces: a flow costs a few dict
    lookups instead of the enrichment and the encoding of every field.

    Endpoints (by IP and identity) and services come from the lookup and are kept `ttl` seconds (the
    agent's lookup rebuilds its indexes as often); what depends only on the kind of event is kept until
    there are too many kinds. The dicts returned share these cached parts: treat flows as read-only.
    Safe to use from several threads (a race only computes a part twice).
    trace-sock events (one per connect, enriched through the socket's netns) take to_flow()."""

    def __init__(self, node_name: str, lookup, ttl: float = 1.0):
        self.node_name = node_name
        self.lookup = lookup
        self.ttl = ttl
        self._second = (None, "")
        self._kinds = {}
        self._endpoints, self._services, self._expires = {}, {}, 0.0

    def _fresh(self) -> None:
        now = time.monotonic()
        if now >= self._expires or len(self._endpoints) > _CACHE_LIMIT or len(self._services) > _CACHE_LIMIT:
            self._endpoints, self._services, self._expires = {}, {}, now + self.ttl

    def _time(self, seconds: float) -> str:
        """rfc3339(), with the part up to the seconds formatted once per second."""
        sec, frac = divmod(int(round(seconds * 1e9)), 1_000_000_000)
        cached = self._second
        if cached[0] != sec:
            cached = self._second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
        return "%s.%09dZ" % (cached[1], frac)

    def _endpoint(self, ip: str, identity: int):
        """(Endpoint dict, its JSON, the IP's JSON)."""
        key = (ip, identity)
        entry = self._endpoints.get(key)
        if entry is None:
            ep = _endpoint(self.lookup, self.lookup.endpoint(ip), ip, identity)
            entry = self._endpoints[key] = (ep, _json(ep), _json(ip))
        return entry

    def _kind(self, event) -> _Kind:
        key = (_KIND(event), tuple(event["tcp_flags"] or ()))
        kind = self._kinds.get(key)
        if kind is None:
            if len(self._kinds) > 4096:
                self._kinds = {}
            kind = self._kinds[key] = _Kind(event, self.node_name)
        return kind

    def _service(self, event):
        """(destination_service dict or None, ',"destination_service":{...}' or '')."""
        key = (event["orig_ip"] or event["dst_ip"], event["orig_port"] or event["dst_port"], event["protocol"])
        entry = self._services.get(key)
        if entry is None:
            svc = _service(self.lookup, event["protocol"], key[0], key[1])
            entry = self._services[key] = (svc, ',"destination_service":' + _json(svc) if svc else "")
        return entry

    def flow(self, event: dict) -> dict:
        """to_flow(event, node_name, lookup)."""
        if event["type"] == "trace-sock":
            return to_flow(event, self.node_name, self.lookup)
        self._fresh()
        src, dst = self._endpoint(event["src_ip"], event["src_identity"]), \
            self._endpoint(event["dst_ip"], event["dst_identity"])
        flow = {
            "time": self._time(event["time"]),
            "verdict": event["verdict"],
            "IP": {"source": event["src_ip"], "destination": event["dst_ip"], "ipVersion": "IPv4"},
            "l4": _l4(event),
            "source": src[0],
            "destination": dst[0],
        }
        flow.update(self._kind(event).tail)
        svc = self._service(event)[0]
        if svc:
            flow["destination_service"] = svc
        return flow

    def line(self, event: dict) -> bytes:
        """The API's NDJSON line of the event's flow: json.dumps({"flow": flow}, separators=(",", ":"))
        and a newline, as bytes. The time comes first (the relay sorts lines by it without parsing)."""
        if event["type"] == "trace-sock":
            return (_json({"flow": to_flow(event, self.node_name, self.lookup)}) + "\n").encode()
        self._fresh()
        src, dst = self._endpoint(event["src_ip"], event["src_identity"]), \
            self._endpoint(event["dst_ip"], event["dst_identity"])
        kind = self._kind(event)
        l4 = kind.l4_format % (event["src_port"], event["dst_port"]) if kind.ports else kind.l4_format
        return ('{"flow":{"time":"%s","verdict":%s,"IP":{"source":%s,"destination":%s,"ipVersion":"IPv4"},'
                '"l4":%s,"source":%s,"destination":%s,%s%s}}\n' % (
                    self._time(event["time"]), kind.verdict_json, src[2], dst[2], l4, src[1], dst[1],
                    kind.tail_json, self._service(event)[1])).encode()
