/* Packet parsing. Every access is bounds-checked against data_end; anything
 * we cannot parse safely is reported so the caller passes it to the kernel
 * (not ours) or drops it (ours, but malformed). */
#pragma once
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include "consts.h"

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IPV4,   /* not IPv4 (ARP, IPv6, VLAN-tagged, ...): not ours */
	PARSE_NOT_L4,     /* IPv4 but not TCP/UDP (ICMP, ...): not ours */
	PARSE_FRAGMENT,   /* an IPv4 fragment: ports unknown or absent */
	PARSE_TRUNCATED,  /* headers extend past the end of the packet */
};

struct packet {
	struct ethhdr *eth;
	struct iphdr *ip;
	void *l4;          /* struct tcphdr or struct udphdr */
	__u32 ihl_bytes;   /* IPv4 header length, options included */
	__u8 proto;
	__be16 sport;
	__be16 dport;
	__u8 tcp_flags;    /* byte 13 of the TCP header: CWR..FIN */
};

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

static __always_inline int parse_packet(void *data, void *data_end, struct packet *p)
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
		return PARSE_TRUNCATED;
	__u32 ihl = (__u32)(ip->ihl & 0xf) * 4;

	p->eth = eth;
	p->ip = ip;
	p->ihl_bytes = ihl;
	p->proto = ip->protocol;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return PARSE_NOT_L4;
	/* Only the first fragment has ports, and even it cannot be NATed
	 * without the rest: fragments go to the kernel. */
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFMASK))
		return PARSE_FRAGMENT;

	void *l4 = (void *)ip + ihl;
	p->l4 = l4;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > data_end)
			return PARSE_TRUNCATED;
		p->sport = tcp->source;
		p->dport = tcp->dest;
		p->tcp_flags = ((__u8 *)tcp)[13];
	} else {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > data_end)
			return PARSE_TRUNCATED;
		p->sport = udp->source;
		p->dport = udp->dest;
		p->tcp_flags = 0;
	}
	return PARSE_OK;
}
