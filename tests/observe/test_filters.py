"""`apiary observe` filters: every kind, Hubble's AND/OR semantics, the query-string round trip and
errors that name the flag."""
from __future__ import annotations

import pytest

from apiary.errors import UserError
from apiary.observe import filters
from apiary.observe.flow import to_flow
from tests.observe.conftest import drop, event, make_lookup

T0 = 1795450000.0
LOOKUP = make_lookup()
FLOWS = {
    "syn": to_flow(event(time=T0), "node2", LOOKUP),                                   # netpod -> frontend TCP 80
    "drop": to_flow(drop(time=T0 + 10), "node2", LOOKUP),                              # netpod -> frontend, dropped
    "dns": to_flow(event(time=T0 + 20, protocol="UDP", src_ip="10.233.66.5", dst_ip="10.233.64.20", dst_port=53,
                         tcp_flags=[], observation_point="from-endpoint"), "node1", LOOKUP),   # client -> backend
    "ping": to_flow(event(time=T0 + 30, protocol="ICMPv4", src_ip="1.2.3.4", src_identity=2, src_port=0, dst_port=0,
                          icmp_type=8, icmp_code=0, tcp_flags=[]), "node3", LOOKUP),   # world -> frontend
    "sock": to_flow(event(time=T0 + 40, type="trace-sock", event_type=7, sub_type=1, verdict="TRANSLATED",
                          observation_point="pre-xlate-fwd", dst_ip="10.96.0.50", orig_ip="10.96.0.50", orig_port=80,
                          netns_cookie=4242, tcp_flags=[]), "node1", LOOKUP),           # backend -> svc frontend
}


@pytest.mark.parametrize("params, expected", [
    ({"pod": "network-policy-test/frontend"}, ["drop", "ping", "syn"]),
    ({"pod": "netpod"}, ["drop", "syn"]),                         # no namespace: any namespace, name prefix
    ({"pod": "default/"}, ["dns"]),
    ({"from_pod": "network-policy-test/backend"}, ["sock"]),
    ({"to_pod": "network-policy-test/backend"}, ["dns"]),
    ({"namespace": "default"}, ["dns"]),
    ({"verdict": "dropped"}, ["drop"]),
    ({"verdict": ["DROPPED", "TRANSLATED"]}, ["drop", "sock"]),   # repeated: OR
    ({"type": "drop"}, ["drop"]),
    ({"type": "trace:from-endpoint"}, ["dns"]),
    ({"type": "trace"}, ["dns", "ping", "syn"]),
    ({"type": "trace-sock:pre-xlate-fwd"}, ["sock"]),
    ({"type": "l7"}, []),
    ({"protocol": "udp"}, ["dns"]),
    ({"protocol": ["icmp", "udp"]}, ["dns", "ping"]),
    ({"port": "53"}, ["dns"]),
    ({"port": "41000"}, ["dns", "drop", "sock", "syn"]),
    ({"ip": "10.233.64.20"}, ["dns"]),
    ({"from_ip": "10.233.64.0/24"}, ["drop", "sock", "syn"]),
    ({"to_ip": "10.96.0.0/12"}, ["sock"]),
    ({"label": "app=frontend"}, ["drop", "ping", "syn"]),
    ({"label": "k8s:app=backend"}, ["dns", "sock"]),
    ({"from_label": "reserved:world"}, ["ping"]),
    ({"label": "app=frontend,tier=web"}, ["drop", "ping", "syn"]),
    ({"label": "app=frontend,tier=db"}, []),
    ({"node_name": "node[13]"}, ["dns", "ping", "sock"]),
    ({"since": "45s"}, ["dns", "ping", "sock"]),                  # now is T0+60: flows from T0+15 on
    # different kinds: AND
    ({"pod": "network-policy-test/frontend", "verdict": "FORWARDED"}, ["ping", "syn"]),
    ({"from_pod": "network-policy-test/netpod", "to_pod": "network-policy-test/frontend", "verdict": "DROPPED"},
     ["drop"]),
    ({"namespace": "network-policy-test", "protocol": "icmp", "node_name": "node3"}, ["ping"]),
])
def test_filter_kinds_and_their_combinations(params, expected):
    query = filters.parse({k: [v] if isinstance(v, str) else v for k, v in params.items()}, now=T0 + 60)
    got = sorted(name for name, flow in FLOWS.items()
                 if query.match(flow) and query.in_range(filters.parse_rfc3339(flow["time"])))
    assert got == expected


def test_the_query_string_round_trips():
    query = filters.parse({"pod": ["a/b", "c"], "verdict": ["DROPPED"], "since": ["1m"], "last": ["5"],
                           "follow": ["1"], "label": ["app=x,tier"]}, now=T0)
    back = filters.from_query_string(query.query_string())
    assert back.filters == query.filters
    assert (back.since, back.last, back.follow) == (T0 - 60, 5, True)
    assert back.until is None and back.first is None


def test_times_since_until_durations_and_rfc3339():
    q = filters.parse({"since": ["1h30m"], "until": ["2026-11-23T16:00:00.5Z"]}, now=T0)
    assert q.since == T0 - 5400 and q.until == 1795449600.5
    assert filters.parse({"since": ["500ms"]}, now=T0).since == T0 - 0.5


@pytest.mark.parametrize("params, message", [
    ({"verdict": ["DROP"]}, "--verdict 'DROP': unknown verdict (one of FORWARDED, DROPPED,"),
    ({"from_ip": ["10.0.0.256"]}, "--from-ip '10.0.0.256': not an IP address or CIDR"),
    ({"to_ip": ["10.0.0.0/33"]}, "--to-ip '10.0.0.0/33': not an IP address or CIDR"),
    ({"ip": ["frontend"]}, "--ip 'frontend': not an IP address or CIDR"),
    ({"since": ["5"]}, "--since '5': neither a duration"),
    ({"until": ["yesterday"]}, "--until 'yesterday': neither a duration"),
    ({"since": ["1m"], "until": ["2m"]}, "--since '1m': is after --until '2m'"),
    ({"last": ["-3"]}, "--last '-3': not a positive number of flows"),
    ({"last": ["0"]}, "--last '0': not a positive number"),
    ({"type": ["dorp"]}, "--type 'dorp': unknown event type"),
    ({"type": ["trace:to-nowhere"]}, "--type 'trace:to-nowhere': unknown trace observation point"),
    ({"protocol": ["tpc"]}, "--protocol 'tpc': unknown protocol"),
    ({"port": ["70000"]}, "--port '70000': not a port"),
    ({"port": ["http"]}, "--port 'http': not a port"),
    ({"pod": ["a/b/c"]}, "--pod 'a/b/c': expected a pod as [namespace/]name"),
    ({"namespace": ["Bad_NS"]}, "--namespace 'Bad_NS': not a namespace name"),
    ({"label": ["a=b=c"]}, "--label 'a=b=c': expected a label selector"),
    ({"last": ["3"], "first": ["3"]}, "--first and --last"),
    ({"bogus": ["1"]}, "unknown flow filter 'bogus'"),
])
def test_bad_input_names_the_flag(params, message):
    with pytest.raises(UserError) as exc:
        filters.parse(params, now=T0)
    assert message in str(exc.value)
