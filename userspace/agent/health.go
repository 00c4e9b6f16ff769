package agent

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"time"

	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/health"
	"github.com/sluicelb/sluice/userspace/pool"
)

// poolHealth is one pool's active health checker.
type poolHealth struct {
	cfg     health.Config
	p       *pool.Pool
	checker *health.Checker
}

// healthStage runs the active health checks of the pools that configure
// them. Its fields are guarded by the agent's mu; the checkers' reports
// only call the pools, never the agent.
type healthStage struct {
	checkers map[string]*poolHealth // by pool name
	stopped  []*health.Checker      // waited for at shutdown
}

func newHealthStage() *healthStage {
	return &healthStage{checkers: make(map[string]*poolHealth)}
}

// syncHealth starts, replaces or stops the pools' checkers after the
// config changed. An address a stopped checker had ejected (no end time)
// is recovered when no checker takes over, since nothing else would
// bring it back. Called with mu held.
func (a *agent) syncHealth(now time.Time) {
	hs := a.health
	want := make(map[string]bool)
	for _, pc := range a.cfg.Pools {
		ps, ok := a.pools[pc.Name]
		if !ok || pc.HealthCheck == nil {
			continue
		}
		hc, err := health.FromConfig(pc.HealthCheck)
		if err != nil {
			a.log.Error("health checks not run", "pool", pc.Name, "err", err)
			continue
		}
		want[pc.Name] = true
		if cur, ok := hs.checkers[pc.Name]; ok {
			if cur.p == ps.p && reflect.DeepEqual(cur.cfg, hc) {
				continue
			}
			a.stopChecker(cur)
		}
		c, err := a.newChecker(pc, ps.p, hc)
		if err != nil {
			a.log.Error("health checks not run", "pool", pc.Name, "err", err)
			delete(hs.checkers, pc.Name)
			continue
		}
		hs.checkers[pc.Name] = &poolHealth{cfg: hc, p: ps.p, checker: c}
	}
	for name, cur := range hs.checkers {
		if want[name] {
			continue
		}
		a.stopChecker(cur)
		delete(hs.checkers, name)
		a.recoverHealthEjected(now, cur.p)
	}
	a.healthTargets(now)
}

func (a *agent) newChecker(pc config.Pool, p *pool.Pool, hc health.Config) (*health.Checker, error) {
	name := pc.Name
	report := func(addr netip.AddrPort, healthy bool, cause string) {
		now := a.now()
		var err error
		if healthy {
			err = p.Recover(now, addr, cause)
		} else {
			err = p.Eject(now, addr, time.Time{}, cause) // until `rise` passes
		}
		if err != nil && !errors.Is(err, pool.ErrEjectionLimit) && !errors.Is(err, pool.ErrNotActive) {
			a.log.Warn("health transition not applied", "pool", name, "address", addr.String(), "err", err)
		}
	}
	var observe func(health.Result)
	if a.metrics != nil {
		m := a.metrics.Agent
		observe = func(r health.Result) { m.HealthCheck(name, r.Addr, r.Kind, r.Took) }
	}
	return health.New(a.runCtx, hc, report, health.Options{
		Logger:  a.log.With("component", "health", "pool", name),
		Observe: observe,
		// An address already ejected (a reload, a restart) starts
		// unhealthy: it needs `rise` passes to come back.
		Initial: func(addr netip.AddrPort) bool {
			b, ok := p.Backend(addr)
			return !ok || b.State != pool.Ejected
		},
	})
}

func (a *agent) stopChecker(cur *poolHealth) {
	cur.checker.Stop()
	a.health.stopped = append(a.health.stopped, cur.checker)
}

// recoverHealthEjected brings back the addresses of p that health checks
// had ejected. Called with mu held.
func (a *agent) recoverHealthEjected(now time.Time, p *pool.Pool) {
	for _, b := range p.Backends() {
		if b.State == pool.Ejected && strings.HasPrefix(b.Cause, health.CausePrefix) {
			_ = p.Recover(now, b.Addr, "health checks removed")
		}
	}
}

// healthTargets points every checker at its pool's serving addresses
// (active and ejected, not draining), and ejects addresses that are
// unhealthy but were refused by max_ejected_percent earlier, as far as the
// limit allows now. Called with mu held, every tick.
func (a *agent) healthTargets(now time.Time) {
	for _, cur := range a.health.checkers {
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

// stopHealth stops every checker and waits for their goroutines.
func (a *agent) stopHealth() {
	a.mu.Lock()
	var all []*health.Checker
	for _, cur := range a.health.checkers {
		cur.checker.Stop()
		all = append(all, cur.checker)
	}
	all = append(all, a.health.stopped...)
	a.health.checkers = make(map[string]*poolHealth)
	a.health.stopped = nil
	a.mu.Unlock()
	for _, c := range all {
		c.Wait()
	}
}
