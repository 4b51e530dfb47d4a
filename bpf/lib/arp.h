/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ARP for Ethernet/IPv4, and answering a request in place. */
#pragma once

#include "common.h"

#define ARPHRD_ETHER	1
#define ARPOP_REQUEST	1
#define ARPOP_REPLY	2

/* The ARP header and its Ethernet/IPv4 addresses, as on the wire. */
struct arp_eth {
	__be16	ar_hrd;
	__be16	ar_pro;
	__u8	ar_hln;
	__u8	ar_pln;
	__be16	ar_op;
	__u8	ar_sha[ETH_ALEN];
	__be32	ar_sip;
	__u8	ar_tha[ETH_ALEN];
	__be32	ar_tip;
} __packed;

static __always_inline int arp_is_eth_ipv4(const struct arp_eth *arp)
{
	return arp->ar_hrd == bpf_htons(ARPHRD_ETHER) && arp->ar_pro == bpf_htons(ETH_P_IP) &&
	       arp->ar_hln == ETH_ALEN && arp->ar_pln == 4;
}

/* Turn the request into the reply "ar_tip is at `mac`" and send it back out of `ifindex`, the device
 * it came in on (for a veth, into the peer: the asker). */
static __always_inline int arp_respond(struct ethhdr *eth, struct arp_eth *arp, const __u8 *mac, __u32 ifindex)
{
	__be32 sip = arp->ar_sip;
	__be32 tip = arp->ar_tip;

	__builtin_memcpy(eth->h_dest, arp->ar_sha, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	arp->ar_op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(arp->ar_tha, arp->ar_sha, ETH_ALEN);
	__builtin_memcpy(arp->ar_sha, mac, ETH_ALEN);
	arp->ar_sip = tip;
	arp->ar_tip = sip;
	return bpf_redirect(ifindex, 0);
}
