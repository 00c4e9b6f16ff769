// Package eject is passive outlier detection for one pool: it counts the
// failures live traffic sees on each address (the conditions of the pool's
// ejection.on: connect failures, resets, timeouts, listed statuses) and,
// when an address fails `failures` times within `window`, asks the pool to
// eject it for base_time, doubled on each re-ejection up to max_time, with
// jitter.
//
// What ejects is apart from what is retried (a service's retry.on): behind
// a load balancer such as an ALB, an application's 503 comes through a
// healthy ALB node, and retrying it elsewhere is right while ejecting that
// node is not.
//
// The decision is the pool's (userspace/pool): Eject refuses beyond
// max_ejected_percent, and the L4 Maglev tables drop an ejected address too.
// When the ejection time is over, the pool makes the address active again
// "on trial" (cause ejection-expired); the tracker then admits exactly one
// request to it at a time until one finishes: a success recovers it for good
// (the doubling starts again from base_time), a failure ejects it again at
// once for twice as long — nginx's max_fails/fail_timeout rule, with backoff.
package eject

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/sluicelb/sluice/l7/retry"
	"github.com/sluicelb/sluice/userspace/backoff"
	"github.com/sluicelb/sluice/userspace/pool"
)

// DefaultJitter is the share of an ejection time taken off at random, so
// addresses ejected together do not come back together.
const DefaultJitter = 0.1

// Cause recorded in the pool when a trial request succeeds.
const CauseTrialSucceeded = "trial-succeeded"

// Config is a pool's ejection block (the agent builds it from the pool's
// ejection: keys).
type Config struct {
	Failures          int           // within Window -> eject; 0 disables ejection
	Window            time.Duration // the window failures are counted in
	BaseTime          time.Duration // first ejection time, doubled on each re-ejection
	MaxTime           time.Duration // cap of the ejection time
	MaxEjectedPercent int           // never eject more of the pool (0..100)
	// On lists what counts as a failure (ParseCondition); empty means
	// DefaultOn.
	On []string
}

// DefaultOn returns ejection.on's default: what a failing backend itself
// looks like — it refuses or drops connections, stays silent, or answers
// as a gateway whose own upstream failed (502, 504) or as unavailable
// (503), or as a gRPC server that is unavailable (grpc-status 14 in a
// response header). 500 and 429 are the application's answers about a
// request, not about the address, and do not eject unless listed.
func DefaultOn() []string {
	return []string{"connect-failure", "reset", "timeout", "502", "503", "504", "grpc-unavailable"}
}

// ParseCondition parses one ejection.on entry: connect-failure, reset,
// timeout, 429, a status 500-599 or grpc-NAME (the same vocabulary as
// retry.on).
func ParseCondition(s string) (retry.Condition, error) {
	c, err := retry.ParseCondition(s)
	if err != nil {
		return nil, fmt.Errorf("ejection condition %q: must be connect-failure, reset, timeout, 429, a status 500-599 or grpc-NAME (grpc-unavailable, ...)", s)
	}
	return c, nil
}

// conditions compiles cfg.On (DefaultOn when empty).
func conditions(on []string) ([]retry.Condition, error) {
	if len(on) == 0 {
		on = DefaultOn()
	}
	out := make([]retry.Condition, 0, len(on))
	for _, s := range on {
		c, err := ParseCondition(s)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// Defaults of a pool's ejection block.
const (
	DefaultFailures          = 5
	DefaultWindow            = 10 * time.Second
	DefaultBaseTime          = 10 * time.Second
	DefaultMaxTime           = 5 * time.Minute
	DefaultMaxEjectedPercent = 50
)

// DefaultConfig is the ejection block of a pool that sets none.
func DefaultConfig() Config {
	return Config{
		Failures: DefaultFailures, Window: DefaultWindow, BaseTime: DefaultBaseTime,
		MaxTime: DefaultMaxTime, MaxEjectedPercent: DefaultMaxEjectedPercent,
		On: DefaultOn(),
	}
}

// Pool is the part of *pool.Pool the tracker uses.
type Pool interface {
	Backend(addr netip.AddrPort) (pool.Backend, bool)
	Eject(now time.Time, addr netip.AddrPort, until time.Time, cause string) error
	Recover(now time.Time, addr netip.AddrPort, cause string) error
}

var _ Pool = (*pool.Pool)(nil)

// Event is an ejection or recovery the tracker asked the pool for.
type Event struct {
	Addr    netip.AddrPort
	Recover bool // a trial succeeded and the address was recovered
	Trial   bool // decided by a trial request
	// Kind is the kind of the failure that decided an ejection, from a
	// small set (status, connect-failure, reset, timeout): a metrics label.
	Kind     string
	Duration time.Duration // ejection time (0 for a recovery)
	Until    time.Time
	Cause    string
	Err      error // the pool refused (e.g. pool.ErrEjectionLimit)
}

// Options are the tracker's collaborators; every field may be zero.
type Options struct {
	// Jitter is the share of the ejection time taken off at random, 0..1;
	// negative means none, 0 means DefaultJitter.
	Jitter  float64
	Log     *slog.Logger
	Observe func(Event) // called outside the tracker's lock
}

// Tracker counts failures per address and ejects. It is safe for concurrent use.
type Tracker struct {
	p       Pool
	jitter  float64
	log     *slog.Logger
	observe func(Event)

	mu       sync.Mutex
	cfg      Config
	on       []retry.Condition // cfg.On compiled
	failures map[netip.AddrPort][]time.Time
	// trials holds the addresses with a trial request in flight.
	trials map[netip.AddrPort]bool
	// settled holds addresses that are done with their trial — it
	// succeeded, or it failed but could not be ejected (limit) — keyed by
	// the start of the state they were in: they serve normally for as long
	// as they stay in it, even when a caller still holds a snapshot of the
	// backend taken before the recovery (the proxy caches its backend list
	// for up to 250 ms, and a recovery of an active address is no state
	// change that would refresh it).
	settled map[netip.AddrPort]time.Time
}

// New returns a tracker ejecting from p with cfg (Failures 0 disables ejection).
func New(cfg Config, p Pool, opts Options) (*Tracker, error) {
	if err := Validate(cfg); err != nil {
		return nil, err
	}
	on, _ := conditions(cfg.On) // checked by Validate
	j := opts.Jitter
	switch {
	case j == 0:
		j = DefaultJitter
	case j < 0:
		j = 0
	case j > 1:
		j = 1
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Tracker{
		p: p, jitter: j, log: log, observe: opts.Observe, cfg: cfg, on: on,
		failures: map[netip.AddrPort][]time.Time{},
		trials:   map[netip.AddrPort]bool{},
		settled:  map[netip.AddrPort]time.Time{},
	}, nil
}

// Validate checks an ejection block.
func Validate(cfg Config) error {
	if _, err := conditions(cfg.On); err != nil {
		return err
	}
	switch {
	case cfg.Failures < 0:
		return fmt.Errorf("ejection failures %d: must not be negative", cfg.Failures)
	case cfg.Failures == 0:
		return nil
	case cfg.Window <= 0:
		return fmt.Errorf("ejection window %s: must be positive", cfg.Window)
	case cfg.BaseTime <= 0:
		return fmt.Errorf("ejection base_time %s: must be positive", cfg.BaseTime)
	case cfg.MaxTime < cfg.BaseTime:
		return fmt.Errorf("ejection max_time %s: must not be less than base_time %s", cfg.MaxTime, cfg.BaseTime)
	case cfg.MaxEjectedPercent < 0 || cfg.MaxEjectedPercent > 100:
		return fmt.Errorf("ejection max_ejected_percent %d: must be between 0 and 100", cfg.MaxEjectedPercent)
	}
	return nil
}

// SetConfig replaces the settings (on reload); counted failures are kept.
func (t *Tracker) SetConfig(cfg Config) error {
	if err := Validate(cfg); err != nil {
		return err
	}
	on, _ := conditions(cfg.On)
	t.mu.Lock()
	t.cfg = cfg
	t.on = on
	t.mu.Unlock()
	return nil
}

// Counts reports whether o is a failure that counts toward ejection: it
// matches an entry of ejection.on. The caller reports it with Report.
func (t *Tracker) Counts(o retry.Outcome) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.on {
		if c.Match(o) {
			return true
		}
	}
	return false
}

// Config returns the settings in use.
func (t *Tracker) Config() Config {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cfg
}

// OnTrial reports whether b is an address back from an ejection whose
// trial has not succeeded yet.
func (t *Tracker) OnTrial(b pool.Backend) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.onTrialLocked(b)
}

func (t *Tracker) onTrialLocked(b pool.Backend) bool {
	if b.State != pool.Active || b.Ejections == 0 || b.Cause != pool.CauseEjectionExpired {
		return false
	}
	if since, ok := t.settled[b.Addr]; ok && since.Equal(b.Since) {
		return false
	}
	return true
}

// Admit is asked before a request is sent to b. An address on trial admits
// one request at a time (trial is then true, and the caller must report the
// try with Report or Abandon); any other address admits everything.
func (t *Tracker) Admit(b pool.Backend) (ok, trial bool) {
	if b.State != pool.Active || b.Ejections == 0 || b.Cause != pool.CauseEjectionExpired {
		return true, false // never on trial: no need for the lock
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.onTrialLocked(b) {
		return true, false
	}
	if t.trials[b.Addr] {
		return false, false
	}
	t.trials[b.Addr] = true
	return true, true
}

// Abandon ends a trial whose outcome is unknown (the client went away): the
// next request may try again.
func (t *Tracker) Abandon(addr netip.AddrPort) {
	t.mu.Lock()
	delete(t.trials, addr)
	t.mu.Unlock()
}

// Report records the outcome of a try on addr. failed is whether it counts
// as a failure (see the package doc); kind is its bounded kind (status,
// connect-failure, reset, timeout) and cause describes it for the pool's
// records ("status 503", "connect failure: ..."). trial is Admit's answer.
//
// Failures of requests that were sent before the address left `active`
// (it was ejected or drained meanwhile) are not counted: they would extend
// an ejection that already happened and inflate its doubling.
func (t *Tracker) Report(now time.Time, addr netip.AddrPort, trial, failed bool, kind, cause string) {
	if !failed && !trial {
		return // a success outside a trial changes nothing
	}
	if failed && !trial {
		if b, ok := t.p.Backend(addr); !ok || b.State != pool.Active {
			return
		}
	}
	var ev *Event
	t.mu.Lock()
	if trial {
		delete(t.trials, addr)
	}
	switch {
	case t.cfg.Failures == 0 && !trial:
	case !failed && trial:
		delete(t.failures, addr)
		ev = &Event{Addr: addr, Recover: true, Trial: true, Cause: CauseTrialSucceeded}
	case !failed:
	case trial:
		delete(t.failures, addr)
		ev = t.ejectLocked(now, addr, "trial failed: "+cause)
		ev.Trial = true
	default:
		fs := append(t.failures[addr], now)
		cut := now.Add(-t.cfg.Window)
		i := 0
		for i < len(fs) && !fs[i].After(cut) {
			i++
		}
		fs = fs[i:]
		if len(fs) > t.cfg.Failures {
			fs = fs[len(fs)-t.cfg.Failures:]
		}
		if len(fs) >= t.cfg.Failures {
			delete(t.failures, addr)
			ev = t.ejectLocked(now, addr, fmt.Sprintf("%d failures within %s, last: %s", len(fs), t.cfg.Window, cause))
		} else {
			t.failures[addr] = fs
		}
	}
	t.mu.Unlock()
	if ev == nil {
		return
	}
	if !ev.Recover {
		ev.Kind = kind
	}
	t.apply(now, ev, trial)
}

// ejectLocked prepares an ejection of addr; the pool is called by apply.
func (t *Tracker) ejectLocked(now time.Time, addr netip.AddrPort, cause string) *Event {
	n := 0
	if b, ok := t.p.Backend(addr); ok {
		n = b.Ejections
	}
	d := t.durationLocked(n)
	return &Event{Addr: addr, Duration: d, Until: now.Add(d), Cause: "passive: " + cause}
}

// durationLocked is base_time·2^n capped at max_time, minus jitter.
func (t *Tracker) durationLocked(n int) time.Duration {
	return t.backoffLocked().Delay(n+1, nil)
}

// backoffLocked is the ejection time's backoff: doubling from base_time
// at each re-ejection, up to max_time, with the tracker's jitter.
func (t *Tracker) backoffLocked() backoff.Backoff {
	return backoff.Backoff{Base: t.cfg.BaseTime, Max: t.cfg.MaxTime, Jitter: t.jitter}
}

// Duration is the ejection time (before jitter) of an address ejected n
// times since its last recovery.
func (t *Tracker) Duration(n int) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.backoffLocked().Ceiling(n + 1)
}

func (t *Tracker) apply(now time.Time, ev *Event, trial bool) {
	if ev.Recover {
		ev.Err = t.p.Recover(now, ev.Addr, ev.Cause)
		if ev.Err == nil {
			t.log.Info("backend recovered by a trial request", "address", ev.Addr.String())
			if b, ok := t.p.Backend(ev.Addr); ok {
				t.mu.Lock()
				t.settled[ev.Addr] = b.Since
				t.mu.Unlock()
			}
		}
	} else {
		ev.Err = t.p.Eject(now, ev.Addr, ev.Until, ev.Cause)
		switch {
		case ev.Err == nil:
			t.log.Warn("backend ejected", "address", ev.Addr.String(), "for", ev.Duration, "cause", ev.Cause)
		case errors.Is(ev.Err, pool.ErrEjectionLimit):
			t.log.Warn("backend not ejected: max_ejected_percent reached", "address", ev.Addr.String(), "cause", ev.Cause)
			if trial {
				if b, ok := t.p.Backend(ev.Addr); ok {
					t.mu.Lock()
					t.settled[ev.Addr] = b.Since
					t.mu.Unlock()
				}
			}
		default:
			t.log.Debug("backend not ejected", "address", ev.Addr.String(), "cause", ev.Cause, "error", ev.Err)
		}
	}
	if t.observe != nil {
		t.observe(*ev)
	}
}

// Forget drops what the tracker knows about addr (it left the pool).
func (t *Tracker) Forget(addr netip.AddrPort) {
	t.mu.Lock()
	delete(t.failures, addr)
	delete(t.trials, addr)
	delete(t.settled, addr)
	t.mu.Unlock()
}

// Panic reports whether too much of a pool is out for health to decide
// where requests go: no address is active while some are ejected, or more
// than maxEjectedPercent of the serving addresses (active or ejected) are
// ejected (possible when active ones drain). The proxy then spreads load
// over active and ejected addresses alike, as Envoy's panic threshold does.
func Panic(backends []pool.Backend, maxEjectedPercent int) bool {
	active, ejected := 0, 0
	for _, b := range backends {
		switch b.State {
		case pool.Active:
			active++
		case pool.Ejected:
			ejected++
		}
	}
	if ejected == 0 {
		return false
	}
	return active == 0 || maxEjectedPercent > 0 && ejected*100 > maxEjectedPercent*(active+ejected)
}
