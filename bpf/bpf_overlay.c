// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The VXLAN device apiary_vxlan (collect-metadata, tunnel routing mode).
 *
 * to_overlay (tc egress): the kernel routed a packet to a remote pod CIDR; set its tunnel key:
 * remote = the node holding the destination (ipcache), VNI = the source's security identity.
 * from_overlay (tc ingress): a decapsulated packet; its VNI is the sender's identity. A packet for a
 * local endpoint is delivered straight to its lxc device. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/drop.h"
#include "lib/ipv4.h"
#include "lib/endpoint.h"
#include "lib/encap.h"
#include "lib/identity.h"

static __always_inline int encap_ipv4(struct __sk_buff *ctx)
{
	struct remote_endpoint_info *dst, *src;
	struct ethhdr *eth = ipv4_pull(ctx);
	struct iphdr *ip4;

	if (!eth)
		return DROP_INVALID;
	ip4 = (struct iphdr *)(eth + 1);
	dst = lookup_ip4_ipcache(ip4->daddr);
	if (!dst || !dst->tunnel_endpoint)
		return DROP_NO_TUNNEL_ENDPOINT;
	/* A source the ipcache does not know (not a pod, not a node) is the world, never the host. */
	src = lookup_ip4_ipcache(ip4->saddr);
	return set_tunnel_key(ctx, src ? src->sec_identity : WORLD_ID, dst->tunnel_endpoint);
}

SEC("tc")
int to_overlay(struct __sk_buff *ctx)
{
	int ret = TC_ACT_OK;	/* not IPv4: without a key the VXLAN device drops it itself */

	if (ctx->protocol == bpf_htons(ETH_P_IP))
		ret = encap_ipv4(ctx);
	return finish(ctx, ret, METRIC_EGRESS);
}

SEC("tc")
int from_overlay(struct __sk_buff *ctx)
{
	/* The VNI is the sender's identity: to_container checks ingress policy against it. */
	__s64 identity = get_tunnel_identity(ctx);
	int ret = TC_ACT_OK;

	if (identity < 0)
		ret = (int)identity;
	else if (ctx->protocol == bpf_htons(ETH_P_IP))
		ret = ipv4_deliver_local(ctx, identity_to_mark((__u32)identity));
	return finish(ctx, ret, METRIC_INGRESS);
}

APIARY_LICENSE();
