/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The L4 view of an IPv4 packet that policy and conntrack need: its tuple, the port policy matches on
 * (the ICMP type for ICMP), TCP flags, and for an ICMP error the tuple of the packet it is about. */
#pragma once

#include "common.h"
#include "maps.h"

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif
#define ICMP_ECHOREPLY		0
#define ICMP_DEST_UNREACH	3
#define ICMP_ECHO		8
#define ICMP_TIME_EXCEEDED	11
#define ICMP_PARAMETERPROB	12

#define TCP_FLAG_FIN	0x01
#define TCP_FLAG_SYN	0x02
#define TCP_FLAG_RST	0x04
#define TCP_FLAG_ACK	0x10

#define IP_FRAG_OFFSET	0x1FFF

struct ipv4_flow {
	struct ipv4_ct_tuple	tuple;		/* this packet, as sent */
	struct ipv4_ct_tuple	inner;		/* an ICMP error's offending packet, when icmp_error */
	__be16			policy_port;	/* destination port; the ICMP type for ICMP */
	__u8			tcp_flags;
	__u8			icmp_error;
};

/* Ports (source, destination) of the L4 header at `off`; the ICMP echo identifier is the "source
 * port" of a request and the "destination port" of a reply, so that a reply's reversed tuple is the
 * request's. Only the first fragment has ports: the others get none. */
static __always_inline int l4_ports(struct __sk_buff *ctx, __u32 off, __u8 proto, __be16 frag,
				    struct ipv4_ct_tuple *t, __be16 *policy_port, __u8 *tcp_flags)
{
	__u8 buf[14];

	t->nexthdr = proto;
	if (frag & bpf_htons(IP_FRAG_OFFSET))
		return 0;
	switch (proto) {
	case IPPROTO_TCP:
		if (bpf_skb_load_bytes(ctx, off, buf, 14) < 0)
			return -1;
		*tcp_flags = buf[13];
		/* fall through */
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (proto != IPPROTO_TCP && bpf_skb_load_bytes(ctx, off, buf, 4) < 0)
			return -1;
		__builtin_memcpy(&t->sport, buf, 2);
		__builtin_memcpy(&t->dport, buf + 2, 2);
		*policy_port = t->dport;
		return 0;
	case IPPROTO_ICMP:
		if (bpf_skb_load_bytes(ctx, off, buf, 8) < 0)
			return -1;
		*policy_port = bpf_htons(buf[0]);
		if (buf[0] == ICMP_ECHO)
			__builtin_memcpy(&t->sport, buf + 4, 2);
		else if (buf[0] == ICMP_ECHOREPLY)
			__builtin_memcpy(&t->dport, buf + 4, 2);
		return buf[0];
	}
	return 0;
}

/* Fill `flow` from the IPv4 header `ip4` (already bounds-checked) of a packet that starts with an
 * Ethernet header. Returns 0, or -1 when the L4 header is cut short. */
static __always_inline int ipv4_flow(struct __sk_buff *ctx, const struct iphdr *ip4, struct ipv4_flow *flow)
{
	__u32 off = ETH_HLEN + (ip4->ihl << 2);
	struct iphdr inner;
	__u8 dummy_flags = 0;
	__be16 dummy_port = 0;
	int type;

	flow->tuple.daddr = ip4->daddr;
	flow->tuple.saddr = ip4->saddr;
	type = l4_ports(ctx, off, ip4->protocol, ip4->frag_off, &flow->tuple, &flow->policy_port,
			&flow->tcp_flags);
	if (type < 0)
		return -1;
	if (ip4->protocol != IPPROTO_ICMP || (ip4->frag_off & bpf_htons(IP_FRAG_OFFSET)))
		return 0;
	if (type != ICMP_DEST_UNREACH && type != ICMP_TIME_EXCEEDED && type != ICMP_PARAMETERPROB)
		return 0;
	/* An ICMP error quotes the header and first 8 bytes of the packet it is about. */
	if (bpf_skb_load_bytes(ctx, off + 8, &inner, sizeof(inner)) < 0 || inner.version != 4 || inner.ihl < 5)
		return 0;
	flow->inner.daddr = inner.daddr;
	flow->inner.saddr = inner.saddr;
	if (l4_ports(ctx, off + 8 + (inner.ihl << 2), inner.protocol, inner.frag_off, &flow->inner, &dummy_port,
		     &dummy_flags) < 0)
		return 0;
	flow->icmp_error = 1;
	return 0;
}
