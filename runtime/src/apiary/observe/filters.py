"""Flow filters as `hubble observe` takes them, and their query-string form.

A filter is a dict of flag name -> list of values (strings), the same for the CLI's flags and for the
query string of GET /v1/flows: `parse()` validates and compiles it on both sides, so a node or relay
filters server-side exactly as the client asked. Semantics are Hubble's allowlist: flags of different
kinds must all match (AND), repeated values of one flag are alternatives (OR).
"""
from __future__ import annotations

import fnmatch
import ipaddress
import re
import time
import urllib.parse

from apiary.errors import UserError
from apiary.observe.flow import parse_rfc3339, rfc3339

VERDICTS = ("FORWARDED", "DROPPED", "TRANSLATED", "TRACED", "ERROR", "AUDIT", "REDIRECTED")

# --type names (Hubble's) -> Cilium's message type numbers, and the sub-types each one names.
TYPES = {"drop": 1, "debug": 2, "capture": 3, "trace": 4, "policy-verdict": 5, "recorder": 6,
         "trace-sock": 7, "l7": 129, "agent": 130}
TRACE_POINTS = ("to-endpoint", "to-proxy", "to-host", "to-stack", "to-overlay", "from-endpoint", "from-proxy",
                "from-host", "from-stack", "from-overlay", "from-network", "to-network")
SOCK_POINTS = {"pre-xlate-fwd": 1, "post-xlate-fwd": 2, "pre-xlate-rev": 3, "post-xlate-rev": 4}
PROTOCOLS = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP", "icmp": "ICMPv4", "icmpv4": "ICMPv4"}

# Filter keys (as in the query string) and the CLI flag each comes from, for error messages.
FILTER_FLAGS = {
    "pod": "--pod", "from_pod": "--from-pod", "to_pod": "--to-pod", "namespace": "--namespace",
    "verdict": "--verdict", "type": "--type", "protocol": "--protocol", "port": "--port",
    "ip": "--ip", "from_ip": "--from-ip", "to_ip": "--to-ip", "label": "--label", "from_label": "--from-label",
    "to_label": "--to-label", "node_name": "--node-name",
}
QUERY_FLAGS = {"since": "--since", "until": "--until", "last": "--last", "first": "--first", "follow": "--follow"}

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h))")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def _error(key: str, value, why: str) -> UserError:
    flag = FILTER_FLAGS.get(key) or QUERY_FLAGS.get(key) or key
    return UserError("%s %r: %s" % (flag, value, why))


def parse_time(key: str, value: str, now: float) -> float:
    """A duration back from now (30s, 5m, 1h30m, as Go writes them) or an RFC 3339 time."""
    text = value.strip()
    if text and _DURATION.sub("", text) == "":
        return now - sum(float(n) * _UNIT[u] for n, u in _DURATION.findall(text))
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise _error(key, value, "neither a duration (like 30s, 5m, 2h) nor an RFC 3339 time "
                                 "(like 2025-11-23T18:22:53Z)") from None


def _count(key: str, value: str) -> int:
    if not value.isdigit() or int(value) == 0:
        raise _error(key, value, "not a positive number of flows")
    return int(value)


# --- matchers: each returns a predicate over a flow ------------------------------------------------
def _pod(key, value):
    ns, _, name = value.rpartition("/")
    if not value or value.count("/") > 1:
        raise _error(key, value, "expected a pod as [namespace/]name")

    def match(ep):
        return bool(ep.get("pod_name")) and (not ns or ep.get("namespace") == ns) and \
            ep["pod_name"].startswith(name)
    return match


def _ip(key, value):
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _error(key, value, "not an IP address or CIDR (like 10.233.64.10 or 10.233.64.0/18)") from None

    def match(ip):
        try:
            return ipaddress.ip_address(ip) in net
        except ValueError:
            return False
    return match


def _label(key, value):
    terms = [t.strip() for t in value.split(",")]
    if not value or not all(terms) or any(t.count("=") > 1 for t in terms):
        raise _error(key, value, "expected a label selector like app=frontend or k8s:app=frontend,tier")
    wanted = []
    for term in terms:
        k, eq, v = term.partition("=")
        source, colon, k = k.rpartition(":") if ":" in k else ("", "", k)
        wanted.append((source or None, k, v if eq else None))

    def match(ep):
        labels = [lab.split(":", 1) if ":" in lab else ["", lab] for lab in ep.get("labels") or []]
        pairs = [(src, *kv.partition("=")[::2]) for src, kv in labels]
        return all(any((s is None or s == src) and k == lk and (v is None or v == lv) for src, lk, lv in pairs)
                   for s, k, v in wanted)
    return match


def _type(key, value):
    name, _, sub = value.partition(":")
    if name not in TYPES:
        raise _error(key, value, "unknown event type (one of %s)" % ", ".join(TYPES))
    number = TYPES[name]
    sub_match = None
    if sub:
        if name == "trace":
            if sub not in TRACE_POINTS:
                raise _error(key, value, "unknown trace observation point (one of %s)" % ", ".join(TRACE_POINTS))
            point = sub.upper().replace("-", "_")
            sub_match = lambda f: f.get("trace_observation_point") == point  # noqa: E731
        elif name == "trace-sock":
            if sub not in SOCK_POINTS:
                raise _error(key, value, "unknown socket translation point (one of %s)" % ", ".join(SOCK_POINTS))
            sub_match = lambda f, n=SOCK_POINTS[sub]: f["event_type"].get("sub_type") == n  # noqa: E731
        elif sub.isdigit():
            sub_match = lambda f, n=int(sub): f["event_type"].get("sub_type") == n  # noqa: E731
        else:
            raise _error(key, value, "the sub-type of %s must be a number" % name)
    return lambda f: f["event_type"].get("type") == number and (sub_match is None or sub_match(f))


def _compile(key, value):
    """A predicate over a flow for one value of one filter key."""
    if key in ("pod", "from_pod", "to_pod"):
        m = _pod(key, value)
        sides = {"pod": ("source", "destination"), "from_pod": ("source",), "to_pod": ("destination",)}[key]
        return lambda f: any(m(f.get(side) or {}) for side in sides)
    if key == "namespace":
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value):
            raise _error(key, value, "not a namespace name")
        return lambda f: any((f.get(side) or {}).get("namespace") == value for side in ("source", "destination"))
    if key == "verdict":
        if value.upper() not in VERDICTS:
            raise _error(key, value, "unknown verdict (one of %s)" % ", ".join(VERDICTS))
        return lambda f: f.get("verdict") == value.upper()
    if key == "type":
        return _type(key, value)
    if key == "protocol":
        if value.lower() not in PROTOCOLS:
            raise _error(key, value, "unknown protocol (one of %s)" % ", ".join(PROTOCOLS))
        return lambda f, p=PROTOCOLS[value.lower()]: p in (f.get("l4") or {})
    if key == "port":
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise _error(key, value, "not a port (1-65535)")
        port = int(value)
        return lambda f: any(port in (l4.get("source_port"), l4.get("destination_port"))
                             for l4 in (f.get("l4") or {}).values())
    if key in ("ip", "from_ip", "to_ip"):
        m = _ip(key, value)
        sides = {"ip": ("source", "destination"), "from_ip": ("source",), "to_ip": ("destination",)}[key]
        return lambda f: any(m((f.get("IP") or {}).get(side, "")) for side in sides)
    if key in ("label", "from_label", "to_label"):
        m = _label(key, value)
        sides = {"label": ("source", "destination"), "from_label": ("source",),
                 "to_label": ("destination",)}[key]
        return lambda f: any(m(f.get(side) or {}) for side in sides)
    if key == "node_name":
        if not value:
            raise _error(key, value, "empty node name pattern")
        return lambda f: fnmatch.fnmatchcase(f.get("node_name", ""), value)
    raise UserError("unknown flow filter %r (known: %s)" % (key, ", ".join(list(FILTER_FLAGS) + list(QUERY_FLAGS))))


class Query:
    """A parsed filter plus the time range and count: what one GET /v1/flows asks for."""

    def __init__(self, filters: dict, since=None, until=None, last=None, first=None, follow=False):
        self.filters = filters                      # key -> list of value strings (validated)
        self.since, self.until, self.last, self.first, self.follow = since, until, last, first, follow
        self._predicates = [[_compile(key, v) for v in values] for key, values in filters.items() if values]

    def match(self, flow: dict) -> bool:
        return all(any(p(flow) for p in alternatives) for alternatives in self._predicates)

    def in_range(self, seconds: float) -> bool:
        return (self.since is None or seconds >= self.since) and (self.until is None or seconds <= self.until)

    def params(self) -> dict:
        """The query as key -> list of strings; times absolute so every node reads them alike."""
        out = {k: list(v) for k, v in self.filters.items() if v}
        if self.since is not None:
            out["since"] = [rfc3339(self.since)]
        if self.until is not None:
            out["until"] = [rfc3339(self.until)]
        for key in ("last", "first"):
            if getattr(self, key):
                out[key] = [str(getattr(self, key))]
        if self.follow:
            out["follow"] = ["1"]
        return out

    def query_string(self, **override) -> str:
        params = self.params()
        for key, value in override.items():
            if value is None:
                params.pop(key, None)
            else:
                params[key] = [str(value)]
        return urllib.parse.urlencode(params, doseq=True)


def parse(params: dict, now: float | None = None) -> Query:
    """Validate key -> [values] (from CLI flags or a parsed query string) into a Query."""
    now = time.time() if now is None else now
    filters = {}
    for key, values in params.items():
        values = [values] if isinstance(values, (str, int)) else list(values or [])
        if key in QUERY_FLAGS or not values:
            continue
        for value in values:
            _compile(key, str(value))   # raises on bad input, naming the flag
        filters[key] = [str(v) for v in values]

    def one(key):
        values = params.get(key)
        values = [values] if isinstance(values, (str, int)) else list(values or [])
        if len(values) > 1:
            raise _error(key, values, "given more than once")
        return str(values[0]) if values and values[0] not in (None, "") else None

    since = one("since")
    until = one("until")
    since = parse_time("since", since, now) if since else None
    until = parse_time("until", until, now) if until else None
    if since is not None and until is not None and since > until:
        raise _error("since", one("since"), "is after --until %r" % one("until"))
    last = _count("last", one("last")) if one("last") else None
    first = _count("first", one("first")) if one("first") else None
    follow_text = (one("follow") or "0").lower()
    if follow_text not in ("0", "1", "true", "false"):
        raise _error("follow", follow_text, "expected 1 or 0")
    follow = follow_text in ("1", "true")
    if last and first:
        raise UserError("--first and --last: give one of them")
    if first and follow:
        raise UserError("--first and --follow: give one of them")
    return Query(filters, since, until, last, first, follow)


def from_query_string(text: str) -> Query:
    return parse(urllib.parse.parse_qs(text, keep_blank_values=True))
