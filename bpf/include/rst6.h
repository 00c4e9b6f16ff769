/* Turning an IPv6 TCP segment into the RST that answers it, sent back out
 * of the interface it came in on (XDP_TX): rst.h for IPv6. */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "csum.h"
#include "parse.h"
#include "parse6.h"
#include "rst.h"

#define RST6_LEN (sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + sizeof(struct tcphdr))

/* pseudo6_sum is the one's complement sum (unfolded) of the IPv6
 * pseudo-header (RFC 8200 8.1): source, destination, upper-layer length
 * and next header, each as 16-bit words. */
static __always_inline __u32 pseudo6_sum(const __be32 *s, const __be32 *d, __u32 len, __u8 nexthdr)
{
	__u32 sum = 0;
	const __u16 *sw = (const __u16 *)s, *dw = (const __u16 *)d;
#pragma unroll
	for (int i = 0; i < 8; i++)
		sum += (__u32)sw[i] + dw[i];
	sum += bpf_htons(len >> 16) + bpf_htons(len & 0xffff);
	sum += bpf_htons(nexthdr);
	return sum;
}

/* answer6_header writes the fixed part of the IPv6 header of a message
 * sluice answers with (an RST, a Packet Too Big): version 6, traffic
 * class and flow label 0, payload length plen, next header nh, hop limit
 * hop. The addresses are the caller's. */
static __always_inline void answer6_header(struct ipv6hdr *ip6, __u16 plen, __u8 nh, __u8 hop)
{
	*(__be32 *)ip6 = bpf_htonl(0x60000000);
	ip6->payload_len = bpf_htons(plen);
	ip6->nexthdr = nh;
	ip6->hop_limit = hop;
}

/* make_rst6 rewrites the segment in place into the RST that answers it and
 * returns 0, or -1 when it cannot (extension headers: the caller drops the
 * segment; the client retransmits). The headers are rewritten where they
 * are (addresses, ports and MACs swapped in place) and the tail cut last:
 * nothing is copied to the stack. A subprogram of its own. */
static __attribute__((noinline)) int make_rst6(struct xdp_md *ctx, __u32 l4_off)
{
	if (l4_off != sizeof(struct ipv6hdr))
		return -1;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	struct tcphdr *tcp = (void *)(ip6 + 1);
	if ((void *)(tcp + 1) > data_end)
		return -1;
	__u32 tot = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	__u32 doff = (__u32)tcp->doff * 4;
	if (doff < sizeof(struct tcphdr) || tot < sizeof(*ip6) + doff)
		return -1;
	__u32 payload = tot - sizeof(*ip6) - doff;
	__u8 flags = ((__u8 *)tcp)[13];
	if (flags & TCPF_RST)
		return -1; /* never answer an RST */
	int excess = (int)((long)data_end - (long)data) - (int)RST6_LEN;
	if (excess < 0)
		return -1;

	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	__be32 *s = (__be32 *)&ip6->saddr, *d = (__be32 *)&ip6->daddr;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__be32 t = s[i];
		s[i] = d[i];
		d[i] = t;
	}
	answer6_header(ip6, sizeof(struct tcphdr), IPPROTO_TCP, 64);

	__u32 seq = bpf_ntohl(tcp->seq);
	__be16 port = tcp->source;
	tcp->source = tcp->dest;
	tcp->dest = port;
	rst_tcp_header(tcp, flags, seq, tcp->ack_seq, payload);
	__u16 *tw = (__u16 *)tcp;
	__u32 sum = pseudo6_sum(s, d, sizeof(struct tcphdr), IPPROTO_TCP);
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += tw[i];
	tcp->check = csum_fold32(sum);

	/* Cut everything after the TCP header (options and payload). */
	if (excess > 0 && bpf_xdp_adjust_tail(ctx, -excess))
		return -1;
	return 0;
}
