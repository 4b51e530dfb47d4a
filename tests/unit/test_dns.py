"""The cluster DNS (apiary.agent.dns) against dnspython's reading of its answers: CoreDNS's `kubernetes`
plugin behaviour for Services (ClusterIP, headless, ExternalName), endpoints, SRV, pods; forwarding to
upstream servers; truncation and TCP; malformed queries. Servers run in namespaces made here."""
import socket
import threading

import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from apiary import netns
from apiary.agent.dns import DnsServer, Resolver
from tests.helpers.etcd import temp_netns

NS = "network-policy-test"


def slice_of(service, endpoints, ports=(("http", 80),)):
    return {"metadata": {"name": service + "-x", "namespace": NS, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "conditions": {} if ready is None else {"ready": ready},
                           **({"hostname": hostname} if hostname else {})} for address, ready, hostname in endpoints],
            "ports": [{"name": name, "port": port, "protocol": "TCP"} for name, port in ports]}


class Catalogue:
    def __init__(self):
        self.services = {
            "frontend": {"spec": {"type": "ClusterIP", "clusterIP": "10.233.12.7",
                                  "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                                            {"name": "metrics", "port": 9100, "protocol": "TCP"}]}},
            "db": {"spec": {"type": "ClusterIP", "clusterIP": "None"}},
            "big": {"spec": {"type": "ClusterIP", "clusterIP": "None"}},
            "mail": {"spec": {"type": "ExternalName", "externalName": "smtp.example.org"}},
        }
        self.slices = {
            "db": [slice_of("db", [("10.233.64.5", None, "db-0"), ("10.233.65.9", True, None),
                                   ("10.233.66.2", False, None)], ports=(("postgres", 5432),))],
            "big": [slice_of("big", [("10.233.70.%d" % i, True, None) for i in range(1, 61)])],
        }

    def service(self, namespace, name):
        return self.services.get(name) if namespace == NS else None

    def endpoint_slices(self, namespace, name):
        return self.slices.get(name, []) if namespace == NS else []


def ask(name, rdtype="A", resolver=None, max_size=512):
    resolver = resolver or Resolver(Catalogue())
    wire = resolver.respond(dns.message.make_query(name, rdtype).to_wire(), max_size=max_size)
    return dns.message.from_wire(wire)


def addresses(reply, rdtype=dns.rdatatype.A):
    return sorted(r.to_text() for rrset in reply.answer if rrset.rdtype == rdtype for r in rrset)


def test_a_service_name_answers_with_its_cluster_ip():
    reply = ask("frontend.%s.svc.cluster.local" % NS)
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert addresses(reply) == ["10.233.12.7"] and reply.answer[0].ttl == 5
    assert addresses(ask("FrontEnd.Network-Policy-Test.svc.Cluster.Local")) == ["10.233.12.7"]  # case does not matter


def test_a_headless_service_answers_with_its_ready_endpoints_and_their_names():
    assert addresses(ask("db.%s.svc.cluster.local" % NS)) == ["10.233.64.5", "10.233.65.9"]
    # An endpoint by its hostname (a StatefulSet's pod) or by its address with dashes.
    assert addresses(ask("db-0.db.%s.svc.cluster.local" % NS)) == ["10.233.64.5"]
    assert addresses(ask("10-233-65-9.db.%s.svc.cluster.local" % NS)) == ["10.233.65.9"]
    assert ask("10-233-66-2.db.%s.svc.cluster.local" % NS).rcode() == dns.rcode.NXDOMAIN  # not ready
    assert ask("10-233-12-7.frontend.%s.svc.cluster.local" % NS).rcode() == dns.rcode.NXDOMAIN  # not headless


def test_srv_records_for_named_ports():
    reply = ask("_http._tcp.frontend.%s.svc.cluster.local" % NS, "SRV")
    assert addresses(reply, dns.rdatatype.SRV) == ["0 100 80 frontend.%s.svc.cluster.local." % NS]
    assert [(r.name.to_text(), r[0].to_text()) for r in reply.additional] == \
        [("frontend.%s.svc.cluster.local." % NS, "10.233.12.7")]
    # On the Service's own name: every named port.
    assert addresses(ask("frontend.%s.svc.cluster.local" % NS, "SRV"), dns.rdatatype.SRV) == [
        "0 100 80 frontend.%s.svc.cluster.local." % NS, "0 100 9100 frontend.%s.svc.cluster.local." % NS]
    headless = ask("_postgres._tcp.db.%s.svc.cluster.local" % NS, "SRV")
    assert addresses(headless, dns.rdatatype.SRV) == [
        "0 100 5432 10-233-65-9.db.%s.svc.cluster.local." % NS, "0 100 5432 db-0.db.%s.svc.cluster.local." % NS]
    assert sorted(r[0].to_text() for r in headless.additional) == ["10.233.64.5", "10.233.65.9"]
    for name in ("_https._tcp.frontend", "_http._udp.frontend", "_postgres._tcp.frontend"):
        assert ask("%s.%s.svc.cluster.local" % (name, NS), "SRV").rcode() == dns.rcode.NXDOMAIN, name


def test_pod_names_external_names_and_names_that_do_not_exist():
    assert addresses(ask("10-233-64-5.%s.pod.cluster.local" % NS)) == ["10.233.64.5"]
    assert ask("10-233-64.%s.pod.cluster.local" % NS).rcode() == dns.rcode.NXDOMAIN
    mail = ask("mail.%s.svc.cluster.local" % NS)
    assert [r[0].to_text() for r in mail.answer] == ["smtp.example.org."] and \
        mail.answer[0].rdtype == dns.rdatatype.CNAME
    aaaa = ask("frontend.%s.svc.cluster.local" % NS, "AAAA")
    assert (aaaa.rcode(), aaaa.answer) == (dns.rcode.NOERROR, [])  # NODATA: the name exists
    for name in ("backend.%s.svc.cluster.local" % NS, "frontend.other.svc.cluster.local",
                 "frontend.svc.cluster.local", "frontend.%s.cluster.local" % NS, "cluster.local"):
        assert ask(name).rcode() == dns.rcode.NXDOMAIN, name


def test_other_domains_another_cluster_domain_and_no_upstream():
    assert ask("deb.debian.org").rcode() == dns.rcode.REFUSED  # no upstream server configured
    other = Resolver(Catalogue(), domain="apiary.test")
    assert addresses(ask("frontend.%s.svc.apiary.test" % NS, resolver=other)) == ["10.233.12.7"]
    assert ask("frontend.%s.svc.cluster.local" % NS, resolver=other).rcode() == dns.rcode.REFUSED


def test_a_long_udp_answer_is_truncated_and_whole_over_tcp():
    name = "big.%s.svc.cluster.local" % NS
    udp = ask(name)
    assert udp.flags & dns.flags.TC and udp.answer == []
    assert len(addresses(ask(name, max_size=None))) == 60  # TCP: no limit
    edns = dns.message.make_query(name, "A", use_edns=0, payload=4096)
    big = dns.message.from_wire(Resolver(Catalogue()).respond(edns.to_wire(), max_size=512))
    assert not big.flags & dns.flags.TC and len(addresses(big)) == 60  # the client's EDNS size


def test_malformed_queries():
    resolver = Resolver(Catalogue())
    assert resolver.respond(b"\x12\x34") is None  # not even a header
    response = dns.message.make_response(dns.message.make_query("frontend.%s.svc.cluster.local" % NS, "A"))
    assert resolver.respond(response.to_wire()) is None  # a response: never answered
    garbage = resolver.respond(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03abc")
    assert garbage[:2] == b"\x12\x34" and garbage[3] & 0xF == dns.rcode.FORMERR
    notify = dns.message.make_query("a.b", "A")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert dns.message.from_wire(resolver.respond(notify.to_wire())).rcode() == dns.rcode.NOTIMP


@pytest.fixture
def namespace():
    with temp_netns() as name:
        yield name


def _upstream(ready: threading.Event, box: dict):
    """A fake upstream server on 127.0.0.1 (in the test's namespace) answering one query with 192.0.2.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        box["port"] = sock.getsockname()[1]
        ready.set()
        data, peer = sock.recvfrom(65535)
        reply = dns.message.make_response(dns.message.from_wire(data))
        reply.answer.append(dns.rrset.from_text(reply.question[0].name, 60, "IN", "A", "192.0.2.1"))
        sock.sendto(reply.to_wire(), peer)


def test_other_names_are_forwarded_upstream_and_the_answer_returned(namespace):
    ready, box = threading.Event(), {}
    server = threading.Thread(target=lambda: netns.call_in_thread(namespace, _upstream, ready, box), daemon=True)
    server.start()
    assert ready.wait(10)
    query = dns.message.make_query("www.example.org", "A")
    resolver = Resolver(Catalogue(), upstream=(("127.0.0.1", box["port"]),))
    reply = dns.message.from_wire(netns.call_in_thread(namespace, resolver.respond, query.to_wire(), 512))
    assert reply.id == query.id and addresses(reply) == ["192.0.2.1"] and reply.answer[0].ttl == 60
    server.join(10)
    # The upstream no longer answers: SERVFAIL after its timeout.
    dead = Resolver(Catalogue(), upstream=(("127.0.0.1", box["port"]),))
    reply = dns.message.from_wire(netns.call_in_thread(namespace, dead.respond, query.to_wire(), 512))
    assert reply.rcode() == dns.rcode.SERVFAIL


def test_the_server_answers_over_udp_and_tcp(namespace):
    def serve_and_ask():
        server = DnsServer("127.0.0.1", Catalogue(), port=0).start()
        port = server.port
        try:
            query = dns.message.make_query("big.%s.svc.cluster.local" % NS, "A")
            udp = dns.query.udp(query, "127.0.0.1", port=port, timeout=5)
            tcp = dns.query.tcp(query, "127.0.0.1", port=port, timeout=5)
            return udp, tcp
        finally:
            server.close()
    udp, tcp = netns.call_in_thread(namespace, serve_and_ask)
    assert udp.flags & dns.flags.TC and len(addresses(tcp)) == 60
