"""The seed's policies and a small cluster in the style of Kubernetes' network-policy e2e suite."""
import ipaddress

import yaml

from apiary import identity
from apiary.policy import cidr_identity_labels, cidr_prefixes, compute, to_rules

ALLOW_FRONTEND = """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "allow-frontend"
  namespace: network-policy-test
spec:
  endpointSelector:
    matchLabels:
      role: frontend
  ingress:
  - fromEndpoints:
    - matchLabels:
        role: backend
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
"""

FRONTEND_ICMP = """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: frontend-backend-icmp-communication
  namespace: network-policy-test
spec:
  endpointSelector:
    matchLabels:
      role: frontend
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: netpod
"""

BACKEND_ICMP = FRONTEND_ICMP.replace("frontend-backend", "backend-frontend").replace("role: frontend", "role: backend")

ALLOW_DB = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-db-access
spec:
  endpointSelector:
    matchLabels:
      app: database
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: webapp
    toPorts:
    - ports:
      - port: "3306"
        protocol: TCP
"""

SEED = {"allow-frontend": ALLOW_FRONTEND, "frontend-backend-icmp-communication": FRONTEND_ICMP,
        "backend-frontend-icmp-communication": BACKEND_ICMP, "allow-db-access": ALLOW_DB}


def load(text):
    return yaml.safe_load(text)


NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")


class Cluster:
    """Pods a, b, c (label pod=<name>) in namespaces x, y, z (label ns=<name>), the reserved
    identities, and a CIDR identity per CIDR the policies name. `can(src, dst)` is the verdict for a
    packet crossing src's egress and dst's ingress, as the datapath would give it."""

    def __init__(self, *policies, named_ports=None, allow_localhost=True):
        self.rules = [rule for p in policies for rule in to_rules(load(p) if isinstance(p, str) else p)]
        self.identities = {i: list(labels) for i, labels in identity.RESERVED_LABELS.items()}
        self.pods = {}
        ident = 256
        for ns in NAMESPACES:
            for pod in PODS:
                self.identities[ident] = identity.pod_labels(ns, {"pod": pod},
                                                             {"kubernetes.io/metadata.name": ns, "ns": ns})
                self.pods[(ns, pod)] = ident
                ident += 1
        self.cidrs = {}
        for i, prefix in enumerate(sorted(cidr_prefixes(self.rules), key=ipaddress.ip_network)):
            self.cidrs[ipaddress.ip_network(prefix)] = (1 << 24) + 1 + i
            self.identities[(1 << 24) + 1 + i] = cidr_identity_labels(prefix)
        self.named_ports = named_ports or {}  # (ns, pod) -> {name: {(port, proto)}}
        self.allow_localhost = allow_localhost
        self._policies = {}

    def identity_of(self, peer) -> int:
        if isinstance(peer, tuple):
            return self.pods[peer]
        if isinstance(peer, int):
            return peer
        address = ipaddress.ip_address(peer)
        inside = [n for n in self.cidrs if n.version == address.version and address in n]
        return self.cidrs[max(inside, key=lambda n: n.prefixlen)] if inside else 2

    def policy(self, pod):
        if pod not in self._policies:
            egress = {}
            for ports in self.named_ports.values():
                for name, values in ports.items():
                    egress.setdefault(name, set()).update(values)
            self._policies[pod] = compute(self.rules, self.identities[self.pods[pod]], self.identities,
                                          ingress_named_ports=self.named_ports.get(pod, {}),
                                          egress_named_ports=egress, allow_localhost=self.allow_localhost)
        return self._policies[pod]

    def can(self, src, dst, protocol=6, port=80) -> bool:
        from tests.policy.reference import datapath_allows
        ok = True
        if isinstance(src, tuple):
            ok = ok and datapath_allows(self.policy(src), self.identity_of(dst), True, protocol, port)
        if isinstance(dst, tuple):
            ok = ok and datapath_allows(self.policy(dst), self.identity_of(src), False, protocol, port)
        return ok
