"""Real probes against the running kernel (needs root, as preflight does)."""
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from ansible_collections.apiary.cluster.plugins.module_utils import bpf_probe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY39 = os.path.expanduser("~/.pyenv/versions/3.9.18/bin/python3.9")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bpf(2) probes need root")


def _bpf_programs():
    """Names of all loaded BPF programs (bpftool, else nothing to compare)."""
    if not shutil.which("bpftool"):
        pytest.skip("bpftool is needed to see what is loaded")
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return sorted(p.get("name", "") for p in json.loads(out or "[]"))


def _host_state():
    """What a probe could leave behind, and only that (others work on this machine at the same time):
    programs named apiary_probe, bpffs mounts with the probe's source name "bpf", the probe's temp
    dirs, qdiscs on the root netns's lo."""
    programs = [name for name in _bpf_programs() if name == "apiary_probe"]
    with open("/proc/self/mountinfo") as handle:
        mounts = [line.split()[4] for line in handle if " - bpf bpf " in line]
    temp = [name for name in os.listdir(tempfile.gettempdir()) if name.startswith("apiary-bpffs-probe-")]
    qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True).stdout
    return programs, mounts, temp, qdiscs


@pytest.mark.parametrize("release, version", [
    ("6.1.0-28-amd64", (6, 1, 0)),
    ("5.10.0-33-cloud-amd64", (5, 10, 0)),
    ("6.18.44-fc-v657", (6, 18, 44)),
    ("4.19.0", (4, 19, 0)),
    ("6.8", (6, 8, 0)),
])
def test_parse_kernel_version(release, version):
    assert bpf_probe.parse_kernel_version(release) == version


def test_parse_kernel_version_rejects_garbage():
    with pytest.raises(bpf_probe.BpfProbeError, match="cannot parse"):
        bpf_probe.parse_kernel_version("linux")


def test_tables_match_the_uapi_header():
    # Spot checks against include/uapi/linux/bpf.h: positions are the ABI numbers.
    assert bpf_probe.PROG_TYPES["sched_cls"] == 3
    assert bpf_probe.PROG_TYPES["cgroup_sock_addr"] == 18
    assert bpf_probe.MAP_TYPES["lru_hash"] == 9
    assert bpf_probe.MAP_TYPES["ringbuf"] == 27
    assert bpf_probe.ATTACH_TYPES["cgroup_inet4_connect"] == 10
    assert bpf_probe.HELPERS["redirect"] == 23
    assert bpf_probe.HELPERS["fib_lookup"] == 69
    assert bpf_probe.HELPERS["redirect_neigh"] == 152
    assert bpf_probe.HELPERS["redirect_peer"] == 155


@pytest.mark.parametrize("prog_type", ["sched_cls", "cgroup_sock_addr", "cgroup_sock", "xdp"])
def test_program_type_loads(prog_type):
    assert bpf_probe.probe_prog_type(prog_type) == (True, None)


def test_cgroup_sock_addr_needs_its_attach_type():
    # cgroup_inet_ingress (0) is not a sock_addr hook: the kernel refuses the load.
    supported, error = bpf_probe.probe_prog_type("cgroup_sock_addr", "cgroup_inet_ingress")
    assert not supported and error.startswith("EINVAL")


def test_out_of_range_program_type_fails():
    supported, error = bpf_probe.probe_prog_type(9999)
    assert supported is False
    assert error.startswith("EINVAL")


@pytest.mark.parametrize("map_type", ["hash", "lru_hash", "lpm_trie", "array", "percpu_array", "ringbuf",
                                      "prog_array", "perf_event_array", "hash_of_maps"])
def test_map_type_creates(map_type):
    assert bpf_probe.probe_map_type(map_type) == (True, None)


def test_helper_available_for_sched_cls():
    assert bpf_probe.probe_helper("sched_cls", "redirect_peer") == (True, None)
    assert bpf_probe.probe_helper("sched_cls", "fib_lookup") == (True, None)
    assert bpf_probe.probe_helper("cgroup_sock_addr", "get_socket_cookie") == (True, None)


def test_helper_not_for_this_program_type():
    supported, error = bpf_probe.probe_helper("cgroup_sock_addr", "redirect_peer")
    assert supported is False
    assert "cannot use helper" in error and "redirect_peer" in error


def test_helper_id_the_kernel_does_not_know():
    supported, error = bpf_probe.probe_helper("sched_cls", 100000)
    assert supported is False
    assert "invalid func" in error or "unknown func" in error


@pytest.mark.parametrize("call, word", [
    (lambda: bpf_probe.probe_prog_type("sched_clz"), "program type 'sched_clz'"),
    (lambda: bpf_probe.probe_map_type("lru_hashh"), "map type 'lru_hashh'"),
    (lambda: bpf_probe.probe_helper("sched_cls", "redirect_pear"), "helper 'redirect_pear'"),
    (lambda: bpf_probe.probe_prog_type("cgroup_sock_addr", "inet4_connect"), "attach type 'inet4_connect'"),
    (lambda: bpf_probe.probe_all(helpers=[("sched_cls", "nope")]), "helper 'nope'"),
])
def test_unknown_names_are_clear_errors(call, word):
    with pytest.raises(bpf_probe.BpfProbeError, match="unknown " + word):
        call()


def test_unknown_name_suggests_close_ones():
    with pytest.raises(bpf_probe.BpfProbeError, match="did you mean: redirect_peer"):
        bpf_probe.probe_helper("sched_cls", "redirect_pear")


def test_btf(tmp_path):
    assert bpf_probe.probe_btf("/sys/kernel/btf/vmlinux") == (True, None)
    not_btf = tmp_path / "vmlinux"
    not_btf.write_bytes(b"\x7fELF")
    assert bpf_probe.probe_btf(str(not_btf))[0] is False
    supported, error = bpf_probe.probe_btf("/nonexistent/vmlinux")
    assert supported is False and "No such file" in error


def test_cgroup2_found():
    cgroup2 = bpf_probe.probe_cgroup2()
    assert cgroup2["present"] is True
    assert os.statvfs(cgroup2["path"])  # a real path
    assert (cgroup2["path"], "cgroup2") in bpf_probe.mounts()


def test_bpffs_probe_changes_nothing():
    before = _host_state()
    bpffs = bpf_probe.probe_bpffs("/sys/fs/bpf")
    assert bpffs["mountable"] is True, bpffs["error"]
    assert _host_state() == before


@pytest.mark.parametrize("where", ["existing", "missing"])
def test_bpffs_mount_probe_in_private_namespace(tmp_path, where):
    # Not a bpffs: the probe mounts one in a throwaway mount namespace (on a temp dir if missing).
    path = str(tmp_path) if where == "existing" else str(tmp_path / "missing")
    before = _host_state()
    assert bpf_probe.probe_bpffs(path) == {"mounted": False, "mountable": True, "path": path, "error": None}
    assert _host_state() == before
    assert not os.path.exists(str(tmp_path / "missing"))


def test_tc_direct_action_in_throwaway_netns_leaves_no_trace():
    before = _host_state()
    assert bpf_probe.probe_tc_direct_action() == {"supported": True, "error": None}
    assert _host_state() == before
    assert before[0] == [] and before[1] == []


def test_probe_all_on_this_machine_leaves_nothing():
    before = _host_state()
    features = bpf_probe.probe_all()
    assert _host_state() == before
    assert features["kernel"]["version"] == list(bpf_probe.parse_kernel_version(os.uname().release))
    assert features["btf"]["present"] is True
    assert features["tc_direct_action"]["supported"] is True
    assert all(features["program_types"].values())
    assert all(features["map_types"].values())
    assert all(features["helpers"].values()), features["errors"]
    assert features["errors"] == {}


@pytest.mark.skipif(not os.path.exists(PY39), reason="no Python 3.9 here")
def test_runs_on_python_3_9():
    # Debian bullseye nodes have Python 3.9: the probe must import and run there, stdlib only.
    code = ("import sys, json; sys.path.insert(0, %r);"
            "from ansible_collections.apiary.cluster.plugins.module_utils import bpf_probe as b;"
            "print(json.dumps(b.probe_all()))") % os.path.join(ROOT, "collections")
    out = subprocess.run([PY39, "-I", "-c", code], capture_output=True, text=True, check=True).stdout
    features = json.loads(out)
    assert features["helpers"]["sched_cls/redirect_peer"] is True
    assert features["tc_direct_action"]["supported"] is True
