/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Ethernet: bringing headers into the linear area, comparing MAC addresses. */
#pragma once

#include "common.h"

/* The packet's first `len` bytes, pulled into the linear area when they are not there yet; NULL when
 * the packet is shorter. Any packet pointer taken before this call is invalid after it. */
static __always_inline void *ctx_pull(struct __sk_buff *ctx, __u32 len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (likely(data + len <= data_end))
		return data;
	if (bpf_skb_pull_data(ctx, len) < 0)
		return NULL;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + len > data_end)
		return NULL;
	return data;
}

static __always_inline int eth_addr_equal(const __u8 *a, const __u8 *b)
{
	return *(const __u32 *)a == *(const __u32 *)b &&
	       *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}
