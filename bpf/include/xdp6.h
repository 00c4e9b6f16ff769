/* The IPv6 data path: sluice_xdp (sluice.c) hands every IPv6 frame to
 * handle_ipv6. The logic is the IPv4 one (docs/architecture.md): a flow is
 * looked up in conntrack6, then halfopen6; a miss picks a backend from the
 * service's Maglev table (the same outer map and ids as IPv4) and goes to
 * halfopen6 until the backend confirms it. The difference is the layout: a
 * nat flow is one forward entry, and its replies find it by rebuilding the
 * forward key (the reply names the client, its port and the backend; the
 * VIP comes from nat_hint6, or from trying each nat service). Included by
 * sluice.c after the helpers both families share (counters, timeouts, TCP
 * states, the RST budget). */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "consts.h"
#include "structs6.h"
#include "maps6.h"
#include "parse6.h"
#include "nat6.h"
#include "rst6.h"
#include "icmp6.h"
#include "maglev.h"

/* So bpf2go emits the Go type of the flag (as sluice.c does for the rest). */
const enum ct6_flags *unused_ct6_flags __attribute__((unused));

static __always_inline __u32 flow_hash6(const struct ct6_key *k)
{
	__u32 h = cfg.hash_seed;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		h = mix32(h, k->saddr[i]);
		h = mix32(h, k->daddr[i]);
	}
	return flow_hash_end(h, k->sport, k->dport, k->proto);
}

/* pick_backend6: pick_backend over backends6 (maglev.h). */
DEFINE_PICK_BACKEND(pick_backend6, struct backend6, backends6)

/* lookup_forward6: a flow's live forward entry, in conntrack6
 * (*confirmed = 1) or halfopen6 (0); *stale, when given, gets a conntrack6
 * forward entry of the key that expired. */
static __always_inline struct ct6_value *lookup_forward6(const struct ct6_key *k, __u64 now, int *confirmed,
							 struct ct6_value **stale)
{
	struct ct6_value *ct = bpf_map_lookup_elem(&conntrack6, k);
	if (ct && !(ct->flags & CT6_F_REPLY)) {
		if (now <= ct->last_seen || now - ct->last_seen <= ct_timeout(ct->state)) {
			*confirmed = 1;
			return ct;
		}
		if (stale)
			*stale = ct;
	}
	ct = bpf_map_lookup_elem(&halfopen6, k);
	if (ct && !(ct->flags & CT6_F_REPLY) && (now <= ct->last_seen || now - ct->last_seen <= cfg.tcp_syn_timeout_ns)) {
		*confirmed = 0;
		return ct;
	}
	return NULL;
}

/* snat_reverse6 builds the reverse entry of the snat forward entry fv at
 * fk: keyed as the reply arrives (backend -> snat address and port), it
 * holds the VIP and the client the reply goes back as and to. */
static __always_inline void snat_reverse6(const struct ct6_key *fk, const struct ct6_value *fv, struct ct6_key *rk,
					  struct ct6_value *rv)
{
	addr6_copy(rk->saddr, fv->daddr_new);
	addr6_copy(rk->daddr, fv->saddr_new);
	rk->sport = fv->dport_new;
	rk->dport = fv->sport_new;
	rk->proto = fk->proto;
	rv->last_seen = fv->last_seen;
	rv->service_id = fv->service_id;
	rv->backend_id = fv->backend_id;
	rv->backend_gen = fv->backend_gen;
	addr6_copy(rv->saddr_new, fk->daddr);
	addr6_copy(rv->daddr_new, fk->saddr);
	rv->sport_new = fk->dport;
	rv->dport_new = fk->sport;
	rv->state = fv->state;
	rv->flags = CT6_F_REPLY;
}

/* ensure_reverse6: a snat flow's reverse entry, re-created from the
 * forward entry when LRU evicted it (see ensure_reverse). */
static __attribute__((noinline)) void ensure_reverse6(const struct ct6_key *fk, const struct ct6_value *fv, int confirmed)
{
	struct ct6_key rk = {};
	struct ct6_value rv = {};
	snat_reverse6(fk, fv, &rk, &rv);
	void *m = confirmed ? (void *)&conntrack6 : (void *)&halfopen6;
	if (bpf_map_lookup_elem(m, &rk))
		return;
	if (!bpf_map_update_elem(m, &rk, &rv, BPF_NOEXIST))
		GCOUNT(reverse_recreated);
}

/* forget_confirmed6 deletes the conntrack6 forward entry old at fk and, for
 * a snat flow, its reverse entry. */
static __attribute__((noinline)) void forget_confirmed6(const struct ct6_key *fk, struct ct6_value *old)
{
	if (!old)
		return;
	if (!addr6_is_zero(old->saddr_new)) {
		struct ct6_key rk = {};
		struct ct6_value rv = {};
		snat_reverse6(fk, old, &rk, &rv);
		bpf_map_delete_elem(&conntrack6, &rk);
	}
	bpf_map_delete_elem(&conntrack6, fk);
}

/* nat_find6 is the state of find_nat6 while it tries each service. */
struct nat_find6 {
	struct ct6_key fk; /* the forward key tried: client, candidate VIP */
	__be32 baddr[4];   /* the backend the reply comes from */
	__be32 skip_vip[4]; /* live: the new flow's own VIP, not tried */
	__be16 skip_port;
	__be16 bport;
	__u8 found;
	__u8 live;         /* conflict check: closing flows do not count */
	__u64 now;
};

/* nat_flow_matches: fv is a nat flow to the backend baddr:bport. */
static __always_inline int nat_flow_matches(const struct ct6_value *fv, const __be32 *baddr, __be16 bport)
{
	return fv->dport_new == bport && addr6_eq(fv->daddr_new, baddr) && addr6_is_zero(fv->saddr_new);
}

/* find_nat6 (a bpf_for_each_map_elem callback over services6) looks for a
 * live nat forward entry client -> VIP:port of each nat service of the
 * protocol that goes to the backend. */
static long find_nat6(void *map, struct svc6_key *key, struct svc6_value *val, struct nat_find6 *c)
{
	if (key->proto != c->fk.proto || val->mode != MODE_NAT)
		return 0;
	if (c->live && key->port == c->skip_port && addr6_eq(key->vip, c->skip_vip))
		return 0;
	addr6_copy(c->fk.daddr, key->vip);
	c->fk.dport = key->port;
	int confirmed;
	struct ct6_value *fv = lookup_forward6(&c->fk, c->now, &confirmed, NULL);
	if (fv && nat_flow_matches(fv, c->baddr, c->bport) && (!c->live || fv->state != CT_CLOSING)) {
		c->found = 1;
		return 1;
	}
	return 0;
}

/* walk_nat6 tries the VIP of every nat service of fk's protocol as fk's
 * destination (fk names the client and its port) and returns 1, with fk
 * completed, when one gives a live flow to the backend baddr:bport. live:
 * only flows that are not closing count, and fk's own VIP is skipped (the
 * conflict check of a new flow). A subprogram: its state stays off the
 * callers' stacks. Its cost grows with the number of IPv6 services; only
 * endpoints shared by several nat VIPs pay it. */
static __attribute__((noinline)) int walk_nat6(struct ct6_key *fk, const __be32 *baddr, __u32 bport, int live,
					       __u64 now)
{
	struct nat_find6 c = { .bport = (__be16)bport, .live = live, .skip_port = fk->dport, .now = now };
	c.fk = *fk;
	addr6_copy(c.baddr, baddr);
	addr6_copy(c.skip_vip, fk->daddr);
	bpf_for_each_map_elem(&services6, find_nat6, &c, 0);
	if (!c.found)
		return 0;
	addr6_copy(fk->daddr, c.fk.daddr);
	fk->dport = c.fk.dport;
	return 1;
}

/* lookup_nat6 finds the nat flow a reply rk (backend -> client) belongs
 * to: the forward key is rk reversed with the VIP of the endpoint's hint,
 * or, when the endpoint is shared by several nat VIPs and the hint's is not
 * the one, each nat service's VIP in turn. Fills *fk. */
static __always_inline struct ct6_value *lookup_nat6(const struct ct6_key *rk, __u64 now, struct ct6_key *fk,
						     int *confirmed)
{
	struct endpoint6 ep = { .port = rk->sport, .proto = rk->proto };
	addr6_copy(ep.addr, rk->saddr);
	struct nat_hint6_value *h = bpf_map_lookup_elem(&nat_hint6, &ep);
	if (!h)
		return NULL; /* no nat flow ever went to this endpoint */
	addr6_copy(fk->saddr, rk->daddr);
	fk->sport = rk->dport;
	fk->proto = rk->proto;
	addr6_copy(fk->daddr, h->vip);
	fk->dport = h->port;
	struct ct6_value *fv = lookup_forward6(fk, now, confirmed, NULL);
	if (fv && nat_flow_matches(fv, rk->saddr, rk->sport))
		return fv;
	if (!h->shared || !walk_nat6(fk, rk->saddr, rk->sport, 0, now))
		return NULL;
	return lookup_forward6(fk, now, confirmed, NULL);
}

/* nat_claim6 records that a new nat flow fk goes to the backend b, and
 * returns 1 when another VIP's live flow from the same client address and
 * port goes to the same backend endpoint: the replies could not be told
 * apart (see "Two nat VIPs sharing a backend" in docs/architecture.md),
 * and the new flow is refused. */
static __attribute__((noinline)) int nat_claim6(const struct ct6_key *fk, const struct backend6 *b, __u64 now)
{
	struct endpoint6 ep = { .port = b->port, .proto = fk->proto };
	addr6_copy(ep.addr, b->addr);
	struct nat_hint6_value *h = bpf_map_lookup_elem(&nat_hint6, &ep);
	if (!h) {
		struct nat_hint6_value nh = { .port = fk->dport };
		addr6_copy(nh.vip, fk->daddr);
		if (!bpf_map_update_elem(&nat_hint6, &ep, &nh, BPF_NOEXIST))
			return 0; /* the first flow to this endpoint */
		h = bpf_map_lookup_elem(&nat_hint6, &ep);
		if (!h) {
			GCOUNT(ct_update_failures);
			return 0;
		}
	}
	if (h->port != fk->dport || !addr6_eq(h->vip, fk->daddr)) {
		/* Another VIP's flows went here: from now on a reply that
		 * misses the hint tries every service. The hint follows the
		 * newest flow. */
		if (!h->shared)
			h->shared = 1;
		addr6_copy(h->vip, fk->daddr);
		h->port = fk->dport;
	} else if (!h->shared) {
		return 0; /* only this VIP's flows ever went here */
	}
	struct ct6_key c = *fk;
	return walk_nat6(&c, b->addr, b->port, 1, now);
}

/* ACT_PTB6 is what send_out6 returns for a packet too big for the next
 * hop: the caller answers with finish6 (make_ptb6 is not nested under
 * send_out6: the stack of a call chain is limited to 512 bytes). */
#define ACT_PTB6 0x100

/* send_out6 is send_out for IPv6, through the next hop cached in c (an
 * entry of backend_hops6 or reply_hops6; NULL: none). A subprogram: the FIB
 * lookup's arguments live in scratch6, off every caller's stack. */
static __attribute__((noinline)) int send_out6(struct xdp_md *ctx, struct packet6 *p, struct backend_hop6 *c,
					       __u64 now, int ptb)
{
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct scratch6 *sc = bpf_map_lookup_elem(&scratch6, &zero);
	if (!sc)
		return XDP_DROP;
	if (!c) {
		c = &sc->blank;
		__builtin_memset(c, 0, sizeof(*c));
	}
	__u32 ifindex = 0;
	switch (forward6(ctx, p, data_end, (struct bpf_fib_lookup *)sc->fib, &c->nh, &c->mtu, now, &ifindex)) {
	case FWD_REDIRECT:
		if (ifindex == ctx->ingress_ifindex)
			return XDP_TX;
		return bpf_redirect(ifindex, 0);
	case FWD_NO_NEIGH:
		GCOUNT(passed_no_neigh);
		return XDP_PASS;
	case FWD_TOO_BIG:
		if (ptb) {
			sc->mtu = c->mtu;
			return ACT_PTB6;
		}
		GCOUNT(passed_too_big);
		return XDP_PASS;
	default:
		GCOUNT(fib_failures);
		return XDP_PASS;
	}
}

/* answer_ptb6: the sender of a packet too big for the next hop gets a
 * Packet Too Big quoting what it sent (orig, its tuple as it arrived).
 * IPv6 routers never fragment, so this is the only way its path MTU
 * discovery learns. */
static __attribute__((noinline)) int answer_ptb6(struct xdp_md *ctx, __u32 l4_off, const struct ct6_key *orig)
{
	__u32 zero = 0;
	struct scratch6 *sc = bpf_map_lookup_elem(&scratch6, &zero);
	if (!sc || make_ptb6(ctx, l4_off, orig, sc->mtu))
		return XDP_DROP;
	GCOUNT(frag_needed_sent);
	return XDP_TX;
}

/* send_cached6: send_cached for IPv6; an entry holding another address
 * starts over. orig: the packet's tuple as it arrived, for a Packet Too Big
 * (NULL: a too-big packet goes to the kernel). */
static __always_inline int send_cached6(struct xdp_md *ctx, struct packet6 *p, struct backend_hop6 *c,
					const __be32 *addr, __u64 now, const struct ct6_key *orig)
{
	if (c && !addr6_eq(c->addr, addr)) {
		addr6_copy(c->addr, addr);
		c->nh.until = 0;
		c->mtu = 0;
	}
	int act = send_out6(ctx, p, c, now, orig != NULL);
	if (act == ACT_PTB6)
		act = answer_ptb6(ctx, p->l4_off, orig);
	return act;
}

static __always_inline struct backend_hop6 *reply_hop6(const __be32 *a)
{
	__u32 h = a[0] ^ a[1] ^ a[2] ^ a[3];
	h ^= h >> 16;
	h *= 0x7feb352d;
	h ^= h >> 15;
	__u32 idx = h & (REPLY_HOPS - 1);
	return bpf_map_lookup_elem(&reply_hops6, &idx);
}

static __always_inline int answer_rst6(struct xdp_md *ctx, struct packet6 *p)
{
	if (p->tcp_flags & TCPF_RST)
		return XDP_DROP;
	if (!rst_allowed()) {
		GCOUNT(rst_rate_limited);
		return XDP_DROP;
	}
	if (make_rst6(ctx, p->l4_off))
		return XDP_DROP;
	GCOUNT(rst_sent);
	return XDP_TX;
}

/* Why a packet to a VIP is not forwarded; each has its service counters. */
enum refusal6 {
	REFUSE_NO_BACKEND,
	REFUSE_REMOVED_BACKEND,
	REFUSE_NAT_CONFLICT,
	REFUSE_NO_SNAT_PORT,
};

/* refuse6 answers a packet sluice will not forward: RST for TCP, drop for
 * UDP, counted on the service by reason. */
static __always_inline int refuse6(struct xdp_md *ctx, struct packet6 *p, __u32 svc_id, int why)
{
	struct svc_counters *s = svc_stats_of(svc_id);
	if (s && why == REFUSE_NO_SNAT_PORT)
		s->snat_failures++;
	if (p->proto != IPPROTO_TCP) {
		if (s && why == REFUSE_NO_BACKEND)
			s->drop_no_backend++;
		else if (s && why == REFUSE_REMOVED_BACKEND)
			s->drop_removed_backend++;
		else if (s && why == REFUSE_NAT_CONFLICT)
			s->drop_nat_conflict++;
		return XDP_DROP;
	}
	int act = answer_rst6(ctx, p);
	if (s && act == XDP_TX) {
		if (why == REFUSE_NO_BACKEND)
			s->rst_no_backend++;
		else if (why == REFUSE_REMOVED_BACKEND)
			s->rst_removed_backend++;
		else if (why == REFUSE_NAT_CONFLICT)
			s->rst_nat_conflict++;
	}
	return act;
}

static __always_inline void key6_of(const struct packet6 *p, struct ct6_key *k)
{
	addr6_copy(k->saddr, SADDR6(p));
	addr6_copy(k->daddr, DADDR6(p));
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
}

/* note_direct_syn6: note_direct_syn for IPv6. */
static __always_inline void note_direct_syn6(struct packet6 *p)
{
	if (p->proto != IPPROTO_TCP || (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) != TCPF_SYN)
		return;
	struct endpoint6 e = { .port = p->dport };
	addr6_copy(e.addr, DADDR6(p));
	if (!bpf_map_lookup_elem(&backend_ports6, &e))
		return;
	struct ct6_key k = { .sport = p->dport, .dport = p->sport, .proto = IPPROTO_TCP };
	addr6_copy(k.saddr, DADDR6(p));
	addr6_copy(k.daddr, SADDR6(p));
	__u8 one = 1;
	bpf_map_update_elem(&direct_syns6, &k, &one, BPF_ANY);
}

/* to_local6: the packet is for this host (see to_local). */
static __attribute__((noinline)) int to_local6(struct xdp_md *ctx, struct packet6 *p)
{
	struct bpf_fib_lookup fib = {};
	fib.family = 10; /* AF_INET6 */
	fib.l4_protocol = p->proto;
	fib.sport = p->sport;
	fib.dport = p->dport;
	fib.tot_len = p->tot_len;
	addr6_copy(fib.ipv6_src, SADDR6(p));
	addr6_copy(fib.ipv6_dst, DADDR6(p));
	fib.ifindex = ctx->ingress_ifindex;
	return bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) == BPF_FIB_LKUP_RET_NOT_FWDED;
}

/* unknown_reply6: unknown_reply for IPv6. */
static __always_inline int unknown_reply6(struct xdp_md *ctx, struct packet6 *p, const struct ct6_key *rk)
{
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == (TCPF_SYN | TCPF_ACK)) {
		struct endpoint6 e = { .port = p->sport };
		addr6_copy(e.addr, SADDR6(p));
		if (bpf_map_lookup_elem(&backend_ports6, &e) && !bpf_map_lookup_elem(&direct_syns6, rk) &&
		    !to_local6(ctx, p)) {
			GCOUNT(synack_no_flow_drops);
			return XDP_DROP;
		}
	}
	GCOUNT(passed_not_ours);
	return XDP_PASS;
}

/* handle_reply6 reverse-translates backend -> client packets of IPv6 flows
 * (nat: found through the rebuilt forward key; snat: through the reverse
 * entry), and moves a flow the backend confirmed into conntrack6. */
static __attribute__((noinline)) int handle_reply6(struct xdp_md *ctx, struct packet6 *p)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct addr_info *from = bpf_map_lookup_elem(&addrs6, SADDR6(p));
	if (!from || !(from->flags & ADDR_BACKEND)) {
		note_direct_syn6(p);
		GCOUNT(passed_not_ours);
		return XDP_PASS;
	}
	__u64 now = bpf_ktime_get_coarse_ns();
	struct ct6_key rk = {};
	key6_of(p, &rk);
	struct ct6_key fk = {};
	int confirmed = 0, rconfirmed = 1;
	/* nat first (the flow's own entry, through the endpoint's hint: no
	 * reverse entry to look up), then snat (the reverse entry). */
	struct ct6_value *rv = NULL;
	struct ct6_value *fv = lookup_nat6(&rk, now, &fk, &confirmed);
	if (!fv) {
		rv = bpf_map_lookup_elem(&conntrack6, &rk);
		if (!rv || !(rv->flags & CT6_F_REPLY)) {
			rconfirmed = 0;
			rv = bpf_map_lookup_elem(&halfopen6, &rk);
			if (rv && !(rv->flags & CT6_F_REPLY))
				rv = NULL;
		}
		if (!rv)
			return unknown_reply6(ctx, p, &rk);
		/* snat: the reverse entry names the client and the VIP. */
		addr6_copy(fk.saddr, rv->daddr_new);
		addr6_copy(fk.daddr, rv->saddr_new);
		fk.sport = rv->dport_new;
		fk.dport = rv->sport_new;
		fk.proto = rk.proto;
		fv = lookup_forward6(&fk, now, &confirmed, NULL);
		/* A forward entry that took another port or backend since is
		 * not this reply's flow. */
		if (fv && (fv->sport_new != rk.dport || fv->dport_new != rk.sport ||
			   !addr6_eq(fv->saddr_new, rk.daddr) || !addr6_eq(fv->daddr_new, rk.saddr)))
			return unknown_reply6(ctx, p, &rk);
	}
	if (p->ip6->hop_limit <= 1) {
		GCOUNT(passed_ttl_exceeded);
		return XDP_PASS;
	}
	__u32 svc_id, slot;
	if (fv) {
		svc_id = fv->service_id;
		slot = fv->backend_id;
	} else {
		svc_id = rv->service_id;
		slot = rv->backend_id;
	}
	if (rewrite6(p, data_end, fk.daddr, fk.dport, fk.saddr, fk.sport))
		return XDP_DROP;
	if (rv && rv->last_seen != now)
		rv->last_seen = now;
	if (fv) {
		if (fv->last_seen != now)
			fv->last_seen = now;
		if (p->proto == IPPROTO_TCP) {
			if (fv->state == CT_SYN_SENT && (p->tcp_flags & TCPF_RST)) {
				struct backend_counters *bc = bpf_map_lookup_elem(&backend_stats, &slot);
				if (bc)
					bc->connect_refused++;
			}
			__u8 st = next_tcp_state(fv->state, p->tcp_flags, 1);
			if (st != fv->state)
				fv->state = st;
		}
	}
	__u64 bytes = (long)data_end - (long)ctx->data;
	count_service(svc_id, bytes, 0);
	count_backend(slot, bytes, 0);
	GCOUNT(replies_translated);
	int act = send_cached6(ctx, p, reply_hop6(fk.saddr), fk.saddr, now, &rk);
	int confirms = p->proto != IPPROTO_TCP || !(p->tcp_flags & (TCPF_SYN | TCPF_RST));
	if (!fv || (confirmed && (!rv || rconfirmed)) || !confirms)
		return act;

	/* Confirmed by the backend: into conntrack6, out of reach of floods
	 * of half-open flows (one insert and one delete per nat flow). The
	 * entries are copied from the map values themselves, which halfopen6
	 * is about to lose anyway. */
	if (fv->state == CT_SYN_SENT || fv->state == CT_SYN_RECV)
		fv->state = CT_ESTABLISHED;
	if (!confirmed && bpf_map_update_elem(&conntrack6, &fk, fv, BPF_ANY)) {
		GCOUNT(ct_update_failures);
		return act;
	}
	if (rv && !rconfirmed) {
		rv->state = fv->state;
		if (bpf_map_update_elem(&conntrack6, &rk, rv, BPF_ANY)) {
			GCOUNT(ct_update_failures);
			return act;
		}
		bpf_map_delete_elem(&halfopen6, &rk);
	}
	if (!confirmed)
		bpf_map_delete_elem(&halfopen6, &fk);
	GCOUNT(flows_confirmed);
	return act;
}

/* handle_icmp6 translates ICMPv6 errors about our flows (see icmp.h: the
 * quoted packet, reversed, is a flow's key). */
static __attribute__((noinline)) int handle_icmp6(struct xdp_md *ctx, struct packet6 *p)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct icmp6_quote q;
	if (parse_icmp6_error(p, data_end, &q) || !addr6_eq(DADDR6(p), (__be32 *)&q.inner->saddr)) {
		GCOUNT(passed_not_ours);
		return XDP_PASS;
	}
	struct ct6_key k = { .sport = q.iports->dest, .dport = q.iports->source, .proto = q.inner->nexthdr };
	addr6_copy(k.saddr, (__be32 *)&q.inner->daddr);
	addr6_copy(k.daddr, (__be32 *)&q.inner->saddr);
	__u64 now = bpf_ktime_get_coarse_ns();
	struct ct6_value *ct = bpf_map_lookup_elem(&conntrack6, &k);
	if (!ct)
		ct = bpf_map_lookup_elem(&halfopen6, &k);
	__be32 *qs = (__be32 *)&q.inner->saddr;
	__be32 *qd = (__be32 *)&q.inner->daddr;
	if (ct && !(ct->flags & CT6_F_REPLY)) {
		/* About a reply VIP -> client: the backend sent it as
		 * backend -> client (nat) or backend -> snat address (snat). */
		__be32 to[4];
		addr6_copy(to, ct->daddr_new);
		quote6_set_addr(&q, qs, to);
		quote6_set_port(&q, &q.iports->source, ct->dport_new);
		if (!addr6_is_zero(ct->saddr_new)) {
			quote6_set_addr(&q, qd, ct->saddr_new);
			quote6_set_port(&q, &q.iports->dest, ct->sport_new);
		}
		outer6_set_daddr(&q, p->ip6, to);
	} else if (ct) {
		/* About a packet snat address -> backend: it was client -> VIP. */
		__be32 to[4];
		addr6_copy(to, ct->daddr_new);
		quote6_set_addr(&q, qd, ct->saddr_new);
		quote6_set_port(&q, &q.iports->dest, ct->sport_new);
		quote6_set_addr(&q, qs, to);
		quote6_set_port(&q, &q.iports->source, ct->dport_new);
		outer6_set_daddr(&q, p->ip6, to);
	} else {
		/* nat: about a packet client -> backend, sent as client -> VIP. */
		struct ct6_key fk = {};
		int confirmed;
		if (!lookup_nat6(&k, now, &fk, &confirmed)) {
			GCOUNT(passed_not_ours);
			return XDP_PASS;
		}
		quote6_set_addr(&q, qd, fk.daddr);
		quote6_set_port(&q, &q.iports->dest, fk.dport);
	}
	GCOUNT(icmp_translated);
	return send_out6(ctx, p, NULL, 0, 0);
}

/* handle_fragment6: handle_fragment for IPv6 (fragments to a VIP or from
 * a backend's address are dropped and counted, never passed on
 * un-translated). */
static __always_inline int handle_fragment6(struct packet6 *p)
{
	struct addr_info *a = bpf_map_lookup_elem(&addrs6, DADDR6(p));
	if (a && (a->flags & ADDR_VIP)) {
		struct svc_counters *s = svc_stats_of(a->svc_id);
		if (s)
			s->fragments++;
		return XDP_DROP;
	}
	a = bpf_map_lookup_elem(&addrs6, SADDR6(p));
	if (a && (a->flags & ADDR_BACKEND)) {
		GCOUNT(backend_fragments);
		return XDP_DROP;
	}
	GCOUNT(passed_not_ours);
	return XDP_PASS;
}

/* snat_alloc6 gives the snat flow fv at k a sluice source address and a
 * port no other flow to the backend b holds (its reverse entry goes into
 * halfopen6 with BPF_NOEXIST, and a port a confirmed flow holds is
 * skipped), and returns 0; -1 when there is no source or no free port among
 * those tried. h picks the first port tried. */
static __attribute__((noinline)) int snat_alloc6(const struct ct6_key *k, struct ct6_value *fv,
						 const struct svc6_value *svc, const struct backend6 *b, __u32 h)
{
	__u32 lo = cfg.snat_port_min, hi = cfg.snat_port_max;
	if (hi < lo)
		return -1;
	addr6_copy(fv->saddr_new, addr6_is_zero(svc->snat_addr) ? b->src_addr : svc->snat_addr);
	if (addr6_is_zero(fv->saddr_new))
		return -1;
	__u32 range = hi - lo + 1;
	struct ct6_key rk = {};
	struct ct6_value rv = {};
#pragma unroll
	for (int i = 0; i < SNAT_TRIES; i++) {
		fv->sport_new = bpf_htons(lo + (h + i * 7919) % range);
		snat_reverse6(k, fv, &rk, &rv);
		if (bpf_map_lookup_elem(&conntrack6, &rk))
			continue;
		if (!bpf_map_update_elem(&halfopen6, &rk, &rv, BPF_NOEXIST))
			return 0;
	}
	return -1;
}

/* new_flow6 pins a new flow (or a packet of a flow sluice does not know)
 * to a backend: into halfopen6 until the backend confirms it. old is a
 * confirmed entry of the same key that the new flow replaces. */
static __attribute__((noinline)) int new_flow6(struct xdp_md *ctx, struct packet6 *p, struct svc6_value *svc,
					       const struct ct6_key *k, struct ct6_value *old)
{
	void *data_end = (void *)(long)ctx->data_end;
	__u64 now = bpf_ktime_get_coarse_ns();
	__u64 bytes = (long)data_end - (long)ctx->data;
	__u32 svc_id = svc->id;
	int tcp = p->proto == IPPROTO_TCP;
	int syn = tcp && (p->tcp_flags & TCPF_SYN) && !(p->tcp_flags & TCPF_ACK);

	/* A new flow (or a packet of a flow sluice does not know): into
	 * halfopen6 until the backend confirms it. */
	struct backend6 *b = NULL;
	__u32 h = flow_hash6(k);
	__u32 slot = pick_backend6(svc_id, h, &b);
	if (!slot || !b)
		return refuse6(ctx, p, svc_id, REFUSE_NO_BACKEND);

	__u32 zero = 0;
	struct scratch6 *sc = bpf_map_lookup_elem(&scratch6, &zero);
	if (!sc)
		return XDP_DROP;
	struct ct6_value *fv = &sc->fv;
	__builtin_memset(fv, 0, sizeof(*fv));
	fv->last_seen = now;
	fv->service_id = svc_id;
	fv->backend_id = slot;
	fv->backend_gen = b->gen;
	fv->dport_new = b->port;
	fv->state = tcp ? (syn ? CT_SYN_SENT : CT_ESTABLISHED) : CT_UDP;
	addr6_copy(fv->daddr_new, b->addr);
	if (tcp && (p->tcp_flags & (TCPF_FIN | TCPF_RST)))
		fv->state = CT_CLOSING;
	if (svc->mode == MODE_SNAT) {
		if (snat_alloc6(k, fv, svc, b, h))
			return refuse6(ctx, p, svc_id, REFUSE_NO_SNAT_PORT);
	} else if (nat_claim6(k, b, now)) {
		return refuse6(ctx, p, svc_id, REFUSE_NAT_CONFLICT);
	}

	forget_confirmed6(k, old);
	if (rewrite6(p, data_end, fv->saddr_new, fv->sport_new, fv->daddr_new, fv->dport_new))
		return XDP_DROP;
	int act = send_cached6(ctx, p, bpf_map_lookup_elem(&backend_hops6, &slot), fv->daddr_new, now, k);
	if (bpf_map_update_elem(&halfopen6, k, fv, BPF_ANY))
		GCOUNT(ct_update_failures);
	count_service(svc_id, bytes, 1);
	count_backend(slot, bytes, 1);
	return act;
}

/* established6 forwards a packet of the live flow ct at k (confirmed: in
 * conntrack6) to its backend. */
static __attribute__((noinline)) int established6(struct xdp_md *ctx, struct packet6 *p, struct ct6_value *ct,
						  const struct ct6_key *k, int confirmed)
{
	void *data_end = (void *)(long)ctx->data_end;
	__u64 now = bpf_ktime_get_coarse_ns();
	__u64 bytes = (long)data_end - (long)ctx->data;
	__u32 slot = ct->backend_id;
	/* A snat flow's reverse entry may have been evicted (LRU evicts the
	 * two independently): checked on every packet of a half-open flow,
	 * once a tick of a confirmed one (see ensure_reverse). */
	int snat = !addr6_is_zero(ct->saddr_new);
	if (snat && !confirmed)
		ensure_reverse6(k, ct, 0);
	if (ct->last_seen != now) {
		ct->last_seen = now;
		if (snat && confirmed)
			ensure_reverse6(k, ct, 1);
	}
	if (p->proto == IPPROTO_TCP) {
		__u8 st = next_tcp_state(ct->state, p->tcp_flags, 0);
		if (st != ct->state)
			ct->state = st;
	}
	if (rewrite6(p, data_end, ct->saddr_new, ct->sport_new, ct->daddr_new, ct->dport_new))
		return XDP_DROP;
	count_service(ct->service_id, bytes, 0);
	count_backend(slot, bytes, 0);
	return send_cached6(ctx, p, bpf_map_lookup_elem(&backend_hops6, &slot), ct->daddr_new, now, k);
}

/* handle_ipv6 is the IPv6 half of sluice_xdp. A subprogram of its own
 * (noinline): the IPv4 path does not carry its instructions. */
static __attribute__((noinline)) int handle_ipv6(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct packet6 p = {};
	int pr = parse_packet6(data, data_end, &p);
	if (pr == PARSE_NOT_L4 && p.proto == NEXTHDR_ICMPV6)
		return handle_icmp6(ctx, &p);
	if (pr == PARSE_NOT_IPV4 || pr == PARSE_NOT_L4) {
		GCOUNT(passed_not_ours);
		return XDP_PASS;
	}
	if (pr == PARSE_TRUNCATED || pr == PARSE_MALFORMED) {
		GCOUNT(malformed);
		return XDP_PASS;
	}
	if (pr == PARSE_FRAGMENT)
		return handle_fragment6(&p);

	__u32 zero = 0;
	struct scratch6 *sc = bpf_map_lookup_elem(&scratch6, &zero);
	if (!sc)
		return XDP_PASS;
	struct svc6_key *sk = &sc->sk;
	addr6_copy(sk->vip, DADDR6(&p));
	sk->port = p.dport;
	sk->proto = p.proto;
	sk->pad = 0;
	struct svc6_value *svc = bpf_map_lookup_elem(&services6, sk);
	if (!svc)
		return handle_reply6(ctx, &p);
	if (p.ip6->hop_limit <= 1) {
		GCOUNT(passed_ttl_exceeded);
		return XDP_PASS;
	}

	__u64 now = bpf_ktime_get_coarse_ns();
	__u32 svc_id = svc->id;
	struct ct6_key *k = &sc->k;
	__builtin_memset(k, 0, sizeof(*k));
	key6_of(&p, k);
	int tcp = p.proto == IPPROTO_TCP;
	int syn = tcp && (p.tcp_flags & TCPF_SYN) && !(p.tcp_flags & TCPF_ACK);

	int confirmed = 0;
	struct ct6_value *old_confirmed = NULL;
	struct ct6_value *ct = lookup_forward6(k, now, &confirmed, &old_confirmed);
	if (ct) {
		__u32 slot = ct->backend_id;
		struct backend6 *b = bpf_map_lookup_elem(&backends6, &slot);
		int stale = !b || b->gen != ct->backend_gen || b->state == BACKEND_REMOVED ||
			    b->state == BACKEND_FREE;
		/* A SYN never trusts an old entry blindly (see sluice.c). */
		int opening = ct->state == CT_SYN_SENT || ct->state == CT_SYN_RECV;
		int keep = !syn || (opening && !stale && b->state == BACKEND_ACTIVE);
		if (!keep && confirmed)
			old_confirmed = ct;
		if (keep) {
			if (stale)
				return refuse6(ctx, &p, svc_id, REFUSE_REMOVED_BACKEND);
			return established6(ctx, &p, ct, k, confirmed);
		}
	}
	return new_flow6(ctx, &p, svc, k, old_confirmed);
}
