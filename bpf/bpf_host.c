// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* from_netdev: tc ingress of the node's uplink. A packet for a local endpoint is delivered straight
 * to its lxc device (to_container checks the endpoint's ingress policy there); everything else (the node's own traffic, VXLAN, transit) passes to the kernel.
 *
 * to_netdev (tc egress of the uplink) is not here yet: issue 5 adds it for NodePort SNAT. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/drop.h"
#include "lib/endpoint.h"

SEC("tc")
int from_netdev(struct __sk_buff *ctx)
{
	int ret = TC_ACT_OK;

	if (ctx->protocol == bpf_htons(ETH_P_IP))
		ret = ipv4_deliver_local(ctx, 0);
	return finish(ctx, ret, METRIC_INGRESS);
}

APIARY_LICENSE();
