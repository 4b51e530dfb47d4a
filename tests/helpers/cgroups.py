"""Cgroups of a test's (or bench's) own, under the cgroup2 mount and never its root: the socket
programs are attached only there. On the way out whatever still runs in them (only processes the
caller put there) is killed and the cgroups removed, which detaches the programs with them."""
import contextlib
import os
import secrets
import signal
import time

from apiary.datapath.loader import cgroup2_mount


def _empty_and_remove(path: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with open(os.path.join(path, "cgroup.procs")) as procs:
            pids = [int(line) for line in procs if line.strip()]
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    os.rmdir(path)


@contextlib.contextmanager
def scratch_cgroups(prefix: str, children=()):
    """<prefix><random>/ and one sub-cgroup per child name; yields (root path, {child: path})."""
    root = os.path.join(cgroup2_mount(), prefix + secrets.token_hex(4))
    made = [root] + [os.path.join(root, child) for child in children]
    try:
        for path in made:
            os.mkdir(path)
        yield root, dict(zip(children, made[1:]))
    finally:
        for path in reversed(made):
            if os.path.isdir(path):
                _empty_and_remove(path)
