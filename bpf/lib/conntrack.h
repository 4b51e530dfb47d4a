/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking for policy (apiary_ct4), in Cilium's terms: a packet of a connection the
 * endpoint accepted or opened is a REPLY when it goes the other way, and passes whatever the policy
 * of that direction says; packets in the opening direction are ESTABLISHED and are still checked
 * against policy (so removing an allow stops a running connection, as in Cilium); an ICMP error about
 * a tracked connection is RELATED and passes. Entries expire by lifetime, and the LRU map evicts the
 * oldest when full. */
#pragma once

#include "common.h"
#include "maps.h"
#include "l4.h"
#include "events.h"

#define TUPLE_F_OUT	0	/* the connection left a local endpoint (its egress) */
#define TUPLE_F_IN	1	/* the connection came into a local endpoint (its ingress) */

enum ct_status {
	CT_NEW,
	CT_ESTABLISHED,
	CT_REPLY,
	CT_RELATED,
};

/* Cilium's defaults (seconds). */
#define CT_LIFETIME_TCP		21600
#define CT_LIFETIME_NONTCP	60
#define CT_SYN_TIMEOUT		60
#define CT_CLOSE_TIMEOUT	10

static __always_inline __u32 ct_now(void)
{
	return bpf_ktime_get_ns() / 1000000000ULL;
}

static __always_inline __u32 ct_lifetime(__u8 proto, __u8 tcp_flags)
{
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP;
	if (tcp_flags & (TCP_FLAG_RST | TCP_FLAG_FIN))
		return CT_CLOSE_TIMEOUT;
	if ((tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
		return CT_SYN_TIMEOUT;
	return CT_LIFETIME_TCP;
}

static __always_inline void ct_reverse(const struct ipv4_ct_tuple *t, struct ipv4_ct_tuple *r, __u8 flags)
{
	r->daddr = t->saddr;
	r->saddr = t->daddr;
	r->dport = t->sport;
	r->sport = t->dport;
	r->nexthdr = t->nexthdr;
	r->flags = flags;
}

/* A live entry for `key`, its lifetime pushed forward (written at most once a second). */
static __always_inline struct ct_entry *ct_touch(struct ipv4_ct_tuple *key, __u32 now, __u32 lifetime)
{
	struct ct_entry *entry = bpf_map_lookup_elem(&apiary_ct4, key);

	if (!entry || entry->lifetime < now)
		return NULL;
	/* Closing shortens the life of the entry; anything else only extends it. */
	if (lifetime == CT_CLOSE_TIMEOUT || entry->lifetime < now + lifetime)
		entry->lifetime = now + lifetime;
	return entry;
}

/* What the packet `flow` is to the endpoint it leaves (dir TUPLE_F_OUT) or enters (TUPLE_F_IN); the
 * connection's entry in *entry for ESTABLISHED and REPLY. */
static __always_inline enum ct_status ct_lookup4(const struct ipv4_flow *flow, __u8 dir, struct ct_entry **entry)
{
	__u8 other = dir == TUPLE_F_OUT ? TUPLE_F_IN : TUPLE_F_OUT;
	__u32 lifetime = ct_lifetime(flow->tuple.nexthdr, flow->tcp_flags);
	__u32 now = ct_now();
	struct ipv4_ct_tuple key;

	ct_reverse(&flow->tuple, &key, other);
	*entry = ct_touch(&key, now, lifetime);
	if (*entry)
		return CT_REPLY;
	key = flow->tuple;
	key.flags = dir;
	*entry = ct_touch(&key, now, lifetime);
	if (*entry)
		return CT_ESTABLISHED;
	if (flow->icmp_error) {
		/* The quoted packet went the other way: it is the connection as its opener sent it. */
		key = flow->inner;
		key.flags = other;
		if (bpf_map_lookup_elem(&apiary_ct4, &key))
			return CT_RELATED;
	}
	return CT_NEW;
}

/* Whether a packet of a tracked connection is news for the observer (Cilium's monitor aggregation
 * "medium"): TCP flags not yet seen in its direction, or nothing said for EVENTS_REPORT_INTERVAL. */
static __always_inline int ct_report(struct ct_entry *entry, __u8 tcp_flags, int reply)
{
	__u32 now = ct_now();

	if (reply) {
		if (!(tcp_flags & ~entry->rx_flags_seen) && now - entry->last_rx_report < EVENTS_REPORT_INTERVAL)
			return 0;
		entry->rx_flags_seen |= tcp_flags;
		entry->last_rx_report = now;
		return 1;
	}
	if (!(tcp_flags & ~entry->tx_flags_seen) && now - entry->last_tx_report < EVENTS_REPORT_INTERVAL)
		return 0;
	entry->tx_flags_seen |= tcp_flags;
	entry->last_tx_report = now;
	return 1;
}

static __always_inline void ct_create4(const struct ipv4_flow *flow, __u8 dir, __u32 remote_identity)
{
	__u32 now = ct_now();
	struct ct_entry entry = {
		.lifetime = now + ct_lifetime(flow->tuple.nexthdr, flow->tcp_flags),
		.src_sec_id = remote_identity,
		.tx_flags_seen = flow->tcp_flags,	/* the opening packet is reported */
		.last_tx_report = now,
	};
	struct ipv4_ct_tuple key = flow->tuple;

	key.flags = dir;
	bpf_map_update_elem(&apiary_ct4, &key, &entry, BPF_ANY);
}
