//go:build ignore

/* sluice's decapsulation for backends of mode dsr services, attached by
 * `sluice decap` (XDP) on the backend's interfaces. The kernel here has no
 * IPIP module, so this program strips the outer IPv4 header a sluice node
 * put around the client's packet (include/encap.h) and hands the inner
 * packet, untouched, to the kernel, which delivers it to the VIP on the
 * backend's loopback; the answer goes straight to the client.
 *
 * Only an unfragmented outer IPv4 header without options, protocol IPIP,
 * around an IPv4 packet to a VIP of the vips map is stripped: anything else
 * is passed to the kernel as it came (which drops IPIP it cannot handle). */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "include/consts.h"

char __license[] SEC("license") = "GPL";

/* decap_counters: what the program did, per CPU. */
struct decap_counters {
	__u64 decapsulated; /* stripped and passed on to the VIP */
	__u64 not_ours;     /* not IPIP (or not IPv4): passed untouched */
	__u64 unknown_vip;  /* IPIP whose inner destination is no VIP here: passed untouched */
	__u64 malformed;    /* IPIP with options, fragmented or truncated: passed untouched */
};

/* vips: the VIPs this backend serves (their addresses, network order),
 * written by `sluice decap`. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __be32);
	__type(value, __u8);
} vips SEC(".maps");

/* decap_stats: one decap_counters per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decap_counters);
} decap_stats SEC(".maps");

#define COUNT(field)                                              \
	do {                                                      \
		__u32 zero = 0;                                   \
		struct decap_counters *c =                        \
			bpf_map_lookup_elem(&decap_stats, &zero); \
		if (c)                                            \
			c->field++;                               \
	} while (0)

SEC("xdp")
int sluice_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *outer = (void *)(eth + 1);
	if ((void *)(outer + 1) > data_end || eth->h_proto != ETH_P_IP_BE || outer->version != 4 ||
	    outer->protocol != IPPROTO_IPIP) {
		COUNT(not_ours);
		return XDP_PASS;
	}
	struct iphdr *inner = (void *)(outer + 1);
	if (outer->ihl != 5 || (outer->frag_off & bpf_htons(IP_MF | IP_OFFMASK)) || (void *)(inner + 1) > data_end ||
	    inner->version != 4 || bpf_ntohs(outer->tot_len) < sizeof(*outer) + sizeof(*inner)) {
		COUNT(malformed);
		return XDP_PASS;
	}
	__be32 vip = inner->daddr;
	if (!bpf_map_lookup_elem(&vips, &vip)) {
		COUNT(unknown_vip);
		return XDP_PASS;
	}
	/* The Ethernet header moves up over the outer header. */
	struct ethhdr e;
	__builtin_memcpy(&e, eth, sizeof(e));
	if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct iphdr)))
		return XDP_PASS;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(eth, &e, sizeof(e));
	COUNT(decapsulated);
	return XDP_PASS;
}
