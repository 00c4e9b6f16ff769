/* Turning a TCP segment into the RST that answers it, sent back out of the
 * interface it came in on (XDP_TX). Used when a service has no backend for a
 * new flow and when a flow's backend has been removed: the client learns at
 * once instead of retransmitting into a void until it times out. */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "csum.h"
#include "parse.h"

#define RST_LEN (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct tcphdr))

/* rst_tcp_header fills the TCP header of an RST answering a segment with
 * flags, sequence number seq (host order), ACK field ack_seq (as in the
 * packet) and payload bytes (RFC 9293 3.10.7.1: if the segment had ACK,
 * the RST takes its sequence number from the ACK field; otherwise seq 0 and
 * an ACK of everything the segment held). Ports and checksum are the
 * caller's; the checksum field is zeroed. Both families' RSTs use it. */
static __always_inline void rst_tcp_header(struct tcphdr *tcp, __u8 flags, __u32 seq, __be32 ack_seq, __u32 payload)
{
	__u16 *tw = (__u16 *)tcp;
	tw[6] = 0; /* doff/reserved/flags word */
	tcp->doff = 5;
	tcp->rst = 1;
	if (flags & TCPF_ACK) {
		tcp->seq = ack_seq;
		tcp->ack_seq = 0;
	} else {
		__u32 ack = seq + payload;
		if (flags & TCPF_SYN)
			ack++;
		if (flags & TCPF_FIN)
			ack++;
		tcp->seq = 0;
		tcp->ack_seq = bpf_htonl(ack);
		tcp->ack = 1;
	}
	tcp->window = 0;
	tcp->urg_ptr = 0;
	tcp->check = 0;
}

/* make_rst rewrites the packet in place into an RST and returns 0, or -1 if
 * the packet cannot be answered (then the caller drops it). Header fields of
 * the original are read before the tail is cut. */
static __always_inline int make_rst(struct xdp_md *ctx, struct packet *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return -1;
	/* RSTs are built only for option-less IPv4 headers; a segment with IP
	 * options is so rare that dropping it (the client retransmits and
	 * eventually times out) is acceptable. */
	if (ip->ihl != 5)
		return -1;
	struct tcphdr *tcp = (void *)(ip + 1);
	if ((void *)(tcp + 1) > data_end)
		return -1;

	__u32 tot_len = bpf_ntohs(ip->tot_len);
	__u32 doff = (__u32)tcp->doff * 4;
	if (tot_len < sizeof(struct iphdr) + doff || doff < sizeof(struct tcphdr))
		return -1;
	__u32 payload = tot_len - sizeof(struct iphdr) - doff;
	__u8 flags = ((__u8 *)tcp)[13];
	if (flags & TCPF_RST)
		return -1; /* never answer an RST */
	__u32 seq = bpf_ntohl(tcp->seq);
	__be32 ack_seq = tcp->ack_seq;
	__be32 saddr = ip->saddr, daddr = ip->daddr;
	__be16 sport = tcp->source, dport = tcp->dest;
	__u8 smac[ETH_ALEN], dmac[ETH_ALEN];
	__builtin_memcpy(smac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(dmac, eth->h_dest, ETH_ALEN);

	/* Cut everything after the TCP header (options and payload). */
	int excess = (int)((long)data_end - (long)data) - (int)RST_LEN;
	if (excess < 0)
		return -1;
	if (excess > 0 && bpf_xdp_adjust_tail(ctx, -excess))
		return -1;

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	tcp = (void *)(ip + 1);
	if ((void *)(tcp + 1) > data_end)
		return -1;

	__builtin_memcpy(eth->h_source, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, smac, ETH_ALEN);

	ip->tos = 0;
	ip->tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(struct tcphdr));
	ip->id = 0;
	ip->frag_off = bpf_htons(0x4000); /* DF */
	ip->ttl = 64;
	ip->saddr = daddr;
	ip->daddr = saddr;
	ip->check = 0;
	__u32 sum = 0;
	__u16 *w = (__u16 *)ip;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	ip->check = csum_fold32(sum);

	tcp->source = dport;
	tcp->dest = sport;
	rst_tcp_header(tcp, flags, seq, ack_seq, payload);

	/* Pseudo-header + 20 bytes of TCP header. */
	__u16 *tw = (__u16 *)tcp;
	sum = (daddr & 0xffff) + (daddr >> 16) + (saddr & 0xffff) + (saddr >> 16);
	sum += bpf_htons(IPPROTO_TCP) + bpf_htons(sizeof(struct tcphdr));
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += tw[i];
	tcp->check = csum_fold32(sum);
	return 0;
}
