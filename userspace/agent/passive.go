package agent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/sluicelb/sluice/l7/eject"
	"github.com/sluicelb/sluice/l7/retry"
	"github.com/sluicelb/sluice/userspace/config"
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

// connectFailures turns the flow watcher's connect failures into what
// they mean for the pools: each failure of an active address is reported
// to its pool's ejection tracker (enough of them within the window eject
// the address, so it leaves the Maglev tables and the L7 stage's choices
// until its ejection time is over), and an address given by a DNS name
// whose connects keep failing has its name re-resolved at once instead
// of at its TTL: a load balancer behind the name may have released it.
// Called with mu held.
func (a *agent) connectFailures(now time.Time, failures []connectFailure) {
	if len(failures) == 0 {
		return
	}
	byID := make(map[uint32]*poolState, len(a.pools))
	names := make(map[uint32]string, len(a.pools))
	for name, ps := range a.pools {
		byID[ps.id] = ps
		names[ps.id] = name
	}
	type failing struct {
		ps   *poolState
		b    pool.Backend
		fail connectFailure
	}
	var active []failing
	failingIn := make(map[uint32]int) // active addresses with a failure, per pool id
	failures = a.floodFilter(failures, byID, names)
	for _, f := range failures {
		poolID, addr, ok := a.rec.owner(f.slot)
		if !ok {
			continue
		}
		ps, ok := byID[poolID]
		if !ok || !ps.configured {
			continue
		}
		b, ok := ps.p.Backend(addr)
		if !ok || b.State != pool.Active {
			continue
		}
		a.reportFailure(now, names[poolID], ps, addr, f)
		active = append(active, failing{ps, b, f})
		if f.stuck+f.refused > 0 {
			failingIn[poolID]++
		}
	}
	// A name is re-resolved after refreshAfterStuck failing connects to
	// one of its addresses, or after the first one when the pool has no
	// active address left without a failure (its only address moved).
	need := make(map[uint32]int, len(failingIn))
	for id, n := range failingIn {
		need[id] = refreshAfterStuck
		if byID[id].p.Counts()[pool.Active] <= n {
			need[id] = 1
		}
	}
	for _, f := range active {
		b, stuck, refused := f.b, f.fail.stuck, f.fail.refused
		if b.Source == "" || b.Source == pool.SourceStatic || stuck+refused < need[f.ps.id] || stuck+refused == 0 {
			continue
		}
		if f.ps.p.Refresh(now, b.Source) {
			a.log.Info("connects failing, re-resolving the name now", "pool", names[f.ps.id],
				"address", b.Addr.String(), "name", b.Source,
				"unanswered_syns", stuck, "refused", refused)
		}
	}
}

// floodFilter keeps only what a flood of spoofed SYNs cannot fake out of
// the unanswered SYNs of one scan that feed passive ejection; refusals (the
// backend's own RST) are kept as they are, and so are the stuck counts that
// make a DNS name re-resolve (harmless under a flood). Unanswered SYNs
// count against an address only when
//   - the address answered fewer of its SYNs than it left unanswered (a
//     live backend answers a flood's SYNs with SYN-ACKs, seen as
//     syn-recv; the unanswered ones are then lost on the way, not its
//     failure);
//   - they are not spread over more than half of the pool's active
//     addresses at once (Maglev spreads a flood, or a problem on
//     sluice's own side, over every address; a dead backend is one
//     address among answering ones);
//   - at most unansweredPerScan of them per address and scan.
//
// Called with mu held.
func (a *agent) floodFilter(failures []connectFailure, byID map[uint32]*poolState, names map[uint32]string) []connectFailure {
	stuckIn := make(map[uint32]int) // active addresses with unanswered SYNs, per pool id
	poolOf := make([]uint32, len(failures))
	known := make([]bool, len(failures))
	for i, f := range failures {
		poolID, addr, ok := a.rec.owner(f.slot)
		if !ok {
			continue
		}
		ps, ok := byID[poolID]
		if !ok {
			continue
		}
		if b, ok := ps.p.Backend(addr); !ok || b.State != pool.Active {
			continue
		}
		poolOf[i], known[i] = poolID, true
		if f.stuck > 0 {
			stuckIn[poolID]++
		}
	}
	out := make([]connectFailure, 0, len(failures))
	for i, f := range failures {
		if known[i] && f.stuck > 0 {
			ps := byID[poolOf[i]]
			n := ps.p.Counts()[pool.Active]
			switch {
			case n >= 2 && stuckIn[poolOf[i]]*2 > n:
				a.log.Debug("unanswered SYNs on most of the pool's addresses at once: not counted as backend failures",
					"pool", names[poolOf[i]], "addresses", stuckIn[poolOf[i]], "active", n)
				f.unanswered = 0
			case f.answered >= f.stuck:
				f.unanswered = 0
			default:
				f.unanswered = min(f.unanswered, unansweredPerScan)
			}
		}
		out = append(out, f)
	}
	return out
}

// reportFailure feeds one address's new connect failures to its pool's
// tracker, at most ejection.failures of each kind per scan.
func (a *agent) reportFailure(now time.Time, name string, ps *poolState, addr netip.AddrPort, f connectFailure) {
	limit := ps.cfg.Ejection.Failures
	if limit <= 0 {
		return
	}
	tr, ok := a.trackers.lookup(ps.p)
	if !ok || !tr.Counts(retry.Outcome{Kind: retry.ConnectFailure}) {
		return // no tracker, or ejection.on leaves connect failures out
	}
	reports := 0
	for range min(f.refused, limit) {
		tr.Report(now, addr, false, true, "connect-failure", "connect refused (RST) seen by the data path")
		reports++
	}
	for range min(f.unanswered, limit) {
		tr.Report(now, addr, false, true, "connect-failure", fmt.Sprintf("SYN unanswered for %s, seen by the data path", synStuckAfter))
		reports++
	}
	if reports > 0 {
		a.log.Debug("connect failures reported", "pool", name, "address", addr.String(),
			"refused", f.refused, "unanswered", f.unanswered)
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
