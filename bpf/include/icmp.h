/* ICMP errors about our flows. A router between sluice and a client that
 * cannot forward a reply (fragmentation needed, TTL exceeded, unreachable)
 * answers its source, the VIP: without translation the error dies in the
 * lb's kernel and path MTU discovery of the backend never learns, so large
 * replies black-hole. Likewise an error a backend (or a router behind it)
 * sends about a client's packet names the backend, which the client's
 * socket, connected to the VIP, cannot match. Both are rewritten here to
 * what the other side expects: the quoted packet and the outer destination. */
#pragma once
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "csum.h"
#include "parse.h"

/* The ICMP header, defined here rather than taken from <linux/icmp.h>: that
 * uapi header includes <linux/if.h>, which includes glibc's <sys/socket.h>.
 * A BPF object has no libc, and glibc's headers compiled for the bpf target
 * (neither __x86_64__ nor __i386__ defined) ask for gnu/stubs-32.h, which
 * only a multilib machine has. The build takes nothing from glibc: see the
 * header guard in bpf/deps_test.go and "Building the BPF objects" in
 * docs/architecture.md. Layout: RFC 792, the 4 bytes every ICMP message
 * starts with, then 4 bytes whose meaning depends on the type. */
struct icmp_hdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest; /* unused / pointer / next-hop MTU, by type */
};

#define ICMP_DEST_UNREACH 3  /* RFC 792 destination unreachable */
#define ICMP_TIME_EXCEEDED 11 /* RFC 792 time exceeded */

/* struct icmp_quote locates an ICMP error and the packet it quotes. */
struct icmp_quote {
	struct icmp_hdr *icmp;
	struct iphdr *inner;  /* the quoted IPv4 header (no options) */
	struct ports *iports; /* its first 4 L4 bytes: source and dest port */
};

/* parse_icmp_error returns 0 when p is an ICMP destination-unreachable or
 * time-exceeded message quoting an option-less TCP/UDP header; anything
 * else (echo, redirects, quotes we cannot read) is left to the kernel. */
static __always_inline int parse_icmp_error(struct packet *p, void *data_end,
					    struct icmp_quote *q)
{
	if (p->proto != IPPROTO_ICMP)
		return -1;
	if (p->ip->frag_off & bpf_htons(IP_MF | IP_OFFMASK))
		return -1;
	struct icmp_hdr *icmp = (void *)p->ip + p->ihl_bytes;
	if ((void *)(icmp + 1) > data_end)
		return -1;
	if (icmp->type != ICMP_DEST_UNREACH && icmp->type != ICMP_TIME_EXCEEDED)
		return -1;
	struct iphdr *inner = (void *)(icmp + 1);
	if ((void *)(inner + 1) > data_end)
		return -1;
	if (inner->version != 4 || inner->ihl != 5)
		return -1;
	if (inner->protocol != IPPROTO_TCP && inner->protocol != IPPROTO_UDP)
		return -1;
	struct ports *iports = (void *)(inner + 1);
	if ((void *)(iports + 1) > data_end)
		return -1;
	/* The quote must lie inside the datagram, not only the frame: bytes
	 * past the outer total length (padding) are not covered by the ICMP
	 * checksum, and rewriting them would break it. */
	if (p->ihl_bytes + sizeof(*icmp) + sizeof(*inner) + sizeof(*iports) > p->tot_len)
		return -1;
	q->icmp = icmp;
	q->inner = inner;
	q->iports = iports;
	return 0;
}

/* Every 16-bit word changed inside an ICMP message changes the ICMP
 * checksum too: these helpers rewrite a quoted field and fix both the
 * quoted IP header's checksum (for addresses) and the ICMP checksum. */
static __always_inline void quote_set_addr(struct icmp_quote *q, __be32 *field, __be32 to)
{
	__be32 from = *field;
	if (from == to)
		return;
	__u16 old_ipsum = q->inner->check;
	csum_replace4((__u16 *)&q->inner->check, from, to);
	*field = to;
	csum_replace4((__u16 *)&q->icmp->checksum, from, to);
	csum_replace2((__u16 *)&q->icmp->checksum, old_ipsum, q->inner->check);
}

static __always_inline void quote_set_port(struct icmp_quote *q, __be16 *field, __be16 to)
{
	__be16 from = *field;
	if (from == to)
		return;
	/* The quoted L4 checksum is usually cut off (8 bytes are quoted) and
	 * receivers do not check it: only the ICMP checksum is kept right. */
	*field = to;
	csum_replace2((__u16 *)&q->icmp->checksum, from, to);
}

/* outer_set_daddr rewrites the outer destination (IP checksum only: ICMP
 * has no pseudo-header). */
static __always_inline void outer_set_daddr(struct iphdr *ip, __be32 to)
{
	if (ip->daddr == to)
		return;
	csum_replace4((__u16 *)&ip->check, ip->daddr, to);
	ip->daddr = to;
}
