"""kube-proxy's rules in a namespace's real iptables, for the tests: services built with apiary.kubeproxy, rules
that are not kube-proxy's, and iptables-restore/-save run inside a namespace (never the root one)."""
import subprocess

from apiary import netns
from apiary.kubeproxy import Endpoint, ProxyConfig, ServicePort

CONFIG = ProxyConfig(cluster_cidr="10.233.64.0/18")
CONFIG6 = ProxyConfig(cluster_cidr="fd00:10:233::/56", ipv6=True)

# Rules that are not kube-proxy's: a user's chain, Calico's, Docker's, and kubelet's own KUBE-* chains.
FOREIGN = """*mangle
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:MY-CHAIN - [0:0]
:CALI-FORWARD - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A MY-CHAIN -s 192.0.2.0/24 -m comment --comment "my own rule" -j ACCEPT
-A INPUT -j MY-CHAIN
-A FORWARD -m comment --comment "cali:wUHhoiAYhphO9Mso" -j CALI-FORWARD
-A CALI-FORWARD -m mark --mark 0x10000/0x10000 -j ACCEPT
COMMIT
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
COMMIT
"""
FOREIGN6 = """*filter
:MY-CHAIN6 - [0:0]
-A MY-CHAIN6 -s 2001:db8::/32 -j ACCEPT
-A INPUT -j MY-CHAIN6
COMMIT
"""


def services(count=3, backends=4, family=4):
    ports = []
    for i in range(count):
        if family == 4:
            ip, eps = "10.233.0.%d" % (10 + i), ["10.233.%d.%d" % (64 + b, 10 + i) for b in range(backends)]
        else:
            ip, eps = "fd00:10:96::%x" % (10 + i), ["fd00:10:233:%x::%x" % (b, 10 + i) for b in range(backends)]
        ports.append(ServicePort("default", "svc%d" % i, ip, 80, port_name="http", node_port=30080 + i,
                                 endpoints=tuple(Endpoint(e, 8080) for e in eps)))
    return ports


def inside(node, *argv, input=None):
    proc = subprocess.run(["nsenter", "--net=" + netns.path(node), *argv], input=input, capture_output=True, text=True)
    assert proc.returncode == 0, "%s: %s" % (" ".join(argv), proc.stderr)
    return proc.stdout


def restore(node, backend, text, family="iptables"):
    inside(node, "%s-%s-restore" % (family, backend), "--noflush", input=text)


def save(node, backend, family="iptables"):
    """iptables-save without its timestamped comment lines."""
    return "".join(line + "\n" for line in inside(node, "%s-%s-save" % (family, backend)).splitlines()
                   if not line.startswith("#"))


def kube_proxy_chains(text):
    """The chains the generated text declares, less kubelet's KUBE-FIREWALL: by table."""
    chains, table = {}, None
    for line in text.splitlines():
        if line.startswith("*"):
            table = chains.setdefault(line[1:], set())
        elif line.startswith(":") and line.split()[0] != ":KUBE-FIREWALL":
            table.add(line[1:].split()[0])
    return chains


def without(saved, chains):
    """iptables-save text less kube-proxy's chains, their rules and the jumps into them: what must remain."""
    out, table = [], None
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
        words = line.split()
        owned = chains.get(table, set())
        if line.startswith(":") and words[0][1:] in owned:
            continue
        if line.startswith("-A") and (words[1] in owned or words[-1] in owned):
            continue
        out.append(line + "\n")
    return "".join(out)
