"""Datapath tests: objects built from bpf/ into a temp folder (never build/), a private bpffs mount,
and network namespaces named apiary-t-<random> that are removed even when a test fails."""
import os
import shutil
import subprocess

import pytest

from tests.helpers.bpffs import private_bpffs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _need(*tools):
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        pytest.skip("needs %s" % ", ".join(missing))


def build_objects(out_dir: str, extra_cflags: str = "") -> str:
    """`make bpf` into out_dir (with extra compiler flags); returns out_dir."""
    _need("make", "clang")
    subprocess.run(["make", "-s", "-C", ROOT, "bpf", "BPF_OUT=%s" % out_dir, "BPF_EXTRA_CFLAGS=%s" % extra_cflags],
                   check=True, capture_output=True, text=True)
    return out_dir


@pytest.fixture(scope="session")
def objects_dir(tmp_path_factory):
    return build_objects(str(tmp_path_factory.mktemp("bpf")))


@pytest.fixture(scope="session")
def variant_objects_dir(tmp_path_factory):
    """The same programs built to also count forwarded packets: other bytes, visible behaviour."""
    return build_objects(str(tmp_path_factory.mktemp("bpf-variant")), "-DAPIARY_METRICS_FORWARDED")


@pytest.fixture
def root_only():
    if os.geteuid() != 0:
        pytest.skip("needs root (bpf(2), network namespaces)")
    _need("ip", "nsenter", "ping")


@pytest.fixture(scope="module")
def bpffs():
    """A bpffs of our own (a new instance, not /sys/fs/bpf), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root (bpf(2), network namespaces)")
    with private_bpffs() as path:
        yield path
