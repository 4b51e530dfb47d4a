"""Two nodes and four pods, each a network namespace, wired as docs/datapath.md says.

    pod n1a, n1b ── lxc… ── node n1 ── eth0 ══ underlay 10.99.0.0/24 ══ eth0 ── node n2 ── lxc… ── pod n2a, n2b

With world=True the underlay is a bridge in a "fabric" namespace instead of one veth pair, and a
"world" namespace (10.99.0.100, a client outside the cluster) hangs on it too.

Nodes: the router IP (first address of the node's pod CIDR) as /32 on lo, a /32 route per pod
`dev lxc… src <router IP>`, ip_forward=1, rp_filter=0; between nodes a route per remote pod CIDR
via the underlay (native) or `dev apiary_vxlan` (tunnel). Pods: their IP /32 on eth0, a scope-link
route to the router IP and `default via <router IP>` (MTU 1450 in tunnel mode). Everything lives in
namespaces named <prefix><random>-… (apiary-t- for tests, apiary-b- for bench/datapath.py); nothing
is added to the root namespace.

load() puts the Apiary datapath on it; load_floor() routes with the kernel alone (no BPF: plain veth,
and in tunnel mode a plain kernel VXLAN device), the floor that bench/datapath.py compares against.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import tempfile

from apiary import netns
from apiary.bpf import maps
from apiary.datapath import loader

@contextlib.contextmanager
def loaded(mode: str, bpffs: str, objects_dir: str, world: bool = False):
    """A Topology with the Apiary datapath loaded; torn down afterwards, also on failure."""
    os.makedirs(netns.NETNS_RUN_DIR, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="apiary-t-state-") as state_dir:
        topology = Topology(mode, bpffs, state_dir, world=world)
        try:
            topology.build()
            topology.load(objects_dir)
            yield topology
        finally:
            topology.teardown()


UNDERLAY = {"n1": "10.99.0.1", "n2": "10.99.0.2"}
WORLD = "10.99.0.100"
POD_CIDR = {"n1": "10.233.64.0/24", "n2": "10.233.65.0/24"}
ROUTER = {"n1": "10.233.64.1", "n2": "10.233.65.1"}
PODS = {  # name: (node, ip, mac, identity)
    "n1a": ("n1", "10.233.64.10", "02:00:0a:e9:40:0a", 1001),
    "n1b": ("n1", "10.233.64.11", "02:00:0a:e9:40:0b", 1002),
    "n2a": ("n2", "10.233.65.10", "02:00:0a:e9:41:0a", 2001),
    "n2b": ("n2", "10.233.65.11", "02:00:0a:e9:41:0b", 2002),
}


def sh(*cmd, check=True, input=None):
    proc = subprocess.run(list(cmd), capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise AssertionError("%s: exit %d\n%s%s" % (" ".join(cmd), proc.returncode, proc.stdout, proc.stderr))
    return proc


class Topology:
    def __init__(self, mode: str, bpffs: str, state_dir: str, prefix: str = "apiary-t-", kernel_arp: bool = False,
                 world: bool = False):
        """kernel_arp: let the node's kernel answer the pods' ARP for the router IP (needed without BPF);
        world: a bridged underlay with a world namespace on it."""
        self.mode, self.state_dir, self.kernel_arp, self.world = mode, state_dir, kernel_arp, world
        self.tag = prefix + secrets.token_hex(3)
        self.pin_dir = {node: os.path.join(bpffs, self.tag, node) for node in UNDERLAY}
        self.lxc = {pod: "lxc" + secrets.token_hex(6)[:11] for pod in PODS}
        self.ifindex, self.lxc_mac = {}, {}
        self.processes = []

    # --- names and commands ---------------------------------------------------------------------
    def ns(self, name: str) -> str:
        return "%s-%s" % (self.tag, name)

    def batch(self, name: str, lines: list[str]) -> None:
        sh("ip", "-n", self.ns(name), "-batch", "-", input="\n".join(lines) + "\n")

    def run(self, name: str, *cmd, check=True):
        return sh("nsenter", "--net=" + netns.path(self.ns(name)), *cmd, check=check)

    def popen(self, name: str, *cmd) -> subprocess.Popen:
        proc = subprocess.Popen(["nsenter", "--net=" + netns.path(self.ns(name))] + list(cmd),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.processes.append(proc)
        return proc

    def in_node(self, node: str, func, *args):
        return netns.call_in(self.ns(node), func, *args)

    def state_file(self, node: str) -> str:
        return os.path.join(self.state_dir, "%s.json" % node)

    # --- building -----------------------------------------------------------------------------
    def namespaces(self) -> list[str]:
        return list(UNDERLAY) + list(PODS) + (["fabric", "world"] if self.world else [])

    def build(self) -> None:
        for name in self.namespaces():
            sh("ip", "netns", "add", self.ns(name))
        for node in UNDERLAY:
            self.run(node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                     "net.ipv4.conf.default.rp_filter=0")
        if self.world:
            lines = ["link add br0 type bridge", "link set br0 up"]
            for name in list(UNDERLAY) + ["world"]:
                lines += ["link add %s type veth peer name eth0 netns %s" % (name, self.ns(name)),
                          "link set %s master br0" % name, "link set %s up" % name]
            self.batch("fabric", lines)
            self.batch("world", ["link set lo up", "addr add %s/24 dev eth0" % WORLD, "link set eth0 up"])
        else:
            self.batch("n1", ["link add eth0 type veth peer name eth0 netns %s" % self.ns("n2")])
        for node, address in UNDERLAY.items():
            self.batch(node, ["link set lo up", "addr add %s/24 dev eth0" % address, "link set eth0 up",
                              "addr add %s/32 dev lo" % ROUTER[node]])
        for pod, (node, address, mac, _) in PODS.items():
            lxc = self.lxc[pod]
            self.batch(node, ["link add %s type veth peer name eth0 netns %s" % (lxc, self.ns(pod)),
                              "link set %s up" % lxc,
                              "route add %s/32 dev %s src %s" % (address, lxc, ROUTER[node])])
            mtu = " mtu 1450" if self.mode == "tunnel" else ""
            self.batch(pod, ["link set lo up", "link set eth0 address %s" % mac, "addr add %s/32 dev eth0" % address,
                             "link set eth0 up", "route add %s dev eth0 scope link" % ROUTER[node],
                             "route add default via %s dev eth0%s" % (ROUTER[node], mtu)])
            # The node's kernel must not answer the pod's ARP itself: the gateway's MAC has to come from
            # from_container's ARP responder (a kernel answer would carry the same MAC and hide a bug).
            if not self.kernel_arp:
                self.run(node, "sysctl", "-q", "-w", "net.ipv4.conf.%s.arp_ignore=8" % lxc)
            link = json.loads(sh("ip", "-n", self.ns(node), "-j", "link", "show", "dev", lxc).stdout)[0]
            self.ifindex[pod], self.lxc_mac[pod] = link["ifindex"], link["address"]

    def apply(self, objects_dir: str, node: str, check: bool = False) -> dict:
        return self.in_node(node, loader.apply, objects_dir, self.pin_dir[node], "eth0", self.mode, check,
                            self.state_file(node))

    def load(self, objects_dir: str) -> None:
        """Load the datapath on both nodes, fill the maps as the agent would, attach the endpoints,
        and route the remote pod CIDR."""
        for node in UNDERLAY:
            self.apply(objects_dir, node)
            with maps.EndpointMap(self.pin_dir[node]) as endpoints, maps.IpcacheMap(self.pin_dir[node]) as ipcache, \
                    maps.PolicyMap(self.pin_dir[node]) as policy:
                for pod, (pod_node, address, mac, identity) in PODS.items():
                    remote = pod_node != node
                    ipcache.set(address + "/32", identity, UNDERLAY[pod_node] if remote else None)
                    if not remote:
                        lxc_id = int(address.rsplit(".", 1)[1])
                        # No policy selects these pods: both directions allow everything.
                        for egress in (False, True):
                            policy.set(lxc_id, 0, egress, 0, 0, 0, deny=False)
                        endpoints.set(address, self.ifindex[pod], lxc_id=lxc_id,
                                      identity=identity, mac=mac, node_mac=self.lxc_mac[pod])
                        assert self.in_node(node, loader.attach_endpoint, self.pin_dir[node], self.ifindex[pod])
        self.route()

    def load_floor(self) -> None:
        """No BPF: the kernel alone delivers. In tunnel mode each node gets a plain VXLAN device named
        apiary_vxlan (VNI 2, UDP 8472, fixed remote: the other node) that answers ARP for the other
        node's pods (proxy ARP), so the same routes work."""
        if self.mode == "tunnel":
            for node in UNDERLAY:
                other = "n2" if node == "n1" else "n1"
                self.batch(node, ["link add %s type vxlan id 2 local %s remote %s dstport %d dev eth0" % (
                                      loader.VXLAN_DEVICE, UNDERLAY[node], UNDERLAY[other], loader.VXLAN_PORT),
                                  "link set %s mtu 1450 up" % loader.VXLAN_DEVICE])
                self.run(node, "sysctl", "-q", "-w", "net.ipv4.conf.%s.proxy_arp=1" % loader.VXLAN_DEVICE,
                         "net.ipv4.neigh.%s.proxy_delay=0" % loader.VXLAN_DEVICE)
        self.route()

    def route(self) -> None:
        """Each node's route to the other node's pod CIDR, as the agent installs it."""
        for node in UNDERLAY:
            other = "n2" if node == "n1" else "n1"
            if self.mode == "tunnel":
                route = "route add %s dev %s src %s" % (POD_CIDR[other], loader.VXLAN_DEVICE, ROUTER[node])
            else:
                route = "route add %s via %s dev eth0" % (POD_CIDR[other], UNDERLAY[other])
            self.batch(node, [route])

    def teardown(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for name in reversed(self.namespaces()):
            sh("ip", "netns", "del", self.ns(name), check=False)

    # --- probing ------------------------------------------------------------------------------
    def ping(self, pod: str, address: str, count: int = 1, source: str | None = None) -> bool:
        cmd = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", address]
        if source:
            cmd[1:1] = ["-I", source]
        return self.run(pod, *cmd, check=False).returncode == 0

    def metrics(self, node: str) -> dict:
        """{(reason, direction): count} on a node."""
        with maps.MetricsMap(self.pin_dir[node]) as metrics:
            return {(row["reason"], row["direction"]): row["count"] for row in metrics.list()}

    def tc_filters(self, node: str, device: str, point: str) -> str:
        return sh("tc", "-n", self.ns(node), "filter", "show", "dev", device, point, check=False).stdout
