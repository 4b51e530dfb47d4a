"""Service names for the pods of this node, served by the agent at the node-local DNS address
(Kubespray's nodelocaldns, 169.254.25.10 by default; the pods' resolv.conf names it).

`<service>.<namespace>.svc.<cluster domain>` answers with the Service's ClusterIP (A, TTL 5 s, as
CoreDNS's kubernetes plugin). Any other name in the cluster domain is NXDOMAIN; a known name asked
for another type gets an empty answer (so AAAA lookups do not fail the A one); names outside the
cluster domain are REFUSED: the lab has no upstream resolver. UDP only, as pods' resolvers ask first.
"""
from __future__ import annotations

import logging
import socket
import struct
import threading

log = logging.getLogger("apiary.agent.dns")

CLUSTER_DOMAIN = "cluster.local"
TTL = 5
TYPE_A, TYPE_ANY, CLASS_IN = 1, 255, 1
NOERROR, FORMERR, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 3, 4, 5


def _question(query: bytes):
    """(lowercased name, qtype, end offset of the question) or None when it does not parse."""
    labels, offset = [], 12
    while True:
        if offset >= len(query):
            return None
        length = query[offset]
        if length == 0:
            offset += 1
            break
        if length & 0xC0 or offset + 1 + length > len(query):  # no compression in a question
            return None
        labels.append(query[offset + 1:offset + 1 + length].decode("ascii", "replace").lower())
        offset += 1 + length
    if offset + 4 > len(query):
        return None
    qtype, _ = struct.unpack("!HH", query[offset:offset + 4])
    return ".".join(labels), qtype, offset + 4


def answer(query: bytes, cluster_ip, domain: str = CLUSTER_DOMAIN) -> bytes | None:
    """The reply to one DNS query (None: not even a header to reply to). cluster_ip(namespace,
    service) gives the Service's address or None."""
    if len(query) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000:
        return None  # a response: never answer those
    opcode_rd = flags & 0x7900
    parsed = _question(query) if qdcount == 1 else None

    def reply(rcode: int, question: bytes = b"", answers: bytes = b"", count: int = 0) -> bytes:
        header = struct.pack("!HHHHHH", qid, 0x8000 | opcode_rd | 0x0400 | 0x0080 | rcode,
                             1 if question else 0, count, 0, 0)
        return header + question + answers

    if parsed is None:
        return reply(FORMERR)
    name, qtype, end = parsed
    question = query[12:end]
    if flags & 0x7800:
        return reply(NOTIMP, question)
    suffix = ".svc." + domain
    if not name.endswith(suffix) and name != domain and not name.endswith("." + domain):
        return reply(REFUSED, question)
    parts = name[:-len(suffix)].split(".") if name.endswith(suffix) else []
    address = cluster_ip(parts[1], parts[0]) if len(parts) == 2 else None
    if address is None:
        return reply(NXDOMAIN, question)
    if qtype not in (TYPE_A, TYPE_ANY):
        return reply(NOERROR, question)
    record = struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, TTL, 4) + socket.inet_aton(address)
    return reply(NOERROR, question, record, 1)


class DnsServer:
    """A UDP responder on (address, port) in a thread of its own."""

    def __init__(self, address: str, cluster_ip, port: int = 53):
        self.cluster_ip = cluster_ip
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.thread = threading.Thread(target=self._serve, name="dns", daemon=True)

    def start(self) -> "DnsServer":
        self.thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self.sock.recvfrom(512)
            except OSError:
                return  # closed
            if not query and peer is None:
                return  # shut down
            try:
                response = answer(query, self.cluster_ip)
                if response is not None:
                    self.sock.sendto(response, peer)
            except Exception as exc:  # noqa: BLE001 - one bad query must not stop the server
                log.warning("dns: query from %s: %s", peer, exc)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread's recvfrom
        except OSError:
            pass
        self.sock.close()
        self.thread.join(timeout=5)
