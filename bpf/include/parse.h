/* Packet parsing. Every access is bounds-checked against data_end; anything
 * we cannot parse safely is reported so the caller passes it to the kernel
 * (not ours) or drops it (ours, but malformed). */
#pragma once
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "consts.h"

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IPV4,   /* not IPv4 (ARP, IPv6, VLAN-tagged, ...): not ours */
	PARSE_NOT_L4,     /* IPv4 but not TCP/UDP (ICMP, ...): not ours */
	PARSE_FRAGMENT,   /* an IPv4 fragment: ports unknown or absent */
	PARSE_TRUNCATED,  /* headers extend past the end of the packet */
	PARSE_MALFORMED,  /* lengths that contradict each other, a wrong IPv4
			   * header checksum, source address or port 0 */
};

struct packet {
	struct ethhdr *eth;
	struct iphdr *ip;
	void *l4;          /* struct tcphdr or struct udphdr */
	__u32 ihl_bytes;   /* IPv4 header length, options included */
	__u32 tot_len;     /* IPv4 total length (host order), checked against the frame */
	__u8 proto;
	__be16 sport;
	__be16 dport;
	__u8 tcp_flags;    /* byte 13 of the TCP header: CWR..FIN */
};

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

#define IPV4_MAX_HDR_WORDS 30 /* 60 bytes: IHL 15 */

/* ipv4_opts_sum is the sum of an IPv4 header's olen bytes of options
 * (1..40) at offset off of the frame, copied out (a variable-length walk
 * over packet memory is more than the verifier can follow); -1 when they
 * cannot be read. A call of its own: options are rare, and its copy and
 * 40-byte buffer stay out of the callers' code and stack frames. */
static __noinline long ipv4_opts_sum(struct xdp_md *ctx, __u64 off, __u64 olen)
{
	__u16 opt[(IPV4_MAX_HDR_WORDS - 10)] = {};
	/* 64-bit arguments: the length is checked in the register the helper
	 * gets (a 32-bit one is zero-extended again after the check, which
	 * the verifier cannot follow). */
	if (olen == 0 || olen > sizeof(opt))
		return -1;
	if (bpf_xdp_load_bytes(ctx, off, opt, olen))
		return -1;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < IPV4_MAX_HDR_WORDS - 10; i++)
		sum += opt[i];
	return sum;
}

/* ipv4_csum_ok verifies the IPv4 header checksum, options included: a
 * header the kernel would drop must not be rewritten (an incremental update
 * would carry the error along) or create state. */
static __always_inline int ipv4_csum_ok(struct xdp_md *ctx, struct iphdr *ip, __u32 ihl_bytes,
					void *data_end)
{
	__u32 *w = (__u32 *)ip;
	__u64 sum = 0;
	if ((void *)(ip + 1) > data_end)
		return 0;
	/* Bounds the verifier can see whatever the caller's path (ihl_bytes
	 * may come from memory, not a checked register). */
	if (ihl_bytes < sizeof(struct iphdr) || ihl_bytes > IPV4_MAX_HDR_WORDS * 2)
		return 0;
	/* The 20 fixed bytes... */
#pragma unroll
	for (int i = 0; i < 5; i++)
		sum += w[i];
	/* ...then the options, if any. */
	__u32 olen = (ihl_bytes - sizeof(struct iphdr)) & 0x3f; /* 0..40 after the check above */
	if (__builtin_expect(olen > 0, 0)) {
		long os = ipv4_opts_sum(ctx, (long)ip - (long)ctx->data + sizeof(struct iphdr), olen);
		if (os < 0)
			return 0;
		sum += os;
	}
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

/* header_ok: the IPv4 header checksum of a parsed packet is right. */
static __always_inline int header_ok(struct xdp_md *ctx, struct packet *p, void *data_end)
{
	return ipv4_csum_ok(ctx, p->ip, p->ihl_bytes, data_end);
}

/* parse_ports checks the TCP or UDP header at l4 (proto), l4len bytes of
 * datagram long, and reads its ports and TCP flags: data offset >= 5 and
 * header inside l4len (TCP), 8 <= length <= l4len (UDP; and a checksum,
 * when udp_csum_required: IPv6). Both families' parsers use it. */
static __always_inline int parse_ports(void *l4, __u32 l4len, void *data_end, __u8 proto, int udp_csum_required,
				       __be16 *sport, __be16 *dport, __u8 *tcp_flags)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > data_end)
			return PARSE_TRUNCATED;
		__u32 doff = (__u32)tcp->doff * 4;
		if (doff < sizeof(struct tcphdr) || doff > l4len)
			return PARSE_MALFORMED;
		*sport = tcp->source;
		*dport = tcp->dest;
		*tcp_flags = ((__u8 *)tcp)[13];
		return PARSE_OK;
	}
	struct udphdr *udp = l4;
	if ((void *)(udp + 1) > data_end)
		return PARSE_TRUNCATED;
	__u32 ulen = bpf_ntohs(udp->len);
	if (ulen < sizeof(struct udphdr) || ulen > l4len || (udp_csum_required && udp->check == 0))
		return PARSE_MALFORMED;
	*sport = udp->source;
	*dport = udp->dest;
	*tcp_flags = 0;
	return PARSE_OK;
}

/* parse_packet reads the headers of an IPv4 TCP/UDP packet. Every length
 * field is checked against the others and against the frame before any
 * field is used (fuzzing found a total length past the frame, a total
 * length too short to hold the L4 header, TCP data offset 0 and UDP lengths
 * under 8 or past the datagram, all taken at face value): IHL >= 5, IHL <=
 * total length <= frame, then data offset >= 5 and
 * IHL + data offset <= total length (TCP), 8 <= UDP length <= total length
 * - IHL (UDP). A frame may be longer than the total length (Ethernet
 * padding); nothing past the total length is ever read or rewritten. */
static __always_inline int parse_packet(struct xdp_md *ctx, void *data, void *data_end,
					struct packet *p)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return PARSE_NOT_IPV4; /* too short to be anything we serve */
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;

	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return PARSE_TRUNCATED;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_MALFORMED;
	__u32 ihl = (__u32)(ip->ihl & 0xf) * 4;
	__u32 tot = bpf_ntohs(ip->tot_len);
	__u32 avail = (__u32)((long)data_end - (long)ip);
	if (tot > avail)
		return PARSE_TRUNCATED;
	if (tot < ihl)
		return PARSE_MALFORMED;
	/* The header checksum is verified by the caller, and only for packets
	 * it is about to rewrite or track (header_ok): traffic that is not
	 * ours is passed untouched and need not pay for it. */

	p->eth = eth;
	p->ip = ip;
	p->ihl_bytes = ihl;
	p->tot_len = tot;
	p->proto = ip->protocol;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return PARSE_NOT_L4;
	/* Only the first fragment has ports, and even it cannot be NATed
	 * without the rest: the caller decides (see handle_fragment). */
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFMASK))
		return PARSE_FRAGMENT;

	void *l4 = (void *)ip + ihl;
	p->l4 = l4;
	int r = parse_ports(l4, tot - ihl, data_end, ip->protocol, 0, &p->sport, &p->dport, &p->tcp_flags);
	if (r != PARSE_OK)
		return r;
	/* Port 0 and address 0.0.0.0 are never a real peer's, and 0 means
	 * "keep" in a conntrack entry's rewrite (nat.h): a reply could not
	 * restore them. */
	if (p->sport == 0 || ip->saddr == 0)
		return PARSE_MALFORMED;
	return PARSE_OK;
}
