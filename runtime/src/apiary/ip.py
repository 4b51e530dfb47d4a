"""iproute2 from Python: `ip` (JSON output) run in this or another network namespace.

The runtime drives links, addresses and routes through Debian's `ip`, which every node has;
a namespace is given as a path (CNI_NETNS may be /run/netns/x or /proc/<pid>/ns/net).
"""
from __future__ import annotations

import json
import subprocess

from apiary.errors import UserError


class IpError(UserError):
    """An `ip` command failed; the message has the command and what ip said."""


def _argv(args, netns_path):
    prefix = ["nsenter", "--net=%s" % netns_path] if netns_path else []
    return prefix + ["ip"] + list(args)


def run(args, netns_path: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(_argv(args, netns_path), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise IpError("ip %s: %s" % (" ".join(args), proc.stderr.strip() or "exit %d" % proc.returncode))
    return proc.stdout


def batch(lines: list[str], netns_path: str | None = None) -> None:
    """Run several `ip` commands in one process (ip -batch), stopping at the first failure."""
    proc = subprocess.run(_argv(["-batch", "-"], netns_path), input="\n".join(lines) + "\n",
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise IpError("ip -batch: %s" % (proc.stderr.strip() or "exit %d" % proc.returncode))


def query(args, netns_path: str | None = None) -> list:
    """`ip -j ARGS` as parsed JSON ([] when ip prints nothing)."""
    out = run(["-j"] + list(args), netns_path)
    return json.loads(out) if out.strip() else []


def link(name: str, netns_path: str | None = None, details: bool = False) -> dict | None:
    """The link called `name` (ifindex, address, flags, ...; with details, linkinfo) or None."""
    args = ["-j"] + (["-d"] if details else []) + ["link", "show", "dev", name]
    proc = subprocess.run(_argv(args, netns_path), capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    links = json.loads(proc.stdout or "[]")
    return links[0] if links else None
