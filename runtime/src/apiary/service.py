"""Kubernetes Services: checked as the API server checks them, given their addresses, and turned into
the datapath's frontends and backends (apiary.datapath.lb) as Cilium's service cache does.

- check_spec(): the spec of a v1 Service (ClusterIP, NodePort, LoadBalancer; ports with numeric or
  named targetPort; selector; sessionAffinity ClientIP with its timeout; external and internal
  traffic policy; externalIPs; loadBalancerIP). Every problem names the field.
- allocate(): the ClusterIP (from the service range) and NodePorts (30000-32767) the API server would
  give, kept across re-applies; a collision or an address outside the range names the field.
- service_frontends() / service_backends(): what one node programs for a Service and the ready pods
  it selects (the lab's imitation store); slice_backends(): the same from the Service's EndpointSlices
  (the Kubernetes API, where the EndpointSlice controller or the API server itself chose them).
"""
from __future__ import annotations

import ipaddress
import json
import random

from apiary.k8s.validation import IANA_SVC_NAME, check_labels

TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
PROTOCOLS = ("TCP", "UDP", "SCTP")
POLICIES = ("Cluster", "Local")
NODE_PORT_RANGE = (30000, 32767)  # the API server's default --service-node-port-range
DEFAULT_AFFINITY_TIMEOUT = 10800  # Kubernetes' default sessionAffinityConfig.clientIP.timeoutSeconds
SPEC_FIELDS = ("type", "selector", "ports", "clusterIP", "clusterIPs", "sessionAffinity", "sessionAffinityConfig",
               "externalTrafficPolicy", "internalTrafficPolicy", "externalIPs", "loadBalancerIP", "ipFamilies",
               "ipFamilyPolicy")


def _ipv4(c, value, path: str) -> str | None:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ipaddress.AddressValueError, ValueError, TypeError):
        c.bad(path, "must be an IPv4 address (got %s)" % json.dumps(value))
        return None


def _choice(c, spec: dict, field: str, allowed: tuple, default: str) -> str:
    value = spec.get(field, default)
    if value not in allowed:
        c.bad("spec." + field, "unsupported value %s: supported values: %s"
              % (json.dumps(value), ", ".join(json.dumps(a) for a in allowed)))
    return value


def check_spec(c, spec) -> dict:
    """The normalized spec of a Service; problems go to the checker `c` (apiary.k8s.validation.Checker)."""
    spec = c.fields(spec, "spec", SPEC_FIELDS, required=("ports",))
    out = {"type": _choice(c, spec, "type", TYPES, "ClusterIP")}
    problems = []
    selector = check_labels(spec.get("selector"), "spec.selector", problems)
    c.problems.extend("%s: %s" % (c.who, p) for p in problems)
    if selector:
        out["selector"] = selector
    ports = spec.get("ports")
    if ports is not None and (not isinstance(ports, list) or not ports):
        c.bad("spec.ports", "must be a non-empty list of ports")
        ports = []
    out["ports"], seen = [], {}
    for i, port in enumerate(ports or []):
        path = "spec.ports[%d]" % i
        port = c.fields(port, path, ("name", "protocol", "port", "targetPort", "nodePort", "appProtocol"),
                        required=("port",))
        item = {"protocol": port.get("protocol", "TCP")}
        if item["protocol"] not in PROTOCOLS:
            c.bad(path + ".protocol", "unsupported value %s: supported values: \"TCP\", \"UDP\", \"SCTP\""
                  % json.dumps(item["protocol"]))
        name = port.get("name")
        if name is not None:
            if not isinstance(name, str) or not IANA_SVC_NAME.match(name) or len(name) > 63:
                c.bad(path + ".name", "must be a DNS label (got %s)" % json.dumps(name))
            item["name"] = name
        elif len(ports) > 1:
            c.bad(path + ".name", "required when a Service has more than one port")
        number = c.integer(port.get("port"), path + ".port", 1, 65535)
        if number is not None:
            item["port"] = number
            if (number, item["protocol"]) in seen:
                c.bad(path, "duplicate port %d/%s (also spec.ports[%d])" % (number, item["protocol"],
                                                                           seen[(number, item["protocol"])]))
            seen[(number, item["protocol"])] = i
        target = port.get("targetPort", number)
        if isinstance(target, str) and not target.isdigit():
            if not IANA_SVC_NAME.match(target) or len(target) > 15:
                c.bad(path + ".targetPort", "must be a port number or an IANA_SVC_NAME (got %s)" % json.dumps(target))
            item["targetPort"] = target
        elif target is not None:
            value = c.integer(int(target) if isinstance(target, str) else target, path + ".targetPort", 1, 65535)
            if value is not None:
                item["targetPort"] = value
        if port.get("nodePort") is not None:
            if out["type"] == "ClusterIP":
                c.bad(path + ".nodePort", "may not be used when `type` is 'ClusterIP'")
            value = c.integer(port["nodePort"], path + ".nodePort", *NODE_PORT_RANGE)
            if value is not None:
                item["nodePort"] = value
        out["ports"].append(item)
    cluster_ip = spec.get("clusterIP")
    if cluster_ip is not None:
        if cluster_ip == "None":
            c.bad("spec.clusterIP", "headless Services are not supported")
        else:
            out["clusterIP"] = _ipv4(c, cluster_ip, "spec.clusterIP")
    affinity = _choice(c, spec, "sessionAffinity", ("None", "ClientIP"), "None")
    out["sessionAffinity"] = affinity
    config = c.fields(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig", ("clientIP",))
    client_ip = c.fields(config.get("clientIP"), "spec.sessionAffinityConfig.clientIP", ("timeoutSeconds",))
    timeout = c.integer(client_ip.get("timeoutSeconds"), "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        1, 86400)
    if timeout is not None and affinity != "ClientIP":
        c.bad("spec.sessionAffinityConfig", "must not be set when sessionAffinity is \"None\"")
    if affinity == "ClientIP":
        out["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": timeout or DEFAULT_AFFINITY_TIMEOUT}}
    external = _choice(c, spec, "externalTrafficPolicy", POLICIES, "Cluster")
    if spec.get("externalTrafficPolicy") is not None and out["type"] == "ClusterIP":
        c.bad("spec.externalTrafficPolicy", "may only be set when `type` is 'NodePort' or 'LoadBalancer'")
    out["externalTrafficPolicy"] = external
    out["internalTrafficPolicy"] = _choice(c, spec, "internalTrafficPolicy", POLICIES, "Cluster")
    ips = spec.get("externalIPs")
    if ips is not None:
        if not isinstance(ips, list):
            c.bad("spec.externalIPs", "must be a list of IPv4 addresses")
            ips = []
        out["externalIPs"] = [_ipv4(c, ip, "spec.externalIPs[%d]" % i) for i, ip in enumerate(ips)]
    if spec.get("loadBalancerIP") is not None:
        if out["type"] != "LoadBalancer":
            c.bad("spec.loadBalancerIP", "may only be set when `type` is 'LoadBalancer'")
        out["loadBalancerIP"] = _ipv4(c, spec["loadBalancerIP"], "spec.loadBalancerIP")
    return out


def allocate(svc: dict, existing: dict | None, others: list, service_cidr: str, rng=random) -> list:
    """Give `svc` (checked) its ClusterIP and NodePorts in place, as the API server does: a re-applied
    Service keeps what it had; `others` are the other stored Services. Returns problems (nothing is
    changed in the store either way: the caller writes only when there are none)."""
    who = "Service %s/%s" % (svc["metadata"]["namespace"], svc["metadata"]["name"])
    problems = []
    network = ipaddress.IPv4Network(service_cidr)
    spec, old = svc["spec"], (existing or {}).get("spec") or {}
    taken_ips = {o["spec"].get("clusterIP"): o for o in others}
    wanted = spec.get("clusterIP")
    if old.get("clusterIP") and wanted not in (None, old["clusterIP"]):
        problems.append("%s: spec.clusterIP: field is immutable (it is %s)" % (who, old["clusterIP"]))
    elif wanted is not None and ipaddress.IPv4Address(wanted) not in network:
        problems.append("%s: spec.clusterIP: %s is not in the service range %s" % (who, wanted, service_cidr))
    elif wanted is not None and wanted in taken_ips and not old.get("clusterIP"):
        other = taken_ips[wanted]["metadata"]
        problems.append("%s: spec.clusterIP: %s is already allocated to Service %s/%s"
                        % (who, wanted, other["namespace"], other["name"]))
    elif wanted is None:
        wanted = old.get("clusterIP")
        # The first address is the kubernetes Service's, as the API server reserves it; the last is
        # the range's broadcast address.
        free = network.num_addresses - 3 - len(taken_ips)
        while wanted is None and free > 0:
            candidate = str(network.network_address + rng.randrange(2, network.num_addresses - 1))
            if candidate not in taken_ips:
                wanted = candidate
        if wanted is None:
            problems.append("%s: spec.clusterIP: the service range %s is full" % (who, service_cidr))
    spec["clusterIP"] = wanted
    if spec["type"] == "ClusterIP":
        return problems
    taken_ports = {}
    for other in others:
        for port in other["spec"].get("ports", []):
            if port.get("nodePort"):
                taken_ports[(port["nodePort"], port["protocol"])] = other["metadata"]
    kept = {(p.get("port"), p["protocol"]): p.get("nodePort") for p in old.get("ports", [])}
    for i, port in enumerate(spec["ports"]):
        key = (port.get("nodePort"), port["protocol"])
        if port.get("nodePort") is None:
            port["nodePort"] = kept.get((port["port"], port["protocol"]))
            while port["nodePort"] is None or (port["nodePort"], port["protocol"]) in taken_ports:
                port["nodePort"] = rng.randint(*NODE_PORT_RANGE)
        elif key in taken_ports:
            meta = taken_ports[key]
            problems.append("%s: spec.ports[%d].nodePort: %d/%s is already allocated to Service %s/%s"
                            % (who, i, port["nodePort"], port["protocol"], meta["namespace"], meta["name"]))
        taken_ports[(port["nodePort"], port["protocol"])] = svc["metadata"]
    return problems


def selects(svc: dict, pod: dict) -> bool:
    """Whether the Service's selector takes the pod, ready or not (a Service without one takes none)."""
    selector = svc["spec"].get("selector")
    return bool(selector) and pod["metadata"].get("namespace") == svc["metadata"]["namespace"] and \
        all((pod["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())


def selected_pods(svc: dict, pods: list) -> list:
    """The Service's endpoints: the Running pods with an IP that it selects."""
    return [pod for pod in pods if selects(svc, pod) and (pod.get("status") or {}).get("phase") == "Running"
            and (pod.get("status") or {}).get("podIP")]


def target_port(port: dict, pod: dict) -> int | None:
    """The pod's port for a Service port: the number, or the container port with that name and
    protocol (None when the pod has no such port: it is not a backend of this port, as in Kubernetes)."""
    target = port.get("targetPort", port["port"])
    if isinstance(target, int):
        return target
    for container in pod["spec"].get("containers", []):
        for cport in container.get("ports") or []:
            if cport.get("name") == target and cport.get("protocol", "TCP") == port["protocol"]:
                return cport["containerPort"]
    return None


def service_frontends(svc: dict, node_ip: str) -> list:
    """[(port entry, address, port, kind)] of one Service on the node with address node_ip."""
    spec = svc["spec"]
    out = []
    for port in spec["ports"]:
        out.append((port, spec["clusterIP"], port["port"], "ClusterIP"))
        if spec["type"] in ("NodePort", "LoadBalancer"):
            out.append((port, node_ip, port["nodePort"], "NodePort"))
        if spec["type"] == "LoadBalancer" and spec.get("loadBalancerIP"):
            out.append((port, spec["loadBalancerIP"], port["port"], "LoadBalancer"))
        for address in spec.get("externalIPs") or []:
            out.append((port, address, port["port"], "ExternalIP"))
    return out


def service_backends(svc: dict, port: dict, pods: list, node_name: str) -> list:
    """[(address, port, protocol, local)] of one Service port, sorted (the same list on every node)."""
    out = set()
    for pod in selected_pods(svc, pods):
        number = target_port(port, pod)
        if number is not None:
            out.add((pod["status"]["podIP"], number, port["protocol"], pod["spec"].get("nodeName") == node_name))
    return sorted(out)


SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # an EndpointSlice's Service (discovery.k8s.io/v1)


def slice_service(endpoint_slice: dict) -> str | None:
    """The name of the Service an EndpointSlice belongs to (its kubernetes.io/service-name label)."""
    return ((endpoint_slice.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)


def ready_endpoints(endpoint_slice: dict) -> list:
    """The endpoints of an IPv4 EndpointSlice that take connections, as kube-proxy reads them: `ready`
    unset counts as ready, a terminating endpoint is not ready ([] for another address type)."""
    if endpoint_slice.get("addressType") != "IPv4":
        return []
    return [endpoint for endpoint in endpoint_slice.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready") is not False]


def slice_backends(port: dict, slices: list, node_name: str) -> list:
    """[(address, port, protocol, local)] of one Service port from the Service's EndpointSlices, sorted:
    every ready endpoint's addresses with the slice's port of the same name and protocol."""
    name = port.get("name") or ""
    out = set()
    for endpoint_slice in slices:
        numbers = [p["port"] for p in endpoint_slice.get("ports") or []
                   if (p.get("name") or "") == name and p.get("protocol", "TCP") == port["protocol"]
                   and p.get("port") is not None]
        for endpoint in ready_endpoints(endpoint_slice):
            local = endpoint.get("nodeName") == node_name
            for number in numbers:
                for address in endpoint.get("addresses") or []:
                    out.add((address, number, port["protocol"], local))
    return sorted(out)


def named_port_problems(svc: dict, pods: list) -> list:
    """A named targetPort that none of the selected pods defines is refused (rather than a Service
    that silently has no endpoints for that port)."""
    who = "Service %s/%s" % (svc["metadata"]["namespace"], svc["metadata"]["name"])
    selected = selected_pods(svc, pods)
    problems = []
    for i, port in enumerate(svc["spec"]["ports"]):
        if isinstance(port.get("targetPort"), str) and selected and \
                all(target_port(port, pod) is None for pod in selected):
            problems.append("%s: spec.ports[%d].targetPort: no pod the Service selects has a %s container port "
                            "named %s" % (who, i, port["protocol"], json.dumps(port["targetPort"])))
    return problems
