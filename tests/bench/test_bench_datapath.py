"""bench/datapath.py cannot rot: one very short run reports every metric with positive numbers and
leaves no namespace, pin or server behind. The numbers themselves are never judged here."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench", "datapath.py")
METRICS = {"%s %s" % (kind, placement) for placement in ("same-node", "cross-node")
           for kind in ("latency p50", "latency p99", "throughput")}

pytestmark = pytest.mark.lab


def _leftovers() -> tuple[set, set]:
    names = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    pins = set(os.listdir("/sys/fs/bpf")) if os.path.isdir("/sys/fs/bpf") else set()
    return ({n for n in names if n.startswith("apiary-b-")}, {p for p in pins if p.startswith("apiary-bench-")})


def test_short_run_reports_every_metric_and_cleans_up():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, bpf(2))")
    missing = [t for t in ("iperf3", "sockperf", "clang", "make", "nsenter") if not shutil.which(t)]
    if missing:
        pytest.skip("needs %s (scripts/bootstrap.sh installs them)" % ", ".join(missing))
    before = _leftovers()
    proc = subprocess.run([sys.executable, BENCH, "--seconds", "1", "--rounds", "1", "-o", "json", "-q"],
                          capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)

    for mode in ("native", "tunnel"):
        rows = {r["metric"]: r for r in report["results"] if r["mode"] == mode}
        assert set(rows) == METRICS, mode
        for row in rows.values():
            for key in ("floor", "apiary", "ratio"):
                assert math.isfinite(row[key]) and row[key] > 0, (mode, row)
            assert row["target"] in ("<= 1.05", ">= 0.95")

    namespaces, pins = _leftovers()
    assert not namespaces - before[0], "namespaces left: %s" % sorted(namespaces - before[0])
    assert not pins - before[1], "pins left: %s" % sorted(pins - before[1])
    removed = report["removed"]
    assert not os.path.exists(removed["pin_dir"])
    assert not [n for n in namespaces for prefix in removed["namespace_prefixes"] if n.startswith(prefix)]
    assert len(removed["namespace_prefixes"]) == 4
