"""Issue 5 on the lab's real Kubernetes, as the seed walks it with kubectl: the `frontend` Service,
`wget -qO- http://frontend` from the backend pod (the node-local DNS and the socket load balancer), both
replicas serving, `kubectl scale` shown by `apiary service list`, a NodePort reached from the world through
any node, a clashing NodePort refused by the API server while the first keeps serving. Both routing modes."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from .conftest import kubectl, wait_for
from .seed import EXAMPLES, NS, apiary, exec_in, pods, seed_cluster

pytestmark = pytest.mark.lab

NODE_IPS = {"node1": "10.77.101.11", "node2": "10.77.101.12", "node3": "10.77.101.13"}
WORLD = "apiary-world"
NODEPORT = """\
apiVersion: v1
kind: Service
metadata: {name: frontend-np, namespace: network-policy-test}
spec:
  type: NodePort
  selector: {role: frontend}
  ports:
  - {port: 80, targetPort: 80, nodePort: 30080}
"""


# The order of the modes lets the next seed module take this one's last lab (seed.py).
@pytest.fixture(scope="module", params=["native", "tunnel"])
def cluster(request):
    with seed_cluster(request.param, request.session) as lab:
        kubectl("apply", "-n", NS, "-f", str(EXAMPLES / "frontend-service.yaml"))
        yield lab


def services(node: str) -> dict:
    rows = json.loads(apiary("service", "list", "--node", node, "-o", "json").stdout)
    return {row["frontend"]: row for row in rows}


def cluster_ip() -> str:
    return kubectl("get", "svc", "frontend", "-n", NS, "-o", "jsonpath={.spec.clusterIP}").stdout


def frontend_pods() -> dict:
    return {name: pod for name, pod in pods().items() if name.startswith("frontend-")}


def from_world(url: str):
    # busybox-static's `wget -T` crashes: timeout(1) bounds it instead.
    return subprocess.run(["nsenter", "--net=/run/netns/" + WORLD, "timeout", "5", "busybox", "wget", "-qO-", url],
                          capture_output=True, text=True, timeout=30)


def served(name: str) -> int:
    """Requests in a frontend pod's nginx access log."""
    return len(re.findall(r'"GET / HTTP', kubectl("logs", "-n", NS, name).stdout))


def test_backend_fetches_the_frontend_page_by_service_name(cluster):
    for url in ("http://frontend", "http://frontend.network-policy-test.svc.cluster.local"):
        page = exec_in("backend", "timeout", "10", "wget", "-qO-", url).stdout
        assert "Welcome to nginx!" in page, url
    # The name resolves to the ClusterIP through the node-local DNS the pods' resolv.conf names.
    lookup = exec_in("backend", "nslookup", "frontend.network-policy-test.svc.cluster.local").stdout
    assert cluster_ip() in lookup
    assert "169.254.25.10" in exec_in("backend", "cat", "/etc/resolv.conf").stdout


HEADLESS = """\
apiVersion: v1
kind: Service
metadata: {name: frontend-pods, namespace: network-policy-test}
spec:
  clusterIP: None
  selector: {role: frontend}
  ports:
  - {name: http, port: 80, targetPort: 80}
"""


def dig(*args):
    """netpod's dig (netshoot), asking the nameserver of its resolv.conf (the node-local DNS)."""
    return sorted(exec_in("netpod", "dig", "+short", *args).stdout.split("\n")[:-1])


def test_cluster_dns_answers_as_coredns_and_forwards_the_rest(cluster, tmp_path):
    frontends = sorted(pod["status"]["podIP"] for pod in frontend_pods().values())
    manifest = tmp_path / "headless.yaml"
    manifest.write_text(HEADLESS)
    kubectl("apply", "-f", str(manifest))
    try:
        zone = "network-policy-test.svc.cluster.local"
        # A headless Service: the ready pods' addresses, from its EndpointSlice; also over TCP.
        wait_for("the headless Service's records", lambda: dig("frontend-pods." + zone) == frontends, timeout=30)
        assert dig("+tcp", "frontend-pods." + zone) == frontends
        # SRV for its named port: one per pod, named by its address; each of those names resolves.
        srv = dig("SRV", "_http._tcp.frontend-pods." + zone)
        targets = ["%s.frontend-pods.%s." % (ip.replace(".", "-"), zone) for ip in frontends]
        assert srv == sorted("0 100 80 " + target for target in targets), srv
        assert dig(targets[0]) == [frontends[0]]
        # A pod's own name, as with CoreDNS's `pods insecure`.
        assert dig(frontends[0].replace(".", "-") + ".network-policy-test.pod.cluster.local") == [frontends[0]]
        # A name outside the cluster: asked of upstream_dns_servers (the world's dnsmasq in the lab).
        assert dig("www.example.org") == ["198.51.100.80"]
    finally:
        kubectl("delete", "-f", str(manifest))


def test_both_replicas_on_two_nodes_serve(cluster):
    front = frontend_pods()
    assert len({pod["spec"]["nodeName"] for pod in front.values()}) == 2
    before = {name: served(name) for name in front}
    for _ in range(24):
        exec_in("backend", "timeout", "10", "wget", "-qO", "/dev/null", "http://frontend")
    gained = {name: served(name) - before[name] for name in front}
    assert sum(gained.values()) == 24 and all(n > 0 for n in gained.values()), gained


def test_service_list_on_every_node_and_scaling(cluster, tmp_path):
    frontend = "%s:80/TCP" % cluster_ip()
    ips = sorted("%s:80/TCP" % pod["status"]["podIP"] for pod in frontend_pods().values())
    for node in NODE_IPS:
        row = services(node)[frontend]
        assert row["type"] == "ClusterIP"
        assert sorted(b["address"] for b in row["backends"]) == ips
        assert {b["state"] for b in row["backends"]} == {"active"}
    table = apiary("service", "list", "--node", "node2").stdout
    assert re.search(r"^\d+\s+%s\s+ClusterIP\s+1 => \S+:80/TCP \(active\)$" % re.escape(frontend), table, re.M), table

    def backends(node):
        return sorted(b["address"] for b in services(node)[frontend]["backends"])

    kubectl("scale", "-n", NS, "deployment/frontend", "--replicas=3")
    try:
        kubectl("rollout", "status", "-n", NS, "deployment/frontend", "--timeout=120s", timeout=130)
        ips = sorted("%s:80/TCP" % pod["status"]["podIP"] for pod in frontend_pods().values())
        assert len(ips) == 3
        for node in NODE_IPS:
            wait_for("3 backends on %s" % node, lambda: backends(node) == ips, timeout=30)
    finally:
        kubectl("scale", "-n", NS, "deployment/frontend", "--replicas=2")
    wait_for("2 backends again", lambda: len(backends("node1")) == 2, timeout=60)


def test_nodeport_from_the_world_through_any_node(cluster, tmp_path):
    manifest = tmp_path / "nodeport.yaml"
    manifest.write_text(NODEPORT)
    kubectl("apply", "-f", str(manifest))
    try:
        for node, address in NODE_IPS.items():
            frontend = "%s:30080/TCP" % address
            assert wait_for("the NodePort on " + node, lambda: services(node).get(frontend), timeout=30)["type"] \
                == "NodePort"
            page = from_world("http://%s:30080" % address)
            assert "Welcome to nginx!" in page.stdout, (node, page.stderr)

        # A second Service cannot take the same NodePort: the API server refuses it, and the first keeps serving.
        clash = tmp_path / "clash.yaml"
        clash.write_text(NODEPORT.replace("name: frontend-np", "name: frontend-np2"))
        refused = kubectl("apply", "-f", str(clash), check=False)
        assert refused.returncode != 0
        assert 'Service "frontend-np2" is invalid: spec.ports[0].nodePort: Invalid value: 30080: ' \
            "provided port is already allocated" in refused.stderr, refused.stderr
        assert "frontend-np2" not in kubectl("get", "svc", "-n", NS).stdout
        page = from_world("http://%s:30080" % NODE_IPS["node3"])
        assert "Welcome to nginx!" in page.stdout
    finally:
        kubectl("delete", "-f", str(manifest))
    wait_for("the NodePort to go", lambda: "%s:30080/TCP" % NODE_IPS["node1"] not in services("node1"), timeout=30)


def test_loadbalancer_and_external_ips_from_the_world(cluster, tmp_path):
    # The lab has no MetalLB yet: addresses the world already routes to a node stand in for them, the
    # LoadBalancer's as spec.loadBalancerIP (no controller fills status.loadBalancer: kubectl shows the
    # external IP only).
    manifest = tmp_path / "lb.yaml"
    manifest.write_text(NODEPORT.replace("name: frontend-np", "name: frontend-lb").replace("type: NodePort", (
        "type: LoadBalancer\n  loadBalancerIP: %s\n  externalIPs: [%s]") % (NODE_IPS["node3"], NODE_IPS["node2"]))
        .replace("{port: 80, targetPort: 80, nodePort: 30080}", "{port: 8080, targetPort: 80}"))
    kubectl("apply", "-f", str(manifest))
    try:
        row = next(line for line in kubectl("get", "svc", "-n", NS).stdout.splitlines() if line.startswith("frontend-lb"))
        assert row.split()[1:4] == ["LoadBalancer", row.split()[2], NODE_IPS["node2"]], row
        wait_for("the LoadBalancer's frontend", lambda: "%s:8080/TCP" % NODE_IPS["node3"] in services("node3"), timeout=30)
        kinds = {frontend: row["type"] for frontend, row in services("node3").items()}
        assert kinds["%s:8080/TCP" % NODE_IPS["node3"]] == "LoadBalancer"
        assert kinds["%s:8080/TCP" % NODE_IPS["node2"]] == "ExternalIP"
        for address in (NODE_IPS["node3"], NODE_IPS["node2"]):
            assert "Welcome to nginx!" in from_world("http://%s:8080" % address).stdout, address
    finally:
        kubectl("delete", "-f", str(manifest))
