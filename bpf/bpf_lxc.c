// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* from_container: tc ingress of every pod's host-side veth (lxc…). One program serves all endpoints:
 * it finds the endpoint by the packet's source address in apiary_lxc and checks that the packet came
 * in on that endpoint's device. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/drop.h"
#include "lib/eth.h"
#include "lib/ipv4.h"
#include "lib/arp.h"
#include "lib/endpoint.h"

/* The endpoint that really sent this packet: `ip` must be one of ours, on this device, with `mac`. */
static __always_inline int check_source(__u32 ifindex, __be32 ip, const __u8 *mac, struct endpoint_info **out)
{
	struct endpoint_info *ep = lookup_ip4_endpoint(ip);

	if (!ep || ep->ifindex != ifindex)
		return DROP_INVALID_SIP;
	if (!eth_addr_equal(mac, ep->mac))
		return DROP_INVALID_SMAC;
	*out = ep;
	return 0;
}

/* ARP from the pod: the sender must be the endpoint; a request for any other address (the pod only
 * asks for its gateway) is answered here with the lxc device's MAC. Replies (the node asking for the
 * pod) pass. */
static __always_inline int handle_arp(struct __sk_buff *ctx, __u32 ifindex)
{
	struct ethhdr *eth = ctx_pull(ctx, sizeof(struct ethhdr) + sizeof(struct arp_eth));
	struct endpoint_info *ep;
	struct arp_eth *arp;
	int ret;

	if (!eth)
		return DROP_INVALID;
	arp = (struct arp_eth *)(eth + 1);
	if (!arp_is_eth_ipv4(arp))
		return DROP_INVALID;
	ret = check_source(ifindex, arp->ar_sip, eth->h_source, &ep);
	if (ret < 0)
		return ret;
	if (!eth_addr_equal(arp->ar_sha, ep->mac))
		return DROP_INVALID_SMAC;
	if (arp->ar_op == bpf_htons(ARPOP_REQUEST) && arp->ar_tip != arp->ar_sip)
		return arp_respond(eth, arp, ep->node_mac, ifindex);
	return TC_ACT_OK;
}

/* IPv4 from the pod: anti-spoofing, then a local destination is delivered straight to its device and
 * anything else is routed by the kernel. */
static __always_inline int handle_ipv4(struct __sk_buff *ctx, __u32 ifindex)
{
	struct ethhdr *eth = ipv4_pull(ctx);
	struct endpoint_info *src, *dst;
	struct iphdr *ip4;
	int ret;

	if (!eth)
		return DROP_INVALID;
	ip4 = (struct iphdr *)(eth + 1);
	ret = check_source(ifindex, ip4->saddr, eth->h_source, &src);
	if (ret < 0)
		return ret;
	dst = lookup_ip4_endpoint(ip4->daddr);
	if (dst)
		return redirect_to_endpoint(eth, ip4, dst);
	return TC_ACT_OK;
}

SEC("tc")
int from_container(struct __sk_buff *ctx)
{
	/* Read once, up front: the verifier refuses a ctx field load through a pointer the compiler
	 * moved past the field's offset. */
	__u32 ifindex = ctx->ifindex;
	int ret;

	if (ctx->protocol == bpf_htons(ETH_P_IP))
		ret = handle_ipv4(ctx, ifindex);
	else if (ctx->protocol == bpf_htons(ETH_P_ARP))
		ret = handle_arp(ctx, ifindex);
	else
		ret = DROP_UNKNOWN_L3;	/* IPv6 and anything else: endpoints are IPv4 only for now */
	return finish(ctx, ret, METRIC_EGRESS);
}

APIARY_LICENSE();
