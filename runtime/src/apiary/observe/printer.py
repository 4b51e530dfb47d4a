"""How `apiary observe` and `apiary monitor` print: Hubble's compact/table/dict/json flow formats and
`cilium monitor`'s event lines."""
from __future__ import annotations

import json
import time

from apiary.observe.flow import icmp_name, parse_rfc3339

_SOCK_POINT_NAMES = {1: "pre-xlate-fwd", 2: "post-xlate-fwd", 3: "pre-xlate-rev", 4: "post-xlate-rev"}


def timestamp(flow: dict) -> str:
    """Local time like Hubble: `Nov 23 18:22:53.123`."""
    seconds = parse_rfc3339(flow["time"])
    return time.strftime("%b %d %H:%M:%S", time.localtime(seconds)) + ".%03d" % int(seconds % 1 * 1000)


def _port(flow: dict, side: str):
    for l4 in (flow.get("l4") or {}).values():
        port = l4.get("source_port" if side == "source" else "destination_port")
        if port:
            return port
    return None


def endpoint(flow: dict, side: str) -> str:
    """`ns/pod:port (ID:n)`, `ns/service:port (svc)`, or `ip:port (world)` for what is not a pod."""
    ep = flow.get(side) or {}
    port = _port(flow, side)
    svc = flow.get("destination_service") if side == "destination" else None
    if ep.get("pod_name"):
        name, tag = "%s/%s" % (ep.get("namespace"), ep["pod_name"]), "ID:%s" % ep.get("identity")
    elif svc:
        name, tag = "%s/%s" % (svc["namespace"], svc["name"]), "svc"
    else:
        name = (flow.get("IP") or {}).get(side, "")
        reserved = [lab.split(":", 1)[1] for lab in ep.get("labels") or [] if lab.startswith("reserved:")]
        tag = reserved[0] if reserved else "ID:%s" % ep.get("identity", 0)
    return "%s%s (%s)" % (name, ":%d" % port if port else "", tag)


def flow_type(flow: dict) -> str:
    """What Hubble prints between destination and verdict: the drop reason, the observation point..."""
    etype = (flow.get("event_type") or {}).get("type")
    if etype == 1:
        return (flow.get("drop_reason_desc") or "unknown drop reason").replace("_", " ").capitalize()
    if etype == 4:
        return (flow.get("trace_observation_point") or "trace").lower().replace("_", "-")
    if etype == 5:
        allowed = flow.get("verdict") != "DROPPED"
        return "policy-verdict:%s %s" % (flow.get("traffic_direction", ""), "ALLOWED" if allowed else "DENIED")
    if etype == 7:
        return _SOCK_POINT_NAMES.get(flow["event_type"].get("sub_type"), "trace-sock")
    return "type %s" % etype


def arrow(flow: dict) -> str:
    if flow.get("verdict") == "DROPPED":
        return "<>"
    return "<-" if flow.get("is_reply") else "->"


def compact(flow: dict) -> str:
    left, right = endpoint(flow, "source"), endpoint(flow, "destination")
    sign = arrow(flow)
    if sign == "<-":  # as hubble: a reply reads from the connection's client, "client <- server"
        left, right = right, left
    return "%s [%s]: %s %s %s %s %s (%s)" % (
        timestamp(flow), flow.get("node_name", ""), left, sign, right, flow_type(flow), flow.get("verdict", ""),
        flow.get("Summary", ""))


TABLE_HEADERS = ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]


def table_row(flow: dict) -> list:
    return [timestamp(flow), endpoint(flow, "source"), endpoint(flow, "destination"), flow_type(flow),
            flow.get("verdict", ""), flow.get("Summary", "")]


def as_dict(flow: dict) -> str:
    values = dict(zip(TABLE_HEADERS, table_row(flow)))
    values["NODE"] = flow.get("node_name", "")
    width = max(len(k) for k in values)
    return "\n".join("%s: %s" % (k.rjust(width), v) for k, v in values.items()) + "\n" + "-" * 12


def lost(record: dict) -> str:
    return "EVENTS LOST: %d (%s)" % (record["num_events_lost"], record["source"])


def node_status(record: dict) -> str:
    names = ", ".join(record.get("node_names") or [])
    state = record.get("state_change", "")
    text = {"NODE_CONNECTED": "connected", "NODE_UNAVAILABLE": "unavailable", "NODE_ERROR": "error"}.get(state, state)
    return "NODE %s: %s%s" % (text.upper(), names, " (%s)" % record["message"] if record.get("message") else "")


def json_line(record: dict) -> str:
    return json.dumps(record, sort_keys=True)


# --- cilium monitor --------------------------------------------------------------------------------
def _packet(ev: dict) -> str:
    proto = ev["protocol"]
    if proto == "ICMPv4":
        return "%s -> %s icmp %s" % (ev["src_ip"], ev["dst_ip"], icmp_name(ev.get("icmp_type"), ev.get("icmp_code")))
    text = "%s:%s -> %s:%s %s" % (ev["src_ip"], ev["src_port"], ev["dst_ip"], ev["dst_port"], proto.lower())
    if ev.get("tcp_flags"):
        text += " " + ", ".join(ev["tcp_flags"])
    return text


_POINTS = {"to-endpoint": "-> endpoint", "to-stack": "-> stack", "to-overlay": "-> overlay",
           "to-host": "-> host", "to-network": "-> network", "from-endpoint": "<- endpoint",
           "from-stack": "<- stack", "from-overlay": "<- overlay", "from-network": "<- network",
           "from-host": "<- host"}


def monitor_line(ev: dict) -> str:
    kind = ev.get("type")
    ids = "identity %s->%s" % (ev["src_identity"], ev["dst_identity"])
    if kind == "drop":
        return "xx drop (%s) flow 0x0 to endpoint %s, ifindex %s, file bpf_lxc.c, , %s: %s" % (
            ev["drop_reason_desc"] or "reason %s" % ev["drop_reason"], ev["endpoint_id"], ev["ifindex"], ids,
            _packet(ev))
    if kind == "trace":
        point = _POINTS.get(ev["observation_point"], ev["observation_point"])
        where = "%s %s" % (point, ev["endpoint_id"]) if point.endswith("endpoint") else point
        return "%s flow 0x0 , %s state %s ifindex %s orig-ip %s: %s" % (
            where, ids, "reply" if ev["is_reply"] else "new", ev["ifindex"], ev["src_ip"], _packet(ev))
    if kind == "policy-verdict":
        proto = {"TCP": 6, "UDP": 17, "ICMPv4": 1, "SCTP": 132}.get(ev["protocol"], ev["protocol"])
        return ("Policy verdict log: flow 0x0 local EP ID %s, remote ID %s, proto %s, %s, action %s, "
                "match L3-L4, %s" % (ev["endpoint_id"],
                                     ev["src_identity"] if ev["traffic_direction"] == "ingress" else ev["dst_identity"],
                                     proto, ev["traffic_direction"],
                                     "deny" if ev["verdict"] == "DROPPED" else "allow", _packet(ev)))
    if kind == "trace-sock":
        dst_ip = ev.get("orig_ip") or ev["dst_ip"]
        dst_port = ev.get("orig_port") or ev["dst_port"]
        return "[%s] netns_cookie: %s, dst [%s]:%s %s" % (ev["observation_point"], ev["netns_cookie"], dst_ip,
                                                         dst_port, ev["protocol"].lower())
    return json.dumps(ev, sort_keys=True)
