/* The IPv6 data path's maps (see structs6.h for why they are separate from
 * the IPv4 ones). Pinned ones sit next to the IPv4 maps under the agent's
 * pin path and carry BTF. Service ids and backend slots index the shared
 * maglev_tables, service_stats and backend_stats (maps.h). */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include <linux/in6.h>
#include "structs6.h"

/* VIP:port/proto -> service id and mode, for IPv6 VIPs. Written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct svc6_key);
	__type(value, struct svc6_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} services6 SEC(".maps");

/* Backend slots holding IPv6 backends: address, state, generation.
 * Written by the agent (datapath.Real keeps a slot free in the map of the
 * other family). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend6);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backends6 SEC(".maps");

/* Confirmed IPv6 flows: one forward entry per nat flow, forward and
 * reverse entries per snat flow. LRU; max_entries set from Go (the size
 * of conntrack). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct6_key);
	__type(value, struct ct6_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack6 SEC(".maps");

/* IPv6 flows the backend has not confirmed yet (as halfopen). LRU;
 * max_entries set from Go. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ct6_key);
	__type(value, struct ct6_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} halfopen6 SEC(".maps");

/* Every IPv6 VIP and backend address -> what it is, for fragments and for
 * telling replies from other traffic. Kept by datapath.Real like addrs. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES + MAX_BACKENDS);
	__type(key, struct in6_addr);
	__type(value, struct addr_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} addrs6 SEC(".maps");

/* Every IPv6 backend's address and service port -> slots holding it. Kept
 * by datapath.Real like backend_ports. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, struct endpoint6);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backend_ports6 SEC(".maps");

/* Backend endpoint and protocol -> the nat VIP its flows come through
 * (struct nat_hint6_value). Written by the program when it pins a new nat flow
 * (and when a reply found its flow by trying every service); an endpoint
 * leaving every slot is removed by datapath.Real. Pinned: the hint (and
 * its shared bit) must outlive a restart, or a reply of an older flow
 * would be tried against the wrong VIP alone. Only backends that Maglev
 * picked get an entry, so it is bounded by the slots; a full map means
 * "no hint": every service is tried. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * MAX_BACKENDS);
	__type(key, struct endpoint6);
	__type(value, struct nat_hint6_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_hint6 SEC(".maps");

/* Backend slot -> the next hop towards its IPv6 address, per CPU. Not pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend_hop6);
} backend_hops6 SEC(".maps");

/* The next hop of replies towards IPv6 clients, per CPU, direct-mapped by a
 * hash of the client's address. Not pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REPLY_HOPS);
	__type(key, __u32);
	__type(value, struct backend_hop6);
} reply_hops6 SEC(".maps");

/* SYNs IPv6 clients sent to a backend's service port directly, keyed as
 * their SYN-ACK comes back (see direct_syns). Not pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct ct6_key);
	__type(value, __u8);
} direct_syns6 SEC(".maps");

/* Per-CPU scratch space of the IPv6 path for what does not fit on the
 * stack (512 bytes for a whole call chain): the FIB lookup's arguments, a
 * blank next hop, the MTU of a Packet Too Big, the keys and entry of a
 * packet to a VIP. XDP runs one packet at a
 * time per CPU, so one entry is enough. Not pinned. */
struct scratch6 {
	/* a struct bpf_fib_lookup (as words: bpf2go cannot render its unions) */
	__u64 fib[(sizeof(struct bpf_fib_lookup) + 7) / 8];
	struct backend_hop6 blank;
	struct svc6_key sk;   /* handle_ipv6: the service looked up */
	struct ct6_key k;     /* handle_ipv6: the packet's tuple as it arrived */
	struct ct6_value fv;  /* new_flow6: the new forward entry */
	__u16 mtu;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch6);
} scratch6 SEC(".maps");
