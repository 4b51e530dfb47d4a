#!/usr/bin/env python3
"""The Hubble pipeline (issue 6): flows per second it sustains, and what it costs a pod's connect rate.

    .venv/bin/python bench/hubble.py [--part all|flows|connect] [--seconds N] [--rounds N]
                                     [--rates 25000,50000,100000,150000,max] [-o json] [-q]

Run as root on Debian 12 (clang and make; scripts/bootstrap.sh installs them). No lab: bench/datapath.py's
two-node topology (native routing, the Apiary datapath) in namespaces `apiary-b-<random>-...`, plus one
scratch namespace `...-hubble` (only `lo`) where the bench's agent, relay and clients run: each is a
process of its own, as on a node (an agent per node: EventReader -> Observer -> FlowServer; the relay;
a client), talking over 127.0.0.1 of that namespace only.

flows:   pod n1b's ingress is denied (its allow-all policy entry removed), and a paced C sender in pod
         n2a floods n1b with UDP datagrams: every one is dropped on node n1, and drops are never
         aggregated, so node n1's ring gets a fixed number of events per datagram (calibrated first).
         For each offered rate (events/s into node n1's ring) and --seconds, three stages:
           observer   the agent's EventReader feeds its Observer (no client);
           server     plus a client following GET /v1/flows?follow=1 on the agent's FlowServer;
           relay      the client follows the relay's /v1/flows?follow=1 instead (relay -> FlowServer).
         Reported: events the datapath emitted (read + lost, apiary_events_lost), events into the
         observer per second during the window, lost events, the backlog left in the ring at the end,
         flows delivered to the client per second, and whether it kept up (no stream dropped as "client
         too slow" and >= 95 % of the observed flows delivered). Target: >= 100,000 flows/s into the
         ring without loss (and through to the client, end to end).
connect: a C client in pod n1a does connect()+close (SO_LINGER 0) to a server in pod n2b for --seconds;
         rounds alternate Hubble on (events switched on in both nodes, both agents reading) and off
         (events off, no reader). Target: on/off >= 0.95 (Hubble costs <= 5 % of the connect rate).

Benchmarks report, tests assert: a missed target is printed, never a failure. Exit 0 with numbers, 1 when
it could not run, 130 when interrupted. Everything it made (namespaces, pins, processes) is removed at
the end, also on failure or Ctrl-C; the root network namespace is never touched.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import datapath as base  # noqa: E402  (bench/datapath.py: pins, objects, CPUs, progress and exit rules)

from apiary import netns  # noqa: E402
from apiary.bpf import maps  # noqa: E402
from apiary.observe import events  # noqa: E402
from tests.datapath.topology import PODS, Topology  # noqa: E402

THIS = os.path.abspath(__file__)
TOOLS = ("ip", "nsenter", "make", "clang")
SENDER, TARGET = "n2a", "n1b"         # the flood: n2a -> n1b, n1b's ingress denied (dropped on node n1)
OBSERVED = "n1"                       # the node whose ring, observer and flow server are measured
CONNECT_CLIENT, CONNECT_SERVER, CONNECT_PORT = "n1a", "n2b", 8080
FLOOD_PORT = 9
FLOW_PORT, RELAY_PORT = 4244, 4245    # on 127.0.0.1 of the scratch namespace
DEFAULT_RATES = "25000,50000,100000,150000,max"
STAGES = ("observer", "server", "relay")
FLOWS_TARGET, CONNECT_TARGET = 100000, 0.95
KEEP_UP = 0.95                        # delivered/observed (and observed/emitted) that counts as keeping up
CALIBRATION_PACKETS = 4000

FLOOD_C = r"""
/* flood IP PORT RATE SECONDS: 16-byte UDP datagrams to IP:PORT, RATE a second (0: as fast as it goes),
 * for SECONDS (sendmmsg in batches); prints {"sent", "failed", "seconds"}. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 32

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: flood IP PORT RATE SECONDS\n");
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr)) { perror("socket"); return 1; }
    char payload[16] = "apiary-bench";
    struct iovec iov = {payload, sizeof payload};
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    unsigned long sent = 0, failed = 0;
    double start = now(), end = start + seconds, t;
    struct timespec pause = {0, 50000};
    while ((t = now()) < end) {
        int n = BATCH;
        if (rate > 0) {
            double due = (t - start) * rate - (double)sent;
            if (due < 1) { nanosleep(&pause, NULL); continue; }
            if (due < n) n = (int)due;
        }
        int r = sendmmsg(fd, msgs, n, 0);
        if (r < 0) { failed++; nanosleep(&pause, NULL); continue; }
        sent += r;
    }
    printf("{\"sent\": %lu, \"failed\": %lu, \"seconds\": %.6f}\n", sent, failed, now() - start);
    return 0;
}
"""


def _lxc_id(pod: str) -> int:
    return int(PODS[pod][1].rsplit(".", 1)[1])


def bench_lookup():
    """Enrichment as an agent has it: the four pods with names, namespace, labels and node."""
    from apiary.observe.flow import StaticLookup

    endpoints, identities = {}, {}
    for pod, (node, ip, _, identity) in PODS.items():
        labels = ["k8s:app=%s" % pod, "k8s:io.kubernetes.pod.namespace=bench"]
        endpoints[ip] = {"ID": _lxc_id(pod), "identity": identity, "namespace": "bench", "labels": labels,
                         "pod_name": pod, "node_name": node, "ip": ip}
        identities[identity] = labels
    return StaticLookup(endpoints=endpoints, identities=identities)


# --- the role processes (agent, relay, client): one per process, in the scratch namespace ------------
def _reply(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _commands():
    for line in sys.stdin:
        if line.strip() in ("", "quit"):
            return
        yield line.strip()


def role_agent(pin_dir: str, node: str, port: int) -> None:
    """An agent's hubble: EventReader -> Observer (ring of 4095, as the agent's default), a FlowServer
    on 127.0.0.1:port when port is not 0. Commands: start (reader on, then events on), stop (events off,
    ring drained, reader off), stats."""
    from apiary.observe import server
    from apiary.observe.observer import Observer

    observer = Observer(node_name=node, lookup=bench_lookup())
    flow_server = server.FlowServer(observer, "127.0.0.1", port).start() if port else None
    state = {"reader": None, "stop": None, "thread": None, "read": 0, "errors": 0}

    def read_total():
        reader = state["reader"]
        return state["read"] + (reader.read if reader else 0), state["errors"] + (reader.errors if reader else 0)

    _reply({"ready": True})
    try:
        for cmd in _commands():
            if cmd == "start" and state["reader"] is None:
                stop = threading.Event()
                reader = events.EventReader(pin_dir, observer.add, observer.lost)
                thread = threading.Thread(target=reader.run, args=(stop,), name="hubble-events", daemon=True)
                thread.start()
                state.update(reader=reader, stop=stop, thread=thread)
                events.set_enabled(pin_dir, True)
            elif cmd == "stop" and state["reader"] is not None:
                events.set_enabled(pin_dir, False)
                reader, last, deadline = state["reader"], -1, time.monotonic() + 20
                while reader.read != last and time.monotonic() < deadline:   # drain the ring
                    last = reader.read
                    time.sleep(0.5)
                state["stop"].set()
                state["thread"].join(5)
                state.update(read=state["read"] + reader.read, errors=state["errors"] + reader.errors,
                             reader=None, stop=None, thread=None)
            read, errors = read_total()
            status = observer.status()
            _reply({"read": read, "errors": errors, "seen": status["seen_flows"],
                    "lost_reported": sum(status["lost_events"].values()), "subscribers": status["subscribers"],
                    "dropped_clients": status["dropped_clients"], "reading": state["reader"] is not None,
                    "cpu": sum(os.times()[:2]), "time": time.monotonic()})
    finally:
        if state["reader"] is not None:
            events.set_enabled(pin_dir, False)
            state["stop"].set()
        if flow_server is not None:
            flow_server.stop()


def role_relay(peer: str, port: int) -> None:
    """The relay (apiary.observe.relay.Relay) with one peer, the agent's flow server, instead of the
    nodes it would discover in the store."""
    from apiary.observe import relay, server

    class OnePeerRelay(relay.Relay):
        def peers(self):
            return [{"name": OBSERVED, "address": peer}]

    backend = OnePeerRelay(["http://127.0.0.1:1"])     # the store is never asked: peers() is fixed
    service = server.serve_tcp("127.0.0.1", port, server.make_handler(backend)).start()
    _reply({"ready": True})
    try:
        for _ in _commands():
            _reply({"threads": threading.active_count(), "cpu": sum(os.times()[:2])})
    finally:
        service.stop()


def role_client(target: str) -> None:
    """Follows target's /v1/flows?follow=1 (reconnecting when the stream ends) and counts what it gets,
    parsing every line as a client does. Command: stats."""
    from apiary.observe import server

    counts = {"flows": 0, "lost_events": 0, "errors": [], "connects": 0, "other": 0, "last_flow": 0.0}

    def follow():
        while True:
            counts["connects"] += 1
            try:
                for rec in server.get_stream(target, "/v1/flows?follow=1", timeout=10, follow_timeout=None):
                    if "flow" in rec:
                        counts["flows"] += 1
                        counts["last_flow"] = time.monotonic()
                    elif "lost_events" in rec:
                        counts["lost_events"] += rec["lost_events"]["num_events_lost"]
                    elif "error" in rec:      # the server's last record: it ends the stream
                        counts["errors"].append(rec["error"])
                        break
                    else:
                        counts["other"] += 1
                else:
                    counts["errors"].append("the stream ended")
            except Exception as exc:  # noqa: BLE001 - counted; the client reconnects
                counts["errors"].append("%s: %s" % (type(exc).__name__, exc))
            time.sleep(0.2)

    threading.Thread(target=follow, daemon=True).start()
    _reply({"ready": True})
    for _ in _commands():
        _reply(dict(counts, errors=list(counts["errors"][-5:]), error_count=len(counts["errors"]),
                    time=time.monotonic(), cpu=sum(os.times()[:2])))


def role_main(argv: list) -> int:
    role, args = argv[0], argv[1:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the bench ends its roles; Ctrl-C is for the bench
    if role == "agent":
        role_agent(args[0], args[1], int(args[2]))
    elif role == "relay":
        role_relay(args[0], int(args[1]))
    elif role == "client":
        role_client(args[0])
    else:
        return 2
    return 0


# --- the bench's side of a role process --------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


class Role:
    """A role process in the scratch namespace, dying with the bench; one JSON line per command."""

    def __init__(self, scratch: str, name: str, args: list, log_dir: str):
        def setup():
            netns.enter(scratch)
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

        self.name = name
        self.log_path = os.path.join(log_dir, "%s.log" % name)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, THIS, "--role"] + [str(a) for a in args],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         preexec_fn=setup, cwd=base.ROOT)
        self._buf = b""
        self._read(60)

    def _read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            ready = select.select([self.proc.stdout], [], [], max(0.0, left))[0] if left > 0 else []
            chunk = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                with open(self.log_path) as log:
                    tail = log.read()[-2000:]
                raise base.BenchError("%s: %s\n%s" % (self.name, "exited" if ready else "no answer in %.0f s" % timeout,
                                                       tail))
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def ask(self, command: str, timeout: float = 30) -> dict:
        try:
            self.proc.stdin.write((command + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            pass            # it exited: _read says so, with its log
        return self._read(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()


# --- building ----------------------------------------------------------------------------------------
def build_c(work: str, name: str, source_text: str) -> str:
    source, binary = os.path.join(work, name + ".c"), os.path.join(work, name)
    with open(source, "w") as handle:
        handle.write(source_text)
    proc = subprocess.run(["clang", "-O2", "-Wall", "-o", binary, source], capture_output=True, text=True)
    if proc.returncode != 0:
        raise base.BenchError("clang %s.c:\n%s" % (name, proc.stderr))
    return binary


@contextlib.contextmanager
def scratch_namespace(name: str):
    """A namespace of the bench's own with only `lo` up, removed at the end."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def deny_ingress(topo: Topology, pod: str) -> None:
    """The pod's ingress enforced with nothing allowed: every packet to it is a policy drop."""
    with maps.PolicyMap(topo.pin_dir[PODS[pod][0]]) as policy:
        policy.delete(_lxc_id(pod), 0, False, 0, 0, 0)


def _check_tools() -> None:
    if os.geteuid() != 0:
        raise base.BenchError("run as root: the bench creates network namespaces and loads BPF programs")
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        raise base.BenchError("missing %s (scripts/bootstrap.sh installs them)" % ", ".join(missing))


# --- flows -------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, topo: Topology, flood: str, cpus, log):
        self.topo, self.flood, self.cpus, self.log = topo, flood, cpus, log
        self.pin_dir = topo.pin_dir[OBSERVED]

    def send(self, rate: float, seconds: float) -> dict:
        """The flood from SENDER to TARGET at `rate` datagrams/s (0: as fast as it goes), on CPU A."""
        cmd = base._in_pod(self.topo, SENDER, self.flood, PODS[TARGET][1], str(FLOOD_PORT), str(int(rate)),
                           str(seconds))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30,
                              preexec_fn=base._on_cpu(self.cpus[0]))
        if proc.returncode != 0:
            raise base.BenchError("flood: exit %d: %s" % (proc.returncode, proc.stderr[-2000:]))
        out = json.loads(proc.stdout)
        if out["sent"] == 0:
            raise base.BenchError("flood: nothing sent (%d failures)" % out["failed"])
        return out

    def calibrate(self, agent: Role) -> float:
        """Events in node n1's ring per flood datagram (policy drops: not aggregated)."""
        before, lost = agent.ask("start"), events.lost_count(self.pin_dir)
        sent = self.send(10000, CALIBRATION_PACKETS / 10000.0)["sent"]
        after = agent.ask("stop")
        got = after["read"] - before["read"] + events.lost_count(self.pin_dir) - lost
        if got < sent * 0.5:
            raise base.BenchError("%d datagrams to %s made only %d events in node %s's ring: are drops reported?"
                                  % (sent, TARGET, got, OBSERVED))
        return got / sent

    def window(self, agent: Role, client: Role | None, rate_events: float | None, per_packet: float,
               seconds: float, subscribers: int = 0, relay: Role | None = None) -> dict:
        """One measurement: the agent reading, the client (if any) following (through the relay, if any),
        the flood for `seconds`. `subscribers`: the observer's subscribers before the client started (the
        client's is one more)."""
        agent.ask("start")
        subscribed = True
        if client is not None:
            deadline = time.monotonic() + 10
            while agent.ask("stats")["subscribers"] <= subscribers:
                if time.monotonic() > deadline:     # reported in the row, not a reason to stop the bench
                    subscribed = False
                    break
                time.sleep(0.1)
            time.sleep(0.3)
        lost0 = events.lost_count(self.pin_dir)
        a0 = agent.ask("stats")
        c0 = client.ask("stats") if client else None
        r0 = relay.ask("stats") if relay else None
        sent = self.send(0 if rate_events is None else rate_events / per_packet, seconds)
        a1 = agent.ask("stats")
        c1 = client.ask("stats") if client else None
        r1 = relay.ask("stats") if relay else None
        lost = events.lost_count(self.pin_dir) - lost0
        a2 = agent.ask("stop")          # events off, then the ring drained
        c2 = self._drain(client, c0["flows"] + a2["seen"] - a0["seen"]) if client else None
        elapsed = a1["time"] - a0["time"]
        emitted = a2["read"] - a0["read"] + lost
        seen_in_window = a1["seen"] - a0["seen"]
        row = {"offered_events_per_s": (rate_events if rate_events is not None else emitted / sent["seconds"]),
               "datagrams_sent": sent["sent"], "send_failures": sent["failed"], "seconds": sent["seconds"],
               "emitted": emitted, "emitted_per_s": emitted / sent["seconds"],
               "observer_per_s": seen_in_window / elapsed, "observed": a2["seen"] - a0["seen"],
               "lost": lost, "backlog_at_end": max(0, a2["read"] - a1["read"]), "sink_errors": a2["errors"] - a0["errors"]}
        row["agent_cpu_per_s"] = (a1["cpu"] - a0["cpu"]) / elapsed
        row["agent_cpu_us_per_event"] = (a2["cpu"] - a0["cpu"]) / row["observed"] * 1e6 if row["observed"] else 0.0
        row["observer_kept_up"] = lost == 0 and row["observer_per_s"] >= KEEP_UP * row["emitted_per_s"]
        if client is not None:
            row["subscribed_within_10s"] = subscribed
            delivered = c2["flows"] - c0["flows"]
            # Flows delivered over the time from the window's start to the last one's arrival: what the
            # client sustains (it catches up after the window when it lags).
            took = max(c2["last_flow"] - a0["time"], sent["seconds"]) if delivered else sent["seconds"]
            row.update(client_cpu_per_s=(c1["cpu"] - c0["cpu"]) / (c1["time"] - c0["time"]),
                       relay_cpu_per_s=(r1["cpu"] - r0["cpu"]) / (c1["time"] - c0["time"]) if relay else None,
                       client_in_window_per_s=(c1["flows"] - c0["flows"]) / (c1["time"] - c0["time"]),
                       client_per_s=delivered / took, client_catch_up_s=max(0.0, took - sent["seconds"]),
                       delivered=delivered, delivered_fraction=delivered / row["observed"] if row["observed"] else 0.0,
                       client_dropped=c2["error_count"] - c0["error_count"],
                       client_errors=c2["errors"][-3:] if c2["error_count"] > c0["error_count"] else [],
                       lost_notices=c2["lost_events"] - c0["lost_events"])
            row["client_kept_up"] = (row["observer_kept_up"] and row["client_dropped"] == 0
                                     and row["delivered_fraction"] >= KEEP_UP
                                     and row["client_per_s"] >= KEEP_UP * row["emitted_per_s"])
        return row

    @staticmethod
    def _drain(client: Role, want: int, idle: float = 1.0, limit: float = 30) -> dict:
        """The client's stats once it has `want` flows, or got none for `idle` seconds."""
        deadline, last, since = time.monotonic() + limit, None, time.monotonic()
        while True:
            stats = client.ask("stats")
            if stats["flows"] >= want or time.monotonic() > deadline:
                return stats
            if stats["flows"] != last:
                last, since = stats["flows"], time.monotonic()
            elif time.monotonic() - since > idle:
                return stats
            time.sleep(0.1)


def _quiet_subscribers(agent: Role, limit: float = 15) -> int:
    """The observer's subscribers once the last window's are gone (a closed client's subscription ends
    when its handler notices, within a second or so); what is left after `limit` seconds is reported."""
    deadline = time.monotonic() + limit
    while True:
        count = agent.ask("stats")["subscribers"]
        if count == 0 or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def flows_part(bench: Bench, scratch: str, work: str, rates: list, seconds: float, stack, log) -> dict:
    agent = Role(scratch, "agent-n1", ["agent", bench.pin_dir, OBSERVED, FLOW_PORT], work)
    stack.callback(agent.close)
    per_packet = bench.calibrate(agent)
    log("%.2f event(s) in node %s's ring per datagram" % (per_packet, OBSERVED))
    rows = []
    for rate in rates:
        for stage in STAGES:
            subscribers = _quiet_subscribers(agent)
            client, relay = None, None
            if stage == "relay":    # a relay of its own for each window: one window's trouble stays there
                relay = Role(scratch, "relay", ["relay", "127.0.0.1:%d" % FLOW_PORT, RELAY_PORT], work)
            if stage != "observer":
                port = FLOW_PORT if stage == "server" else RELAY_PORT
                client = Role(scratch, "client-%s" % stage, ["client", "127.0.0.1:%d" % port], work)
            try:
                row = bench.window(agent, client, rate, per_packet, seconds, subscribers, relay)
                if relay is not None:
                    row["relay_threads"] = relay.ask("stats")["threads"]
            finally:
                for role in (client, relay):
                    if role is not None:
                        role.close()
            row.update(stage=stage, rate="max" if rate is None else int(rate), stale_subscribers=subscribers)
            rows.append(row)
            log("%s, offered %s/s: emitted %.0f/s, observer %.0f/s, lost %d%s" % (
                stage, row["rate"], row["emitted_per_s"], row["observer_per_s"], row["lost"],
                ", client %.0f/s (%.0f %% delivered, %d dropped)" % (row["client_per_s"], 100 * row["delivered_fraction"],
                                                                     row["client_dropped"]) if client else ""))
    return {"events_per_datagram": per_packet, "rows": rows, "agent": agent}


# --- connect rate, Hubble on vs off --------------------------------------------------------------------
def connect_part(topo: Topology, connrate: str, agents: list, seconds: float, rounds: int, cpus, log) -> dict:
    runs = {"on": [], "off": []}
    on_events, on_cpu, on_lost, on_seconds, connects_on = 0, 0.0, 0, 0.0, 0
    for rnd in range(rounds):
        for variant in (("on", "off") if rnd % 2 == 0 else ("off", "on")):
            for agent in agents:
                agent.ask("start" if variant == "on" else "stop")
            before = [agent.ask("stats") for agent in agents]
            lost0 = sum(events.lost_count(topo.pin_dir[node]) for node in ("n1", "n2"))
            proc = subprocess.run(base._in_pod(topo, CONNECT_CLIENT, connrate, "connect", PODS[CONNECT_SERVER][1],
                                               str(CONNECT_PORT), str(seconds)),
                                  capture_output=True, text=True, timeout=seconds + 30, preexec_fn=base._on_cpu(cpus[1]))
            if proc.returncode != 0:
                raise base.BenchError("connrate: exit %d: %s" % (proc.returncode, proc.stderr[-2000:]))
            out = json.loads(proc.stdout)
            if out["connects"] == 0 or out["failed"] > out["connects"] // 100:
                raise base.BenchError("%d of %d connects failed" % (out["failed"], out["connects"] + out["failed"]))
            runs[variant].append(out["connects"] / out["seconds"])
            if variant == "on":
                after = [agent.ask("stats") for agent in agents]
                on_events += sum(a["read"] - b["read"] for a, b in zip(after, before))
                on_cpu += sum(a["cpu"] - b["cpu"] for a, b in zip(after, before))
                on_lost += sum(events.lost_count(topo.pin_dir[node]) for node in ("n1", "n2")) - lost0
                on_seconds += out["seconds"]
                connects_on += out["connects"]
        log("connect round %d/%d: on %.0f/s, off %.0f/s" % (rnd + 1, rounds, runs["on"][-1], runs["off"][-1]))
    for agent in agents:
        agent.ask("stop")
    on, off = statistics.median(runs["on"]), statistics.median(runs["off"])
    spread = max((max(v) - min(v)) / statistics.median(v) for v in runs.values())
    return {"on": on, "off": off, "ratio": on / off, "spread": spread,
            "events_per_connect": on_events / connects_on if connects_on else 0.0,
            "events_per_s_on": on_events / on_seconds, "lost_on": on_lost,
            "agents_cpu_per_s_on": on_cpu / on_seconds,
            "runs": {k: [round(v) for v in vals] for k, vals in runs.items()},
            "client": CONNECT_CLIENT, "server": CONNECT_SERVER}


# --- the cost of one event in Python, in this process -----------------------------------------------
def cpu_costs(n: int = 100000) -> dict:
    """Microseconds per event of each step on the reader's and the stream's side, with synthetic
    records of the shape the flood makes (what the pipeline's rate is made of)."""
    from apiary.observe.flow import Converter, to_flow
    from apiary.observe.observer import Observer

    record = events.RECORD.pack(events.DROP, 133, events.F_INGRESS, 17, _lxc_id(TARGET), 0, time.monotonic_ns(),
                                PODS[SENDER][3], PODS[TARGET][3], bytes(map(int, PODS[SENDER][1].split("."))),
                                bytes(map(int, PODS[TARGET][1].split("."))), 0x3930, 0x0900, 0, 0, 0, 0,
                                b"\0\0\0\0", 0, 0, 7, 44, 0)
    records = [record] * n
    offset = events.clock_offset()
    t0 = time.perf_counter()
    decoded = [events.decode(r, offset) for r in records]
    t1 = time.perf_counter()
    observer = Observer(node_name=OBSERVED, lookup=bench_lookup())
    for ev in decoded:
        observer.add(ev)
    t2 = time.perf_counter()
    lookup = bench_lookup()
    flows = [to_flow(ev, OBSERVED, lookup) for ev in decoded[: n // 4]]
    t3 = time.perf_counter()
    for flow in flows:
        json.dumps({"flow": flow}, separators=(",", ":"))
    t4 = time.perf_counter()
    lines = [json.dumps({"flow": flow}, separators=(",", ":")) for flow in flows]
    t5 = time.perf_counter()
    for line in lines:
        json.loads(line)
    t6 = time.perf_counter()
    converter = Converter(OBSERVED, lookup)     # what a flow server does: the line from cached parts
    for ev in decoded[: n // 4]:
        converter.line(ev)
    t7 = time.perf_counter()
    k = len(flows)
    return {"decode_us": (t1 - t0) / n * 1e6, "observer_add_us": (t2 - t1) / n * 1e6,
            "to_flow_us": (t3 - t2) / k * 1e6, "json_dumps_us": (t4 - t3) / k * 1e6,
            "json_loads_us": (t6 - t5) / k * 1e6, "flow_line_us": (t7 - t6) / k * 1e6, "events": n}


# --- the run -----------------------------------------------------------------------------------------
def run_bench(parts: set, rates: list, seconds: float, rounds: int, cpus, log) -> dict:
    _check_tools()
    stack = contextlib.ExitStack()
    report = {"removed": {"namespace_prefixes": [], "pin_dir": None}}
    try:
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="apiary-bench-"))
        pin_root = report["removed"]["pin_dir"] = stack.enter_context(base.pin_folder())
        objects_dir = base.build_objects(os.path.join(work, "bpf"))
        flood = build_c(work, "flood", FLOOD_C)
        import services   # bench/services.py's connrate client and server
        connrate = services.build_connrate(work)
        state_dir = os.path.join(work, "topology")
        os.makedirs(state_dir)
        topo = Topology("native", pin_root, state_dir, prefix=base.NS_PREFIX)
        stack.callback(topo.teardown)
        report["removed"]["namespace_prefixes"].append(topo.tag + "-")
        log("building the topology (%s*)" % topo.tag)
        topo.build()
        topo.load(objects_dir)
        for node in ("n1", "n2"):
            events.set_enabled(topo.pin_dir[node], False)
        server = subprocess.Popen(base._in_pod(topo, CONNECT_SERVER, connrate, "serve", str(CONNECT_PORT)),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True, preexec_fn=base._on_cpu(cpus[0]))
        stack.callback(lambda: (server.poll() is None and os.killpg(server.pid, signal.SIGKILL), server.wait()))
        if not topo.ping(CONNECT_CLIENT, PODS[CONNECT_SERVER][1]) or not topo.ping(SENDER, PODS[TARGET][1]):
            raise base.BenchError("the topology does not forward between the pods")
        deny_ingress(topo, TARGET)
        scratch = stack.enter_context(scratch_namespace(topo.ns("hubble")))
        bench = Bench(topo, flood, cpus, log)
        agents = []
        if "flows" in parts:
            flows = flows_part(bench, scratch, work, rates, seconds, stack, log)
            agents.append(flows.pop("agent"))
            report["flows"] = flows
        if "connect" in parts:
            if not agents:
                agent = Role(scratch, "agent-n1", ["agent", topo.pin_dir["n1"], "n1", FLOW_PORT], work)
                stack.callback(agent.close)
                agents.append(agent)
            agent2 = Role(scratch, "agent-n2", ["agent", topo.pin_dir["n2"], "n2", 0], work)
            stack.callback(agent2.close)
            agents.append(agent2)
            report["connect"] = connect_part(topo, connrate, agents, seconds, rounds, cpus, log)
    finally:
        base.close_stack(stack)
    report["cpu_us_per_event"] = cpu_costs()
    return report


# --- verdicts and output -----------------------------------------------------------------------------
def verdicts(report: dict) -> dict:
    out = {}
    flows = report.get("flows")
    if flows:
        rows = flows["rows"]
        for stage, key, name in (("observer", "observer_kept_up", "into_observer"),
                                 ("relay", "client_kept_up", "end_to_end")):
            kept = [r for r in rows if r["stage"] == stage and r[key]]
            best = max((r["emitted_per_s"] for r in kept), default=0.0)
            tried = [r["emitted_per_s"] for r in rows if r["stage"] == stage]
            meets = best >= FLOWS_TARGET
            out["%s_flows_per_s_without_loss" % name] = {
                "value": best, "target": ">= %d" % FLOWS_TARGET,
                "verdict": "met" if meets else "not met" if max(tried, default=0) >= FLOWS_TARGET
                else "not shown to hold (the sender offered at most %.0f/s)" % max(tried, default=0)}
    connect = report.get("connect")
    if connect:
        ratio, spread = connect["ratio"], connect["spread"]
        margin = 1 - CONNECT_TARGET
        if spread > margin and abs(ratio - CONNECT_TARGET) <= spread:
            verdict = "not shown to hold (runs spread %.0f %%, more than the %.0f %% margin)" % (100 * spread, 100 * margin)
        else:
            verdict = "met" if ratio >= CONNECT_TARGET else "not met"
        out["connect_rate_on_over_off"] = {"value": ratio, "target": ">= %.2f" % CONNECT_TARGET, "verdict": verdict}
    return out


def text_report(report: dict) -> str:
    lines = []
    flows = report.get("flows")
    if flows:
        lines += ["flows: UDP flood %s -> %s, %s's ingress denied: %.2f drop event(s) per datagram into node %s's ring; "
                  "%s s per window" % (SENDER, TARGET, TARGET, flows["events_per_datagram"], OBSERVED, report["seconds"]),
                  "%-9s %9s %10s %11s %9s %8s %9s %9s %9s %9s %10s %10s %8s %7s" % (
                      "stage", "offered", "emitted/s", "observer/s", "lost", "backlog", "agent CPU", "us/event",
                      "relay CPU", "clnt CPU", "client/s", "delivered", "dropped", "kept up")]
        for r in flows["rows"]:
            client = r["stage"] != "observer"
            lines.append("%-9s %9s %10.0f %11.0f %9d %8d %9.2f %9.1f %9s %9s %10s %10s %8s %7s" % (
                r["stage"], r["rate"], r["emitted_per_s"], r["observer_per_s"], r["lost"], r["backlog_at_end"],
                r["agent_cpu_per_s"], r["agent_cpu_us_per_event"],
                "%.2f" % r["relay_cpu_per_s"] if r.get("relay_cpu_per_s") is not None else "-",
                "%.2f" % r["client_cpu_per_s"] if client else "-",
                "%.0f" % r["client_per_s"] if client else "-",
                "%.1f %%" % (100 * r["delivered_fraction"]) if client else "-", r["client_dropped"] if client else "-",
                "yes" if r["client_kept_up" if client else "observer_kept_up"] else "NO"))
        lines += ["emitted/s: events the datapath put in the ring or counted lost, per second of sending; observer/s: "
                  "events into the observer during the window; backlog: events still read from the ring after it;",
                  "agent CPU: CPUs the agent process used during the window (us/event: its CPU time per observed "
                  "event, flow server included); relay CPU, clnt CPU: the same for the relay and the client; client/s: flows the client parsed from the window's start to the "
                  "last one's arrival;",
                  "delivered: of the observed flows; dropped: streams the server or relay ended (client too slow); "
                  "kept up: no loss, observer/s (and client/s) >= %d %% of emitted/s, >= %d %% delivered, none dropped"
                  % (100 * KEEP_UP, 100 * KEEP_UP)]
    connect = report.get("connect")
    if connect:
        lines += ["", "connect: connect()+close %s -> %s (cross node), Hubble on (events on, both agents reading) vs off; "
                  "medians of %d rounds x %s s" % (connect["client"], connect["server"], report["rounds"], report["seconds"]),
                  "  on  %8.0f conn/s  runs %s" % (connect["on"], connect["runs"]["on"]),
                  "  off %8.0f conn/s  runs %s" % (connect["off"], connect["runs"]["off"]),
                  "  on/off %.3f (runs spread up to %.1f %%)" % (connect["ratio"], 100 * connect["spread"]),
                  "  while on: %.1f events per connect, %.0f events/s read by the two agents (%d lost), which used "
                  "%.2f CPU" % (connect["events_per_connect"], connect["events_per_s_on"], connect["lost_on"],
                                connect["agents_cpu_per_s_on"])]
    costs = report.get("cpu_us_per_event")
    if costs:
        lines += ["", "CPU per event in Python (this process, synthetic drop records), us: decode %.2f, Observer.add %.2f, "
                  "to_flow %.2f, json.dumps %.2f, json.loads %.2f; a flow's line as the flow server builds it "
                  "(Converter.line, cached parts) %.2f" % (
                      costs["decode_us"], costs["observer_add_us"], costs["to_flow_us"], costs["json_dumps_us"],
                      costs["json_loads_us"], costs["flow_line_us"])]
    lines += ["", "targets (reported, never enforced):"]
    for name, t in report["targets"].items():
        lines.append("  %s = %.3f (target %s): %s" % (name, t["value"], t["target"], t["verdict"]))
    lines.append("took %.0f s" % report["elapsed_seconds"])
    return "\n".join(lines)


def parse_rates(text: str) -> list:
    rates = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item == "max":
            rates.append(None)
            continue
        value = float(item)
        if value <= 0:
            raise ValueError(item)
        rates.append(value)
    if not rates:
        raise ValueError(text)
    return rates


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--role"]:
        return role_main(argv[1:])
    parser = argparse.ArgumentParser(description="The Hubble pipeline: flows/s it sustains end to end (datapath -> "
                                     "observer -> flow server -> relay -> client) and the connect rate with Hubble "
                                     "on vs off. Run as root.")
    parser.add_argument("--part", choices=("all", "flows", "connect"), default="all")
    parser.add_argument("--seconds", type=float, default=3, help="length of each window and connect run (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="connect: rounds, on and off once each (default 5)")
    parser.add_argument("--rates", default=DEFAULT_RATES, help="flows: offered events/s into node n1's ring, "
                        "comma-separated; max = as fast as the sender goes (default %s)" % DEFAULT_RATES)
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    try:
        rates = parse_rates(args.rates)
    except ValueError:
        parser.error("--rates: positive numbers or max, comma-separated")
    if args.seconds <= 0 or args.rounds < 1:
        parser.error("--seconds must be positive, --rounds at least 1")
    parts = {"flows", "connect"} if args.part == "all" else {args.part}
    log = base.progress(args.quiet)
    started = time.monotonic()
    cpus = base.default_cpus()
    report, rc = base.guarded("bench/hubble", lambda: run_bench(parts, rates, args.seconds, args.rounds, cpus, log))
    if rc:
        return rc
    report = dict({"benchmark": "hubble", "seconds": args.seconds, "rounds": args.rounds,
                   "rates": [r or "max" for r in rates], "cpus": {"sender_and_servers": cpus[0], "connect_client": cpus[1]},
                   "python": sys.version.split()[0]}, **report)
    report["targets"] = verdicts(report)
    report["elapsed_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2) if args.output == "json" else text_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
