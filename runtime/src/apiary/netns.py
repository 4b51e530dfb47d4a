"""Running code inside another network namespace (a lab node, a pod).

Only the network namespace is switched (like `nsenter --net`), never the mount namespace, so
bpffs and cgroup mounts stay visible.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import socket
import threading

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def path(name: str) -> str:
    """A named namespace's file; a path (e.g. /proc/PID/ns/net, a CNI netns) is taken as it is."""
    return name if name.startswith("/") else os.path.join(NETNS_RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def enter(name: str) -> None:
    """Move the calling thread into network namespace `name` (use in a child process)."""
    fd = os.open(path(name), os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "setns(%s): %s" % (name, os.strerror(err)))
    finally:
        os.close(fd)


def call_in(name: str, func, *args):
    """Run func(*args) in a forked child inside namespace `name` and return its result.

    The caller's own namespace is never changed; an exception in the child is re-raised here.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            enter(name)
            outcome = (True, func(*args))
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
            outcome = (False, exc)
        with os.fdopen(write_fd, "wb") as out:
            try:
                pickle.dump(outcome, out)
            except Exception as exc:  # an unpicklable result or exception
                pickle.dump((False, RuntimeError(repr(exc))), out)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    ok, value = pickle.loads(data) if data else (False, RuntimeError("child died in netns %s" % name))
    if not ok:
        raise value
    return value


def call_in_thread(name: str, func, *args, timeout: float = 60.0):
    """Run func(*args) in a thread of this process that entered namespace `name` (sockets it creates
    live there; the other threads stay where they are). Returns its result, re-raises its exception.
    Cheaper than call_in (no fork), and the result need not be picklable."""
    result = {}

    def run():
        try:
            enter(name)
            result["value"] = func(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=run, name="in-netns", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError("%s did not finish in %s s" % (getattr(func, "__name__", func), timeout))
    if "error" in result:
        raise result["error"]
    return result.get("value")


SO_NETNS_COOKIE = 71


def cookie(name: str) -> int:
    """The kernel's cookie of network namespace `name` (what BPF's bpf_get_netns_cookie() returns for its
    sockets), read from a socket made inside it."""
    def read():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
    return call_in_thread(name, read)
