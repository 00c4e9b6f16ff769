//go:build ignore

/* sluice's XDP data path: VIP traffic is tracked per connection and sent to
 * a backend chosen by Maglev; everything else is passed to the kernel
 * untouched. See include/ for the pieces, one concern per header. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "include/consts.h"
#include "include/structs.h"
#include "include/maps.h"
#include "include/parse.h"
#include "include/csum.h"
#include "include/nat.h"
#include "include/rst.h"
#include "include/icmp.h"
#include "include/toobig.h"

char __license[] SEC("license") = "GPL";

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
};

/* Unused instances so bpf2go emits Go types for every shared struct/enum. */
const struct svc_counters *unused_svc_stats __attribute__((unused));
const struct backend_counters *unused_backend_stats __attribute__((unused));
const struct global_counters *unused_global_stats __attribute__((unused));
const enum backend_state *unused_backend_state __attribute__((unused));
const enum ct_state *unused_ct_state __attribute__((unused));
const enum ct_flags *unused_ct_flags __attribute__((unused));
const enum svc_mode *unused_svc_mode __attribute__((unused));
const enum addr_flags *unused_addr_flags __attribute__((unused));

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

static __always_inline __u64 ct_timeout(__u8 state)
{
	switch (state) {
	case CT_ESTABLISHED:
		return cfg.tcp_established_timeout_ns;
	case CT_CLOSING:
		return cfg.tcp_closing_timeout_ns;
	case CT_UDP:
		return cfg.udp_timeout_ns;
	default:
		return cfg.tcp_syn_timeout_ns;
	}
}

static __always_inline int ct_expired(const struct ct_value *ct, __u64 now)
{
	return now > ct->last_seen && now - ct->last_seen > ct_timeout(ct->state);
}

/* A murmur3-style mix of the 5-tuple: spreads flows over the Maglev table. */
static __always_inline __u32 mix32(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = (k << 15) | (k >> 17);
	k *= 0x1b873593;
	h ^= k;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 flow_hash(const struct ct_key *k)
{
	__u32 h = cfg.hash_seed;
	h = mix32(h, k->saddr);
	h = mix32(h, k->daddr);
	h = mix32(h, ((__u32)k->sport << 16) | k->dport);
	h = mix32(h, k->proto);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* pick_backend returns the slot of an active backend for a new flow whose
 * flow_hash is h, or 0 when the service has none. A slot whose backend stopped being active
 * between the state change and the table swap is skipped by probing the
 * next few entries. */
static __always_inline __u32 pick_backend(__u32 svc_id, __u32 h, struct backend **out)
{
	__u32 size = cfg.maglev_size;
	if (size == 0)
		return 0;
	void *table = bpf_map_lookup_elem(&maglev_outer, &svc_id);
	if (!table)
		return 0;
#pragma unroll
	for (int i = 0; i < MAGLEV_PROBES; i++) {
		__u32 idx = (h + i) % size;
		__u32 *slot = bpf_map_lookup_elem(table, &idx);
		if (!slot || *slot == 0)
			return 0; /* empty table: no backend */
		__u32 s = *slot;
		struct backend *b = bpf_map_lookup_elem(&backends, &s);
		if (b && b->state == BACKEND_ACTIVE) {
			*out = b;
			return s;
		}
	}
	return 0;
}

static __always_inline void count_service(__u32 id, __u64 bytes, int new_flow)
{
	struct svc_counters *s = bpf_map_lookup_elem(&service_stats, &id);
	if (s) {
		s->packets++;
		s->bytes += bytes;
		if (new_flow)
			s->new_flows++;
	}
}

static __always_inline void count_backend(__u32 slot, __u64 bytes, int new_flow)
{
	struct backend_counters *s = bpf_map_lookup_elem(&backend_stats, &slot);
	if (s) {
		s->packets++;
		s->bytes += bytes;
		if (new_flow)
			s->new_flows++;
	}
}

static __always_inline struct svc_counters *svc_stats_of(__u32 id)
{
	return bpf_map_lookup_elem(&service_stats, &id);
}

/* next_tcp_state advances a flow's state on a packet with the given flags.
 * The backend's SYN-ACK moves SYN_SENT to SYN_RECV: the backend answered,
 * so a handshake the client then abandons is not the backend's connect
 * failure (the agent counts only SYN_SENT flows that stay unanswered). */
static __always_inline __u8 next_tcp_state(__u8 cur, __u8 flags, int reply)
{
	if (flags & (TCPF_RST | TCPF_FIN))
		return CT_CLOSING;
	if (cur == CT_SYN_SENT && reply && (flags & TCPF_SYN) && (flags & TCPF_ACK))
		return CT_SYN_RECV;
	if ((cur == CT_SYN_SENT || cur == CT_SYN_RECV) && (flags & TCPF_ACK) && !(flags & TCPF_SYN))
		return CT_ESTABLISHED;
	return cur;
}

/* ho_expired: a half-open entry lives tcp_syn_timeout at most, whatever
 * its state (a confirmed flow leaves the table, see confirm_flow). */
static __always_inline int ho_expired(const struct ct_value *ct, __u64 now)
{
	return now > ct->last_seen && now - ct->last_seen > cfg.tcp_syn_timeout_ns;
}

/* lookup_forward finds a flow's live forward entry: in conntrack
 * (*confirmed = 1) or in the half-open table (*confirmed = 0). *stale, when
 * given, is set to a conntrack forward entry of the key that is not live
 * (expired), so the caller need not look it up again. */
static __always_inline struct ct_value *lookup_forward(const struct ct_key *k, __u64 now, int *confirmed,
						       struct ct_value **stale)
{
	struct ct_value *ct = bpf_map_lookup_elem(&conntrack, k);
	if (ct && !(ct->flags & CT_F_REPLY)) {
		if (!ct_expired(ct, now)) {
			*confirmed = 1;
			return ct;
		}
		if (stale)
			*stale = ct;
	}
	ct = bpf_map_lookup_elem(&halfopen, k);
	if (ct && !(ct->flags & CT_F_REPLY) && !ho_expired(ct, now)) {
		*confirmed = 0;
		return ct;
	}
	return NULL;
}

/* reverse_of builds the reverse key and entry of the forward entry fv at
 * key fk: replies come from the backend to the client (nat) or to the
 * snat address and port (snat), and are rewritten to come from the VIP. */
static __always_inline void reverse_of(const struct ct_key *fk, const struct ct_value *fv,
				       struct ct_key *rk, struct ct_value *rv)
{
	rk->saddr = fv->daddr_new;
	rk->sport = fv->dport_new;
	rk->daddr = fv->saddr_new ? fv->saddr_new : fk->saddr;
	rk->dport = fv->saddr_new ? fv->sport_new : fk->sport;
	rk->proto = fk->proto;
	rv->last_seen = fv->last_seen;
	rv->service_id = fv->service_id;
	rv->backend_id = fv->backend_id;
	rv->backend_gen = fv->backend_gen;
	rv->saddr_new = fk->daddr;
	rv->sport_new = fk->dport;
	rv->daddr_new = fv->saddr_new ? fk->saddr : 0;
	rv->dport_new = fv->saddr_new ? fk->sport : 0;
	rv->state = fv->state;
	rv->flags = CT_F_REPLY;
}

/* ensure_reverse re-creates a flow's reverse entry from its forward entry
 * when LRU evicted it, in the forward entry's table (BPF_NOEXIST: an
 * existing one, with its cached next hop, is left alone). In the half-open
 * table the two are evicted independently by every flood: without this a
 * retransmitted SYN would reach the backend and its SYN-ACK be dropped,
 * again and again. */
static __always_inline void ensure_reverse(const struct ct_key *fk, const struct ct_value *fv, int confirmed)
{
	struct ct_key rk = {};
	struct ct_value rv = {};
	reverse_of(fk, fv, &rk, &rv);
	if (confirmed) {
		if (bpf_map_lookup_elem(&conntrack, &rk))
			return;
		if (!bpf_map_update_elem(&conntrack, &rk, &rv, BPF_NOEXIST))
			GCOUNT(reverse_recreated);
		return;
	}
	if (bpf_map_lookup_elem(&halfopen, &rk))
		return;
	if (!bpf_map_update_elem(&halfopen, &rk, &rv, BPF_NOEXIST))
		GCOUNT(reverse_recreated);
}

/* forget_confirmed deletes the conntrack forward entry old at fk and the
 * reverse entry that goes with it. */
static __always_inline void forget_confirmed(const struct ct_key *fk, struct ct_value *old)
{
	if (!old)
		return;
	struct ct_key rk = {};
	struct ct_value rv = {};
	reverse_of(fk, old, &rk, &rv);
	bpf_map_delete_elem(&conntrack, &rk);
	bpf_map_delete_elem(&conntrack, fk);
}

/* reverse_in_use tells whether the nat-mode reverse entry rv at key rk
 * still serves a live forward flow: the forward entry it was made for
 * (client -> the VIP it restores) exists, is not expired and is pinned to
 * the same backend slot. */
static __always_inline int reverse_in_use(const struct ct_key *rk, const struct ct_value *rv, __u64 now)
{
	struct ct_key fk = {
		.saddr = rk->daddr,
		.daddr = rv->saddr_new,
		.sport = rk->dport,
		.dport = rv->sport_new,
		.proto = rk->proto,
	};
	int confirmed;
	struct ct_value *fv = lookup_forward(&fk, now, &confirmed, NULL);
	/* A closing flow does not hold the tuple: the backend takes a new
	 * SYN on a tuple in TIME_WAIT. */
	return fv && fv->backend_id == rv->backend_id && fv->state != CT_CLOSING;
}

/* send_out forwards the rewritten packet p; orig is its tuple as it
 * arrived (before the rewrite), for the ICMP error that tells the sender a
 * packet was too big (NULL: no error is sent, the kernel has it). */
static __always_inline int send_out(struct xdp_md *ctx, struct packet *p, void *data_end,
				    struct nexthop *nh, __u16 *mtu, __u64 now, const struct ct_key *orig)
{
	__u32 ifindex = 0;
	switch (forward(ctx, p, data_end, nh, mtu, now, cfg.nexthop_cache_ns, &ifindex)) {
	case FWD_REDIRECT:
		if (ifindex == ctx->ingress_ifindex)
			return XDP_TX;
		return bpf_redirect(ifindex, 0);
	case FWD_NO_NEIGH:
		GCOUNT(passed_no_neigh);
		return XDP_PASS;
	case FWD_TOO_BIG:
		/* DF set: tell the sender, quoting what it sent, so its path
		 * MTU discovery works through sluice. DF clear: the kernel
		 * fragments and forwards the rewritten packet. */
		if (orig && (p->ip->frag_off & bpf_htons(IP_DF))) {
			if (make_frag_needed(ctx, orig, *mtu))
				return XDP_DROP;
			GCOUNT(frag_needed_sent);
			return XDP_TX;
		}
		GCOUNT(passed_too_big);
		return XDP_PASS;
	default:
		GCOUNT(fib_failures);
		return XDP_PASS;
	}
}

/* send_cached forwards p through the next hop cached in c (a per-CPU
 * entry of backend_hops or reply_hops) for address addr: an entry holding
 * another address starts over, an expired one is refreshed by send_out.
 * Without c, the FIB is asked. */
static __always_inline int send_cached(struct xdp_md *ctx, struct packet *p, void *data_end,
				       struct backend_hop *c, __be32 addr, __u64 now, const struct ct_key *orig)
{
	struct backend_hop none = {};
	if (!c)
		c = &none;
	if (c->addr != addr) {
		c->addr = addr;
		c->nh.until = 0;
		c->mtu = 0;
	}
	return send_out(ctx, p, data_end, &c->nh, &c->mtu, now, orig);
}

/* reply_hop returns the reply_hops entry for client address a. */
static __always_inline struct backend_hop *reply_hop(__be32 a)
{
	__u32 h = a;
	h ^= h >> 16;
	h *= 0x7feb352d;
	h ^= h >> 15;
	__u32 idx = h & (REPLY_HOPS - 1);
	return bpf_map_lookup_elem(&reply_hops, &idx);
}

/* rst_allowed spends one RST of this CPU's budget (GCRA): spoofed SYNs
 * to a service without backends, or to a removed backend's flows, must not
 * turn sluice into a reflector that answers every one of them. */
static __always_inline int rst_allowed(void)
{
	__u64 interval = cfg.rst_interval_ns;
	if (interval == 0 || cfg.rst_burst_ns == 0)
		return 1;
	__u32 zero = 0;
	struct rst_limit *l = bpf_map_lookup_elem(&rst_limit, &zero);
	if (!l)
		return 0;
	__u64 now = bpf_ktime_get_coarse_ns();
	__u64 tat = l->tat > now ? l->tat : now;
	if (tat - now >= cfg.rst_burst_ns)
		return 0;
	l->tat = tat + interval;
	return 1;
}

static __always_inline int answer_rst(struct xdp_md *ctx, struct packet *p)
{
	if (p->tcp_flags & TCPF_RST)
		return XDP_DROP; /* never answer an RST (make_rst checks too) */
	if (!rst_allowed()) {
		GCOUNT(rst_rate_limited);
		return XDP_DROP;
	}
	if (make_rst(ctx, p))
		return XDP_DROP;
	GCOUNT(rst_sent);
	return XDP_TX;
}

/* reply_without_state: a packet from a backend's service port (address and
 * port of a backend slot) that matches no flow is the reply of a flow
 * sluice no longer knows. Passed on, it would reach the client with the
 * backend's address where the VIP belongs: it is dropped and counted (the
 * backend retransmits; the client's next packet re-creates the flow). Any
 * other packet is not ours. */
/* recover_ctx is find_flow's state while it walks the services. */
struct recover_ctx {
	struct ct_key fk; /* the forward key tried: client, candidate VIP */
	__be32 baddr;     /* the backend the reply came from */
	__be16 bport;
	__u8 found;
	__u64 now;
};

/* find_flow (a bpf_for_each_map_elem callback over services) looks for the
 * live nat-mode forward entry client -> VIP:port of each service that
 * points to the replying backend. */
static long find_flow(void *map, struct svc_key *key, struct svc_value *val, struct recover_ctx *c)
{
	if (key->proto != c->fk.proto || val->mode != MODE_NAT)
		return 0;
	c->fk.daddr = key->vip;
	c->fk.dport = key->port;
	int confirmed;
	struct ct_value *fv = lookup_forward(&c->fk, c->now, &confirmed, NULL);
	if (fv && fv->daddr_new == c->baddr && fv->dport_new == c->bport && !fv->saddr_new) {
		c->found = 1;
		return 1; /* stop */
	}
	return 0;
}

/* recover_reverse: a reply from a backend's service port matched no
 * reverse entry. LRU evicts a flow's two entries independently: when the
 * flow's forward entry is still there (found by trying each nat service's
 * VIP, only for packets from a backend's address and service port), the
 * reverse entry is re-created from it and returned, with *confirmed telling
 * its table. Otherwise the packet is not a flow sluice knows: the backend's
 * own traffic to that address (a client reaching a backend directly), or a
 * flow whose two entries are both gone; either way it passes untouched. */
static __always_inline struct ct_value *recover_reverse(struct packet *p, const struct ct_key *rk, int *confirmed)
{
	struct endpoint e = {
		.addr = p->ip->saddr,
		.port = p->sport,
	};
	if (!bpf_map_lookup_elem(&backend_ports, &e))
		return NULL;
	struct recover_ctx c = {
		.fk = {
			.saddr = p->ip->daddr,
			.sport = p->dport,
			.proto = p->proto,
		},
		.baddr = p->ip->saddr,
		.bport = p->sport,
		.now = bpf_ktime_get_coarse_ns(),
	};
	bpf_for_each_map_elem(&services, find_flow, &c, 0);
	if (!c.found)
		return NULL;
	struct ct_value *fv = lookup_forward(&c.fk, c.now, confirmed, NULL);
	if (!fv)
		return NULL;
	struct ct_key k = {};
	struct ct_value rv = {};
	reverse_of(&c.fk, fv, &k, &rv);
	if (*confirmed) {
		bpf_map_update_elem(&conntrack, &k, &rv, BPF_NOEXIST);
		GCOUNT(reverse_recreated);
		return bpf_map_lookup_elem(&conntrack, rk);
	}
	bpf_map_update_elem(&halfopen, &k, &rv, BPF_NOEXIST);
	GCOUNT(reverse_recreated);
	return bpf_map_lookup_elem(&halfopen, rk);
}

/* note_direct_syn remembers a SYN that a client sends to a backend's
 * service port directly (routed through sluice, no VIP): its SYN-ACK must
 * pass untouched (see unknown_reply). Only SYNs to backend endpoints pay
 * the lookup. */
static __always_inline void note_direct_syn(struct packet *p)
{
	if (p->proto != IPPROTO_TCP || (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) != TCPF_SYN)
		return;
	struct endpoint e = {
		.addr = p->ip->daddr,
		.port = p->dport,
	};
	if (!bpf_map_lookup_elem(&backend_ports, &e))
		return;
	/* Keyed as the SYN-ACK will be: backend -> client. */
	struct ct_key k = {
		.saddr = p->ip->daddr,
		.daddr = p->ip->saddr,
		.sport = p->dport,
		.dport = p->sport,
		.proto = IPPROTO_TCP,
	};
	__u8 one = 1;
	bpf_map_update_elem(&direct_syns, &k, &one, BPF_ANY);
}

/* to_local tells whether the packet is for this host (the FIB does not
 * forward it): the host's own connections to backends (the L7 proxy, the
 * health checks), whose SYNs never crossed XDP. */
static __always_inline int to_local(struct xdp_md *ctx, struct packet *p)
{
	struct bpf_fib_lookup fib = {};
	fib.family = 2; /* AF_INET */
	fib.tos = p->ip->tos;
	fib.l4_protocol = p->proto;
	fib.sport = p->sport;
	fib.dport = p->dport;
	fib.tot_len = p->tot_len;
	fib.ipv4_src = p->ip->saddr;
	fib.ipv4_dst = p->ip->daddr;
	fib.ifindex = ctx->ingress_ifindex;
	return bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) == BPF_FIB_LKUP_RET_NOT_FWDED;
}

/* unknown_reply handles a packet from a backend that matches no flow, not
 * even through its forward entry. A SYN-ACK from a backend's service port
 * answers a SYN that went through sluice: to a VIP (a flow whose two
 * half-open entries a flood evicted before the backend answered: dropped,
 * never passed on with the backend's address; the client retransmits its
 * SYN) or, when note_direct_syn saw it, straight to the backend (passed),
 * or comes from this host itself (passed).
 * Anything else cannot be told from the backend's own traffic and passes
 * untouched. */
static __always_inline int unknown_reply(struct xdp_md *ctx, struct packet *p, const struct ct_key *rk)
{
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == (TCPF_SYN | TCPF_ACK)) {
		struct endpoint e = {
			.addr = p->ip->saddr,
			.port = p->sport,
		};
		if (bpf_map_lookup_elem(&backend_ports, &e) && !bpf_map_lookup_elem(&direct_syns, rk) &&
		    !to_local(ctx, p)) {
			GCOUNT(synack_no_flow_drops);
			return XDP_DROP;
		}
	}
	GCOUNT(passed_not_ours);
	return XDP_PASS;
}

/* confirms: a packet from the backend that proves the flow is real. A
 * spoofed SYN still gets the backend's SYN-ACK, and a blind ACK gets its
 * RST; only a backend that accepted the handshake (with the client's real
 * ACK) sends anything else. Any UDP answer confirms a UDP flow. */
static __always_inline int confirms(struct packet *p)
{
	if (p->proto != IPPROTO_TCP)
		return 1;
	return !(p->tcp_flags & (TCPF_SYN | TCPF_RST));
}

/* handle_reply reverse-translates backend -> client packets of our flows,
 * confirmed (conntrack) or half-open; the backend's confirmation moves a
 * half-open flow into conntrack. */
static __always_inline int handle_reply(struct xdp_md *ctx, struct packet *p, void *data_end)
{
	/* Replies come from backends: anything else (most of the host's own
	 * traffic) is not ours, at the cost of one lookup. */
	struct addr_info *from = bpf_map_lookup_elem(&addrs, &p->ip->saddr);
	if (!from || !(from->flags & ADDR_BACKEND)) {
		note_direct_syn(p);
		GCOUNT(passed_not_ours);
		return XDP_PASS;
	}
	if (!header_ok(ctx, p, data_end)) {
		GCOUNT(malformed);
		return XDP_PASS;
	}
	struct ct_key rk = {
		.saddr = p->ip->saddr,
		.daddr = p->ip->daddr,
		.sport = p->sport,
		.dport = p->dport,
		.proto = p->proto,
	};
	int confirmed = 1;
	struct ct_value *rv = bpf_map_lookup_elem(&conntrack, &rk);
	if (!rv || !(rv->flags & CT_F_REPLY)) {
		confirmed = 0;
		rv = bpf_map_lookup_elem(&halfopen, &rk);
		if (!rv || !(rv->flags & CT_F_REPLY)) {
			rv = recover_reverse(p, &rk, &confirmed);
			if (!rv || !(rv->flags & CT_F_REPLY))
				return unknown_reply(ctx, p, &rk);
		}
	}
	if (p->ip->ttl <= 1) {
		/* As for the forward direction: the Time Exceeded the kernel
		 * sends the backend quotes what the backend sent. */
		GCOUNT(passed_ttl_exceeded);
		return XDP_PASS;
	}
	__u64 now = bpf_ktime_get_coarse_ns();
	__u32 svc_id = rv->service_id;
	__u32 slot = rv->backend_id;
	if (rv->last_seen != now)
		rv->last_seen = now;
	if (rewrite(p, data_end, rv->saddr_new, rv->sport_new, rv->daddr_new, rv->dport_new))
		return XDP_DROP;

	/* The forward entry is the translated packet's tuple reversed. */
	struct ct_key fk = {
		.saddr = p->ip->daddr,
		.daddr = p->ip->saddr,
		.sport = p->dport,
		.dport = p->sport,
		.proto = p->proto,
	};
	/* Usually in the same table as the reverse entry; a confirmed reverse
	 * entry whose forward entry was evicted and re-made half-open by the
	 * client's next packet is confirmed again here. */
	struct ct_value *fv = NULL;
	int fconfirmed = 0;
	if (confirmed) {
		fv = bpf_map_lookup_elem(&conntrack, &fk);
		fconfirmed = fv != NULL;
	}
	if (!fv)
		fv = bpf_map_lookup_elem(&halfopen, &fk);
	if (fv) {
		if (fv->last_seen != now)
			fv->last_seen = now;
		if (p->proto == IPPROTO_TCP && fv->state == CT_SYN_SENT && (p->tcp_flags & TCPF_RST)) {
			/* The backend refused the connection: a health signal
			 * for the agent (and a reason to re-resolve its name). */
			struct backend_counters *bc = bpf_map_lookup_elem(&backend_stats, &slot);
			if (bc)
				bc->connect_refused++;
		}
		if (p->proto == IPPROTO_TCP) {
			__u8 st = next_tcp_state(fv->state, p->tcp_flags, 1);
			if (st != fv->state)
				fv->state = st;
		}
	}
	__u64 bytes = (long)data_end - (long)ctx->data;
	count_service(svc_id, bytes, 0);
	count_backend(slot, bytes, 0);
	GCOUNT(replies_translated);
	/* One call site: send_out is large (FIB lookup, ICMP errors) and
	 * every inlined copy costs instruction cache. */
	int act = send_cached(ctx, p, data_end, reply_hop(p->ip->daddr), p->ip->daddr, now, &rk);
	if (fconfirmed || !fv || !confirms(p))
		return act;

	/* Confirmed by the backend: the flow moves to conntrack, where
	 * floods of half-open flows cannot evict it. */
	struct ct_value nf = *fv;
	struct ct_value nr = *rv;
	if (nf.state == CT_SYN_SENT || nf.state == CT_SYN_RECV)
		nf.state = CT_ESTABLISHED;
	nr.state = nf.state;
	if (bpf_map_update_elem(&conntrack, &fk, &nf, BPF_ANY) ||
	    bpf_map_update_elem(&conntrack, &rk, &nr, BPF_ANY)) {
		GCOUNT(ct_update_failures);
		return act; /* still half-open: translated from there */
	}
	bpf_map_delete_elem(&halfopen, &fk);
	bpf_map_delete_elem(&halfopen, &rk);
	GCOUNT(flows_confirmed);
	return act;
}

/* handle_icmp translates ICMP errors about our flows (see icmp.h). The
 * quoted packet, reversed, is the key of the flow's entry: a forward entry
 * when the error is about a reply sent as the VIP, a reverse entry when it
 * is about a packet sluice forwarded to a backend. */
static __always_inline int handle_icmp(struct xdp_md *ctx, struct packet *p, void *data_end)
{
	struct icmp_quote q;
	if (parse_icmp_error(p, data_end, &q) || p->ip->daddr != q.inner->saddr ||
	    !header_ok(ctx, p, data_end)) {
		GCOUNT(passed_not_ours);
		return XDP_PASS;
	}
	struct ct_key k = {
		.saddr = q.inner->daddr,
		.daddr = q.inner->saddr,
		.sport = q.iports->dest,
		.dport = q.iports->source,
		.proto = q.inner->protocol,
	};
	struct ct_value *ct = bpf_map_lookup_elem(&conntrack, &k);
	if (!ct)
		ct = bpf_map_lookup_elem(&halfopen, &k);
	if (!ct) {
		GCOUNT(passed_not_ours);
		return XDP_PASS;
	}
	__be32 out_daddr;
	if (!(ct->flags & CT_F_REPLY)) {
		/* About a reply VIP -> client: the backend sent it as
		 * backend -> client (nat) or backend -> snat address (snat). */
		out_daddr = ct->daddr_new;
		quote_set_addr(&q, &q.inner->saddr, ct->daddr_new);
		quote_set_port(&q, &q.iports->source, ct->dport_new);
		if (ct->saddr_new) {
			quote_set_addr(&q, &q.inner->daddr, ct->saddr_new);
			quote_set_port(&q, &q.iports->dest, ct->sport_new);
		}
	} else {
		/* About a packet client -> VIP that went out as
		 * (client | snat address) -> backend. */
		out_daddr = ct->daddr_new ? ct->daddr_new : p->ip->daddr;
		quote_set_addr(&q, &q.inner->daddr, ct->saddr_new);
		quote_set_port(&q, &q.iports->dest, ct->sport_new);
		if (ct->daddr_new) {
			quote_set_addr(&q, &q.inner->saddr, ct->daddr_new);
			quote_set_port(&q, &q.iports->source, ct->dport_new);
		}
	}
	outer_set_daddr(p->ip, out_daddr);
	GCOUNT(icmp_translated);
	struct nexthop nh = {};
	__u16 mtu = 0;
	return send_out(ctx, p, data_end, &nh, &mtu, 0, NULL);
}

/* handle_fragment: an IPv4 fragment cannot be NATed (all but the first
 * carry no ports, and the first alone cannot be rewritten consistently
 * with the rest) and must never be passed on un-translated: the kernel
 * would forward a client's fragment to nowhere useful, and a backend's
 * reply fragment to the client with the backend's own address. Fragments
 * to a VIP and from a backend's address are dropped and counted; clients
 * and backends are expected to use path MTU discovery (TCP does; the ICMP
 * errors it needs are translated, see handle_icmp). A backend's own
 * fragmented traffic routed through sluice is dropped too: the address
 * alone cannot tell it from a reply. */
static __always_inline int handle_fragment(struct packet *p)
{
	struct addr_info *a = bpf_map_lookup_elem(&addrs, &p->ip->daddr);
	if (a && (a->flags & ADDR_VIP)) {
		struct svc_counters *s = svc_stats_of(a->svc_id);
		if (s)
			s->fragments++;
		return XDP_DROP;
	}
	a = bpf_map_lookup_elem(&addrs, &p->ip->saddr);
	if (a && (a->flags & ADDR_BACKEND)) {
		GCOUNT(backend_fragments);
		return XDP_DROP;
	}
	GCOUNT(passed_not_ours);
	return XDP_PASS;
}

#include "include/dsr.h" /* builds on send_cached and the maps above */

SEC("xdp")
int sluice_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct packet p = {};

	int pr = parse_packet(ctx, data, data_end, &p);
	if (pr == PARSE_NOT_L4 && p.proto == IPPROTO_ICMP)
		return handle_icmp(ctx, &p, data_end);
	if (pr == PARSE_NOT_IPV4 || pr == PARSE_NOT_L4) {
		GCOUNT(passed_not_ours);
		return XDP_PASS;
	}
	if (pr == PARSE_TRUNCATED || pr == PARSE_MALFORMED) {
		/* Could be anyone's, and nothing in it can be trusted: never
		 * rewritten, never tracked. The kernel drops what is really
		 * broken. */
		GCOUNT(malformed);
		return XDP_PASS;
	}

	struct svc_key sk = {
		.vip = p.ip->daddr,
		.port = 0,
		.proto = p.proto,
	};
	if (pr == PARSE_FRAGMENT)
		return handle_fragment(&p);
	sk.port = p.dport;

	struct svc_value *svc = bpf_map_lookup_elem(&services, &sk);
	if (!svc)
		return handle_reply(ctx, &p, data_end);
	if (!header_ok(ctx, &p, data_end)) {
		/* A header the kernel would drop: never rewritten (an
		 * incremental update would carry the error along) or tracked. */
		GCOUNT(malformed);
		return XDP_PASS;
	}
	if (p.ip->ttl <= 1) {
		/* Expires here: the kernel's Time Exceeded must quote the
		 * packet as the client sent it (to the VIP), so nothing is
		 * rewritten or tracked first. */
		GCOUNT(passed_ttl_exceeded);
		return XDP_PASS;
	}

	__u64 now = bpf_ktime_get_coarse_ns();
	__u32 svc_id = svc->id;
	__u64 bytes = (long)data_end - (long)data;
	struct ct_key k = {
		.saddr = p.ip->saddr,
		.daddr = p.ip->daddr,
		.sport = p.sport,
		.dport = p.dport,
		.proto = p.proto,
	};
	int tcp = p.proto == IPPROTO_TCP;
	int syn = tcp && (p.tcp_flags & TCPF_SYN) && !(p.tcp_flags & TCPF_ACK);

	int confirmed = 0;
	/* A confirmed entry of this tuple that the new flow replaces, if any. */
	struct ct_value *old_confirmed = NULL;
	struct ct_value *ct = lookup_forward(&k, now, &confirmed, &old_confirmed);
	if (ct) {
		__u32 slot = ct->backend_id;
		struct backend *b = bpf_map_lookup_elem(&backends, &slot);
		int stale = !b || b->gen != ct->backend_gen || b->state == BACKEND_REMOVED ||
			    b->state == BACKEND_FREE;
		/* A SYN never trusts an old entry blindly: only a retransmitted
		 * SYN of a flow still opening to an active backend stays. A
		 * reused client port must not land on a draining backend. */
		int opening = ct->state == CT_SYN_SENT || ct->state == CT_SYN_RECV;
		int keep = !syn || (opening && !stale && b->state == BACKEND_ACTIVE);
		if (!keep && confirmed)
			old_confirmed = ct;
		if (keep) {
			if (stale) {
				struct svc_counters *s = svc_stats_of(svc_id);
				if (!tcp) {
					if (s)
						s->drop_removed_backend++;
					return XDP_DROP;
				}
				int act = answer_rst(ctx, &p);
				if (s && act == XDP_TX)
					s->rst_removed_backend++;
				return act;
			}
			/* Make sure the flow's reverse entry is still there (LRU
			 * evicts the two independently): for a confirmed flow
			 * once a tick, for a half-open one on every packet (a
			 * handshake is a few packets, and floods churn that
			 * table). */
			if (!confirmed && svc->mode != MODE_DSR)
				ensure_reverse(&k, ct, 0);
			/* Write only what changed: the coarse clock ticks every few
			 * ms, and a clean cache line stays shared between CPUs. */
			if (ct->last_seen != now) {
				ct->last_seen = now;
				if (confirmed)
					ensure_reverse(&k, ct, 1);
			}
			if (tcp) {
				__u8 st = next_tcp_state(ct->state, p.tcp_flags, 0);
				if (st != ct->state)
					ct->state = st;
			}
			if (svc->mode == MODE_DSR) {
				count_service(svc_id, bytes, 0);
				count_backend(slot, bytes, 0);
				return dsr_send(ctx, &p, b, slot, now, &k);
			}
			if (rewrite(&p, data_end, ct->saddr_new, ct->sport_new, ct->daddr_new,
				    ct->dport_new))
				return XDP_DROP;
			count_service(svc_id, bytes, 0);
			count_backend(slot, bytes, 0);
			return send_cached(ctx, &p, data_end, bpf_map_lookup_elem(&backend_hops, &slot),
					   p.ip->daddr, now, &k);
		}
	}

	/* A new flow, or a mid-stream packet whose flow sluice does not know
	 * (evicted, or never seen: an ACK flood). Either way it goes to the
	 * half-open table, never straight to conntrack: only the backend's
	 * own answer confirms a flow (handle_reply), so spoofed packets that
	 * never complete a handshake churn the half-open table alone and
	 * cannot evict live flows. Maglev sends a mid-stream packet where its
	 * flow most likely went before. */
	struct backend *b = NULL;
	/* One hash per new flow: it picks the Maglev slot and, in snat
	 * mode, the first source port tried. */
	__u32 h = flow_hash(&k);
	__u32 slot = pick_backend(svc_id, h, &b);
	if (!slot || !b) {
		struct svc_counters *s = svc_stats_of(svc_id);
		if (!tcp) {
			if (s)
				s->drop_no_backend++;
			return XDP_DROP;
		}
		int act = answer_rst(ctx, &p);
		if (s && act == XDP_TX)
			s->rst_no_backend++;
		return act;
	}

	struct ct_value fv = {
		.last_seen = now,
		.service_id = svc_id,
		.backend_id = slot,
		.backend_gen = b->gen,
		.daddr_new = b->addr,
		.dport_new = b->port,
		.state = tcp ? (syn ? CT_SYN_SENT : CT_ESTABLISHED) : CT_UDP,
	};
	if (tcp && (p.tcp_flags & (TCPF_FIN | TCPF_RST)))
		fv.state = CT_CLOSING;
	struct ct_key rk = {
		.saddr = b->addr,
		.daddr = k.saddr,
		.sport = b->port,
		.dport = k.sport,
		.proto = k.proto,
	};
	struct ct_value rv = {
		.last_seen = now,
		.service_id = svc_id,
		.backend_id = slot,
		.backend_gen = b->gen,
		.saddr_new = k.daddr,
		.sport_new = k.dport,
		.state = fv.state,
		.flags = CT_F_REPLY,
	};
	if (svc->mode == MODE_DSR) {
		/* No reverse entry: replies never come through a node. */
		forget_confirmed(&k, old_confirmed);
		if (bpf_map_update_elem(&halfopen, &k, &fv, BPF_ANY))
			GCOUNT(ct_update_failures);
		count_service(svc_id, bytes, 1);
		count_backend(slot, bytes, 1);
		return dsr_send(ctx, &p, b, slot, now, &k);
	}
	if (svc->mode == MODE_SNAT) {
		/* The source becomes a sluice address and a port that no other
		 * flow to this backend uses: the reverse entry is inserted with
		 * BPF_NOEXIST, and a port a confirmed flow holds is skipped, so
		 * two flows can never share it. */
		__be32 src = svc->snat_addr ? svc->snat_addr : b->src_addr;
		__u32 lo = cfg.snat_port_min, hi = cfg.snat_port_max;
		int ok = 0;
		if (src && hi >= lo) {
			__u32 range = hi - lo + 1;
			rk.daddr = src;
			rv.daddr_new = k.saddr;
			rv.dport_new = k.sport;
#pragma unroll
			for (int i = 0; i < SNAT_TRIES; i++) {
				__u16 port = lo + (h + i * 7919) % range;
				rk.dport = bpf_htons(port);
				if (bpf_map_lookup_elem(&conntrack, &rk))
					continue;
				if (!bpf_map_update_elem(&halfopen, &rk, &rv, BPF_NOEXIST)) {
					ok = 1;
					break;
				}
			}
		}
		if (!ok) {
			struct svc_counters *s = svc_stats_of(svc_id);
			if (s)
				s->snat_failures++;
			if (!tcp)
				return XDP_DROP;
			return answer_rst(ctx, &p);
		}
		fv.saddr_new = src;
		fv.sport_new = rk.dport;
	} else {
		/* nat mode: the reverse key (backend, client, ports) does not
		 * name the VIP, so a client reaching two VIPs that share a
		 * backend from the same port would make both flows' replies
		 * leave as one VIP. The second flow is refused while the
		 * first lives. */
		struct ct_value *old = bpf_map_lookup_elem(&conntrack, &rk);
		int in_conntrack = old != NULL;
		int inserted = 0;
		if (!old) {
			/* Usually nothing is there: insert at once, look only
			 * when something is. */
			inserted = !bpf_map_update_elem(&halfopen, &rk, &rv, BPF_NOEXIST);
			if (!inserted)
				old = bpf_map_lookup_elem(&halfopen, &rk);
		}
		if (old && (old->saddr_new != rv.saddr_new || old->sport_new != rv.sport_new) &&
		    reverse_in_use(&rk, old, now)) {
			struct svc_counters *s = svc_stats_of(svc_id);
			if (!tcp) {
				if (s)
					s->drop_nat_conflict++;
				return XDP_DROP;
			}
			int act = answer_rst(ctx, &p);
			if (s && act == XDP_TX)
				s->rst_nat_conflict++;
			return act;
		}
		/* A confirmed reverse entry of a closed flow (the same client
		 * port, another VIP, the same backend) would be found first
		 * and translate this flow's replies to the other VIP. */
		if (in_conntrack)
			bpf_map_delete_elem(&conntrack, &rk);
		if (!inserted && bpf_map_update_elem(&halfopen, &rk, &rv, BPF_ANY))
			GCOUNT(ct_update_failures);
	}

	/* A confirmed entry of the same tuple (a closed flow whose client port
	 * is reused, an expired one) would take the new flow's next packets
	 * back to its old backend: it goes, with its reverse entry. */
	forget_confirmed(&k, old_confirmed);
	if (rewrite(&p, data_end, fv.saddr_new, fv.sport_new, fv.daddr_new, fv.dport_new))
		return XDP_DROP;
	/* The next hop towards a backend is the same for all its flows: a new
	 * flow uses the backend's cached one (no FIB lookup per SYN) and
	 * refreshes it when it had expired. */
	int act = send_cached(ctx, &p, data_end, bpf_map_lookup_elem(&backend_hops, &slot), p.ip->daddr,
			      now, &k);
	if (bpf_map_update_elem(&halfopen, &k, &fv, BPF_ANY))
		GCOUNT(ct_update_failures);
	count_service(svc_id, bytes, 1);
	count_backend(slot, bytes, 1);
	return act;
}
