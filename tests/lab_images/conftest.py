"""The lab's images, built once per session into a temporary OCI layout (removed at the end, also after a
failure), and unpacked root filesystems to run their programs in."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from lab import images

NAMES = {
    "pause": "registry.k8s.io/pause:3.10.1",
    "nginx": "docker.io/library/nginx:latest",
    "busybox": "docker.io/library/busybox:latest",
    "netshoot": "docker.io/nicolaka/netshoot:latest",
}

@pytest.fixture(scope="session")
def built():
    """(layout dir, index entries) of every lab image."""
    if os.geteuid() != 0:
        pytest.fail("the image builder runs as root (apt-get install, chroot into the images)")
    tmp = tempfile.mkdtemp(prefix="apiary-t-images-")
    try:
        layout = os.path.join(tmp, "layout")
        with tempfile.TemporaryDirectory(prefix="apiary-t-work-") as work:
            entries = images.build(images.lab_images(work), layout, log=lambda *a: None)
        yield layout, entries
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def layout(built):
    return built[0]


@pytest.fixture(scope="session")
def rootfs(layout):
    """Short name (pause, nginx, busybox, netshoot) -> (unpacked root filesystem, image config)."""
    tmp = tempfile.mkdtemp(prefix="apiary-t-rootfs-")
    try:
        unpacked = {}
        for short, name in NAMES.items():
            dest = os.path.join(tmp, short)
            os.mkdir(dest)
            unpacked[short] = (dest, images.unpack(layout, name, dest))
        yield unpacked
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_in(root: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run argv inside root filesystem `root` (its own mount and PID namespaces, chrooted), with the
    images' PATH."""
    return subprocess.run(["unshare", "--mount", "--pid", "--fork", "--root", root, *argv],
                          capture_output=True, text=True, timeout=timeout,
                          env={"PATH": images.PATH, "HOME": "/root", "LC_ALL": "C"})
