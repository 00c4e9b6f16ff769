/* ICMPv6 errors: translating the ones about our flows (icmp.h for IPv6),
 * and answering a packet too big for the next hop with a Packet Too Big
 * (toobig.h for IPv6). IPv6 routers never fragment: a Packet Too Big that
 * does not reach the host that sent the packet breaks path MTU discovery
 * and black-holes every large packet of the flow. */
#pragma once
#include <linux/bpf.h>
#include <linux/types.h>
#include <linux/icmpv6.h>
#include <bpf/bpf_helpers.h>
#include "csum.h"
#include "nat.h"
#include "nat6.h"
#include "parse6.h"
#include "rst6.h"
#include "structs6.h"

/* ICMPv6 error types (RFC 4443). */
#define ICMP6_DEST_UNREACH 1
#define ICMP6_PACKET_TOO_BIG 2
#define ICMP6_TIME_EXCEEDED 3
#define ICMP6_PARAM_PROB 4

/* struct icmp6_quote locates an ICMPv6 error and the packet it quotes. */
struct icmp6_quote {
	struct icmp6hdr *icmp;
	struct ipv6hdr *inner; /* the quoted IPv6 header (no extension headers) */
	struct ports *iports;  /* its first 4 L4 bytes */
};

/* parse_icmp6_error returns 0 when p (parsed: PARSE_NOT_L4, proto ICMPv6)
 * is an ICMPv6 error quoting a TCP/UDP packet without extension headers,
 * the quote inside the payload length (bytes past it are not covered by
 * the checksum). Anything else is left to the kernel. */
static __always_inline int parse_icmp6_error(struct packet6 *p, void *data_end, struct icmp6_quote *q)
{
	if (p->proto != NEXTHDR_ICMPV6)
		return -1;
	struct icmp6hdr *icmp = p->l4;
	if ((void *)(icmp + 1) > data_end)
		return -1;
	if (icmp->icmp6_type < ICMP6_DEST_UNREACH || icmp->icmp6_type > ICMP6_PARAM_PROB)
		return -1;
	struct ipv6hdr *inner = (void *)(icmp + 1);
	if ((void *)(inner + 1) > data_end)
		return -1;
	if (inner->version != 6)
		return -1;
	if (inner->nexthdr != IPPROTO_TCP && inner->nexthdr != IPPROTO_UDP)
		return -1;
	struct ports *iports = (void *)(inner + 1);
	if ((void *)(iports + 1) > data_end)
		return -1;
	if (p->l4_off + sizeof(*icmp) + sizeof(*inner) + sizeof(*iports) > p->tot_len)
		return -1;
	q->icmp = icmp;
	q->inner = inner;
	q->iports = iports;
	return 0;
}

/* quote6_set_addr and quote6_set_port rewrite a quoted field and keep the
 * ICMPv6 checksum right (the quoted IPv6 header has no checksum of its
 * own; the quoted L4 checksum is left alone, as in icmp.h). */
static __always_inline void quote6_set_addr(struct icmp6_quote *q, __be32 *field, const __be32 *to)
{
	if (addr6_eq(field, to))
		return;
	csum_replace16((__u16 *)&q->icmp->icmp6_cksum, field, to);
	addr6_copy(field, to);
}

static __always_inline void quote6_set_port(struct icmp6_quote *q, __be16 *field, __be16 to)
{
	if (*field == to)
		return;
	csum_replace2((__u16 *)&q->icmp->icmp6_cksum, *field, to);
	*field = to;
}

/* outer6_set_daddr rewrites the outer destination: the ICMPv6 checksum
 * covers it through the pseudo-header. */
static __always_inline void outer6_set_daddr(struct icmp6_quote *q, struct ipv6hdr *ip6, const __be32 *to)
{
	__be32 *d = (__be32 *)&ip6->daddr;
	if (addr6_eq(d, to))
		return;
	csum_replace16((__u16 *)&q->icmp->icmp6_cksum, d, to);
	addr6_copy(d, to);
}

#define PTB6_QUOTE_L4 8 /* bytes of the L4 header quoted */
#define PTB6_LEN (sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + sizeof(struct icmp6hdr) + \
		  sizeof(struct ipv6hdr) + PTB6_QUOTE_L4)

/* make_ptb6 turns the (possibly already rewritten) packet into an ICMPv6
 * Packet Too Big (RFC 4443 3.2) carrying mtu, quoting the packet's IPv6
 * header and first 8 L4 bytes as the sender sent them (orig: its tuple as
 * it arrived), from the address the packet was sent to, and returns 0; -1
 * when it cannot (extension headers, l4_off past the IPv6 header: the
 * caller drops the packet). A subprogram: its copies stay off the
 * forwarding path's stack. */
static __attribute__((noinline)) int make_ptb6(struct xdp_md *ctx, __u32 l4_off, const struct ct6_key *orig,
					       __u16 mtu)
{
	if (l4_off != sizeof(struct ipv6hdr))
		return -1;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	__u8 *l4 = (void *)(ip6 + 1);
	if ((void *)(l4 + PTB6_QUOTE_L4) > data_end)
		return -1;

	__u8 smac[ETH_ALEN], dmac[ETH_ALEN];
	__builtin_memcpy(smac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(dmac, eth->h_dest, ETH_ALEN);
	struct ipv6hdr q;
	__builtin_memcpy(&q, ip6, sizeof(q));
	__u8 q4[PTB6_QUOTE_L4];
	__builtin_memcpy(q4, l4, PTB6_QUOTE_L4);
	/* The quote is the packet as sent: original addresses, ports and
	 * hop limit (the rewrite changed the first two, forward6 only
	 * decrements on success). */
	addr6_copy((__be32 *)&q.saddr, orig->saddr);
	addr6_copy((__be32 *)&q.daddr, orig->daddr);
	__builtin_memcpy(&q4[0], &orig->sport, 2);
	__builtin_memcpy(&q4[2], &orig->dport, 2);

	int excess = (int)((long)data_end - (long)data) - (int)PTB6_LEN;
	if (excess < 0)
		return -1;
	if (excess > 0 && bpf_xdp_adjust_tail(ctx, -excess))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip6 = (void *)(eth + 1);
	struct icmp6hdr *icmp = (void *)(ip6 + 1);
	struct ipv6hdr *qip = (void *)(icmp + 1);
	__u8 *ql4 = (void *)(qip + 1);
	if ((void *)(ql4 + PTB6_QUOTE_L4) > data_end)
		return -1;

	__builtin_memcpy(eth->h_source, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, smac, ETH_ALEN);
	__builtin_memcpy(qip, &q, sizeof(q));
	__builtin_memcpy(ql4, q4, PTB6_QUOTE_L4);

	__u32 len = PTB6_LEN - sizeof(struct ethhdr) - sizeof(struct ipv6hdr);
	answer6_header(ip6, len, NEXTHDR_ICMPV6, 255);
	addr6_copy((__be32 *)&ip6->saddr, orig->daddr);
	addr6_copy((__be32 *)&ip6->daddr, orig->saddr);

	icmp->icmp6_type = ICMP6_PACKET_TOO_BIG;
	icmp->icmp6_code = 0;
	icmp->icmp6_cksum = 0;
	icmp->icmp6_dataun.un_data32[0] = bpf_htonl((__u32)mtu);
	__u32 sum = pseudo6_sum(orig->daddr, orig->saddr, len, NEXTHDR_ICMPV6);
	__u16 *w = (__u16 *)icmp;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(struct icmp6hdr) + sizeof(struct ipv6hdr) + PTB6_QUOTE_L4) / 2; i++)
		sum += w[i];
	icmp->icmp6_cksum = csum_fold32(sum);
	return 0;
}
