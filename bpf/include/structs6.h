/* Map keys and values of the IPv6 data path (see maps6.h). IPv6 has maps
 * of its own rather than 16-byte addresses in the IPv4 ones: a shared
 * layout would make every IPv4 flow pay the IPv6 key (docs/architecture.md,
 * "Memory per flow, and the layout for IPv6"). Addresses are four 32-bit
 * words in network byte order, exactly as they sit in the packet; ports in
 * network order; ids, counters and states in host order, as in structs.h.
 * Service ids and backend slots are shared with IPv4: one id space, one
 * Maglev outer map, one set of per-service and per-backend counters. */
#pragma once
#include <linux/types.h>
#include "structs.h"

/* services6 key: a VIP, port and protocol. */
struct svc6_key {
	__be32 vip[4];
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* services6 value. */
struct svc6_value {
	__u32 id;         /* its row of maglev_tables, service_stats (shared with IPv4) */
	__u8 mode;        /* enum svc_mode */
	__u8 pad[3];
	__be32 snat_addr[4]; /* MODE_SNAT: the source sluice uses towards backends */
};

/* backends6 value, indexed by the same slots as backends: a slot holds an
 * IPv4 backend (backends) or an IPv6 one (here); the other map's entry of
 * the slot is free. */
struct backend6 {
	__be32 addr[4];
	__be16 port;
	__u8 state;    /* enum backend_state */
	__u8 pad;
	__u32 gen;     /* bumped by the agent each time the slot is reused */
	__u32 pool_id; /* FNV-1a of the pool name */
	__be32 src_addr[4]; /* the host's source towards it: SNAT source when the service names none */
};

/* ct6_value.flags (IPv6 only: IPv4's one-entry layout has no reverse
 * entries in its flow maps). */
enum ct6_flags {
	CT6_F_REPLY = 1, /* a snat flow's reverse entry (backend -> snat address) */
};

/* conntrack6 / halfopen6 key: a 5-tuple as seen on the wire (40 bytes). */
struct ct6_key {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* conntrack6 / halfopen6 value (64 bytes). A nat flow is ONE forward entry
 * (client -> VIP): its replies rebuild this key from the reply's tuple and
 * the VIP of nat_hint6 (or of each nat service), so no reverse entry is
 * kept. A snat flow has a forward entry and a reverse one (CT6_F_REPLY,
 * keyed backend -> snat address and port; CT6_F_REPLY) whose saddr_new and daddr_new
 * hold the VIP and the client: the reply names neither. */
struct ct6_value {
	__u64 last_seen;   /* bpf_ktime_get_coarse_ns() of the last packet */
	__u32 service_id;
	__u32 backend_id;  /* slot */
	__u32 backend_gen; /* the slot's generation when the flow was pinned */
	__be32 saddr_new[4]; /* forward: SNAT source (zero in nat mode); reverse: the VIP */
	__be32 daddr_new[4]; /* forward: the backend; reverse: the client */
	__be16 sport_new;    /* forward: SNAT port; reverse: the VIP's port */
	__be16 dport_new;    /* forward: the backend's port; reverse: the client's port */
	__u8 state;          /* enum ct_state (kept in the forward entry) */
	__u8 flags;          /* enum ct6_flags */
	__u8 pad[2];
};

/* backend_ports6 and nat_hint6 key: a backend's address and service port
 * (and, for nat_hint6, the protocol). */
struct endpoint6 {
	__be32 addr[4];
	__be16 port;
	__u8 proto; /* nat_hint6 only; 0 in backend_ports6 */
	__u8 pad;
};

/* nat_hint6 value: the VIP and port of the nat service whose flows last
 * went to a backend endpoint, so a reply (backend -> client) rebuilds its
 * flow's key with one lookup. shared: flows of more than one VIP have gone
 * to this endpoint; a reply that misses the hint then tries every nat
 * service's VIP, and a new flow checks for another VIP's live flow on the
 * same client port (the reply could not tell them apart). */
struct nat_hint6_value {
	__be32 vip[4];
	__be16 port;
	__u8 shared;
	__u8 pad;
};

/* backend_hops6 and reply_hops6 value: a cached next hop towards an IPv6
 * address (see struct backend_hop). */
struct backend_hop6 {
	struct nexthop nh;
	__be32 addr[4];
	__u16 mtu;
	__u8 pad[6];
};
