"""bench/hubble.py cannot rot: one very short run of both parts reports every figure with positive numbers
and leaves no namespace, pin or process behind. The numbers themselves (and the targets) are never judged here."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from tests.bench.test_bench_datapath import _leftovers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench", "hubble.py")
RATES = (20000, "max")

pytestmark = pytest.mark.lab


def _positive(value, where):
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (where, value)


def _role_processes() -> list:
    """The bench's agent, relay and client processes still running (`hubble.py --role ...`)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                args = handle.read().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"bench/hubble.py") for a in args) and b"--role" in args:
            found.append(int(pid))
    return found


def test_short_run_of_both_parts_reports_every_figure_and_cleans_up():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, bpf(2))")
    missing = [t for t in ("clang", "make", "nsenter") if not shutil.which(t)]
    if missing:
        pytest.skip("needs %s (scripts/bootstrap.sh installs them)" % ", ".join(missing))
    before = _leftovers()
    proc = subprocess.run([sys.executable, BENCH, "--seconds", "1", "--rounds", "1",
                           "--rates", ",".join(map(str, RATES)), "-o", "json", "-q"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)

    flows = report["flows"]
    _positive(flows["events_per_datagram"], "events_per_datagram")
    rows = flows["rows"]
    assert [(r["rate"], r["stage"]) for r in rows] == [(rate, stage) for rate in RATES
                                                       for stage in ("observer", "server", "relay")]
    for row in rows:
        where = (row["rate"], row["stage"])
        for key in ("emitted_per_s", "observer_per_s", "observed", "datagrams_sent", "agent_cpu_us_per_event"):
            _positive(row[key], (where, key))
        for key in ("lost", "backlog_at_end", "sink_errors"):
            assert isinstance(row[key], int) and row[key] >= 0, (where, key, row[key])
        assert row["sink_errors"] == 0, where
        assert isinstance(row["observer_kept_up"], bool)
        if row["stage"] != "observer":
            _positive(row["delivered"], (where, "delivered"))   # the client got flows through the stage
            _positive(row["client_per_s"], (where, "client_per_s"))
            assert 0 < row["delivered_fraction"] <= 1.0, where
            assert isinstance(row["client_kept_up"], bool) and row["client_dropped"] >= 0

    connect = report["connect"]
    for key in ("on", "off", "ratio", "events_per_connect", "events_per_s_on"):
        _positive(connect[key], key)
    assert len(connect["runs"]["on"]) == len(connect["runs"]["off"]) == 1
    for key, value in report["cpu_us_per_event"].items():
        _positive(value, key)
    assert set(report["targets"]) == {"into_observer_flows_per_s_without_loss", "end_to_end_flows_per_s_without_loss",
                                      "connect_rate_on_over_off"}
    for target in report["targets"].values():
        assert target["verdict"].split(" (")[0] in ("met", "not met", "not shown to hold")

    namespaces, pins = _leftovers()
    assert not namespaces - before[0], "namespaces left: %s" % sorted(namespaces - before[0])
    assert not pins - before[1], "pins left: %s" % sorted(pins - before[1])
    assert not os.path.exists(report["removed"]["pin_dir"])
    assert not _role_processes(), "agent, relay or client processes left"


def test_bad_arguments_are_refused():
    for args in (["--rates", "fast"], ["--rates", "-5"], ["--seconds", "0"], ["--rounds", "0"]):
        proc = subprocess.run([sys.executable, BENCH] + args, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "error" in proc.stderr, args
