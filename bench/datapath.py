#!/usr/bin/env python3
"""How much the Apiary datapath costs next to the kernel alone, measured in one run.

    .venv/bin/python bench/datapath.py [--seconds N] [--rounds N] [--modes native,tunnel] [-o json]

Run as root (Debian 12, with iperf3 and sockperf installed). Builds, in namespaces named
`apiary-b-<random>-…`, the two-node four-pod topology of tests/datapath/topology.py once per variant:

- floor:  the same devices, addresses and routes with no BPF at all (plain veth and kernel routing;
          in tunnel mode a plain kernel VXLAN device between the nodes);
- apiary: the datapath loaded by loader.apply, apiary_lxc and apiary_ipcache filled through
          apiary.bpf.maps, from_container attached on every lxc device.

Then measures from pod n1a to a pod on the same node (n1b) and on the other node (n2a): TCP
request/response latency (sockperf ping-pong, 64-byte messages, round trip p50 and p99) and TCP
throughput (iperf3, one stream). Runs of the floor and of apiary alternate (the order flips every
round: A B, B A, …) and each metric is the median over the rounds, because the machine is shared.

It prints ratios against the targets and never fails on a missed one: benchmarks report, tests
assert. Everything it made (namespaces, pins under /sys/fs/bpf/apiary-bench-<random>, servers) is
removed at the end, also on Ctrl-C or failure; the root network namespace is never touched.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (ROOT, os.path.join(ROOT, "runtime", "src")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from apiary import netns  # noqa: E402
from tests.datapath.topology import PODS, Topology  # noqa: E402

NS_PREFIX = "apiary-b-"
BPFFS = "/sys/fs/bpf"
PIN_PREFIX = "apiary-bench-"
BPFFS_PRELOADED = {"maps.debug", "progs.debug"}  # what a fresh bpffs shows (the kernel's bpf_preload)
VARIANTS = ("floor", "apiary")
MODES = ("native", "tunnel")
CLIENT = "n1a"
SERVERS = {"same-node": "n1b", "cross-node": "n2a"}
SOCKPERF_PORT, IPERF_PORT = 11111, 5201
MESSAGE_SIZE = 64
LATENCY_TARGET, THROUGHPUT_TARGET = 1.05, 0.95
TOOLS = ("iperf3", "sockperf", "ip", "nsenter", "ss", "make", "clang")


class BenchError(RuntimeError):
    """The bench could not run (a missing tool, a topology that does not forward): not a result."""


def progress(quiet: bool = False):
    """The benches' progress lines, on stderr (none with -q)."""
    def log(message: str) -> None:
        if not quiet:
            print("bench: " + message, file=sys.stderr, flush=True)
    return log


def close_stack(stack) -> None:
    """Undo everything a bench set up (a contextlib.ExitStack); a second Ctrl-C must not cut the
    clean-up short."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stack.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def guarded(name: str, work):
    """(work(), 0) under the benches' exit rules: (None, 130) when interrupted (Ctrl-C or SIGTERM; the
    work's own cleanup runs), (None, 1) when it could not run. Never a verdict on the numbers."""
    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        return work(), 0
    except KeyboardInterrupt:
        print("%s: interrupted; everything it made is removed" % name, file=sys.stderr)
        return None, 130
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print("%s: %s" % (name, exc), file=sys.stderr)
        return None, 1


# --- metrics ---------------------------------------------------------------------------------------
def metric_names(placement: str) -> list[tuple[str, str, str]]:
    """(metric, unit, better) for one placement; better is "lower" (latency) or "higher"."""
    return [("latency p50 %s" % placement, "us", "lower"), ("latency p99 %s" % placement, "us", "lower"),
            ("throughput %s" % placement, "Gbit/s", "higher")]


def default_cpus() -> tuple[int, int]:
    """(A, B): the last two CPUs this process may use (the same one twice on a one-CPU machine)."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[-2], cpus[-1]) if len(cpus) > 1 else (cpus[0], cpus[0])


def _in_pod(topo: Topology, pod: str, *cmd) -> list[str]:
    return ["nsenter", "--net=" + netns.path(topo.ns(pod))] + list(cmd)


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _on_cpu(cpu: int):
    """preexec_fn: run on `cpu`, and die with the bench even if it is killed outright (SIGKILL)."""
    def setup():
        os.sched_setaffinity(0, {cpu})
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return setup


def _client(topo: Topology, pod: str, cmd: list[str], seconds: float, cpu: int) -> str:
    proc = subprocess.run(_in_pod(topo, pod, *cmd), capture_output=True, text=True, timeout=seconds + 30,
                          preexec_fn=_on_cpu(cpu))
    if proc.returncode != 0:
        raise BenchError("%s in %s: exit %d\n%s%s" % (" ".join(cmd), topo.ns(pod), proc.returncode,
                                                       proc.stdout[-2000:], proc.stderr[-2000:]))
    return proc.stdout + proc.stderr


_PERCENTILE = re.compile(r"percentile\s+([\d.]+)\s*=\s*([\d.]+)")


def parse_sockperf(text: str) -> dict:
    """p50 and p99 round trip in microseconds from sockperf's summary (--full-rtt)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    found = {float(p): float(v) for p, v in _PERCENTILE.findall(text)}
    if 50.0 not in found or 99.0 not in found:
        raise BenchError("sockperf printed no percentiles:\n" + text[-2000:])
    return {"p50": found[50.0], "p99": found[99.0]}


def latency(topo: Topology, server: str, seconds: int, cpu: int) -> dict:
    """Round trip p50/p99; the client runs on the server's CPU (see CPUs in bench/README.md)."""
    out = _client(topo, CLIENT, ["sockperf", "ping-pong", "--tcp", "-i", PODS[server][1], "-p", str(SOCKPERF_PORT),
                                 "-t", str(seconds), "-m", str(MESSAGE_SIZE), "--full-rtt"], seconds, cpu)
    return parse_sockperf(out)


def throughput(topo: Topology, server: str, seconds: int, cpu: int) -> float:
    """Gbit/s received by the server over one TCP stream; the client runs on its own CPU."""
    out = _client(topo, CLIENT, ["iperf3", "-c", PODS[server][1], "-p", str(IPERF_PORT), "-t", str(seconds),
                                 "-P", "1", "-J"], seconds, cpu)
    try:
        return json.loads(out[out.index("{"):])["end"]["sum_received"]["bits_per_second"] / 1e9
    except (ValueError, KeyError) as exc:
        raise BenchError("iperf3 gave no result (%s):\n%s" % (exc, out[-2000:])) from None


def measure(topo: Topology, placement: str, kind: str, seconds: int, cpus: tuple[int, int]) -> dict:
    """{metric: value} for one run of one kind ("latency" or "throughput"); servers run on cpus[1]."""
    server = SERVERS[placement]
    if kind == "latency":
        rtt = latency(topo, server, seconds, cpus[1])
        return {"latency p50 %s" % placement: rtt["p50"], "latency p99 %s" % placement: rtt["p99"]}
    return {"throughput %s" % placement: throughput(topo, server, seconds, cpus[0])}


# --- one variant: its topology and servers -----------------------------------------------------------
class Variant:
    def __init__(self, mode: str, name: str, pin_root: str, state_dir: str):
        self.mode, self.name = mode, name
        self.topo = Topology(mode, pin_root, state_dir, prefix=NS_PREFIX, kernel_arp=(name == "floor"))
        self.servers: list[subprocess.Popen] = []

    @property
    def label(self) -> str:
        return "%s/%s" % (self.mode, self.name)

    def build(self, objects_dir: str, server_cpu: int) -> None:
        self.topo.build()
        if self.name == "floor":
            self.topo.load_floor()
        else:
            self.topo.load(objects_dir)
        for pod in SERVERS.values():
            for cmd in (["sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", str(SOCKPERF_PORT)],
                        ["iperf3", "-s", "-p", str(IPERF_PORT)]):
                self.servers.append(subprocess.Popen(_in_pod(self.topo, pod, *cmd), stdin=subprocess.DEVNULL,
                                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                     start_new_session=True, preexec_fn=_on_cpu(server_cpu)))
        for pod in SERVERS.values():
            self._wait_listening(pod)
            if not self.topo.ping(CLIENT, PODS[pod][1], count=1):
                raise BenchError("%s: %s cannot reach %s (%s)" % (self.label, CLIENT, pod, PODS[pod][1]))

    def _wait_listening(self, pod: str) -> None:
        deadline = time.monotonic() + 10
        while True:
            out = self.topo.run(pod, "ss", "-Hltn", check=False).stdout
            if ":%d " % SOCKPERF_PORT in out and ":%d " % IPERF_PORT in out:
                return
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.servers):
                raise BenchError("%s: sockperf or iperf3 server did not start in %s" % (self.label, pod))
            time.sleep(0.05)

    def teardown(self) -> None:
        for proc in self.servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.topo.teardown()


# --- the run ----------------------------------------------------------------------------------------
def _check_tools() -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root: the bench creates network namespaces and loads BPF programs")
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        raise BenchError("missing %s (Debian: apt-get install iperf3 sockperf; or scripts/bootstrap.sh)"
                         % ", ".join(missing))


def _is_bpffs(path: str) -> bool:
    return subprocess.run(["findmnt", "-n", "-o", "FSTYPE", path], capture_output=True,
                          text=True).stdout.strip() == "bpf"


@contextlib.contextmanager
def pin_folder():
    """/sys/fs/bpf/apiary-bench-<random>, removed with everything pinned in it. bpffs is mounted on
    /sys/fs/bpf first when it is not (as systemd does at boot) and unmounted after if left empty."""
    mounted_here = False
    if not _is_bpffs(BPFFS):
        subprocess.run(["mount", "-t", "bpf", "bpffs", BPFFS], check=True)
        mounted_here = True
    path = os.path.join(BPFFS, PIN_PREFIX + secrets.token_hex(4))
    os.mkdir(path, 0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if mounted_here and not set(os.listdir(BPFFS)) - BPFFS_PRELOADED:
            subprocess.run(["umount", BPFFS], check=False)


def build_objects(out_dir: str) -> str:
    """The programs of this checkout, built into a folder of the bench's own (never build/)."""
    proc = subprocess.run(["make", "-s", "-C", ROOT, "bpf", "BPF_OUT=%s" % out_dir], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError("make bpf failed:\n%s%s" % (proc.stdout, proc.stderr))
    return out_dir


def _median(values: list[float]) -> float:
    return statistics.median(values)


def summarize(mode: str, runs: dict) -> list[dict]:
    """One row per metric: medians of floor and apiary, the ratio apiary/floor and the target."""
    rows = []
    for placement in SERVERS:
        for metric, unit, better in metric_names(placement):
            floor, apiary = _median(runs["floor"][metric]), _median(runs["apiary"][metric])
            ratio = apiary / floor if floor > 0 else float("nan")
            if better == "lower":
                target, meets = "<= %.2f" % LATENCY_TARGET, ratio <= LATENCY_TARGET
            else:
                target, meets = ">= %.2f" % THROUGHPUT_TARGET, ratio >= THROUGHPUT_TARGET
            rows.append({"mode": mode, "metric": metric, "unit": unit, "floor": floor, "apiary": apiary,
                         "ratio": ratio, "target": target, "meets_target": bool(meets),
                         "runs": {"floor": runs["floor"][metric], "apiary": runs["apiary"][metric]}})
    return rows


def run_bench(modes: list[str], seconds: int, rounds: int, objects_dir: str | None, cpus: tuple[int, int],
              log) -> dict:
    _check_tools()
    started = time.monotonic()
    results, made = [], {"namespace_prefixes": [], "pin_dir": None}
    stack = contextlib.ExitStack()
    try:
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="apiary-bench-"))
        pin_root = made["pin_dir"] = stack.enter_context(pin_folder())
        objects_dir = objects_dir or build_objects(os.path.join(work, "bpf"))
        variants = {}
        for mode in modes:
            for name in VARIANTS:
                state_dir = os.path.join(work, "%s-%s" % (mode, name))
                os.makedirs(state_dir)
                variant = Variant(mode, name, pin_root, state_dir)
                stack.callback(variant.teardown)  # registered first: a half-built variant is removed too
                made["namespace_prefixes"].append(variant.topo.tag + "-")
                log("building %s (%s*)" % (variant.label, variant.topo.tag))
                variant.build(objects_dir, cpus[1])
                variants[(mode, name)] = variant
        for mode in modes:
            runs = {name: {} for name in VARIANTS}
            for rnd in range(rounds):
                order = VARIANTS if rnd % 2 == 0 else tuple(reversed(VARIANTS))
                for placement in SERVERS:
                    for kind in ("latency", "throughput"):
                        for name in order:
                            values = measure(variants[(mode, name)].topo, placement, kind, seconds, cpus)
                            for metric, value in values.items():
                                runs[name].setdefault(metric, []).append(value)
                log("%s: round %d/%d done" % (mode, rnd + 1, rounds))
            results += summarize(mode, runs)
    finally:
        close_stack(stack)
    return {"benchmark": "datapath", "seconds_per_run": seconds, "rounds": rounds, "modes": modes,
            "latency_tool": "sockperf ping-pong --tcp -m %d --full-rtt (round trip)" % MESSAGE_SIZE,
            "throughput_tool": "iperf3 -P 1 (TCP, one stream)", "client": CLIENT,
            "servers": dict(SERVERS), "cpus": {"servers": cpus[1], "latency_client": cpus[1],
                                               "throughput_client": cpus[0]},
            "targets": {"latency_ratio_max": LATENCY_TARGET,
                                                  "throughput_ratio_min": THROUGHPUT_TARGET},
            "elapsed_seconds": round(time.monotonic() - started, 1), "removed": made, "results": results}


def clean_leftovers() -> list[str]:
    """Remove what runs killed outright (SIGKILL) left: every apiary-b-* namespace and every
    /sys/fs/bpf/apiary-bench-* folder. Not while another bench runs: they would be its."""
    removed = []
    names = sorted(os.listdir(netns.NETNS_RUN_DIR)) if os.path.isdir(netns.NETNS_RUN_DIR) else []
    for name in names:
        if name.startswith(NS_PREFIX) and subprocess.run(["ip", "netns", "del", name]).returncode == 0:
            removed.append(netns.path(name))
    pins = sorted(os.listdir(BPFFS)) if _is_bpffs(BPFFS) else []
    for name in pins:
        if name.startswith(PIN_PREFIX):
            shutil.rmtree(os.path.join(BPFFS, name))
            removed.append(os.path.join(BPFFS, name))
    return removed


# --- output -----------------------------------------------------------------------------------------
def _fmt(value: float, unit: str) -> str:
    return "%.2f" % value if unit == "Gbit/s" else "%.1f" % value


def table(report: dict) -> str:
    header = ("mode", "metric", "unit", "floor", "apiary", "ratio", "target", "meets")
    rows = [header]
    for r in report["results"]:
        rows.append((r["mode"], r["metric"], r["unit"], _fmt(r["floor"], r["unit"]), _fmt(r["apiary"], r["unit"]),
                     "%.3f" % r["ratio"], r["target"], "yes" if r["meets_target"] else "NO"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {3, 4, 5}
    lines = ["  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             .rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = ("medians of %d rounds x %d s; latency: %s; throughput: %s; ratio = apiary/floor; "
             "targets: latency ratio <= %.2f, throughput ratio >= %.2f (reported, never enforced)"
             % (report["rounds"], report["seconds_per_run"], report["latency_tool"], report["throughput_tool"],
                LATENCY_TARGET, THROUGHPUT_TARGET))
    cpus = report["cpus"]
    notes += ("; CPUs: servers and latency client %d, throughput client %d"
              % (cpus["servers"], cpus["throughput_client"]))
    return "\n".join(lines) + "\n" + notes + "; took %.0f s" % report["elapsed_seconds"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Apiary datapath vs the kernel alone (floor): latency and "
                                     "throughput, same-node and cross-node. Run as root.")
    parser.add_argument("--seconds", type=int, default=2, help="length of each sockperf/iperf3 run (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="floor/apiary pairs per metric (default 3)")
    parser.add_argument("--modes", default="native,tunnel", help="routing modes, comma-separated "
                        "(default native,tunnel)")
    parser.add_argument("--objects", help="BPF objects folder (default: build bpf/ into a temporary folder)")
    parser.add_argument("--cpus", help="A,B: servers and the latency client run on CPU B, the throughput "
                        "client on CPU A (default: the last two CPUs)")
    parser.add_argument("--clean-leftovers", action="store_true", help="only remove the namespaces and pins of "
                        "bench runs that were killed outright (SIGKILL), then exit")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error("--modes: a comma-separated list of %s" % ", ".join(MODES))
    if args.seconds < 1 or args.rounds < 1:
        parser.error("--seconds and --rounds must be at least 1")
    try:
        cpus = tuple(int(c) for c in args.cpus.split(",")) if args.cpus else default_cpus()
    except ValueError:
        cpus = ()
    if len(cpus) != 2 or not set(cpus) <= os.sched_getaffinity(0):
        parser.error("--cpus: two CPUs this process may use, e.g. 0,1")

    if args.clean_leftovers:
        for path in clean_leftovers():
            print("removed " + path)
        return 0

    log = progress(args.quiet)
    report, rc = guarded("bench", lambda: run_bench(modes, args.seconds, args.rounds, args.objects, cpus, log))
    if rc:
        return rc
    print(json.dumps(report, indent=2) if args.output == "json" else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
