"""Prometheus metrics: Hubble's flow metrics and the agent's own, in the text exposition format 0.0.4.

No client library: nodes install nothing from PyPI. A metric keeps its series in a dict keyed by the
tuple of label values, so counting an event is one dict increment (HubbleMetrics.process runs for
every datapath event). Rendering copies a dict before walking it (dict(d) is atomic in CPython), so
the reader thread never waits for a scrape.
"""
from __future__ import annotations

import math
import threading
from http.server import BaseHTTPRequestHandler

from apiary.observe.flow import DROP_REASONS  # Hubble's DropReason enum names
from apiary.observe.server import HttpServer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Hubble's metric names (apiary_hubble_metrics); options after ":" are accepted, the name counts.
HUBBLE_METRICS = ("dns", "drop", "tcp", "flow", "flows-to-world", "icmp", "http", "port-distribution", "policy")
# Hubble derives these from L7 (proxy) records; the datapath sees L3/L4 only, so they export nothing.
NEEDS_L7 = {"dns": "needs L7 (DNS proxy) visibility", "http": "needs L7 (HTTP proxy) visibility"}

# hubble_flows_processed_total's type label by event type (Hubble's flow handler).
FLOW_TYPES = {"drop": "Drop", "trace": "Trace", "policy-verdict": "PolicyVerdict", "trace-sock": "Sock"}
# hubble_icmp_total's type: gopacket's ICMPv4TypeCode(type, 0).String(), as Hubble labels it.
ICMPV4_TYPES = {
    0: "EchoReply", 3: "DestinationUnreachable(Net)", 4: "SourceQuench", 5: "Redirect(Network)", 8: "EchoRequest",
    9: "RouterAdvertisement", 10: "RouterSolicitation", 11: "TimeExceeded(TTLExceeded)",
    12: "ParameterProblem(BadIPHeader)", 13: "TimestampRequest", 14: "TimestampReply", 15: "InfoRequest",
    16: "InfoReply", 17: "AddressMaskRequest", 18: "AddressMaskReply",
}
WORLD_IDENTITY = 2
# Seconds; from half a millisecond (a map update) to tens of seconds (a stuck agent).
DELAY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# --- the registry ----------------------------------------------------------------------------------
def _value(number) -> str:
    if isinstance(number, float):
        if math.isinf(number):
            return "+Inf" if number > 0 else "-Inf"
        if number.is_integer():
            return str(int(number))
        return repr(number)
    return str(number)


def _escape(text) -> str:
    return str(text).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names, values) -> str:
    if not names:
        return ""
    return "{%s}" % ",".join('%s="%s"' % (n, _escape(v)) for n, v in zip(names, values))


class Metric:
    TYPE = "untyped"

    def __init__(self, name: str, help_text: str, labelnames=()):
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self.series: dict = {}  # label values (tuple) -> value

    def header(self) -> list:
        return ["# HELP %s %s" % (self.name, self.help.replace("\\", "\\\\").replace("\n", "\\n")),
                "# TYPE %s %s" % (self.name, self.TYPE)]

    def render(self) -> list:
        lines = self.header()
        for values, number in sorted(dict(self.series).items()):
            lines.append("%s%s %s" % (self.name, _labels(self.labelnames, values), _value(number)))
        return lines


class Counter(Metric):
    TYPE = "counter"

    def inc(self, values=(), amount=1) -> None:
        self.series[values] = self.series.get(values, 0) + amount


class Gauge(Metric):
    TYPE = "gauge"

    def set(self, values=(), number=0) -> None:
        self.series[values] = number


class Histogram(Metric):
    TYPE = "histogram"

    def __init__(self, name: str, help_text: str, buckets=DELAY_BUCKETS):
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0
        self.lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        index = len(self.buckets)
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                index = i
                break
        with self.lock:
            self.counts[index] += 1
            self.sum += seconds

    def render(self) -> list:
        with self.lock:
            counts, total = list(self.counts), self.sum
        lines = self.header()
        cumulative = 0
        for bound, count in zip(self.buckets + (math.inf,), counts):
            cumulative += count
            lines.append('%s_bucket{le="%s"} %d' % (self.name, _value(float(bound)), cumulative))
        lines.append("%s_sum %s" % (self.name, _value(float(total))))
        lines.append("%s_count %d" % (self.name, cumulative))
        return lines


def render(metrics) -> str:
    return "".join(line + "\n" for metric in metrics for line in metric.render())


# --- Hubble's flow metrics -------------------------------------------------------------------------
def parse_enabled(enabled) -> dict:
    """["drop", "flow:sourceContext=pod", ...] -> {name: options}; an unknown name is an error."""
    out = {}
    for index, item in enumerate(enabled or []):
        name, _sep, options = str(item).partition(":")
        if name not in HUBBLE_METRICS:
            raise ValueError("hubble metrics[%d]: %r is not a Hubble metric (%s)"
                             % (index, item, ", ".join(HUBBLE_METRICS)))
        out[name] = options
    return out


class HubbleMetrics:
    """Hubble's metrics from decoded datapath events (apiary.observe.events.decode)."""

    def __init__(self, enabled):
        self.enabled = parse_enabled(enabled)
        on = self.enabled
        self.flows = Counter("hubble_flows_processed_total", "Total number of flows processed",
                             ("type", "subtype", "verdict")) if "flow" in on else None
        self.drops = Counter("hubble_drop_total", "Number of drops", ("reason", "protocol")) if "drop" in on else None
        self.tcp = Counter("hubble_tcp_flags_total", "TCP flag occurrences", ("flag", "family")) if "tcp" in on else None
        self.icmp = Counter("hubble_icmp_total", "Number of ICMP messages", ("family", "type")) if "icmp" in on else None
        self.ports = Counter("hubble_port_distribution_total", "Numbers of packets distributed by destination port",
                             ("protocol", "port")) if "port-distribution" in on else None
        self.policy = Counter("hubble_policy_verdicts_total", "Number of policy verdict events",
                              ("direction", "match", "action")) if "policy" in on else None
        self.world = Counter("hubble_flows_to_world_total", "Total number of flows to reserved:world",
                             ("protocol", "verdict")) if "flows-to-world" in on else None
        # Always there: losing events is never hidden.
        self.lost = Counter("hubble_lost_events_total", "Number of lost events", ("source",))

    def unsupported(self) -> list:
        """The enabled metrics that export no series here (and why), for the role and `apiary status`."""
        return ["%s: %s" % (name, NEEDS_L7[name]) for name in self.enabled if name in NEEDS_L7]

    def lost_events(self, source: str, count: int) -> None:
        """Hubble's sources: perf_event_ring_buffer (the datapath's), observer_events_queue, hubble_ring_buffer."""
        if count:
            self.lost.inc((source,), count)

    def process(self, event: dict) -> None:
        verdict = event["verdict"]
        protocol = event["protocol"]
        kind = event["type"]
        if self.flows is not None:
            kind_name = FLOW_TYPES.get(kind, "Unknown")
            subtype = event["observation_point"] if kind == "trace" else ""
            self.flows.inc((kind_name, subtype, verdict))
        if verdict == "DROPPED":
            if self.drops is not None:
                reason = event["drop_reason"]
                self.drops.inc((DROP_REASONS.get(reason, "DROP_REASON_UNKNOWN"), protocol))
        if self.policy is not None and kind == "policy-verdict":
            self.policy.inc((event["traffic_direction"], _policy_match(event), verdict.lower()))
        forwarded = verdict == "FORWARDED"
        if self.tcp is not None and forwarded and protocol == "TCP":
            flags = event["tcp_flags"]
            if flags:
                if "FIN" in flags:
                    self.tcp.inc(("FIN", "IPv4"))
                if "SYN" in flags:
                    self.tcp.inc(("SYN-ACK" if "ACK" in flags else "SYN", "IPv4"))
                if "RST" in flags:
                    self.tcp.inc(("RST", "IPv4"))
        if self.icmp is not None and protocol == "ICMPv4":
            icmp_type = event["icmp_type"]
            self.icmp.inc(("IPv4", ICMPV4_TYPES.get(icmp_type, "%s(0)" % icmp_type)))
        if self.ports is not None and forwarded and not event["is_reply"] and protocol in ("TCP", "UDP", "SCTP"):
            self.ports.inc((protocol, str(event["dst_port"])))
        if self.world is not None and event["dst_identity"] == WORLD_IDENTITY and not event["is_reply"]:
            # Hubble's default: drops count only when policy denied them (its any-drop option counts all).
            if verdict != "DROPPED" or event["drop_reason"] == 133:
                self.world.inc((protocol, verdict))

    def metrics(self) -> list:
        return [m for m in (self.flows, self.drops, self.tcp, self.icmp, self.ports, self.policy, self.world,
                            self.lost) if m is not None]

    def render(self) -> str:
        return render(self.metrics())


def _policy_match(event: dict) -> str:
    """Hubble's match label. The event carries it if the datapath knows it; a drop by default deny
    (no rule matched) is Hubble's "none"."""
    match = event.get("policy_match")
    if match:
        return match
    return "none" if event["drop_reason"] == 133 else "unknown"


# --- the agent's own metrics -----------------------------------------------------------------------
class AgentMetrics:
    """Cilium's agent metrics, as apiary_*: implementation delays (observed by the PolicyManager and the
    ServiceManager), the endpoint count and the datapath's drop/forward counters (apiary_metrics map,
    read at scrape time)."""

    def __init__(self, datapath=None, endpoint_count=None):
        self.datapath = datapath  # apiary.agent.datapath.Datapath (its .metrics is maps.MetricsMap)
        self.endpoint_count = endpoint_count  # callable -> int
        self.policy_delay = Histogram(
            "apiary_policy_implementation_delay_seconds",
            "Time from a policy change arriving at the agent until the datapath enforces it")
        self.service_delay = Histogram(
            "apiary_service_implementation_delay_seconds",
            "Time from a Service change arriving at the agent until the datapath serves it")

    def datapath_rows(self) -> list:
        return self.datapath.metrics.list() if self.datapath is not None else []

    def render(self) -> str:
        endpoints = Gauge("apiary_endpoint_count", "Number of endpoints managed by this agent")
        if self.endpoint_count is not None:
            endpoints.set((), self.endpoint_count())
        drops = Counter("apiary_drop_count_total", "Total dropped packets, tagged by drop reason and direction",
                        ("reason", "direction"))
        drop_bytes = Counter("apiary_drop_bytes_total", "Total dropped bytes, tagged by drop reason and direction",
                             ("reason", "direction"))
        forwards = Counter("apiary_forward_count_total", "Total forwarded packets, tagged by direction",
                           ("direction",))
        forward_bytes = Counter("apiary_forward_bytes_total", "Total forwarded bytes, tagged by direction",
                                ("direction",))
        for row in self.datapath_rows():
            if row["reason"] == 0:
                forwards.inc((row["direction"],), row["count"])
                forward_bytes.inc((row["direction"],), row["bytes"])
            else:
                drops.inc((row["reason_name"], row["direction"]), row["count"])
                drop_bytes.inc((row["reason_name"], row["direction"]), row["bytes"])
        return render([self.policy_delay, self.service_delay, endpoints, drops, drop_bytes, forwards, forward_bytes])


# --- the scrape endpoint ---------------------------------------------------------------------------
class MetricsServer:
    """GET /metrics on host:port: the concatenated output of render_callables (each returns text)."""

    def __init__(self, host: str, port: int, render_callables):
        renders = list(render_callables)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                try:
                    body = "".join(r() for r in renders).encode()
                except Exception as exc:  # noqa: BLE001 - a scrape must say what broke
                    self.send_error(500, "rendering the metrics failed: %s" % exc)
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes every few seconds: no access log
                pass

        self.httpd = HttpServer((host, port), Handler)
        self.address = self.httpd.server_address
        self.thread = None

    def start(self) -> "MetricsServer":
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
