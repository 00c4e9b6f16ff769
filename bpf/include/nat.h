/* Address/port rewriting with incremental checksum updates, and forwarding
 * through the kernel's FIB. */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "csum.h"
#include "parse.h"

/* l4_csum returns the L4 checksum field, or NULL for a UDP datagram sent
 * without a checksum (which must stay 0). */
static __always_inline __u16 *l4_csum(struct packet *p, void *data_end)
{
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = p->l4;
		if ((void *)(tcp + 1) > data_end)
			return NULL;
		return (__u16 *)&tcp->check;
	}
	struct udphdr *udp = p->l4;
	if ((void *)(udp + 1) > data_end || udp->check == 0)
		return NULL;
	return (__u16 *)&udp->check;
}

/* The L4 header's source/dest ports sit at the same offsets in TCP and UDP. */
struct ports {
	__be16 source;
	__be16 dest;
};

/* rewrite sets new addresses/ports (0 = keep) and fixes the IPv4 header
 * checksum and the TCP/UDP checksum (pseudo-header included). */
static __always_inline int rewrite(struct packet *p, void *data_end,
				   __be32 saddr, __be16 sport, __be32 daddr, __be16 dport)
{
	struct iphdr *ip = p->ip;
	struct ports *ports = p->l4;
	if ((void *)(ip + 1) > data_end || (void *)(ports + 1) > data_end)
		return -1;
	__u16 *l4sum = l4_csum(p, data_end);
	int udp = p->proto == IPPROTO_UDP;

	if (saddr && saddr != ip->saddr) {
		csum_replace4((__u16 *)&ip->check, ip->saddr, saddr);
		if (l4sum)
			csum_replace4(l4sum, ip->saddr, saddr);
		ip->saddr = saddr;
	}
	if (daddr && daddr != ip->daddr) {
		csum_replace4((__u16 *)&ip->check, ip->daddr, daddr);
		if (l4sum)
			csum_replace4(l4sum, ip->daddr, daddr);
		ip->daddr = daddr;
	}
	if (sport && sport != ports->source) {
		if (l4sum)
			csum_replace2(l4sum, ports->source, sport);
		ports->source = sport;
	}
	if (dport && dport != ports->dest) {
		if (l4sum)
			csum_replace2(l4sum, ports->dest, dport);
		ports->dest = dport;
	}
	/* A computed UDP checksum of 0 is sent as all ones (RFC 768). */
	if (udp && l4sum && *l4sum == 0)
		*l4sum = 0xffff;
	p->sport = ports->source;
	p->dport = ports->dest;
	return 0;
}

static __always_inline void decrement_ttl(struct iphdr *ip)
{
	/* TTL is the high byte of the 16-bit word it shares with protocol. */
	__u16 old = *(__u16 *)&ip->ttl;
	ip->ttl--;
	csum_replace2((__u16 *)&ip->check, old, *(__u16 *)&ip->ttl);
}

enum fwd_result {
	FWD_REDIRECT = 0,
	FWD_NO_NEIGH,
	FWD_FAILED,
	FWD_TOO_BIG, /* larger than the next hop's MTU (*mtu says how large it may be) */
};

static __always_inline void apply_nexthop(struct ethhdr *eth, struct iphdr *ip,
					  const struct nexthop *nh)
{
	__builtin_memcpy(eth->h_dest, nh->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, nh->smac, ETH_ALEN);
	decrement_ttl(ip);
}

/* fib_answer turns bpf_fib_lookup's answer rc (for fib) into a forward
 * result; on success it caches the next hop in nh (until now + ttl_ns, 0:
 * not cached) with the egress device's MTU in *mtu. Both families use it. */
static __always_inline int fib_answer(struct xdp_md *ctx, long rc, const struct bpf_fib_lookup *fib,
				      struct nexthop *nh, __u16 *mtu, __u64 now, __u64 ttl_ns)
{
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		*mtu = fib->mtu_result;
		return FWD_TOO_BIG;
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return FWD_NO_NEIGH;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return FWD_FAILED;
	/* The egress device's MTU, kept with the next hop: the cached path
	 * must check it too. */
	__u32 dev_mtu = 0;
	if (bpf_check_mtu(ctx, fib->ifindex, &dev_mtu, 0, 0) == 0 || dev_mtu)
		*mtu = dev_mtu > 0xffff ? 0xffff : dev_mtu;
	__builtin_memcpy(nh->dmac, fib->dmac, ETH_ALEN);
	__builtin_memcpy(nh->smac, fib->smac, ETH_ALEN);
	nh->ifindex = fib->ifindex;
	nh->until = ttl_ns ? now + ttl_ns : 0;
	return FWD_REDIRECT;
}

/* forward finds the next hop for the (rewritten) packet. A still-valid
 * cached answer (nh->until > now) is used as is; otherwise it asks
 * bpf_fib_lookup and, on success, refreshes the cache with until = now +
 * ttl_ns and the egress device's MTU in *mtu. On success it fills the
 * Ethernet header, decrements the TTL and returns the egress ifindex in
 * *ifindex. On NO_NEIGH the packet goes to the kernel unchanged (it
 * resolves the neighbour and decrements the TTL). A packet larger than the
 * next hop's MTU is never redirected (the device would drop it without a
 * word): FWD_TOO_BIG, with the MTU in *mtu. */
static __always_inline int forward(struct xdp_md *ctx, struct packet *p, void *data_end,
				   struct nexthop *nh, __u16 *mtu, __u64 now, __u64 ttl_ns, __u32 *ifindex)
{
	struct iphdr *ip = p->ip;
	struct ethhdr *eth = p->eth;
	if ((void *)(ip + 1) > data_end || (void *)(eth + 1) > data_end)
		return FWD_FAILED;
	if (ip->ttl <= 1)
		return FWD_FAILED; /* the kernel sends the ICMP time exceeded */

	if (__builtin_expect(nh->until > now, 1)) {
		if (__builtin_expect(*mtu && p->tot_len > *mtu, 0))
			return FWD_TOO_BIG;
		apply_nexthop(eth, ip, nh);
		*ifindex = nh->ifindex;
		return FWD_REDIRECT;
	}

	struct bpf_fib_lookup fib = {};
	fib.family = 2; /* AF_INET */
	fib.tos = ip->tos;
	fib.l4_protocol = ip->protocol;
	fib.sport = p->sport;
	fib.dport = p->dport;
	fib.tot_len = bpf_ntohs(ip->tot_len);
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = ctx->ingress_ifindex;

	long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	int r = fib_answer(ctx, rc, &fib, nh, mtu, now, ttl_ns);
	if (r != FWD_REDIRECT)
		return r;
	apply_nexthop(eth, ip, nh);
	*ifindex = fib.ifindex;
	return FWD_REDIRECT;
}
