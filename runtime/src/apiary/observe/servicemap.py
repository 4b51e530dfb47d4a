"""The service map of one namespace, from flows in Hubble's JSON shape (docs/hubble.md §2).

Nodes are workloads: a namespace's pods grouped by their `app` label, else by the pod name without
the ReplicaSet/DaemonSet hash suffix (Hubble UI groups by app label too). The reserved identities
(world, host, remote-node, ...) are one node each; a pod of another namespace that talks with this
one is a node of its own, named with its namespace. Edges are the observed flows, client to server:
one per (source, destination, port, protocol), counting forwarded and dropped flows.
"""
from __future__ import annotations

import re

# Kubernetes' generated name suffixes use this alphabet (no vowels, no 0/1/3): a Deployment's pod is
# <name>-<ReplicaSet hash>-<5>, a DaemonSet's or Job's <name>-<5>.
_SAFE = "[bcdfghjklmnpqrstvwxz2456789]"
_DEPLOYMENT_POD = re.compile(r"^(.+)-%s{6,10}-%s{5}$" % (_SAFE, _SAFE))
_GENERATED_POD = re.compile(r"^(.+)-%s{5}$" % _SAFE)
RESERVED = {1: "host", 2: "world", 3: "unmanaged", 4: "health", 5: "init", 6: "remote-node",
            7: "kube-apiserver", 8: "ingress", 9: "world", 10: "world"}
L4_PROTOCOLS = ("TCP", "UDP", "SCTP", "ICMPv4", "ICMPv6")


def workload_name(pod_name: str, labels) -> str:
    for label in labels or []:
        for prefix in ("k8s:app=", "k8s:app.kubernetes.io/name="):
            if label.startswith(prefix):
                return label[len(prefix):]
    for pattern in (_DEPLOYMENT_POD, _GENERATED_POD):
        match = pattern.match(pod_name)
        if match:
            return match.group(1)
    return pod_name


def _reserved(endpoint: dict):
    for label in endpoint.get("labels") or []:
        if label.startswith("reserved:"):
            return label[len("reserved:"):]
    return RESERVED.get(endpoint.get("identity"))


def node_of(endpoint: dict, ip: str | None, namespace: str) -> dict:
    """The map node an endpoint of a flow belongs to (id, name, kind, namespace)."""
    pod = endpoint.get("pod_name")
    if pod and endpoint.get("namespace"):
        ns = endpoint["namespace"]
        name = workload_name(pod, endpoint.get("labels"))
        return {"id": "%s/%s" % (ns, name), "name": name if ns == namespace else "%s/%s" % (ns, name),
                "namespace": ns, "kind": "workload" if ns == namespace else "external-workload"}
    reserved = _reserved(endpoint)
    if reserved:
        return {"id": "reserved:" + reserved, "name": reserved, "namespace": "", "kind": "reserved"}
    name = ip or "identity %s" % endpoint.get("identity", 0)
    return {"id": "ip:" + name, "name": name, "namespace": "", "kind": "unknown"}


def l4_of(flow: dict):
    """(protocol, destination port or None) of a flow."""
    l4 = flow.get("l4") or {}
    for protocol in L4_PROTOCOLS:
        if protocol in l4:
            return protocol, (l4[protocol] or {}).get("destination_port")
    return "", None


def build(flows: list, namespace: str) -> dict:
    """{"namespace", "nodes": [...], "edges": [...]} for the flows touching `namespace`."""
    nodes, edges = {}, {}
    for flow in flows:
        source, destination = flow.get("source") or {}, flow.get("destination") or {}
        if namespace not in (source.get("namespace"), destination.get("namespace")):
            continue
        verdict = flow.get("verdict")
        # Replies go back along the client's edge; translations and traces are not connections.
        if flow.get("is_reply") or verdict not in ("FORWARDED", "DROPPED"):
            continue
        addresses = flow.get("IP") or {}
        src = node_of(source, addresses.get("source"), namespace)
        dst = node_of(destination, addresses.get("destination"), namespace)
        for node in (src, dst):
            entry = nodes.setdefault(node["id"], dict(node, pods=[]))
            endpoint = source if node is src else destination
            if endpoint.get("pod_name") and endpoint["pod_name"] not in entry["pods"]:
                entry["pods"].append(endpoint["pod_name"])
        protocol, port = l4_of(flow)
        key = (src["id"], dst["id"], protocol, port)
        edge = edges.get(key)
        if edge is None:
            edge = edges[key] = {
                "id": "%s->%s:%s/%s" % (src["id"], dst["id"], port if port is not None else "", protocol),
                "source": src["id"], "destination": dst["id"], "protocol": protocol, "port": port,
                "forwarded": 0, "dropped": 0, "is_dropped": False, "drop_reasons": [], "services": []}
        if verdict == "DROPPED":
            edge["dropped"] += 1
            edge["is_dropped"] = True
            reason = flow.get("drop_reason_desc")
            if reason and reason not in edge["drop_reasons"]:
                edge["drop_reasons"].append(reason)
        else:
            edge["forwarded"] += 1
        service = flow.get("destination_service") or {}
        if service.get("name"):
            name = "%s/%s" % (service.get("namespace", ""), service["name"])
            if name not in edge["services"]:
                edge["services"].append(name)
    for node in nodes.values():
        node["pods"].sort()
    return {"namespace": namespace,
            "nodes": sorted(nodes.values(), key=lambda n: (n["kind"] != "workload", n["id"])),
            "edges": sorted(edges.values(), key=lambda e: e["id"])}


def namespaces(flows: list) -> list:
    """Every namespace a flow's endpoint is in."""
    found = set()
    for flow in flows:
        for side in ("source", "destination"):
            ns = (flow.get(side) or {}).get("namespace")
            if ns:
                found.add(ns)
    return sorted(found)
