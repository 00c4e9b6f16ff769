// Package pool is the backend state machine of DESIGN.md "Backend
// lifecycle": every address of a pool is active, draining, ejected or
// removed, with the cause, the time it got there and its deadlines.
//
// A pool's desired set is the union of its sources: the fixed addresses of
// the config are the source "static", and every DNS name is a source of its
// own, fed by the DNS watcher. The pool turns changes of those sets, operator
// drains, ejections and the passage of time (Tick) into transitions. It is
// pure Go with the clock passed in; the agent mirrors the states into the
// data path and the L7 stage reads them.
package pool

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// State is the lifecycle state of an address.
type State uint8

// States. The zero value means "not known to the pool" and is only seen as
// the From of a transition that creates an address.
const (
	Absent   State = iota // not known yet (only as Transition.From)
	Active                // in the Maglev table, gets new flows
	Draining              // no new flows; existing flows go on until none is left or the deadline
	Ejected               // failed health or ejection thresholds: no new flows until recovered
	Removed               // gone from the tables; flows still pinned to it get an RST
)

func (s State) String() string {
	switch s {
	case Absent:
		return "absent"
	case Active:
		return "active"
	case Draining:
		return "draining"
	case Ejected:
		return "ejected"
	case Removed:
		return "removed"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// SourceStatic is the source of the fixed addresses written in the config.
// Every other source is a DNS name.
const SourceStatic = "static"

// Causes of transitions that are not a source's name.
const (
	CauseConfig          = "config"           // the static source added or dropped the address
	CauseOperator        = "operator"         // sluice drain / undrain
	CauseNoFlows         = "no-flows"         // a draining address has no flows left
	CauseDrainTimeout    = "drain-timeout"    // a draining address reached its deadline
	CauseEjectionExpired = "ejection-expired" // an ejection ended; the address is back on trial
	CauseAdopted         = "adopted"          // found in the data path when the agent started
)

// SourceCause is the cause recorded when source adds or drops an address:
// "config" for the static source, "dns:<name>" for a DNS name.
func SourceCause(source string) string {
	if source == SourceStatic {
		return CauseConfig
	}
	return "dns:" + source
}

// Errors returned by Drain, Undrain, Eject and Recover.
var (
	ErrUnknownAddress = errors.New("unknown address")
	ErrNotActive      = errors.New("address is not active")
	ErrNotEjected     = errors.New("address is not ejected")
	ErrEjectionLimit  = errors.New("ejection limit reached")
)

// DefaultRemovedGrace is how long a removed address stays visible in the
// pool (for status) when Config.RemovedGrace is 0.
const DefaultRemovedGrace = time.Minute

// Config are a pool's lifecycle settings.
type Config struct {
	// DrainTimeout is how long a draining address keeps its flows at most.
	DrainTimeout time.Duration
	// MaxEjectedPercent caps the share of the pool's serving addresses
	// (active or ejected) that may be ejected at once, 0..100.
	MaxEjectedPercent int
	// RemovedGrace is how long a removed address is remembered; 0 means
	// DefaultRemovedGrace.
	RemovedGrace time.Duration
}

func (c Config) removedGrace() time.Duration {
	if c.RemovedGrace <= 0 {
		return DefaultRemovedGrace
	}
	return c.RemovedGrace
}

// Desired is one address a source wants in the pool.
type Desired struct {
	Addr   netip.AddrPort
	Weight uint32 // 0 means 1
	// Info describes where the address came from, e.g. the DNS answer
	// ("A 198.18.2.11 ttl 30s at 12:00:01"); shown in status.
	Info string
}

// Backend is a snapshot of one address of a pool.
type Backend struct {
	Addr   netip.AddrPort
	State  State
	Cause  string    // why it is in State
	Since  time.Time // when it got into State
	Weight uint32
	// Source is the source the address is taken from ("static" or a DNS
	// name; "" when no source lists it any more) and Info what it said.
	Source string
	Info   string
	// Desired is whether any source lists the address.
	Desired bool
	// Held is set by an operator drain and cleared by Undrain: the address
	// does not go back to active while it is set.
	Held bool
	// DrainDeadline is when a draining address is removed even with flows
	// (zero unless Draining).
	DrainDeadline time.Time
	// EjectedUntil is when an ejected address is tried again (zero unless Ejected).
	EjectedUntil time.Time
	// Ejections counts ejections since the last recovery, for backoff.
	Ejections int
	// Flows is the number of live flows a draining address had at the
	// last Tick.
	Flows int
}

// Transition is one state change of one address.
type Transition struct {
	Pool     string
	Addr     netip.AddrPort
	From, To State
	Cause    string
	At       time.Time
}

// Observer receives every transition, after the pool's lock is released. It
// must not block for long.
type Observer func(Transition)

type entry struct {
	Backend
	adopted bool // taken from the data path at start, not yet claimed by a source
}

// Pool holds the addresses of one pool. It is safe for concurrent use.
type Pool struct {
	name    string
	log     *slog.Logger
	observe Observer

	subMu   sync.Mutex
	subs    map[int]Observer // Subscribe's observers
	nextSub int

	mu       sync.Mutex
	cfg      Config
	sources  map[string]map[netip.AddrPort]Desired
	expected map[string]bool // sources the pool is made of; nil: just those that reported
	entries  map[netip.AddrPort]*entry
	refused  uint64 // ejections refused by MaxEjectedPercent
	// version counts the changes a consumer of the states must act on:
	// a state, a weight, an address added or forgotten.
	version uint64

	lookups lookups // DNS lookups asked for (resolve.go)
}

// New returns an empty pool. log and observe may be nil.
func New(name string, cfg Config, log *slog.Logger, observe Observer) *Pool {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Pool{
		name:    name,
		log:     log,
		observe: observe,
		cfg:     cfg,
		sources: make(map[string]map[netip.AddrPort]Desired),
		entries: make(map[netip.AddrPort]*entry),
	}
}

// Name is the pool's name.
func (p *Pool) Name() string { return p.name }

// Config returns the pool's settings.
func (p *Pool) Config() Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}

// SetConfig replaces the pool's settings (on reload). Deadlines already set
// are kept; new ones use the new values.
func (p *Pool) SetConfig(cfg Config) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cfg = cfg
}

// transitions collects the changes of one call, delivered on unlock.
type transitions []Transition

func (p *Pool) deliver(ts transitions) {
	if len(ts) == 0 {
		return
	}
	p.subMu.Lock()
	subs := make([]Observer, 0, len(p.subs))
	for _, o := range p.subs {
		subs = append(subs, o)
	}
	p.subMu.Unlock()
	for _, t := range ts {
		p.log.Info("backend state", "pool", t.Pool, "address", t.Addr.String(),
			"from", t.From.String(), "to", t.To.String(), "cause", t.Cause)
		if p.observe != nil {
			p.observe(t)
		}
		for _, o := range subs {
			o(t)
		}
	}
}

// Subscribe adds an observer of every later transition (an L7 service
// closing pooled connections to addresses that leave active), called after
// the pool's own observer, outside its lock. The returned func removes it.
func (p *Pool) Subscribe(o Observer) (unsubscribe func()) {
	p.subMu.Lock()
	defer p.subMu.Unlock()
	if p.subs == nil {
		p.subs = make(map[int]Observer)
	}
	id := p.nextSub
	p.nextSub++
	p.subs[id] = o
	return func() {
		p.subMu.Lock()
		defer p.subMu.Unlock()
		delete(p.subs, id)
	}
}

// move changes e's state and records the transition. Called with mu held.
func (p *Pool) move(ts *transitions, now time.Time, e *entry, to State, cause string) {
	from := e.State
	if from == to {
		return
	}
	p.version++
	e.State = to
	e.Cause = cause
	e.Since = now
	e.DrainDeadline = time.Time{}
	e.EjectedUntil = time.Time{}
	switch to {
	case Draining:
		e.DrainDeadline = now.Add(p.cfg.DrainTimeout)
	case Removed:
		e.Flows = 0
	}
	*ts = append(*ts, Transition{Pool: p.name, Addr: e.Addr, From: from, To: to, Cause: cause, At: now})
}

// Expect declares the sources the pool is made of (on start and reload).
// Sources no longer expected are dropped, so their addresses drain.
// Addresses adopted from the data path are left alone until every expected
// source has reported once: a restarted agent does not drain an address
// only because its DNS name has not been resolved yet.
func (p *Pool) Expect(now time.Time, sources []string) {
	p.mu.Lock()
	var ts transitions
	p.expected = make(map[string]bool, len(sources))
	for _, s := range sources {
		p.expected[s] = true
	}
	var cause string
	for s := range p.sources {
		if !p.expected[s] {
			delete(p.sources, s)
			cause = SourceCause(s)
		}
	}
	if cause == "" {
		cause = CauseConfig
	}
	p.evaluate(&ts, now, cause)
	p.mu.Unlock()
	p.deliver(ts)
}

// SetSource replaces the addresses one source wants. An empty list drops
// the source. New addresses become active; addresses no source wants any
// more start draining (cause: SourceCause(source)); a draining address
// wanted again is active again unless an operator drained it.
//
// It reports whether the source's set changed (addresses or weights). An
// unchanged set (a DNS answer that says again what the last one said)
// only refreshes the addresses' Info: no address is re-evaluated and the
// pool's Version stays, so nothing downstream has anything to do.
func (p *Pool) SetSource(now time.Time, source string, addrs []Desired) (changed bool) {
	p.mu.Lock()
	if p.sameSet(source, addrs) {
		p.refreshInfo(source, addrs)
		p.mu.Unlock()
		return false
	}
	var ts transitions
	if len(addrs) == 0 {
		delete(p.sources, source)
		// Remember that it reported, so adopted addresses are not kept for it.
		if p.expected != nil && p.expected[source] {
			p.sources[source] = map[netip.AddrPort]Desired{}
		}
	} else {
		set := make(map[netip.AddrPort]Desired, len(addrs))
		for _, d := range addrs {
			if d.Weight == 0 {
				d.Weight = 1
			}
			set[d.Addr] = d
		}
		p.sources[source] = set
	}
	before := p.version
	p.evaluate(&ts, now, SourceCause(source))
	changed = p.version != before
	p.mu.Unlock()
	p.deliver(ts)
	return changed
}

// sameSet is whether source already reported exactly addrs (same
// addresses, same weights). Called with mu held.
func (p *Pool) sameSet(source string, addrs []Desired) bool {
	cur, ok := p.sources[source]
	if !ok || len(cur) != len(addrs) {
		return false
	}
	for _, d := range addrs {
		w := d.Weight
		if w == 0 {
			w = 1
		}
		c, ok := cur[d.Addr]
		if !ok || c.Weight != w {
			return false
		}
	}
	// Duplicates in addrs would make the lengths match a smaller set.
	return len(addrs) == 0 || !hasDuplicates(addrs)
}

func hasDuplicates(addrs []Desired) bool {
	if len(addrs) < 2 {
		return false
	}
	seen := make(map[netip.AddrPort]bool, len(addrs))
	for _, d := range addrs {
		if seen[d.Addr] {
			return true
		}
		seen[d.Addr] = true
	}
	return false
}

// refreshInfo records the Info of an unchanged set. Called with mu held.
func (p *Pool) refreshInfo(source string, addrs []Desired) {
	set := p.sources[source]
	for _, d := range addrs {
		c := set[d.Addr]
		if c.Info == d.Info {
			continue
		}
		c.Info = d.Info
		set[d.Addr] = c
		if e, ok := p.entries[d.Addr]; ok && e.Source == source {
			e.Info = d.Info
		}
	}
}

// Version changes whenever an address's state or weight changes, or an
// address is added or forgotten: a consumer that saw a Version has
// nothing to redo while it stays the same.
func (p *Pool) Version() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.version
}

// Sources lists the sources that reported, sorted.
func (p *Pool) Sources() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.sources))
	for s := range p.sources {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// allReported is whether every expected source has reported. Called with mu held.
func (p *Pool) allReported() bool {
	for s := range p.expected {
		if _, ok := p.sources[s]; !ok {
			return false
		}
	}
	return true
}

// want returns the desired entry for addr: the static source wins, then
// the first source by name. Called with mu held.
func (p *Pool) want(addr netip.AddrPort) (Desired, string, bool) {
	if d, ok := p.sources[SourceStatic][addr]; ok {
		return d, SourceStatic, true
	}
	var (
		best  Desired
		bestS string
		found bool
	)
	for s, set := range p.sources {
		if d, ok := set[addr]; ok && (!found || s < bestS) {
			best, bestS, found = d, s, true
		}
	}
	return best, bestS, found
}

// evaluate applies the desired sets to every entry. cause is the cause of
// additions and drops made now. Called with mu held.
func (p *Pool) evaluate(ts *transitions, now time.Time, cause string) {
	seen := make(map[netip.AddrPort]bool)
	for _, set := range p.sources {
		for addr := range set {
			if seen[addr] {
				continue
			}
			seen[addr] = true
			d, src, _ := p.want(addr)
			e, ok := p.entries[addr]
			if !ok {
				e = &entry{Backend: Backend{Addr: addr}}
				p.entries[addr] = e
				p.version++
			}
			if e.adopted && e.State == Draining && src == SourceStatic {
				// Found draining though the config still lists it: only
				// an operator does that, and the drain must survive the
				// restart. (A DNS name's address drained because an
				// answer left it out is simply active again.)
				e.Held = true
			}
			e.Desired = true
			e.adopted = false
			if e.Weight != d.Weight {
				e.Weight = d.Weight
				p.version++
			}
			e.Source = src
			e.Info = d.Info
			switch {
			case e.Held:
				// An operator drain sticks until Undrain.
			case e.State == Absent, e.State == Removed, e.State == Draining:
				p.move(ts, now, e, Active, SourceCause(src))
			}
		}
	}
	settled := p.allReported()
	for addr, e := range p.entries {
		if seen[addr] {
			continue
		}
		if e.adopted && !settled {
			continue
		}
		e.Desired = false
		e.adopted = false
		e.Source = ""
		switch e.State {
		case Active, Ejected:
			p.move(ts, now, e, Draining, cause)
		}
	}
}

// Adopt seeds the pool with an address found in the data path when the
// agent starts, before sources report. An active or ejected address keeps
// its state; a draining one keeps draining with a fresh deadline, and if
// the static source still lists it, it is taken as operator-drained (the
// data path cannot tell why it drains, and an operator's drain must
// survive a restart). Anything else is ignored, as is an address the pool
// already has.
func (p *Pool) Adopt(now time.Time, addr netip.AddrPort, state State, weight uint32, ejectedUntil time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.entries[addr]; ok {
		return
	}
	if weight == 0 {
		weight = 1
	}
	e := &entry{Backend: Backend{Addr: addr, State: state, Cause: CauseAdopted, Since: now, Weight: weight}, adopted: true}
	switch state {
	case Active:
	case Ejected:
		e.EjectedUntil = ejectedUntil
	case Draining:
		e.DrainDeadline = now.Add(p.cfg.DrainTimeout)
	default:
		return
	}
	p.entries[addr] = e
	p.version++
	p.log.Info("backend adopted", "pool", p.name, "address", addr.String(), "state", state.String())
}

// update is the pattern every operation on one address follows: lock,
// look the address up (ErrUnknownAddress when the pool does not know it),
// let op change it and record transitions, unlock, then deliver the
// transitions to the observers outside the lock.
func (p *Pool) update(now time.Time, verb string, addr netip.AddrPort, op func(e *entry, ts *transitions) error) error {
	p.mu.Lock()
	var ts transitions
	e, ok := p.entries[addr]
	if !ok {
		p.mu.Unlock()
		return fmt.Errorf("pool %s: %s %s: %w", p.name, verb, addr, ErrUnknownAddress)
	}
	err := op(e, &ts)
	p.mu.Unlock()
	p.deliver(ts)
	return err
}

// Drain takes an address out of rotation on an operator's request: it
// drains like an address its source dropped, and stays out (even once
// removed) until Undrain.
func (p *Pool) Drain(now time.Time, addr netip.AddrPort) error {
	return p.update(now, "drain", addr, func(e *entry, ts *transitions) error {
		e.Held = true
		switch e.State {
		case Active, Ejected:
			p.move(ts, now, e, Draining, CauseOperator)
		}
		return nil
	})
}

// Undrain ends an operator drain: the address is active again if a source
// still wants it (a new one if it was already removed).
func (p *Pool) Undrain(now time.Time, addr netip.AddrPort) error {
	return p.update(now, "undrain", addr, func(e *entry, ts *transitions) error {
		if e.Held {
			e.Held = false
			if e.Desired && (e.State == Draining || e.State == Removed) {
				p.move(ts, now, e, Active, CauseOperator)
			}
		}
		return nil
	})
}

// Eject takes an active address out of rotation until the given time
// (passive ejection, failed health checks). An ejected address can be
// ejected again to move its time. Ejecting more than MaxEjectedPercent of
// the addresses that serve (active or ejected) is refused with
// ErrEjectionLimit, so the pool is never emptied this way.
func (p *Pool) Eject(now time.Time, addr netip.AddrPort, until time.Time, cause string) error {
	return p.update(now, "eject", addr, func(e *entry, ts *transitions) error {
		switch e.State {
		case Ejected:
			e.EjectedUntil = until
			e.Cause = cause
			e.Ejections++
			p.log.Info("backend ejection extended", "pool", p.name, "address", addr.String(), "until", until, "cause", cause)
			return nil
		case Active:
		default:
			return fmt.Errorf("pool %s: eject %s (%s): %w", p.name, addr, e.State, ErrNotActive)
		}
		serving, ejected := p.serving()
		if (ejected+1)*100 > p.cfg.MaxEjectedPercent*serving {
			pct := p.cfg.MaxEjectedPercent
			p.refused++
			p.log.Warn("backend ejection refused", "pool", p.name, "address", addr.String(), "cause", cause,
				"ejected", ejected, "serving", serving, "max_ejected_percent", pct)
			return fmt.Errorf("pool %s: eject %s: %d of %d already ejected, max %d%%: %w",
				p.name, addr, ejected, serving, pct, ErrEjectionLimit)
		}
		p.move(ts, now, e, Ejected, cause)
		e.EjectedUntil = until
		e.Ejections++
		return nil
	})
}

// serving counts the addresses that serve (active or ejected) and the
// ejected ones among them. Called with mu held.
func (p *Pool) serving() (serving, ejected int) {
	for _, o := range p.entries {
		switch o.State {
		case Active:
			serving++
		case Ejected:
			serving++
			ejected++
		}
	}
	return serving, ejected
}

// EjectionRoom is how many more addresses Eject would accept right now
// under MaxEjectedPercent (0: none).
func (p *Pool) EjectionRoom() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	serving, ejected := p.serving()
	room := 0
	for (ejected+room+1)*100 <= p.cfg.MaxEjectedPercent*serving && ejected+room < serving {
		room++
	}
	return room
}

// EjectionsRefused counts the ejections refused because of
// MaxEjectedPercent since the pool was created.
func (p *Pool) EjectionsRefused() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refused
}

// Recover brings an ejected address back at once (e.g. `rise` passing
// health checks, a successful trial) and resets its ejection count.
func (p *Pool) Recover(now time.Time, addr netip.AddrPort, cause string) error {
	return p.update(now, "recover", addr, func(e *entry, ts *transitions) error {
		e.Ejections = 0
		if e.State != Ejected {
			// Back on trial and the trial succeeded: no state change, but
			// status says why it is in rotation for good now.
			if e.State == Active && e.Cause == CauseEjectionExpired {
				e.Cause = cause
			}
			return nil
		}
		p.move(ts, now, e, Active, cause)
		return nil
	})
}

// FlowCounts gives the live flows of a draining address; known false:
// its count could not be read (only its deadline applies).
type FlowCounts func(addr netip.AddrPort) (n int, known bool)

// Tick applies time and flow counts. flows counts the live flows of the
// draining addresses (see Draining); nil means the counts are unknown
// (reading them failed), so only deadlines apply. A draining address with no flow is removed
// ("no-flows"), one past its deadline is removed even with flows
// ("drain-timeout"); an ejected address past its time is active again on
// trial; removed addresses are forgotten after the removed grace, unless an
// operator still holds an address a source wants. It returns the
// addresses forgotten.
func (p *Pool) Tick(now time.Time, flows FlowCounts) (forgotten []netip.AddrPort) {
	p.mu.Lock()
	var ts transitions
	grace := p.cfg.removedGrace()
	for addr, e := range p.entries {
		switch e.State {
		case Draining:
			n, known := 0, false
			if flows != nil {
				n, known = flows(addr)
			}
			if known {
				e.Flows = n
			}
			switch {
			case known && n == 0:
				p.move(&ts, now, e, Removed, CauseNoFlows)
			case !now.Before(e.DrainDeadline):
				p.move(&ts, now, e, Removed, CauseDrainTimeout)
			}
		case Ejected:
			if !e.EjectedUntil.IsZero() && !now.Before(e.EjectedUntil) {
				p.move(&ts, now, e, Active, CauseEjectionExpired)
			}
		case Removed:
			if e.Held && e.Desired {
				continue
			}
			if now.Sub(e.Since) >= grace {
				delete(p.entries, addr)
				p.version++
				forgotten = append(forgotten, addr)
				p.log.Debug("backend forgotten", "pool", p.name, "address", addr.String())
			}
		}
	}
	p.mu.Unlock()
	p.deliver(ts)
	return forgotten
}

// Draining lists the draining addresses (unsorted): the ones Tick asks
// the flow counts of.
func (p *Pool) Draining() []netip.AddrPort {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []netip.AddrPort
	for addr, e := range p.entries {
		if e.State == Draining {
			out = append(out, addr)
		}
	}
	return out
}

// NextDeadline is the earliest time Tick has something to do regardless
// of flows: a drain deadline or the end of an ejection (zero when none).
func (p *Pool) NextDeadline() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	var next time.Time
	for _, e := range p.entries {
		var t time.Time
		switch e.State {
		case Draining:
			t = e.DrainDeadline
		case Ejected:
			t = e.EjectedUntil
		}
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	return next
}

// Backend returns one address.
func (p *Pool) Backend(addr netip.AddrPort) (Backend, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.entries[addr]
	if !ok {
		return Backend{}, false
	}
	return e.Backend, true
}

// Backends returns every address the pool knows, sorted by address.
func (p *Pool) Backends() []Backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Backend, 0, len(p.entries))
	for _, e := range p.entries {
		out = append(out, e.Backend)
	}
	slices.SortFunc(out, func(a, b Backend) int { return a.Addr.Compare(b.Addr) })
	return out
}

// Active returns the addresses that get new flows, sorted by address.
func (p *Pool) Active() []Backend {
	all := p.Backends()
	out := all[:0]
	for _, b := range all {
		if b.State == Active {
			out = append(out, b)
		}
	}
	return out
}

// Empty is whether the pool has no source and no address left: a pool
// dropped from the config can be forgotten then.
func (p *Pool) Empty() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, set := range p.sources {
		if len(set) > 0 {
			return false
		}
	}
	return len(p.entries) == 0
}

// Counts returns how many addresses are in each state.
func (p *Pool) Counts() map[State]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[State]int, 4)
	for _, e := range p.entries {
		out[e.State]++
	}
	return out
}

// Saved is what the agent persists of an address across a restart: the
// decisions the data path's slot state cannot carry (an operator's hold,
// the real drain deadline, an ejection's end and count).
type Saved struct {
	State         State // Draining, Ejected, or Removed (only with Held)
	Held          bool
	Cause         string
	Since         time.Time
	DrainDeadline time.Time
	EjectedUntil  time.Time
	Ejections     int
}

// savedOf is what of e is worth persisting (ok false: nothing, the
// address is active, or removed and not held).
func savedOf(e *entry) (Saved, bool) {
	switch {
	case e.State == Ejected, e.State == Draining, e.Held && e.State == Removed:
		return Saved{State: e.State, Held: e.Held, Cause: e.Cause, Since: e.Since,
			DrainDeadline: e.DrainDeadline, EjectedUntil: e.EjectedUntil, Ejections: e.Ejections}, true
	}
	return Saved{}, false
}

// SavedAll returns everything worth persisting, by address.
func (p *Pool) SavedAll() map[netip.AddrPort]Saved {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[netip.AddrPort]Saved)
	for addr, e := range p.entries {
		if s, ok := savedOf(e); ok {
			out[addr] = s
		}
	}
	return out
}

// Restore applies what a previous agent decided about addr, read back
// after a restart (call it after Adopt, before sources report): an
// operator hold survives whatever the sources say, a drain keeps its
// deadline, an ejection its end and count. An address the pool does not
// know yet (an operator-drained address already removed) is added in the
// saved state, waiting for its source like an adopted one.
func (p *Pool) Restore(now time.Time, addr netip.AddrPort, s Saved) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.entries[addr]
	if !ok {
		if s.State != Removed || !s.Held {
			// A draining or ejected address the data path no longer has
			// is gone: nothing to restore.
			return
		}
		e = &entry{Backend: Backend{Addr: addr, State: Removed, Weight: 1}, adopted: true}
		p.entries[addr] = e
		p.version++
	}
	if e.State != s.State {
		// The slot says otherwise (it moved on while no agent ran, or
		// was written by a newer decision): keep only the hold.
		e.Held = e.Held || s.Held && e.State != Active
		return
	}
	e.Held = s.Held
	e.Cause = s.Cause
	e.Since = s.Since
	switch s.State {
	case Draining:
		e.DrainDeadline = s.DrainDeadline
	case Ejected:
		e.EjectedUntil = s.EjectedUntil
		e.Ejections = s.Ejections
	}
	p.log.Info("backend state restored", "pool", p.name, "address", addr.String(), "state", s.State.String(),
		"held", s.Held, "cause", s.Cause)
}
