"""Run the preflight role and the bpf_probe module against this machine (they change nothing)."""
import json
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
PLAYBOOK = os.path.join(ROOT, "tests", "integration", "playbooks", "preflight.yml")
# The node's own Python, as on a real host (not whatever interpreter discovery finds first).
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3")
PY39 = os.path.expanduser("~/.pyenv/versions/3.9.18/bin/python3.9")
COMMON = ["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=" + PYTHON]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bpf(2) probes need root")


def _env(**extra):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    env.update(extra)
    return env


def run_playbook(*extra_args):
    proc = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook")] + COMMON + list(extra_args) + [PLAYBOOK],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    recap = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out)
    assert recap, out
    ok, changed, _, failed = (int(n) for n in recap.groups())
    return proc.returncode, changed, failed, out


def fail_message(out):
    """The msg of the failed task (results are printed as JSON)."""
    match = re.search(r"(?:fatal|failed): \[localhost\].*? => ", out)
    assert match, out
    return json.JSONDecoder().raw_decode(out[match.end():])[0]["msg"]


def test_passes_on_this_machine_and_changes_nothing():
    rc, changed, failed, out = run_playbook()
    assert (rc, changed, failed) == (0, 0, 0), out
    assert "Preflight passed on kernel %s" % os.uname().release in out
    assert "tc_direct_action=ok" in out


def test_too_old_kernel_fails_and_stops_the_play():
    rc, changed, failed, out = run_playbook("-e", "apiary_kernel_min_version=99.0")
    assert rc != 0 and failed == 1, out
    msg = fail_message(out)
    assert "Kernel %s is older than 99.0 (apiary_kernel_min_version)" % os.uname().release in msg
    assert "upgrade the kernel" in msg
    # The play stopped at the kernel check: later checks never ran.
    assert "Assert btf" not in out and "Preflight passed" not in out


def test_ignored_kernel_check_only_warns():
    rc, changed, failed, out = run_playbook("-e", "apiary_kernel_min_version=99.0",
                                            "-e", '{"apiary_ignore_preflight_errors": ["kernel"]}')
    assert (rc, changed, failed) == (0, 0, 0), out
    assert "[WARNING] preflight check 'kernel' failed and is ignored" in out
    assert "kernel=IGNORED" in out


def test_ignore_all():
    rc, changed, failed, out = run_playbook("-e", "apiary_kernel_min_version=99.0", "-e", "apiary_btf_path=/nonexistent",
                                            "-e", '{"apiary_ignore_preflight_errors": ["all"]}')
    assert (rc, failed) == (0, 0), out
    assert "kernel=IGNORED btf=IGNORED" in out


def test_missing_btf_fails_naming_it():
    rc, changed, failed, out = run_playbook("-e", "apiary_btf_path=/nonexistent")
    assert rc != 0 and failed == 1, out
    msg = fail_message(out)
    assert "No kernel BTF at /nonexistent (apiary_btf_path)" in msg
    assert "CONFIG_DEBUG_INFO_BTF" in msg


def test_helper_the_program_type_cannot_use_fails_naming_it():
    rc, changed, failed, out = run_playbook(
        "-e", '{"apiary_preflight_required_helpers": ["sched_cls/redirect_peer", "cgroup_sock_addr/redirect_peer"]}')
    assert rc != 0 and failed == 1, out
    msg = fail_message(out)
    assert "cgroup_sock_addr/redirect_peer (program of this type cannot use helper" in msg
    assert "sched_cls/redirect_peer" not in msg


@pytest.mark.parametrize("extra, words", [
    ("apiary_kernel_min_version=5", "must be a version string like \"5.10\""),
    ('{"apiary_kernel_min_version": 5.1}', "must be a version string"),
    ('{"apiary_ignore_preflight_errors": "kernel"}', "must be a list of check names"),
    ('{"apiary_ignore_preflight_errors": ["kernal"]}', "each one of: kernel, btf"),
    ('{"apiary_preflight_required_helpers": ["redirect_peer"]}', "\"<program type>/<helper>\""),
    ('{"apiary_preflight_required_map_types": ["lru-hash"]}', "apiary_preflight_required_map_types is"),
    ('{"apiary_preflight_required_map_types": ["lru_hashh"]}', "unknown map type 'lru_hashh'"),
])
def test_bad_inputs_are_rejected(extra, words):
    rc, changed, failed, out = run_playbook("-e", extra)
    assert rc != 0 and failed == 1, out
    assert words in fail_message(out)


def run_module(python, args=""):
    proc = subprocess.run([os.path.join(VENV_BIN, "ansible"), "localhost", "-i", "localhost,", "-c", "local",
                           "-e", "ansible_python_interpreter=" + python, "-m", "apiary.cluster.bpf_probe",
                           "-a", args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    match = re.search(r"localhost \| (\w+)!? => ", proc.stdout)
    assert match, proc.stdout + proc.stderr
    return match.group(1), json.JSONDecoder().raw_decode(proc.stdout[match.end():])[0]


def test_module_returns_the_facts():
    status, result = run_module(PYTHON)
    assert status == "SUCCESS", result
    assert result["changed"] is False
    features = result["ansible_facts"]["apiary_bpf_features"]
    assert set(features) == {"kernel", "btf", "bpffs", "cgroup2", "program_types", "map_types", "helpers",
                             "tc_direct_action", "errors"}
    assert features["kernel"]["release"] == os.uname().release
    assert features["helpers"]["sched_cls/redirect_peer"] is True
    assert features["cgroup2"]["present"] is True


@pytest.mark.skipif(not os.path.exists(PY39), reason="no Python 3.9 here")
def test_module_on_python_3_9_reports_a_missing_helper():
    status, result = run_module(PY39, json.dumps({
        "program_types": ["sched_cls"], "map_types": ["lpm_trie"],
        "helpers": [{"program_type": "cgroup_sock_addr", "helper": "redirect_peer"}]}))
    assert status == "SUCCESS", result
    features = result["ansible_facts"]["apiary_bpf_features"]
    assert features["helpers"] == {"cgroup_sock_addr/redirect_peer": False}
    assert "cannot use helper" in features["errors"]["helpers/cgroup_sock_addr/redirect_peer"]


def test_module_rejects_unknown_names():
    status, result = run_module(PYTHON, "program_types=sched_clz")
    assert status == "FAILED"
    assert "unknown program type 'sched_clz'" in result["msg"]


def test_check_mode_probes_too():
    proc = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook")] + COMMON + ["--check", PLAYBOOK],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Preflight passed" in proc.stdout
