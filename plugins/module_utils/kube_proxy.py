# -*- coding: utf-8 -*-
# Copyright (c) Apiary developers
# Apache-2.0 (see galaxy.yml)
"""kube-proxy's iptables rules on a node: which backend holds them, which chains are kube-proxy's, and the
iptables-restore input that removes exactly those (and the jumps into them), one atomic commit per table.

Pure functions on iptables-save text, plus the decision whether a Kubernetes API can be used; the module
runs the commands. Standard library only (modules run with the node's Python).
"""

from __future__ import annotations

import os
import shlex

# What kube-proxy (1.28+) creates and removes on `kube-proxy --cleanup` (CleanupLeftovers), plus the canary
# chains its monitor keeps. Kubelet's chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT and the
# KUBE-MARK-DROP of old kubelets) are not kube-proxy's and stay.
OWNED_CHAINS = {
    'nat': ('KUBE-SERVICES', 'KUBE-NODEPORTS', 'KUBE-POSTROUTING', 'KUBE-MARK-MASQ', 'KUBE-PROXY-CANARY'),
    'filter': ('KUBE-SERVICES', 'KUBE-EXTERNAL-SERVICES', 'KUBE-FORWARD', 'KUBE-NODEPORTS',
               'KUBE-PROXY-FIREWALL', 'KUBE-PROXY-CANARY'),
    'mangle': ('KUBE-PROXY-CANARY',),
}
# Per service port and endpoint, in nat only (isServiceChainName).
SERVICE_CHAIN_PREFIXES = ('KUBE-SVC-', 'KUBE-SVL-', 'KUBE-EXT-', 'KUBE-FW-', 'KUBE-SEP-')
TABLES = ('nat', 'filter', 'mangle')
FAMILIES = ('iptables', 'ip6tables')
BACKENDS = ('nft', 'legacy')
# Chains only a kubelet creates: where one of them is, that backend is the node's (as iptables-wrapper decides).
BACKEND_HINTS = ('KUBE-IPTABLES-HINT', 'KUBE-KUBELET-CANARY')


class Table(object):
    """One table of iptables-save output: chain names in order and the rule lines ("-A ...") as printed."""

    def __init__(self, name):
        self.name = name
        self.chains = []
        self.rules = []


def parse_save(text):
    """iptables-save output -> {table: Table}. Comments and counters are left out."""
    tables = {}
    current = None
    for line in text.splitlines():
        if line.startswith('*'):
            current = tables.setdefault(line[1:].strip(), Table(line[1:].strip()))
        elif current is None or not line or line.startswith('#') or line == 'COMMIT':
            continue
        elif line.startswith(':'):
            current.chains.append(line[1:].split()[0])
        elif line.startswith('-A '):
            current.rules.append(line)
    return tables


def rule_chain(rule):
    return rule.split(None, 2)[1]


def rule_target(rule):
    """The chain or target a rule jumps or goes to (-j/-g), or None."""
    words = shlex.split(rule)
    for index, word in enumerate(words[:-1]):
        if word in ('-j', '--jump', '-g', '--goto'):
            return words[index + 1]
    return None


def is_owned(table, chain):
    return chain in OWNED_CHAINS.get(table, ()) or (table == 'nat' and chain.startswith(SERVICE_CHAIN_PREFIXES))


def plan_table(table):
    """(chains, jumps) to remove from a Table: kube-proxy's chains, and every rule outside them that jumps
    into one (a chain cannot be deleted while referenced)."""
    chains = [c for c in table.chains if is_owned(table.name, c)]
    owned = set(chains)
    jumps = [r for r in table.rules if rule_chain(r) not in owned and rule_target(r) in owned]
    return chains, jumps


def restore_input(plans):
    """iptables-restore --noflush input removing the planned chains and jumps: each table is one commit.
    plans: {table: (chains, jumps)}. Declaring a chain flushes it; then the jumps go, then the chains."""
    blocks = []
    for name in TABLES:
        chains, jumps = plans.get(name, ((), ()))
        if not chains and not jumps:
            continue
        lines = ['*' + name]
        lines += [':%s - [0:0]' % c for c in chains]
        lines += ['-D' + j[2:] for j in jumps]
        lines += ['-X ' + c for c in chains]
        lines.append('COMMIT')
        blocks.append('\n'.join(lines) + '\n')
    return ''.join(blocks)


def table_lines(table, plan=None):
    """A table as stable text for a diff (no counters), without the planned chains and jumps if given."""
    chains, jumps = plan or ((), ())
    gone = set(chains)
    out = ['*' + table.name] + [':' + c for c in table.chains if c not in gone]
    removed = set(jumps)
    out += [r for r in table.rules if rule_chain(r) not in gone and r not in removed]
    return '\n'.join(out) + '\n'


def count_rules(text):
    return sum(1 for line in text.splitlines() if line.startswith('-'))


def has_hint(text):
    mangle = parse_save(text).get('mangle')
    return mangle is not None and any(c in BACKEND_HINTS for c in mangle.chains)


def detect_backend(saves):
    """Which iptables backend the node uses, the way kube-proxy's image decides (iptables-wrapper): the one
    whose mangle table holds kubelet's hint chain (nft looked at first), else the one with more rules (a tie
    is nft). saves: {backend: iptables-save and ip6tables-save output together, or None if not installed}.
    Returns None when neither backend is installed."""
    present = [b for b in BACKENDS if saves.get(b) is not None]
    if not present:
        return None
    for backend in present:
        if has_hint(saves[backend]):
            return backend
    return max(present, key=lambda b: (count_rules(saves[b]), b == 'nft'))


def kube_api_plan(kubeconfig, kubectl):
    """Whether the Kubernetes API can be used: (argv prefix for kubectl, None) or (None, why not).
    kubeconfig: the path given (or None); kubectl: the kubectl path found on the node (or None)."""
    if not kubeconfig:
        return None, 'no Kubernetes API reachable: no kubeconfig given'
    if not os.path.isfile(kubeconfig):
        return None, 'no Kubernetes API reachable: no kubeconfig at %s' % kubeconfig
    if not kubectl:
        return None, 'no Kubernetes API reachable: kubectl is not installed on this node'
    return [kubectl, '--kubeconfig', kubeconfig], None


def daemonset_state(rc, out, err):
    """`kubectl get daemonset kube-proxy` -> 'present', 'absent', or raises RuntimeError (API not usable)."""
    if rc == 0:
        return 'present'
    if 'NotFound' in err or 'not found' in err:
        return 'absent'
    raise RuntimeError((err or out).strip() or 'kubectl exited %d' % rc)
