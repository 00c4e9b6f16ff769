// Package health runs a pool's active health checks (DESIGN.md, issue 4
// item 6): an HTTP or HTTPS GET of a path with an expected status range,
// or a TCP connect, for every address of the pool, every interval, with a timeout,
// and rise/fall thresholds.
//
// A Checker runs one goroutine per address, bound to the context it was
// made with. Every address starts healthy — it passes until proven failing
// — unless Options.Initial says otherwise. After Fall consecutive failed
// checks it is reported unhealthy; after Rise consecutive passed checks an
// unhealthy address is reported healthy again. Only transitions are
// reported; the agent maps them to pool.Eject and pool.Recover.
package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/logthrottle"
)

// Result kinds: KindPass, or why a check failed. They are bounded, so they
// can be metric labels and transition causes.
const (
	KindPass    = "pass"
	KindTimeout = "timeout" // no connection or no complete response within the timeout
	KindRefused = "refused" // connection refused
	KindConnect = "connect" // any other failure to connect (unreachable, ...)
	KindStatus  = "status"  // an HTTP status outside the expected range
	KindRead    = "read"    // connection reset or closed, malformed response
	KindTLS     = "tls"     // the TLS handshake failed (certificate not verified, no common version)
	// KindLocal: the check could not be made for lack of this host's
	// resources (file descriptors, local ports, memory). It says nothing
	// about the address: it moves neither towards healthy nor unhealthy
	// (every address failing at once for the host's own shortage would
	// empty the pool).
	KindLocal = "local"
)

// CausePassed is the cause reported when an address turns healthy; an
// address that turns unhealthy is reported with CausePrefix + the kind of
// its last failure ("health:timeout", "health:status", ...).
const (
	CausePassed = "health:passed"
	CausePrefix = "health:"
)

// MaxBody is how much of an HTTP check's response body is read at most.
const MaxBody = 4 << 10

// Config is one pool's health check.
type Config struct {
	// HTTP is the HTTP check; nil means a TCP connect check.
	HTTP *HTTP
	// Interval is the time between the starts of two checks of an address.
	Interval time.Duration
	// Timeout bounds a whole check: connect, request and response (status
	// line, headers and up to MaxBody of body). Less than Interval.
	Timeout time.Duration
	// Rise and Fall are the consecutive passes and failures that turn an
	// address healthy and unhealthy.
	Rise, Fall int
}

// HTTP is an HTTP check: GET Path with Host, pass when the status is in
// [ExpectLo, ExpectHi]. Redirects are not followed (a 3xx is a status
// like any other).
type HTTP struct {
	Path string // default "/"
	Host string // Host header; "" sends the address
	// ExpectLo and ExpectHi bound the passing statuses, inclusive.
	ExpectLo, ExpectHi int
	// TLS makes the check HTTPS (HTTP/1.1 over TLS 1.2 or later).
	TLS *TLS
}

// TLS are an HTTPS check's settings (the names an upstream's TLS uses).
type TLS struct {
	// SNI is the server name sent; "" sends none.
	SNI string
	// VerifyName is the name the backend's certificate must carry;
	// "" means SNI. Ignored when Verify is false.
	VerifyName string
	// CA is a PEM file of the CAs to trust instead of the system's.
	CA string
	// Verify checks the certificate chain and name; false accepts any
	// certificate (insecure_skip_verify, a warning in `sluice check`).
	Verify bool
}

// FromConfig converts a pool's health_check block (defaults filled by
// config.Load).
func FromConfig(hc *config.HealthCheck) (Config, error) {
	if hc == nil {
		return Config{}, errors.New("no health check configured")
	}
	c := Config{Interval: hc.Interval.D(), Timeout: hc.Timeout.D(), Rise: hc.Rise, Fall: hc.Fall}
	if hc.HTTP != nil {
		expect := hc.HTTP.Expect
		if expect == "" {
			expect = "200-399"
		}
		lo, hi, err := config.ParseExpect(expect)
		if err != nil {
			return Config{}, fmt.Errorf("health check expect: %w", err)
		}
		c.HTTP = &HTTP{Path: hc.HTTP.Path, Host: hc.HTTP.Host, ExpectLo: lo, ExpectHi: hi}
		if h := hc.HTTP; h.TLS {
			c.HTTP.TLS = &TLS{SNI: h.ServerName, VerifyName: h.VerifyName, CA: h.CA, Verify: !h.InsecureSkipVerify}
		}
	}
	return c, c.Validate()
}

// Validate checks c, after filling the HTTP path's default.
func (c Config) Validate() error {
	switch {
	case c.Interval <= 0:
		return fmt.Errorf("health check interval %v: must be positive", c.Interval)
	case c.Timeout <= 0:
		return fmt.Errorf("health check timeout %v: must be positive", c.Timeout)
	case c.Rise < 1:
		return fmt.Errorf("health check rise %d: must be at least 1", c.Rise)
	case c.Fall < 1:
		return fmt.Errorf("health check fall %d: must be at least 1", c.Fall)
	}
	if h := c.HTTP; h != nil {
		if h.ExpectLo < 100 || h.ExpectHi > 599 || h.ExpectLo > h.ExpectHi {
			return fmt.Errorf("health check expected statuses %d-%d: not a range within 100-599", h.ExpectLo, h.ExpectHi)
		}
		if h.Path != "" && h.Path[0] != '/' {
			return fmt.Errorf("health check path %q: must start with /", h.Path)
		}
		if t := h.TLS; t != nil && t.Verify && t.SNI == "" && t.VerifyName == "" {
			return errors.New("health check over TLS: verification needs a name (server_name or verify_name)")
		}
	}
	return nil
}

// Result is the outcome of one check.
type Result struct {
	Addr   netip.AddrPort
	Kind   string // KindPass or a failure kind
	Err    error  // why it failed; nil on a pass
	Status int    // HTTP status received, 0 if none
	Start  time.Time
	Took   time.Duration
}

// OK reports whether the check passed.
func (r Result) OK() bool { return r.Kind == KindPass }

// Report receives an address's transitions: healthy false after Fall
// consecutive failures (cause CausePrefix + the failure's kind), true
// after Rise consecutive passes (cause CausePassed). It is called from the
// address's goroutine, so calls for one address are in order and calls
// for different addresses may be concurrent. It must not block for long.
type Report func(addr netip.AddrPort, healthy bool, cause string)

// Options are a Checker's optional settings.
type Options struct {
	// Logger receives transitions (info) and failed checks (debug).
	Logger *slog.Logger
	// Observe receives every check's result (for metrics), from the
	// address's goroutine, before any Report it causes.
	Observe func(Result)
	// Initial returns the state a newly added address starts in (an agent
	// restarted or reloaded while the address was ejected by health
	// checks passes false). nil: every address starts healthy. It is
	// called from SetTargets with the Checker's lock held, so it must not
	// call the Checker.
	Initial func(netip.AddrPort) bool
	// Rand returns numbers in [0, 1) for the initial offset of each
	// address's first check; default math/rand/v2.Float64.
	Rand func() float64
}

// Status is an address's current health.
type Status struct {
	Healthy bool
	// Passes and Failures count consecutive checks towards the next
	// transition (Passes while unhealthy, Failures while healthy).
	Passes, Failures int
	// Last is the latest check's result (zero before the first).
	Last Result
}

// Checker checks a set of addresses. Its methods are safe for concurrent
// use.
type Checker struct {
	cfg    Config
	report Report
	opts   Options
	log    *slog.Logger
	probe  prober

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool // Wait was called: no new goroutines
	targets map[netip.AddrPort]*target
	// localWarn spaces the warnings of checks not made (KindLocal): one
	// per check would flood the log of a host already in trouble.
	localWarn *logthrottle.Warning
}

// localWarnEvery spaces the warnings of checks not made (KindLocal).
const localWarnEvery = 10 * time.Second

// warnLocal logs r, a check not made (KindLocal), at most every
// localWarnEvery with the count since the last warning.
func (c *Checker) warnLocal(r Result) {
	c.localWarn.Note("", 1, "health checks not made: this host is short of file descriptors, local ports or memory (not counted against the addresses)",
		"addr", r.Addr, "err", r.Err)
}

// target is one address and its goroutine.
type target struct {
	addr   netip.AddrPort
	cancel context.CancelFunc
	st     Status // guarded by Checker.mu
}

// New returns a Checker with no targets; report receives transitions.
// Every goroutine it starts ends when ctx is done or Stop is called.
func New(ctx context.Context, cfg Config, report Report, o Options) (*Checker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if report == nil {
		return nil, errors.New("health checker needs a report function")
	}
	if cfg.HTTP != nil && cfg.HTTP.Path == "" {
		h := *cfg.HTTP
		h.Path = "/"
		cfg.HTTP = &h
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	probe, err := newProber(cfg)
	if err != nil {
		return nil, err
	}
	c := &Checker{
		cfg:     cfg,
		report:  report,
		opts:    o,
		log:     o.Logger,
		probe:   probe,
		targets: make(map[netip.AddrPort]*target),
	}
	c.localWarn = logthrottle.New(c.log, localWarnEvery)
	c.ctx, c.cancel = context.WithCancel(ctx)
	return c, nil
}

// SetTargets makes addrs the checked set: new addresses get a goroutine
// (first check after a random offset within one interval), addresses not
// in addrs have theirs cancelled. It does not wait for those goroutines:
// a check already running is abandoned and its result dropped, but a
// Report for a removed address may still be in progress when SetTargets
// returns. After ctx is done, Stop or Wait, it does nothing.
func (c *Checker) SetTargets(addrs []netip.AddrPort) {
	want := make(map[netip.AddrPort]bool, len(addrs))
	for _, a := range addrs {
		want[a] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for a, t := range c.targets {
		if !want[a] {
			t.cancel()
			delete(c.targets, a)
		}
	}
	if c.closed || c.ctx.Err() != nil {
		return
	}
	for a := range want {
		if _, ok := c.targets[a]; ok {
			continue
		}
		healthy := true
		if c.opts.Initial != nil {
			healthy = c.opts.Initial(a)
		}
		tctx, cancel := context.WithCancel(c.ctx)
		t := &target{addr: a, cancel: cancel, st: Status{Healthy: healthy}}
		c.targets[a] = t
		offset := time.Duration(c.opts.Rand() * float64(c.cfg.Interval))
		c.wg.Add(1)
		go c.run(tctx, t, offset)
	}
}

// Stop cancels every check. It does not wait; Wait does.
func (c *Checker) Stop() {
	c.cancel()
}

// Wait waits until every goroutine has ended; call it after Stop or once
// the context given to New is done (else it waits for that). Once Wait is
// called, SetTargets starts nothing.
func (c *Checker) Wait() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.wg.Wait()
}

// Status returns addr's current health.
func (c *Checker) Status(addr netip.AddrPort) (Status, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.targets[addr]
	if !ok {
		return Status{}, false
	}
	return t.st, true
}

// Statuses returns every target's current health.
func (c *Checker) Statuses() map[netip.AddrPort]Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[netip.AddrPort]Status, len(c.targets))
	for a, t := range c.targets {
		out[a] = t.st
	}
	return out
}

// Probe runs one check of addr now, outside the schedule (for a CLI or a
// test); it changes no state.
func (c *Checker) Probe(ctx context.Context, addr netip.AddrPort) Result {
	return c.check(ctx, addr)
}

// check runs one check bounded by the timeout.
func (c *Checker) check(ctx context.Context, addr netip.AddrPort) Result {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	start := time.Now()
	kind, status, err := c.probe.probe(ctx, addr)
	return Result{Addr: addr, Kind: kind, Err: err, Status: status, Start: start, Took: time.Since(start)}
}

// run checks t every interval, after offset, until ctx is done.
func (c *Checker) run(ctx context.Context, t *target, offset time.Duration) {
	defer c.wg.Done()
	timer := time.NewTimer(offset)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		r := c.check(ctx, t.addr)
		if ctx.Err() != nil {
			return // removed or stopped while checking: the result means nothing
		}
		if c.opts.Observe != nil {
			c.opts.Observe(r)
		}
		if changed, healthy, cause := c.record(t, r); changed {
			if healthy {
				c.log.Info("health check: address healthy", "addr", t.addr, "rise", c.cfg.Rise)
			} else {
				c.log.Warn("health check: address unhealthy", "addr", t.addr, "fall", c.cfg.Fall, "kind", r.Kind, "err", r.Err)
			}
			c.report(t.addr, healthy, cause)
		} else if r.Kind == KindLocal {
			c.warnLocal(r)
		} else if !r.OK() {
			c.log.Debug("health check failed", "addr", t.addr, "kind", r.Kind, "err", r.Err)
		}
		timer.Reset(max(c.cfg.Interval-time.Since(r.Start), 0))
	}
}

// record counts r towards t's next transition.
func (c *Checker) record(t *target, r Result) (changed, healthy bool, cause string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t.st.Last = r
	if r.Kind == KindLocal {
		return false, t.st.Healthy, ""
	}
	changed, cause = step(&t.st, r.OK(), r.Kind, c.cfg.Rise, c.cfg.Fall)
	return changed, t.st.Healthy, cause
}

// step is the rise/fall state machine: it applies one check to st and
// reports whether st.Healthy changed, with the cause.
func step(st *Status, ok bool, kind string, rise, fall int) (bool, string) {
	if ok {
		st.Failures = 0
		if st.Healthy {
			return false, ""
		}
		st.Passes++
		if st.Passes < rise {
			return false, ""
		}
		st.Healthy, st.Passes = true, 0
		return true, CausePassed
	}
	st.Passes = 0
	if !st.Healthy {
		return false, ""
	}
	st.Failures++
	if st.Failures < fall {
		return false, ""
	}
	st.Healthy, st.Failures = false, 0
	return true, CausePrefix + kind
}
