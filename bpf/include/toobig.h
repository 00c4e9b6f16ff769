/* Answering a packet too big for the next hop: ICMP "fragmentation needed"
 * (RFC 792 type 3 code 4, with the next-hop MTU of RFC 1191), built in
 * place and sent back out of the interface it came in on (XDP_TX). An XDP
 * redirect of a frame larger than the egress device's MTU is dropped
 * without a word; this tells the sender instead, quoting the packet as the
 * sender sent it, so its path MTU discovery works through sluice. */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "csum.h"
#include "icmp.h"
#include "parse.h"
#include "structs.h"

#define TOOBIG_QUOTE_L4 8 /* bytes of the L4 header quoted (RFC 792) */
#define TOOBIG_LEN (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct icmp_hdr) + \
		    sizeof(struct iphdr) + TOOBIG_QUOTE_L4)

/* make_frag_needed turns the (possibly already rewritten) packet into the
 * ICMP error and returns 0, or -1 when it cannot (IP options: the caller
 * drops the packet). orig is the packet's tuple as it arrived: the quote
 * carries it, whatever the rewrite did. The error comes from the address
 * the packet was sent to (the VIP for a client, the client for a backend),
 * as from a router at the destination. */
static __always_inline int make_frag_needed(struct xdp_md *ctx, const struct ct_key *orig, __u16 mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl != 5)
		return -1;
	__u8 *l4 = (void *)(ip + 1);
	if ((void *)(l4 + TOOBIG_QUOTE_L4) > data_end)
		return -1;

	/* Save what the error is made of before overwriting the frame. */
	__u8 smac[ETH_ALEN], dmac[ETH_ALEN];
	__builtin_memcpy(smac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(dmac, eth->h_dest, ETH_ALEN);
	struct iphdr q;
	__builtin_memcpy(&q, ip, sizeof(q));
	__u8 q4[TOOBIG_QUOTE_L4];
	__builtin_memcpy(q4, l4, TOOBIG_QUOTE_L4);
	/* The quote is the packet as sent: original addresses and ports, the
	 * TTL it arrived with, its header checksum recomputed. */
	q.saddr = orig->saddr;
	q.daddr = orig->daddr;
	__builtin_memcpy(&q4[0], &orig->sport, 2);
	__builtin_memcpy(&q4[2], &orig->dport, 2);
	q.check = 0;
	__u16 *w = (__u16 *)&q;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	q.check = csum_fold32(sum);

	int excess = (int)((long)data_end - (long)data) - (int)TOOBIG_LEN;
	if (excess < 0)
		return -1; /* a too-big packet is never this short */
	if (excess > 0 && bpf_xdp_adjust_tail(ctx, -excess))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	struct icmp_hdr *icmp = (void *)(ip + 1);
	struct iphdr *qip = (void *)(icmp + 1);
	__u8 *ql4 = (void *)(qip + 1);
	if ((void *)(ql4 + TOOBIG_QUOTE_L4) > data_end)
		return -1;

	__builtin_memcpy(eth->h_source, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, smac, ETH_ALEN);
	__builtin_memcpy(qip, &q, sizeof(q));
	__builtin_memcpy(ql4, q4, TOOBIG_QUOTE_L4);

	icmp->type = ICMP_DEST_UNREACH;
	icmp->code = 4; /* fragmentation needed and DF set */
	icmp->checksum = 0;
	icmp->rest = bpf_htonl((__u32)mtu); /* unused (16 bits), next-hop MTU (16 bits) */
	sum = 0;
	__u16 *iw = (__u16 *)icmp;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(struct icmp_hdr) + sizeof(struct iphdr) + TOOBIG_QUOTE_L4) / 2; i++)
		sum += iw[i];
	icmp->checksum = csum_fold32(sum);

	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0xc0; /* internetwork control, as routers send errors */
	ip->tot_len = bpf_htons(TOOBIG_LEN - sizeof(struct ethhdr));
	ip->id = 0;
	ip->frag_off = 0;
	ip->ttl = 64;
	ip->protocol = IPPROTO_ICMP;
	ip->saddr = orig->daddr;
	ip->daddr = orig->saddr;
	ip->check = 0;
	sum = 0;
	__u16 *ow = (__u16 *)ip;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += ow[i];
	ip->check = csum_fold32(sum);
	return 0;
}
