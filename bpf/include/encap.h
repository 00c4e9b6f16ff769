/* IPIP encapsulation for direct server return (mode dsr): the client's
 * packet, untouched, inside an outer IPv4 header from the node to the
 * backend (RFC 2003). The backend strips the outer header (bpf/decap.c,
 * attached by `sluice decap`) and answers the client directly. */
#pragma once
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "consts.h"
#include "csum.h"
#include "parse.h"

#define ENCAP_OVERHEAD ((__u32)sizeof(struct iphdr)) /* 20 bytes: the outer header, no options */
#define ENCAP_TTL 64

/* encap_fits: whether p, once encapsulated, fits an MTU (0: unknown, fits). */
static __always_inline int encap_fits(const struct packet *p, __u16 mtu)
{
	return !mtu || p->tot_len + ENCAP_OVERHEAD <= mtu;
}

/* ipv4_header_csum is the checksum of a 20-byte IPv4 header. */
static __always_inline __u16 ipv4_header_csum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	return csum_fold32(sum);
}

/* encap_ipip puts an outer IPv4 header (saddr -> daddr, protocol IPIP)
 * between the Ethernet header and the client's IPv4 header, and points
 * p->eth and p->ip at the new headers (p->tot_len becomes the outer
 * length; p->l4, the ports and flags stay the inner packet's, for the FIB
 * lookup's hash). The outer header copies the inner TOS and DF bit; its
 * ID is the inner one (an atomic datagram's ID means nothing, RFC 6864).
 * Returns 0, or -1 when the frame cannot grow (the caller drops it). */
static __always_inline int encap_ipip(struct xdp_md *ctx, struct packet *p, __be32 saddr, __be32 daddr)
{
	struct iphdr inner = {};
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return -1;
	__builtin_memcpy(&inner, ip, sizeof(inner));
	__u32 inner_len = p->tot_len;

	if (bpf_xdp_adjust_head(ctx, -(int)ENCAP_OVERHEAD))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct ethhdr *neth = data;
	struct iphdr *outer = (void *)(neth + 1);
	if ((void *)(outer + 1) + sizeof(struct iphdr) > data_end)
		return -1;
	/* The Ethernet header moves to the new front (forward() rewrites its
	 * addresses); the outer header takes its old place. */
	__builtin_memmove(neth, (void *)neth + ENCAP_OVERHEAD, sizeof(*neth));
	neth->h_proto = ETH_P_IP_BE;

	outer->version = 4;
	outer->ihl = 5;
	outer->tos = inner.tos;
	outer->tot_len = bpf_htons(inner_len + ENCAP_OVERHEAD);
	outer->id = inner.id;
	outer->frag_off = inner.frag_off & bpf_htons(IP_DF);
	outer->ttl = ENCAP_TTL;
	outer->protocol = IPPROTO_IPIP;
	outer->saddr = saddr;
	outer->daddr = daddr;
	outer->check = 0;
	outer->check = ipv4_header_csum(outer);

	p->eth = neth;
	p->ip = outer;
	p->tot_len = inner_len + ENCAP_OVERHEAD;
	p->l4 = (void *)(outer + 1) + p->ihl_bytes;
	return 0;
}

/* encap_undo removes the outer header encap_ipip added (the packet could
 * not be sent) and points p back at the client's packet. Returns 0 or -1. */
static __always_inline int encap_undo(struct xdp_md *ctx, struct packet *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr e;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(&e, eth, sizeof(e));
	if (bpf_xdp_adjust_head(ctx, (int)ENCAP_OVERHEAD))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return -1;
	__builtin_memcpy(eth, &e, sizeof(e));
	p->eth = eth;
	p->ip = ip;
	p->tot_len -= ENCAP_OVERHEAD;
	return 0;
}
