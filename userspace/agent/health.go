package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/health"
	"github.com/sluicelb/sluice/userspace/metrics"
	"github.com/sluicelb/sluice/userspace/pool"
)

// poolHealth is one pool's active health checker.
type poolHealth struct {
	cfg     health.Config
	p       *pool.Pool
	checker *health.Checker
}

// healthStage is the health-check adapter: it runs the active checks of
// the pools that configure them and turns their verdicts into ejections
// and recoveries of the pools. Its own lock guards the checkers; the
// checkers' reports only call the pools, never the agent.
type healthStage struct {
	ctx     context.Context // the checkers' lifetime
	log     *slog.Logger
	metrics *metrics.Metrics // may be nil
	now     func() time.Time

	mu       sync.Mutex
	checkers map[string]*poolHealth // by pool name
	stopped  []*health.Checker      // waited for at shutdown
}

func newHealthStage(ctx context.Context, log *slog.Logger, m *metrics.Metrics, now func() time.Time) *healthStage {
	return &healthStage{ctx: ctx, log: log, metrics: m, now: now, checkers: make(map[string]*poolHealth)}
}

// sync starts, replaces or stops the pools' checkers after the config
// changed. pools are the configured pools by name. An address a stopped
// checker had ejected (no end time) is recovered when no checker takes
// over, since nothing else would bring it back. It returns the pools
// whose checks did not start.
func (hs *healthStage) sync(now time.Time, cfg *config.Config, pools map[string]*pool.Pool) (problems []string) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	want := make(map[string]bool)
	for _, pc := range cfg.Pools {
		p, ok := pools[pc.Name]
		if !ok || pc.HealthCheck == nil {
			continue
		}
		hc, err := health.FromConfig(pc.HealthCheck)
		if err != nil {
			hs.log.Error("health checks not run", "pool", pc.Name, "err", err)
			problems = append(problems, fmt.Sprintf("pool %s: health checks not run: %v", pc.Name, err))
			continue
		}
		want[pc.Name] = true
		if cur, ok := hs.checkers[pc.Name]; ok {
			if cur.p == p && reflect.DeepEqual(cur.cfg, hc) {
				continue
			}
			hs.stopChecker(cur)
		}
		c, err := hs.newChecker(pc.Name, p, hc)
		if err != nil {
			hs.log.Error("health checks not run", "pool", pc.Name, "err", err)
			problems = append(problems, fmt.Sprintf("pool %s: health checks not run: %v", pc.Name, err))
			delete(hs.checkers, pc.Name)
			continue
		}
		hs.checkers[pc.Name] = &poolHealth{cfg: hc, p: p, checker: c}
	}
	for name, cur := range hs.checkers {
		if want[name] {
			continue
		}
		hs.stopChecker(cur)
		delete(hs.checkers, name)
		recoverHealthEjected(now, cur.p)
	}
	hs.targetsLocked(now)
	return problems
}

func (hs *healthStage) newChecker(name string, p *pool.Pool, hc health.Config) (*health.Checker, error) {
	report := func(addr netip.AddrPort, healthy bool, cause string) {
		now := hs.now()
		var err error
		if healthy {
			err = p.Recover(now, addr, cause)
		} else {
			err = p.Eject(now, addr, time.Time{}, cause) // until `rise` passes
		}
		if err != nil && !errors.Is(err, pool.ErrEjectionLimit) && !errors.Is(err, pool.ErrNotActive) {
			hs.log.Warn("health transition not applied", "pool", name, "address", addr.String(), "err", err)
		}
	}
	var observe func(health.Result)
	if hs.metrics != nil {
		m := hs.metrics.Agent
		observe = func(r health.Result) { m.HealthCheck(name, r.Addr, r.Kind, r.Took) }
	}
	return health.New(hs.ctx, hc, report, health.Options{
		Logger:  hs.log.With("component", "health", "pool", name),
		Observe: observe,
		// An address already ejected (a reload, a restart) starts
		// unhealthy: it needs `rise` passes to come back.
		Initial: func(addr netip.AddrPort) bool {
			b, ok := p.Backend(addr)
			return !ok || b.State != pool.Ejected
		},
	})
}

// stopChecker stops cur's checker. Called with mu held.
func (hs *healthStage) stopChecker(cur *poolHealth) {
	cur.checker.Stop()
	hs.stopped = append(hs.stopped, cur.checker)
}

// recoverHealthEjected brings back the addresses of p that health checks
// had ejected.
func recoverHealthEjected(now time.Time, p *pool.Pool) {
	for _, b := range p.Backends() {
		if b.State == pool.Ejected && strings.HasPrefix(b.Cause, health.CausePrefix) {
			_ = p.Recover(now, b.Addr, "health checks removed")
		}
	}
}

// running is how many pools have a checker.
func (hs *healthStage) running() int {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return len(hs.checkers)
}

// targets points every checker at its pool's serving addresses (active
// and ejected, not draining), and ejects addresses that are unhealthy but
// were refused by max_ejected_percent earlier, as far as the limit allows
// now. Called every tick; costs nothing without health checks.
func (hs *healthStage) targets(now time.Time) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.targetsLocked(now)
}

func (hs *healthStage) targetsLocked(now time.Time) {
	for _, cur := range hs.checkers {
		var targets []netip.AddrPort
		for _, b := range cur.p.Backends() {
			if b.State == pool.Active || b.State == pool.Ejected {
				targets = append(targets, b.Addr)
			}
		}
		cur.checker.SetTargets(targets)

		room := cur.p.EjectionRoom()
		if room == 0 {
			continue
		}
		for addr, st := range cur.checker.Statuses() {
			if room == 0 {
				break
			}
			if st.Healthy {
				continue
			}
			if b, ok := cur.p.Backend(addr); !ok || b.State != pool.Active {
				continue
			}
			if err := cur.p.Eject(now, addr, time.Time{}, health.CausePrefix+st.Last.Kind); err == nil {
				room--
			}
		}
	}
}

// stop stops every checker and waits for their goroutines.
func (hs *healthStage) stop() {
	hs.mu.Lock()
	var all []*health.Checker
	for _, cur := range hs.checkers {
		cur.checker.Stop()
		all = append(all, cur.checker)
	}
	all = append(all, hs.stopped...)
	hs.checkers = make(map[string]*poolHealth)
	hs.stopped = nil
	hs.mu.Unlock()
	for _, c := range all {
		c.Wait()
	}
}
