/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared by every Apiary program: kernel UAPI, libbpf helpers, reserved identities, return codes. */
#pragma once

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#define __packed __attribute__((packed))

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* Every object carries the same license string; nothing here needs a GPL-only helper yet. */
#define APIARY_LICENSE() char __license[] SEC("license") = "Dual BSD/GPL"

#ifndef AF_INET
#define AF_INET 2
#endif

/* Address family inside map keys (Cilium's ENDPOINT_KEY_*). */
#define ENDPOINT_KEY_IPV4 1
#define ENDPOINT_KEY_IPV6 2

/* Reserved security identities (Cilium's numbers, docs/datapath.md). */
#define HOST_ID 1
#define WORLD_ID 2
#define UNMANAGED_ID 3
#define HEALTH_ID 4
#define INIT_ID 5
#define REMOTE_NODE_ID 6
#define KUBE_APISERVER_ID 7
#define INGRESS_ID 8

/* Direction in the metrics key (Cilium's METRIC_*): seen from the endpoint. */
#define METRIC_INGRESS 1
#define METRIC_EGRESS 2

/* Metrics reason 0 is a forwarded packet; anything else is -(DROP_*) (lib/drop.h). */
#define REASON_FORWARDED 0

#define IPDEFTTL 64
