"""Drops outside the datapath (an iptables DROP, the stack itself) from the `skb:kfree_skb` tracepoint,
with the kernel's drop reason, through bcc: Debian's python3-bpfcc, which compiles at run time and so
needs the running kernel's headers (linux-headers-*, under /lib/modules/$(uname -r)/build). This is
what bcc is for in Apiary (ARCHITECTURE.md): tracing, not the datapath. Where bcc cannot run,
status() says exactly why and `apiary status` shows it; nothing pretends to work.

The tracer sees the whole kernel, so it keeps only packets whose device is in this node's network
namespace (its inode number is compiled in).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import socket
import struct
import time

log = logging.getLogger("apiary.observe.kernel_drops")

TRACEPOINT_FORMAT = ("/sys/kernel/tracing/events/skb/kfree_skb/format",
                     "/sys/kernel/debug/tracing/events/skb/kfree_skb/format")
# Reasons that are not drops: a freed packet that was consumed, or not dropped yet.
NOT_DROPS = {"NOT_DROPPED_YET", "CONSUMED"}

PROGRAM = r"""
#include <linux/skbuff.h>
#include <linux/ip.h>
#include <linux/netdevice.h>
#include <net/net_namespace.h>

struct kernel_drop {
    u32 reason;
    u32 saddr;
    u32 daddr;
    u32 ifindex;
    u8 protocol;
};
BPF_RINGBUF_OUTPUT(kernel_drops, 64);

TRACEPOINT_PROBE(skb, kfree_skb)
{
    struct sk_buff *skb = (struct sk_buff *)args->skbaddr;
    struct net_device *dev = NULL;
    struct net *net = NULL;
    unsigned char *head = NULL;
    u16 network_header = 0;
    struct iphdr ip4 = {};
    struct kernel_drop *drop;
    unsigned int inum = 0;

    if (args->reason <= SKIP_REASONS_UP_TO || args->protocol != htons(ETH_P_IP))
        return 0;
    bpf_probe_read_kernel(&dev, sizeof(dev), &skb->dev);
    if (!dev)
        return 0;
    bpf_probe_read_kernel(&net, sizeof(net), &dev->nd_net.net);
    bpf_probe_read_kernel(&inum, sizeof(inum), &net->ns.inum);
    if (inum != NETNS_INUM)
        return 0;
    bpf_probe_read_kernel(&head, sizeof(head), &skb->head);
    bpf_probe_read_kernel(&network_header, sizeof(network_header), &skb->network_header);
    bpf_probe_read_kernel(&ip4, sizeof(ip4), head + network_header);
    drop = kernel_drops.ringbuf_reserve(sizeof(*drop));
    if (!drop)
        return 0;
    drop->reason = args->reason;
    drop->saddr = ip4.saddr;
    drop->daddr = ip4.daddr;
    drop->protocol = ip4.protocol;
    bpf_probe_read_kernel(&drop->ifindex, sizeof(drop->ifindex), &dev->ifindex);
    kernel_drops.ringbuf_submit(drop, 0);
    return 0;
}
"""
RECORD = struct.Struct("<IIIIB")
PROTOCOLS = {6: "TCP", 17: "UDP", 1: "ICMPv4"}


def reason_names(format_text: str) -> dict:
    """{number: name} from the tracepoint's print format (the numbers differ between kernels)."""
    return {int(number): name for number, name in re.findall(r"\{\s*(\d+),\s*\"(\w+)\"\s*\}", format_text)}


def _format() -> str | None:
    for path in TRACEPOINT_FORMAT:
        try:
            with open(path) as handle:
                return handle.read()
        except OSError:
            continue
    return None


def status() -> dict:
    """{"state": "Ok"|"Unavailable", "message": why} for `apiary status`."""
    if importlib.util.find_spec("bcc") is None:  # Debian's python3-bpfcc
        return {"state": "Unavailable", "message": "bcc is not installed (Debian: python3-bpfcc); drops outside "
                                                   "the datapath (iptables, the stack) are not reported"}
    headers = "/lib/modules/%s/build" % os.uname().release
    if not os.path.isdir(headers):
        return {"state": "Unavailable", "message": "bcc needs the running kernel's headers at %s "
                                                   "(Debian: linux-headers-%s)" % (headers, os.uname().release)}
    if _format() is None:
        return {"state": "Unavailable", "message": "no skb:kfree_skb tracepoint (tracefs not mounted?)"}
    return {"state": "Ok", "message": "skb:kfree_skb through bcc"}


class KernelDropTracer:
    """Feeds `sink(event)` with a drop event (docs/hubble.md §1 keys) per packet the kernel drops in this
    network namespace. Only constructed when status() is Ok."""

    def __init__(self, sink):
        from bcc import BPF  # noqa: PLC0415 - only where bcc is

        names = reason_names(_format() or "")
        skip = max([n for n, name in names.items() if name in NOT_DROPS], default=1)
        inum = os.stat("/proc/self/ns/net").st_ino
        self.names = names
        self.sink = sink
        self.bpf = BPF(text=PROGRAM, cflags=["-DNETNS_INUM=%d" % inum, "-DSKIP_REASONS_UP_TO=%d" % skip])
        self.bpf["kernel_drops"].open_ring_buffer(self._on_drop)

    def _on_drop(self, _ctx, data, size):
        import ctypes

        reason, saddr, daddr, ifindex, proto = RECORD.unpack(ctypes.string_at(data, RECORD.size))
        name = self.names.get(reason, str(reason))
        self.sink({
            "type": "drop", "event_type": 1, "sub_type": 0, "time": time.time(), "verdict": "DROPPED",
            "drop_reason": 0, "drop_reason_desc": "kernel: %s" % name, "observation_point": "kernel",
            "endpoint_id": 0, "traffic_direction": "unknown", "is_reply": False, "src_identity": 0,
            "dst_identity": 0, "src_ip": socket.inet_ntoa(struct.pack("<I", saddr)),
            "dst_ip": socket.inet_ntoa(struct.pack("<I", daddr)), "protocol": PROTOCOLS.get(proto, str(proto)),
            "src_port": 0, "dst_port": 0, "icmp_type": None, "icmp_code": None, "tcp_flags": [],
            "orig_ip": None, "orig_port": None, "netns_cookie": 0, "ifindex": ifindex, "length": 0,
        })

    def run(self, stop) -> None:
        while not stop.is_set():
            self.bpf.ring_buffer_poll(200)
