#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Apiary contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: bpf_probe
short_description: Probe the eBPF features of a node's kernel
version_added: 0.1.0
description:
  - Asks the running kernel, through the raw C(bpf(2)) syscall and rtnetlink, which eBPF program types,
    map types and helpers it supports, and whether BTF, bpffs, cgroup v2 and tc direct-action filters are
    available.
  - Every probe really loads a tiny program or creates a tiny map and closes it right away. The bpffs and tc
    probes run in a forked child inside a throwaway mount or network namespace, so nothing is left on the node.
  - Needs nothing but the Python standard library (3.9 or later), so it runs before anything is installed.
  - Needs root (or C(CAP_BPF), C(CAP_NET_ADMIN) and C(CAP_SYS_ADMIN)); without them the probes report C(EPERM).
author:
  - Apiary contributors
attributes:
  check_mode:
    support: full
    description: The module only reads; it runs the same probes in check mode.
  diff_mode:
    support: none
  facts:
    support: full
options:
  program_types:
    description:
      - Program types to load a minimal C(r0 = 0; exit) program of, named as in C(BPF_PROG_TYPE_*) in lower case
        without the prefix (for example V(sched_cls), V(cgroup_sock_addr)).
    type: list
    elements: str
    default: [sched_cls, sched_act, cgroup_sock_addr, cgroup_sock, cgroup_skb, xdp, socket_filter, tracepoint]
  map_types:
    description:
      - Map types to create, named as in C(BPF_MAP_TYPE_*) in lower case without the prefix (for example V(lru_hash)).
    type: list
    elements: str
    default: [hash, array, percpu_array, lru_hash, lpm_trie, ringbuf, perf_event_array, prog_array]
  helpers:
    description:
      - Helpers to probe per program type, named as in C(BPF_FUNC_*) without the prefix (for example V(redirect_peer)).
      - The default is the helpers the Apiary datapath uses.
    type: list
    elements: dict
    suboptions:
      program_type:
        description: The program type that calls the helper.
        type: str
        required: true
      helper:
        description: The helper's name.
        type: str
        required: true
  btf_path:
    description: Where the kernel's BTF is expected.
    type: path
    default: /sys/kernel/btf/vmlinux
  bpffs_path:
    description: Where bpffs is (to be) mounted.
    type: path
    default: /sys/fs/bpf
notes:
  - The result is also returned as the fact C(apiary_bpf_features).
"""

EXAMPLES = r"""
- name: Probe the kernel with the default set
  apiary.cluster.bpf_probe:

- name: Probe what the datapath needs
  apiary.cluster.bpf_probe:
    program_types: [sched_cls, cgroup_sock_addr]
    map_types: [lru_hash, lpm_trie, ringbuf]
    helpers:
      - {program_type: sched_cls, helper: redirect_peer}
      - {program_type: cgroup_sock_addr, helper: get_socket_cookie}

- name: Fail when tc direct-action is missing
  ansible.builtin.assert:
    that: apiary_bpf_features.tc_direct_action.supported
    fail_msg: "{{ apiary_bpf_features.tc_direct_action.error }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to ansible_facts.
  returned: always
  type: dict
  contains:
    apiary_bpf_features:
      description: What the kernel supports.
      returned: always
      type: dict
      contains:
        kernel:
          description: The kernel release and its parsed version.
          type: dict
          sample: {release: 6.1.0-28-amd64, version: [6, 1, 0]}
        btf:
          description: Whether readable BTF (magic 0xeb9f) is at O(btf_path).
          type: dict
          sample: {present: true, path: /sys/kernel/btf/vmlinux}
        bpffs:
          description: Whether bpffs is mounted at O(bpffs_path), and whether it could be mounted.
          type: dict
          sample: {mounted: false, mountable: true, path: /sys/fs/bpf}
        cgroup2:
          description: Whether a cgroup v2 hierarchy is mounted, and where.
          type: dict
          sample: {present: true, path: /sys/fs/cgroup}
        program_types:
          description: Program type name to whether it loads.
          type: dict
          sample: {sched_cls: true}
        map_types:
          description: Map type name to whether it can be created.
          type: dict
          sample: {lru_hash: true}
        helpers:
          description: C(program_type/helper) to whether the verifier accepts the call.
          type: dict
          sample: {sched_cls/redirect_peer: true, cgroup_sock_addr/get_socket_cookie: true}
        tc_direct_action:
          description: Whether a sched_cls program attaches as a direct-action filter to clsact ingress.
          type: dict
          sample: {supported: true, error: null}
        errors:
          description: The kernel's message for each failed probe, keyed by probe.
          type: dict
          sample: {helpers/sched_cls/redirect_peer: "invalid func unknown#155"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.apiary.cluster.plugins.module_utils.bpf_probe import (
    DEFAULT_HELPERS,
    DEFAULT_MAP_TYPES,
    DEFAULT_PROG_TYPES,
    BpfProbeError,
    probe_all,
)


class BpfProbe(object):
    def __init__(self, module):
        self.module = module

    def run(self):
        params = self.module.params
        helpers = params["helpers"]
        if helpers is None:
            helpers = DEFAULT_HELPERS
        else:
            helpers = [(item["program_type"], item["helper"]) for item in helpers]
        try:
            features = probe_all(params["program_types"], params["map_types"], helpers,
                                 btf_path=params["btf_path"], bpffs_path=params["bpffs_path"])
        except BpfProbeError as exc:
            self.module.fail_json(msg=str(exc))
        # Probing never changes the node.
        self.module.exit_json(changed=False, ansible_facts={"apiary_bpf_features": features})


def main():
    module = AnsibleModule(
        argument_spec=dict(
            program_types=dict(type="list", elements="str", default=DEFAULT_PROG_TYPES),
            map_types=dict(type="list", elements="str", default=DEFAULT_MAP_TYPES),
            helpers=dict(type="list", elements="dict", options=dict(
                program_type=dict(type="str", required=True),
                helper=dict(type="str", required=True),
            )),
            btf_path=dict(type="path", default="/sys/kernel/btf/vmlinux"),
            bpffs_path=dict(type="path", default="/sys/fs/bpf"),
        ),
        supports_check_mode=True,
    )
    BpfProbe(module).run()


if __name__ == "__main__":
    main()
