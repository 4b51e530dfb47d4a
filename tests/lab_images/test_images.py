"""lab/images.py: the OCI layout is valid and deterministic, and each image's programs run in the image's
own root filesystem (unpacked from the layout, executed chrooted: no host file helps them)."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shlex
import signal
import stat
import subprocess
import tarfile
import tempfile
import time

import pytest

from lab import images
from tests.lab_images.conftest import NAMES, run_in


def _sha256_file(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def _manifest(layout, name):
    return json.loads(images.read_blob(layout, images.read_index(layout)[name]["digest"]))


def _snapshot(layout):
    """Every file of the layout with what a rewrite would change."""
    snap = {}
    for dirpath, _dirs, files in os.walk(layout):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            snap[os.path.relpath(os.path.join(dirpath, f), layout)] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return snap


# --- the layout ----------------------------------------------------------------------------------------
def test_index_names_every_lab_image(built):
    layout, entries = built
    assert sorted(images.read_index(layout)) == sorted(NAMES.values())
    with open(os.path.join(layout, "oci-layout")) as f:
        assert json.load(f) == {"imageLayoutVersion": "1.0.0"}
    for entry in entries:
        assert entry["mediaType"] == images.MEDIA_MANIFEST
        assert entry["annotations"][images.REF_ANNOTATION] == entry["annotations"][images.NAME_ANNOTATION]


def test_every_descriptor_matches_its_blob(layout):
    for name, desc in images.read_index(layout).items():
        manifest = _manifest(layout, name)
        config = json.loads(images.read_blob(layout, manifest["config"]["digest"]))
        assert manifest["config"]["mediaType"] == images.MEDIA_CONFIG
        for d in [desc, manifest["config"], *manifest["layers"]]:
            path = images.blob_path(layout, d["digest"])
            assert _sha256_file(path) == d["digest"], (name, d)
            assert os.path.getsize(path) == d["size"], (name, d)
        # diff_ids are the digests of the uncompressed layers.
        diff_ids = []
        for layer in manifest["layers"]:
            assert layer["mediaType"] == images.MEDIA_LAYER
            with gzip.open(images.blob_path(layout, layer["digest"])) as f:
                diff_ids.append("sha256:" + hashlib.file_digest(f, "sha256").hexdigest())
        assert config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}
        assert (config["os"], config["architecture"]) == ("linux", "amd64")


def test_layers_are_normalized(layout):
    """Sorted entries, owner 0:0, one mtime; gzip header without a name or a time: nothing of the build
    machine's clock or users gets into a digest."""
    for name in NAMES.values():
        path = images.blob_path(layout, _manifest(layout, name)["layers"][0]["digest"])
        with open(path, "rb") as f:
            header = f.read(10)
        assert header[:3] == b"\x1f\x8b\x08" and header[3] & 0x08 == 0, "gzip FNAME set in %s" % name
        assert header[4:8] == b"\0\0\0\0", "gzip MTIME set in %s" % name
        with tarfile.open(path) as tar:
            members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names), name
        assert len(names) == len(set(names)), name
        assert {(m.uid, m.gid, m.mtime) for m in members} == {(0, 0, images.MTIME)}, name


def test_rebuild_changes_nothing_and_drops_unused_blobs(built):
    """A second build computes every layer again: the same digests, and no file of the layout rewritten.
    A blob no image uses any more is removed."""
    layout, first = built
    junk = os.path.join(layout, "blobs", "sha256", "0" * 64)
    with open(junk, "wb") as f:
        f.write(b"an image of an older build")
    before = _snapshot(layout)
    del before[os.path.relpath(junk, layout)]
    with open(os.path.join(layout, "index.json"), "rb") as f:
        index = f.read()

    with tempfile.TemporaryDirectory(prefix="apiary-t-work-") as work:
        second = images.build(images.lab_images(work), layout, log=lambda *a: None)

    assert [e["digest"] for e in second] == [e["digest"] for e in first]
    assert not os.path.exists(junk)
    assert _snapshot(layout) == before
    with open(os.path.join(layout, "index.json"), "rb") as f:
        assert f.read() == index


# --- what every image has ------------------------------------------------------------------------------
@pytest.mark.parametrize("short", sorted(NAMES))
def test_base_files(rootfs, short):
    root, _config = rootfs[short]
    with open(os.path.join(root, "etc/passwd")) as f:
        assert f.readline().startswith("root:x:0:0:")
    with open(os.path.join(root, "etc/group")) as f:
        assert f.readline().startswith("root:x:0:")
    with open(os.path.join(root, "etc/nsswitch.conf")) as f:
        assert "hosts: files dns\n" in f.read()
    assert stat.S_IMODE(os.lstat(os.path.join(root, "tmp")).st_mode) == 0o1777


# --- pause ------------------------------------------------------------------------------------------------
def test_pause_is_static_sleeps_and_stops_on_sigterm_and_sigint(rootfs):
    root, config = rootfs["pause"]
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["config"]["User"] == "65535:65535"
    assert sorted(os.listdir(root)) == ["dev", "etc", "pause", "proc", "root", "run", "sys", "tmp", "var"]
    for sig in (signal.SIGTERM, signal.SIGINT):
        # unshare without --fork execs /pause itself: the signal goes to it. In a root with no libc,
        # only a static binary starts.
        proc = subprocess.Popen(["unshare", "--root", root, "/pause"], stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)
            assert proc.poll() is None, "pause exited: %s" % proc.stderr.read()
            proc.send_signal(sig)
            assert proc.wait(timeout=5) == 0
            assert "got signal %d" % sig in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --- nginx ------------------------------------------------------------------------------------------------
def test_nginx_configuration_is_valid(rootfs):
    root, config = rootfs["nginx"]
    assert config["config"]["Cmd"] == ["nginx", "-g", "daemon off;"]
    assert config["config"]["ExposedPorts"] == {"80/tcp": {}}
    result = run_in(root, "nginx", "-t")
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_serves_the_welcome_page_and_logs_to_stdout(rootfs):
    """nginx started with its image's Cmd, as root, in a network namespace of its own (unshare --net: only
    its loopback). busybox's wget and netshoot's curl (localhost through /etc/hosts) fetch the page; the
    access log is nginx's stdout."""
    nginx, config = rootfs["nginx"]
    busybox, netshoot = rootfs["busybox"][0], rootfs["netshoot"][0]
    with tempfile.TemporaryDirectory(prefix="apiary-t-nginx-") as tmp:
        script = """
            set -e
            ip link set lo up
            # What a container has: /dev/stdout -> /proc/self/fd/1 (this mount namespace only).
            mount --rbind /dev {nginx}/dev
            mount -t proc proc {nginx}/proc
            chroot {nginx} {cmd} >{tmp}/stdout 2>{tmp}/stderr &
            for i in $(seq 100); do
                if chroot {busybox} wget -qO- http://127.0.0.1/ >{tmp}/page 2>/dev/null; then break; fi
                sleep 0.1
            done
            echo "busybox: $(grep -o '<title>.*</title>' {tmp}/page)"
            echo "netshoot: $(chroot {netshoot} curl -sf http://localhost/ | grep -o '<h1>.*</h1>')"
            chroot {busybox} wget -qO- http://127.0.0.1/nothing-here 2>/dev/null || true
            # nginx logs a request after answering it: wait for the line before the namespace ends.
            for i in $(seq 50); do grep -q nothing-here {tmp}/stdout && break; sleep 0.1; done
        """.format(nginx=shlex.quote(nginx), busybox=shlex.quote(busybox), netshoot=shlex.quote(netshoot),
                   tmp=shlex.quote(tmp), cmd=" ".join(shlex.quote(a) for a in config["config"]["Cmd"]))
        # nginx ends with the PID namespace, i.e. with the script.
        result = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "sh", "-c", script],
                                capture_output=True, text=True, timeout=60)
        with open(os.path.join(tmp, "stdout")) as f:
            access = f.read()
        with open(os.path.join(tmp, "stderr")) as f:
            errors = f.read()
    assert "busybox: <title>Welcome to nginx!</title>" in result.stdout, (result, errors)
    assert "netshoot: <h1>Welcome to nginx!</h1>" in result.stdout, (result, errors)
    assert '"GET / HTTP/1.1" 200' in access, access
    assert '"GET /nothing-here HTTP/1.1" 404' in access, access
    assert os.readlink(os.path.join(nginx, "var/log/nginx/error.log")) == "/dev/stderr"


# --- busybox ----------------------------------------------------------------------------------------------
def test_busybox_has_its_applets(rootfs):
    root, config = rootfs["busybox"]
    assert config["config"]["Cmd"] == ["sh"]
    result = run_in(root, "sh", "-c", "which wget ping nslookup sleep sh; "
                                      "sleep 0 && echo slept; wget --help 2>&1 | head -3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for applet, path in zip(["wget", "ping", "nslookup", "sleep", "sh"], lines):
        assert path.endswith("/" + applet), lines
        assert os.readlink(os.path.join(root, path.lstrip("/"))) == "/bin/busybox", path
    assert "slept" in lines
    assert "Usage: wget" in result.stdout


# --- netshoot ---------------------------------------------------------------------------------------------
NETSHOOT_CHECKS = {
    "curl": (["curl", "--version"], "curl 7."),
    "dig": (["dig", "-v"], "DiG 9."),
    "nslookup": (["nslookup", "-version"], "nslookup 9."),
    "python3": (["python3", "-c", "1"], ""),
    "ping": (["ping", "-V"], "iputils"),
    "ip": (["ip", "-V"], "iproute2"),
    "nc": (["nc", "-h"], "OpenBSD netcat"),
    "socat": (["socat", "-V"], "socat version"),
    "tcpdump": (["tcpdump", "--version"], "tcpdump version"),
    "iperf3": (["iperf3", "-v"], "iperf 3."),
    "bash": (["bash", "-c", "echo $BASH_VERSION"], "5."),
    "sh": (["sh", "-c", "echo sh works"], "sh works"),
    # OpenSSL finds the CA bundle (curl uses the same file).
    "ca-bundle": (["python3", "-c", "import ssl; print('CAs', ssl.create_default_context().cert_store_stats()"
                   "['x509_ca'] > 100)"], "CAs True"),
    # /etc/nsswitch.conf + /etc/hosts through glibc's resolver.
    "resolve": (["python3", "-c", "import socket; print(socket.gethostbyname('localhost'))"], "127.0.0.1"),
    "tcpdump-user": (["id", "tcpdump"], "uid="),
}


@pytest.mark.parametrize("check", sorted(NETSHOOT_CHECKS))
def test_netshoot_tool_runs(rootfs, check):
    root, config = rootfs["netshoot"]
    assert config["config"]["Cmd"] == ["bash"]
    argv, expected = NETSHOOT_CHECKS[check]
    result = run_in(root, *argv)
    assert result.returncode == 0, (argv, result.stdout, result.stderr)
    assert expected in result.stdout + result.stderr, (argv, result.stdout, result.stderr)
