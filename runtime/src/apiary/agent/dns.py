"""The cluster's DNS, served by every node's agent at the node-local DNS address (Kubespray's
nodelocaldns, 169.254.25.10 by default; the kubelet's clusterDNS, so the pods' resolv.conf names it).

It answers as CoreDNS's `kubernetes` plugin does with Kubespray's Corefile (`pods insecure`), from the
objects the agent already watches (docs/dns.md says why this is the agent's and not a CoreDNS
Deployment):

- `<service>.<namespace>.svc.<domain>`: A with the ClusterIP; for a headless Service, one A per ready
  endpoint of its EndpointSlices; for an ExternalName Service, a CNAME to its external name.
- `<endpoint>.<service>.<namespace>.svc.<domain>` of a headless Service: A with the endpoint's address,
  named by its `hostname` (StatefulSets) or its address with dashes (10-233-64-5).
- `_<port>._<protocol>.<service>.<namespace>.svc.<domain>`: SRV for a named port (priority 0, weight
  100 as CoreDNS), the target being the Service's name (ClusterIP) or each endpoint's name (headless),
  with their A records as additional records; SRV on the Service's own name lists every named port.
- `<a-b-c-d>.<namespace>.pod.<domain>`: A with a.b.c.d (`pods insecure`: not checked against pods).
- Any other name in the cluster domain: NXDOMAIN; a name that exists asked for another type (AAAA):
  NOERROR without answers. TTL 5 s (CoreDNS's default).
- Names outside the cluster domain go to the upstream servers (Kubespray's `upstream_dns_servers`) and
  their answer comes back as it is; SERVFAIL when none answers, REFUSED when there are none.

UDP and TCP. A UDP answer longer than the client accepts (512 bytes, or its EDNS size) is sent
truncated (TC), and the client asks again over TCP, as with any DNS server.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import threading
from typing import Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from apiary import service

log = logging.getLogger("apiary.agent.dns")

CLUSTER_DOMAIN = "cluster.local"
TTL = 5
UPSTREAM_TIMEOUT = 2.0  # seconds per upstream server
SRV_PRIORITY, SRV_WEIGHT = 0, 100


class Catalogue(Protocol):
    """What the answers are made of: the agent's Kubernetes source provides it (its watch caches), or
    in store mode its service cache."""

    def service(self, namespace: str, name: str) -> dict | None:
        """The Service object, or None."""

    def endpoint_slices(self, namespace: str, name: str) -> list:
        """The Service's EndpointSlices (discovery.k8s.io/v1 objects)."""


def _ready_endpoints(slices: list) -> list:
    """[(address, hostname or None)] of the slices' ready endpoints, sorted (a stable answer)."""
    return sorted({(address, endpoint.get("hostname")) for endpoint_slice in slices
                   for endpoint in service.ready_endpoints(endpoint_slice)
                   for address in endpoint.get("addresses") or []})


def _endpoint_label(address: str, hostname: str | None) -> str:
    return hostname or address.replace(".", "-")


def _slice_ports(slices: list) -> list:
    """[(name, protocol, port)] of the named ports of a headless Service's slices."""
    return sorted({(p["name"], p.get("protocol", "TCP"), p["port"]) for s in slices for p in s.get("ports") or []
                   if p.get("name") and p.get("port") is not None})


class Resolver:
    """Answers one query (dns.message.Message) from the catalogue, or forwards it upstream."""

    def __init__(self, catalogue: Catalogue, domain: str = CLUSTER_DOMAIN, upstream: tuple = ()):
        self.catalogue = catalogue
        self.zone = dns.name.from_text(domain)
        # Each server: an address (port 53), or (address, port).
        self.upstream = tuple((server, 53) if isinstance(server, str) else tuple(server) for server in upstream)

    def respond(self, wire: bytes, max_size: int | None = None) -> bytes | None:
        """The reply to a query in wire format (None: nothing to reply to); max_size: UDP's limit."""
        try:
            query = dns.message.from_wire(wire)
        except dns.message.ShortHeader:
            return None
        except dns.exception.DNSException:
            return _error(wire, dns.rcode.FORMERR)
        if query.flags & dns.flags.QR:
            return None  # a response: never answer those
        if query.opcode() != dns.opcode.QUERY:
            return self._reply(query, dns.rcode.NOTIMP).to_wire()
        if len(query.question) != 1:
            return self._reply(query, dns.rcode.FORMERR).to_wire()
        question = query.question[0]
        if not question.name.is_subdomain(self.zone):
            return self._forward(query, wire)
        response = self._reply(query, dns.rcode.NOERROR)
        response.flags |= dns.flags.AA
        self._answer(question.name, question.rdtype, response)
        limit = max_size if max_size is not None else 65535
        if query.edns >= 0 and max_size is not None:
            limit = max(max_size, query.payload)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = self._reply(query, response.rcode())
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire()

    @staticmethod
    def _reply(query, rcode: int):
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        return response

    # --- the cluster's names ------------------------------------------------------------------------
    def _answer(self, name, rdtype, response) -> None:
        labels = [label.decode("ascii", "replace").lower() for label in name.relativize(self.zone).labels]
        records = self._records(labels, name)
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return
        answers, additional = records
        for rrset in answers:
            if rrset.rdtype == rdtype or rdtype == dns.rdatatype.ANY or rrset.rdtype == dns.rdatatype.CNAME:
                response.answer.append(rrset)
        if response.answer:
            response.additional.extend(additional)

    def _records(self, labels: list, name) -> tuple | None:
        """([answer rrsets], [additional rrsets]) of a name in the zone, None when it does not exist."""
        if len(labels) == 3 and labels[2] == "pod":  # a-b-c-d.<namespace>.pod
            try:
                address = ipaddress.IPv4Address(labels[0].replace("-", "."))
            except ValueError:
                return None
            return [_rrset(name, dns.rdatatype.A, str(address))], []
        if len(labels) < 3 or labels[-1] != "svc":
            return None
        namespace, service_name = labels[-2], labels[-3]
        svc = self.catalogue.service(namespace, service_name)
        if svc is None:
            return None
        spec = svc.get("spec") or {}
        service_fqdn = dns.name.from_text("%s.%s.svc" % (service_name, namespace), self.zone)
        if spec.get("type") == "ExternalName":
            if len(labels) != 3:
                return None
            return [_rrset(name, dns.rdatatype.CNAME, dns.name.from_text(spec["externalName"]).to_text())], []
        headless = spec.get("clusterIP") in (None, "", "None")
        slices = self.catalogue.endpoint_slices(namespace, service_name) if headless else []
        endpoints = _ready_endpoints(slices)
        if len(labels) == 3:  # the Service's name
            if headless:
                a = [_rrset(name, dns.rdatatype.A, *[address for address, _ in endpoints])] if endpoints else []
            else:
                a = [_rrset(name, dns.rdatatype.A, spec["clusterIP"])]
            srv, extra = self._srv(name, service_fqdn, spec, endpoints, slices, headless, None, None)
            return a + srv, extra
        if len(labels) == 4 and headless:  # <endpoint>.<service>
            found = [address for address, hostname in endpoints if _endpoint_label(address, hostname) == labels[0]]
            return ([_rrset(name, dns.rdatatype.A, *found)], []) if found else None
        if len(labels) == 5 and labels[0].startswith("_") and labels[1].startswith("_"):  # _port._proto.<service>
            srv, extra = self._srv(name, service_fqdn, spec, endpoints, slices, headless,
                                   labels[0][1:], labels[1][1:].upper())
            return (srv, extra) if srv else None
        return None

    def _srv(self, name, service_fqdn, spec, endpoints, slices, headless, port_name, protocol) -> tuple:
        """SRV records of the Service's named ports (all, or the one asked for) and their targets' A."""
        ports = _slice_ports(slices) if headless else sorted(
            (p["name"], p.get("protocol", "TCP"), p["port"]) for p in spec.get("ports") or [] if p.get("name"))
        wanted = [(n, proto, port) for n, proto, port in ports
                  if port_name is None or (n.lower() == port_name and proto == protocol)]
        records, additional = [], {}
        for _, _, port in wanted:
            if headless:
                for address, hostname in endpoints:
                    target = dns.name.from_text(_endpoint_label(address, hostname), service_fqdn)
                    records.append("%d %d %d %s" % (SRV_PRIORITY, SRV_WEIGHT, port, target.to_text()))
                    additional[target] = address
            else:
                records.append("%d %d %d %s" % (SRV_PRIORITY, SRV_WEIGHT, port, service_fqdn.to_text()))
                additional[service_fqdn] = spec["clusterIP"]
        if not records:
            return [], []
        return ([_rrset(name, dns.rdatatype.SRV, *records)],
                [_rrset(target, dns.rdatatype.A, address) for target, address in sorted(additional.items())])

    # --- other names --------------------------------------------------------------------------------
    def _forward(self, query, wire: bytes) -> bytes:
        if not self.upstream:
            return self._reply(query, dns.rcode.REFUSED).to_wire()
        for server in self.upstream:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(UPSTREAM_TIMEOUT)
                    sock.connect(server)
                    sock.send(wire)
                    while True:
                        reply = sock.recv(65535)
                        if reply[:2] == wire[:2]:  # the answer to this query (its ID)
                            return reply
            except OSError as exc:
                log.debug("dns: upstream %s: %s", server, exc)
        return self._reply(query, dns.rcode.SERVFAIL).to_wire()


def _rrset(name, rdtype, *values):
    return dns.rrset.from_text_list(name, TTL, dns.rdataclass.IN, rdtype, list(values))


def _error(wire: bytes, rcode: int) -> bytes:
    """A bare reply (ID and opcode of the query, no question) for a query that does not parse."""
    flags = (wire[2] & 0x79) << 8 | 0x8000 | rcode  # QR, the opcode and RD of the query
    return wire[:2] + flags.to_bytes(2, "big") + bytes(8)


class DnsServer:
    """UDP and TCP on (address, port), each in a thread of its own."""

    def __init__(self, address: str, catalogue, domain: str = CLUSTER_DOMAIN, upstream: tuple = (), port: int = 53):
        self.resolver = Resolver(catalogue, domain, upstream)
        resolver = self.resolver

        class Udp(socketserver.BaseRequestHandler):
            def handle(self):
                data, sock = self.request
                reply = resolver.respond(data, max_size=512)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class Tcp(socketserver.StreamRequestHandler):
            timeout = 10  # an idle connection is closed after this (seconds)

            def handle(self):
                while True:  # a client may send several queries on one connection
                    size = self.rfile.read(2)
                    if len(size) < 2:
                        return
                    reply = resolver.respond(self.rfile.read(int.from_bytes(size, "big")))
                    if reply is None:
                        return
                    self.wfile.write(len(reply).to_bytes(2, "big") + reply)

        udp = _Threaded(_UdpServer, (address, port), Udp)
        self.port = udp.server.server_address[1]  # port 0: the one UDP got, for TCP too
        self.servers = [udp, _Threaded(_TcpServer, (address, self.port), Tcp)]

    def start(self) -> "DnsServer":
        for server in self.servers:
            server.start()
        return self

    def close(self) -> None:
        for server in self.servers:
            server.close()


class _UdpServer(socketserver.ThreadingUDPServer):
    allow_reuse_address = True
    daemon_threads = True


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class _Threaded:
    def __init__(self, kind, address, handler):
        self.server = kind(address, _logged(handler))
        self.thread = threading.Thread(target=self.server.serve_forever, name="dns", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _logged(handler):
    """The handler class, made so that one bad query neither stops the server nor prints a traceback."""
    class Logged(handler):
        def handle(self):
            try:
                super().handle()
            except Exception as exc:  # noqa: BLE001
                log.warning("dns: query from %s: %s", self.client_address, exc)
    return Logged
