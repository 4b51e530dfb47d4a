"""bench/policy.py cannot rot: one very small run of both parts reports every figure with plausible
numbers and leaves no namespace, pin, lab or probe behind. The numbers themselves are never judged here."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from tests.bench.test_bench_datapath import _leftovers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench", "policy.py")

pytestmark = pytest.mark.lab


def test_short_run_of_both_parts_reports_every_figure_and_cleans_up():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, bpf(2), the lab)")
    missing = [t for t in ("sockperf", "clang", "make", "nsenter", "iptables-restore", "ipset") if not shutil.which(t)]
    if missing:
        pytest.skip("needs %s (scripts/bootstrap.sh installs them)" % ", ".join(missing))
    before = _leftovers()
    proc = subprocess.run([sys.executable, BENCH, "--seconds", "1", "--rounds", "1", "--rules", "50",
                           "--endpoints", "12", "--policies", "10", "--cycles", "2", "-o", "json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)

    rows = report["per_packet"]["results"]
    assert set(rows) == {"%s %s" % (placement, pct) for placement in ("same-node", "cross-node")
                         for pct in ("p50", "p99")}
    for row in rows.values():
        for key in ("no-policy", "apiary", "calico", "apiary_ratio", "calico_ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, row

    applied = report["apply_to_enforced"]
    assert (applied["endpoints"], applied["policies"]) == (12, 10)
    for change in ("add", "remove"):
        row = applied["results"][change]
        assert row["samples"] == 2
        # Enforcement takes time but not seconds: a zero or a timeout-sized figure means a broken probe.
        assert 0 < row["p50"] <= row["max"] < 5000, row

    namespaces, pins = _leftovers()
    assert not namespaces - before[0], "namespaces left: %s" % sorted(namespaces - before[0])
    assert not pins - before[1], "pins left: %s" % sorted(pins - before[1])
    assert not os.path.exists("/var/lib/apiary-lab"), "the bench must reset the lab it used"
    left = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    assert not [n for n in left if n.startswith("apiary-")], left
