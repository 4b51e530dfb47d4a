"""bench/services.py cannot rot: one tiny run of every part reports every figure with plausible numbers and
leaves no namespace, pin, cgroup or lab behind. The numbers themselves are never judged here."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from tests.bench.test_bench_datapath import _leftovers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench", "services.py")
SIZES = (10, 20)

pytestmark = pytest.mark.lab


def _positive(value, where):
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (where, value)


def _cgroups() -> set:
    from apiary.datapath.loader import cgroup2_mount
    return {c for c in os.listdir(cgroup2_mount()) if c.startswith("apiary-bench-")}


def test_tiny_run_of_every_part_reports_every_figure_and_cleans_up():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, bpf(2), a cgroup, the lab)")
    missing = [t for t in ("clang", "make", "nsenter", "iptables-restore") if not shutil.which(t)]
    if missing:
        pytest.skip("needs %s (scripts/bootstrap.sh installs them)" % ", ".join(missing))
    before, cgroups_before = _leftovers(), _cgroups()
    proc = subprocess.run([sys.executable, BENCH, "--sizes", ",".join(map(str, SIZES)), "--seconds", "1",
                           "--rounds", "1", "--changes", "3", "-o", "json", "-q"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)

    sizes = report["namespaces"]["sizes"]
    assert sorted(map(int, sizes)) == list(SIZES)
    for size, row in sizes.items():
        assert row["measured_service"].startswith("bench/svc-%05d " % (int(size) - 1))
        for name in ("kube-proxy", "apiary", "ratio"):
            for key in ("rate", "p50_us", "p99_us"):
                _positive(row["connect"][name][key], (size, name, key))
        for name in ("kube-proxy", "apiary"):
            assert row["program_ms"][name]["samples"] == 3
            for key in ("p50", "p99"):
                _positive(row["program_ms"][name][key], (size, name, key))
        _positive(row["program_ms"]["ratio_p50"], size)

    e2e = report["end_to_end"]
    assert sorted(map(int, e2e)) == list(SIZES)
    for size, row in e2e.items():
        assert row["samples"] == 3
        for key in ("p50", "p99", "max", "write_seconds", "all_in_maps_seconds"):
            _positive(row[key], (size, key))
        assert row["max"] < 30000, row  # a change reaches the maps in less than the bench's own timeout
    assert set(report["targets"]) == {"apiary_rate_20_over_10", "end_to_end_p99_ms_at_20"}

    namespaces, pins = _leftovers()
    assert not namespaces - before[0], "namespaces left: %s" % sorted(namespaces - before[0])
    assert not pins - before[1], "pins left: %s" % sorted(pins - before[1])
    assert not _cgroups() - cgroups_before, "cgroups left: %s" % sorted(_cgroups() - cgroups_before)
    removed = report["namespaces"]["removed"]
    assert not os.path.exists(removed["pin_dir"]) and not os.path.exists(removed["cgroup"])
    assert not os.path.exists("/var/lib/apiary-lab"), "the bench must reset the lab it used"
