#!/usr/bin/env python3
"""Services at scale: kube-proxy's iptables mode against Apiary's socket load balancer, in one run.

    .venv/bin/python bench/services.py [--part all|connect|program|end-to-end] [--sizes 100,1000,10000]
                                       [--seconds N] [--rounds N] [--changes K] [-o json]

Run as root on Debian 12 (scripts/bootstrap.sh installs what it needs: clang, make, iptables).

For each size N (services of 4 backends each, ClusterIPs from 10.233.0.0/18, backends on both nodes),
bench/datapath.py's two-node topology (native routing) is built twice, in namespaces `apiary-b-<random>-...`:

- kube-proxy: no BPF (plain veth, kernel routing); the client's node holds what kube-proxy writes
              (apiary.kubeproxy.node_restore_text, loaded with iptables-restore), so a pod's new
              connection goes PREROUTING -> KUBE-SERVICES -> KUBE-SVC-* (statistic random) -> KUBE-SEP-* DNAT;
- apiary:     the datapath (loader.apply) with the socket programs attached to a cgroup the bench
              creates under the cgroup2 mount; the client runs in that cgroup and in the pod's netns;
              services written with apiary.datapath.lb.LoadBalancer.upsert.

The measured service is the LAST one in KUBE-SERVICES order: the worst case of iptables' linear match.

connect:  a C client (built here with clang) does connect()+close (SO_LINGER 0: no TIME_WAIT) for
          --seconds to the service: connects/s, connect() latency p50/p99. Variants alternate each
          round; medians over --rounds. Target: Apiary's rate at the largest size >= 98 % of the smallest.
program:  one service's endpoints change with N present: `iptables-restore --noflush` of kube-proxy's
          partial sync (a fresh process each time, as syncProxyRules) vs LoadBalancer.upsert of that
          frontend (in process). p50/p99 over --changes.
end-to-end (the lab; it RESETS the lab before and after): N Services written straight into the lab's
          etcd, then K changes of one Service's port, each timed from just before the store write until
          node1's apiary_lb4_services holds the new frontend. Target p99 <= 10 ms at 10,000.

Benchmarks report, tests assert: a missed target is printed, never a failure. Everything it made
(namespaces, pins, the cgroup, its processes, the lab) is removed at the end, also on failure or Ctrl-C;
the root network namespace is never touched.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import datapath as base  # noqa: E402  (bench/datapath.py: topology variants, pins, CPUs)
import policy  # noqa: E402  (bench/policy.py: the lab's playbooks, percentiles)

from apiary import kubeproxy, netns  # noqa: E402
from apiary.bpf import maps  # noqa: E402
from apiary.datapath import lb, loader  # noqa: E402
from apiary.lab import nodes as lab_nodes, store as lab_store  # noqa: E402
from tests.datapath.topology import UNDERLAY  # noqa: E402
from tests.helpers.cgroups import scratch_cgroups  # noqa: E402

VARIANTS = ("kube-proxy", "apiary")
TOOLS = ("ip", "nsenter", "make", "clang", "iptables-restore")
SERVICE_RANGE = ipaddress.ip_network("10.233.0.0/18")
SERVICE_PORT = 80
# Backend servers (pod, port): the first four serve every service; a change swaps the fourth for the fifth.
SERVERS = (("n1b", 8080), ("n1b", 8081), ("n2a", 8080), ("n2b", 8080), ("n2b", 8081))
SET_A, SET_B = SERVERS[:4], SERVERS[:3] + SERVERS[4:]
NAMESPACE = "bench"
# Kubespray's kube_pods_subnet: kube-proxy's --cluster-cidr (traffic from outside it is masqueraded).
PROXY = kubeproxy.ProxyConfig(cluster_cidr="10.233.64.0/18")
RATE_TARGET, END_TO_END_TARGET_MS = 0.98, 10.0

CONNRATE_C = r"""
/* connrate serve PORT: accept and close, forever.
 * connrate connect IP PORT SECONDS: connect()+close (SO_LINGER 0: RST, no TIME_WAIT) for SECONDS;
 * prints {"connects", "failed", "seconds", "p50_us", "p99_us"}. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    struct sockaddr_in addr = {.sin_family = AF_INET};
    if (argc == 3 && !strcmp(argv[1], "serve")) {
        int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        addr.sin_port = htons(atoi(argv[2]));
        if (bind(fd, (struct sockaddr *)&addr, sizeof addr) || listen(fd, 4096)) { perror("listen"); return 1; }
        for (;;) {
            int c = accept(fd, NULL, NULL);
            if (c >= 0) close(c);
        }
    }
    if (argc != 5 || strcmp(argv[1], "connect")) {
        fprintf(stderr, "usage: connrate serve PORT | connrate connect IP PORT SECONDS\n");
        return 2;
    }
    inet_pton(AF_INET, argv[2], &addr.sin_addr);
    addr.sin_port = htons(atoi(argv[3]));
    size_t n = 0, cap = 1 << 16, failed = 0;
    double *lat = malloc(cap * sizeof *lat);
    struct linger lin = {1, 0};
    double start = now(), end = start + atof(argv[4]), t = start;
    while (t < end) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lin, sizeof lin);
        double t0 = now();
        int rc = connect(fd, (struct sockaddr *)&addr, sizeof addr);
        t = now();
        close(fd);
        if (rc) { failed++; continue; }
        if (n == cap) lat = realloc(lat, (cap *= 2) * sizeof *lat);
        lat[n++] = (t - t0) * 1e6;
    }
    qsort(lat, n, sizeof *lat, cmp);
    printf("{\"connects\": %zu, \"failed\": %zu, \"seconds\": %.6f, \"p50_us\": %.3f, \"p99_us\": %.3f}\n",
           n, failed, t - start, n ? lat[n / 2] : 0.0, n ? lat[(size_t)(n * 0.99)] : 0.0);
    return 0;
}
"""


def build_connrate(work: str) -> str:
    source, binary = os.path.join(work, "connrate.c"), os.path.join(work, "connrate")
    with open(source, "w") as handle:
        handle.write(CONNRATE_C)
    proc = subprocess.run(["clang", "-O2", "-Wall", "-o", binary, source], capture_output=True, text=True)
    if proc.returncode != 0:
        raise base.BenchError("clang connrate.c:\n" + proc.stderr)
    return binary


# --- the services -----------------------------------------------------------------------------------
def cluster_ip(index: int, first: int = 1) -> str:
    return str(SERVICE_RANGE[first + index])


def service_name(index: int) -> str:
    return "svc-%05d" % index  # zero-padded: KUBE-SERVICES order (by name) is index order


def kube_ports(count: int, last_endpoints=SET_A) -> list:
    """kube-proxy's view of `count` services; the last one's endpoints are `last_endpoints`."""
    def endpoints(servers):
        return tuple(kubeproxy.Endpoint(base.PODS[pod][1], port, local=base.PODS[pod][0] == "n1")
                     for pod, port in servers)
    common, last = endpoints(SET_A), endpoints(last_endpoints)
    return [kubeproxy.ServicePort(NAMESPACE, service_name(i), cluster_ip(i), SERVICE_PORT,
                                  endpoints=last if i == count - 1 else common) for i in range(count)]


def lb_backends(servers) -> list:
    return [lb.Backend(SERVERS.index((pod, port)) + 1, base.PODS[pod][1], port, local=base.PODS[pod][0] == "n1")
            for pod, port in servers]


# --- the variants -----------------------------------------------------------------------------------
@contextlib.contextmanager
def bench_cgroup():
    """apiary-bench-<random> under the cgroup2 mount (never its root), removed at the end with
    whatever still runs in it (only the bench's own clients)."""
    with scratch_cgroups(base.PIN_PREFIX) as (path, _):
        yield path


def _in_cgroup_on_cpu(cgroup: str | None, cpu: int):
    """preexec_fn: into the bench's cgroup (when given), then pinned and dying with the bench."""
    pinned = base._on_cpu(cpu)

    def setup():
        if cgroup:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
                procs.write(str(os.getpid()))
        pinned()
    return setup


class ServiceVariant(base.Variant):
    """One variant: bench/datapath.py's topology (native routing) with connrate servers on the backends."""

    def __init__(self, name: str, pin_root: str, state_dir: str, cgroup: str | None):
        super().__init__("native", "floor" if name == "kube-proxy" else "apiary", pin_root, state_dir)
        self.variant, self.cgroup, self.balancer, self.loaded = name, cgroup, None, 0

    @property
    def label(self) -> str:
        return self.variant

    def build(self, objects_dir: str, connrate: str, server_cpu: int) -> None:
        self.topo.build()
        if self.cgroup is None:
            self.topo.load_floor()
        else:
            self.topo.load(objects_dir)
            # The client's node gets the socket programs, on the bench's cgroup only.
            self.topo.in_node("n1", loader.apply, objects_dir, self.topo.pin_dir["n1"], "eth0", "native", False,
                              self.topo.state_file("n1"), self.cgroup)
            self.balancer = lb.LoadBalancer(self.topo.pin_dir["n1"], node_address=UNDERLAY["n1"])
        for pod, port in SERVERS:
            self.servers.append(subprocess.Popen(base._in_pod(self.topo, pod, connrate, "serve", str(port)),
                                                 stdin=subprocess.DEVNULL, start_new_session=True,
                                                 preexec_fn=base._on_cpu(server_cpu)))
        deadline = time.monotonic() + 10
        for pod, port in SERVERS:
            while ":%d " % port not in self.topo.run(pod, "ss", "-Hltn", check=False).stdout:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.servers):
                    raise base.BenchError("%s: connrate server did not start in %s" % (self.label, pod))
                time.sleep(0.05)

    def program(self, count: int) -> float:
        """Make the client's node hold `count` services; seconds it took (kube-proxy: one full restore)."""
        started = time.monotonic()
        if self.balancer is None:
            self.restore(kubeproxy.node_restore_text(kube_ports(count), PROXY), noflush=False)
        else:
            backends = lb_backends(SET_A)
            for i in range(self.loaded, count):  # sizes only grow: add the missing ones
                self.balancer.upsert(i + 1, lb.Frontend(cluster_ip(i), SERVICE_PORT), backends)
            self.loaded = count
        return time.monotonic() - started

    def restore(self, text: str, noflush: bool = True) -> float:
        """iptables-restore in the client's node (a fresh process, as kube-proxy runs it); seconds."""
        ns_path = netns.path(self.topo.ns("n1"))
        started = time.monotonic()
        proc = subprocess.run(["iptables-restore"] + (["--noflush"] if noflush else []), input=text, text=True,
                              capture_output=True, preexec_fn=lambda: _setns(ns_path))
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            raise base.BenchError("%s: iptables-restore: %s" % (self.label, proc.stderr[-2000:]))
        return elapsed

    def connect(self, connrate: str, address: str, seconds: float, cpu: int) -> dict:
        proc = subprocess.run(base._in_pod(self.topo, base.CLIENT, connrate, "connect", address, str(SERVICE_PORT),
                                           str(seconds)), capture_output=True, text=True, timeout=seconds + 30,
                              preexec_fn=_in_cgroup_on_cpu(self.cgroup, cpu))
        if proc.returncode != 0:
            raise base.BenchError("%s: connrate: %s" % (self.label, proc.stderr[-2000:]))
        out = json.loads(proc.stdout)
        if out["connects"] == 0 or out["failed"] > out["connects"] // 100:
            raise base.BenchError("%s: %d of %d connects to %s:%d failed" % (
                self.label, out["failed"], out["connects"] + out["failed"], address, SERVICE_PORT))
        out["rate"] = out["connects"] / out["seconds"]
        return out

    def teardown(self) -> None:
        if self.balancer is not None:
            self.balancer.close()
        if self.cgroup is not None:
            with contextlib.suppress(OSError, loader.UserError):
                loader.detach_cgroup(self.topo.pin_dir["n1"], self.cgroup)
        super().teardown()


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(path: str) -> None:
    """preexec_fn: into a bench namespace without an nsenter process in between (its start is not timed)."""
    fd = os.open(path, os.O_RDONLY)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        os._exit(126)
    os.close(fd)


def _check_tools() -> None:
    if os.geteuid() != 0:
        raise base.BenchError("run as root: the bench creates network namespaces, a cgroup and loads BPF programs")
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        raise base.BenchError("missing %s (scripts/bootstrap.sh installs them)" % ", ".join(missing))


def _pcts(values: list) -> dict:
    return {"p50": policy._percentile(values, 50), "p99": policy._percentile(values, 99), "samples": len(values)}


def in_namespaces(sizes: list, seconds: float, rounds: int, changes: int, parts: set, cpus, log) -> dict:
    """The connect and program parts: {size: {...}} plus what was made and removed."""
    _check_tools()
    stack = contextlib.ExitStack()
    results, made = {}, {"namespace_prefixes": [], "pin_dir": None, "cgroup": None}
    try:
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="apiary-bench-"))
        made["pin_dir"] = pin_root = stack.enter_context(base.pin_folder())
        made["cgroup"] = cgroup = stack.enter_context(bench_cgroup())
        objects_dir = base.build_objects(os.path.join(work, "bpf"))
        connrate = build_connrate(work)
        variants = {}
        for name in VARIANTS:
            state_dir = os.path.join(work, name)
            os.makedirs(state_dir)
            variant = ServiceVariant(name, pin_root, state_dir, cgroup if name == "apiary" else None)
            stack.callback(variant.teardown)
            made["namespace_prefixes"].append(variant.topo.tag + "-")
            log("building %s (%s*)" % (name, variant.topo.tag))
            variant.build(objects_dir, connrate, cpus[0])
            variants[name] = variant
        for size in sizes:
            row = results[size] = {"measured_service": "%s/%s %s:%d" % (NAMESPACE, service_name(size - 1),
                                                                        cluster_ip(size - 1), SERVICE_PORT)}
            row["load_seconds"] = {name: variants[name].program(size) for name in VARIANTS}
            log("%d services loaded (kube-proxy full restore %.1f s, apiary %.1f s)"
                % (size, row["load_seconds"]["kube-proxy"], row["load_seconds"]["apiary"]))
            address = cluster_ip(size - 1)
            if "connect" in parts:
                runs = {name: [] for name in VARIANTS}
                for rnd in range(rounds):
                    for name in (VARIANTS if rnd % 2 == 0 else tuple(reversed(VARIANTS))):
                        runs[name].append(variants[name].connect(connrate, address, seconds, cpus[1]))
                row["connect"] = {name: {key: statistics.median(r[key] for r in runs[name])
                                         for key in ("rate", "p50_us", "p99_us")} for name in VARIANTS}
                for name in VARIANTS:
                    row["connect"][name]["runs"] = [round(r["rate"]) for r in runs[name]]
                kp, ap = row["connect"]["kube-proxy"], row["connect"]["apiary"]
                row["connect"]["ratio"] = {"rate": ap["rate"] / kp["rate"], "p50_us": ap["p50_us"] / kp["p50_us"],
                                           "p99_us": ap["p99_us"] / kp["p99_us"]}
                log("%d services: connects/s kube-proxy %.0f, apiary %.0f" % (size, kp["rate"], ap["rate"]))
            if "program" in parts:
                row["program_ms"] = program_one_change(variants, size, changes)
                log("%d services: one change kube-proxy p50 %.2f ms, apiary p50 %.3f ms" % (
                    size, row["program_ms"]["kube-proxy"]["p50"], row["program_ms"]["apiary"]["p50"]))
    finally:
        base.close_stack(stack)
    return {"sizes": results, "removed": made}


def program_one_change(variants: dict, size: int, changes: int) -> dict:
    """The last service's endpoints swap between SET_A and SET_B `changes` times, in both variants."""
    samples = {name: [] for name in VARIANTS}
    kp, balancer = variants["kube-proxy"], variants["apiary"].balancer
    frontend = lb.Frontend(cluster_ip(size - 1), SERVICE_PORT)
    for i in range(changes):
        before, after = (SET_A, SET_B) if i % 2 == 0 else (SET_B, SET_A)
        text = kubeproxy.partial_restore_text(kube_ports(size, before), kube_ports(size, after), PROXY)
        samples["kube-proxy"].append(kp.restore(text) * 1e3)
        backends = lb_backends(after)
        started = time.perf_counter()
        balancer.upsert(size, frontend, backends)
        samples["apiary"].append((time.perf_counter() - started) * 1e3)
    if changes % 2:  # leave SET_A, as the next size expects
        kp.restore(kubeproxy.partial_restore_text(kube_ports(size, SET_B), kube_ports(size, SET_A), PROXY))
        balancer.upsert(size, frontend, lb_backends(SET_A))
    out = {name: _pcts(values) for name, values in samples.items()}
    out["ratio_p50"] = out["apiary"]["p50"] / out["kube-proxy"]["p50"]
    return out


# --- end to end on the lab: store write -> node1's maps ------------------------------------------------
LAB_NAMESPACE = "bench-svc"
LAB_PIN_DIR = "/sys/fs/bpf/apiary/node1"  # inventory/lab: apiary_bpf_pin_dir
LAB_FIRST = 4096  # ClusterIPs from 10.233.16.1 on: clear of what the lab allocates itself (from the start)
TXN_OPS = 100  # etcd's default --max-txn-ops is 128
POLL = 0.0002


def lab_service(index: int, port: int = SERVICE_PORT) -> dict:
    """A Service as the lab stores it (normalized spec, pre-assigned ClusterIP); its selector matches no
    pod, so its frontend has no backends: what is timed is the frontend appearing."""
    address = cluster_ip(index, LAB_FIRST)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service_name(index), "namespace": LAB_NAMESPACE,
                         "uid": "bench-%05d" % index, "creationTimestamp": lab_store.now()},
            "spec": {"type": "ClusterIP", "selector": {"app": "bench-none"}, "clusterIP": address,
                     "clusterIPs": [address], "sessionAffinity": "None", "externalTrafficPolicy": "Cluster",
                     "internalTrafficPolicy": "Cluster",
                     "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": 8080}]}}


def _put_op(obj: dict) -> dict:
    meta = obj["metadata"]
    return {"request_put": {"key": lab_store.key(obj["kind"], meta.get("namespace"), meta["name"]),
                            "value": json.dumps(obj, sort_keys=True)}}


def _master(services, index: int, port: int = SERVICE_PORT):
    return services.get(cluster_ip(index, LAB_FIRST), port, "TCP", slot=0, scope=0)


def _lab_size(etcd_endpoints: list, have: int, size: int, changes: int, etcd_tls: dict | None = None) -> dict:
    """In the store's node (a forked child): Services have..size-1 in batches, wait until node1's maps
    hold them all, then `changes` port changes of the last one, each timed until its new frontend is there."""
    from apiary.store.etcd import EtcdClient

    client = EtcdClient(etcd_endpoints, **(etcd_tls or {}))  # etcd requires a client certificate
    services = maps.ServiceMap(LAB_PIN_DIR)  # read only: the agent is the node's one writer
    try:
        started = time.monotonic()
        objs = [lab_service(i) for i in range(have, size)]
        for first in range(0, len(objs), TXN_OPS):
            client.txn([], [_put_op(o) for o in objs[first:first + TXN_OPS]], [])
        written = time.monotonic() - started
        deadline = time.monotonic() + 600
        while any(_master(services, i) is None for i in (size - 1, have)) or \
                sum(1 for i in range(have, size) if _master(services, i) is not None) < size - have:
            if time.monotonic() > deadline:
                raise base.BenchError("node1 holds %d of %d new frontends after 10 minutes"
                                      % (sum(1 for i in range(have, size) if _master(services, i)), size - have))
            time.sleep(0.2)
        loaded = time.monotonic() - started
        samples, port = [], SERVICE_PORT
        for _ in range(changes):
            time.sleep(0.05)
            port = SERVICE_PORT + 1 if port == SERVICE_PORT else SERVICE_PORT
            obj = lab_service(size - 1, port)
            t0 = time.perf_counter()
            client.txn([], [_put_op(obj)], [])
            while _master(services, size - 1, port) is None:
                if time.perf_counter() - t0 > 30:
                    raise base.BenchError("a Service change did not reach node1's maps in 30 s")
                time.sleep(POLL)
            samples.append((time.perf_counter() - t0) * 1e3)
        if port != SERVICE_PORT:  # back to port 80: the next size's setup is the same
            client.txn([], [_put_op(lab_service(size - 1))], [])
        return {"write_seconds": written, "all_in_maps_seconds": loaded, "samples_ms": samples}
    finally:
        services.close()


def end_to_end(sizes: list, changes: int, log) -> dict:
    stack = contextlib.ExitStack()
    results = {}
    try:
        log("resetting the lab, then cluster.yml")
        policy._playbook("reset.yml")
        stack.callback(policy._playbook, "reset.yml")
        policy._playbook("cluster.yml", *policy.STORE_OBJECTS)
        lab = lab_nodes.load_lab(lab_nodes.DEFAULT_LAB_ROOT)
        store_netns = lab_store.store_node(lab)["netns"]
        have = 0
        for size in sizes:
            out = netns.call_in(store_netns, _lab_size, lab["etcd_endpoints"], have, size, changes, lab.get("etcd_tls"))
            have = size
            results[size] = dict(_pcts(out["samples_ms"]), max=max(out["samples_ms"]),
                                 write_seconds=out["write_seconds"], all_in_maps_seconds=out["all_in_maps_seconds"])
            log("%d Services in the lab: %.1f s to write, %.1f s until node1's maps held them; one change p50 "
                "%.1f ms, p99 %.1f ms" % (size, out["write_seconds"], out["all_in_maps_seconds"],
                                           results[size]["p50"], results[size]["p99"]))
    finally:
        base.close_stack(stack)
    return results


# --- output -----------------------------------------------------------------------------------------
def verdicts(report: dict) -> dict:
    """The issue's targets against the figures (reported, never enforced)."""
    out = {}
    sizes = report.get("namespaces", {}).get("sizes", {})
    connect = [s for s in sizes if "connect" in sizes[s]]
    if len(connect) > 1:
        small, large = min(connect), max(connect)
        ratio = sizes[large]["connect"]["apiary"]["rate"] / sizes[small]["connect"]["apiary"]["rate"]
        out["apiary_rate_%d_over_%d" % (large, small)] = {"value": ratio, "target": ">= %.2f" % RATE_TARGET,
                                                         "meets": ratio >= RATE_TARGET}
    e2e = report.get("end_to_end", {})
    if e2e:
        p99 = e2e[max(e2e)]["p99"]
        out["end_to_end_p99_ms_at_%d" % max(e2e)] = {"value": p99, "target": "<= %.0f" % END_TO_END_TARGET_MS,
                                                      "meets": p99 <= END_TO_END_TARGET_MS}
    return out


def text_report(report: dict) -> str:
    lines = []
    sizes = report.get("namespaces", {}).get("sizes", {})
    if any("connect" in row for row in sizes.values()):
        lines += ["connect: connect()+close to the LAST service in KUBE-SERVICES order (4 backends on 2 nodes); "
                  "medians of %d rounds x %s s" % (report["rounds"], report["seconds"]),
                  "%8s  %-11s %10s %9s %9s" % ("services", "variant", "conn/s", "p50 us", "p99 us")]
        for size, row in sizes.items():
            for name in VARIANTS + ("ratio",):
                r = row["connect"][name]
                fmt = "%8s  %-11s %10.0f %9.1f %9.1f" if name != "ratio" else "%8s  %-11s %10.3f %9.3f %9.3f"
                lines.append(fmt % (size if name == VARIANTS[0] else "", name if name != "ratio" else "apiary/kp",
                                    r["rate"], r["p50_us"], r["p99_us"]))
    if any("program_ms" in row for row in sizes.values()):
        lines += ["", "program one change (one service's endpoints), ms: iptables-restore --noflush of kube-proxy's "
                  "partial sync vs LoadBalancer.upsert",
                  "%8s  %12s %12s %12s %12s %10s %14s" % ("services", "kp p50", "kp p99", "apiary p50", "apiary p99",
                                                          "apiary/kp", "kp full load s")]
        for size, row in sizes.items():
            p = row["program_ms"]
            lines.append("%8s  %12.2f %12.2f %12.3f %12.3f %10.4f %14.1f" % (
                size, p["kube-proxy"]["p50"], p["kube-proxy"]["p99"], p["apiary"]["p50"], p["apiary"]["p99"],
                p["ratio_p50"], row["load_seconds"]["kube-proxy"]))
    if report.get("end_to_end"):
        lines += ["", "end to end on the lab: store write -> node1's apiary_lb4_services (one Service's port), ms",
                  "%8s  %8s %8s %8s %10s %14s" % ("services", "p50", "p99", "max", "write s", "all in maps s")]
        for size, row in report["end_to_end"].items():
            lines.append("%8s  %8.1f %8.1f %8.1f %10.1f %14.1f" % (size, row["p50"], row["p99"], row["max"],
                                                                    row["write_seconds"], row["all_in_maps_seconds"]))
    if report["targets"]:
        lines += ["", "targets (reported, never enforced):"]
        for name, t in report["targets"].items():
            lines.append("  %s = %.3f (target %s): %s" % (name, t["value"], t["target"], "met" if t["meets"] else "MISSED"))
    lines.append("took %.0f s; connrate is a C client (clang -O2); iptables-restore is %s"
                 % (report["elapsed_seconds"], report["iptables"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Services at scale: kube-proxy's iptables mode vs Apiary's socket "
                                     "load balancer (connect rate, programming a change), and store write -> "
                                     "datapath on the lab. Run as root.")
    parser.add_argument("--part", choices=("all", "connect", "program", "end-to-end"), default="all")
    parser.add_argument("--sizes", default="100,1000,10000", help="numbers of services (default 100,1000,10000)")
    parser.add_argument("--seconds", type=float, default=3, help="connect: seconds per run (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="connect: rounds, each variant once (default 3)")
    parser.add_argument("--changes", type=int, default=20, help="program, end-to-end: changes timed per size")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1 or sizes[-1] > 16000:
        parser.error("--sizes: numbers of services, 1 to 16000, comma-separated")
    if args.seconds <= 0 or args.rounds < 1 or args.changes < 1:
        parser.error("--seconds must be positive, --rounds and --changes at least 1")

    log = base.progress(args.quiet)
    started = time.monotonic()
    version = subprocess.run(["iptables-restore", "--version"], capture_output=True, text=True).stdout.strip()
    report = {"benchmark": "services", "sizes": sizes, "seconds": args.seconds, "rounds": args.rounds,
              "changes": args.changes, "backends_per_service": 4, "iptables": version,
              "cpus": dict(zip(("servers", "client"), base.default_cpus()))}
    parts = {"connect", "program"} if args.part == "all" else {args.part}

    def work():
        if parts & {"connect", "program"}:
            report["namespaces"] = in_namespaces(sizes, args.seconds, args.rounds, args.changes, parts,
                                                 base.default_cpus(), log)
        if args.part in ("all", "end-to-end"):
            report["end_to_end"] = end_to_end(sizes, args.changes, log)

    _, rc = base.guarded("bench/services", work)
    if rc:
        return rc
    report["targets"] = verdicts(report)
    report["elapsed_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2) if args.output == "json" else text_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
