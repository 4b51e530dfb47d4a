/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Services on the tc path, for clients no socket hook sees (outside the cluster): a packet for a
 * NodePort, LoadBalancer or external IP frontend arriving on the uplink gets a backend (lib/lb.h) and
 * is DNATed to it; a backend on another node also gets the node's address as source (Cilium's SNAT
 * mode) so its replies come back through this node; externalTrafficPolicy Local services have only
 * local backends here, and keep the client's source. apiary_lb4_nat holds both directions of each
 * connection, keyed by the packet's tuple as it arrives: NAT_DIR_FWD for the client's packets,
 * NAT_DIR_REV for the backend's replies, which become the frontend's again (on the uplink for a
 * remote backend, in from_container for a local one). Only TCP and UDP, and of a fragmented datagram
 * the first fragment. */
#pragma once

#include "common.h"
#include "maps.h"
#include "drop.h"
#include "ipv4.h"
#include "l4.h"
#include "conntrack.h"
#include "endpoint.h"
#include "fib.h"
#include "lb.h"
#include "events.h"

#define NAT_DIR_FWD	0
#define NAT_DIR_REV	1
/* SNAT source ports: above the kernel's default ephemeral range, so the node's own sockets keep theirs. */
#define NAT_PORT_MIN	61000
#define NAT_PORT_MAX	65535
#define NAT_PORT_TRIES	16

#define IP_SADDR_OFF	(ETH_HLEN + __builtin_offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF	(ETH_HLEN + __builtin_offsetof(struct iphdr, daddr))
#define IP_CSUM_OFF	(ETH_HLEN + __builtin_offsetof(struct iphdr, check))

struct lb4_packet {
	struct ipv4_ct_tuple	tuple;		/* as the packet arrived */
	__u32			l4_off;
	__u8			tcp_flags;
};

/* The tuple of a TCP or UDP packet (not a later fragment); -1 for anything else. */
static __always_inline int lb4_parse(struct __sk_buff *ctx, struct lb4_packet *pkt)
{
	struct ethhdr *eth = ipv4_pull(ctx);
	struct ipv4_flow flow = {};
	struct iphdr *ip4;

	if (!eth)
		return -1;
	ip4 = (struct iphdr *)(eth + 1);
	if ((ip4->protocol != IPPROTO_TCP && ip4->protocol != IPPROTO_UDP) ||
	    (ip4->frag_off & bpf_htons(IP_FRAG_OFFSET)))
		return -1;
	pkt->l4_off = ETH_HLEN + (ip4->ihl << 2);
	if (ipv4_flow(ctx, ip4, &flow) < 0)
		return -1;
	pkt->tuple = flow.tuple;
	pkt->tcp_flags = flow.tcp_flags;
	return 0;
}

/* The live translation of the packet in direction `dir` (a copy in `out`); 0 when there is none. */
static __always_inline int lb4_nat_lookup(const struct lb4_packet *pkt, __u8 dir, struct lb4_nat_entry *out)
{
	__u32 lifetime = ct_lifetime(pkt->tuple.nexthdr, pkt->tcp_flags);
	struct ipv4_ct_tuple key = pkt->tuple;
	struct lb4_nat_entry *entry;
	__u32 now = ct_now();

	key.flags = dir;
	entry = bpf_map_lookup_elem(&apiary_lb4_nat, &key);
	if (!entry || entry->lifetime < now)
		return 0;
	if (lifetime == CT_CLOSE_TIMEOUT || entry->lifetime < now + lifetime)
		entry->lifetime = now + lifetime;
	*out = *entry;
	return 1;
}

static __always_inline int rewrite_addr(struct __sk_buff *ctx, __u32 off, __u32 csum_off, __be32 from, __be32 to,
					__u64 l4_flags)
{
	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(ctx, csum_off, from, to, l4_flags | BPF_F_PSEUDO_HDR | sizeof(to)) < 0 ||
	    bpf_l3_csum_replace(ctx, IP_CSUM_OFF, from, to, sizeof(to)) < 0 ||
	    bpf_skb_store_bytes(ctx, off, &to, sizeof(to), 0) < 0)
		return -1;
	return 0;
}

static __always_inline int rewrite_port(struct __sk_buff *ctx, __u32 off, __u32 csum_off, __be16 from, __be16 to,
					__u64 l4_flags)
{
	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(ctx, csum_off, from, to, l4_flags | sizeof(to)) < 0 ||
	    bpf_skb_store_bytes(ctx, off, &to, sizeof(to), 0) < 0)
		return -1;
	return 0;
}

/* Rewrite the packet's addresses and ports to `to`, then send it on: to a local endpoint's device
 * (whose to_container checks its ingress policy against the client), or out where the FIB says. */
static __always_inline int lb4_nat_forward(struct __sk_buff *ctx, const struct lb4_packet *pkt,
					   const struct lb4_nat_entry *to, __u32 ifindex)
{
	const struct ipv4_ct_tuple *from = &pkt->tuple;
	__u32 csum_off = pkt->l4_off + (from->nexthdr == IPPROTO_TCP ? 16 : 6);
	/* A UDP checksum of 0 means none: it stays 0. */
	__u64 l4_flags = from->nexthdr == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	struct endpoint_info *ep;
	struct ethhdr *eth;

	if (rewrite_addr(ctx, IP_SADDR_OFF, csum_off, from->saddr, to->saddr, l4_flags) < 0 ||
	    rewrite_addr(ctx, IP_DADDR_OFF, csum_off, from->daddr, to->daddr, l4_flags) < 0 ||
	    rewrite_port(ctx, pkt->l4_off, csum_off, from->sport, to->sport, l4_flags) < 0 ||
	    rewrite_port(ctx, pkt->l4_off + 2, csum_off, from->dport, to->dport, l4_flags) < 0)
		return DROP_WRITE_ERROR;
	ep = lookup_ip4_endpoint(to->daddr);
	if (ep) {
		eth = ipv4_pull(ctx);
		if (!eth)
			return DROP_INVALID;
		return redirect_to_endpoint(eth, (struct iphdr *)(eth + 1), ep);
	}
	return fib_redirect4(ctx, ifindex);
}

/* lib/hash.h over the 5-tuple: apiary.datapath.lb.flow_hash computes the same. */
static __always_inline __u32 lb4_flow_hash(const struct ipv4_ct_tuple *t)
{
	return jhash_3words(t->saddr, t->daddr, ((__u32)t->sport << 16) | t->dport, t->nexthdr);
}

/* A new connection to a frontend reachable from outside. *handled is 0 when the packet is for no such
 * frontend (it goes on as any other packet). */
static __always_inline int nodeport_lb4(struct __sk_buff *ctx, const struct lb4_packet *pkt, __u32 ifindex,
					int *handled)
{
	const struct ipv4_ct_tuple *t = &pkt->tuple;
	struct lb4_key key = { .address = t->daddr, .dport = t->dport, .proto = t->nexthdr };
	struct ipv4_ct_tuple fkey = *t, rkey = {};
	struct lb4_nat_entry fwd = {}, rev = {};
	struct lb4_backend *backend;
	struct lb4_service *svc;
	struct lb_config *cfg;
	__u32 backend_id, now = ct_now();
	int i;

	svc = lb4_lookup_service(&key, 0);
	if (!svc || !(svc->flags & SVC_FLAG_ROUTABLE))
		return TC_ACT_OK;
	*handled = 1;
	if (!svc->count)
		return DROP_NO_SERVICE;
	backend = lb4_pick_backend(&key, svc, lb4_flow_hash(t), 0, t->saddr, 0, &backend_id);
	if (!backend)
		return DROP_NO_SERVICE;

	fwd.saddr = t->saddr;
	fwd.sport = t->sport;
	fwd.daddr = backend->address;
	fwd.dport = backend->port;
	fwd.lifetime = now + ct_lifetime(t->nexthdr, pkt->tcp_flags);
	fwd.rev_nat_index = svc->rev_nat_index;
	/* Replies: from the backend to whoever the backend sees, back to the client from the frontend. */
	rev = fwd;
	rev.saddr = t->daddr;
	rev.sport = t->dport;
	rev.daddr = t->saddr;
	rev.dport = t->sport;
	rkey.saddr = backend->address;
	rkey.sport = backend->port;
	rkey.daddr = t->saddr;
	rkey.dport = t->sport;
	rkey.nexthdr = t->nexthdr;
	rkey.flags = NAT_DIR_REV;

	if (lookup_ip4_endpoint(backend->address)) {
		if (bpf_map_update_elem(&apiary_lb4_nat, &rkey, &rev, BPF_ANY) < 0)
			return DROP_NAT_NO_MAPPING;
	} else {
		/* A remote backend: from the node, on a port of its own, so the reply comes back here. */
		cfg = lb_config();
		fwd.saddr = cfg && cfg->node_address ? cfg->node_address : t->daddr;
		rkey.daddr = fwd.saddr;
		for (i = 0; i < NAT_PORT_TRIES; i++) {
			fwd.sport = bpf_htons(NAT_PORT_MIN + bpf_get_prandom_u32() % (NAT_PORT_MAX - NAT_PORT_MIN + 1));
			rkey.dport = fwd.sport;
			if (bpf_map_update_elem(&apiary_lb4_nat, &rkey, &rev, BPF_NOEXIST) == 0)
				break;
		}
		if (i == NAT_PORT_TRIES)
			return DROP_NAT_NO_MAPPING;
	}
	fkey.flags = NAT_DIR_FWD;
	if (bpf_map_update_elem(&apiary_lb4_nat, &fkey, &fwd, BPF_ANY) < 0)
		return DROP_NAT_NO_MAPPING;
	send_nat_notify(ctx, t, pkt->tcp_flags, backend->address, backend->port);
	return lb4_nat_forward(ctx, pkt, &fwd, ifindex);
}

/* The uplink's part: replies of SNATed connections, further packets of translated ones, and new
 * connections to a frontend. *handled is 0 for any other packet. */
static __always_inline int nodeport_lb4_ingress(struct __sk_buff *ctx, __u32 ifindex, int *handled)
{
	struct lb4_packet pkt = {};
	struct lb4_nat_entry nat;

	if (lb4_parse(ctx, &pkt) < 0)
		return TC_ACT_OK;
	if (lb4_nat_lookup(&pkt, NAT_DIR_REV, &nat) || lb4_nat_lookup(&pkt, NAT_DIR_FWD, &nat)) {
		*handled = 1;
		return lb4_nat_forward(ctx, &pkt, &nat, ifindex);
	}
	return nodeport_lb4(ctx, &pkt, ifindex, handled);
}

/* A local backend's reply to a client of the tc path (from_container, after its egress policy): it
 * leaves from the frontend. *handled is 0 for any other packet. */
static __always_inline int nodeport_rev_nat_local(struct __sk_buff *ctx, __u32 ifindex, int *handled)
{
	struct lb4_packet pkt = {};
	struct lb4_nat_entry nat;

	if (lb4_parse(ctx, &pkt) < 0 || !lb4_nat_lookup(&pkt, NAT_DIR_REV, &nat))
		return TC_ACT_OK;
	*handled = 1;
	return lb4_nat_forward(ctx, &pkt, &nat, ifindex);
}
