#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Apiary developers
# Apache-2.0 (see galaxy.yml)
from __future__ import annotations

DOCUMENTATION = r"""
module: network_policy
short_description: Apply or delete network policies (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy)
description:
  - A thin wrapper of the node runtime. O(state=present) runs C(apiary policy import -o json), which validates
    every object (unknown fields, ports, CIDRs, selectors, L7 rules without a proxy, ...) and, only when all of
    them are valid, stores them for every node's agent; O(state=absent) runs C(apiary policy delete -o json).
  - Nothing is changed when any object is invalid; the error names the object and the field.
  - Idempotent: an object stored as given reports no change. The module returns once the agent of the node it
    runs on has the new policy in its datapath (C(enforced)); the other nodes follow within milliseconds.
  - Run it on one node (for example C(run_once) on the first control-plane node); for a lab node, through
    the M(apiary.cluster.netns) connection.
author: Apiary developers
version_added: 0.1.0
attributes:
  check_mode:
    support: full
    description: Passes C(--check): the objects are validated and compared, nothing is stored.
  diff_mode:
    support: full
    description: Each changed object before and after, as YAML.
options:
  definition:
    description:
      - The policy objects, inline: one object, a list of them, or YAML text (several documents allowed).
      - Mutually exclusive with O(src).
    type: raw
  src:
    description: A YAML or JSON file with the policy objects, on the managed node.
    type: path
  namespace:
    description: The namespace of namespaced objects that do not name one.
    type: str
    default: default
  state:
    description: V(present) validates and stores the objects, V(absent) deletes the objects they name.
    type: str
    choices: [present, absent]
    default: present
  socket:
    description: The node agent's unix socket.
    type: path
    default: /var/run/apiary/apiary.sock
  apiary_bin:
    description: The C(apiary) command of the node runtime.
    type: path
    default: /usr/local/bin/apiary
"""

EXAMPLES = r"""
- name: Let the backend reach the frontend on 80/TCP
  apiary.cluster.network_policy:
    definition:
      apiVersion: cilium.io/v2
      kind: CiliumNetworkPolicy
      metadata: {name: allow-frontend, namespace: network-policy-test}
      spec:
        endpointSelector: {matchLabels: {role: frontend}}
        ingress:
          - fromEndpoints: [{matchLabels: {role: backend}}]
            toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  run_once: true

- name: The policies of a file shipped to the node
  apiary.cluster.network_policy:
    src: /etc/apiary/policies/frontend-backend-icmp-policy.yaml

- name: Remove them
  apiary.cluster.network_policy:
    src: /etc/apiary/policies/frontend-backend-icmp-policy.yaml
    state: absent
"""

RETURN = r"""
results:
  description: Each object and what was (or, in check mode, would be) done to it.
  returned: always
  type: list
  elements: dict
  sample: [{object: CiliumNetworkPolicy network-policy-test/allow-frontend, action: created}]
revision:
  description: The policy revision of the node's agent afterwards.
  returned: always
  type: int
enforced:
  description: Whether the node's datapath had the change when the module returned.
  returned: always
  type: bool
"""

import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

try:
    import yaml
except ImportError:  # only needed to show diffs as YAML
    yaml = None


def definition_text(definition):
    """YAML text of the inline definition (text is taken as it is)."""
    if isinstance(definition, str):
        return definition
    return json.dumps(definition)


def as_yaml(obj):
    if obj is None:
        return ''
    if yaml is None:
        return json.dumps(obj, indent=2, sort_keys=True) + '\n'
    return yaml.safe_dump(obj, default_flow_style=False, sort_keys=True)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            definition=dict(type='raw'),
            src=dict(type='path'),
            namespace=dict(type='str', default='default'),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            socket=dict(type='path', default='/var/run/apiary/apiary.sock'),
            apiary_bin=dict(type='path', default='/usr/local/bin/apiary'),
        ),
        mutually_exclusive=[('definition', 'src')],
        required_one_of=[('definition', 'src')],
        supports_check_mode=True,
    )
    params = module.params
    if not os.access(params['apiary_bin'], os.X_OK):
        module.fail_json(msg='the runtime (%s) is not installed (the node role installs it)' % params['apiary_bin'])
    if params['src'] and not os.path.isfile(params['src']):
        module.fail_json(msg='src: %s is not a file on the node' % params['src'])

    tmp = None
    try:
        path = params['src']
        if path is None:
            fd, tmp = tempfile.mkstemp(prefix='apiary-policy-', suffix='.yaml')
            with os.fdopen(fd, 'w') as handle:
                handle.write(definition_text(params['definition']))
            path = tmp
        cmd = [params['apiary_bin'], 'policy', 'import' if params['state'] == 'present' else 'delete',
               '-f', path, '-n', params['namespace'], '--socket', params['socket'], '-o', 'json']
        if module.check_mode:
            cmd.append('--check')
        rc, out, err = module.run_command(cmd)
    finally:
        if tmp:
            os.unlink(tmp)
    if rc != 0:
        module.fail_json(msg=err.strip() or out.strip() or 'exit %d' % rc, cmd=cmd, rc=rc)
    try:
        result = json.loads(out)
    except ValueError:
        module.fail_json(msg='%s printed no JSON' % ' '.join(cmd), stdout=out, stderr=err)

    changed = [r for r in result['results'] if r['action'] not in ('unchanged', 'not found')]
    diff = [{'before_header': r['object'], 'after_header': r['object'],
             'before': as_yaml(r.get('before')), 'after': as_yaml(r.get('after'))} for r in changed]
    module.exit_json(changed=bool(changed), diff=diff,
                     results=[{'object': r['object'], 'action': r['action']} for r in result['results']],
                     revision=result['revision'], enforced=result['enforced'])


if __name__ == '__main__':
    main()
