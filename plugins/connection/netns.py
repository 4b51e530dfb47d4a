# -*- coding: utf-8 -*-
# Copyright (c) Apiary developers
# Based on community.general's chroot connection plugin and ansible-core's local plugin.
# Apache-2.0 (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
author: Apiary developers
name: netns
short_description: Run tasks inside a named network namespace on the controller
description:
  - Runs commands on the controller inside the network namespace C(/run/netns/NAME), the way the Apiary lab
    runs its nodes. Only the network namespace is entered (C(nsenter --net=/run/netns/NAME)); the mount, PID
    and cgroup namespaces stay the host's.
  - C(ip netns exec) is deliberately not used. It also unshares the mount namespace and remounts C(/sys),
    which hides C(/sys/fs/bpf) and the cgroup mounts that the node roles need.
  - Files are copied locally, since lab nodes share the controller's filesystem.
  - Requires root (entering a namespace needs CAP_SYS_ADMIN).
version_added: 0.1.0
options:
  remote_addr:
    description:
      - The name of the network namespace to run in (a file under C(/run/netns)).
    type: string
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
  executable:
    description:
      - The shell that runs the commands inside the namespace.
    type: string
    ini:
      - section: defaults
        key: executable
    env:
      - name: ANSIBLE_EXECUTABLE
    vars:
      - name: ansible_executable
    default: /bin/sh
  nsenter_exe:
    description:
      - The nsenter binary.
    type: string
    ini:
      - section: netns_connection
        key: nsenter_exe
    env:
      - name: ANSIBLE_NETNS_NSENTER_EXE
    vars:
      - name: ansible_netns_nsenter_exe
    default: nsenter
extends_documentation_fragment:
  - connection_pipelining
notes:
  - The remote user is ignored; tasks run as the user running Ansible (root).
  - If the namespace is missing, the task fails with a message to re-run C(cluster.yml), which rebuilds the lab.
seealso:
  - module: apiary.cluster.lab_topology
"""

EXAMPLES = r"""
# inventory/lab/hosts.yml
# k8s_cluster:
#   vars:
#     ansible_connection: apiary.cluster.netns
#   hosts:
#     node1:
#       ansible_host: apiary-node1

- name: Show a lab node's interfaces
  hosts: node1
  connection: apiary.cluster.netns
  tasks:
    - name: List addresses inside the node's namespace
      ansible.builtin.command: ip -j addr
      changed_when: false
"""

import os
import shutil
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.process import get_bin_path
from ansible.module_utils.common.text.converters import to_bytes, to_native
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display
from ansible_collections.apiary.cluster.plugins.module_utils.netns import netns_exists, nsenter_argv

display = Display()


class Connection(ConnectionBase):
    """Local connection whose commands run inside a named network namespace."""

    transport = 'apiary.cluster.netns'
    has_pipelining = True
    has_tty = False
    default_user = 'root'

    def __init__(self, play_context, new_stdin, *args, **kwargs):
        super().__init__(play_context, new_stdin, *args, **kwargs)
        self.nsenter = None

    @property
    def netns(self):
        return self.get_option('remote_addr')

    def _connect(self):
        if os.geteuid() != 0:
            raise AnsibleConnectionFailure('the netns connection needs root to enter %s' % self.netns)
        exe = self.get_option('nsenter_exe')
        try:
            self.nsenter = exe if os.path.isabs(exe) else get_bin_path(exe)
        except ValueError as e:
            raise AnsibleConnectionFailure(str(e))
        self._check_netns()
        super()._connect()
        if not self._connected:
            display.vvv('ENTER NETNS %s' % self.netns, host=self.netns)
            self._connected = True
        return self

    def _check_netns(self):
        # Checked on every command: the lab can lose a namespace between tasks.
        if not netns_exists(self.netns):
            raise AnsibleConnectionFailure(
                'network namespace %s does not exist; re-run cluster.yml to repair the lab' % self.netns)

    def exec_command(self, cmd, in_data=None, sudoable=False):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        self._check_netns()
        argv = nsenter_argv(self.netns, [self.get_option('executable'), '-c', cmd], nsenter=self.nsenter)
        display.vvv('EXEC %s' % argv, host=self.netns)
        proc = subprocess.Popen([to_bytes(a, errors='surrogate_or_strict') for a in argv],
                                stdin=subprocess.PIPE if in_data is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = proc.communicate(in_data)
        return proc.returncode, stdout, stderr

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        display.vvv('PUT %s TO %s' % (in_path, out_path), host=self.netns)
        self._copy(in_path, self._absolute(out_path))

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        display.vvv('FETCH %s TO %s' % (in_path, out_path), host=self.netns)
        self._copy(self._absolute(in_path), out_path)

    @staticmethod
    def _absolute(path):
        # Like chroot: a relative remote path is taken from "/".
        return os.path.normpath(os.path.join(os.path.sep, path))

    @staticmethod
    def _copy(src, dest):
        # Lab nodes share the controller's filesystem: no need to go through the namespace.
        b_src, b_dest = to_bytes(src, errors='surrogate_or_strict'), to_bytes(dest, errors='surrogate_or_strict')
        if not os.path.exists(b_src):
            raise AnsibleFileNotFound('file or module does not exist: %s' % to_native(src))
        try:
            shutil.copyfile(b_src, b_dest)
        except shutil.SameFileError:
            pass
        except OSError as e:
            raise AnsibleError('failed to copy %s to %s: %s' % (to_native(src), to_native(dest), to_native(e)))

    def close(self):
        super().close()
        self._connected = False
