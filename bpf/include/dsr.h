/* Direct server return (mode dsr): the forwarding step of a DSR flow. The
 * flow was looked up or picked like any other (conntrack, then Maglev);
 * instead of rewriting it, the node encapsulates it (encap.h) to the
 * backend and forwards it through the backend's cached next hop. Replies
 * go from the backend to the client directly, so no node ever sees them,
 * and any node sends a flow's packets to the same backend (the same
 * Maglev table and hash on every node): a node can leave or join behind
 * ECMP without breaking a flow.
 *
 * Included by sluice.c after its helpers (send_cached, the maps), which
 * this builds on. */
#pragma once
#include "encap.h"
#include "toobig.h"

/* dsr_too_big answers p (the client's packet, not encapsulated) with
 * ICMP fragmentation needed quoting it as the client sent it (orig), with
 * the MTU less the encapsulation's 20 bytes, so the client's path MTU
 * discovery accounts for the tunnel. */
static __always_inline int dsr_too_big(struct xdp_md *ctx, const struct ct_key *orig, __u16 mtu)
{
	if (mtu <= ENCAP_OVERHEAD + 68 || make_frag_needed(ctx, orig, mtu - ENCAP_OVERHEAD))
		return XDP_DROP;
	GCOUNT(frag_needed_sent);
	return XDP_TX;
}

/* dsr_confirm moves a DSR flow from the half-open table to conntrack. The
 * backend's SYN-ACK, which confirms nat and snat flows (handle_reply),
 * never passes a node in DSR, so the client's second packet (the ACK of
 * its handshake) does: a one-packet spoofed flood still churns the
 * half-open table alone, and an idle established flow keeps its backend
 * for the established timeout instead of the half-open one (after which
 * Maglev would pick again, maybe elsewhere once the pool changed). ct is
 * the flow's half-open entry; it is not used after this. */
static __always_inline void dsr_confirm(const struct ct_key *k, const struct ct_value *ct)
{
	struct ct_value nf = *ct;
	if (nf.state == CT_SYN_SENT || nf.state == CT_SYN_RECV)
		nf.state = CT_ESTABLISHED;
	if (bpf_map_update_elem(&conntrack, k, &nf, BPF_ANY)) {
		GCOUNT(ct_update_failures);
		return; /* still half-open: forwarded from there */
	}
	ho_forget(k);
	GCOUNT(flows_confirmed);
}

/* dsr_send encapsulates p to backend b (slot) and sends it through the
 * backend's cached next hop. A packet with DF set that would not fit the
 * next hop's MTU once encapsulated is answered with dsr_too_big (before
 * the encapsulation when the MTU is cached, after undoing it when the FIB
 * lookup just found out); one without DF goes to the kernel encapsulated,
 * to be fragmented (docs/scale-out.md: the path towards the backends must
 * carry the overhead, the backend's decap does not reassemble). */
static __always_inline int dsr_send(struct xdp_md *ctx, struct packet *p, const struct backend *b, __u32 slot,
				    __u64 now, const struct ct_key *orig)
{
	int df = !!(p->ip->frag_off & bpf_htons(IP_DF));
	struct backend_hop *c = bpf_map_lookup_elem(&backend_hops, &slot);
	__u16 mtu = c && c->addr == b->addr ? c->mtu : 0;
	if (df && !encap_fits(p, mtu))
		return dsr_too_big(ctx, orig, mtu);
	if (!b->src_addr) {
		/* No source towards the backend known (the agent writes it
		 * with the slot): the packet cannot be encapsulated. */
		GCOUNT(fib_failures);
		return XDP_DROP;
	}
	if (encap_ipip(ctx, p, b->src_addr, b->addr))
		return XDP_DROP;
	int act = send_cached(ctx, p, (void *)(long)ctx->data_end, c, b->addr, now, NULL);
	if (act == XDP_PASS && df && c && c->mtu && p->tot_len > c->mtu) {
		/* The lookup found the next hop's MTU too small just now. */
		if (encap_undo(ctx, p))
			return XDP_DROP;
		return dsr_too_big(ctx, orig, c->mtu);
	}
	return act;
}
