package agent

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/discovery"
	"github.com/sluicelb/sluice/userspace/pool"
)

// dnsWatcher is what the agent needs of discovery.Watcher.
type dnsWatcher interface {
	// Sync makes the watched names exactly names.
	Sync(ctx context.Context, names []string) error
	// Status is a name's latest Update.
	Status(name string) (discovery.Update, bool)
	// Refresh resolves a name now (rate-limited by the watcher) and
	// reports whether a lookup was triggered.
	Refresh(name string) bool
}

var _ dnsWatcher = (*discovery.Watcher)(nil)

// dnsUse is one pool backend given by a DNS name: every address of the
// name's answer is an address of the pool, on port.
type dnsUse struct {
	pool   string
	name   string // as written in the config: the pool's source name
	port   uint16
	weight uint32
}

// dnsUsesOf maps every backend name of cfg (normalized, as the watcher
// reports it) to the pool backends that use it.
func dnsUsesOf(cfg *config.Config) map[string][]dnsUse {
	out := make(map[string][]dnsUse)
	for _, p := range cfg.Pools {
		for _, b := range p.Backends {
			if !b.IsName() {
				continue
			}
			fq, err := discovery.Normalize(b.Name)
			if err != nil {
				continue // config validation reports bad names
			}
			out[fq] = append(out[fq], dnsUse{pool: p.Name, name: b.Name, port: b.Port, weight: b.Weight})
		}
	}
	return out
}

// onDNSUpdate is the watcher's OnUpdate: the name's address set becomes
// the set of its source in every pool that uses it, applied at once.
func (a *agent) onDNSUpdate(u discovery.Update) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if a.applyDNS(now, u) {
		if err := a.reconcile(now); err != nil {
			a.log.Debug("reconcile after a DNS update finished with errors, retrying on the next tick", "err", err)
		}
	}
	a.lookupDone(u)
}

// lookupDone tells the pools using u's name that a lookup's outcome is
// applied, waking requests waiting for it (pool.Reresolve). Unpublished
// outcomes come here from the watcher's Observe, published ones from
// onDNSUpdate after the new set is in the pools. Called with mu held.
func (a *agent) lookupDone(u discovery.Update) {
	if !u.Lookup {
		return
	}
	for _, use := range a.dnsUses[u.Name] {
		if ps, ok := a.pools[use.pool]; ok {
			ps.p.Resolved(use.name)
		}
	}
}

// refreshName is the pools' pool.Refresher: a lookup of name now, as
// rate-limited by the watcher.
func (a *agent) refreshName(name string) bool {
	return a.dns != nil && a.dns.Refresh(name)
}

// applyDNS feeds u to the pools using its name and reports whether any
// does. Called with mu held.
func (a *agent) applyDNS(now time.Time, u discovery.Update) bool {
	uses := a.dnsUses[u.Name]
	// One source per pool and name, even when the pool lists the name
	// with several ports.
	type group struct{ pool, name string }
	sets := make(map[group][]pool.Desired)
	var order []group
	for _, use := range uses {
		g := group{use.pool, use.name}
		if _, ok := sets[g]; !ok {
			order = append(order, g)
			sets[g] = []pool.Desired{}
		}
		for _, ad := range u.Addrs {
			if !ad.Addr.Is4() {
				continue // the data path is IPv4 only; discovery reports AAAA apart
			}
			sets[g] = append(sets[g], pool.Desired{
				Addr:   netip.AddrPortFrom(ad.Addr, use.port),
				Weight: use.weight,
				Info:   ad.Info(),
			})
		}
	}
	for _, g := range order {
		ps, ok := a.pools[g.pool]
		if !ok || !ps.configured {
			continue
		}
		ps.p.SetSource(now, g.name, sets[g])
	}
	return len(uses) > 0
}

// syncDNS makes the watcher follow the running config's names and gives
// pools that just started using a watched name its latest answer. It must
// be called without mu: the watcher may wait for a name's goroutine, which
// may be waiting for mu in onDNSUpdate.
func (a *agent) syncDNS() {
	if a.dns == nil {
		return
	}
	a.mu.Lock()
	names := make([]string, 0, len(a.dnsUses))
	for fq := range a.dnsUses {
		names = append(names, fq)
	}
	ctx := a.runCtx
	a.mu.Unlock()
	slices.Sort(names)
	if err := a.dns.Sync(ctx, names); err != nil {
		a.log.Error("following backend names", "err", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	changed := false
	for _, fq := range names {
		// Only a published set: before the first good answer there is
		// nothing to serve, and an empty set would drain adopted addresses.
		if u, ok := a.dns.Status(fq); ok && u.Published {
			changed = a.applyDNS(now, u) || changed
		}
	}
	if changed {
		if err := a.reconcile(now); err != nil {
			a.log.Debug("reconcile after DNS sync finished with errors", "err", err)
		}
	}
}

// ttlLeft is how long the current answer for a backend name is still
// valid ("" when unknown). Called with mu held.
func (a *agent) ttlLeft(now time.Time, name string) string {
	if a.dns == nil || name == "" || name == pool.SourceStatic {
		return ""
	}
	u, ok := a.dns.Status(name)
	if !ok {
		return ""
	}
	return u.TTLLeft(now).Round(100 * time.Millisecond).String()
}

// newDNSWatcher builds the resolver and watcher for cfg's dns section.
func (a *agent) newDNSWatcher(cfg config.DNS) (*discovery.Watcher, error) {
	r, err := discovery.NewResolver(discovery.FromConfig(cfg), discovery.WithLogger(a.log.With("component", "dns")))
	if err != nil {
		return nil, err
	}
	observe := func(u discovery.Update) {
		if a.metrics != nil {
			a.metrics.Agent.DNSUpdate(u)
		}
		if !u.Published {
			a.mu.Lock()
			a.lookupDone(u)
			a.mu.Unlock()
		}
	}
	return discovery.NewWatcher(r, discovery.WatcherOptions{OnUpdate: a.onDNSUpdate, Observe: observe}), nil
}

// refreshFailing re-resolves at once the names of active addresses whose
// connects are failing (SYNs unanswered, or answered with an RST since the
// last tick), instead of waiting for the TTL:
// the address may have been released by a load balancer behind the name.
// When no other active address of the pool is free of failures, the first
// failing connect is enough (the pool's only address moved); otherwise it
// takes refreshAfterStuck. Called with mu held.
func (a *agent) refreshFailing(now time.Time, poolName string, ps *poolState, backends []pool.Backend) {
	if a.dns == nil {
		return
	}
	failing := func(b pool.Backend) (stuck, refused int) {
		n, _, ok := a.slots.lookup(slotKey{ps.id, b.Addr})
		if !ok {
			return 0, 0
		}
		return a.synStuck[n], a.failures[n].refused
	}
	healthy := 0 // active addresses without a failing connect this tick
	for _, b := range backends {
		if s, r := failing(b); b.State == pool.Active && s+r == 0 {
			healthy++
		}
	}
	need := refreshAfterStuck
	if healthy == 0 {
		need = 1
	}
	for _, b := range backends {
		if b.State != pool.Active || b.Source == "" || b.Source == pool.SourceStatic {
			continue
		}
		stuck, refused := failing(b)
		if stuck+refused < need {
			continue
		}
		if ps.p.Refresh(now, b.Source) {
			a.log.Info("connects failing, re-resolving the name now", "pool", poolName,
				"address", b.Addr.String(), "name", b.Source,
				"unanswered_syns", stuck, "refused", refused)
		}
	}
}

// refusalMark is a slot's ConnectRefused counter at the last tick.
type refusalMark struct {
	gen   uint32
	count uint64
}

// newRefusals is how many SYNs to slot n were answered with an RST since
// the last call (0 on the first call for a slot generation, or when the
// counter cannot be read). Called with mu held.
func (a *agent) newRefusals(n, gen uint32) int {
	st, err := a.dp.BackendStats(n)
	if err != nil {
		a.mapError("BackendStats", err, "reading backend stats failed", "slot", n)
		return 0
	}
	prev, seen := a.refusals[n]
	a.refusals[n] = refusalMark{gen: gen, count: st.ConnectRefused}
	if !seen || prev.gen != gen || st.ConnectRefused < prev.count {
		return 0
	}
	return int(st.ConnectRefused - prev.count)
}

// notServed lists the AAAA answers of the pool's backend names: reported,
// not served (the data path is IPv4 only). Called with mu held.
func (a *agent) notServed(poolName string) []admin.NotServed {
	if a.dns == nil {
		return nil
	}
	fqs := make([]string, 0, len(a.dnsUses))
	for fq := range a.dnsUses {
		fqs = append(fqs, fq)
	}
	slices.Sort(fqs)
	var out []admin.NotServed
	for _, fq := range fqs {
		for _, use := range a.dnsUses[fq] {
			if use.pool != poolName {
				continue
			}
			u, ok := a.dns.Status(fq)
			if !ok {
				continue
			}
			for _, ip := range u.AAAA {
				out = append(out, admin.NotServed{
					Address: netip.AddrPortFrom(ip, use.port).String(),
					Source:  use.name,
					Reason:  "IPv6 answer: the data path serves IPv4 only",
				})
			}
		}
	}
	return out
}
