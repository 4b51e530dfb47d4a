/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* IPv4 header checks and the TTL decrement of a forwarding hop. */
#pragma once

#include "common.h"
#include "eth.h"

/* The Ethernet header of an IPv4 packet with its IPv4 header behind it (use (struct iphdr *)(eth + 1));
 * NULL when the packet is too short or not a well-formed IPv4 header. */
static __always_inline struct ethhdr *ipv4_pull(struct __sk_buff *ctx)
{
	struct ethhdr *eth = ctx_pull(ctx, sizeof(struct ethhdr) + sizeof(struct iphdr));
	struct iphdr *ip4;

	if (!eth)
		return NULL;
	ip4 = (struct iphdr *)(eth + 1);
	if (ip4->version != 4 || ip4->ihl < 5)
		return NULL;
	return eth;
}

/* TTL - 1 with the header checksum updated incrementally (RFC 1624; the kernel's ip_decrease_ttl):
 * TTL is the high byte of its 16-bit word, so the sum grows by 0x0100 in network order. */
static __always_inline void ipv4_dec_ttl(struct iphdr *ip4)
{
	__u32 check = (__u32)ip4->check;

	check += (__u32)bpf_htons(0x0100);
	ip4->check = (__sum16)(check + (check >= 0xFFFF));
	ip4->ttl--;
}
