/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* A packet's source security identity, carried in skb->mark from a program that knows it (the VNI of
 * a tunnelled packet) to the one that enforces ingress policy (to_container), as Cilium does: the
 * magic 0x0F00 in bits 8-11, identity bits 0-15 in the mark's bits 16-31 and bits 16-23 in bits 0-7. */
#pragma once

#include "common.h"
#include "endpoint.h"

#define MARK_MAGIC_MASK		0x0F00
#define MARK_MAGIC_IDENTITY	0x0F00

static __always_inline __u32 identity_to_mark(__u32 identity)
{
	return MARK_MAGIC_IDENTITY | ((identity & 0xFFFF) << 16) | ((identity >> 16) & 0xFF);
}

/* The identity of the sender of a packet arriving for a local endpoint: from the mark when a program
 * put it there, else from the ipcache; an address nobody knows is the world. */
static __always_inline __u32 source_identity(__u32 mark, __be32 saddr)
{
	struct remote_endpoint_info *info;

	if ((mark & MARK_MAGIC_MASK) == MARK_MAGIC_IDENTITY)
		return (mark >> 16) | ((mark & 0xFF) << 16);
	info = lookup_ip4_ipcache(saddr);
	return info ? info->sec_identity : WORLD_ID;
}

/* The identity behind a destination address (egress policy). */
static __always_inline __u32 destination_identity(__be32 daddr)
{
	struct remote_endpoint_info *info = lookup_ip4_ipcache(daddr);

	return info ? info->sec_identity : WORLD_ID;
}
