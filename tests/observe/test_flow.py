"""Decoded events as Hubble flows (docs/hubble.md §2) and how they print."""
from __future__ import annotations

import struct

from apiary.observe import events, printer
from apiary.observe.flow import parse_rfc3339, rfc3339, to_flow
from tests.observe.conftest import NS, drop, event


def test_drop_is_a_hubble_drop_flow(lookup):
    flow = to_flow(drop(), "node2", lookup)
    assert flow["verdict"] == "DROPPED"
    assert (flow["drop_reason"], flow["drop_reason_desc"]) == (133, "POLICY_DENIED")
    assert flow["IP"] == {"source": "10.233.64.10", "destination": "10.233.65.11", "ipVersion": "IPv4"}
    assert flow["l4"] == {"TCP": {"source_port": 41000, "destination_port": 80, "flags": {"SYN": True}}}
    assert flow["source"] == {"ID": 101, "identity": 12345, "namespace": NS, "labels": ["k8s:app=netpod"],
                              "pod_name": "netpod", "node_name": "node1"}
    assert flow["destination"]["pod_name"] == "frontend-6d8f9c-abcde"
    assert flow["destination"]["labels"] == ["k8s:app=frontend", "k8s:tier=web"]
    assert (flow["Type"], flow["node_name"], flow["event_type"]) == ("L3_L4", "node2", {"type": 1, "sub_type": 133})
    assert flow["traffic_direction"] == "INGRESS" and flow["Summary"] == "TCP Flags: SYN"
    assert flow["time"] == "2026-11-23T16:06:40.500000000Z"
    assert "trace_observation_point" not in flow
    line = printer.compact(flow)
    assert line.endswith("[node2]: network-policy-test/netpod:41000 (ID:12345) <> "
                         "network-policy-test/frontend-6d8f9c-abcde:80 (ID:23456) Policy denied DROPPED "
                         "(TCP Flags: SYN)")


def test_trace_reply_to_endpoint_from_the_world(lookup):
    flow = to_flow(event(src_ip="1.2.3.4", src_identity=2, src_port=80, dst_port=41000, is_reply=True,
                         tcp_flags=["SYN", "ACK"], traffic_direction="egress"), "node1", lookup)
    assert flow["trace_observation_point"] == "TO_ENDPOINT" and flow["is_reply"] is True
    assert flow["source"] == {"ID": 0, "identity": 2, "namespace": "", "labels": ["reserved:world"],
                              "pod_name": "", "node_name": ""}
    assert flow["Summary"] == "TCP Flags: SYN, ACK" and flow["traffic_direction"] == "EGRESS"
    assert "drop_reason" not in flow
    # As hubble prints a reply: the connection's client first, "client <- server".
    assert " network-policy-test/frontend-6d8f9c-abcde:41000 (ID:23456) <- 1.2.3.4:80 (world) to-endpoint " \
           "FORWARDED (TCP Flags: SYN, ACK)" in printer.compact(flow)


def test_policy_verdict_and_icmp(lookup):
    flow = to_flow(event(type="policy-verdict", event_type=5, sub_type=0, verdict="DROPPED", observation_point="",
                         protocol="ICMPv4", src_port=0, dst_port=0, icmp_type=8, icmp_code=0, tcp_flags=[]),
                   "node2", lookup)
    assert flow["l4"] == {"ICMPv4": {"type": 8, "code": 0}} and flow["Summary"] == "ICMPv4 EchoRequest"
    assert flow["event_type"] == {"type": 5, "sub_type": 0}
    assert printer.flow_type(flow) == "policy-verdict:INGRESS DENIED"
    row = printer.table_row(flow)
    assert row[1:] == ["network-policy-test/netpod (ID:12345)", "network-policy-test/frontend-6d8f9c-abcde (ID:23456)",
                       "policy-verdict:INGRESS DENIED", "DROPPED", "ICMPv4 EchoRequest"]


def test_trace_sock_names_the_client_pod_and_the_service(lookup):
    flow = to_flow(event(type="trace-sock", event_type=7, sub_type=2, verdict="TRANSLATED",
                         observation_point="post-xlate-fwd", src_ip="0.0.0.0", src_port=0, dst_ip="10.233.65.11",
                         dst_port=80, orig_ip="10.96.0.50", orig_port=80, netns_cookie=4242, tcp_flags=[]),
                   "node1", lookup)
    assert flow["Type"] == "SOCK" and flow["verdict"] == "TRANSLATED"
    assert flow["sock_xlate_point"] == "SOCK_XLATE_POINT_POST_DIRECTION_FWD"
    assert flow["source"]["pod_name"] == "backend-7c9d-xyz12" and flow["IP"]["source"] == "10.233.64.20"
    assert flow["IP"]["destination"] == "10.96.0.50" and flow["destination"]["pod_name"] == ""
    assert flow["destination_service"] == {"name": "frontend", "namespace": NS}
    assert " network-policy-test/backend-7c9d-xyz12 (ID:34567) -> network-policy-test/frontend:80 (svc) " \
           "post-xlate-fwd TRANSLATED (TCP)" in printer.compact(flow)


def test_l3_l4_flow_to_a_frontend_names_the_service(lookup):
    flow = to_flow(event(dst_ip="10.96.0.50"), "node1", lookup)
    assert flow["destination_service"] == {"name": "frontend", "namespace": NS}
    assert "destination_service" not in to_flow(event(), "node1", lookup)


def test_the_events_decoder_feeds_to_flow(lookup):
    """The lead's decoder and this module agree on the keys (docs/hubble.md §1)."""
    record = events.RECORD.pack(1, 133, events.F_INGRESS, 6, 202, 0, 5_000_000_000, 12345, 23456,
                                bytes([10, 233, 64, 10]), bytes([10, 233, 65, 11]), struct.unpack("<H", b"\xa0\x28")[0],
                                struct.unpack("<H", b"\x00\x50")[0], 0x02, 0, 0, 0, b"\0\0\0\0", 0, 0, 17, 74, 0)
    decoded = events.decode(record, offset=1795450000.0)
    assert set(decoded) == set(event())
    flow = to_flow(decoded, "node2", lookup)
    assert flow["source"]["pod_name"] == "netpod" and flow["l4"]["TCP"]["destination_port"] == 80
    assert flow["drop_reason_desc"] == "POLICY_DENIED"


def test_times_round_trip():
    assert parse_rfc3339(rfc3339(1795450000.123456)) == 1795450000.123456
    assert parse_rfc3339("2026-11-23T18:06:40+02:00") == 1795450000.0


def test_monitor_lines_read_like_cilium_monitor():
    assert printer.monitor_line(drop()) == (
        "xx drop (Policy denied) flow 0x0 to endpoint 202, ifindex 17, file bpf_lxc.c, , identity 12345->23456: "
        "10.233.64.10:41000 -> 10.233.65.11:80 tcp SYN")
    assert printer.monitor_line(event()).startswith("-> endpoint 202 flow 0x0 , identity 12345->23456 state new")
    assert printer.monitor_line(event(type="policy-verdict", event_type=5)).startswith(
        "Policy verdict log: flow 0x0 local EP ID 202, remote ID 12345, proto 6, ingress, action allow")


def test_a_nodeport_translation_names_its_service(lookup):
    """A trace from the network whose frontend (orig) is a Service: the flow goes to the backend pod and
    names the Service, in the dict and in the encoded line alike."""
    import json

    from apiary.observe.flow import Converter

    nat = event(type="trace", event_type=4, sub_type=10, observation_point="from-network", src_ip="1.2.3.4",
                src_identity=2, orig_ip="10.96.0.50", orig_port=80, tcp_flags=["SYN"])
    flow = to_flow(nat, "node2", lookup)
    assert flow["destination"]["pod_name"] == "frontend-6d8f9c-abcde"
    assert flow["destination_service"] == {"name": "frontend", "namespace": NS}
    converter = Converter("node2", lookup)
    assert json.loads(converter.line(nat))["flow"] == flow == converter.flow(nat)
    plain = to_flow(event(type="trace", event_type=4, sub_type=10, src_ip="1.2.3.4", src_identity=2), "node2", lookup)
    assert "destination_service" not in plain
