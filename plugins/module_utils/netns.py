# -*- coding: utf-8 -*-
# Copyright (c) Apiary developers
# Apache-2.0 (see galaxy.yml)
"""Named network namespaces: find them, and run iproute2 or any command inside one.

Used by modules (lab_topology, the node roles' modules) and by the netns connection
plugin, so it depends on nothing but the standard library. Commands are run by a
``runner``: ``module.run_command`` in modules, ``subprocess`` elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess

# Where `ip netns add` bind-mounts the namespaces it names.
NETNS_DIR = '/run/netns'


class NetnsError(Exception):
    """A command run for a namespace failed; the message carries the command and stderr."""


def netns_path(name):
    return os.path.join(NETNS_DIR, name)


def netns_exists(name):
    # A name left behind without its nsfs bind mount is not a usable namespace.
    path = netns_path(name)
    return os.path.exists(path) and os.path.ismount(path)


def list_netns():
    """Names of the usable named namespaces, sorted."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if netns_exists(n))


def nsenter_argv(name, argv, nsenter='nsenter'):
    """argv that runs `argv` in namespace `name`.

    nsenter joins only the network namespace; `ip netns exec` would also unshare the mount
    namespace and remount /sys, hiding /sys/fs/bpf and the cgroup mounts.
    """
    return [nsenter, '--net=' + netns_path(name), '--'] + list(argv)


def _subprocess_runner(argv):
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


class IpRoute:
    """Runs `ip` (optionally with -n NETNS and -j) through a runner(argv) -> (rc, out, err)."""

    def __init__(self, runner=None, ip='ip'):
        self.runner = runner or _subprocess_runner
        self.ip = ip

    def run(self, args, netns=None, check=True):
        argv = [self.ip] + (['-n', netns] if netns else []) + list(args)
        rc, out, err = self.runner(argv)
        if check and rc != 0:
            raise NetnsError('%s: %s' % (' '.join(argv), (err or out).strip()))
        return rc, out, err

    def json(self, args, netns=None):
        """`ip -j ARGS` parsed; an empty answer (no objects) is []."""
        _rc, out, _err = self.run(['-j'] + list(args), netns=netns)
        return json.loads(out) if out.strip() else []

    def run_in(self, netns, argv, check=True):
        """Any command inside `netns` (e.g. sysctl); nsenter, not `ip netns exec` (see nsenter_argv)."""
        argv = nsenter_argv(netns, argv)
        rc, out, err = self.runner(argv)
        if check and rc != 0:
            raise NetnsError('%s: %s' % (' '.join(argv), (err or out).strip()))
        return rc, out, err
