"""The node-local DNS's answers (apiary.agent.dns.answer), byte by byte against RFC 1035."""
import socket
import struct

from apiary.agent.dns import answer

SERVICES = {("network-policy-test", "frontend"): "10.233.12.7"}


def lookup(namespace, name):
    return SERVICES.get((namespace, name))


def query(name: str, qtype: int = 1, qid: int = 0x1234, flags: int = 0x0100) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0) + labels + struct.pack("!HH", qtype, 1)


def header(reply: bytes) -> dict:
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", reply[:12])
    return {"id": qid, "qr": bool(flags & 0x8000), "aa": bool(flags & 0x0400), "rd": bool(flags & 0x0100),
            "rcode": flags & 0xF, "qd": qd, "an": an}


def test_a_service_name_answers_with_its_cluster_ip():
    q = query("frontend.network-policy-test.svc.cluster.local")
    reply = answer(q, lookup)
    assert header(reply) == {"id": 0x1234, "qr": True, "aa": True, "rd": True, "rcode": 0, "qd": 1, "an": 1}
    assert reply[12:len(q)] == q[12:]  # the question, echoed
    name_ptr, rtype, rclass, ttl, length = struct.unpack("!HHHIH", reply[len(q):len(q) + 12])
    assert (name_ptr, rtype, rclass, ttl, length) == (0xC00C, 1, 1, 5, 4)
    assert socket.inet_ntoa(reply[len(q) + 12:]) == "10.233.12.7"
    # Case does not matter in DNS names.
    assert header(answer(query("FrontEnd.Network-Policy-Test.svc.Cluster.Local"), lookup))["an"] == 1


def test_other_types_unknown_names_and_foreign_names():
    aaaa = header(answer(query("frontend.network-policy-test.svc.cluster.local", qtype=28), lookup))
    assert (aaaa["rcode"], aaaa["an"]) == (0, 0)  # NODATA: the name exists
    for name in ("backend.network-policy-test.svc.cluster.local", "frontend.other.svc.cluster.local",
                 "frontend.svc.cluster.local", "x.frontend.network-policy-test.svc.cluster.local",
                 "frontend.network-policy-test.cluster.local"):
        assert header(answer(query(name), lookup))["rcode"] == 3, name  # NXDOMAIN
    assert header(answer(query("deb.debian.org"), lookup))["rcode"] == 5  # REFUSED: no upstream here


def test_malformed_queries():
    assert answer(b"\x12\x34", lookup) is None  # not even a header
    assert answer(query("frontend.network-policy-test.svc.cluster.local", flags=0x8000), lookup) is None  # a response
    truncated = query("frontend.network-policy-test.svc.cluster.local")[:-3]
    assert header(answer(truncated, lookup))["rcode"] == 1  # FORMERR
    assert header(answer(query("a.b", flags=0x0900), lookup))["rcode"] == 4  # opcode 1 (IQUERY): NOTIMP
