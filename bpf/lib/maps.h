/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every map of the datapath, defined once (docs/datapath.md "Maps"). Each object file includes all of
 * them; libbpf pins them by name under the node's pin dir, so the objects (and the runtime, through
 * apiary.bpf.maps, which mirrors these structs) share one instance of each. Keys and values leave room
 * for IPv6. Change a layout here, in apiary.bpf.maps and in docs/datapath.md together. */
#pragma once

#include "common.h"

#define ENDPOINTS_MAP_SIZE	65535
#define IPCACHE_MAP_SIZE	512000
#define POLICY_MAP_SIZE		262144
#define CT_MAP_SIZE		65536
#define LB_MAP_SIZE		65536
#define METRICS_MAP_SIZE	1024
#define EVENTS_RING_SIZE	(8 * 1024 * 1024)	/* ~110k events: the reader may pause */

union v4v6 {
	__be32	ip4;
	__u8	ip6[16];
};

/* apiary_lxc: the endpoints (pods) of this node, by IP. */
struct endpoint_key {
	union v4v6	addr;
	__u8		family;		/* ENDPOINT_KEY_IPV4 | ENDPOINT_KEY_IPV6 */
	__u8		pad[3];
};

struct endpoint_info {
	__u32	ifindex;		/* the host-side lxc device */
	__u16	lxc_id;
	__u16	flags;
	__u32	sec_identity;
	__u8	mac[ETH_ALEN];		/* the pod's eth0 */
	__u8	node_mac[ETH_ALEN];	/* the lxc device: the pod's gateway */
	__u32	pad;
};

/* apiary_ipcache: every known IP/prefix to its security identity and the node that has it. */
struct ipcache_key {
	__u32		prefixlen;	/* counts cluster_id, pad and family too: a /32 host is 64 */
	__u16		cluster_id;
	__u8		pad;
	__u8		family;
	union v4v6	addr;
};

#define IPCACHE_PREFIX_LEN(bits) (32 + (bits))

struct remote_endpoint_info {
	__u32	sec_identity;
	__be32	tunnel_endpoint;	/* the node's underlay IP; 0 when not reached through the tunnel */
	__u16	node_id;
	__u8	key;
	__u8	flags;
};

/* apiary_policy: every endpoint's policy, as Cilium's per-endpoint policy maps in one LPM trie keyed
 * by endpoint. A key matches exactly on (remote identity, endpoint, direction); the prefix may end
 * before the protocol (any protocol) or inside the port (a range of ports, endPort) or before it (any
 * port). Identity 0 is "any identity": the datapath looks up the remote identity and 0, and a deny in
 * either wins (lib/policy.h). The agent resolves deny precedence within one identity. */
struct policy_key {
	__u32	prefixlen;
	__u32	sec_label;		/* remote security identity; 0: any */
	__u16	lxc_id;
	__u8	egress;			/* 0: into the endpoint, 1: out of it */
	__u8	protocol;		/* IPPROTO_*; wildcarded by the prefix */
	__be16	dport;			/* destination port, the ICMP type for ICMP */
	__u16	pad;
};

/* Bits of the key that are always matched, and all of them. */
#define POLICY_STATIC_PREFIX	(32 + 16 + 8)
#define POLICY_FULL_PREFIX	(POLICY_STATIC_PREFIX + 8 + 16)

struct policy_entry {
	__u8	deny;
	__u8	pad[7];
	__u64	packets;
	__u64	bytes;
};

/* apiary_ct4: connection tracking, per endpoint direction: `flags` says whether the connection went out
 * of a local endpoint (TUPLE_F_OUT) or into one (TUPLE_F_IN); a pod-to-pod connection on one node has
 * both. Packed, as in Cilium, so a key has no padding. */
struct ipv4_ct_tuple {
	__be32	daddr;
	__be32	saddr;
	__be16	dport;
	__be16	sport;
	__u8	nexthdr;
	__u8	flags;
} __packed;

struct ct_entry {
	__u64	packets;
	__u64	bytes;
	__u32	lifetime;		/* seconds of bpf_ktime_get_ns() after which the entry is dead */
	__u16	flags;
	__u16	rev_nat_index;
	__u32	src_sec_id;
	/* What the observer was last told (lib/events.h aggregation), per direction of the connection:
	 * tx the entry's own direction, rx its replies. */
	__u8	tx_flags_seen;
	__u8	rx_flags_seen;
	__u16	pad;
	__u32	last_tx_report;		/* seconds, as lifetime */
	__u32	last_rx_report;
};

/* apiary_lb4_*: services (lib/lb.h), as Cilium's lb4 maps. A frontend (address, port, protocol) has a
 * master entry (backend_slot 0) and one entry per backend slot: 1..count are the active backends that
 * new connections pick from, count+1..count+qcount the terminating ones (kept for `service list`,
 * never picked). A service whose external and in-cluster backend sets differ (externalTrafficPolicy
 * and internalTrafficPolicy not the same) has a second set under scope LB_LOOKUP_SCOPE_INT. */
struct lb4_key {
	__be32	address;
	__be16	dport;
	__u16	backend_slot;		/* 0: the service itself, 1..count+qcount: its backends */
	__u8	proto;
	__u8	scope;			/* LB_LOOKUP_SCOPE_EXT | LB_LOOKUP_SCOPE_INT */
	__u16	pad;
};

struct lb4_service {
	__u32	backend_id;		/* in slot 0: the session affinity timeout (seconds) */
	__u16	count;			/* active backends (slot 0 only) */
	__u16	rev_nat_index;		/* the frontend's ID */
	__u8	flags;			/* SVC_FLAG_* */
	__u8	flags2;			/* SVC_FLAG2_* */
	__u16	qcount;			/* terminating backends after the active ones (slot 0 only) */
};

struct lb4_backend {
	__be32	address;
	__be16	port;
	__u8	proto;
	__u8	flags;			/* BE_STATE_* */
};

/* apiary_lb4_reverse_nat: frontend ID -> the frontend, for replies. */
struct lb4_reverse_nat {
	__be32	address;
	__be16	port;
	__u16	pad;
};

/* apiary_lb4_affinity: sessionAffinity ClientIP, the backend a client last got. The client is its
 * network namespace (cookie) on the socket path, as in Cilium, and its address on the tc path. */
struct lb4_affinity_key {
	__u64	client_id;		/* netns cookie, or the IPv4 address (__be32) */
	__u16	rev_nat_index;
	__u8	netns_cookie;		/* 1: client_id is a netns cookie */
	__u8	pad[5];
};

struct lb_affinity_val {
	__u64	last_used;		/* seconds of bpf_ktime_get_ns() */
	__u32	backend_id;
	__u32	pad;
};

/* apiary_lb_affinity_match: (backend, frontend) pairs that exist, so an affinity entry never sends a
 * client to a backend its service no longer has. */
struct lb_affinity_match {
	__u32	backend_id;
	__u16	rev_nat_index;
	__u16	pad;
};

/* apiary_lb4_reverse_sk: what the socket hooks translated, per socket (cookie) and backend, so that
 * recvmsg and getpeername show the service instead of the backend. */
struct lb4_reverse_sk_key {
	__u64	cookie;
	__be32	address;		/* the backend */
	__be16	port;
	__u16	pad;
};

struct lb4_reverse_sk {
	__be32	address;		/* the frontend */
	__be16	port;
	__u16	rev_nat_index;
};

/* apiary_lb4_nat: the tc path's translations (NodePort, LoadBalancer, externalIPs from outside the
 * node). The key is a packet's tuple as it arrives (flags: NAT_DIR_FWD for the client's direction,
 * NAT_DIR_REV for the backend's replies), the value what its addresses and ports become. */
struct lb4_nat_entry {
	__be32	saddr;
	__be32	daddr;
	__be16	sport;
	__be16	dport;
	__u32	lifetime;		/* seconds of bpf_ktime_get_ns(), as apiary_ct4 */
	__u16	rev_nat_index;
	__u16	pad;
};

/* apiary_lb_config: the load balancer's settings, one entry written by apiary.datapath.lb. */
struct lb_config {
	__u32	maglev_table_size;	/* M, a prime (Cilium's choices 251..131071) */
	__be32	node_address;		/* the source of SNATed NodePort traffic; 0: the frontend's */
	__u8	algorithm;		/* LB_ALG_RANDOM | LB_ALG_MAGLEV */
	__u8	pad[3];
};

/* apiary_metrics: packets and bytes per (reason, direction), per CPU. */
struct metrics_key {
	__u8	reason;			/* 0 forwarded, else -(DROP_*) */
	__u8	dir;			/* METRIC_INGRESS | METRIC_EGRESS */
	__u16	pad;
};

struct metrics_value {
	__u64	count;
	__u64	bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, ENDPOINTS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apiary_lxc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct remote_endpoint_info);
	__uint(max_entries, IPCACHE_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apiary_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(max_entries, POLICY_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apiary_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv4_ct_tuple);
	__type(value, struct ct_entry);
	__uint(max_entries, CT_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apiary_ct4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apiary_lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apiary_lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apiary_lb4_reverse_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb_affinity_val);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apiary_lb4_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_affinity_match);
	__type(value, __u32);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apiary_lb_affinity_match SEC(".maps");

/* apiary_lb4_maglev: (scope << 16 | frontend ID) -> the frontend's Maglev table, an array of M
 * backend ids. The runtime creates each table with M entries (BPF_F_INNER_MAP lets the size differ
 * from this template's) and swaps it in whole. */
struct lb4_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct lb4_maglev_inner);
} apiary_lb4_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_reverse_sk_key);
	__type(value, struct lb4_reverse_sk);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apiary_lb4_reverse_sk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv4_ct_tuple);
	__type(value, struct lb4_nat_entry);
	__uint(max_entries, CT_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apiary_lb4_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct lb_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apiary_lb_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(max_entries, METRICS_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apiary_metrics SEC(".maps");

/* apiary_events: datapath events for the observer (lib/events.h, docs/hubble.md). Cilium's type and
 * sub-type numbers; addresses and ports in network order. */
struct flow_event {
	__u8	type;			/* CILIUM_NOTIFY_* */
	__u8	sub_type;		/* drop reason, observation point or translation point */
	__u8	flags;			/* EVENT_F_* */
	__u8	proto;
	__u16	lxc_id;			/* the local endpoint the event is about; 0: none */
	__u16	pad;
	__u64	ktime;			/* bpf_ktime_get_ns() */
	__u32	src_identity;
	__u32	dst_identity;
	__be32	saddr;
	__be32	daddr;
	__be16	sport;
	__be16	dport;
	__u8	tcp_flags;
	__u8	icmp_type;
	__u8	icmp_code;
	__u8	pad2;
	__be32	orig_addr;		/* trace-sock: the address before translation (the service) */
	__be16	orig_port;
	__u16	pad3;
	__u32	ifindex;
	__u32	len;
	__u64	cookie;			/* trace-sock: the client's network namespace cookie */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RING_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apiary_events SEC(".maps");

/* apiary_events_config: written by the agent; enabled 0 (the default) means no event work at all. */
struct events_config {
	__u8	enabled;
	__u8	pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct events_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apiary_events_config SEC(".maps");

/* apiary_events_lost: events the ring had no room for, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} apiary_events_lost SEC(".maps");
