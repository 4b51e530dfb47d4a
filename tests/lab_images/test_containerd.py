"""The lab's images through the real containerd the lab's nodes run (v2.4.2 and runc v1.5.3 from the
files_repo `make upstream` fills), with lab/registry.py as the mirror of every registry.

Everything lives in a network namespace made for this module (apiary-t-<random>): the registry on its
loopback (127.0.0.1:5000), containerd (own --root/--state/socket under a temporary dir, own config with
the CRI's registry.config_path) and the containers, which join that namespace. Processes are started with
`nsenter --net` (not `ip netns exec`, whose fresh /sys hides the cgroup mounts runc needs). At the end,
also after a failure: containers, containerd, the registry, their mounts and cgroups, the namespace and
the directory are removed; the root network namespace is compared before and after.
"""
from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from apiary import netns
from lab import images
from tests.helpers.etcd import temp_netns
from tests.integration.conftest import root_netns_snapshot, snapshot_diff
from tests.lab_images.conftest import NAMES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES_REPO = os.environ.get("APIARY_FILES_REPO", "/var/cache/apiary/files")
CONTAINERD = os.path.join(FILES_REPO, "github.com/containerd/containerd/releases/download/v2.4.2/"
                                      "containerd-2.4.2-linux-amd64.tar.gz")
RUNC = os.path.join(FILES_REPO, "github.com/opencontainers/runc/releases/download/v1.5.3/runc.amd64")
REGISTRY = "127.0.0.1:5000"

pytestmark = pytest.mark.lab

# Every registry goes to the lab's: docker.io, registry.k8s.io, and any other (whose images the lab does
# not have: they get the registry's list). `server` only, so no pull ever falls back to the internet.
HOSTS_TOML = 'server = "http://%s"\n' % REGISTRY

CONFIG_TOML = """version = 3
root = "{tmp}/root"
state = "{tmp}/state"
# NRI's socket would be /var/run/nri/nri.sock: the host's.
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "{tmp}/containerd.sock"
[ttrpc]
  address = "{tmp}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{tmp}/opt"
[plugins."io.containerd.cri.v1.images".registry]
  config_path = "{tmp}/certs.d"
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "registry.k8s.io/pause:3.10.1"
"""


class Containerd:
    def __init__(self, tmp: str, ns: str, tag: str):
        self.tmp, self.ns, self.tag = tmp, ns, tag
        self.env = dict(os.environ, PATH=os.path.join(tmp, "bin") + ":/usr/sbin:/usr/bin:/sbin:/bin")

    def ctr(self, *args, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([os.path.join(self.tmp, "bin", "ctr"), "--address", self.tmp + "/containerd.sock",
                               "--namespace", "k8s.io", *args], capture_output=True, text=True, timeout=timeout,
                              env=self.env)

    def pull(self, ref: str) -> subprocess.CompletedProcess:
        # ctr resolves with the same certs.d the CRI (the kubelet's pulls) is given in config.toml.
        return self.ctr("images", "pull", "--hosts-dir", self.tmp + "/certs.d", ref)

    def run(self, *args, timeout: float = 60) -> subprocess.CompletedProcess:
        """`ctr run` in the test's network namespace, in a cgroup named after this test run."""
        return self.ctr("run", "--with-ns", "network:" + netns.path(self.ns),
                        "--cgroup", "/%s-%s" % (self.tag, secrets.token_hex(2)), *args, timeout=timeout)


def _wait_for(check, what: str, timeout: float = 20, log: str | None = None):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            output = open(log).read()[-2000:] if log else ""
            raise AssertionError("timed out waiting for %s%s" % (what, "; its log:\n" + output if output else ""))
        time.sleep(0.2)


def _registry_answers() -> bool:
    with urllib.request.urlopen("http://%s/v2/" % REGISTRY, timeout=2) as resp:
        return resp.status == 200


def _stop(proc: subprocess.Popen | None):
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def containerd(layout):
    missing = [p for p in (CONTAINERD, RUNC) if not os.path.exists(p)]
    if missing:
        pytest.fail("upstream binaries missing: run make upstream (%s)" % ", ".join(missing))
    before = root_netns_snapshot(include_netns_list=False)
    tmp = tempfile.mkdtemp(prefix="apiary-t-ctd-")
    tag = os.path.basename(tmp)  # cgroups: /<tag>-<random>, removed below whatever happens
    leftovers = []
    try:
        subprocess.run(["tar", "-xzf", CONTAINERD, "-C", tmp], check=True)
        shutil.copyfile(RUNC, os.path.join(tmp, "bin", "runc"))
        os.chmod(os.path.join(tmp, "bin", "runc"), 0o755)
        os.makedirs(os.path.join(tmp, "certs.d", "_default"))
        with open(os.path.join(tmp, "certs.d", "_default", "hosts.toml"), "w") as f:
            f.write(HOSTS_TOML)
        with open(os.path.join(tmp, "config.toml"), "w") as f:
            f.write(CONFIG_TOML.format(tmp=tmp))
        with temp_netns() as ns, open(os.path.join(tmp, "registry.log"), "w") as registry_log, \
                open(os.path.join(tmp, "containerd.log"), "w") as containerd_log:
            client = Containerd(tmp, ns, tag)
            enter = ["nsenter", "--net=" + netns.path(ns)]
            registry = daemon = None
            try:
                registry = subprocess.Popen([*enter, sys.executable, "-m", "lab.registry", "--root", layout,
                                             "--listen", REGISTRY], cwd=REPO, stdout=registry_log,
                                            stderr=subprocess.STDOUT,
                                            env=dict(os.environ, PYTHONPATH=REPO + ":" + os.path.join(REPO, "runtime", "src")))
                daemon = subprocess.Popen([*enter, os.path.join(tmp, "bin", "containerd"), "--config",
                                           os.path.join(tmp, "config.toml")], env=client.env,
                                          stdout=containerd_log, stderr=subprocess.STDOUT)
                _wait_for(lambda: netns.call_in_thread(ns, _registry_answers), "the registry",
                          log=os.path.join(tmp, "registry.log"))
                _wait_for(lambda: client.ctr("version", timeout=10).returncode == 0, "containerd")
                yield client
            finally:
                if daemon is not None and daemon.poll() is None:
                    for cid in client.ctr("containers", "list", "--quiet").stdout.split():
                        client.ctr("tasks", "delete", "--force", cid)
                        client.ctr("containers", "delete", cid)
                _stop(daemon)
                _stop(registry)
                # Shims of this containerd still alive (a container that could not be deleted above): by pid.
                for pid in subprocess.run(["pgrep", "-f", tmp + "/containerd.sock"], capture_output=True,
                                          text=True).stdout.split():
                    leftovers.append("shim pid " + pid)
                    os.kill(int(pid), signal.SIGKILL)
    finally:
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if line.split()[4].startswith(tmp + "/")]
        for mount in reversed(mounts):
            leftovers.append("mount " + mount)
            subprocess.run(["umount", "-l", mount], check=False)
        for cgroup in glob.glob("/sys/fs/cgroup/*/%s-*" % tag) + glob.glob("/sys/fs/cgroup/%s-*" % tag):
            leftovers.append("cgroup " + cgroup)
            try:
                os.rmdir(cgroup)
            except OSError as exc:
                leftovers.append("could not remove %s: %s" % (cgroup, exc))
        shutil.rmtree(tmp, ignore_errors=True)
    after = root_netns_snapshot(include_netns_list=False)
    assert not snapshot_diff(before, after), snapshot_diff(before, after)
    assert not leftovers, "containerd left these behind (now removed): %s" % leftovers


def test_busybox_is_pulled_through_the_mirror(containerd, layout):
    result = containerd.pull(NAMES["busybox"])
    assert result.returncode == 0, result.stderr
    listed = containerd.ctr("images", "list").stdout
    digest = images.read_index(layout)[NAMES["busybox"]]["digest"]
    assert any(line.split()[0] == NAMES["busybox"] and digest in line for line in listed.splitlines()), listed
    with open(os.path.join(containerd.tmp, "registry.log")) as f:
        assert '"HEAD /v2/library/busybox/manifests/latest?ns=docker.io HTTP/1.1" 200' in f.read()


@pytest.mark.parametrize("ref", ["docker.io/library/redis:latest", "docker.io/library/nginx:1.25",
                                 "quay.io/prometheus/prometheus:v3.0.0"])
def test_an_unknown_image_fails_naming_the_lab_images(containerd, ref):
    result = containerd.pull(ref)
    assert result.returncode != 0
    # The status line (every containerd 2.x) and the GET's OCI error body (since 2.4) both say it.
    status_line = next(line for line in result.stderr.splitlines() if "unexpected status from HEAD request" in line)
    assert "403 %s is not an image of the Apiary lab" % ref in status_line, result.stderr
    body = next(line for line in result.stderr.splitlines() if line.startswith("denied: "))
    for line in (status_line, body):
        for name in NAMES.values():
            assert name in line, result.stderr


def test_containers_of_the_images_run(containerd):
    """nginx serves its page to busybox's wget (both in the test's network namespace); pause, as the user
    its image names, keeps running and stops on SIGTERM (PID 1 ignores what it does not handle)."""
    for short in ("nginx", "busybox", "pause"):
        result = containerd.pull(NAMES[short])
        assert result.returncode == 0, result.stderr
    try:
        assert containerd.run("--detach", NAMES["nginx"], "t-nginx").returncode == 0
        assert containerd.run("--detach", NAMES["pause"], "t-pause").returncode == 0
        page = ""
        for _ in range(50):
            result = containerd.run("--rm", NAMES["busybox"], "t-wget", "wget", "-qO-", "http://127.0.0.1/")
            page = result.stdout
            if "Welcome to nginx!" in page:
                break
            time.sleep(0.2)
        assert "<title>Welcome to nginx!</title>" in page, result.stderr

        tasks = containerd.ctr("tasks", "list").stdout
        assert any(line.split()[:1] == ["t-pause"] and "RUNNING" in line for line in tasks.splitlines()), tasks
        assert containerd.ctr("tasks", "kill", "--signal", "SIGTERM", "t-pause").returncode == 0
        _wait_for(lambda: any(line.split()[:1] == ["t-pause"] and "STOPPED" in line
                              for line in containerd.ctr("tasks", "list").stdout.splitlines()),
                  "pause to stop on SIGTERM", timeout=10)
    finally:
        for cid in ("t-nginx", "t-pause"):
            containerd.ctr("tasks", "delete", "--force", cid)
            containerd.ctr("containers", "delete", cid)
