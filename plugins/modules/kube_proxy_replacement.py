#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Apiary developers
# Apache-2.0 (see galaxy.yml)
from __future__ import annotations

DOCUMENTATION = r"""
module: kube_proxy_replacement
short_description: Let Apiary replace kube-proxy on a node (remove exactly kube-proxy's iptables rules), or hand back
description:
  - O(state=present) removes kube-proxy's iptables chains and the rules that jump into them, in iptables and, if
    present, ip6tables. Kube-proxy's chains are those it creates and removes itself on C(kube-proxy --cleanup)
    (1.28 and later) plus its canary chains; in C(nat) V(KUBE-SERVICES), V(KUBE-NODEPORTS), V(KUBE-POSTROUTING),
    V(KUBE-MARK-MASQ), every V(KUBE-SVC-*), V(KUBE-SVL-*), V(KUBE-EXT-*), V(KUBE-FW-*), V(KUBE-SEP-*); in C(filter)
    V(KUBE-SERVICES), V(KUBE-EXTERNAL-SERVICES), V(KUBE-FORWARD), V(KUBE-NODEPORTS), V(KUBE-PROXY-FIREWALL); and
    V(KUBE-PROXY-CANARY) in C(nat), C(filter) and C(mangle).
  - Nothing else changes. Kubelet's chains (V(KUBE-FIREWALL), V(KUBE-KUBELET-CANARY), V(KUBE-IPTABLES-HINT)) stay,
    as do every other chain and rule, byte for byte.
  - Each table is changed in one C(iptables-restore --noflush) commit (declaring a chain flushes it, then the jumps
    into it are deleted, then the chain), so a table is never left half done. Afterwards the tables are read again
    and the module fails if any of kube-proxy's chains is left.
  - The backend is the one kube-proxy would use (its image's C(iptables-wrapper)) unless O(backend) names one; the
    one whose C(mangle) table holds kubelet's V(KUBE-IPTABLES-HINT) or V(KUBE-KUBELET-CANARY) (C(nft) first),
    else the one with more rules (a tie is C(nft)). Every command then uses that backend's
    C(iptables-<backend>-save)/C(-restore) and C(ip6tables-<backend>-save)/C(-restore).
  - With O(kubeconfig), the Kubernetes API comes first; the V(kube-proxy) DaemonSet in V(kube-system) is deleted
    (O(state=present)) and its pods waited for, so no kube-proxy re-creates its rules. If the API cannot be
    reached with the kubeconfig the module fails before changing anything. Without a usable kubeconfig (none given,
    file missing, no C(kubectl)) it says so in RV(kube_api) and does not pretend to have touched a cluster.
  - O(state=present) also writes O(state_file), which records that Apiary serves the node's Services.
    O(state=absent) removes it and nothing else; kube-proxy's rules are not re-created here, kube-proxy must be
    (re)started to program them again (the module says so).
author: Apiary developers
version_added: 0.1.0
attributes:
  check_mode:
    support: full
    description: Lists the chains and jumps it would remove (RV(removed)) and whether the DaemonSet would be deleted;
      changes nothing.
  diff_mode:
    support: full
    description: Each changed table before and after (as iptables-save prints it, without counters), and O(state_file).
options:
  state:
    description: V(present) replaces kube-proxy (removes its rules), V(absent) hands the node back to kube-proxy.
    type: str
    choices: [present, absent]
    default: present
  iptables:
    description: Work on this node's iptables and O(state_file). V(false) uses only the Kubernetes API (O(kubeconfig)),
      for a task run once for the cluster.
    type: bool
    default: true
  backend:
    description: The iptables backend; V(auto) detects it as described above.
    type: str
    choices: [auto, nft, legacy]
    default: auto
  kubeconfig:
    description: A kubeconfig with the right to delete DaemonSets in V(kube-system) (e.g. C(/etc/kubernetes/admin.conf)).
      Without it no Kubernetes API is used.
    type: path
  kubectl:
    description: The C(kubectl) command; by default looked up on the node's PATH.
    type: path
  timeout:
    description: Seconds to wait for the kube-proxy DaemonSet and its pods to be gone.
    type: int
    default: 120
  state_file:
    description: The file recording that Apiary replaces kube-proxy on this node.
    type: path
    default: /var/lib/apiary/kube-proxy-replacement.json
notes:
  - Runs in the node's network namespace (for a lab node, through the M(apiary.cluster.netns) connection).
  - A node without any iptables backend has no kube-proxy rules; it is reported and left alone.
"""

EXAMPLES = r"""
- name: Delete the kube-proxy DaemonSet, once for the cluster
  apiary.cluster.kube_proxy_replacement:
    kubeconfig: /etc/kubernetes/admin.conf
    iptables: false
  run_once: true
  delegate_to: "{{ groups['kube_control_plane'][0] }}"

- name: Remove kube-proxy's rules on every node
  apiary.cluster.kube_proxy_replacement:
    state: present

- name: Hand the node back to kube-proxy
  apiary.cluster.kube_proxy_replacement:
    state: absent
"""

RETURN = r"""
removed:
  description: Per C(family/table), the chains and the jump rules removed (in check mode, that would be removed).
  returned: always
  type: dict
  sample: {"iptables/nat": {"chains": ["KUBE-SERVICES", "KUBE-SVC-NPX46M4PTMTKRN6Y"],
           "jumps": ["-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"]}}
backend:
  description: The iptables backend used (V(nft) or V(legacy)); null without O(iptables) or without any backend.
  returned: always
  type: str
kube_api:
  description: What the Kubernetes API said. C(reachable), C(daemonset) (V(deleted), V(would be deleted),
    V(absent), V(present) or null) and C(msg).
  returned: always
  type: dict
  sample: {reachable: false, daemonset: null, msg: "no Kubernetes API reachable: no kubeconfig given"}
msg:
  description: What was done, in a sentence; for O(state=absent) what kube-proxy needs to take over.
  returned: always
  type: str
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.apiary.cluster.plugins.module_utils.kube_proxy import (
    BACKENDS,
    FAMILIES,
    TABLES,
    daemonset_state,
    detect_backend,
    kube_api_plan,
    parse_save,
    plan_table,
    restore_input,
    table_lines,
)

TAKE_OVER = ('kube-proxy must be (re)started to program its rules again '
             '(kubectl -n kube-system rollout restart daemonset kube-proxy, or deploy it again)')


class KubeProxyReplacement(object):
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.changed = False
        self.diff = []

    def run(self, argv, data=None):
        rc, out, err = self.module.run_command(argv, data=data, binary_data=data is not None)
        if rc != 0:
            self.module.fail_json(msg='%s: %s' % (' '.join(argv), (err or out).strip() or 'exit %d' % rc),
                                  rc=rc, stdin=data)
        return out

    # --- the Kubernetes API ----------------------------------------------------------------------
    def kube_api(self):
        kubectl = self.params['kubectl'] or self.module.get_bin_path('kubectl')
        prefix, why = kube_api_plan(self.params['kubeconfig'], kubectl)
        if prefix is None:
            if self.params['kubeconfig']:
                self.module.warn(why)
            return dict(reachable=False, daemonset=None, msg=why)
        ds = ['-n', 'kube-system', 'daemonset', 'kube-proxy']
        rc, out, err = self.module.run_command(prefix + ['get'] + ds + ['-o', 'name'])
        try:
            found = daemonset_state(rc, out, err)
        except RuntimeError as exc:
            self.module.fail_json(msg='kubeconfig: %s: the Kubernetes API did not answer: %s (nothing was changed)'
                                  % (self.params['kubeconfig'], exc))
        if self.params['state'] == 'absent' or found == 'absent':
            return dict(reachable=True, daemonset=found, msg='kube-proxy DaemonSet is %s' % found)
        self.changed = True
        if self.module.check_mode:
            return dict(reachable=True, daemonset='would be deleted', msg='kube-proxy DaemonSet would be deleted')
        # Foreground deletion returns once the pods are gone: none of them re-creates its rules afterwards.
        self.run(prefix + ['delete'] + ds + ['--cascade=foreground', '--wait=true',
                                             '--timeout=%ds' % self.params['timeout']])
        return dict(reachable=True, daemonset='deleted', msg='kube-proxy DaemonSet deleted')

    # --- iptables --------------------------------------------------------------------------------
    def saves(self):
        """{backend: {family: iptables-save text}} for the installed backends' commands."""
        found = {}
        for backend in BACKENDS:
            for family in FAMILIES:
                path = self.module.get_bin_path('%s-%s-save' % (family, backend))
                if path is None:
                    continue
                rc, out, _err = self.module.run_command([path])
                # ip6tables fails where IPv6 is off: that family simply has no rules.
                found.setdefault(backend, {})[family] = out if rc == 0 else ''
        return found

    def backend(self, saves):
        chosen = self.params['backend']
        if chosen == 'auto':
            return detect_backend(dict((b, ''.join(f.values())) for b, f in saves.items()))
        if chosen not in saves:
            self.module.fail_json(msg='backend: %s is not installed (no %s-%s-save)' % (chosen, FAMILIES[0], chosen))
        return chosen

    def remove_rules(self, backend, saves):
        removed = {}
        for family, text in sorted(saves[backend].items()):
            tables = parse_save(text)
            plans = {}
            for name in TABLES:
                if name not in tables:
                    continue
                chains, jumps = plan = plan_table(tables[name])
                if chains or jumps:
                    plans[name] = plan
                    removed['%s/%s' % (family, name)] = dict(chains=chains, jumps=jumps)
                    self.diff.append(dict(before_header='%s %s' % (family, name), after_header='%s %s' % (family, name),
                                          before=table_lines(tables[name]), after=table_lines(tables[name], plan)))
            if not plans:
                continue
            self.changed = True
            if self.module.check_mode:
                continue
            save = self.module.get_bin_path('%s-%s-save' % (family, backend), required=True)
            self.run([self.module.get_bin_path('%s-%s-restore' % (family, backend), required=True), '--noflush'],
                     data=restore_input(plans))
            left = parse_save(self.run([save]))
            still = ['%s %s' % (n, c) for n in plans if n in left for c in plan_table(left[n])[0]]
            if still:
                self.module.fail_json(msg='%s: kube-proxy chains are back right after removal (%s): is kube-proxy '
                                      'still running on this node?' % (family, ', '.join(still)), removed=removed)
        return removed

    # --- the state file --------------------------------------------------------------------------
    def state_file(self, backend):
        path = self.params['state_file']
        before = None
        if os.path.exists(path):
            with open(path) as handle:
                before = handle.read()
        after = None
        if self.params['state'] == 'present':
            after = json.dumps({'kube_proxy_replacement': True, 'iptables_backend': backend}, sort_keys=True) + '\n'
        if before == after:
            return
        self.changed = True
        self.diff.append(dict(before_header=path, after_header=path, before=before or '', after=after or ''))
        if self.module.check_mode:
            return
        if after is None:
            os.unlink(path)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + '.tmp'
        with open(tmp, 'w') as handle:
            handle.write(after)
        os.rename(tmp, path)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            iptables=dict(type='bool', default=True),
            backend=dict(type='str', choices=['auto', 'nft', 'legacy'], default='auto'),
            kubeconfig=dict(type='path'),
            kubectl=dict(type='path'),
            timeout=dict(type='int', default=120),
            state_file=dict(type='path', default='/var/lib/apiary/kube-proxy-replacement.json'),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params['timeout'] <= 0:
        module.fail_json(msg='timeout: must be a positive number of seconds, got %d' % params['timeout'])
    work = KubeProxyReplacement(module)
    kube_api = work.kube_api()

    backend, removed = None, {}
    if params['iptables']:
        saves = work.saves()
        backend = work.backend(saves)
        if params['state'] == 'present' and backend is not None:
            removed = work.remove_rules(backend, saves)
        work.state_file(backend)

    if params['state'] == 'absent':
        msg = 'Apiary no longer replaces kube-proxy here; ' + TAKE_OVER
        if work.changed:
            module.warn(msg)
    elif not params['iptables']:
        msg = kube_api['msg']
    elif backend is None:
        msg = 'no iptables on this node: no kube-proxy rules to remove'
    else:
        count = sum(len(r['chains']) for r in removed.values())
        msg = '%s %d kube-proxy chains (%s backend)' % ('would remove' if module.check_mode else 'removed', count,
                                                        backend) if count else 'no kube-proxy rules (%s backend)' % backend
    result = dict(changed=work.changed, removed=removed, backend=backend, kube_api=kube_api, msg=msg)
    if module._diff:
        result['diff'] = work.diff
    module.exit_json(**result)


if __name__ == '__main__':
    main()
