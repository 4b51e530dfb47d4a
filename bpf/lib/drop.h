/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Drop reasons (Cilium's numbers, negated as in Cilium) and the per-CPU counters in apiary_metrics. */
#pragma once

#include "common.h"
#include "maps.h"
#include "events.h"

#define DROP_INVALID_SMAC	-130
#define DROP_INVALID_SIP	-132
#define DROP_POLICY		-133
#define DROP_INVALID		-134
#define DROP_UNKNOWN_L3		-139
#define DROP_WRITE_ERROR	-141
#define DROP_NO_TUNNEL_KEY	-147
#define DROP_NO_SERVICE		-158
#define DROP_NO_TUNNEL_ENDPOINT	-160
#define DROP_NAT_NO_MAPPING	-167
#define DROP_NO_FIB		-169
#define DROP_POLICY_DENY	-181

/* Count one packet of `bytes` under (reason, dir). Per-CPU values: no atomics needed. */
static __always_inline void update_metrics(__u64 bytes, __u8 dir, __u8 reason)
{
	struct metrics_key key = { .reason = reason, .dir = dir };
	struct metrics_value *value, init = { .count = 1, .bytes = bytes };

	value = bpf_map_lookup_elem(&apiary_metrics, &key);
	if (likely(value)) {
		value->count += 1;
		value->bytes += bytes;
		return;
	}
	/* First packet for this key on any CPU; if another CPU won the race, count on its entry. */
	if (bpf_map_update_elem(&apiary_metrics, &key, &init, BPF_NOEXIST) == 0)
		return;
	value = bpf_map_lookup_elem(&apiary_metrics, &key);
	if (value) {
		value->count += 1;
		value->bytes += bytes;
	}
}

/* The end of every program: a negative DROP_* is counted, reported (lib/events.h) and the packet dropped; anything else
 * (TC_ACT_OK, TC_ACT_REDIRECT) is returned as it is. Forwarded packets are counted only when built
 * with -DAPIARY_METRICS_FORWARDED, which keeps the fast path free of a map update by default. */
static __always_inline int finish(struct __sk_buff *ctx, int ret, __u8 dir)
{
	if (ret < 0) {
		update_metrics(ctx->len, dir, (__u8)-ret);
		send_drop_notify(ctx, (__u8)-ret, dir);
		return TC_ACT_SHOT;
	}
#ifdef APIARY_METRICS_FORWARDED
	update_metrics(ctx->len, dir, REASON_FORWARDED);
#endif
	return ret;
}
