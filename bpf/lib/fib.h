/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Forwarding through the kernel's FIB from a tc program: a NATed packet whose source became the node's
 * own address cannot be handed to the kernel's input path (it would be a martian source there), so it
 * leaves straight through the device and next hop the FIB names, as Cilium's fib_redirect. */
#pragma once

#include "common.h"
#include "drop.h"
#include "ipv4.h"

#ifndef BPF_FIB_LKUP_RET_NO_NEIGH
#define BPF_FIB_LKUP_RET_NO_NEIGH 7
#endif

/* Send the IPv4 packet in `ctx` (arrived on `ifindex`) to its destination: MACs from the neighbour
 * table (or resolved by the kernel when it has none yet), TTL decremented. A destination that is
 * the node itself passes to the kernel. */
static __always_inline int fib_redirect4(struct __sk_buff *ctx, __u32 ifindex)
{
	struct bpf_fib_lookup fib = { .family = AF_INET, .ifindex = ifindex };
	struct ethhdr *eth = ipv4_pull(ctx);
	struct iphdr *ip4;
	int ret;

	if (!eth)
		return DROP_INVALID;
	ip4 = (struct iphdr *)(eth + 1);
	if (ip4->ttl <= 1)
		return DROP_INVALID;
	fib.ipv4_src = ip4->saddr;
	fib.ipv4_dst = ip4->daddr;
	fib.l4_protocol = ip4->protocol;
	ret = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (ret == BPF_FIB_LKUP_RET_NOT_FWDED)
		return TC_ACT_OK;
	if (ret != BPF_FIB_LKUP_RET_SUCCESS && ret != BPF_FIB_LKUP_RET_NO_NEIGH)
		return DROP_NO_FIB;
	/* The lookup does not touch the packet: the pointers are still good. */
	ipv4_dec_ttl(ip4);
	if (ret == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = { .nh_family = AF_INET, .ipv4_nh = fib.ipv4_dst };

		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	return bpf_redirect(fib.ifindex, 0);
}
