"""Run Debian's real `prometheus` inside a network namespace and ask it through its HTTP API.

    with running_prometheus(ns, tmp_path, ["10.77.101.11:9965", ...]) as prom:
        series = prom.wait_for("hubble_drop_total", lambda s: len(s) == 3)
        # [{"metric": {"__name__": ..., "instance": ..., labels}, "value": 12.0}, ...]

Prometheus listens on 127.0.0.1 of that namespace only (never the root one), scrapes every second
into a temporary storage folder, and is stopped (its process only) on exit, also when the test fails.
The namespace must reach the targets: a scratch namespace for a test's own servers, or a lab node's
(apiary-node1) for the lab's nodes.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from apiary import netns

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

requires_prometheus = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(PROMETHEUS), reason="needs root (ip netns) and Debian's prometheus")


def _get(url: str, timeout: float):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class Prometheus:
    def __init__(self, netns_name: str, listen: str, log_path: str):
        self.netns, self.listen, self.log_path = netns_name, listen, log_path

    def api(self, path: str, **params):
        url = "http://%s/api/v1/%s?%s" % (self.listen, path, urllib.parse.urlencode(params))
        answer = netns.call_in(self.netns, _get, url, 5.0)
        if answer.get("status") != "success":
            raise AssertionError("prometheus %s: %s" % (path, answer))
        return answer["data"]

    def query(self, expr: str) -> list:
        """An instant query: [{"metric": {labels}, "value": float}] (vector results)."""
        data = self.api("query", query=expr)
        return [{"metric": r["metric"], "value": float(r["value"][1])} for r in data["result"]]

    def targets(self) -> list:
        return self.api("targets")["activeTargets"]

    def wait_for(self, expr: str, predicate, timeout: float = 30.0) -> list:
        """Query until predicate(result) holds; fails with the last result, the targets and the log."""
        deadline = time.monotonic() + timeout
        result = None
        while time.monotonic() < deadline:
            try:
                result = self.query(expr)
                if predicate(result):
                    return result
            except OSError:  # not listening yet
                pass
            time.sleep(0.5)
        try:
            targets = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in self.targets()]
        except OSError as exc:
            targets = "unknown (%s)" % exc
        with open(self.log_path) as log:
            tail = log.read()[-2000:]
        raise AssertionError("prometheus: %s gave %r after %ss; targets %s; log:\n%s"
                             % (expr, result, timeout, targets, tail))


@contextlib.contextmanager
def running_prometheus(netns_name: str, workdir, targets, listen: str = "127.0.0.1:9090", job: str = "apiary"):
    """Prometheus in `netns_name`, scraping `targets` (host:port, path /metrics) every second."""
    workdir = str(workdir)
    config = os.path.join(workdir, "prometheus.yml")
    with open(config, "w") as out:
        # JSON is YAML: no PyYAML needed to write it.
        json.dump({"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                   "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}]}, out)
    log_path = os.path.join(workdir, "prometheus.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns_name, PROMETHEUS, "--config.file=" + config,
             "--storage.tsdb.path=" + os.path.join(workdir, "data"), "--web.listen-address=" + listen,
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        prom = Prometheus(netns_name, listen, log_path)
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                with open(log_path) as log:
                    raise AssertionError("prometheus exited (%d):\n%s" % (proc.returncode, log.read()[-2000:]))
            try:
                netns.call_in(netns_name, _get, "http://%s/api/v1/status/buildinfo" % listen, 2.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield prom
    finally:
        # Its own process group (start_new_session): `ip netns exec` and prometheus, nothing else.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
