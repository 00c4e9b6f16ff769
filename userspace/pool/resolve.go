package pool

import (
	"slices"
	"sync"
	"time"
)

// A pool whose addresses come from DNS names can be asked to have those
// names looked up again now (its only address refuses connections: the
// name may have moved), and a caller can wait for the outcome of that
// lookup instead of failing at once. The agent wires the pool to the DNS
// watcher: SetRefresher gives the pool a way to start a lookup, and the
// agent calls Resolved once a lookup's outcome has been applied
// (SetSource). The L7 stage calls Reresolve and waits on its channel.

// Refresher starts a lookup of a DNS name now and reports whether one was
// started (false: the name is not followed, or it was looked up too
// recently; see discovery.Watcher.Refresh).
type Refresher func(source string) bool

// MaxLookupWait is how long a requested lookup counts as in flight when
// its outcome is never reported (the name stopped being followed): after
// it, Reresolve no longer hands out a channel for it.
const MaxLookupWait = 30 * time.Second

// lookups is a pool's state of requested DNS lookups.
type lookups struct {
	mu      sync.Mutex
	refresh Refresher
	pending map[string]time.Time // source -> when its lookup was requested
	next    chan struct{}        // closed by the next Resolved; nil until asked for
}

// SetRefresher sets how the pool starts lookups of its DNS sources (nil:
// it cannot, Reresolve returns nil).
func (p *Pool) SetRefresher(fn Refresher) {
	p.lookups.mu.Lock()
	defer p.lookups.mu.Unlock()
	p.lookups.refresh = fn
}

// dnsSources lists the pool's sources that are DNS names: expected or
// reported, never the static one.
func (p *Pool) dnsSources() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for s := range p.expected {
		if s != SourceStatic {
			out = append(out, s)
		}
	}
	for s := range p.sources {
		if s != SourceStatic && !p.expected[s] {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// Refresh asks for one DNS source of the pool to be looked up now and
// reports whether a lookup was started. A started lookup counts as in
// flight for Reresolve until Resolved(source).
func (p *Pool) Refresh(now time.Time, source string) bool {
	if source == "" || source == SourceStatic {
		return false
	}
	l := &p.lookups
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.start(now, source)
}

// start calls the refresher for source and records a started lookup.
// Called with l.mu held.
func (l *lookups) start(now time.Time, source string) bool {
	if l.refresh == nil || !l.refresh(source) {
		return false
	}
	if l.pending == nil {
		l.pending = make(map[string]time.Time)
	}
	l.pending[source] = now
	return true
}

// Reresolve asks for every DNS source of the pool to be looked up now
// (each as rate-limited by the refresher) and returns a channel closed when
// the next lookup outcome of any of them has been applied to the pool. It
// returns nil when no lookup is in flight and none could be started: a
// static pool, no refresher, or every name looked up too recently with its
// answer already in. The caller re-reads the pool when the channel closes
// and may call Reresolve again while it still finds no usable address.
func (p *Pool) Reresolve(now time.Time) <-chan struct{} {
	sources := p.dnsSources()
	l := &p.lookups
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range sources {
		if at, ok := l.pending[s]; ok && now.Sub(at) < MaxLookupWait {
			continue // already in flight: do not ask the refresher again
		}
		delete(l.pending, s)
		l.start(now, s)
	}
	if len(l.pending) == 0 {
		return nil
	}
	if l.next == nil {
		l.next = make(chan struct{})
	}
	return l.next
}

// Resolved reports that a lookup of source finished and its outcome (new
// addresses, the same ones, or a failure that kept them) has been applied:
// whoever waits on a Reresolve channel wakes up.
func (p *Pool) Resolved(source string) {
	l := &p.lookups
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.pending, source)
	if l.next != nil {
		close(l.next)
		l.next = nil
	}
}
