// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The pod's side of the datapath, on the host side of its veth (lxc…). One program per direction serves
 * all endpoints, finding the endpoint by address in apiary_lxc and checking the device:
 *
 * from_container (tc ingress: packets the pod sends): anti-spoofing, the pod's egress policy and
 * conntrack, then delivery to a local endpoint or the kernel's routing.
 * to_container (tc egress: packets the pod receives, however they got there: from another pod, the
 * uplink, the tunnel or the host itself): the pod's ingress policy and conntrack. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/drop.h"
#include "lib/eth.h"
#include "lib/ipv4.h"
#include "lib/arp.h"
#include "lib/endpoint.h"
#include "lib/identity.h"
#include "lib/l4.h"
#include "lib/events.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/nodeport.h"

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

/* Policy for a packet leaving (dir TUPLE_F_OUT) or entering (TUPLE_F_IN) endpoint `ep`, `remote` being
 * the other side's identity: replies and related ICMP errors of tracked connections pass; the rest
 * must be allowed, and a new connection is tracked. The observer hears of new connections (a policy
 * verdict and a trace), of their replies, and of later packets as lib/events.h aggregates them. */
static __always_inline int enforce_policy(struct __sk_buff *ctx, const struct iphdr *ip4,
					  const struct endpoint_info *ep, __u8 dir, __u32 remote)
{
	__u8 point = dir == TUPLE_F_OUT ? TRACE_FROM_LXC : TRACE_TO_LXC;
	__u32 src = dir == TUPLE_F_OUT ? ep->sec_identity : remote;
	__u32 dst = dir == TUPLE_F_OUT ? remote : ep->sec_identity;
	struct ct_entry *entry = NULL;
	struct ipv4_flow flow = {};
	enum ct_status status;
	int events, ret;

	if (ipv4_flow(ctx, ip4, &flow) < 0)
		return DROP_INVALID;
	status = ct_lookup4(&flow, dir, &entry);
	events = events_enabled();
	if (status == CT_REPLY || status == CT_RELATED) {
		/* The connection went the other way: a reply leaving the endpoint belongs to an ingress one. */
		if (events && (!entry || ct_report(entry, flow.tcp_flags, 1)))
			send_trace_notify(ctx, CILIUM_NOTIFY_TRACE, point, ep->lxc_id, dir == TUPLE_F_IN,
					  EVENT_F_REPLY, src, dst);
		return TC_ACT_OK;
	}
	ret = policy_verdict(ep->lxc_id, dir == TUPLE_F_OUT, remote, flow.tuple.nexthdr, flow.policy_port,
			     ctx->len);
	if (events && status == CT_NEW)
		send_trace_notify(ctx, CILIUM_NOTIFY_POLICY_VERDICT, ret < 0 ? (__u8)-ret : 0, ep->lxc_id, dir == TUPLE_F_OUT,
				  ret < 0 ? EVENT_F_DENIED : 0, src, dst);
	if (ret < 0)
		return ret;
	if (status == CT_NEW)
		ct_create4(&flow, dir, remote);
	if (events && (status == CT_NEW || (entry && ct_report(entry, flow.tcp_flags, 0))))
		send_trace_notify(ctx, CILIUM_NOTIFY_TRACE, point, ep->lxc_id, dir == TUPLE_F_OUT, 0, src, dst);
	return TC_ACT_OK;
}

/* IPv4 from the pod: anti-spoofing and egress policy; a reply to a NodePort client (the pod being the
 * local backend) leaves from the frontend (lib/nodeport.h); then a local destination is delivered
 * straight to its device (where to_container checks its ingress policy) and anything else is routed
 * by the kernel. */
static __always_inline int handle_ipv4(struct __sk_buff *ctx, __u32 ifindex)
{
	struct ethhdr *eth = ipv4_pull(ctx);
	struct endpoint_info *src, *dst;
	struct iphdr *ip4;
	int handled = 0;
	int ret;

	if (!eth)
		return DROP_INVALID;
	ip4 = (struct iphdr *)(eth + 1);
	ret = check_source(ifindex, ip4->saddr, eth->h_source, &src);
	if (ret < 0)
		return ret;
	ret = enforce_policy(ctx, ip4, src, TUPLE_F_OUT, destination_identity(ip4->daddr));
	if (ret < 0)
		return ret;
	ret = nodeport_rev_nat_local(ctx, ifindex, &handled);
	if (handled)
		return ret;
	/* The flow parsing may have pulled data: packet pointers are taken again. */
	eth = ipv4_pull(ctx);
	if (!eth)
		return DROP_INVALID;
	ip4 = (struct iphdr *)(eth + 1);
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

/* IPv4 to the pod: the endpoint is the destination, and must be the one behind this device (a packet
 * for another address is not the pod's and its stack drops it). */
static __always_inline int ipv4_to_endpoint(struct __sk_buff *ctx, __u32 ifindex, __u32 mark)
{
	struct ethhdr *eth = ipv4_pull(ctx);
	struct endpoint_info *ep;
	struct iphdr *ip4;

	if (!eth)
		return DROP_INVALID;
	ip4 = (struct iphdr *)(eth + 1);
	ep = lookup_ip4_endpoint(ip4->daddr);
	if (!ep || ep->ifindex != ifindex)
		return TC_ACT_OK;
	return enforce_policy(ctx, ip4, ep, TUPLE_F_IN, source_identity(mark, ip4->saddr));
}

SEC("tc")
int to_container(struct __sk_buff *ctx)
{
	__u32 ifindex = ctx->ifindex;
	__u32 mark = ctx->mark;
	int ret = TC_ACT_OK;	/* ARP: the node asking for the pod */

	if (ctx->protocol == bpf_htons(ETH_P_IP))
		ret = ipv4_to_endpoint(ctx, ifindex, mark);
	return finish(ctx, ret, METRIC_INGRESS);
}

APIARY_LICENSE();
