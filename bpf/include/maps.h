/* The data path's maps. Every map is pinned by name under the agent's pin
 * path (default /sys/fs/bpf/sluice) and carries BTF, so
 * `bpftool map dump pinned /sys/fs/bpf/sluice/<name>` is readable. */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "structs.h"

/* VIP:port/proto -> service id and mode. Written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} services SEC(".maps");

/* Backend slots: address, state and generation. Written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backends SEC(".maps");

/* Every service's Maglev table, flat: service id s owns the row of
 * maglev_lines(maglev_size) elements from s * maglev_lines(maglev_size)
 * on, whose entries 0 .. maglev_size - 1 are the table's backend slots (0:
 * no table). One array, so a new flow's pick is an array read the verifier
 * inlines (a map-in-map's inner lookup is a helper call). Elements are
 * lines of 16 entries (struct maglev_line): an array map stores each
 * element in a multiple of 8 bytes, so one __u32 an element would take 8.
 * The agent writes a table in place through the map's memory mapping
 * (BPF_F_MMAPABLE), one aligned 4-byte store per entry, so a packet reads
 * every entry whole: the old table's value or the new one's, both active
 * backends of the service while the write lasts (the reconciler's order,
 * docs/architecture.md "Maglev tables: one flat array"). max_entries is
 * MAX_SERVICES * maglev_lines(maglev_size), set from Go; 4 B a table
 * entry, allocated at load (64 MiB at the default 16381). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, MAX_SERVICES * ((16381 + MAGLEV_LINE - 1) / MAGLEV_LINE));
	__type(key, __u32);
	__type(value, struct maglev_line);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} maglev_tables SEC(".maps");

/* Connection tracking of confirmed flows: one entry per flow, keyed by
 * its tuple as the client sends it (client -> VIP); replies find it by
 * rebuilding that key (flow.h). A flow gets here only once the backend
 * confirmed it (see halfopen). LRU; the agent also removes entries idle
 * past their state's timeout. max_entries set from Go. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

/* Every VIP and backend address -> what it is (struct addr_info), for the
 * packets that carry no ports: fragments. Written by the agent
 * (datapath.Real keeps it in step with services and backends). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES + MAX_BACKENDS);
	__type(key, __be32);
	__type(value, struct addr_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} addrs SEC(".maps");

/* The RST rate limit's state, per CPU (no atomics; the limit is per CPU).
 * Not pinned: a new program starts with a full budget. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rst_limit);
} rst_limit SEC(".maps");

/* Half-open flows: the flows the backend has not confirmed yet (a SYN, a
 * mid-stream packet of an unknown flow, a UDP datagram without an answer
 * yet), direct-mapped: a flow's slot is ho_index(key) (flow.h), and a SYN
 * costs one write of one 64-byte slot (struct ho_slot) with no hash-table
 * insert, no lock and no free list (the verifier inlines array lookups).
 * A flow whose slot another flow took is forgotten (as LRU eviction
 * forgot it before): its next packet is placed by Maglev again, on the
 * same backend while the table is unchanged. Spoofed floods overwrite
 * this table only; the backend's first answer that proves a flow moves it
 * to conntrack. Entries live tcp_syn_timeout at most. The slot count is a
 * power of two set from Go (sluice_config.ho_mask); BPF_F_MMAPABLE so the
 * agent reads it without a system call per batch, and so the slots start
 * page aligned (one cache line each). Not used by IPv6 (halfopen6 is
 * still an LRU hash, see maps6.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 131072);
	__type(key, __u32);
	__type(value, struct ho_slot);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} halfopen SEC(".maps");

/* A per-CPU copy of the half-open slot last looked up (ho_lookup in
 * flow.h): a packet is steered by a copy validated against its check,
 * never by the slot itself, which another CPU may be rewriting. Not
 * pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ho_slot);
} ho_scratch SEC(".maps");

/* Backend slot -> the next hop towards it, per CPU, for every packet to
 * it. Not pinned: a new program starts with an empty cache. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend_hop);
} backend_hops SEC(".maps");

/* The next hop of replies towards clients, per CPU: direct-mapped by a
 * hash of the client's address (the entry names the address it holds; a
 * collision costs a FIB lookup, nothing else). Not pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REPLY_HOPS);
	__type(key, __u32);
	__type(value, struct backend_hop);
} reply_hops SEC(".maps");

/* SYNs clients sent to a backend's service port directly (not to a VIP),
 * keyed as their SYN-ACK comes back (backend -> client): such a SYN-ACK is
 * passed, while one for a forgotten VIP flow is dropped. LRU, small: an
 * entry only has to live one round trip. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct ct_key);
	__type(value, __u8);
} direct_syns SEC(".maps");

/* Every backend's address and service port (struct endpoint) -> the nat
 * services it serves (struct ep_info): a reply names the client and the
 * backend but not the VIP, and this entry gives the VIP and port that
 * rebuild the flow's key; a reply that matches no flow is recognised
 * instead of leaking the backend's address. Kept by datapath.Real like
 * addrs. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, struct endpoint);
	__type(value, struct ep_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backend_ports SEC(".maps");

/* snat mode's reverse entries: a reply comes to the snat address and port,
 * which name neither the client nor the VIP, so it needs a key of its
 * own: (backend, snat address, ports) -> the flow's conntrack key. 16 + 16
 * bytes, 96 per flow with the kernel's overhead. Confirmed flows only;
 * LRU, conntrack_max/2 entries (set from Go). A forward hit re-creates an
 * evicted one (once per tick of the coarse clock). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct ct_key);
	__type(value, struct ct_key);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} snat_rev SEC(".maps");

/* The same for half-open snat flows, so a flood of new snat flows churns
 * this map, never the confirmed flows' reverse entries. LRU,
 * conntrack_max/8 entries (set from Go). Still a hash-table insert per
 * snat SYN: it also reserves the snat port (BPF_NOEXIST), which a
 * direct-mapped slot could not. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct ct_key);
	__type(value, struct ct_key);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} snat_rev_ho SEC(".maps");

/* Set (1) by the agent (datapath.Real) once some backend endpoint serves
 * more than one nat service: only then can a new nat flow conflict with
 * another VIP's (nat_conflict in sluice.c), so only then does a new flow
 * pay the backend_ports lookup for it. Set before the endpoint's
 * backend_ports entry lists its second service, never cleared while the
 * program runs (a stale 1 costs the lookup, nothing else). Not pinned: a
 * new program starts at 0 and the agent sets it again as it rebuilds
 * backend_ports at open. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} nat_shared SEC(".maps");

/* Counters, read by the agent at scrape time. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct svc_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} service_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backend_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct global_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} global_stats SEC(".maps");
