#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Apiary developers
# Apache-2.0 (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
module: bpf_datapath
short_description: Load and attach the Apiary BPF datapath on a node, or remove it
description:
  - A thin wrapper of the node runtime. O(state=present) runs C(apiary datapath apply -o json), which loads
    the objects in O(objects_dir) with libbpf, pins maps and programs under O(pin_dir), attaches
    C(from_netdev) to O(uplink), creates C(apiary_vxlan) and attaches C(from_overlay)/C(to_overlay) to it in
    tunnel mode, and re-attaches C(from_container) to every endpoint's lxc device. O(state=absent) runs
    C(apiary datapath remove -o json), which detaches all of it, deletes C(apiary_vxlan) and unpins.
  - Idempotent. The same objects (by sha256) with every attachment in place change nothing and reload
    nothing. New objects are loaded, then every filter is swapped atomically, so established connections
    are never dropped.
  - Runs in the node's network namespace (for a lab node, through the M(apiary.cluster.netns) connection).
author: Apiary developers
version_added: 0.1.0
attributes:
  check_mode:
    support: full
    description: Passes C(--check) to the runtime, which changes nothing and lists what it would do.
  diff_mode:
    support: full
    description: The programs (name, id, tag) before and after.
options:
  objects_dir:
    description: Folder with C(bpf_lxc.o), C(bpf_host.o) and C(bpf_overlay.o). Required with O(state=present).
    type: path
  pin_dir:
    description: The node's folder on bpffs for the maps and the programs (C(progs/)).
    type: path
    required: true
  uplink:
    description: The node's uplink device.
    type: str
    default: eth0
  routing_mode:
    description: V(native) routes pod CIDRs over the underlay; V(tunnel) encapsulates them in VXLAN (C(apiary_vxlan)).
    type: str
    choices: [native, tunnel]
    default: native
  state:
    description: V(present) loads and attaches, V(absent) removes.
    type: str
    choices: [present, absent]
    default: present
  state_file:
    description: Where the runtime records what it loaded (default C(datapath.json) beside O(objects_dir)).
    type: path
  cgroup:
    description:
      - The cgroup v2 folder whose processes' connects the socket load-balancing programs (C(bpf_sock.o))
        translate, absolute or relative to the cgroup2 mount (e.g. C(kubepods.slice)). Never the root cgroup.
      - Without it, O(state=present) attaches no socket programs (and detaches those a previous run
        attached); O(state=absent) detaches them from the cgroup the last apply used.
    type: str
  apiary_bin:
    description: The C(apiary) command of the node runtime.
    type: path
    default: /usr/local/bin/apiary
notes:
  - With O(state=absent), a node without the runtime (already reset) is left alone (not changed).
  - In check mode, a node whose runtime or objects are not installed yet reports a change without running anything.
"""

EXAMPLES = r"""
- name: Load the datapath
  apiary.cluster.bpf_datapath:
    objects_dir: /var/lib/apiary/bpf
    pin_dir: /sys/fs/bpf/apiary
    uplink: eth0
    routing_mode: tunnel

- name: Remove it
  apiary.cluster.bpf_datapath:
    pin_dir: /sys/fs/bpf/apiary
    state: absent
"""

RETURN = r"""
actions:
  description: What was done (or, in check mode, would be done), one line each.
  returned: always
  type: list
  elements: str
  sample: ["load bpf_lxc.o (sha256 120d1c2a4a12)", "replace from_container on lxc0a1b2c3d4e5 ingress"]
programs:
  description: The pinned programs afterwards; in check mode a program to be reloaded has id and tag null.
  returned: always
  type: dict
  sample: {from_netdev: {id: 1792, tag: 97709299fd13f718}}
previous_programs:
  description: The pinned programs before.
  returned: always
  type: dict
objects:
  description: sha256 of each object file (O(state=present)).
  returned: success
  type: dict
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule


def program_lines(programs):
    return ''.join('%s id %s tag %s\n' % (name, info.get('id'), info.get('tag'))
                   for name, info in sorted(programs.items()))


def command(params, check_mode):
    cmd = [params['apiary_bin'], 'datapath', 'apply' if params['state'] == 'present' else 'remove',
           '--pin-dir', params['pin_dir'], '--uplink', params['uplink'], '-o', 'json']
    if params['state'] == 'present':
        cmd += ['--objects', params['objects_dir'], '--routing-mode', params['routing_mode']]
    if params['state_file']:
        cmd += ['--state-file', params['state_file']]
    if params['cgroup']:
        cmd += ['--cgroup', params['cgroup']]
    if check_mode:
        cmd.append('--check')
    return cmd


def not_installed(module):
    """What is missing for the runtime to run at all, or None."""
    params = module.params
    if not os.access(params['apiary_bin'], os.X_OK):
        return 'the runtime (%s)' % params['apiary_bin']
    if params['state'] == 'present' and not os.path.isdir(params['objects_dir']):
        return 'the BPF objects (%s)' % params['objects_dir']
    return None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            objects_dir=dict(type='path'),
            pin_dir=dict(type='path', required=True),
            uplink=dict(type='str', default='eth0'),
            routing_mode=dict(type='str', choices=['native', 'tunnel'], default='native'),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            state_file=dict(type='path'),
            cgroup=dict(type='str'),
            apiary_bin=dict(type='path', default='/usr/local/bin/apiary'),
        ),
        required_if=[('state', 'present', ['objects_dir'])],
        supports_check_mode=True,
    )
    params = module.params
    missing = not_installed(module)
    if missing and params['state'] == 'absent':
        module.exit_json(changed=False, actions=[], programs={}, previous_programs={},
                         msg='%s is not installed: nothing to remove' % missing)
    if missing and module.check_mode:
        module.exit_json(changed=True, actions=['load the datapath once %s is installed' % missing],
                         programs={}, previous_programs={})
    if missing:
        module.fail_json(msg='%s is not installed (the node role installs it)' % missing)

    cmd = command(params, module.check_mode)
    rc, out, err = module.run_command(cmd)
    if rc != 0:
        module.fail_json(msg=err.strip() or out.strip() or 'exit %d' % rc, cmd=cmd, rc=rc)
    try:
        result = json.loads(out)
    except ValueError:
        module.fail_json(msg='%s printed no JSON' % ' '.join(cmd), stdout=out, stderr=err)
    programs = result.get('programs', {})
    previous = result.get('previous_programs', {})
    output = dict(changed=result['changed'], actions=result['actions'], programs=programs,
                  previous_programs=previous)
    if 'objects' in result:
        output['objects'] = result['objects']
    if module._diff:
        output['diff'] = dict(before=program_lines(previous), after=program_lines(programs),
                              before_header='%s programs' % params['pin_dir'],
                              after_header='%s programs' % params['pin_dir'])
    module.exit_json(**output)


if __name__ == '__main__':
    main()
