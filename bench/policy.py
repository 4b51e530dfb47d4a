#!/usr/bin/env python3
"""What policy enforcement costs, measured in one run: per packet, and from apply to enforcement.

    .venv/bin/python bench/policy.py [--part all|per-packet|apply] [-o json] [sizes, see --help]

Run as root on Debian 12 (scripts/bootstrap.sh installs what it needs).

Per packet (sockperf TCP ping-pong, 64 B, p50/p99 round trip; variants alternate each round and each
figure is the median over the rounds). Three variants of bench/datapath.py's two-node topology
(native routing), built side by side in namespaces `apiary-b-<random>-...`:

- no-policy: the Apiary datapath with nothing enforced (each endpoint's allow-all entry);
- apiary:    the same, with the servers' ingress enforced by N apiary_policy entries (default 1,000:
             other identities on other ports, and the one allowing the client on the sockperf port);
- calico:    no BPF; the servers' node filters forwarded traffic the way Calico does: a chain per
             workload jumped to from FORWARD by interface, conntrack accepting established packets
             first, then N rules matching the source against ipsets, the allowing rule last.
Ratios apiary/no-policy (target <= 1.05) and calico/no-policy.

Apply -> enforced, on the lab (it RESETS the lab before and after: do not run it while you use the
lab): cluster.yml, then E endpoints (default 1,000: Deployments of 10 pods, app0..appK, spread over
the three nodes) and P policies (default 500: each selects one app and allows another app on a TCP
port), applied before the measurement. A probe client pod (node2) sends a UDP datagram every
millisecond to a probe target pod (node3, one of app1's selected endpoints, so its ingress is
enforced and the probe is denied); the target's receiver logs each datagram's send time. Then, C
times (default 20): write a policy allowing the probe to the store (as `apiary lab apply` does) and
take the send time of the first datagram that gets through; delete it and take the send time of
the first datagram that no longer does. Latency = that send time - the time of the store write
(resolution: the probe interval). p50/p99 per direction; target p99 <= 100 ms.

Benchmarks report, tests assert: a missed target is printed, never a failure. Everything it made is
removed at the end, also on failure; the root network namespace is never touched.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import datapath as base  # noqa: E402  (bench/datapath.py: topology variants, sockperf, pins)

from apiary import netns  # noqa: E402
from apiary.bpf import maps  # noqa: E402
from apiary.lab import kubelet, nodes as lab_nodes, store as lab_store  # noqa: E402

VARIANTS = ("no-policy", "apiary", "calico")
TCP = 6
TARGET = 1.05


def _lxc(pod):
    return int(base.PODS[pod][1].rsplit(".", 1)[1])


def enforce_apiary(topo, rules: int) -> None:
    """Each server's ingress: `rules` entries, the last allowing the client's identity on sockperf's port."""
    client_identity = base.PODS[base.CLIENT][3]
    rng = random.Random(4)
    for server in base.SERVERS.values():
        node = base.PODS[server][0]
        with maps.PolicyMap(topo.pin_dir[node]) as policy:
            for _ in range(rules - 1):
                policy.set(_lxc(server), rng.randrange(256, 65535), False, TCP, rng.randrange(1, 65535), 16, False)
            policy.set(_lxc(server), client_identity, False, TCP, base.SOCKPERF_PORT, 16, False)
            policy.delete(_lxc(server), 0, False, 0, 0, 0)


def enforce_calico(topo, rules: int) -> None:
    """iptables-restore into each server's node: Calico's shape (cali-FORWARD -> cali-tw-<if>)."""
    rng = random.Random(4)
    for server in base.SERVERS.values():
        node = base.PODS[server][0]
        sets, lines = [], ["*filter", ":cali-FORWARD - [0:0]", ":cali-tw-%s - [0:0]" % server,
                           "-A FORWARD -j cali-FORWARD",
                           "-A cali-FORWARD -o %s -j cali-tw-%s" % (topo.lxc[server], server),
                           "-A cali-tw-%s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" % server,
                           "-A cali-tw-%s -m conntrack --ctstate INVALID -j DROP" % server]
        for i in range(rules - 1):
            name = "cali40s%d" % i
            sets.append("create %s hash:net family inet\nadd %s 10.250.%d.%d/32" % (name, name, i // 250, i % 250 + 1))
            lines.append("-A cali-tw-%s -p tcp -m set --match-set %s src --dport %d -j ACCEPT"
                         % (server, name, rng.randrange(1, 65535)))
        sets.append("create cali40client hash:net family inet\nadd cali40client %s/32" % base.PODS[base.CLIENT][1])
        lines += ["-A cali-tw-%s -p tcp -m set --match-set cali40client src --dport %d -j ACCEPT"
                  % (server, base.SOCKPERF_PORT), "-A cali-tw-%s -j DROP" % server, "COMMIT", ""]
        subprocess.run(["ip", "netns", "exec", topo.ns(node), "ipset", "restore"], input="\n".join(sets) + "\n",
                            text=True, check=True)
        subprocess.run(["ip", "netns", "exec", topo.ns(node), "iptables-restore", "--noflush"],
                            input="\n".join(lines), text=True, check=True)


def per_packet(seconds: int, rounds: int, rules: int, cpus, log) -> dict:
    base._check_tools()
    stack = contextlib.ExitStack()
    results = {}
    try:
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="apiary-bench-"))
        pin_root = stack.enter_context(base.pin_folder())
        objects_dir = base.build_objects(os.path.join(work, "bpf"))
        variants = {}
        for name in VARIANTS:
            state_dir = os.path.join(work, name)
            os.makedirs(state_dir)
            variant = base.Variant("native", "floor" if name == "calico" else "apiary", pin_root, state_dir)
            stack.callback(variant.teardown)
            log("building %s (%s*)" % (name, variant.topo.tag))
            variant.build(objects_dir, cpus[1])
            if name == "apiary":
                enforce_apiary(variant.topo, rules)
            elif name == "calico":
                enforce_calico(variant.topo, rules)
            for server in base.SERVERS.values():  # the allowed path still works
                if variant.topo.ping(base.CLIENT, base.PODS[server][1]) != (name == "no-policy"):
                    raise base.BenchError("%s: ping to %s should %s" % (name, server, "pass" if name == "no-policy"
                                                                          else "be dropped (only TCP is allowed)"))
            variants[name] = variant
        runs = {name: {} for name in VARIANTS}
        for rnd in range(rounds):
            order = VARIANTS if rnd % 2 == 0 else tuple(reversed(VARIANTS))
            for placement, server in base.SERVERS.items():
                for name in order:
                    rtt = base.latency(variants[name].topo, server, seconds, cpus[1])
                    for pct in ("p50", "p99"):
                        runs[name].setdefault("%s %s" % (placement, pct), []).append(rtt[pct])
            log("round %d/%d done" % (rnd + 1, rounds))
        for metric in runs["no-policy"]:
            med = {name: statistics.median(runs[name][metric]) for name in VARIANTS}
            results[metric] = dict(med, apiary_ratio=med["apiary"] / med["no-policy"],
                                   calico_ratio=med["calico"] / med["no-policy"],
                                   meets_target=med["apiary"] / med["no-policy"] <= TARGET)
    finally:
        stack.close()
    return {"rules": rules, "seconds_per_run": seconds, "rounds": rounds,
            "unit": "microseconds round trip (sockperf ping-pong --tcp -m 64)", "target_apiary_ratio": TARGET,
            "results": results}


# --- apply -> enforced on the lab ------------------------------------------------------------------
LAB_NS = "bench-policy"
PROBE_PORT = 9999
PROBE_INTERVAL = 0.001
APPLY_TARGET_MS = 100.0
VENV_BIN = os.path.join(base.ROOT, ".venv", "bin")
# Its pods are written through the lab's imitation store (`apiary lab apply`, pods without containers):
# the agents read that store, not the API (moving the benches to the API is left of issue 13).
STORE_OBJECTS = ("-e", "apiary_kubernetes_objects=false")
APIARY = "/usr/local/bin/apiary"  # installed on the nodes by cluster.yml (the lab shares this filesystem)
SENDER = """
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
interval, seq, deadline = float(sys.argv[3]), 0, time.monotonic()
while True:
    s.sendto(struct.pack("!QQ", seq, time.monotonic_ns()), (sys.argv[1], int(sys.argv[2])))
    seq += 1
    deadline += interval
    time.sleep(max(0.0, deadline - time.monotonic()))
"""
RECEIVER = """
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
out = open(sys.argv[2], "w", buffering=1)
while True:
    seq, sent = struct.unpack("!QQ", s.recv(64)[:16])
    out.write("%d %d\\n" % (seq, sent))
"""


def _playbook(name: str, *extra) -> None:
    proc = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), "-i", "inventory/lab", name, *extra],
                               cwd=base.ROOT, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise base.BenchError("%s failed:\n%s" % (name, proc.stdout[-3000:]))


def _lab_apply(path: str) -> None:
    proc = subprocess.run([APIARY, "lab", "apply", "-f", path],
                               capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise base.BenchError("apiary lab apply -f %s: %s%s" % (path, proc.stdout[-2000:], proc.stderr[-2000:]))


def _app(i: int) -> str:
    return "app%d" % i


def lab_objects(endpoints: int, policies: int, nodes: list) -> tuple[list, list]:
    """(policies, workloads) for the lab: the probe pods plus Deployments of 10 pods (app0, app1, ...),
    each Deployment pinned to a node in turn; policy i selects app (i mod apps) and allows ingress
    from a random other app on one TCP port."""
    rng = random.Random(7)
    fillers = endpoints - 2
    apps = max(2, (fillers + 9) // 10)
    meta = lambda name: {"name": name, "namespace": LAB_NS}  # noqa: E731
    rules = [{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": meta("p%d" % i),
              "spec": {"endpointSelector": {"matchLabels": {"app": _app(i % apps)}},
                       "ingress": [{"fromEndpoints": [{"matchLabels": {"app": _app(rng.randrange(apps))}}],
                                    "toPorts": [{"ports": [{"port": str(1000 + i), "protocol": "TCP"}]}]}]}}
             for i in range(policies)]
    pause = {"name": "c", "image": "busybox", "command": ["sleep", "1000000"]}
    work = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LAB_NS}}]
    for name, app, node in (("probe-client", _app(0), nodes[1]), ("probe-target", _app(1), nodes[2])):
        work.append({"apiVersion": "v1", "kind": "Pod", "metadata": dict(meta(name), labels={"app": app, "probe": name}),
                     "spec": {"nodeName": node, "containers": [pause]}})
    for i in range(apps):
        replicas = fillers // apps + (1 if i < fillers % apps else 0)
        work.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(_app(i)),
                     "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": _app(i)}},
                              "template": {"metadata": {"labels": {"app": _app(i)}},
                                           "spec": {"nodeName": nodes[i % len(nodes)], "containers": [pause]}}}})
    return rules, work


def probe_policy() -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "allow-probe", "namespace": LAB_NS},
            "spec": {"endpointSelector": {"matchLabels": {"probe": "probe-target"}},
                     "ingress": [{"fromEndpoints": [{"matchLabels": {"probe": "probe-client"}}],
                                  "toPorts": [{"ports": [{"port": str(PROBE_PORT), "protocol": "UDP"}]}]}]}}


def _received(path: str) -> list:
    with open(path) as handle:
        return [tuple(map(int, line.split())) for line in handle.read().splitlines() if line.count(" ") == 1]


def _wait(path: str, done, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = done(_received(path))
        if found is not None:
            return found
        time.sleep(0.02)
    raise base.BenchError("the probe never showed the new verdict within %.0f s" % timeout)


def _store(etcd_endpoints: list, etcd_tls: dict | None = None):
    from apiary.store.etcd import EtcdClient
    return lab_store.ObjectStore(EtcdClient(etcd_endpoints, **(etcd_tls or {})))


def _pods(etcd_endpoints: list, etcd_tls: dict | None = None) -> list:
    """In the store's node (a forked child): the bench's pods."""
    return _store(etcd_endpoints, etcd_tls).list("Pod", LAB_NS)


def _cycles(etcd_endpoints: list, received: str, cycles: int, etcd_tls: dict | None = None) -> dict:
    """In the store's node (a forked child): add and remove the probe policy `cycles` times."""
    from apiary.policy import check

    store = _store(etcd_endpoints, etcd_tls)
    obj, problems = check(probe_policy(), LAB_NS)
    if problems:
        raise base.BenchError("probe policy: %s" % problems)
    interval_ns = int(PROBE_INTERVAL * 1e9)
    added, removed = [], []
    for _ in range(cycles):
        time.sleep(0.3)
        if any(sent >= time.monotonic_ns() - 200_000_000 for _, sent in _received(received)):
            raise base.BenchError("the probe gets through before the policy allows it")
        t0 = time.monotonic_ns()
        store.apply(obj)
        first = _wait(received, lambda rows: min((s for _, s in rows if s >= t0), default=None))
        added.append((first - t0) / 1e6)
        time.sleep(0.3)
        t1 = time.monotonic_ns()
        store.delete(obj["kind"], LAB_NS, obj["metadata"]["name"])

        def settled(rows):
            # Nothing sent in the last 300 ms got through: the last datagram that did is final.
            latest = max((s for _, s in rows), default=0)
            return latest if time.monotonic_ns() - latest > 300_000_000 else None
        # The first datagram dropped was sent one interval after the last one that got through.
        removed.append(max(0.0, (_wait(received, settled) + interval_ns - t1) / 1e6))
    return {"add": added, "remove": removed}


def _percentile(values: list, pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100.0 * (len(ordered) - 1))))]


def apply_to_enforced(endpoints: int, policies: int, cycles: int, log) -> dict:
    if endpoints < 12:
        raise base.BenchError("--endpoints: at least 12")
    per_node = endpoints // 3 + 2
    mask = 24 if per_node <= 250 else 23 if per_node <= 500 else 22
    stack = contextlib.ExitStack()
    try:
        log("resetting the lab, then cluster.yml (pod CIDR mask /%d)" % mask)
        _playbook("reset.yml")
        stack.callback(_playbook, "reset.yml")
        _playbook("cluster.yml", "-e", "apiary_cluster_pool_ipv4_mask_size=%d" % mask, *STORE_OBJECTS)
        lab = lab_nodes.load_lab(lab_nodes.DEFAULT_LAB_ROOT)
        names = [n["name"] for n in lab["nodes"]]
        rules, work = lab_objects(endpoints, policies, names)
        work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="apiary-bench-"))
        for name, docs in (("policies", [work[0]] + rules), ("workloads", work[1:])):
            path = os.path.join(work_dir, name + ".json")
            with open(path, "w") as handle:
                handle.write("\n---\n".join(json.dumps(doc) for doc in docs))  # JSON documents are YAML
            started = time.monotonic()
            _lab_apply(path)
            log("%d %s applied in %.0f s" % (len(docs), name, time.monotonic() - started))
        store_netns = lab_store.store_node(lab)["netns"]
        pods = {p["metadata"]["name"]: p for p in netns.call_in(store_netns, _pods, lab["etcd_endpoints"], lab.get("etcd_tls"))}
        running = sum(1 for p in pods.values() if (p.get("status") or {}).get("phase") == "Running")
        if running != endpoints:
            raise base.BenchError("%d of %d pods are running" % (running, endpoints))
        received = os.path.join(work_dir, "received")
        open(received, "w").close()
        scripts = {}
        for name, text in (("sender", SENDER), ("receiver", RECEIVER)):
            scripts[name] = os.path.join(work_dir, name + ".py")
            with open(scripts[name], "w") as handle:
                handle.write(text)
        in_pod = lambda pod: ["nsenter", "--net=" + netns.path(kubelet.pod_netns(pods[pod]["metadata"]["uid"]))]  # noqa: E731
        for cmd in (in_pod("probe-target") + [sys.executable, scripts["receiver"], str(PROBE_PORT), received],
                    in_pod("probe-client") + [sys.executable, scripts["sender"], pods["probe-target"]["status"]["podIP"],
                                              str(PROBE_PORT), str(PROBE_INTERVAL)]):
            proc = subprocess.Popen(cmd, preexec_fn=base._on_cpu(base.default_cpus()[0]))
            stack.callback(proc.wait)
            stack.callback(proc.kill)
        log("%d endpoints, %d policies: %d add/remove cycles" % (endpoints, policies, cycles))
        samples = netns.call_in(store_netns, _cycles, lab["etcd_endpoints"], received, cycles, lab.get("etcd_tls"))
    finally:
        stack.close()
    results = {}
    for change, values in samples.items():
        results[change] = {"p50": _percentile(values, 50), "p99": _percentile(values, 99), "max": max(values),
                           "samples": len(values), "meets_target": _percentile(values, 99) <= APPLY_TARGET_MS}
    return {"endpoints": endpoints, "policies": policies, "nodes": 3, "probe_interval_ms": PROBE_INTERVAL * 1000,
            "unit": "milliseconds from the store write to the first packet with the new verdict",
            "target_p99_ms": APPLY_TARGET_MS, "results": results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Policy enforcement: per-packet cost (Apiary with N rules vs no "
                                     "policy vs Calico's iptables+ipset shape) and apply -> enforced on the lab. "
                                     "Run as root.")
    parser.add_argument("--part", choices=("all", "per-packet", "apply"), default="all")
    parser.add_argument("--seconds", type=int, default=2, help="per-packet: seconds per run")
    parser.add_argument("--rounds", type=int, default=5, help="per-packet: rounds (each variant once per round)")
    parser.add_argument("--rules", type=int, default=1000, help="per-packet: policy entries of each server")
    parser.add_argument("--endpoints", type=int, default=1000, help="apply: pods over the three lab nodes")
    parser.add_argument("--policies", type=int, default=500, help="apply: policies in the cluster")
    parser.add_argument("--cycles", type=int, default=20, help="apply: add/remove cycles of the probe policy")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    log = base.progress(args.quiet)
    report = {"benchmark": "policy"}

    def work():
        if args.part in ("all", "per-packet"):
            report["per_packet"] = per_packet(args.seconds, args.rounds, args.rules, base.default_cpus(), log)
        if args.part in ("all", "apply"):
            report["apply_to_enforced"] = apply_to_enforced(args.endpoints, args.policies, args.cycles, log)

    _, rc = base.guarded("bench/policy", work)
    if rc:
        return rc
    if args.output == "json":
        print(json.dumps(report, indent=2))
        return 0
    if "per_packet" in report:
        print("per packet, %d rules (round trip, us)" % args.rules)
        print("%-16s %10s %10s %10s %12s %12s" % ("metric", "no-policy", "apiary", "calico", "apiary/none",
                                                  "calico/none"))
        for metric, row in report["per_packet"]["results"].items():
            print("%-16s %10.1f %10.1f %10.1f %12.3f %12.3f%s" % (
                metric, row["no-policy"], row["apiary"], row["calico"], row["apiary_ratio"], row["calico_ratio"],
                "" if row["meets_target"] else "  (misses <= %.2f)" % TARGET))
    if "apply_to_enforced" in report:
        part = report["apply_to_enforced"]
        print("apply -> enforced, %d endpoints over 3 nodes, %d policies (ms, %d samples each)"
              % (part["endpoints"], part["policies"], args.cycles))
        print("%-16s %10s %10s %10s" % ("change", "p50", "p99", "max"))
        for change, row in part["results"].items():
            print("%-16s %10.1f %10.1f %10.1f%s" % ("%s policy" % change, row["p50"], row["p99"], row["max"],
                                                   "" if row["meets_target"] else "  (misses p99 <= %.0f)"
                                                   % APPLY_TARGET_MS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
