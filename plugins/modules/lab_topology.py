#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Apiary developers
# Apache-2.0 (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
module: lab_topology
short_description: Build the Apiary lab's isolated network out of network namespaces
description:
  - Reconciles the lab underlay on the controller. A fabric namespace holds a Linux bridge; every node is a
    network namespace whose C(eth0) is one end of a veth pair, the other end (named after the node) sits on
    the bridge. A world namespace, plugged into the bridge the same way, owns the underlay gateway address and
    the first address of O(world_cidr) (on its loopback), standing in for the internet.
  - Never creates or changes anything in the host's root network namespace. Veth pairs are created inside the
    fabric namespace and their node end is moved straight into the node's namespace.
  - Repairs partial breakage, for example a node namespace deleted by hand, or a dangling veth end.
  - All input is validated before anything is changed.
  - Uses iproute2 (C(ip -n NETNS -j)) and C(nsenter); needs root.
author: Apiary developers
version_added: 0.1.0
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The diff lists the planned changes, one per line, for example C(netns apiary-node2: create).
options:
  state:
    description:
      - V(present) builds or repairs the topology; V(absent) deletes the namespaces this module owns
        (fabric, world and every node's), which takes their veth pairs with them.
      - With V(absent), processes still inside those namespaces are stopped first (SIGTERM, SIGKILL after
        10 seconds); otherwise they would keep the namespace alive after its name is gone.
    type: str
    choices: [present, absent]
    default: present
  fabric_netns:
    description: Name of the namespace that holds the underlay bridge.
    type: str
    default: apiary-fabric
  bridge:
    description: Name of the underlay bridge inside O(fabric_netns).
    type: str
    default: br0
  underlay_cidr:
    description: The underlay network; every node address and O(gateway_ip) must lie inside it.
    type: str
    default: 10.77.101.0/24
  gateway_ip:
    description: The nodes' default gateway, owned by O(world_netns).
    type: str
    default: 10.77.101.1
  world_netns:
    description: Name of the namespace standing in for the internet.
    type: str
    default: apiary-world
  world_cidr:
    description:
      - Addresses "on the internet". The first one is put on the world's loopback with this prefix, so the
        world answers for the whole range.
    type: str
    default: 198.51.100.0/24
  pod_netns_prefix:
    description:
      - Pods of the lab live in namespaces named with this prefix (made by C(apiary lab apply)). With
        O(state=absent) they are removed too, before the nodes they hang off.
    type: str
    default: apiary-pod-
  cgroup_root:
    description:
      - The lab's cgroup v2 folder, relative to the cgroup2 mount. Every node gets C(<cgroup_root>/<node name>)
        there: its pods' processes run in it and the node's socket load-balancing programs are attached to it
        (never to the root cgroup). With O(state=absent) the folders are removed, any process left in them ended.
    type: str
    default: apiary-lab
  nodes:
    description: The lab nodes.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Node name; also the name of the node's veth end on the bridge (at most 15 characters).
        type: str
      netns:
        description: Name of the node's network namespace (the node's C(ansible_host)).
        type: str
      ip:
        description: The node's address on the underlay.
        type: str
notes:
  - The world's bridge port is called C(world); no node may use that name.
seealso:
  - name: apiary.cluster.netns connection
    description: Runs tasks inside a node namespace built by this module.
    link: https://example.invalid/apiary
"""

EXAMPLES = r"""
- name: Build the lab underlay
  apiary.cluster.lab_topology:
    nodes:
      - {name: node1, netns: apiary-node1, ip: 10.77.101.11}
      - {name: node2, netns: apiary-node2, ip: 10.77.101.12}

- name: Tear the lab down
  apiary.cluster.lab_topology:
    state: absent
    nodes:
      - {name: node1, netns: apiary-node1, ip: 10.77.101.11}
"""

RETURN = r"""
topology:
  description: The topology as built (or, with O(state=absent), as it was described).
  returned: always
  type: dict
  sample:
    fabric_netns: apiary-fabric
    bridge: br0
    underlay_cidr: 10.77.101.0/24
    gateway_ip: 10.77.101.1
    world_netns: apiary-world
    world_cidr: 198.51.100.0/24
    world_address: 198.51.100.1/24
    nodes:
      - {name: node1, netns: apiary-node1, ip: 10.77.101.11, address: 10.77.101.11/24, peer: node1}
changes:
  description: What was changed (or, in check mode, would be), one line each.
  returned: always
  type: list
  elements: str
  sample: ["netns apiary-node2: create", "apiary-node2 eth0: add 10.77.101.12/24"]
"""

import ipaddress
import os
import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.apiary.cluster.plugins.module_utils.netns import (
    IpRoute, NetnsError, list_netns, nsenter_argv)

WORLD_PEER = 'world'
NODE_IF = 'eth0'
# Interface names: at most IFNAMSIZ-1 characters, none of '/', ':' or whitespace.
IFNAME_RE = re.compile(r'^[A-Za-z0-9_.-]{1,15}$')
NETNS_RE = re.compile(r'^[A-Za-z0-9_.-]{1,64}$')
# Removes cgroup $1 (a leaf): what is still in it is killed (cgroup.kill), then rmdir until it is empty.
REMOVE_CGROUP = '''
for _ in $(seq 100); do rmdir "$1" 2>/dev/null && exit 0; echo 1 > "$1/cgroup.kill" 2>/dev/null; sleep 0.1; done
rmdir "$1"
'''
# Ends every process in namespace $1: SIGTERM, up to 10 s to exit, then SIGKILL.
STOP_PROCESSES = '''
pids=$(ip netns pids "$1"); [ -z "$pids" ] && exit 0
kill -TERM $pids 2>/dev/null
for _ in $(seq 100); do [ -z "$(ip netns pids "$1")" ] && exit 0; sleep 0.1; done
kill -KILL $(ip netns pids "$1") 2>/dev/null; exit 0
'''


def cgroup2_mount():
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)."""
    with open('/proc/mounts') as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[2] == 'cgroup2':
                return fields[1]
    return None


def _valid_name(regex, value):
    return isinstance(value, str) and bool(regex.match(value)) and value not in ('.', '..')


class LabTopology:
    def __init__(self, module, ip=None):
        self.module = module
        self.p = module.params
        self.ip = ip or IpRoute(runner=lambda argv: module.run_command(argv))
        self.changes = []   # (description, argv)

    # --- validation: everything is checked before anything is touched ---------------------
    def validate(self):
        p = self.p
        errors = []
        underlay = world = None
        try:
            underlay = ipaddress.ip_network(p['underlay_cidr'])
        except ValueError as e:
            errors.append('underlay_cidr: %s' % e)
        try:
            world = ipaddress.ip_network(p['world_cidr'])
        except ValueError as e:
            errors.append('world_cidr: %s' % e)
        parts = str(p['cgroup_root']).split('/')
        if not all(_valid_name(NETNS_RE, part) for part in parts):
            # Relative and non-empty: the root cgroup itself must never be the lab's.
            errors.append('cgroup_root: %r must be a relative path of plain names (e.g. apiary-lab)' % p['cgroup_root'])
        if underlay and world and underlay.overlaps(world):
            errors.append('world_cidr %s overlaps underlay_cidr %s' % (world, underlay))
        for field in ('fabric_netns', 'world_netns'):
            if not _valid_name(NETNS_RE, p[field]):
                errors.append('%s: %r is not a valid namespace name' % (field, p[field]))
        if not _valid_name(IFNAME_RE, p['bridge']):
            errors.append('bridge: %r is not a valid interface name' % p['bridge'])
        gateway = self._host_ip('gateway_ip', p['gateway_ip'], underlay, errors)

        seen_names = {p['bridge']: 'the bridge', WORLD_PEER: 'the world port'}
        seen_netns = {p['fabric_netns']: 'fabric_netns', p['world_netns']: 'world_netns'}
        if p['fabric_netns'] == p['world_netns']:
            errors.append('world_netns: %r is also fabric_netns' % p['world_netns'])
        seen_ips = {gateway: 'gateway_ip'} if gateway else {}
        for i, node in enumerate(p['nodes']):
            label = 'nodes[%d] (%s)' % (i, node.get('name') or '?')
            for field in ('name', 'netns', 'ip'):
                if not node.get(field):
                    errors.append('%s: %s is required' % (label, field))
            self._check_name(label, 'name', node.get('name'), IFNAME_RE, 'interface', seen_names, errors)
            self._check_name(label, 'netns', node.get('netns'), NETNS_RE, 'namespace', seen_netns, errors)
            if node.get('ip'):
                addr = self._host_ip('%s: ip' % label, node['ip'], underlay, errors)
                if addr in seen_ips:
                    errors.append('%s: ip %s is already used by %s' % (label, addr, seen_ips[addr]))
                elif addr:
                    seen_ips[addr] = label
        if errors:
            self.module.fail_json(msg='invalid lab topology: ' + '; '.join(errors), errors=errors)
        self.underlay, self.world = underlay, world

    @staticmethod
    def _check_name(label, field, value, regex, kind, seen, errors):
        if not value:
            return
        if not _valid_name(regex, value):
            errors.append('%s: %s %r is not a valid %s name (A-Za-z0-9_.-)' % (label, field, value, kind))
        elif value in seen:
            errors.append('%s: %s %r is already used by %s' % (label, field, value, seen[value]))
        seen.setdefault(value, label)

    @staticmethod
    def _host_ip(label, value, underlay, errors):
        try:
            addr = ipaddress.ip_address(str(value))
        except ValueError:
            errors.append('%s %r is not an IP address' % (label, value))
            return None
        if underlay is None:
            return addr
        if addr not in underlay:
            errors.append('%s %s is outside underlay_cidr %s' % (label, addr, underlay))
        elif underlay.prefixlen < underlay.max_prefixlen - 1 and addr in (underlay.network_address,
                                                                          underlay.broadcast_address):
            errors.append('%s %s is the network or broadcast address of %s' % (label, addr, underlay))
        return addr

    # --- observation ------------------------------------------------------------------------
    def observe(self, netns):
        """Links and IPv4 addresses of a namespace; None if it does not exist."""
        if netns not in self.existing:
            return None
        links = {l['ifname']: l for l in self.ip.json(['-d', 'link', 'show'], netns=netns)}
        for a in self.ip.json(['-4', 'addr', 'show'], netns=netns):
            if a['ifname'] in links:
                links[a['ifname']]['inet'] = ['%s/%s' % (i['local'], i['prefixlen'])
                                              for i in a.get('addr_info', []) if i.get('family') == 'inet']
        return {'links': links,
                'routes': self.ip.json(['-4', 'route', 'show', 'default'], netns=netns),
                'nsids': {n['nsid']: n.get('name') for n in self.ip.json(['netns', 'list-id'], netns=netns)}}

    # --- planning ---------------------------------------------------------------------------
    def plan(self, text, argv):
        self.changes.append((text, argv))

    def plan_ip(self, text, netns, args):
        self.plan(text, ['ip', '-n', netns] + args)

    def topology(self):
        p = self.p
        prefix = self.underlay.prefixlen
        world_addr = '%s/%s' % (next(self.world.hosts(), self.world.network_address), self.world.prefixlen)
        return {
            'fabric_netns': p['fabric_netns'], 'bridge': p['bridge'], 'underlay_cidr': str(self.underlay),
            'gateway_ip': str(p['gateway_ip']), 'world_netns': p['world_netns'], 'world_cidr': str(self.world),
            'world_address': world_addr,
            'nodes': [{'name': n['name'], 'netns': n['netns'], 'ip': str(n['ip']),
                       'address': '%s/%s' % (n['ip'], prefix), 'peer': n['name'],
                       'cgroup': '%s/%s' % (p['cgroup_root'], n['name'])} for n in p['nodes']],
        }

    def cgroup_dir(self, relative):
        if self.cgroup_mount is None:
            self.module.fail_json(msg='no cgroup2 filesystem is mounted: the lab needs cgroup v2 (mount -t cgroup2 '
                                      'none /sys/fs/cgroup)')
        return os.path.join(self.cgroup_mount, relative)

    def plan_cgroups_present(self, topo):
        for path in [self.p['cgroup_root']] + [n['cgroup'] for n in topo['nodes']]:
            if not os.path.isdir(self.cgroup_dir(path)):
                self.plan('cgroup %s: create' % path, ['mkdir', self.cgroup_dir(path)])

    def plan_cgroups_absent(self):
        root = self.cgroup_dir(self.p['cgroup_root'])
        if not os.path.isdir(root):
            return
        children = sorted(name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name)))
        for path in [os.path.join(self.p['cgroup_root'], c) for c in children] + [self.p['cgroup_root']]:
            self.plan('cgroup %s: delete' % path, ['sh', '-c', REMOVE_CGROUP, 'remove', self.cgroup_dir(path)])

    def owned_netns(self):
        pods = sorted(ns for ns in self.existing if ns.startswith(self.p['pod_netns_prefix']))
        return pods + [n['netns'] for n in self.p['nodes']] + [self.p['world_netns'], self.p['fabric_netns']]

    def plan_absent(self):
        for ns in self.owned_netns():
            if ns not in self.existing:
                continue
            # A namespace lives on while a process is in it: end them (TERM, then KILL) so it is gone.
            pids = self.ip.run(['netns', 'pids', ns])[1].split()
            if pids:
                self.plan('netns %s: stop %d process(es) %s' % (ns, len(pids), ' '.join(pids)),
                          ['sh', '-c', STOP_PROCESSES, 'stop', ns])
            self.plan('netns %s: delete' % ns, ['ip', 'netns', 'del', ns])
        self.plan_cgroups_absent()

    def plan_present(self, topo):
        fabric, bridge = topo['fabric_netns'], topo['bridge']
        for ns in [fabric, topo['world_netns']] + [n['netns'] for n in topo['nodes']]:
            if ns not in self.existing:
                self.plan('netns %s: create' % ns, ['ip', 'netns', 'add', ns])
        fstate = self.observe(fabric) or {'links': {}, 'nsids': {}}
        br = fstate['links'].get(bridge)
        if br is not None and br.get('linkinfo', {}).get('info_kind') != 'bridge':
            self.plan_ip('%s %s: delete (not a bridge)' % (fabric, bridge), fabric, ['link', 'del', bridge])
            br = None
        if br is None:
            self.plan_ip('%s %s: create bridge' % (fabric, bridge), fabric, ['link', 'add', bridge, 'type', 'bridge'])
            br = {'flags': []}
        if 'UP' not in br.get('flags', []):
            self.plan_ip('%s %s: up' % (fabric, bridge), fabric, ['link', 'set', bridge, 'up'])

        world = {'netns': topo['world_netns'], 'peer': WORLD_PEER,
                 'address': '%s/%s' % (topo['gateway_ip'], self.underlay.prefixlen)}
        self.plan_endpoint(fstate, bridge, world, gateway=None)
        self.plan_world_extras(topo)
        for node in topo['nodes']:
            self.plan_endpoint(fstate, bridge, node, gateway=topo['gateway_ip'])
        self.plan_cgroups_present(topo)

    def plan_endpoint(self, fstate, bridge, ep, gateway):
        """One namespace plugged into the bridge: veth pair, lo/eth0 up, address, default route."""
        fabric, ns, peer_name = self.p['fabric_netns'], ep['netns'], ep['peer']
        state = self.observe(ns) or {'links': {}, 'routes': []}
        peer, eth0 = fstate['links'].get(peer_name), state['links'].get(NODE_IF)
        # A MAC derived from the address: a node rebuilt after repair keeps it, so its neighbours'
        # ARP caches stay right and traffic resumes at once.
        mac = '02:a1:' + ':'.join('%02x' % b for b in ipaddress.ip_address(ep['address'].split('/')[0]).packed)
        paired = (peer is not None and eth0 is not None
                  and peer.get('linkinfo', {}).get('info_kind') == 'veth'
                  and fstate['nsids'].get(peer.get('link_netnsid')) == ns
                  and peer.get('link_index') == eth0.get('ifindex'))
        if not paired:
            # A half-broken pair (e.g. the node namespace was recreated) is replaced whole.
            if peer is not None:
                self.plan_ip('%s %s: delete dangling link' % (fabric, peer_name), fabric, ['link', 'del', peer_name])
            if eth0 is not None:
                self.plan_ip('%s %s: delete unpaired link' % (ns, NODE_IF), ns, ['link', 'del', NODE_IF])
            self.plan_ip('%s %s: create veth (peer %s on %s)' % (ns, NODE_IF, peer_name, bridge), fabric,
                         ['link', 'add', peer_name, 'type', 'veth', 'peer', 'name', NODE_IF,
                          'address', mac, 'netns', ns])
            peer, eth0 = {'flags': []}, {'flags': [], 'inet': [], 'address': mac}
            state['routes'] = []
        if eth0.get('address') != mac:
            self.plan_ip('%s %s: set address %s' % (ns, NODE_IF, mac), ns, ['link', 'set', NODE_IF, 'address', mac])
        if peer.get('master') != bridge:
            self.plan_ip('%s %s: attach to %s' % (fabric, peer_name, bridge), fabric,
                         ['link', 'set', peer_name, 'master', bridge])
        if 'UP' not in peer.get('flags', []):
            self.plan_ip('%s %s: up' % (fabric, peer_name), fabric, ['link', 'set', peer_name, 'up'])
        self.plan_link_up(ns, state, 'lo')
        for addr in eth0.get('inet', []):
            if addr != ep['address']:
                self.plan_ip('%s %s: remove %s' % (ns, NODE_IF, addr), ns, ['addr', 'del', addr, 'dev', NODE_IF])
                # The kernel drops routes through an address's subnet with the address.
                state['routes'] = []
        if ep['address'] not in eth0.get('inet', []):
            state['routes'] = []
            self.plan_ip('%s %s: add %s' % (ns, NODE_IF, ep['address']), ns, ['addr', 'add', ep['address'], 'dev', NODE_IF])
        if 'UP' not in eth0.get('flags', []):
            self.plan_ip('%s %s: up' % (ns, NODE_IF), ns, ['link', 'set', NODE_IF, 'up'])
        if gateway is not None:
            routes = [r for r in state['routes'] if r.get('dst') == 'default']
            if routes != [] and [(r.get('gateway'), r.get('dev')) for r in routes] == [(gateway, NODE_IF)]:
                return
            self.plan_ip('%s: default route via %s' % (ns, gateway), ns,
                         ['route', 'replace', 'default', 'via', gateway, 'dev', NODE_IF])

    def plan_link_up(self, ns, state, ifname):
        if 'UP' not in state['links'].get(ifname, {}).get('flags', []):
            self.plan_ip('%s %s: up' % (ns, ifname), ns, ['link', 'set', ifname, 'up'])

    def plan_world_extras(self, topo):
        ns = topo['world_netns']
        state = self.observe(ns) or {'links': {}}
        if topo['world_address'] not in state['links'].get('lo', {}).get('inet', []):
            self.plan_ip('%s lo: add %s' % (ns, topo['world_address']), ns,
                         ['addr', 'add', topo['world_address'], 'dev', 'lo'])
        # The world routes between the underlay and "the internet" (its own loopback range).
        forwarding = '0'
        if ns in self.existing:
            forwarding = self.ip.run_in(ns, ['cat', '/proc/sys/net/ipv4/ip_forward'])[1].strip()
        if forwarding != '1':
            self.plan('%s: net.ipv4.ip_forward=1' % ns, nsenter_argv(ns, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']))

    # --- run --------------------------------------------------------------------------------
    def run(self):
        self.validate()
        topo = self.topology()
        self.existing = set(list_netns())
        self.cgroup_mount = cgroup2_mount()
        try:
            if self.p['state'] == 'present':
                self.plan_present(topo)
            else:
                self.plan_absent()
            if not self.module.check_mode:
                for text, argv in self.changes:
                    rc, out, err = self.module.run_command(argv)
                    if rc != 0:
                        self.module.fail_json(msg='%s failed: %s' % (text, (err or out).strip()),
                                              cmd=argv, changes=[t for t, _a in self.changes])
        except NetnsError as e:
            self.module.fail_json(msg=str(e))
        lines = [t for t, _a in self.changes]
        result = {'changed': bool(lines), 'changes': lines, 'topology': topo}
        if self.module._diff and lines:
            result['diff'] = {'prepared': '\n'.join(lines) + '\n'}
        self.module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            fabric_netns=dict(type='str', default='apiary-fabric'),
            bridge=dict(type='str', default='br0'),
            underlay_cidr=dict(type='str', default='10.77.101.0/24'),
            gateway_ip=dict(type='str', default='10.77.101.1'),
            world_netns=dict(type='str', default='apiary-world'),
            world_cidr=dict(type='str', default='198.51.100.0/24'),
            pod_netns_prefix=dict(type='str', default='apiary-pod-'),
            cgroup_root=dict(type='str', default='apiary-lab'),
            # Suboptions are checked by LabTopology.validate so errors can name the node.
            nodes=dict(type='list', elements='dict', default=[], options=dict(
                name=dict(type='str'), netns=dict(type='str'), ip=dict(type='str'))),
        ),
        supports_check_mode=True,
    )
    LabTopology(module).run()


if __name__ == '__main__':
    main()
