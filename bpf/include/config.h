/* The program's run-time knobs and its global counters: what every path
 * (IPv4, IPv6, replies, ICMP) reads or counts. Included once, by sluice.c. */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "structs.h"
#include "maps.h"

/* Run-time knobs, set by the agent before load. Defaults keep the program
 * usable when loaded by hand (tests). */
volatile const struct sluice_config cfg = {
	.tcp_syn_timeout_ns = 60ULL * 1000000000ULL,
	.tcp_established_timeout_ns = 3600ULL * 1000000000ULL,
	.tcp_closing_timeout_ns = 10ULL * 1000000000ULL,
	.udp_timeout_ns = 60ULL * 1000000000ULL,
	.nexthop_cache_ns = 1000000000ULL,
	.snat_port_min = 20000,
	.snat_port_max = 32767,
	.maglev_size = 16381,
	.hash_seed = 0x5eed1ce,
	.rst_interval_ns = 1000000ULL, /* 1000 RSTs/s per CPU... */
	.rst_burst_ns = 1000000000ULL, /* ...in bursts of up to 1000 */
	.ho_mask = 131071, /* halfopen's max_entries - 1 */
};

static __always_inline struct global_counters *gstats(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&global_stats, &zero);
}

#define GCOUNT(field)                          \
	do {                                   \
		struct global_counters *__g = gstats(); \
		if (__g)                       \
			__g->field++;          \
	} while (0)
