// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* from_netdev: tc ingress of the node's uplink. Services first (lib/nodeport.h): a new connection to a
 * NodePort, LoadBalancer or external IP frontend is DNATed to a backend (and SNATed to the node for a
 * remote one), packets of translated connections and replies of SNATed ones are translated again.
 * Then a packet for a local endpoint is delivered straight to its lxc device (to_container checks the
 * endpoint's ingress policy there); everything else (the node's own traffic, VXLAN, transit) passes
 * to the kernel.
 *
 * No to_netdev: SNATed packets leave through fib_redirect4 already translated, and their replies
 * arrive here. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/drop.h"
#include "lib/endpoint.h"
#include "lib/nodeport.h"

static __always_inline int handle_ipv4(struct __sk_buff *ctx, __u32 ifindex)
{
	int handled = 0;
	int ret = nodeport_lb4_ingress(ctx, ifindex, &handled);

	if (handled)
		return ret;
	return ipv4_deliver_local(ctx, 0);
}

SEC("tc")
int from_netdev(struct __sk_buff *ctx)
{
	__u32 ifindex = ctx->ifindex;
	int ret = TC_ACT_OK;

	if (ctx->protocol == bpf_htons(ETH_P_IP))
		ret = handle_ipv4(ctx, ifindex);
	return finish(ctx, ret, METRIC_INGRESS);
}

APIARY_LICENSE();
