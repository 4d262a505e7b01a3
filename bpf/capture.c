//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// zmesh capture: one sk_lookup program per pod network namespace.
//
// The pod's routing (installed by the CNI side) delivers every outbound TCP
// SYN locally, so this program sees both directions of new connections:
//   inbound  (to the pod's own IP):   steer to the 15006 listener, except the
//            proxy ports, probe sources, the pod talking to itself, and
//            4-tuples ztunnel put in the bypass map for its own dials;
//   outbound (to any other address): steer to the 15001 listener.
// When the pod is enrolled but the listener it needs is missing, the SYN is
// dropped: without ztunnel there is no path, secure by default.

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10

// Listener slots in the SOCKMAP.
enum {
	LISTENER_OUTBOUND = 0,
	LISTENER_INBOUND = 1,
	LISTENER_MAX,
};

// Per-CPU counters.
enum {
	COUNT_OUTBOUND = 0,   // assigned to the outbound listener
	COUNT_INBOUND,        // assigned to the inbound listener
	COUNT_PASS,           // left to the kernel's own lookup
	COUNT_BYPASS,         // inbound 4-tuple in the bypass map
	COUNT_DROP,           // enrolled, listener missing: dropped
	COUNT_MAX,
};

// Proxy ports of a captured pod: never redirected.
#define PORT_OUTBOUND 15001
#define PORT_INBOUND 15006
#define PORT_HBONE 15008
#define PORT_DNS 15053

struct pod_config {
	__u32 enrolled;   // 0: pass everything
	__u32 has_ip4;
	__u32 has_ip6;
	__u32 pod_ip4;    // network order
	__u32 pod_ip6[4]; // network order
};

struct addr_key {
	__u32 family;
	__u32 ip[4]; // IPv4 in ip[0], network order
};

struct tuple_key {
	__u32 family;
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u32 local_port;  // host order
	__u32 remote_port; // host order
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, LISTENER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pod_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, struct addr_key);
	__type(value, __u8);
} probe_sources SEC(".maps");

// Entries live for the length of a connect(); most pods hold a handful, so
// the map is not preallocated (a preallocated one costs every pod's setup
// megabytes of kernel memory).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tuple_key);
	__type(value, __u8);
} bypass SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline int count(__u32 what, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &what);
	if (c)
		*c += 1;
	return verdict;
}

static __always_inline int is_pod_ip(const struct pod_config *cfg, struct bpf_sk_lookup *ctx, int local)
{
	if (ctx->family == AF_INET)
		return cfg->has_ip4 && (local ? ctx->local_ip4 : ctx->remote_ip4) == cfg->pod_ip4;
	if (!cfg->has_ip6)
		return 0;
	if (local)
		return ctx->local_ip6[0] == cfg->pod_ip6[0] && ctx->local_ip6[1] == cfg->pod_ip6[1] &&
		       ctx->local_ip6[2] == cfg->pod_ip6[2] && ctx->local_ip6[3] == cfg->pod_ip6[3];
	return ctx->remote_ip6[0] == cfg->pod_ip6[0] && ctx->remote_ip6[1] == cfg->pod_ip6[1] &&
	       ctx->remote_ip6[2] == cfg->pod_ip6[2] && ctx->remote_ip6[3] == cfg->pod_ip6[3];
}

static __always_inline int is_loopback(struct bpf_sk_lookup *ctx)
{
	if (ctx->family == AF_INET)
		return (bpf_ntohl(ctx->local_ip4) >> 24) == 127;
	return ctx->local_ip6[0] == 0 && ctx->local_ip6[1] == 0 && ctx->local_ip6[2] == 0 &&
	       ctx->local_ip6[3] == bpf_htonl(1);
}

static __always_inline int assign(struct bpf_sk_lookup *ctx, __u32 slot, __u32 what)
{
	struct bpf_sock *sk = bpf_map_lookup_elem(&listeners, &slot);
	if (!sk)
		return count(COUNT_DROP, SK_DROP);
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return count(COUNT_DROP, SK_DROP);
	return count(what, SK_PASS);
}

SEC("sk_lookup")
int zmesh_capture(struct bpf_sk_lookup *ctx)
{
	__u32 zero = 0;
	struct pod_config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg || !cfg->enrolled || ctx->protocol != IPPROTO_TCP)
		return count(COUNT_PASS, SK_PASS);
	if (ctx->family != AF_INET && ctx->family != AF_INET6)
		return count(COUNT_PASS, SK_PASS);
	if (is_loopback(ctx))
		return count(COUNT_PASS, SK_PASS);

	if (!is_pod_ip(cfg, ctx, 1)) {
		// Outbound, delivered locally by the pod's table 100.
		return assign(ctx, LISTENER_OUTBOUND, COUNT_OUTBOUND);
	}

	// Inbound to the pod's own address.
	switch (ctx->local_port) {
	case PORT_OUTBOUND:
	case PORT_INBOUND:
	case PORT_HBONE:
	case PORT_DNS:
		return count(COUNT_PASS, SK_PASS);
	}
	// The pod talking to itself.
	if (is_pod_ip(cfg, ctx, 0))
		return count(COUNT_PASS, SK_PASS);

	struct addr_key src = {.family = ctx->family};
	if (ctx->family == AF_INET) {
		src.ip[0] = ctx->remote_ip4;
	} else {
		src.ip[0] = ctx->remote_ip6[0];
		src.ip[1] = ctx->remote_ip6[1];
		src.ip[2] = ctx->remote_ip6[2];
		src.ip[3] = ctx->remote_ip6[3];
	}
	if (bpf_map_lookup_elem(&probe_sources, &src))
		return count(COUNT_PASS, SK_PASS);

	struct tuple_key t = {
		.family = ctx->family,
		.local_port = ctx->local_port,
		.remote_port = bpf_ntohs(ctx->remote_port),
	};
	if (ctx->family == AF_INET) {
		t.local_ip[0] = ctx->local_ip4;
		t.remote_ip[0] = ctx->remote_ip4;
	} else {
		t.local_ip[0] = ctx->local_ip6[0];
		t.local_ip[1] = ctx->local_ip6[1];
		t.local_ip[2] = ctx->local_ip6[2];
		t.local_ip[3] = ctx->local_ip6[3];
		t.remote_ip[0] = ctx->remote_ip6[0];
		t.remote_ip[1] = ctx->remote_ip6[1];
		t.remote_ip[2] = ctx->remote_ip6[2];
		t.remote_ip[3] = ctx->remote_ip6[3];
	}
	if (bpf_map_lookup_elem(&bypass, &t))
		return count(COUNT_BYPASS, SK_PASS);

	return assign(ctx, LISTENER_INBOUND, COUNT_INBOUND);
}

char _license[] SEC("license") = "Dual BSD/GPL";
