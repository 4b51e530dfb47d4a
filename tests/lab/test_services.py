"""Services in `apiary lab apply|get|delete` (in-memory store, fake kubelet) and apiary.service's
translation into one node's frontends and backends."""
import copy
import ipaddress
import json

import pytest

from apiary import service
from apiary.errors import UserError
from apiary.lab import objects
from tests.lab import manifests
from tests.lab.test_apply import NS, apply, make
from tests.lab.test_validation import refused

NODEPORT = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: network-policy-test}
spec:
  type: NodePort
  selector: {role: frontend}
  externalTrafficPolicy: Local
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: http, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
"""
NAMED_FRONTEND = manifests.seed().replace("- containerPort: 80", "- containerPort: 80\n          name: http")


def stored(c, name, ns=NS):
    return c.store.get("Service", ns, name)


def test_the_seed_service_gets_a_cluster_ip_from_the_range_and_keeps_it():
    c, _ = make()
    apply(c, manifests.seed())
    rc, lines = apply(c, manifests.SERVICE)
    assert rc == 0 and lines == ["service/frontend created"]
    svc = stored(c, "frontend")
    ip = svc["spec"]["clusterIP"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.233.0.0/18")
    assert ip not in ("10.233.0.0", "10.233.0.1", "10.233.63.255")
    assert svc["spec"]["ports"] == [{"protocol": "TCP", "port": 80, "targetPort": 80}]
    assert apply(c, manifests.SERVICE)[1] == ["service/frontend unchanged"]
    changed = manifests.SERVICE.replace("targetPort: 80", "targetPort: 8080")
    assert apply(c, changed)[1] == ["service/frontend configured"]
    assert stored(c, "frontend")["spec"]["clusterIP"] == ip


def test_node_ports_named_target_ports_affinity_and_policies():
    c, _ = make()
    apply(c, NAMED_FRONTEND)
    assert apply(c, NODEPORT)[0] == 0
    spec = stored(c, "web")["spec"]
    assert [p["nodePort"] for p in spec["ports"]][0] == 30080
    assert 30000 <= spec["ports"][1]["nodePort"] <= 32767
    assert spec["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}
    assert (spec["externalTrafficPolicy"], spec["internalTrafficPolicy"]) == ("Local", "Cluster")
    # A second NodePort service cannot take 30080/TCP; the whole file is refused.
    other = NODEPORT.replace("name: web", "name: web2")
    msg = refused_on(c, other)
    assert "Service network-policy-test/web2: spec.ports[0].nodePort: 30080/TCP is already allocated to " \
           "Service network-policy-test/web" in msg
    assert stored(c, "web2") is None


def refused_on(c, text):
    before = json.dumps(c.store.list("Service"), sort_keys=True)
    with pytest.raises(UserError) as info:
        c.apply(objects.parse_manifests(text), NS)
    assert json.dumps(c.store.list("Service"), sort_keys=True) == before
    assert "nothing was applied" in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("change, field, message", [
    ("port: 80\n", "spec.ports[0].port", "must be between 1 and 65535 (got 70000)"),
    ("protocol: TCP", "spec.ports[0].protocol", 'unsupported value "ICMP"'),
    ("targetPort: 80", "spec.ports[0].targetPort", "must be a port number or an IANA_SVC_NAME"),
    ("selector:", "spec.colour", "unknown or unsupported field"),
    ("ports:", "spec.clusterIP", 'must be an IPv4 address (got "10.233.0.300")'),
    ("ports:", "spec.type", 'unsupported value "ExternalName"'),
    ("ports:", "spec.ports[0].nodePort", "may not be used when `type` is 'ClusterIP'"),
    ("ports:", "spec.externalIPs[0]", 'must be an IPv4 address (got "not-an-ip")'),
])
def test_bad_services_are_refused_naming_the_field(change, field, message):
    bad = {
        "port: 80\n": manifests.SERVICE.replace("port: 80\n", "port: 70000\n"),
        "protocol: TCP": manifests.SERVICE.replace("protocol: TCP", "protocol: ICMP"),
        "targetPort: 80": manifests.SERVICE.replace("targetPort: 80", "targetPort: Not_A_Name"),
        "selector:": manifests.SERVICE.replace("  selector:", "  colour: blue\n  selector:"),
    }.get(change)
    if bad is None:
        extra = {"spec.clusterIP": "  clusterIP: 10.233.0.300\n", "spec.type": "  type: ExternalName\n",
                 "spec.ports[0].nodePort": "", "spec.externalIPs[0]": "  externalIPs: [not-an-ip]\n"}[field]
        bad = manifests.SERVICE.replace("  ports:", extra + "  ports:")
        if field == "spec.ports[0].nodePort":
            bad = bad.replace("targetPort: 80", "targetPort: 80\n    nodePort: 30001")
    msg = refused(manifests.seed() + "---\n" + bad)
    assert "Service network-policy-test/frontend: %s: %s" % (field, message) in msg


def test_addresses_outside_the_range_taken_or_changed_are_refused():
    c, _ = make()
    apply(c, manifests.seed())
    outside = manifests.SERVICE.replace("  ports:", "  clusterIP: 10.96.0.10\n  ports:")
    assert "spec.clusterIP: 10.96.0.10 is not in the service range 10.233.0.0/18" in refused_on(c, outside)
    fixed = manifests.SERVICE.replace("  ports:", "  clusterIP: 10.233.0.10\n  ports:")
    assert apply(c, fixed)[0] == 0
    taken = fixed.replace("name: frontend", "name: other")
    assert "Service network-policy-test/other: spec.clusterIP: 10.233.0.10 is already allocated to Service " \
           "network-policy-test/frontend" in refused_on(c, taken)
    moved = fixed.replace("10.233.0.10", "10.233.0.11")
    assert "spec.clusterIP: field is immutable (it is 10.233.0.10)" in refused_on(c, moved)


def test_a_named_target_port_no_selected_pod_has_is_refused():
    c, _ = make()
    apply(c, manifests.seed())  # the seed's frontends name no port
    msg = refused_on(c, NODEPORT.replace("{role: frontend}", "{role: frontend}").replace("nodePort: 30080", "nodePort: 30081"))
    assert 'Service network-policy-test/web: spec.ports[0].targetPort: no pod the Service selects has a TCP ' \
           'container port named "http"' in msg


def test_get_and_delete_services_and_namespace_deletion():
    c, _ = make()
    apply(c, NAMED_FRONTEND)
    apply(c, NODEPORT)
    from apiary.lab import cli
    assert cli.KIND_ALIASES["svc"] == "Service"
    c.delete("Service", NS, "web")
    assert stored(c, "web") is None
    apply(c, manifests.SERVICE)
    c.delete("Namespace", None, NS)
    assert c.store.list("Service", NS) == []


# --- one node's frontends and backends -------------------------------------------------------------

def _pod(name, ip, node, labels, ports=(), phase="Running"):
    return {"metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": list(ports)}]},
            "status": {"phase": phase, "podIP": ip}}


def test_frontends_and_backends_of_a_node():
    c, _ = make()
    apply(c, NAMED_FRONTEND)
    apply(c, NODEPORT.replace("  ports:", "  externalIPs: [198.51.100.7]\n  ports:"))
    svc = stored(c, "web")
    http = {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    pods = [_pod("a", "10.233.64.5", "node1", {"role": "frontend"}, [http]),
            _pod("b", "10.233.65.5", "node2", {"role": "frontend"}, [http]),
            _pod("c", "10.233.65.6", "node2", {"role": "frontend"}, [], phase="Pending"),
            _pod("d", "10.233.65.7", "node2", {"role": "backend"}, [http]),
            _pod("e", "10.233.65.8", "node2", {"role": "frontend"}, [])]  # no port named http
    frontends = service.service_frontends(svc, "10.77.101.11")
    cluster_ip, node_ports = svc["spec"]["clusterIP"], [p["nodePort"] for p in svc["spec"]["ports"]]
    assert [(a, p, k) for _, a, p, k in frontends] == [
        (cluster_ip, 80, "ClusterIP"), ("10.77.101.11", node_ports[0], "NodePort"), ("198.51.100.7", 80, "ExternalIP"),
        (cluster_ip, 53, "ClusterIP"), ("10.77.101.11", node_ports[1], "NodePort"), ("198.51.100.7", 53, "ExternalIP")]
    http_port, dns_port = svc["spec"]["ports"]
    assert service.service_backends(svc, http_port, pods, "node1") == [
        ("10.233.64.5", 8080, "TCP", True), ("10.233.65.5", 8080, "TCP", False)]
    assert service.service_backends(svc, dns_port, pods, "node2") == [
        ("10.233.64.5", 5353, "UDP", False), ("10.233.65.5", 5353, "UDP", True), ("10.233.65.8", 5353, "UDP", True)]
    headless = copy.deepcopy(svc)
    del headless["spec"]["selector"]
    assert service.service_backends(headless, http_port, pods, "node1") == []
