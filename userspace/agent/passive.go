package agent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/sluicelb/sluice/l7/eject"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/metrics"
	"github.com/sluicelb/sluice/userspace/pool"
)

// trackers holds one passive ejection tracker per pool, shared by the L7
// services of the pool and the data path's connect failures, so failures
// are counted per pool whoever saw them. Safe for concurrent use.
type trackers struct {
	log *slog.Logger
	// observe, if set, hears every decision of every pool's tracker
	// (the ejection metrics).
	observe func(pool string, ev eject.Event)
	mu      sync.Mutex
	byPool  map[*pool.Pool]*eject.Tracker
}

func newTrackers(log *slog.Logger, observe func(pool string, ev eject.Event)) *trackers {
	return &trackers{log: log, observe: observe, byPool: make(map[*pool.Pool]*eject.Tracker)}
}

// get returns p's tracker with pc's ejection settings, creating it.
func (t *trackers) get(pc config.Pool, p *pool.Pool) (*eject.Tracker, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tr, ok := t.byPool[p]; ok {
		if err := tr.SetConfig(ejectionConfig(pc.Ejection)); err != nil {
			return nil, fmt.Errorf("pool %s: ejection: %w", pc.Name, err)
		}
		return tr, nil
	}
	opts := eject.Options{Log: t.log.With("pool", pc.Name)}
	if t.observe != nil {
		name := pc.Name
		opts.Observe = func(ev eject.Event) { t.observe(name, ev) }
	}
	tr, err := eject.New(ejectionConfig(pc.Ejection), p, opts)
	if err != nil {
		return nil, fmt.Errorf("pool %s: ejection: %w", pc.Name, err)
	}
	t.byPool[p] = tr
	return tr, nil
}

// lookup returns p's tracker if it has one.
func (t *trackers) lookup(p *pool.Pool) (*eject.Tracker, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tr, ok := t.byPool[p]
	return tr, ok
}

// keep drops the trackers of pools not in live.
func (t *trackers) keep(live map[*pool.Pool]bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for p := range t.byPool {
		if !live[p] {
			delete(t.byPool, p)
		}
	}
}

// syncTrackers gives every configured pool a tracker with its settings.
// Called with mu held, from apply.
func (a *agent) syncTrackers() {
	live := make(map[*pool.Pool]bool)
	for _, pc := range a.cfg.Pools {
		ps, ok := a.pools[pc.Name]
		if !ok {
			continue
		}
		live[ps.p] = true
		if _, err := a.trackers.get(pc, ps.p); err != nil {
			a.log.Error("passive ejection off for the pool", "pool", pc.Name, "err", err)
		}
	}
	a.trackers.keep(live)
}

// flowID identifies a conntrack flow across ticks.
type flowID struct {
	client, vip netip.AddrPort
	proto       datapath.Proto
}

// connectFailures are what the data path saw go wrong with new
// connections to one backend slot since the last tick.
type connectFailures struct {
	unanswered int // SYNs unanswered for synStuckAfter, each flow once
	refused    int // SYNs answered with an RST
}

// readRefusals fills a.failures[n].refused with the new ConnectRefused
// counts of every active slot. Called with mu held, after countFlows.
func (a *agent) readRefusals() {
	for n, sl := range a.slots.bySlot {
		if !sl.live || sl.want != datapath.BackendActive {
			continue
		}
		if r := a.newRefusals(n, sl.gen); r > 0 {
			f := a.failures[n]
			f.refused = r
			a.failures[n] = f
		}
	}
}

// reportFailures feeds the connect failures of active addresses to their
// pool's ejection tracker: enough of them within the window eject the
// address, so it leaves the Maglev tables (and the L7 stage's choices)
// until its ejection time is over. Called with mu held.
func (a *agent) reportFailures(now time.Time) {
	for name, ps := range a.pools {
		if !ps.configured {
			continue
		}
		tr, ok := a.trackers.lookup(ps.p)
		if !ok {
			continue
		}
		limit := ps.cfg.Ejection.Failures
		if limit <= 0 {
			continue
		}
		for _, b := range ps.p.Active() {
			n, _, ok := a.slots.lookup(slotKey{ps.id, b.Addr})
			if !ok {
				continue
			}
			f := a.failures[n]
			reports := 0
			for range min(f.refused, limit) {
				tr.Report(now, b.Addr, false, true, "connect-failure", "connect refused (RST) seen by the data path")
				reports++
			}
			for range min(f.unanswered, limit) {
				tr.Report(now, b.Addr, false, true, "connect-failure", fmt.Sprintf("SYN unanswered for %s, seen by the data path", synStuckAfter))
				reports++
			}
			if reports > 0 {
				a.log.Debug("connect failures reported", "pool", name, "address", b.Addr.String(),
					"refused", f.refused, "unanswered", f.unanswered)
			}
		}
	}
}

// ejectionMetrics counts the ejections the trackers decide (passive, from L7
// statuses and data path connect failures); refusals and recoveries are
// counted elsewhere (pool transitions, refused-ejection counter).
func ejectionMetrics(m *metrics.Metrics) func(pool string, ev eject.Event) {
	if m == nil {
		return nil
	}
	return func(pool string, ev eject.Event) {
		if ev.Err == nil && !ev.Recover {
			m.L7.Ejection(pool, ev.Addr, ev.Kind)
		}
	}
}
