// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Socket-level load balancing (cgroup v2 socket address hooks), as Cilium's bpf_sock.c: a connect (or
 * an unconnected UDP sendmsg) to a service frontend is given a backend's address before the socket
 * sends anything, once per connection: no packet of it is ever NATed. What was translated is kept per
 * socket in apiary_lb4_reverse_sk, so that UDP replies (recvmsg) and getpeername show the service.
 *
 * sock4_connect: cgroup/connect4; sock4_sendmsg: cgroup/sendmsg4; sock4_recvmsg: cgroup/recvmsg4;
 * sock4_getpeername: cgroup/getpeername4. Clients here are in the cluster (pods, the node): a service
 * with two backend sets gives them the in-cluster one (internalTrafficPolicy). */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/lb.h"
#include "lib/events.h"

#define SYS_REJECT	0
#define SYS_PROCEED	1

#ifndef ECONNREFUSED
#define ECONNREFUSED	111
#endif
#ifndef ENOMEM
#define ENOMEM		12
#endif

/* The port in a socket address context: network order, in the low 16 bits. */
static __always_inline __be16 ctx_port(const struct bpf_sock_addr *ctx)
{
	volatile __u32 port = ctx->user_port;

	return (__be16)port;
}

/* The socket's hash for Maglev: a socket keeps its backend, the same input as in apiary.datapath.lb. */
static __always_inline __u32 sock_hash(__u64 cookie, __u8 proto)
{
	return jhash_3words((__u32)cookie, (__u32)(cookie >> 32), 0, proto);
}

/* Tell the observer a socket's destination became a backend (Cilium's trace-sock post-xlate-fwd):
 * the client is its network namespace, which the agent knows as an endpoint. */
static __always_inline void sock4_trace(struct bpf_sock_addr *ctx, const struct lb4_key *frontend,
					const struct lb4_backend *backend)
{
	struct flow_event ev = {
		.type = CILIUM_NOTIFY_TRACE_SOCK,
		.sub_type = XLATE_POST_DIRECTION_FWD,
		.flags = EVENT_F_EGRESS,
		.proto = frontend->proto,
		.daddr = backend->address,
		.dport = backend->port,
		.orig_addr = frontend->address,
		.orig_port = frontend->dport,
	};

	if (!events_enabled())
		return;
	ev.dst_identity = event_identity(backend->address);
	ev.cookie = bpf_get_netns_cookie(ctx);
	events_send(&ev);
}

/* Translate the destination to a backend when it is a service frontend. 0 when translated or not a
 * service; -errno to refuse the call (a service without backends: connection refused, as kube-proxy). */
static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx)
{
	struct lb4_key key = {
		.address = ctx->user_ip4,
		.dport = ctx_port(ctx),
		.proto = (__u8)ctx->protocol,
	};
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct lb4_reverse_sk_key rkey = { .cookie = cookie };
	struct lb4_reverse_sk rval = {};
	struct lb4_backend *backend;
	struct lb4_service *svc;
	__u32 backend_id;

	svc = lb4_lookup_service(&key, 1);
	if (!svc)
		return 0;
	if (!svc->count)
		return -ECONNREFUSED;
	backend = lb4_pick_backend(&key, svc, sock_hash(cookie, key.proto), key.proto == IPPROTO_UDP,
				   bpf_get_netns_cookie(ctx), 1, &backend_id);
	if (!backend)
		return -ECONNREFUSED;
	rkey.address = backend->address;
	rkey.port = backend->port;
	rval.address = key.address;
	rval.port = key.dport;
	rval.rev_nat_index = svc->rev_nat_index;
	if (bpf_map_update_elem(&apiary_lb4_reverse_sk, &rkey, &rval, BPF_ANY) < 0)
		return -ENOMEM;
	ctx->user_ip4 = backend->address;
	ctx->user_port = backend->port;
	sock4_trace(ctx, &key, backend);
	return 0;
}

/* A datagram from (or the peer of) a socket whose destination was translated: show the frontend,
 * while it still exists. */
static __always_inline void sock4_xlate_rev(struct bpf_sock_addr *ctx)
{
	struct lb4_reverse_sk_key key = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = ctx_port(ctx),
	};
	struct lb4_reverse_nat *frontend;
	struct lb4_reverse_sk *val;
	__u16 index;

	val = bpf_map_lookup_elem(&apiary_lb4_reverse_sk, &key);
	if (!val)
		return;
	index = val->rev_nat_index;
	frontend = bpf_map_lookup_elem(&apiary_lb4_reverse_nat, &index);
	if (!frontend || frontend->address != val->address || frontend->port != val->port) {
		bpf_map_delete_elem(&apiary_lb4_reverse_sk, &key);
		return;
	}
	ctx->user_ip4 = val->address;
	ctx->user_port = val->port;
}

static __always_inline int sock4_fwd(struct bpf_sock_addr *ctx)
{
	int err = sock4_xlate_fwd(ctx);

	if (err < 0) {
		bpf_set_retval(err);
		return SYS_REJECT;
	}
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock4_fwd(ctx);
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_fwd(ctx);
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	sock4_xlate_rev(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	sock4_xlate_rev(ctx);
	return SYS_PROCEED;
}

APIARY_LICENSE();
