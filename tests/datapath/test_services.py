"""Service load balancing on a real kernel (bpf_sock.c, lib/lb.h, lib/nodeport.h): two nodes, four pods
and a world namespace of our own, in native and tunnel routing mode; services written with
apiary.datapath.lb as the agent would.

The socket programs of each node are attached to a cgroup of the test's own (apiary-test-<random>/<node>
under the cgroup2 mount); clients join it (pid into cgroup.procs) before entering a pod's or node's
namespace. World clients are in no cgroup: their connections reach the nodes' uplinks as packets.
Everything is removed afterwards, also on failure: processes in the cgroups, the cgroups, namespaces;
the pins go with the private bpffs."""
import collections
import contextlib
import json
import os
import secrets
import subprocess
import sys

import pytest

from apiary import netns
from apiary.bpf import maps
from apiary.datapath import loader
from apiary.datapath.lb import Backend, Frontend, LoadBalancer, flow_hash, maglev_table, socket_hash
from apiary.errors import UserError

from tests.helpers.cgroups import scratch_cgroups

from .test_datapath import HERE, ip_of
from .test_events import Recorder, matching
from .topology import PODS, UNDERLAY, WORLD, loaded

PROBE = os.path.join(HERE, "svc_probe.py")
PORT = 8080
DROP_NO_SERVICE = 158
ECONNREFUSED = 111
WEB, DNS, OTHER, STICKY, ITP_LOCAL = "10.96.0.10", "10.96.0.10", "10.96.0.20", "10.96.0.30", "10.96.0.40"
SERVERS = ("n1b", "n2b", "n2a")
# Backend ids: pod -> (TCP id, UDP id)
BACKEND_IDS = {"n1b": (1, 3), "n2b": (2, 4), "n2a": (5, 6)}
LB_MAPS = ("apiary_lb4_services", "apiary_lb4_backends", "apiary_lb4_reverse_nat", "apiary_lb_affinity_match",
           "apiary_lb4_maglev")


def backend(pod, node, protocol="TCP"):
    return Backend(BACKEND_IDS[pod][protocol == "UDP"], ip_of(pod), PORT, protocol, local=PODS[pod][0] == node)


def services(node):
    """(service id, frontend, backends) of the test's services as `node` sees them."""
    both = [backend("n1b", node), backend("n2b", node)]
    node_ip = UNDERLAY[node]
    return [
        (1, Frontend(WEB, 80), both),
        (2, Frontend(DNS, 53, "UDP"), [backend("n1b", node, "UDP"), backend("n2b", node, "UDP")]),
        (3, Frontend(OTHER, 80), [backend("n2a", node)]),
        (4, Frontend(STICKY, 80, affinity_timeout=60), both),
        (5, Frontend(ITP_LOCAL, 80, local_only_internal=True), both),
        (10, Frontend(node_ip, 30080, kind="NodePort"), both),
        (11, Frontend(node_ip, 30081, kind="NodePort"), [backend("n2b", node)]),
        (12, Frontend(node_ip, 30081, "UDP", kind="NodePort"), [backend("n2b", node, "UDP")]),
        (13, Frontend(node_ip, 30082, kind="NodePort", local_only_external=True), [backend("n2b", node)]),
    ]


# --- cgroups --------------------------------------------------------------------------------------
@contextlib.contextmanager
def private_cgroups(nodes):
    """apiary-test-<random>/<node> under the cgroup2 mount, removed afterwards (tests/helpers/cgroups)."""
    with scratch_cgroups("apiary-test-", nodes) as (_, cgroups):
        yield cgroups


class Env:
    def __init__(self, topo, cgroups):
        self.topo, self.cgroups = topo, cgroups
        self.lb = {}

    def probe(self, where, *args, cgroup=None, timeout=60):
        """Run svc_probe.py in namespace `where` (in the node's test cgroup when `cgroup` names a node);
        its JSON lines."""
        def join():
            with open(os.path.join(self.cgroups[cgroup], "cgroup.procs"), "w") as procs:
                procs.write(str(os.getpid()))

        cmd = ["nsenter", "--net=" + netns.path(self.topo.ns(where)), sys.executable, PROBE] + [str(a) for a in args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=join if cgroup else None)
        self.topo.processes.append(proc)
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err
        return [json.loads(line) for line in out.splitlines()]

    def tcp(self, where, host, port, count, cgroup=None, sport=None):
        return self.probe(where, "tcp", host, port, count, *([sport] if sport else []), cgroup=cgroup)

    def udp(self, where, host, port, count, cgroup=None, one_socket=False):
        return self.probe(where, "udp", host, port, count, *(["one"] if one_socket else []), cgroup=cgroup)


def served_by(results):
    """Counter of the backend pods that answered; errors count under None."""
    return collections.Counter(r["reply"].split()[0] if "reply" in r else None for r in results)


def seen_source(result):
    """The client address the backend saw."""
    return result["reply"].split()[1].rsplit(":", 1)[0]


@pytest.fixture(scope="module", params=["native", "tunnel"])
def env(request, bpffs, objects_dir):
    if not os.path.isdir(loader.cgroup2_mount()):
        pytest.skip("needs a cgroup2 mount")
    with loaded(request.param, bpffs, objects_dir, world=True) as topo, private_cgroups(UNDERLAY) as cgroups:
        env = Env(topo, cgroups)
        for node in UNDERLAY:
            result = topo.in_node(node, loader.apply, objects_dir, topo.pin_dir[node], "eth0", topo.mode, False,
                                  topo.state_file(node), cgroups[node])
            assert result["actions"] == ["attach %s on cgroup %s %s" % (prog, cgroups[node], hook)
                                         for hook, prog in loader.CGROUP_HOOKS]
        for pod in SERVERS:
            server = topo.popen(pod, sys.executable, PROBE, "serve", pod, str(PORT))
            assert server.stdout.readline().strip() == "ready"
        try:
            for node in UNDERLAY:
                env.lb[node] = LoadBalancer(topo.pin_dir[node], node_address=UNDERLAY[node])
                for service_id, frontend, backends in services(node):
                    env.lb[node].upsert(service_id, frontend, backends)
            yield env
        finally:
            for lb in env.lb.values():
                lb.close()


# --- the loader --------------------------------------------------------------------------------------
def test_cgroup_attachment_is_idempotent(env, objects_dir):
    topo = env.topo
    again = topo.in_node("n1", loader.apply, objects_dir, topo.pin_dir["n1"], "eth0", topo.mode, False,
                         topo.state_file("n1"), env.cgroups["n1"])
    assert again["changed"] is False and again["actions"] == []
    ids = loader._cgroup_attached(env.cgroups["n1"])
    assert ids == {hook: again["programs"][prog]["id"] for hook, prog in loader.CGROUP_HOOKS}
    # apply is declarative: without a cgroup the socket programs would come off the one given before.
    dropped = topo.in_node("n1", loader.apply, objects_dir, topo.pin_dir["n1"], "eth0", topo.mode, True,
                           topo.state_file("n1"))
    assert dropped["actions"] == ["detach %s from cgroup %s %s" % (prog, env.cgroups["n1"], hook)
                                  for hook, prog in loader.CGROUP_HOOKS]
    assert loader._cgroup_attached(env.cgroups["n1"]) == ids  # check mode: still there


def test_the_cgroup2_root_is_refused(env, objects_dir):
    topo = env.topo
    for root in (loader.cgroup2_mount(), loader.cgroup2_mount() + "/"):
        with pytest.raises(UserError, match="root of the cgroup2 hierarchy"):
            topo.in_node("n1", loader.apply, objects_dir, topo.pin_dir["n1"], "eth0", topo.mode, True,
                         topo.state_file("n1"), root)
    with pytest.raises(UserError, match="not a directory of the cgroup2 mount"):
        topo.in_node("n1", loader.apply, objects_dir, topo.pin_dir["n1"], "eth0", topo.mode, True,
                     topo.state_file("n1"), "/tmp")


# --- socket-level load balancing --------------------------------------------------------------------
def test_clusterip_tcp_reaches_backends_on_both_nodes(env):
    results = env.tcp("n1a", WEB, 80, 30, cgroup="n1")
    assert set(served_by(results)) == {"n1b", "n2b"}, results
    for r in results:
        assert r["peer"] == "%s:80" % WEB           # getpeername shows the service
        assert seen_source(r) == ip_of("n1a")        # translated at connect: no SNAT anywhere


def test_udp_replies_come_from_the_service(env):
    results = env.udp("n2a", DNS, 53, 30, cgroup="n2")
    assert set(served_by(results)) == {"n1b", "n2b"}, results
    assert {r["source"] for r in results} == {"%s:53" % DNS}
    # One socket keeps its backend for all its datagrams (random by the socket's hash, as Cilium).
    for _ in range(3):
        results = env.udp("n2a", DNS, 53, 5, cgroup="n2", one_socket=True)
        assert len(served_by(results)) == 1 and None not in served_by(results), results


def test_a_client_outside_the_cgroup_is_not_translated(env):
    # Same pod, same service address, but not in the cgroup: nothing answers 10.96.0.10.
    results = env.tcp("n1a", WEB, 80, 1)
    assert "error" in results[0]


def test_no_service_leaves_the_address_alone(env):
    results = env.tcp("n1a", ip_of("n2a"), PORT, 3, cgroup="n1")
    assert served_by(results) == {"n2a": 3}
    assert {r["peer"] for r in results} == {"%s:%d" % (ip_of("n2a"), PORT)}


def test_node_processes_reach_nodeport_through_the_socket_hook(env):
    # n2's own backend: the test topology gives nodes no ipcache entry, so in tunnel mode a node's
    # router IP is no address a remote pod can answer.
    results = env.tcp("n2", UNDERLAY["n2"], 30081, 3, cgroup="n2")
    assert served_by(results) == {"n2b": 3}, results
    assert {r["peer"] for r in results} == {"%s:30081" % UNDERLAY["n2"]}


def test_session_affinity_sticks(env):
    for client, node in (("n1a", "n1"), ("n2a", "n2")):
        results = env.tcp(client, STICKY, 80, 20, cgroup=node)
        assert len(served_by(results)) == 1 and None not in served_by(results), results


def test_internal_traffic_policy_local(env):
    assert served_by(env.tcp("n1a", ITP_LOCAL, 80, 10, cgroup="n1")) == {"n1b": 10}
    assert served_by(env.tcp("n2a", ITP_LOCAL, 80, 10, cgroup="n2")) == {"n2b": 10}


def _snapshot(pin_dir):
    """Every entry of the service maps as raw bytes (Maglev tables: their contents)."""
    snap = {}
    for name in LB_MAPS:
        with maps.Map.open(pin_dir, name) as pinned:
            for key, value in pinned.items():
                if name == "apiary_lb4_maglev":
                    with maps.MaglevMap(pin_dir) as maglev:
                        value = maglev.table(key.value & 0xFFFF, key.value >> 16)
                    snap[(name, bytes(key))] = tuple(value)
                else:
                    snap[(name, bytes(key))] = bytes(value)
    return snap


def _changed(before, after):
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def test_a_backend_change_touches_only_its_service(env):
    lb, pin_dir = env.lb["n1"], env.topo.pin_dir["n1"]
    web_key_prefix = maps.ServiceMap.key(WEB, 80, "TCP")
    before = _snapshot(pin_dir)
    lb.upsert(1, Frontend(WEB, 80), [backend("n1b", "n1")])
    after = _snapshot(pin_dir)
    changed = _changed(before, after)
    assert changed, "nothing changed"
    for name, key in changed:
        if name == "apiary_lb4_services":
            assert key[:6] == bytes(web_key_prefix)[:6], "another frontend's entry changed"
        else:
            # Backend 2 stays (other services use it); only web's affinity pair for it goes.
            pair = maps.LbAffinityMatch(backend_id=BACKEND_IDS["n2b"][0], rev_nat_index=1)
            assert (name, key) == ("apiary_lb_affinity_match", bytes(pair))
    assert served_by(env.tcp("n1a", WEB, 80, 10, cgroup="n1")) == {"n1b": 10}

    lb.upsert(1, Frontend(WEB, 80), [backend("n1b", "n1"), backend("n2b", "n1")])
    assert _snapshot(pin_dir) == before
    assert set(served_by(env.tcp("n1a", WEB, 80, 30, cgroup="n1"))) == {"n1b", "n2b"}

    # A service left without backends refuses connections; its backend, used by no one else, goes.
    lb.upsert(3, Frontend(OTHER, 80), [])
    try:
        with maps.BackendMap(pin_dir) as backends:
            assert backends.get(BACKEND_IDS["n2a"][0]) is None
        results = env.tcp("n1a", OTHER, 80, 1, cgroup="n1")
        assert results[0].get("errno") == ECONNREFUSED, results
        assert {k for k in _changed(before, _snapshot(pin_dir)) if k[0] == "apiary_lb4_services"} <= \
            {("apiary_lb4_services", bytes(maps.ServiceMap.key(OTHER, 80, "TCP", slot, 0))) for slot in (0, 1)}
    finally:
        lb.upsert(3, Frontend(OTHER, 80), [backend("n2a", "n1")])
    assert served_by(env.tcp("n1a", OTHER, 80, 2, cgroup="n1")) == {"n2a": 2}


def test_terminating_backends_are_listed_and_never_picked(env):
    lb = env.lb["n1"]
    lb.upsert(1, Frontend(WEB, 80), [backend("n1b", "n1"),
                                     Backend(2, ip_of("n2b"), PORT, "TCP", local=False, state="terminating")])
    try:
        row = next(r for r in lb.list() if r["id"] == 1)
        assert row["frontend"] == "%s:80/TCP" % WEB and row["type"] == "ClusterIP"
        assert row["backends"] == [{"id": 1, "address": "%s:%d/TCP" % (ip_of("n1b"), PORT), "state": "active"},
                                   {"id": 2, "address": "%s:%d/TCP" % (ip_of("n2b"), PORT), "state": "terminating"}]
        assert served_by(env.tcp("n1a", WEB, 80, 10, cgroup="n1")) == {"n1b": 10}
    finally:
        lb.upsert(1, Frontend(WEB, 80), [backend("n1b", "n1"), backend("n2b", "n1")])
    kinds = {r["id"]: r["type"] for r in lb.list()}
    assert kinds[10] == "NodePort" and kinds[3] == "ClusterIP"


def test_maglev_picks_what_the_python_table_says(env):
    """A node switched to Maglev (M=251): socket translations pick table[hash(socket cookie) % M], the
    tc path table[hash(5-tuple) % M], with the table computed here."""
    pin_dir, m = env.topo.pin_dir["n1"], 251
    names = {BACKEND_IDS[p][0]: p for p in ("n1b", "n2b")}
    frontends = [(20, Frontend("10.96.0.50", 80)), (21, Frontend(UNDERLAY["n1"], 30090, kind="NodePort"))]
    lb = LoadBalancer(pin_dir, "maglev", m, node_address=UNDERLAY["n1"])
    try:
        for service_id, frontend in frontends:
            lb.upsert(service_id, frontend, [backend("n1b", "n1"), backend("n2b", "n1")])
        by_name = {backend(p, "n1").name: BACKEND_IDS[p][0] for p in ("n1b", "n2b")}
        table = [by_name[name] for name in maglev_table(list(by_name), m)]
        with maps.MaglevMap(pin_dir) as maglev:
            assert maglev.table(20, 0) == table
        results = env.tcp("n1a", "10.96.0.50", 80, 20, cgroup="n1")
        assert set(served_by(results)) == {"n1b", "n2b"}, results
        for r in results:
            assert names[table[socket_hash(r["cookie"], "TCP") % m]] == r["reply"].split()[0]
        sport = 40000 + secrets.randbelow(1000) * 20
        results = env.tcp("world", UNDERLAY["n1"], 30090, 20, sport=sport)
        assert set(served_by(results)) == {"n1b", "n2b"}, results
        for i, r in enumerate(results):
            expected = table[flow_hash(WORLD, sport + i, UNDERLAY["n1"], 30090, "TCP") % m]
            assert names[expected] == r["reply"].split()[0]
    finally:
        for _, frontend in frontends:
            lb.delete(frontend)
        lb.close()
        LoadBalancer(pin_dir, "random", node_address=UNDERLAY["n1"]).close()


# --- the tc path: clients outside the cluster -----------------------------------------------------------
def test_nodeport_from_the_world_through_either_node(env):
    for node in UNDERLAY:
        results = env.tcp("world", UNDERLAY[node], 30080, 30)
        assert set(served_by(results)) == {"n1b", "n2b"}, results
        for r in results:
            local = PODS[r["reply"].split()[0]][0] == node
            # a local backend sees the client; a remote one the node (SNAT), so replies come back here
            assert seen_source(r) == (WORLD if local else UNDERLAY[node]), r


def test_nodeport_to_a_remote_backend_is_snated_and_replies_are_translated(env):
    via_n1 = env.tcp("world", UNDERLAY["n1"], 30081, 5)
    assert served_by(via_n1) == {"n2b": 5} and {seen_source(r) for r in via_n1} == {UNDERLAY["n1"]}
    via_n2 = env.tcp("world", UNDERLAY["n2"], 30081, 5)
    assert served_by(via_n2) == {"n2b": 5} and {seen_source(r) for r in via_n2} == {WORLD}
    for node in UNDERLAY:
        udp = env.udp("world", UNDERLAY[node], 30081, 5)
        assert served_by(udp) == {"n2b": 5}, udp
        assert {r["source"] for r in udp} == {"%s:30081" % UNDERLAY[node]}


def test_nodeport_translation_is_reported_with_the_frontend(env):
    """The observer hears of a new NodePort connection with the client, the backend and the frontend."""
    with Recorder(env.topo, "n1") as rec:
        assert served_by(env.tcp("world", UNDERLAY["n1"], 30081, 1)) == {"n2b": 1}
        found = rec.settle()
    nat = matching(found, type="trace", observation_point="from-network", src_ip=WORLD, dst_ip=ip_of("n2b"),
                   orig_ip=UNDERLAY["n1"], orig_port=30081)
    assert len(nat) == 1 and nat[0]["tcp_flags"] == ["SYN"] and nat[0]["dst_port"] == PORT, found
    assert (nat[0]["src_identity"], nat[0]["dst_identity"]) == (2, PODS["n2b"][3])


def test_external_traffic_policy_local_keeps_the_source_and_refuses_other_nodes(env):
    results = env.tcp("world", UNDERLAY["n2"], 30082, 5)
    assert served_by(results) == {"n2b": 5} and {seen_source(r) for r in results} == {WORLD}
    before = env.topo.metrics("n1").get((DROP_NO_SERVICE, "ingress"), 0)
    results = env.tcp("world", UNDERLAY["n1"], 30082, 1)
    assert "error" in results[0]
    assert env.topo.metrics("n1").get((DROP_NO_SERVICE, "ingress"), 0) > before


def test_policy_applies_to_translated_traffic_with_the_clients_identity(env):
    lxc_id = int(ip_of("n2b").rsplit(".", 1)[1])
    with maps.PolicyMap(env.topo.pin_dir["n2"]) as policy:
        policy.delete(lxc_id, 0, False, 0, 0, 0)  # n2b's ingress: only what is written below
        try:
            policy.set(lxc_id, PODS["n1a"][3], False, 6, PORT, 16, deny=False)
            assert "error" in env.tcp("world", UNDERLAY["n2"], 30081, 1)[0]
            policy.set(lxc_id, 2, False, 6, PORT, 16, deny=False)  # world
            assert served_by(env.tcp("world", UNDERLAY["n2"], 30081, 2)) == {"n2b": 2}
        finally:
            policy.delete(lxc_id, PODS["n1a"][3], False, 6, PORT, 16)
            policy.delete(lxc_id, 2, False, 6, PORT, 16)
            policy.set(lxc_id, 0, False, 0, 0, 0, deny=False)


# --- last: takes n1's datapath away ---------------------------------------------------------------------
def test_remove_detaches_the_socket_programs(env):
    topo, cgroup = env.topo, env.cgroups["n1"]
    result = topo.in_node("n1", loader.remove, topo.pin_dir["n1"], "eth0", False, topo.state_file("n1"))
    assert [a for a in result["actions"] if "cgroup" in a] == \
        ["detach %s from cgroup %s %s" % (prog, cgroup, hook) for hook, prog in loader.CGROUP_HOOKS]
    assert loader._cgroup_attached(cgroup) == {hook: None for hook, _ in loader.CGROUP_HOOKS}
    assert "error" in env.tcp("n1a", WEB, 80, 1, cgroup="n1")[0]  # no translation any more
