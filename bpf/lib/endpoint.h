/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Endpoints: local ones (apiary_lxc), every known address (apiary_ipcache), and delivery to a local
 * endpoint. */
#pragma once

#include "common.h"
#include "maps.h"
#include "ipv4.h"

static __always_inline struct endpoint_info *lookup_ip4_endpoint(__be32 ip4)
{
	struct endpoint_key key = { .addr.ip4 = ip4, .family = ENDPOINT_KEY_IPV4 };

	return bpf_map_lookup_elem(&apiary_lxc, &key);
}

/* Longest-prefix match, as the ipcache holds prefixes as well as hosts. */
static __always_inline struct remote_endpoint_info *lookup_ip4_ipcache(__be32 ip4)
{
	struct ipcache_key key = {
		.prefixlen = IPCACHE_PREFIX_LEN(32),
		.family = ENDPOINT_KEY_IPV4,
		.addr.ip4 = ip4,
	};

	return bpf_map_lookup_elem(&apiary_ipcache, &key);
}

/* Hand an IPv4 packet to a local endpoint as a router would: MACs rewritten (from the lxc device to
 * the pod), TTL decremented, straight out of the endpoint's lxc device. A packet whose TTL runs out
 * goes to the kernel, which answers with ICMP time exceeded. */
static __always_inline int redirect_to_endpoint(struct ethhdr *eth, struct iphdr *ip4,
						const struct endpoint_info *ep)
{
	if (ip4->ttl <= 1)
		return TC_ACT_OK;
	__builtin_memcpy(eth->h_dest, ep->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, ep->node_mac, ETH_ALEN);
	ipv4_dec_ttl(ip4);
	return bpf_redirect(ep->ifindex, 0);
}

/* Packets arriving at the node (uplink, tunnel): a local endpoint's get delivered, the rest pass to
 * the kernel. A malformed header is the kernel's to judge. `mark` (not 0) carries the sender's
 * identity to to_container (lib/identity.h). */
static __always_inline int ipv4_deliver_local(struct __sk_buff *ctx, __u32 mark)
{
	struct ethhdr *eth = ipv4_pull(ctx);
	struct endpoint_info *ep;
	struct iphdr *ip4;

	if (!eth)
		return TC_ACT_OK;
	ip4 = (struct iphdr *)(eth + 1);
	ep = lookup_ip4_endpoint(ip4->daddr);
	if (!ep)
		return TC_ACT_OK;
	if (mark)
		ctx->mark = mark;
	return redirect_to_endpoint(eth, ip4, ep);
}
