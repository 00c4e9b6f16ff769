/* IPv6 packet parsing. As parse.h for IPv4: every access is bounds-checked
 * against data_end, every length is checked against the others before it is
 * used, and whatever cannot be parsed safely is reported so the caller
 * passes it to the kernel untouched. Extension headers are walked with a
 * bounded loop. */
#pragma once
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "consts.h"
#include "parse.h"

#define ETH_P_IPV6_BE 0xdd86 /* htons(ETH_P_IPV6) on little-endian hosts */

/* Next-header values (RFC 8200, IANA "Assigned Internet Protocol Numbers"). */
#define NEXTHDR_HOP 0       /* hop-by-hop options: only right after the IPv6 header */
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_ICMPV6 58
#define NEXTHDR_DEST 60     /* destination options */

/* At most this many extension headers are walked; a packet with more is
 * passed to the kernel untouched (counted as malformed): no real client
 * sends more than a hop-by-hop, a destination options, a routing and a
 * fragment header. */
#define IPV6_MAX_EXT 6
/* ...and they may not reach past this offset from the IPv6 header: every
 * option header is at most 2048 bytes, but the verifier wants a bound and
 * the packets sluice serves carry a few bytes of options at most. */
#define IPV6_MAX_EXT_OFF 512

/* struct packet6 is struct packet for IPv6. */
struct packet6 {
	struct ethhdr *eth;
	struct ipv6hdr *ip6;
	void *l4;          /* struct tcphdr, struct udphdr or the ICMPv6 header */
	__u32 l4_off;      /* offset of l4 from the IPv6 header (40 without extension headers) */
	__u32 tot_len;     /* 40 + payload length (host order), checked against the frame */
	__u8 proto;        /* the upper-layer protocol after the extension headers */
	__be16 sport;
	__be16 dport;
	__u8 tcp_flags;
};

/* The 8 bytes of a fragment header (RFC 8200 4.5). */
struct frag6_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset (13 bits, in 8-byte units), 2 reserved bits, M flag */
	__be32 id;
};

#define IP6_OFFMASK 0xfff8 /* of frag_off, host order */
#define IP6_MF 0x0001

/* The routing header's first 4 bytes (RFC 8200 4.4). */
struct rt6_hdr {
	__u8 nexthdr;
	__u8 hdrlen;       /* in 8-byte units, not counting the first 8 */
	__u8 type;
	__u8 segments_left;
};

static __always_inline int addr6_is_zero(const __be32 *a)
{
	return (a[0] | a[1] | a[2] | a[3]) == 0;
}

static __always_inline int addr6_eq(const __be32 *a, const __be32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline void addr6_copy(__be32 *dst, const __be32 *src)
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

#define SADDR6(p) ((__be32 *)&(p)->ip6->saddr)
#define DADDR6(p) ((__be32 *)&(p)->ip6->daddr)

/* parse_packet6 reads an Ethernet frame holding IPv6 TCP/UDP. Returns
 * PARSE_NOT_IPV4 (here: not IPv6) for other EtherTypes; PARSE_NOT_L4 for
 * another upper-layer protocol (p->proto says which: ICMPv6 errors are
 * handled by the caller), an unknown extension header (AH, ESP, mobility,
 * ...: not ours to rewrite) and a routing header with segments left (the
 * destination is not the final one, and the L4 checksum covers the final
 * one); PARSE_FRAGMENT for a fragment other than an atomic one (offset 0,
 * no more fragments: RFC 6946, parsed through); PARSE_TRUNCATED and
 * PARSE_MALFORMED as for IPv4 (a payload length past the frame or 0 (a
 * jumbogram), a hop-by-hop header not first, too many extension headers,
 * a TCP data offset or UDP length that contradicts the payload length, a
 * UDP checksum of 0 (not allowed over IPv6, RFC 8200 8.1), source port 0,
 * the unspecified or a multicast source). Nothing past the payload length
 * is ever read or rewritten. */
static __always_inline int parse_packet6(void *data, void *data_end, struct packet6 *p)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return PARSE_NOT_IPV4;
	if (eth->h_proto != bpf_htons(ETH_P_IPV6))
		return PARSE_NOT_IPV4;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > data_end)
		return PARSE_TRUNCATED;
	if (ip6->version != 6)
		return PARSE_MALFORMED;
	__u32 plen = bpf_ntohs(ip6->payload_len);
	__u32 tot = sizeof(*ip6) + plen;
	__u32 avail = (__u32)((long)data_end - (long)ip6);
	if (tot > avail)
		return PARSE_TRUNCATED;
	if (plen == 0)
		return PARSE_MALFORMED; /* a jumbogram, or nothing: never ours */
	p->eth = eth;
	p->ip6 = ip6;
	p->tot_len = tot;

	__u8 nh = ip6->nexthdr;
	__u32 off = sizeof(*ip6);
	int frag = 0;
#pragma unroll
	for (int i = 0; i < IPV6_MAX_EXT; i++) {
		if (nh != NEXTHDR_HOP && nh != NEXTHDR_ROUTING && nh != NEXTHDR_DEST && nh != NEXTHDR_FRAGMENT)
			break;
		if (nh == NEXTHDR_HOP && i != 0)
			return PARSE_MALFORMED;
		if (off > IPV6_MAX_EXT_OFF)
			return PARSE_MALFORMED;
		__u8 *h = (void *)ip6 + off;
		if ((void *)(h + 8) > data_end)
			return PARSE_TRUNCATED;
		__u32 len = 8;
		if (nh == NEXTHDR_FRAGMENT) {
			struct frag6_hdr *fh = (void *)h;
			__u16 fo = bpf_ntohs(fh->frag_off);
			if ((fo & IP6_OFFMASK) || (fo & IP6_MF))
				frag = 1;
		} else {
			len = ((__u32)h[1] + 1) * 8;
			if (nh == NEXTHDR_ROUTING && ((struct rt6_hdr *)h)->segments_left != 0) {
				p->proto = NEXTHDR_ROUTING;
				return PARSE_NOT_L4;
			}
		}
		nh = h[0];
		off += len;
		if (off > tot)
			return PARSE_MALFORMED;
		if (frag)
			break;
	}
	p->proto = nh;
	if (frag) {
		/* The upper-layer header (and its ports) is in the first
		 * fragment at most: the caller decides by address. */
		p->l4_off = off;
		return PARSE_FRAGMENT;
	}
	if (nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_DEST || nh == NEXTHDR_FRAGMENT)
		return PARSE_MALFORMED; /* more extension headers than we walk */
	if (off > IPV6_MAX_EXT_OFF + 2048)
		return PARSE_MALFORMED;
	p->l4_off = off;
	void *l4 = (void *)ip6 + off;
	p->l4 = l4;
	if (nh != IPPROTO_TCP && nh != IPPROTO_UDP)
		return PARSE_NOT_L4;

	int r = parse_ports(l4, tot - off, data_end, nh, 1, &p->sport, &p->dport, &p->tcp_flags);
	if (r != PARSE_OK)
		return r;
	__be32 *s = (__be32 *)&ip6->saddr;
	/* Port 0, the unspecified address and multicast (ff00::/8) are never
	 * a real peer's source. */
	if (p->sport == 0 || addr6_is_zero(s) || ((__u8 *)s)[0] == 0xff)
		return PARSE_MALFORMED;
	return PARSE_OK;
}
