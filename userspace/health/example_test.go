package health_test

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/health"
	"github.com/sluicelb/sluice/userspace/pool"
)

// How the agent wires a pool's checks: transitions become pool.Eject (with
// no end time: only `rise` passing checks bring the address back) and
// pool.Recover; the checked set follows the pool's serving addresses.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.Default()
	p := pool.New("web", pool.Config{DrainTimeout: 30 * time.Second, MaxEjectedPercent: 50}, log, nil)

	hc := &config.HealthCheck{
		HTTP:     &config.HTTPCheck{Path: "/healthz", Expect: "200-399"},
		Interval: config.Duration(2 * time.Second), Timeout: config.Duration(time.Second),
		Rise: 2, Fall: 3,
	}
	cfg, err := health.FromConfig(hc)
	if err != nil {
		log.Error("bad health check", "err", err)
		return
	}
	report := func(addr netip.AddrPort, healthy bool, cause string) {
		var err error
		if healthy {
			err = p.Recover(time.Now(), addr, cause)
		} else {
			err = p.Eject(time.Now(), addr, time.Time{}, cause)
		}
		if errors.Is(err, pool.ErrEjectionLimit) {
			// Re-applied later from Checker.Statuses, once the limit allows.
			log.Warn("health ejection refused", "addr", addr, "err", err)
		}
	}
	c, err := health.New(ctx, cfg, report, health.Options{
		Logger: log,
		// An address the pool has ejected (say, before a reload) starts
		// unhealthy, so it needs `rise` passes to come back.
		Initial: func(a netip.AddrPort) bool {
			b, ok := p.Backend(a)
			return !ok || b.State != pool.Ejected
		},
	})
	if err != nil {
		log.Error("health checker", "err", err)
		return
	}
	// Whenever the pool's set changes: check what serves (active and
	// ejected), not what drains.
	var targets []netip.AddrPort
	for _, b := range p.Backends() {
		if b.State == pool.Active || b.State == pool.Ejected {
			targets = append(targets, b.Addr)
		}
	}
	c.SetTargets(targets)

	// On shutdown.
	cancel()
	c.Wait()
}
