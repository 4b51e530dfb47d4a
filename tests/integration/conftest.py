"""Helpers for the integration tests: real namespaces, real playbooks, the root netns watched.

- root_netns_snapshot(): what the host's ROOT network namespace looks like (addresses, routes,
  rules, links, iptables/ip6tables/nft rules, named namespaces), normalised so two snapshots
  are equal when nothing was changed.
- run_playbook() / run_ansible(): run .venv/bin/ansible-playbook / ansible from the repo root
  with the default callback; the result unpacks as (rc, stdout) and has .recap.
- kubectl(): the lab's real kubectl (inventory/lab/artifacts/kubectl.sh); wait_for(): poll a predicate.
- Fixtures: `netns_factory` (namespaces named apiary-t-*, always deleted with their processes),
  `lab_reset` (resets the standard lab before and after the tests that use it).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
LAB_INVENTORY = REPO / "inventory" / "lab"
PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
KUBECTL = LAB_INVENTORY / "artifacts" / "kubectl.sh"

# Fields that change by themselves (address lifetimes, route expiry) and counters.
_VOLATILE_KEYS = {"valid_life_time", "preferred_life_time", "expires"}
_COUNTERS = re.compile(r"\[\d+:\d+\]|counter packets \d+ bytes \d+")


def _strip_volatile(value):
    if isinstance(value, dict):
        return {k: _strip_volatile(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
    if isinstance(value, list):
        return [_strip_volatile(v) for v in value]
    return value


def _capture(argv):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        return "(%s not installed)" % argv[0]
    return proc.stdout if proc.returncode == 0 else "(rc=%d) %s" % (proc.returncode, proc.stderr.strip())


def root_netns_snapshot(include_netns_list: bool = True) -> dict:
    """The root network namespace, normalised for comparison (call it from the root netns).

    include_netns_list=False leaves out `ip netns list`, for comparing while a lab is up.
    """
    snapshot = {}
    for key, argv in {
        "addr": ["ip", "-j", "addr"],
        "route": ["ip", "-j", "route", "show", "table", "all"],
        "route6": ["ip", "-j", "-6", "route", "show", "table", "all"],
        "rule": ["ip", "-j", "rule"],
        "rule6": ["ip", "-j", "-6", "rule"],
        "link": ["ip", "-j", "link"],
    }.items():
        out = _capture(argv)
        try:
            snapshot[key] = _strip_volatile(json.loads(out or "[]"))
        except ValueError:
            snapshot[key] = out
    for key, argv in {
        "iptables": ["iptables-save"],
        "ip6tables": ["ip6tables-save"],
        "nft": ["nft", "list", "ruleset"],
    }.items():
        # Dump headers carry a timestamp; counters move with any traffic.
        lines = [_COUNTERS.sub("", line) for line in _capture(argv).splitlines() if not line.startswith("#")]
        snapshot[key] = lines
    if include_netns_list:
        snapshot["netns"] = sorted(_capture(["ip", "netns", "list"]).splitlines())
    return snapshot


def snapshot_diff(before: dict, after: dict) -> list[str]:
    """Names of the parts that differ, with both versions, for an assertion message."""
    return ["%s:\n  before: %s\n  after:  %s" % (key, before.get(key), after.get(key))
            for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]


class PlaybookRun(tuple):
    """(rc, stdout), plus .recap: {host: {ok, changed, failed, unreachable}} from the PLAY RECAP."""

    def __new__(cls, rc, stdout):
        run = super().__new__(cls, (rc, stdout))
        run.recap = parse_recap(stdout)
        return run

    rc = property(lambda self: self[0])
    stdout = property(lambda self: self[1])


_RECAP_LINE = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def parse_recap(stdout: str) -> dict:
    recap = stdout.rsplit("PLAY RECAP", 1)[-1] if "PLAY RECAP" in stdout else ""
    return {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)),
                         "unreachable": int(m.group(4)), "failed": int(m.group(5))}
            for m in _RECAP_LINE.finditer(recap)}


def _run(argv, timeout):
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="default", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    proc = subprocess.run([str(a) for a in argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
    return PlaybookRun(proc.returncode, proc.stdout)


def run_playbook(playbook, inventory=LAB_INVENTORY, *args, check=False, timeout=900):
    """Run .venv/bin/ansible-playbook from the repo root; `rc, stdout = run_playbook(...)`."""
    return _run([VENV_BIN / "ansible-playbook", "-i", inventory, playbook, *args]
                + (["--check"] if check else []), timeout)


def run_ansible(pattern, inventory, *args, timeout=300):
    """Run an ad-hoc .venv/bin/ansible command from the repo root; same result as run_playbook."""
    return _run([VENV_BIN / "ansible", "-i", inventory, pattern, *args], timeout)


def run_on_controller(module, args: dict, *extra):
    """Run a module on localhost (local connection, the venv's Python), args given as JSON."""
    return run_ansible("localhost", "localhost,", "-c", "local",
                       "-e", "ansible_python_interpreter=%s" % (VENV_BIN / "python"),
                       "-m", module, "-a", json.dumps(args), *extra)


def kubectl(*args, stdin=None, check=True, timeout=120):
    """The lab's kubectl (Kubespray's artifacts/kubectl.sh: kubectl with admin.conf, run inside the lab)."""
    proc = subprocess.run([str(KUBECTL), *args], input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError("kubectl %s (%d):\n%s%s" % (" ".join(args), proc.returncode, proc.stdout, proc.stderr))
    return proc


def wait_for(what, predicate, timeout=120):
    """predicate()'s first true value, polled every second; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            assert value, "timed out waiting for " + what
            return value
        time.sleep(1)


def netns_list() -> list[str]:
    return sorted(line.split()[0] for line in _capture(["ip", "netns", "list"]).splitlines() if line.strip())


def delete_netns(name: str) -> None:
    """Kill whatever runs in `name`, then delete it (never fails: used in finalizers)."""
    pids = _capture(["ip", "netns", "pids", name]).split()
    if pids and not pids[0].startswith("("):
        subprocess.run(["kill", "-KILL", *pids], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture
def netns_factory():
    """netns_factory(create=True) -> a fresh name apiary-t-XXXXXX; deleted (and its processes
    killed) at teardown, whether or not the test created it itself."""
    names = []

    def make(create=True):
        name = "apiary-t-%s" % uuid.uuid4().hex[:6]
        names.append(name)
        if create:
            subprocess.run(["ip", "netns", "add", name], check=True)
        return name

    yield make
    for name in names:
        delete_netns(name)


def pytest_runtest_teardown(item, nextitem):
    """The seed lab the seed's modules share is reset after the last test that uses it (seed.py)."""
    from tests.integration import seed
    if seed.uses_seed_lab(item):
        later = item.session.items[item.session.items.index(item) + 1:]
        if not any(seed.uses_seed_lab(other) for other in later):
            seed.reset_kept()


@pytest.fixture(scope="session")
def lab_reset():
    """The standard lab starts absent and is always torn down at the end (even after failures).

    Yields the root netns snapshot taken once the lab is absent: the baseline to compare with.
    """
    rc, out = run_playbook(PLAYBOOKS / "lab_reset.yml")
    assert rc == 0, out
    yield root_netns_snapshot()
    run_playbook(PLAYBOOKS / "lab_reset.yml")
