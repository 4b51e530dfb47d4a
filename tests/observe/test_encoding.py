"""A flow's JSON line built once from cached parts (flow.Converter, Observer.line) is byte for byte what
json.dumps of to_flow() gives; NDJSON lines read in chunks; the relay merges peers' lines unparsed."""
from __future__ import annotations

import io
import json

from apiary.observe import events, filters, relay, server
from apiary.observe.flow import Converter, StaticLookup, rfc3339, to_flow
from apiary.observe.observer import Observer
from tests.observe.conftest import NETPOD, drop, event, make_lookup

T0 = 1795450000.0

EVENTS = [
    event(),
    drop(),
    event(dst_ip="10.96.0.50"),                                                     # to a service frontend
    event(protocol="UDP", tcp_flags=[], dst_port=53, src_ip="10.233.66.5"),
    event(src_ip="1.2.3.4", src_identity=2, src_port=80, dst_port=41000, is_reply=True, tcp_flags=["SYN", "ACK"],
          traffic_direction="egress"),
    event(traffic_direction="unknown", tcp_flags=[]),
    event(type="policy-verdict", event_type=5, sub_type=0, verdict="DROPPED", observation_point="",
          protocol="ICMPv4", src_port=0, dst_port=0, icmp_type=3, icmp_code=1, tcp_flags=[]),
    event(type="trace-sock", event_type=7, sub_type=2, verdict="TRANSLATED", observation_point="post-xlate-fwd",
          src_ip="0.0.0.0", src_port=0, orig_ip="10.96.0.50", orig_port=80, netns_cookie=4242, tcp_flags=[]),
    event(protocol="SCTP", tcp_flags=[]),
    event(protocol="47", src_port=0, dst_port=0, tcp_flags=[]),
    drop(sub_type=250, drop_reason=250, time=T0 + 0.9999999999),                   # rounds up to the next second
    event(type="trace", observation_point="from-network", time=T0 + 1.000000001),
]


def _dumped(flow) -> bytes:
    return (json.dumps({"flow": flow}, separators=(",", ":")) + "\n").encode()


def test_converter_gives_to_flows_dict_and_its_json_line():
    lookup = make_lookup()
    conv = Converter("node2", lookup)
    for _ in range(2):          # the second round from the caches
        for ev in EVENTS:
            expected = to_flow(ev, "node2", lookup)
            assert conv.flow(ev) == expected, ev
            assert conv.line(ev) == _dumped(expected), ev


def test_converter_sees_lookup_changes_after_its_ttl():
    lookup = StaticLookup()
    conv = Converter("node2", lookup, ttl=0)
    assert conv.flow(event())["source"]["pod_name"] == ""
    lookup.endpoints["10.233.64.10"] = NETPOD
    assert conv.flow(event())["source"]["pod_name"] == "netpod"
    assert b'"pod_name":"netpod"' in conv.line(event())


def test_observer_builds_a_line_once_and_serves_it_to_every_reader():
    obs = Observer(node_name="node2", lookup=make_lookup())
    for n, ev in enumerate(EVENTS):
        obs.add(dict(ev, time=T0 + n))
    obs.lost(3)
    records = obs.get_flows()
    lines = obs.get_flows(encoded=True)
    assert [json.loads(line) for line in lines] == json.loads(json.dumps(records))
    assert all(a is b for a, b in zip(lines, obs.get_flows(encoded=True)))       # cached, not rebuilt
    dropped = filters.parse({"verdict": ["DROPPED"]})
    assert [json.loads(line) for line in obs.get_flows(dropped, encoded=True)] == \
        json.loads(json.dumps(obs.get_flows(dropped)))
    follow = obs.follow(filters.parse({"follow": ["1"], "last": ["2"]}), encoded=True)
    assert [next(follow) for _ in range(3)] == lines[-3:]      # the last 2 flows and the lost notice
    follow.close()


def test_read_lines_gives_whole_lines_however_the_reads_split_them():
    data = b"".join(_dumped(to_flow(ev, "node2", make_lookup())) for ev in EVENTS) + b'{"error":"x"}\n{"cut'

    class Resp:
        def __init__(self, size):
            self.stream, self.size = io.BytesIO(data), size

        def read1(self, _n):
            return self.stream.read(self.size)

    for size in (1, 7, 100, 1 << 20):
        chunks = list(server.read_lines(Resp(size)))
        assert all(chunk.endswith(b"\n") for chunk in chunks)
        assert b"".join(chunks) == data[:data.rindex(b"\n") + 1]


def test_time_key_slices_a_nodes_line_and_parses_other_layouts():
    line = _dumped(to_flow(event(time=T0 + 0.25), "node2", make_lookup()))
    assert relay._time_key(line) == rfc3339(T0 + 0.25).encode()
    other = json.dumps({"flow": {"verdict": "FORWARDED", "time": "2026-11-23T18:06:40.25+02:00"}}).encode()
    assert relay._time_key(other) == rfc3339(T0 + 0.25).encode()


def test_relay_merges_peers_lines_by_time_and_passes_them_intact(monkeypatch):
    lookup = make_lookup()
    lines = {name: [_dumped(to_flow(event(time=T0 + n, src_port=1000 + n), name, lookup))
                    for n in range(10) if n % 2 == index] for index, name in enumerate(("node1", "node2"))}
    lines["node2"].insert(0, b'{"lost_events":{"source":"PERF_EVENT_RING_BUFFER","num_events_lost":2}}\n')
    backend = relay.Relay(["http://127.0.0.1:1"])
    monkeypatch.setattr(backend, "peers", lambda: [{"name": n, "address": n} for n in lines])
    monkeypatch.setattr(backend, "_ask", lambda peer, path: list(lines[peer["name"]]))
    out = backend.flows(filters.parse({"last": ["3"]}))
    assert out[0] == lines["node2"][0]
    assert out[1:] == [lines["node2"][4], lines["node1"][4], lines["node2"][5]]       # times 7, 8, 9, as sent
    recent = backend.recent_flows(None, 2)
    assert [f["l4"]["TCP"]["source_port"] for f in recent] == [1008, 1009]


def test_decode_fills_every_record_from_its_kinds_template_without_leaks():
    def record(sport, daddr, ktime, etype=4, proto=6, icmp=(0, 0), orig=b"\0\0\0\0", cookie=0):
        return events.RECORD.pack(etype, 0, events.F_INGRESS, proto, 202, 0, ktime, 12345, 23456,
                                  bytes([10, 233, 64, 10]), daddr, sport, 0x5000, 0x02, icmp[0], icmp[1], 0, orig,
                                  0x5000, 0, 17, 74, cookie)

    first = events.decode(record(0x0110, bytes([10, 233, 65, 11]), 1_000_000_000), offset=T0)
    second = events.decode(record(0x0220, bytes([10, 233, 65, 12]), 2_000_000_000), offset=T0)
    assert list(first) == list(event())         # docs/hubble.md §1's keys, in its order
    assert (first["src_port"], first["dst_ip"], first["time"]) == (0x1001, "10.233.65.11", T0 + 1)
    assert (second["src_port"], second["dst_ip"], second["time"]) == (0x2002, "10.233.65.12", T0 + 2)
    assert first["tcp_flags"] == ["SYN"] and first["dst_port"] == 80 and first["icmp_type"] is None
    ping = events.decode(record(0, bytes([10, 233, 65, 11]), 0, proto=1, icmp=(8, 0)), offset=T0)
    assert (ping["src_port"], ping["dst_port"], ping["icmp_type"], ping["icmp_code"]) == (0, 0, 8, 0)
    sock = events.decode(record(0, bytes([10, 233, 65, 11]), 0, etype=7, orig=bytes([10, 96, 0, 50]), cookie=42),
                         offset=T0)
    assert (sock["orig_ip"], sock["orig_port"], sock["netns_cookie"]) == ("10.96.0.50", 80, 42)
    assert first["orig_ip"] is None and first["netns_cookie"] == 0
