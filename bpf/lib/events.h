/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Datapath events for the observer (docs/hubble.md): one struct flow_event per event in the
 * apiary_events ring buffer, with Cilium's type and sub-type numbers. Nothing is emitted unless the
 * agent switched events on in apiary_events_config; a record the ring has no room for is counted in
 * apiary_events_lost, never silently gone. Established traffic is aggregated like Cilium's
 * monitor-aggregation "medium" (lib/conntrack.h keeps what was reported per connection direction). */
#pragma once

#include "common.h"
#include "maps.h"

#define CILIUM_NOTIFY_DROP		1
#define CILIUM_NOTIFY_TRACE		4
#define CILIUM_NOTIFY_POLICY_VERDICT	5	/* sub_type: the drop reason of a denied one, else 0 */
#define CILIUM_NOTIFY_TRACE_SOCK	7

/* Observation points (the trace sub-type), Cilium's numbers. */
#define TRACE_TO_LXC		0
#define TRACE_TO_STACK		3
#define TRACE_TO_OVERLAY	4
#define TRACE_FROM_LXC		5
#define TRACE_FROM_STACK	8
#define TRACE_FROM_OVERLAY	9
#define TRACE_FROM_NETWORK	10

/* Socket translation points (the trace-sock sub-type). */
#define XLATE_PRE_DIRECTION_FWD		1
#define XLATE_POST_DIRECTION_FWD	2

/* struct flow_event.flags */
#define EVENT_F_REPLY		0x01
#define EVENT_F_INGRESS		0x02	/* seen from lxc_id: into the endpoint */
#define EVENT_F_EGRESS		0x04	/* out of the endpoint */
#define EVENT_F_DENIED		0x08	/* policy verdict: denied */

/* How often an established connection is reported again without new TCP flags (seconds). */
#define EVENTS_REPORT_INTERVAL	5

static __always_inline int events_enabled(void)
{
	__u32 zero = 0;
	struct events_config *cfg = bpf_map_lookup_elem(&apiary_events_config, &zero);

	return cfg && cfg->enabled;
}

static __always_inline void events_send(struct flow_event *ev)
{
	__u32 zero = 0;
	__u64 *lost;

	ev->ktime = bpf_ktime_get_ns();
	if (bpf_ringbuf_output(&apiary_events, ev, sizeof(*ev), 0) == 0)
		return;
	lost = bpf_map_lookup_elem(&apiary_events_lost, &zero);
	if (lost)
		*lost += 1;	/* per-CPU */
}

/* Addresses, protocol, ports (ICMP type and code) and TCP flags of the IPv4 packet in ctx, read
 * afresh so that any program can report any packet, whatever it parsed itself. */
static __always_inline void event_fill_packet(struct __sk_buff *ctx, struct flow_event *ev)
{
	struct iphdr ip4;
	__u8 l4[14];
	__u32 off;

	ev->ifindex = ctx->ifindex;
	ev->len = ctx->len;
	if (ctx->protocol != bpf_htons(ETH_P_IP) || bpf_skb_load_bytes(ctx, ETH_HLEN, &ip4, sizeof(ip4)) < 0)
		return;
	ev->saddr = ip4.saddr;
	ev->daddr = ip4.daddr;
	ev->proto = ip4.protocol;
	if (ip4.frag_off & bpf_htons(0x1FFF))
		return;		/* a later fragment has no L4 header */
	off = ETH_HLEN + (ip4.ihl << 2);
	if (bpf_skb_load_bytes(ctx, off, l4, sizeof(l4)) < 0 &&
	    bpf_skb_load_bytes(ctx, off, l4, 8) < 0)
		return;
	if (ip4.protocol == IPPROTO_ICMP) {
		ev->icmp_type = l4[0];
		ev->icmp_code = l4[1];
		return;
	}
	__builtin_memcpy(&ev->sport, l4, 2);
	__builtin_memcpy(&ev->dport, l4 + 2, 2);
	if (ip4.protocol == IPPROTO_TCP)
		ev->tcp_flags = l4[13];
}

/* The identity behind an address: a local endpoint's, else the ipcache's, else the world. */
static __always_inline __u32 event_identity(__be32 addr)
{
	struct endpoint_key key = { .addr.ip4 = addr, .family = ENDPOINT_KEY_IPV4 };
	struct remote_endpoint_info *info;
	struct endpoint_info *ep;
	struct ipcache_key ikey = {
		.prefixlen = IPCACHE_PREFIX_LEN(32),
		.family = ENDPOINT_KEY_IPV4,
		.addr.ip4 = addr,
	};

	ep = bpf_map_lookup_elem(&apiary_lxc, &key);
	if (ep)
		return ep->sec_identity;
	info = bpf_map_lookup_elem(&apiary_ipcache, &ikey);
	return info ? info->sec_identity : WORLD_ID;
}

/* A dropped packet (reason: the positive drop reason), seen leaving (METRIC_EGRESS) or entering
 * (METRIC_INGRESS) the program's side. The endpoint is the local pod the packet came from or was
 * going to, when there is one. */
static __always_inline void send_drop_notify(struct __sk_buff *ctx, __u8 reason, __u8 dir)
{
	struct flow_event ev = { .type = CILIUM_NOTIFY_DROP, .sub_type = reason };
	struct endpoint_key key = { .family = ENDPOINT_KEY_IPV4 };
	struct endpoint_info *ep;

	if (!events_enabled())
		return;
	event_fill_packet(ctx, &ev);
	ev.src_identity = event_identity(ev.saddr);
	ev.dst_identity = event_identity(ev.daddr);
	key.addr.ip4 = dir == METRIC_EGRESS ? ev.saddr : ev.daddr;
	ep = bpf_map_lookup_elem(&apiary_lxc, &key);
	if (ep) {
		ev.lxc_id = ep->lxc_id;
		ev.flags = dir == METRIC_EGRESS ? EVENT_F_EGRESS : EVENT_F_INGRESS;
	}
	events_send(&ev);
}

/* A packet of a connection of endpoint lxc_id that policy let through (trace), or the policy verdict
 * on a new connection (allowed or denied). `egress`: the packet leaves the endpoint. */
static __always_inline void send_trace_notify(struct __sk_buff *ctx, __u8 type, __u8 point, __u16 lxc_id,
					      __u8 egress, __u8 flags, __u32 src_identity, __u32 dst_identity)
{
	struct flow_event ev = {
		.type = type,
		.sub_type = point,
		.lxc_id = lxc_id,
		.flags = flags | (egress ? EVENT_F_EGRESS : EVENT_F_INGRESS),
		.src_identity = src_identity,
		.dst_identity = dst_identity,
	};

	event_fill_packet(ctx, &ev);
	events_send(&ev);
}

/* A new connection from outside the node translated at tc (lib/nodeport.h): the client, the backend it
 * got and the frontend it asked for (orig). Seen entering the node from the network. */
static __always_inline void send_nat_notify(struct __sk_buff *ctx, const struct ipv4_ct_tuple *t, __u8 tcp_flags,
					    __be32 backend, __be16 backend_port)
{
	struct flow_event ev = {
		.type = CILIUM_NOTIFY_TRACE,
		.sub_type = TRACE_FROM_NETWORK,
		.flags = EVENT_F_INGRESS,
		.proto = t->nexthdr,
		.saddr = t->saddr,
		.daddr = backend,
		.sport = t->sport,
		.dport = backend_port,
		.tcp_flags = tcp_flags,
		.orig_addr = t->daddr,
		.orig_port = t->dport,
		.ifindex = ctx->ifindex,
		.len = ctx->len,
	};

	if (!events_enabled())
		return;
	ev.src_identity = event_identity(t->saddr);
	ev.dst_identity = event_identity(backend);
	events_send(&ev);
}
