package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

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
	// Wait returns once every name's goroutine has ended (after the
	// context given to Sync is done).
	Wait()
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

// dnsSet is what one answer means for one pool: the new set of the
// pool's source named source.
type dnsSet struct {
	pool, source string
	addrs        []pool.Desired
}

// dnsAdapter is the DNS side of the agent: which pools use which backend
// name (from the running config), and the watcher that resolves them. It
// turns a name's answer into the sets of the pools that use it, and
// answers the status questions about names. Its own lock guards uses; the
// watcher is safe for concurrent use.
type dnsAdapter struct {
	log    *slog.Logger
	w      dnsWatcher        // nil: names are not resolved
	forget func(name string) // drops the series of a name no pool uses; nil: none

	mu   sync.Mutex
	uses map[string][]dnsUse // by normalized name
}

func newDNSAdapter(log *slog.Logger, forget func(name string)) *dnsAdapter {
	return &dnsAdapter{log: log, forget: forget, uses: make(map[string][]dnsUse)}
}

// newDNSWatcher returns the options.dns of a real agent: a resolver and
// watcher for cfg's dns section.
func newDNSWatcher(cfg config.DNS, log *slog.Logger) func(onUpdate, observe func(discovery.Update)) (dnsWatcher, error) {
	return func(onUpdate, observe func(discovery.Update)) (dnsWatcher, error) {
		r, err := discovery.NewResolver(discovery.FromConfig(cfg), discovery.WithLogger(log.With("component", "dns")))
		if err != nil {
			return nil, err
		}
		return discovery.NewWatcher(r, discovery.WatcherOptions{OnUpdate: onUpdate, Observe: observe}), nil
	}
}

// setConfig records which pools use which names in cfg.
func (d *dnsAdapter) setConfig(cfg *config.Config) {
	uses := make(map[string][]dnsUse)
	for _, p := range cfg.Pools {
		for _, b := range p.Backends {
			if !b.IsName() {
				continue
			}
			fq, err := discovery.Normalize(b.Name)
			if err != nil {
				continue // config validation reports bad names
			}
			uses[fq] = append(uses[fq], dnsUse{pool: p.Name, name: b.Name, port: b.Port, weight: b.Weight})
		}
	}
	d.mu.Lock()
	var gone []string
	for fq := range d.uses {
		if _, ok := uses[fq]; !ok {
			gone = append(gone, fq)
		}
	}
	d.uses = uses
	d.mu.Unlock()
	if d.forget != nil {
		for _, fq := range gone {
			d.forget(fq)
		}
	}
}

// usesOf lists the pool backends that use the normalized name.
func (d *dnsAdapter) usesOf(name string) []dnsUse {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.uses[name])
}

// names are the normalized names of the running config, sorted.
func (d *dnsAdapter) names() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]string, 0, len(d.uses))
	for fq := range d.uses {
		out = append(out, fq)
	}
	slices.Sort(out)
	return out
}

// sets turns u into the sets of the pool sources that use its name: one
// set per pool and name, even when the pool lists the name with several
// ports.
func (d *dnsAdapter) sets(u discovery.Update) []dnsSet {
	d.mu.Lock()
	uses := d.uses[u.Name]
	d.mu.Unlock()
	var out []dnsSet
	index := make(map[[2]string]int)
	for _, use := range uses {
		g := [2]string{use.pool, use.name}
		i, ok := index[g]
		if !ok {
			i = len(out)
			index[g] = i
			out = append(out, dnsSet{pool: use.pool, source: use.name, addrs: []pool.Desired{}})
		}
		for _, ad := range u.Addrs {
			out[i].addrs = append(out[i].addrs, pool.Desired{
				Addr:   netip.AddrPortFrom(ad.Addr, use.port),
				Weight: use.weight,
				Info:   ad.Info(),
			})
		}
	}
	return out
}

// sync makes the watcher follow names. It must be called without the
// agent's mu: the watcher may wait for a name's goroutine, which may be
// waiting for mu in onDNSUpdate.
func (d *dnsAdapter) sync(ctx context.Context, names []string) {
	if d.w == nil {
		return
	}
	if err := d.w.Sync(ctx, names); err != nil {
		d.log.Error("following backend names", "err", err)
	}
}

// published is a name's latest published answer (none before the first
// good answer: there is nothing to serve, and an empty set would drain
// adopted addresses).
func (d *dnsAdapter) published(name string) (discovery.Update, bool) {
	if d.w == nil {
		return discovery.Update{}, false
	}
	u, ok := d.w.Status(name)
	return u, ok && u.Published
}

// wait waits for the watcher's goroutines (after the agent's context ended).
func (d *dnsAdapter) wait() {
	if d.w != nil {
		d.w.Wait()
	}
}

// refresh asks for name to be resolved now.
func (d *dnsAdapter) refresh(name string) bool {
	return d.w != nil && d.w.Refresh(name)
}

// ttlLeft is how long the current answer for a backend name is still
// valid ("" when unknown).
func (d *dnsAdapter) ttlLeft(now time.Time, name string) string {
	if d.w == nil || name == "" || name == pool.SourceStatic {
		return ""
	}
	u, ok := d.w.Status(name)
	if !ok {
		return ""
	}
	return u.TTLLeft(now).Round(100 * time.Millisecond).String()
}

// onDNSUpdate is the watcher's OnUpdate: the name's address set becomes
// the set of its source in every pool that uses it. Only a set that
// changed reaches the reconciler, and only the pools it changed are
// looked at there: an answer that says again what the last one said
// costs a comparison.
func (a *agent) onDNSUpdate(u discovery.Update) {
	sets := a.dns.sets(u)
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if a.applyDNS(now, sets) {
		if err := a.reconcileLocked(now); err != nil {
			a.log.Debug("reconcile after a DNS update finished with errors, retrying on the next tick", "err", err)
		}
	}
	a.lookupDone(u)
}

// observeDNS is the watcher's Observe: every lookup's outcome, published
// or not. It feeds the DNS metrics, and an unpublished outcome (a failed
// lookup that kept the last answer) wakes the requests waiting for it.
func (a *agent) observeDNS(u discovery.Update) {
	if a.metrics != nil {
		a.metrics.Agent.DNSUpdate(u)
	}
	if !u.Published {
		a.mu.Lock()
		a.lookupDone(u)
		a.mu.Unlock()
	}
}

// lookupDone tells the pools using u's name that a lookup's outcome is
// applied, waking requests waiting for it (pool.Reresolve). Unpublished
// outcomes come here from observeDNS, published ones from onDNSUpdate
// after the new set is in the pools. Called with mu held.
func (a *agent) lookupDone(u discovery.Update) {
	if !u.Lookup {
		return
	}
	for _, use := range a.dns.usesOf(u.Name) {
		if ps, ok := a.pools[use.pool]; ok {
			ps.p.Resolved(use.name)
		}
	}
}

// refreshName is the pools' pool.Refresher: a lookup of name now, as
// rate-limited by the watcher.
func (a *agent) refreshName(name string) bool {
	return a.dns.refresh(name)
}

// applyDNS feeds sets to their pools and reports whether any changed.
// Called with mu held.
func (a *agent) applyDNS(now time.Time, sets []dnsSet) bool {
	changed := false
	for _, s := range sets {
		ps, ok := a.pools[s.pool]
		if !ok || !ps.configured {
			continue
		}
		if ps.p.SetSource(now, s.source, a.admit.admit(s.pool, s.source, s.addrs)) {
			changed = true
		}
	}
	return changed
}

// syncDNS makes the watcher follow the running config's names and gives
// pools that just started using a watched name its latest answer. It must
// be called without mu.
func (a *agent) syncDNS() {
	names := a.dns.names()
	a.dns.sync(a.ctx, names)
	var sets []dnsSet
	for _, fq := range names {
		if u, ok := a.dns.published(fq); ok {
			sets = append(sets, a.dns.sets(u)...)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if a.applyDNS(now, sets) {
		if err := a.reconcileLocked(now); err != nil {
			a.log.Debug("reconcile after DNS sync finished with errors", "err", err)
		}
	}
}
