/* IPv4 flow state: one conntrack entry per flow, keyed by the tuple the
 * client sends (client -> VIP), in conntrack once the backend confirmed
 * the flow and in halfopen before. A reply (backend -> client, or in snat
 * mode backend -> snat address) names everything of that key but the VIP
 * and its port: in nat mode backend_ports gives them (the nat services the
 * backend's endpoint serves) and the key is rebuilt; in snat mode a small
 * reverse entry (snat_rev, snat_rev_ho) maps the reply's tuple to the key.
 * See docs/architecture.md, "Memory per flow".
 *
 * The IPv6 path has the same functions over its own maps (conntrack6, ...):
 * everything here takes keys and entries, never packets. */
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "config.h"

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

/* ho_expired: a half-open entry lives tcp_syn_timeout at most, whatever
 * its state (a confirmed flow leaves the table). */
static __always_inline int ho_expired(const struct ct_value *ct, __u64 now)
{
	return now > ct->last_seen && now - ct->last_seen > cfg.tcp_syn_timeout_ns;
}

/* The half-open table (maps.h, halfopen) is direct-mapped: a flow's slot
 * is a keyed hash of its key. The hash is sluice's own, not the Maglev
 * flow hash (public: anyone can compute it, and aim a flood at one
 * client's slot): it is keyed by a per-node random secret
 * (sluice_config.ho_key), which changes nothing Maglev picks. A 64-bit
 * multiply-xorshift per word and murmur3's 64-bit finaliser: cheap, not a
 * cryptographic MAC, enough that an outsider cannot compute slots; a
 * flow whose slot is taken anyway is only placed by Maglev again.
 * userspace/datapath/halfopen.go computes the same hash. */
static __always_inline __u64 ho_mix(__u64 h, __u64 w)
{
	h ^= w;
	h *= 0x9e3779b97f4a7c15ULL;
	return h ^ (h >> 32);
}

static __always_inline __u64 ho_fin(__u64 h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	return h ^ (h >> 33);
}

/* ho_key_hash is the keyed hash state after a flow's key. */
static __always_inline __u64 ho_key_hash(const struct ct_key *k)
{
	__u64 h = cfg.ho_key;
	h = ho_mix(h, ((__u64)k->saddr << 32) | k->daddr);
	return ho_mix(h, ((__u64)k->sport << 48) | ((__u64)k->dport << 32) | k->proto);
}

/* ho_check is a slot's check: the key's hash state (ho_key_hash) carried
 * over the value's fields that steer a packet. Never 0 (an empty slot). */
static __always_inline __u64 ho_check(__u64 kh, const struct ct_value *v)
{
	__u64 h = ho_mix(kh, ((__u64)v->service_id << 32) | v->backend_id);
	h = ho_mix(h, ((__u64)v->backend_gen << 32) | v->saddr_new);
	h = ho_mix(h, ((__u64)v->daddr_new << 32) | ((__u32)v->sport_new << 16) | v->dport_new);
	return ho_fin(h) | 1;
}

static __always_inline int ct_key_eq(const struct ct_key *a, const struct ct_key *b)
{
	return a->saddr == b->saddr && a->daddr == b->daddr && a->sport == b->sport && a->dport == b->dport &&
	       a->proto == b->proto;
}

/* ho_slot_of returns the half-open slot of key k (kh: its ho_key_hash). */
static __always_inline struct ho_slot *ho_slot_of(__u64 kh)
{
	__u32 idx = (__u32)ho_fin(kh) & cfg.ho_mask;
	return bpf_map_lookup_elem(&halfopen, &idx);
}

/* ho_lookup returns flow k's live half-open entry, or NULL. It is a copy
 * of the slot (this CPU's ho_scratch) whose key is k and whose check
 * matches what it holds: a packet is never steered by a slot another CPU
 * is rewriting. The copy is valid until the next ho_lookup on this CPU;
 * a caller that changes its last_seen or state writes them back with
 * ho_touch. The key's hash goes to *kh_out when given, for a ho_store
 * of the same key. A BPF-to-BPF call, as is ho_store: inlined at their
 * many call sites (the hash's 64-bit constants, the check) they grew
 * handle_ipv4's stack frame past the 512-byte combined limit. */
static __noinline struct ct_value *ho_lookup(const struct ct_key *k, __u64 now, __u64 *kh_out)
{
	__u64 kh = ho_key_hash(k);
	if (kh_out)
		*kh_out = kh;
	struct ho_slot *s = ho_slot_of(kh);
	if (!s || !s->check || !ct_key_eq(&s->key, k))
		return NULL; /* the common miss: one cache line read */
	__u32 zero = 0;
	struct ho_slot *c = bpf_map_lookup_elem(&ho_scratch, &zero);
	if (!c)
		return NULL;
	*c = *s;
	if (!ct_key_eq(&c->key, k) || c->check != ho_check(kh, &c->val) || ho_expired(&c->val, now))
		return NULL;
	return &c->val;
}

/* ho_store makes v flow k's half-open entry, in place of whatever its
 * slot held (another flow's entry is forgotten: a colliding flow simply
 * overwrites it, counted when that entry was live: flood pressure on the
 * table, for the operator). One 64-byte write; the check last. -1: no
 * slot. v->last_seen is now. kh is k's ho_key_hash when the caller has it
 * (ho_lookup), 0 to compute it here. */
static __noinline int ho_store(const struct ct_key *k, const struct ct_value *v, __u64 kh)
{
	if (!kh)
		kh = ho_key_hash(k);
	struct ho_slot *s = ho_slot_of(kh);
	if (!s)
		return -1;
	/* The slot's line is about to be written: reading it first costs no
	 * extra miss. */
	if (s->check && !ct_key_eq(&s->key, k) && !ho_expired(&s->val, v->last_seen))
		GCOUNT(halfopen_overwritten);
	s->key = *k;
	s->val = *v;
	s->check = ho_check(kh, v);
	return 0;
}

/* ho_touch writes the last_seen and state of v (a copy ho_lookup
 * returned for k) back to k's slot, if the slot still holds k. */
static __always_inline void ho_touch(const struct ct_key *k, const struct ct_value *v)
{
	struct ho_slot *s = ho_slot_of(ho_key_hash(k));
	if (!s || !ct_key_eq(&s->key, k))
		return;
	if (s->val.last_seen != v->last_seen)
		s->val.last_seen = v->last_seen;
	if (s->val.state != v->state)
		s->val.state = v->state;
}

/* ho_forget empties k's slot if it holds k. */
static __always_inline void ho_forget(const struct ct_key *k)
{
	struct ho_slot *s = ho_slot_of(ho_key_hash(k));
	if (s && ct_key_eq(&s->key, k))
		s->check = 0;
}

/* lookup_forward finds a flow's live entry: in conntrack (*confirmed = 1)
 * or in the half-open table (*confirmed = 0: a copy, see ho_lookup). *stale, when given, is set
 * to a conntrack entry of the key that is not live (expired), so the
 * caller need not look it up again. */
static __always_inline struct ct_value *lookup_forward(const struct ct_key *k, __u64 now, int *confirmed,
						       struct ct_value **stale)
{
	struct ct_value *ct = bpf_map_lookup_elem(&conntrack, k);
	if (__builtin_expect(ct != NULL, 1)) {
		if (__builtin_expect(!ct_expired(ct, now), 1)) {
			*confirmed = 1;
			return ct;
		}
		if (stale)
			*stale = ct;
	}
	ct = ho_lookup(k, now, NULL);
	if (ct)
		*confirmed = 0;
	return ct;
}

/* snat_rev_key is the key of an snat flow's reverse entry: its replies
 * come from the backend to the snat address and port. */
static __always_inline void snat_rev_key(const struct ct_key *fk, const struct ct_value *fv, struct ct_key *rk)
{
	rk->saddr = fv->daddr_new;
	rk->sport = fv->dport_new;
	rk->daddr = fv->saddr_new;
	rk->dport = fv->sport_new;
	rk->proto = fk->proto;
}

/* ensure_snat_rev re-creates an snat flow's reverse entry when LRU
 * evicted it, in the table that goes with the flow's (BPF_NOEXIST: an
 * existing one is left alone). nat flows have none. */
static __always_inline void ensure_snat_rev(const struct ct_key *fk, const struct ct_value *fv, int confirmed)
{
	if (!fv->saddr_new)
		return;
	struct ct_key rk = {};
	snat_rev_key(fk, fv, &rk);
	/* One call site per map: a helper call reached with two different
	 * maps loses the verifier's inlined lookup. */
	if (confirmed) {
		if (bpf_map_lookup_elem(&snat_rev, &rk))
			return;
		if (!bpf_map_update_elem(&snat_rev, &rk, fk, BPF_NOEXIST))
			GCOUNT(reverse_recreated);
		return;
	}
	if (bpf_map_lookup_elem(&snat_rev_ho, &rk))
		return;
	if (!bpf_map_update_elem(&snat_rev_ho, &rk, fk, BPF_NOEXIST))
		GCOUNT(reverse_recreated);
}

/* forget_flow deletes the flow fv at fk from its table, with its snat
 * reverse entry. */
static __always_inline void forget_flow(const struct ct_key *fk, const struct ct_value *fv, int confirmed)
{
	struct ct_key rk = {};
	if (fv->saddr_new)
		snat_rev_key(fk, fv, &rk);
	if (confirmed) {
		if (rk.saddr)
			bpf_map_delete_elem(&snat_rev, &rk);
		bpf_map_delete_elem(&conntrack, fk);
		return;
	}
	if (rk.saddr)
		bpf_map_delete_elem(&snat_rev_ho, &rk);
	ho_forget(fk);
}

/* nat_points_to: the nat flow fv goes to the backend endpoint addr:port. */
static __always_inline int nat_points_to(const struct ct_value *fv, __be32 addr, __be16 port)
{
	return fv->daddr_new == addr && fv->dport_new == port && !fv->saddr_new;
}

/* nat_walk is the state of a walk over services (bpf_for_each_map_elem)
 * looking for the nat flow from a client address and port to a backend
 * endpoint, through whichever nat service: for endpoints of more nat
 * services than backend_ports lists. */
struct nat_walk {
	struct ct_key fk; /* in: client, port, proto; out: the flow's key */
	__be32 baddr;     /* the backend endpoint */
	__be16 bport;
	__be32 skip_vip;  /* a service not to look at (0: none) */
	__be16 skip_port;
	__u8 found;
	__u64 now;
};

static long nat_walk_step(void *map, struct svc_key *key, struct svc_value *val, struct nat_walk *w)
{
	if (key->proto != w->fk.proto || val->mode != MODE_NAT)
		return 0;
	if (key->vip == w->skip_vip && key->port == w->skip_port)
		return 0;
	w->fk.daddr = key->vip;
	w->fk.dport = key->port;
	int confirmed;
	struct ct_value *fv = lookup_forward(&w->fk, w->now, &confirmed, NULL);
	if (fv && nat_points_to(fv, w->baddr, w->bport)) {
		w->found = 1;
		return 1; /* stop */
	}
	return 0;
}

/* ep_walks: backend_ports does not list every nat service the endpoint
 * may have flows of (more than EP_NAT_SVCS, or none while no snat service
 * claims it: a pool no service uses any more). */
static __always_inline int ep_walks(const struct ep_info *ep)
{
	return ep->nat_count > EP_NAT_SVCS || (ep->nat_count == 0 && !(ep->flags & EP_SNAT));
}

/* find_nat_flow finds the live nat flow of client caddr:cport (proto) to
 * the backend endpoint baddr:bport through one of the nat services the
 * endpoint serves (ep), other than skip_vip:skip_port; *fk is set to its
 * key. With the item-8 rule (a second live flow from one client port to
 * one backend through another VIP is refused) at most one such flow is
 * live and not closing. */
static __always_inline struct ct_value *find_nat_flow(__be32 caddr, __be16 cport, __u8 proto, __be32 baddr,
						      __be16 bport, const struct ep_info *ep, __be32 skip_vip,
						      __be16 skip_port, __u64 now, struct ct_key *fk, int *confirmed)
{
	fk->saddr = caddr;
	fk->sport = cport;
	fk->proto = proto;
	if (ep_walks(ep)) {
		struct nat_walk w = {
			.fk = *fk,
			.baddr = baddr,
			.bport = bport,
			.skip_vip = skip_vip,
			.skip_port = skip_port,
			.now = now,
		};
		bpf_for_each_map_elem(&services, nat_walk_step, &w, 0);
		if (!w.found)
			return NULL;
		*fk = w.fk;
		return lookup_forward(fk, now, confirmed, NULL);
	}
#pragma unroll
	for (int i = 0; i < EP_NAT_SVCS; i++) {
		if (i >= ep->nat_count)
			break;
		const struct ep_service *s = &ep->nat[i];
		if (s->proto != proto || (s->vip == skip_vip && s->port == skip_port))
			continue;
		fk->daddr = s->vip;
		fk->dport = s->port;
		struct ct_value *fv = lookup_forward(fk, now, confirmed, NULL);
		if (fv && nat_points_to(fv, baddr, bport))
			return fv;
	}
	return NULL;
}

/* reply_flow is the flow a reply belongs to (find_reply_flow). */
struct reply_flow {
	struct ct_key fk;      /* the flow's key: client -> VIP */
	struct ct_value *fv;   /* its entry */
	int confirmed;         /* in conntrack (1) or halfopen (0) */
};

/* find_reply_flow finds the flow of the reply rk (as it arrived: backend
 * -> client or snat address) from the backend endpoint ep describes: a nat
 * flow by rebuilding its key with each nat service's VIP, then an snat
 * flow through its reverse entry. 0: no flow. */
static __always_inline int find_reply_flow(const struct ct_key *rk, const struct ep_info *ep, __u64 now,
					   struct reply_flow *f)
{
	f->fv = find_nat_flow(rk->daddr, rk->dport, rk->proto, rk->saddr, rk->sport, ep, 0, 0, now, &f->fk,
			      &f->confirmed);
	if (f->fv)
		return 1;
	/* Tried whatever ep says (EP_SNAT): right after an upgrade, services
	 * carry no pool id until the agent writes them, and backend_ports
	 * lists nothing yet; a miss costs one lookup, on a path taken by
	 * replies without a flow only. */
	struct ct_key *fk = bpf_map_lookup_elem(&snat_rev, rk);
	if (!fk)
		fk = bpf_map_lookup_elem(&snat_rev_ho, rk);
	if (!fk)
		return 0;
	f->fk = *fk;
	struct ct_value *fv = lookup_forward(&f->fk, now, &f->confirmed, NULL);
	/* The entry must still be the one the reverse entry was made for (a
	 * re-picked flow may have another backend or port now). */
	if (!fv || fv->daddr_new != rk->saddr || fv->dport_new != rk->sport || fv->saddr_new != rk->daddr ||
	    fv->sport_new != rk->dport)
		return 0;
	f->fv = fv;
	return 1;
}

/* sole_nat_service returns the one nat service of protocol proto the
 * endpoint serves, or NULL when it serves none or several (or more than
 * backend_ports lists): only then can a reply be translated without its
 * flow's entry. */
static __always_inline const struct ep_service *sole_nat_service(const struct ep_info *ep, __u8 proto)
{
	__u32 n = ep->nat_count;
	if (n > EP_NAT_SVCS)
		return NULL;
	int found = -1;
	for (int i = 0; i < EP_NAT_SVCS; i++) {
		if (i >= n)
			break;
		if (ep->nat[i].proto != proto)
			continue;
		if (found >= 0)
			return NULL;
		found = i;
	}
	if (found < 0 || found >= EP_NAT_SVCS)
		return NULL;
	return &ep->nat[found];
}
