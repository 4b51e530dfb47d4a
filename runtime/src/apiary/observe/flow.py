"""Decoded datapath events (docs/hubble.md §1) as flows in Hubble's JSON shape (§2).

Enrichment (pod, namespace, labels, node, service) comes from a `lookup` object; StaticLookup is the
dict-backed one for tests and tools.
"""
from __future__ import annotations

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
        "Type": "SOCK" if sock else "L3_L4",
        "node_name": node_name,
        "event_type": {"type": event["event_type"], "sub_type": event["sub_type"]},
        "traffic_direction": event["traffic_direction"].upper() if event["traffic_direction"] != "unknown"
        else "TRAFFIC_DIRECTION_UNKNOWN",
        "is_reply": bool(event["is_reply"]),
        "source_names": [],
        "destination_names": [],
        "Summary": summary(l4event),
    }
    if event["verdict"] == "DROPPED" or event["drop_reason"]:
        flow["drop_reason"] = event["drop_reason"]
        flow["drop_reason_desc"] = DROP_REASONS.get(event["drop_reason"], "DROP_REASON_UNKNOWN")
    if event["type"] == "trace":
        flow["trace_observation_point"] = event["observation_point"].upper().replace("-", "_")
    if sock:
        flow["sock_xlate_point"] = SOCK_XLATE_POINTS.get(event["observation_point"], "SOCK_XLATE_POINT_UNKNOWN")
        flow["socket_cookie"] = event["netns_cookie"]
    if event["type"] == "policy-verdict":
        flow["policy_match_type"] = 0
    if event["protocol"] in ("TCP", "UDP", "SCTP") and dst_port:
        svc = lookup.service(dst_ip, dst_port, event["protocol"])
        if svc:
            flow["destination_service"] = {"name": svc["name"], "namespace": svc["namespace"]}
    return flow
