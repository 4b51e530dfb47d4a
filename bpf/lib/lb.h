/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Services (the apiary_lb4_* maps of lib/maps.h): finding a frontend and picking its backend, shared
 * by the socket hooks (bpf_sock.c) and the tc path (lib/nodeport.h). As in Cilium's lib/lb.h:
 * a frontend's master entry (slot 0) says how many active backends it has; a new connection gets the
 * client's affinity backend when the service has sessionAffinity and the entry is alive, else one by
 * the configured algorithm: a random slot, or the frontend's Maglev table at the flow's hash. */
#pragma once

#include "common.h"
#include "maps.h"
#include "hash.h"
#include "conntrack.h"

/* The two backend sets of a frontend (lb4_key.scope). */
#define LB_LOOKUP_SCOPE_EXT	0	/* the one set, or the set for clients outside the cluster */
#define LB_LOOKUP_SCOPE_INT	1	/* the set for clients in the cluster, when it differs */

/* lb4_service.flags (Cilium's SVC_FLAG_*). ClusterIP is none of the first three. */
#define SVC_FLAG_EXTERNAL_IP	(1 << 0)
#define SVC_FLAG_NODEPORT	(1 << 1)
#define SVC_FLAG_LOADBALANCER	(1 << 2)
#define SVC_FLAG_AFFINITY	(1 << 3)	/* sessionAffinity ClientIP; the timeout is in backend_id */
#define SVC_FLAG_LOCAL_SCOPE	(1 << 4)	/* externalTrafficPolicy Local: local backends, no SNAT */
#define SVC_FLAG_ROUTABLE	(1 << 5)	/* reachable from outside: the tc path translates it */
/* lb4_service.flags2 */
#define SVC_FLAG2_INT_LOCAL_SCOPE	(1 << 0)	/* internalTrafficPolicy Local */
#define SVC_FLAG2_TWO_SCOPES		(1 << 1)	/* in-cluster clients use the LB_LOOKUP_SCOPE_INT set */

/* lb4_backend.flags */
#define BE_STATE_ACTIVE		0
#define BE_STATE_TERMINATING	1

/* lb_config.algorithm */
#define LB_ALG_RANDOM	0
#define LB_ALG_MAGLEV	1

/* The master entry of the frontend in `key` (address, dport, proto set); NULL when it is no service.
 * A client in the cluster gets the in-cluster set of a service that has two. `key` is left on the
 * scope found, slot 0. */
static __always_inline struct lb4_service *lb4_lookup_service(struct lb4_key *key, int in_cluster)
{
	struct lb4_service *svc;

	key->backend_slot = 0;
	key->scope = LB_LOOKUP_SCOPE_EXT;
	svc = bpf_map_lookup_elem(&apiary_lb4_services, key);
	if (svc && in_cluster && (svc->flags2 & SVC_FLAG2_TWO_SCOPES)) {
		key->scope = LB_LOOKUP_SCOPE_INT;
		svc = bpf_map_lookup_elem(&apiary_lb4_services, key);
	}
	return svc;
}

static __always_inline struct lb_config *lb_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&apiary_lb_config, &zero);
}

/* The backend in active slot (n % count) + 1. */
static __always_inline __u32 lb4_slot_backend_id(struct lb4_key *key, const struct lb4_service *svc, __u32 n)
{
	struct lb4_service *slot;

	key->backend_slot = (n % svc->count) + 1;
	slot = bpf_map_lookup_elem(&apiary_lb4_services, key);
	key->backend_slot = 0;
	return slot ? slot->backend_id : 0;
}

/* The backend at the flow's hash in the frontend's Maglev table; 0 while there is no table. */
static __always_inline __u32 lb4_maglev_backend_id(const struct lb4_key *key, const struct lb4_service *svc,
						   const struct lb_config *cfg, __u32 hash)
{
	__u32 outer = ((__u32)key->scope << 16) | svc->rev_nat_index;
	__u32 index, *backend_id;
	void *table;

	if (!cfg->maglev_table_size)
		return 0;
	table = bpf_map_lookup_elem(&apiary_lb4_maglev, &outer);
	if (!table)
		return 0;
	index = hash % cfg->maglev_table_size;
	backend_id = bpf_map_lookup_elem(table, &index);
	return backend_id ? *backend_id : 0;
}

/* by_hash: the random algorithm takes the hash instead of a random number (a UDP socket keeps its
 * backend for all its datagrams, as Cilium's sock_select_slot). */
static __always_inline __u32 lb4_select_backend_id(struct lb4_key *key, const struct lb4_service *svc, __u32 hash,
						   int by_hash)
{
	struct lb_config *cfg = lb_config();
	__u32 id = 0;

	if (cfg && cfg->algorithm == LB_ALG_MAGLEV)
		id = lb4_maglev_backend_id(key, svc, cfg, hash);
	if (!id)
		id = lb4_slot_backend_id(key, svc, by_hash ? hash : bpf_get_prandom_u32());
	return id;
}

/* The client's affinity backend for the service: 0 when it has none, the entry expired, or the
 * backend is no longer one of the service's active backends. */
static __always_inline __u32 lb4_affinity_backend_id(const struct lb4_service *svc, struct lb4_affinity_key *key)
{
	struct lb_affinity_val *val = bpf_map_lookup_elem(&apiary_lb4_affinity, key);
	struct lb_affinity_match match = {};
	__u64 now = ct_now();

	if (!val)
		return 0;
	match.backend_id = val->backend_id;
	match.rev_nat_index = svc->rev_nat_index;
	if (val->last_used + svc->backend_id < now || !bpf_map_lookup_elem(&apiary_lb_affinity_match, &match)) {
		bpf_map_delete_elem(&apiary_lb4_affinity, key);
		return 0;
	}
	val->last_used = now;
	return val->backend_id;
}

/* The backend for a new connection to `svc` (count > 0) from `client_id` (a netns cookie when
 * `netns_cookie`, else the client's address); `hash` is the flow's, for Maglev (and `by_hash`, see
 * lb4_select_backend_id). NULL when the backend vanished meanwhile (the runtime writes backends before
 * the slots that name them). */
static __always_inline struct lb4_backend *lb4_pick_backend(struct lb4_key *key, const struct lb4_service *svc,
							     __u32 hash, int by_hash, __u64 client_id,
							     __u8 netns_cookie, __u32 *backend_id)
{
	struct lb4_affinity_key akey = {
		.client_id = client_id,
		.rev_nat_index = svc->rev_nat_index,
		.netns_cookie = netns_cookie,
	};
	struct lb4_backend *backend;
	__u32 id = 0;

	if (svc->flags & SVC_FLAG_AFFINITY)
		id = lb4_affinity_backend_id(svc, &akey);
	if (!id)
		id = lb4_select_backend_id(key, svc, hash, by_hash);
	backend = bpf_map_lookup_elem(&apiary_lb4_backends, &id);
	if (backend && (svc->flags & SVC_FLAG_AFFINITY)) {
		struct lb_affinity_val val = { .last_used = ct_now(), .backend_id = id };

		bpf_map_update_elem(&apiary_lb4_affinity, &akey, &val, BPF_ANY);
	}
	*backend_id = id;
	return backend;
}
