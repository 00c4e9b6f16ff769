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
#include "include/config.h"
#include "include/parse.h"
#include "include/csum.h"
#include "include/nat.h"
#include "include/flow.h"
#include "include/maglev.h"
#include "include/rst.h"
#include "include/icmp.h"
#include "include/toobig.h"

char __license[] SEC("license") = "GPL";

/* Unused instances so bpf2go emits Go types for every shared struct/enum. */
const struct svc_counters *unused_svc_stats __attribute__((unused));
const struct backend_counters *unused_backend_stats __attribute__((unused));
const struct global_counters *unused_global_stats __attribute__((unused));
const enum backend_state *unused_backend_state __attribute__((unused));
const enum ct_state *unused_ct_state __attribute__((unused));
const enum ep_flags *unused_ep_flags __attribute__((unused));
const enum svc_mode *unused_svc_mode __attribute__((unused));
const enum addr_flags *unused_addr_flags __attribute__((unused));

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

/* flow_hash_end mixes the ports and protocol into h and finishes it (the
 * avalanche step), the same for both families' flow hashes. */
static __always_inline __u32 flow_hash_end(__u32 h, __be16 sport, __be16 dport, __u8 proto)
{
	h = mix32(h, ((__u32)sport << 16) | dport);
	h = mix32(h, proto);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 flow_hash(const struct ct_key *k)
{
	__u32 h = cfg.hash_seed;
	h = mix32(h, k->saddr);
	h = mix32(h, k->daddr);
	return flow_hash_end(h, k->sport, k->dport, k->proto);
}

DEFINE_PICK_BACKEND(pick_backend, struct backend, backends)

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


/* send_out forwards the rewritten packet p; orig is its tuple as it
 * arrived (before the rewrite), for the ICMP error that tells the sender a
 * packet was too big (NULL: no error is sent, the kernel has it). */
static __always_inline int send_out(struct xdp_md *ctx, struct packet *p, void *data_end,
				    struct nexthop *nh, __u16 *mtu, __u64 now, const struct ct_key *orig)
{
	__u32 ifindex = 0;
	int fwd = forward(ctx, p, data_end, nh, mtu, now, cfg.nexthop_cache_ns, &ifindex);
	if (__builtin_expect(fwd == FWD_REDIRECT, 1)) {
		if (ifindex == ctx->ingress_ifindex)
			return XDP_TX;
		return bpf_redirect(ifindex, 0);
	}
	switch (fwd) {
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
	if (__builtin_expect(c->addr != addr, 0)) {
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

/* answer_rst and handle_fragment are BPF-to-BPF calls, not inlined: cold
 * paths (refused flows, fragments) called from several places, whose
 * inlined copies made the JIT image 47 KB and every hot packet pay for it
 * in instruction cache (measured with BenchmarkXDP: established packets
 * 1.2x the baseline inlined, 1.0x called). handle_icmp stays inlined: as a
 * call, its frame and the caller's exceed the 512-byte stack. */
static __noinline int answer_rst(struct xdp_md *ctx, struct packet *p)
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


/* reply_without_flow handles a packet from a backend's service port that
 * matches no flow. When the endpoint serves exactly one nat service of the
 * packet's protocol, the reply is translated from backend_ports alone: the
 * flow's entry may be gone (evicted) or never have been here (another node
 * of an ECMP group forwarded the client's packets), and the VIP and port
 * it must come from are known all the same. Not so for the host's own
 * connections to the backend (the L7 proxy's, health checks: a FIB lookup
 * says the destination is local) and for clients that reached the
 * backend's port directly (their SYN noted in direct_syns): those pass
 * untouched. Otherwise (several nat services, or none) a SYN-ACK answers
 * a SYN sluice forwarded and forgot (a flood evicted its half-open entry):
 * dropped, never passed on with the backend's address; the client
 * retransmits its SYN. Anything else cannot be told from the backend's
 * own traffic and passes untouched. */
static __always_inline int reply_without_flow(struct xdp_md *ctx, struct packet *p, void *data_end,
					      const struct ct_key *rk, const struct ep_info *ep)
{
	const struct ep_service *sole = sole_nat_service(ep, p->proto);
	int synack = p->proto == IPPROTO_TCP && (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == (TCPF_SYN | TCPF_ACK);
	if (!sole && !synack) {
		GCOUNT(passed_not_ours);
		return XDP_PASS;
	}
	if (bpf_map_lookup_elem(&direct_syns, rk) || to_local(ctx, p)) {
		GCOUNT(passed_not_ours);
		return XDP_PASS;
	}
	if (!sole) {
		GCOUNT(synack_no_flow_drops);
		return XDP_DROP;
	}
	if (p->ip->ttl <= 1) {
		GCOUNT(passed_ttl_exceeded);
		return XDP_PASS;
	}
	__u32 svc_id = sole->id;
	if (rewrite(p, data_end, sole->vip, sole->port, 0, 0))
		return XDP_DROP;
	count_service(svc_id, (long)data_end - (long)ctx->data, 0);
	GCOUNT(replies_without_flow);
	return send_cached(ctx, p, data_end, reply_hop(p->ip->daddr), p->ip->daddr, bpf_ktime_get_coarse_ns(), rk);
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
 * confirmed (conntrack) or half-open, found from the reply's tuple (see
 * flow.h); the backend's confirmation moves a half-open flow into
 * conntrack. */
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
	/* ...from a backend's service port: its other traffic is its own. */
	struct endpoint e = {
		.addr = p->ip->saddr,
		.port = p->sport,
	};
	struct ep_info *ep = bpf_map_lookup_elem(&backend_ports, &e);
	if (!ep) {
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
	__u64 now = bpf_ktime_get_coarse_ns();
	struct reply_flow f = {};
	if (!find_reply_flow(&rk, ep, now, &f) || !f.fv)
		return reply_without_flow(ctx, p, data_end, &rk, ep);
	if (p->ip->ttl <= 1) {
		/* As for the forward direction: the Time Exceeded the kernel
		 * sends the backend quotes what the backend sent. */
		GCOUNT(passed_ttl_exceeded);
		return XDP_PASS;
	}
	/* A half-open fv is this CPU's validated copy of its slot (ho_lookup):
	 * changes to it are written back with ho_touch. */
	struct ct_value *fv = f.fv;
	__u32 svc_id = fv->service_id;
	__u32 slot = fv->backend_id;
	int snat = fv->saddr_new != 0;
	if (fv->last_seen != now)
		fv->last_seen = now;
	if (p->proto == IPPROTO_TCP) {
		if (fv->state == CT_SYN_SENT && (p->tcp_flags & TCPF_RST)) {
			/* The backend refused the connection: a health signal
			 * for the agent (and a reason to re-resolve its name). */
			struct backend_counters *bc = bpf_map_lookup_elem(&backend_stats, &slot);
			if (bc)
				bc->connect_refused++;
		}
		__u8 st = next_tcp_state(fv->state, p->tcp_flags, 1);
		if (st != fv->state)
			fv->state = st;
	}
	/* From the VIP and its port; in snat mode to the client too. */
	if (rewrite(p, data_end, f.fk.daddr, f.fk.dport, snat ? f.fk.saddr : 0, snat ? f.fk.sport : 0))
		return XDP_DROP;
	__u64 bytes = (long)data_end - (long)ctx->data;
	count_service(svc_id, bytes, 0);
	count_backend(slot, bytes, 0);
	GCOUNT(replies_translated);
	/* One call site: send_out is large (FIB lookup, ICMP errors) and
	 * every inlined copy costs instruction cache. */
	int act = send_cached(ctx, p, data_end, reply_hop(p->ip->daddr), p->ip->daddr, now, &rk);
	if (f.confirmed)
		return act;
	if (!confirms(p)) {
		ho_touch(&f.fk, fv);
		return act;
	}

	/* Confirmed by the backend: the flow moves to conntrack, where
	 * floods of half-open flows cannot evict it: one insert and one
	 * delete (and the same for an snat flow's reverse entry). */
	struct ct_value nf = *fv;
	if (nf.state == CT_SYN_SENT || nf.state == CT_SYN_RECV)
		nf.state = CT_ESTABLISHED;
	if (bpf_map_update_elem(&conntrack, &f.fk, &nf, BPF_ANY)) {
		GCOUNT(ct_update_failures);
		ho_touch(&f.fk, fv);
		return act; /* still half-open: translated from there */
	}
	if (snat) {
		if (bpf_map_update_elem(&snat_rev, &rk, &f.fk, BPF_ANY))
			GCOUNT(ct_update_failures); /* re-created by the client's next packet */
		bpf_map_delete_elem(&snat_rev_ho, &rk);
	}
	ho_forget(&f.fk);
	GCOUNT(flows_confirmed);
	return act;
}

/* handle_icmp translates ICMP errors about our flows (see icmp.h). The
 * quoted packet, reversed, is either a flow's key (the error is about a
 * reply sent as the VIP) or a reply's tuple (the error is about a packet
 * sluice forwarded to a backend), whose flow is found as a reply's is. */
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
	__u64 now = bpf_ktime_get_coarse_ns();
	__be32 out_daddr;
	int confirmed;
	struct ct_value *ct = lookup_forward(&k, now, &confirmed, NULL);
	if (ct) {
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
		 * (client | snat address) -> backend: k is its reply's tuple. */
		struct endpoint e = {
			.addr = k.saddr,
			.port = k.sport,
		};
		struct ep_info *ep = bpf_map_lookup_elem(&backend_ports, &e);
		struct reply_flow f = {};
		if (!ep || !find_reply_flow(&k, ep, now, &f) || !f.fv) {
			GCOUNT(passed_not_ours);
			return XDP_PASS;
		}
		int snat = f.fv->saddr_new != 0;
		out_daddr = snat ? f.fk.saddr : p->ip->daddr;
		quote_set_addr(&q, &q.inner->daddr, f.fk.daddr);
		quote_set_port(&q, &q.iports->dest, f.fk.dport);
		if (snat) {
			quote_set_addr(&q, &q.inner->saddr, f.fk.saddr);
			quote_set_port(&q, &q.iports->source, f.fk.sport);
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
static __noinline int handle_fragment(struct packet *p)
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


/* refuse_new_flow answers a new flow sluice will not take: an RST for TCP
 * (rate limited), a drop for UDP; counted in the service's rst/drop pair. */
#define refuse_new_flow(ctx, p, tcp, s, rst_field, drop_field)      \
	({                                                         \
		int __act = XDP_DROP;                              \
		if (!(tcp)) {                                      \
			if (s)                                     \
				(s)->drop_field++;                 \
		} else {                                           \
			__act = answer_rst(ctx, p);                \
			if ((s) && __act == XDP_TX)                \
				(s)->rst_field++;                  \
		}                                                  \
		__act;                                             \
	})

/* nat_conflict: in nat mode the backend sees the client's own address and
 * port, so two live flows from one client port to one backend through two
 * VIPs would be one connection to it, and a reply could not tell which VIP
 * it must come from. A new flow k to backend b is refused (1) while
 * another VIP's flow of that client port to b lives; a closing one is
 * forgotten instead (the backend takes a new SYN on a tuple in TIME_WAIT,
 * and its entry would be found first for the new flow's replies). Only an
 * endpoint of several nat services pays for the check, and no new flow
 * at all while no endpoint serves several (nat_shared, maps.h). */
static __always_inline int nat_conflict(const struct ct_key *k, const struct backend *b, __u64 now)
{
	__u32 zero = 0;
	__u32 *shared = bpf_map_lookup_elem(&nat_shared, &zero);
	if (!shared || !*shared)
		return 0;
	struct endpoint e = {
		.addr = b->addr,
		.port = b->port,
	};
	struct ep_info *ep = bpf_map_lookup_elem(&backend_ports, &e);
	if (!ep || ep->nat_count < 2)
		return 0;
	struct ct_key ok = {};
	int confirmed;
	struct ct_value *other = find_nat_flow(k->saddr, k->sport, k->proto, b->addr, b->port, ep, k->daddr,
					       k->dport, now, &ok, &confirmed);
	if (!other)
		return 0;
	if (other->state != CT_CLOSING)
		return 1;
	forget_flow(&ok, other, confirmed);
	return 0;
}

/* snat_source allocates the snat address and port of a new snat flow k to
 * backend b: a port that no other flow to this backend uses (its reverse
 * entry is inserted with BPF_NOEXIST, and a port a confirmed flow holds is
 * skipped), so two flows never share it. 0: none free. */
static __always_inline int snat_source(const struct ct_key *k, const struct svc_value *svc, const struct backend *b,
				       __u32 h, struct ct_value *fv)
{
	__be32 src = svc->snat_addr ? svc->snat_addr : b->src_addr;
	__u32 lo = cfg.snat_port_min, hi = cfg.snat_port_max;
	if (!src || hi < lo)
		return 0;
	__u32 range = hi - lo + 1;
	struct ct_key rk = {
		.saddr = b->addr,
		.daddr = src,
		.sport = b->port,
		.proto = k->proto,
	};
#pragma unroll
	for (int i = 0; i < SNAT_TRIES; i++) {
		__u16 port = lo + (h + i * 7919) % range;
		rk.dport = bpf_htons(port);
		if (bpf_map_lookup_elem(&snat_rev, &rk))
			continue;
		/* The flow's own reverse entry, left by its SYN whose
		 * half-open slot another flow took since: the same port
		 * again, so the backend sees one connection. */
		struct ct_key *own = bpf_map_lookup_elem(&snat_rev_ho, &rk);
		if (own && ct_key_eq(own, k)) {
			fv->saddr_new = src;
			fv->sport_new = rk.dport;
			return 1;
		}
		if (!own && !bpf_map_update_elem(&snat_rev_ho, &rk, k, BPF_NOEXIST)) {
			fv->saddr_new = src;
			fv->sport_new = rk.dport;
			return 1;
		}
	}
	return 0;
}

/* forget_confirmed deletes the confirmed entry of new flow k's tuple (a
 * closed flow whose client port is reused, an expired one), with its snat
 * reverse entry: its next packets would find it first and follow it back
 * to its old backend. old is the entry when the caller found it; a SYN
 * (syn) looks it up here, once its own flow is stored. Whether the flow's
 * first packet goes out before or after the old entry goes changes
 * nothing: both happen before the program returns. */
static __always_inline void forget_confirmed(const struct ct_key *k, struct ct_value *old, int syn)
{
	if (syn && !old)
		old = bpf_map_lookup_elem(&conntrack, k);
	if (old)
		forget_flow(k, old, 1);
}

#include "include/dsr.h" /* builds on send_cached and the maps above */

/* handle_vip forwards a packet to a VIP's service: its flow's backend, or
 * for a new flow the one Maglev picks, tracked half-open until the backend
 * confirms it. */
static __always_inline int handle_vip(struct xdp_md *ctx, struct packet *p, void *data_end,
				      const struct svc_value *svc)
{
	if (__builtin_expect(!header_ok(ctx, p, data_end), 0)) {
		/* A header the kernel would drop: never rewritten (an
		 * incremental update would carry the error along) or tracked. */
		GCOUNT(malformed);
		return XDP_PASS;
	}
	if (__builtin_expect(p->ip->ttl <= 1, 0)) {
		/* Expires here: the kernel's Time Exceeded must quote the
		 * packet as the client sent it (to the VIP), so nothing is
		 * rewritten or tracked first. */
		GCOUNT(passed_ttl_exceeded);
		return XDP_PASS;
	}

	__u64 now = bpf_ktime_get_coarse_ns();
	__u32 svc_id = svc->id;
	__u64 bytes = (long)data_end - (long)ctx->data;
	struct ct_key k = {
		.saddr = p->ip->saddr,
		.daddr = p->ip->daddr,
		.sport = p->sport,
		.dport = p->dport,
		.proto = p->proto,
	};
	int tcp = p->proto == IPPROTO_TCP;
	int syn = tcp && (p->tcp_flags & TCPF_SYN) && !(p->tcp_flags & TCPF_ACK);

	int confirmed = 0;
	/* A confirmed entry of this tuple that the new flow replaces, if any. */
	struct ct_value *old_confirmed = NULL;
	/* A SYN never keeps a confirmed entry (a confirmed flow is past its
	 * handshake: only a retransmitted SYN of a flow still opening stays),
	 * so it looks in the half-open table alone here, and at a confirmed
	 * entry of its tuple only once the new flow is on its way (below):
	 * that lookup's cold bucket then overlaps the rest of the work instead
	 * of holding up the pick (docs/benchmarks.md). */
	__u64 kh = 0; /* k's half-open hash, once a SYN's lookup computed it */
	struct ct_value *ct = syn ? ho_lookup(&k, now, &kh) : lookup_forward(&k, now, &confirmed, &old_confirmed);
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
		if (__builtin_expect(syn && keep, 0)) {
			/* A retransmitted SYN keeps its half-open flow unless a
			 * live confirmed entry of the tuple is there too (found
			 * first by the flow's next packets): then it picks again,
			 * and that entry goes. */
			struct ct_value *c = bpf_map_lookup_elem(&conntrack, &k);
			if (c && !ct_expired(c, now)) {
				keep = 0;
				old_confirmed = c;
			}
		}
		if (__builtin_expect(keep, 1)) {
			if (__builtin_expect(stale, 0)) {
				struct svc_counters *s = svc_stats_of(svc_id);
				return refuse_new_flow(ctx, p, tcp, s, rst_removed_backend, drop_removed_backend);
			}
			/* An snat flow's reverse entry must still be there (LRU
			 * evicts it alone): for a confirmed flow once a tick,
			 * for a half-open one on every packet (a handshake is a
			 * few packets, and floods churn that table). */
			if (__builtin_expect(!confirmed, 0))
				ensure_snat_rev(&k, ct, 0);
			/* Write only what changed: the coarse clock ticks every few
			 * ms, and a clean cache line stays shared between CPUs. */
			int dirty = 0;
			if (ct->last_seen != now) {
				ct->last_seen = now;
				dirty = 1;
				if (confirmed)
					ensure_snat_rev(&k, ct, 1);
			}
			if (tcp) {
				__u8 st = next_tcp_state(ct->state, p->tcp_flags, 0);
				if (st != ct->state) {
					ct->state = st;
					dirty = 1;
				}
			}
			/* A half-open ct is a copy of its slot (ho_lookup). */
			if (__builtin_expect(!confirmed && dirty, 0))
				ho_touch(&k, ct);
			if (__builtin_expect(svc->mode == MODE_DSR, 0)) {
				/* The backend's answer never passes a node: a DSR
				 * flow is confirmed by the client's second packet
				 * (the handshake's ACK), so spoofed one-packet
				 * floods still churn the half-open table alone. */
				if (!confirmed && !syn)
					dsr_confirm(&k, ct);
				count_service(svc_id, bytes, 0);
				count_backend(slot, bytes, 0);
				return dsr_send(ctx, p, b, slot, now, &k);
			}
			if (rewrite(p, data_end, ct->saddr_new, ct->sport_new, ct->daddr_new, ct->dport_new))
				return XDP_DROP;
			count_service(svc_id, bytes, 0);
			count_backend(slot, bytes, 0);
			return send_cached(ctx, p, data_end, bpf_map_lookup_elem(&backend_hops, &slot),
					   p->ip->daddr, now, &k);
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
		return refuse_new_flow(ctx, p, tcp, s, rst_no_backend, drop_no_backend);
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
	if (tcp && (p->tcp_flags & (TCPF_FIN | TCPF_RST)))
		fv.state = CT_CLOSING;
	if (svc->mode == MODE_SNAT) {
		if (!snat_source(&k, svc, b, h, &fv)) {
			struct svc_counters *s = svc_stats_of(svc_id);
			if (s)
				s->snat_failures++;
			if (!tcp)
				return XDP_DROP;
			return answer_rst(ctx, p);
		}
	} else if (svc->mode == MODE_NAT && nat_conflict(&k, b, now)) {
		struct svc_counters *s = svc_stats_of(svc_id);
		return refuse_new_flow(ctx, p, tcp, s, rst_nat_conflict, drop_nat_conflict);
	}

	if (svc->mode == MODE_DSR) {
		if (ho_store(&k, &fv, kh))
			GCOUNT(ct_update_failures);
		forget_confirmed(&k, old_confirmed, syn);
		count_service(svc_id, bytes, 1);
		count_backend(slot, bytes, 1);
		return dsr_send(ctx, p, b, slot, now, &k);
	}
	if (rewrite(p, data_end, fv.saddr_new, fv.sport_new, fv.daddr_new, fv.dport_new))
		return XDP_DROP;
	/* The next hop towards a backend is the same for all its flows: a new
	 * flow uses the backend's cached one (no FIB lookup per SYN) and
	 * refreshes it when it had expired. */
	int act = send_cached(ctx, p, data_end, bpf_map_lookup_elem(&backend_hops, &slot), p->ip->daddr, now, &k);
	/* The flow's half-open state: one slot written, no hash-table insert
	 * (maps.h, halfopen). */
	if (ho_store(&k, &fv, kh))
		GCOUNT(ct_update_failures);
	forget_confirmed(&k, old_confirmed, syn);
	count_service(svc_id, bytes, 1);
	count_backend(slot, bytes, 1);
	return act;
}

/* handle_ipv4 is the IPv4 half of sluice_xdp (every frame that is not
 * IPv6; what is not IPv4 either passes untouched): a VIP's service, a
 * reply, an ICMP error about a flow, a fragment. A subprogram of its own,
 * so its stack frame is not on another family's call chain. */
static __attribute__((noinline)) int handle_ipv4(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct packet p = {};

	int pr = parse_packet(ctx, data, data_end, &p);
	/* The hints (__builtin_expect) here and on the established path let
	 * the compiler lay the common path out straight, the rare ones after
	 * it: a single packet pays for every instruction cache line it
	 * touches (docs/benchmarks.md). */
	if (__builtin_expect(pr != PARSE_OK, 0)) {
		if (pr == PARSE_NOT_IPV4) {
			GCOUNT(passed_not_ours);
			return XDP_PASS;
		}
		if (pr == PARSE_NOT_L4 && p.proto == IPPROTO_ICMP)
			return handle_icmp(ctx, &p, data_end);
		if (pr == PARSE_NOT_L4) {
			GCOUNT(passed_not_ours);
			return XDP_PASS;
		}
		if (pr == PARSE_TRUNCATED || pr == PARSE_MALFORMED) {
			/* Could be anyone's, and nothing in it can be trusted:
			 * never rewritten, never tracked. The kernel drops what
			 * is really broken. */
			GCOUNT(malformed);
			return XDP_PASS;
		}
		if (pr == PARSE_FRAGMENT)
			return handle_fragment(&p);
	}
	struct svc_key sk = {
		.vip = p.ip->daddr,
		.port = p.dport,
		.proto = p.proto,
	};
	struct svc_value *svc = bpf_map_lookup_elem(&services, &sk);
	if (!svc)
		return handle_reply(ctx, &p, data_end);
	return handle_vip(ctx, &p, data_end, svc);
}

/* The IPv6 half: its own maps and handlers, on the helpers above. */
#include "include/xdp6.h"

SEC("xdp")
int sluice_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	/* Dispatched on the EtherType before any lookup: IPv4 and IPv6 have
	 * maps of their own (docs/architecture.md). */
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) <= data_end && eth->h_proto == bpf_htons(ETH_P_IPV6))
		return handle_ipv6(ctx);
	return handle_ipv4(ctx);
}
