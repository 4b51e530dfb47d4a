"""A bpffs of the test's own: a new instance mounted on a temp folder (never /sys/fs/bpf), so pins
of a test can neither meet nor outlive anyone else's; unmounted and removed afterwards."""
import contextlib
import os
import subprocess
import tempfile


@contextlib.contextmanager
def private_bpffs():
    path = tempfile.mkdtemp(prefix="apiary-t-bpffs-")
    subprocess.run(["mount", "-t", "bpf", "bpffs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=False)
        os.rmdir(path)
