/* Map keys and values. All addresses and ports are in network byte order, as
 * they sit in the packet; counters and ids are in host order. */
#pragma once
#include <linux/types.h>
#include "consts.h"

/* services key: a VIP, port and protocol. */
struct svc_key {
	__be32 vip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* services value. */
struct svc_value {
	__u32 id;        /* index into maglev_tables (its row) and service_stats */
	__u8 mode;       /* enum svc_mode */
	__u8 pad[3];
	__be32 snat_addr; /* MODE_SNAT: the source sluice uses towards backends */
	__u32 pool_id;   /* the pool's id (struct backend.pool_id): which backends'
			  * replies belong to the service (backend_ports) */
};

/* maglev_tables value: 16 consecutive entries of a service's Maglev table,
 * each a backend slot (maps.h). */
struct maglev_line {
	__u32 slot[MAGLEV_LINE];
};

/* backends value, indexed by slot. */
struct backend {
	__be32 addr;
	__be16 port;
	__u8 state;   /* enum backend_state */
	__u8 pad;
	__u32 gen;    /* bumped by the agent each time the slot is reused */
	__u32 pool_id; /* FNV-1a of the pool name: lets a restarted agent adopt the slot */
	__be32 src_addr; /* the host's source towards it: SNAT source when the service names none */
};

/* conntrack key: a 5-tuple as seen on the wire. */
struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* A cached next hop: what bpf_fib_lookup said for a destination, kept for
 * a short while (sluice_config.nexthop_cache_ns) so most packets skip the
 * FIB lookup, the largest part of the per-packet cost. */
struct nexthop {
	__u8 dmac[6];
	__u8 smac[6];
	__u32 ifindex;
	__u64 until; /* bpf_ktime_get_coarse_ns() after which the entry is looked up again */
};

/* conntrack (and halfopen) value: one entry per flow, keyed by the flow's
 * tuple as the client sends it (client -> VIP). It rewrites the
 * destination to the backend (and in snat mode the source to the snat
 * address and port); a reply is rewritten back from the same entry,
 * found by rebuilding this key from the reply (see flow.h). A zero new
 * address or port means "keep". */
struct ct_value {
	__u64 last_seen;   /* bpf_ktime_get_coarse_ns() of the last packet */
	__u32 service_id;
	__u32 backend_id;  /* slot */
	__u32 backend_gen; /* the slot's generation when the flow was pinned */
	__be32 saddr_new;  /* snat mode: the snat source; 0 in nat mode */
	__be32 daddr_new;  /* the backend */
	__be16 sport_new;  /* snat mode: the snat source port; 0 in nat mode */
	__be16 dport_new;  /* the backend's port */
	__u8 state;        /* enum ct_state */
	__u8 pad[3];
	/* No next hop here: it is the same for every flow to a backend (or
	 * to a client), so it is cached per backend slot (backend_hops) and
	 * per client address (reply_hops), not in each of the entries.
	 * 40 bytes: 120 per flow with the key and the kernel's 64 of
	 * overhead (docs/architecture.md, "Memory per flow"). */
};

/* halfopen value: one slot of the direct-mapped half-open table, a flow
 * not confirmed by its backend yet. The slot is picked by a keyed hash of
 * the key (ho_index in flow.h, keyed by sluice_config.ho_key); a flow
 * whose slot another one took is simply forgotten, as LRU eviction forgot
 * it before. check is a keyed hash of key and of every field of val that
 * steers a packet (service, backend slot and generation, the new
 * addresses and ports), never 0 in a used slot: a slot that two CPUs
 * wrote at once, or that is read while being written, holds a mix of two
 * flows whose check does not match, and is treated as empty. last_seen
 * and state are updated in place and not covered (a torn one is only a
 * wrong timer or state, never a wrong backend). 64 bytes: one cache line
 * (the map is BPF_F_MMAPABLE, so its slots start page aligned). */
struct ho_slot {
	struct ct_key key;
	struct ct_value val;
	__u64 check; /* 0: empty */
};

/* backend_hops and reply_hops value: the cached next hop towards an
 * address (a backend slot's; a client's), per CPU. */
struct backend_hop {
	struct nexthop nh;
	__be32 addr; /* the address it was looked up for (slots are reused, reply_hops is direct-mapped) */
	__u16 mtu;
	__u8 pad[2];
};

/* backend_ports key: a backend's address and service port. */
struct endpoint {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

/* A nat service a backend endpoint belongs to (struct ep_info). */
struct ep_service {
	__be32 vip;
	__be16 port;
	__u8 proto;
	__u8 pad;
	__u32 id; /* the service id (its counters) */
};

/* backend_ports value: what a reply from this endpoint can belong to.
 * nat_count nat services have the endpoint's pool; the first EP_NAT_SVCS
 * of them are listed in nat[] (sorted, so every agent writes the same
 * bytes). A reply names the client and the backend, not the VIP: each
 * listed service's VIP and port rebuild a forward key to look up, and
 * when exactly one nat service of the reply's protocol holds the
 * endpoint, the reply is translated from this entry alone, with no flow
 * entry (evicted, or a flow another node forwarded). */
struct ep_info {
	__u32 slots;     /* non-free backend slots holding the endpoint */
	__u8 nat_count;  /* nat services whose pool holds it (all protocols; capped at 255) */
	__u8 flags;      /* enum ep_flags */
	__u8 pad[2];
	struct ep_service nat[EP_NAT_SVCS];
};

/* addrs value: what an address is to sluice. Fragments carry no ports (all
 * but the first), so the program recognises the fragments of its traffic
 * by address alone. */
struct addr_info {
	__u32 svc_id; /* ADDR_VIP: a service on this VIP (its fragments are counted there) */
	__u8 flags;   /* enum addr_flags */
	__u8 pad[3];
};

/* Per-service counters (per CPU). Named fields, no magic indexes. */
struct svc_counters {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
	__u64 rst_no_backend;      /* new TCP flow, empty table: answered with RST */
	__u64 rst_removed_backend; /* packet of a flow pinned to a removed backend */
	__u64 drop_no_backend;     /* new UDP flow, empty table */
	__u64 drop_removed_backend; /* UDP packet of a flow pinned to a removed backend */
	__u64 fragments;           /* fragments to the VIP: dropped (they cannot be NATed) */
	__u64 snat_failures;       /* no free SNAT port (or no source): RST / drop */
	__u64 rst_nat_conflict;    /* nat mode: the client's port already maps another VIP's live flow to this backend */
	__u64 drop_nat_conflict;   /* the same for UDP */
};

/* Per-backend counters (per CPU), indexed by slot. */
struct backend_counters {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
	__u64 connect_refused; /* SYNs answered with an RST by the backend */
};

/* Counters not tied to a service (per CPU, one entry). */
struct global_counters {
	__u64 passed_not_ours;    /* not a VIP, not a reply: XDP_PASS untouched */
	__u64 passed_no_neigh;    /* rewritten, next hop unresolved: kernel forwards */
	__u64 fib_failures;       /* rewritten, no route: handed to the kernel */
	__u64 malformed;          /* truncated or contradicting headers, bad IPv4 checksum: passed untouched */
	__u64 replies_translated; /* backend -> client packets reverse-NATed */
	__u64 ct_update_failures; /* conntrack insert failed */
	__u64 rst_sent;
	__u64 icmp_translated; /* ICMP errors about our flows, rewritten and forwarded */
	__u64 passed_ttl_exceeded; /* ours with TTL <= 1: passed untouched, the kernel answers */
	__u64 backend_fragments;   /* fragments from a backend's address: dropped, never passed un-translated */
	__u64 rst_rate_limited;    /* RSTs not sent (the packet dropped) over the rate limit */
	__u64 flows_confirmed;     /* half-open flows the backend confirmed: moved to conntrack */
	__u64 reverse_recreated;   /* snat reverse entries LRU evicted, re-created from the flow's entry */
	__u64 synack_no_flow_drops; /* a backend's SYN-ACK for a VIP flow sluice no longer knows: dropped, never leaked */
	__u64 frag_needed_sent;    /* too big for the next hop, DF set: ICMP fragmentation needed sent back */
	__u64 passed_too_big;      /* too big for the next hop, DF clear: rewritten, the kernel fragments */
	__u64 replies_without_flow; /* nat replies translated from backend_ports alone (no flow entry) */
	__u64 halfopen_overwritten; /* IPv4: a live half-open flow's slot taken by another flow (placed by Maglev again) */
};

/* Run-time knobs set from Go before load (volatile const, not #ifdef). */
struct sluice_config {
	__u64 tcp_syn_timeout_ns;
	__u64 tcp_established_timeout_ns;
	__u64 tcp_closing_timeout_ns;
	__u64 udp_timeout_ns;
	__u64 nexthop_cache_ns; /* how long a flow reuses its FIB answer; 0 disables */
	__u32 snat_port_min; /* SNAT source ports, host order; below the kernel's */
	__u32 snat_port_max; /* ephemeral range so the host's own sockets never collide */
	__u32 maglev_size; /* entries of every service's Maglev table, a row of maglev_tables (prime) */
	__u32 hash_seed;
	__u64 rst_interval_ns; /* RST rate limit per CPU: one RST per interval... */
	__u64 rst_burst_ns;    /* ...with bursts of burst/interval RSTs; 0: unlimited */
	__u64 ho_key;  /* the half-open table's secret hash key (per node, random) */
	__u32 ho_mask; /* halfopen slots - 1 (the slot count is a power of two) */
	__u32 pad;
};

/* rst_limit value: the per-CPU RST budget (GCRA: the theoretical arrival
 * time of the next RST). */
struct rst_limit {
	__u64 tat;
};
