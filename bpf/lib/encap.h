/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* VXLAN in collect-metadata mode: the programs read and write the tunnel key; the VNI carries the
 * source's security identity. */
#pragma once

#include "common.h"
#include "drop.h"

/* The key without the local address (kernels before 6.0 know no more), as Cilium passes it. */
#define TUNNEL_KEY_WITHOUT_SRC_IP __builtin_offsetof(struct bpf_tunnel_key, local_ipv4)

static __always_inline int set_tunnel_key(struct __sk_buff *ctx, __u32 identity, __be32 remote)
{
	struct bpf_tunnel_key key = {};

	key.tunnel_id = identity;
	key.remote_ipv4 = bpf_ntohl(remote);
	key.tunnel_ttl = IPDEFTTL;
	if (bpf_skb_set_tunnel_key(ctx, &key, TUNNEL_KEY_WITHOUT_SRC_IP, BPF_F_ZERO_CSUM_TX) < 0)
		return DROP_WRITE_ERROR;
	return TC_ACT_OK;
}

/* The source identity carried by a received packet's VNI; a negative DROP_* when it has no key. */
static __always_inline __s64 get_tunnel_identity(struct __sk_buff *ctx)
{
	struct bpf_tunnel_key key = {};

	if (bpf_skb_get_tunnel_key(ctx, &key, TUNNEL_KEY_WITHOUT_SRC_IP, 0) < 0)
		return DROP_NO_TUNNEL_KEY;
	return key.tunnel_id;
}
