/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Policy verdicts from apiary_policy (lib/maps.h). Two longest-prefix lookups per packet: the remote
 * identity's entries and the "any identity" (0) ones; a deny from either wins, then an allow from
 * either; nothing matching is a drop. An endpoint whose direction is not enforced has an allow-all
 * entry for identity 0, so every endpoint is looked up the same way, and a missing entry (an endpoint
 * whose policy is not written yet) fails closed. The matching entry counts the packet. */
#pragma once

#include "common.h"
#include "maps.h"
#include "drop.h"

static __always_inline void policy_account(struct policy_entry *entry, __u32 bytes)
{
	__sync_fetch_and_add(&entry->packets, 1);
	__sync_fetch_and_add(&entry->bytes, bytes);
}

static __always_inline int policy_verdict(__u16 lxc_id, __u8 egress, __u32 identity, __u8 proto, __be16 port,
					  __u32 bytes)
{
	struct policy_key key = {
		.prefixlen = POLICY_FULL_PREFIX,
		.sec_label = identity,
		.lxc_id = lxc_id,
		.egress = egress,
		.protocol = proto,
		.dport = port,
	};
	struct policy_entry *exact, *any;

	exact = bpf_map_lookup_elem(&apiary_policy, &key);
	key.sec_label = 0;
	any = bpf_map_lookup_elem(&apiary_policy, &key);
	if (exact && exact->deny) {
		policy_account(exact, bytes);
		return DROP_POLICY_DENY;
	}
	if (any && any->deny) {
		policy_account(any, bytes);
		return DROP_POLICY_DENY;
	}
	if (exact) {
		policy_account(exact, bytes);
		return TC_ACT_OK;
	}
	if (any) {
		policy_account(any, bytes);
		return TC_ACT_OK;
	}
	return DROP_POLICY;
}
