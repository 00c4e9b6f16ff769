/* IPv6 address/port rewriting and forwarding through the kernel's FIB.
 * IPv6 has no header checksum; the TCP/UDP checksum covers the
 * pseudo-header (RFC 8200 8.1: source, final destination, upper-layer
 * length, next header), so every address change is carried into it. */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "csum.h"
#include "nat.h"
#include "parse6.h"
#include "structs.h"

/* csum_replace16: an incremental update of a checksum field when a
 * 16-byte address changes (RFC 1624 eqn. 3, word by word). */
static __always_inline void csum_replace16(__u16 *sum, const __be32 *from, const __be32 *to)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		csum_replace4(sum, from[i], to[i]);
}

/* l4_csum6 returns the TCP/UDP checksum field of p (UDP over IPv6 always
 * has one: parse_packet6 refuses 0). */
static __always_inline __u16 *l4_csum6(struct packet6 *p, void *data_end)
{
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = p->l4;
		if ((void *)(tcp + 1) > data_end)
			return NULL;
		return (__u16 *)&tcp->check;
	}
	struct udphdr *udp = p->l4;
	if ((void *)(udp + 1) > data_end)
		return NULL;
	return (__u16 *)&udp->check;
}

/* rewrite6 sets new addresses/ports (NULL or 0 = keep) and fixes the
 * TCP/UDP checksum, pseudo-header included. */
static __always_inline int rewrite6(struct packet6 *p, void *data_end, const __be32 *saddr, __be16 sport,
				    const __be32 *daddr, __be16 dport)
{
	struct ipv6hdr *ip6 = p->ip6;
	struct ports *ports = p->l4;
	if ((void *)(ip6 + 1) > data_end || (void *)(ports + 1) > data_end)
		return -1;
	__u16 *l4sum = l4_csum6(p, data_end);
	if (!l4sum)
		return -1;
	__be32 *s = (__be32 *)&ip6->saddr;
	__be32 *d = (__be32 *)&ip6->daddr;
	if (saddr && !addr6_is_zero(saddr) && !addr6_eq(saddr, s)) {
		csum_replace16(l4sum, s, saddr);
		addr6_copy(s, saddr);
	}
	if (daddr && !addr6_is_zero(daddr) && !addr6_eq(daddr, d)) {
		csum_replace16(l4sum, d, daddr);
		addr6_copy(d, daddr);
	}
	if (sport && sport != ports->source) {
		csum_replace2(l4sum, ports->source, sport);
		ports->source = sport;
	}
	if (dport && dport != ports->dest) {
		csum_replace2(l4sum, ports->dest, dport);
		ports->dest = dport;
	}
	/* A computed UDP checksum of 0 is sent as all ones (RFC 768, RFC 8200). */
	if (p->proto == IPPROTO_UDP && *l4sum == 0)
		*l4sum = 0xffff;
	p->sport = ports->source;
	p->dport = ports->dest;
	return 0;
}

/* forward6 is forward (nat.h) for IPv6: a cached next hop when fresh, else
 * bpf_fib_lookup; the hop limit is decremented (no checksum to fix) only
 * when the program redirects the packet itself. fib is scratch space for
 * the lookup (it lives in a per-CPU map, off the stack). */
static __always_inline int forward6(struct xdp_md *ctx, struct packet6 *p, void *data_end,
				    struct bpf_fib_lookup *fib, struct nexthop *nh, __u16 *mtu, __u64 now, __u32 *ifindex)
{
	struct ipv6hdr *ip6 = p->ip6;
	struct ethhdr *eth = p->eth;
	if ((void *)(ip6 + 1) > data_end || (void *)(eth + 1) > data_end)
		return FWD_FAILED;
	if (ip6->hop_limit <= 1)
		return FWD_FAILED; /* the kernel sends the ICMPv6 time exceeded */

	if (nh->until > now) {
		if (*mtu && p->tot_len > *mtu)
			return FWD_TOO_BIG;
		__builtin_memcpy(eth->h_dest, nh->dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, nh->smac, ETH_ALEN);
		ip6->hop_limit--;
		*ifindex = nh->ifindex;
		return FWD_REDIRECT;
	}

	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = 10; /* AF_INET6 */
	fib->flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0fffffff);
	fib->l4_protocol = p->proto;
	fib->sport = p->sport;
	fib->dport = p->dport;
	fib->tot_len = p->tot_len;
	addr6_copy(fib->ipv6_src, (__be32 *)&ip6->saddr);
	addr6_copy(fib->ipv6_dst, (__be32 *)&ip6->daddr);
	fib->ifindex = ctx->ingress_ifindex;

	long rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	int r = fib_answer(ctx, rc, fib, nh, mtu, now, cfg.nexthop_cache_ns); /* cfg: sluice.c */
	if (r != FWD_REDIRECT)
		return r;
	__builtin_memcpy(eth->h_dest, nh->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, nh->smac, ETH_ALEN);
	ip6->hop_limit--;
	*ifindex = fib->ifindex;
	return FWD_REDIRECT;
}
