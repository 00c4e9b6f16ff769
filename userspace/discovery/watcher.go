package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// WatcherOptions configure a Watcher.
type WatcherOptions struct {
	// OnUpdate receives every published Update, from the name's own
	// goroutine, in order for that name. It must not block for long and
	// must not call Watch, Unwatch or Sync (they may wait for that
	// goroutine).
	OnUpdate func(Update)
	// Observe, if set, sees every Update before OnUpdate does, published
	// or not (Update.Published): every lookup outcome and every hold
	// expiry, including failures before the first good answer. For
	// metrics and status; same goroutine and rules as OnUpdate.
	Observe func(Update)
	// Logger defaults to the resolver's.
	Logger *slog.Logger
	// Rand returns numbers in [0, 1) for jitter; default math/rand/v2.
	// Called from several goroutines.
	Rand func() float64
}

// Watcher follows names: one goroutine per name re-resolves it when its
// answer expires and publishes Updates.
type Watcher struct {
	r        *Resolver
	cfg      Config
	clock    Clock
	log      *slog.Logger
	stats    *Stats
	onUpdate func(Update)
	observe  func(Update)
	rand     func() float64

	mu    sync.Mutex
	names map[string]*watch
	wg    sync.WaitGroup
}

// watch is one name's goroutine and what others may ask of it.
type watch struct {
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
	refresh chan struct{} // capacity 1: a pending Refresh

	// guarded by Watcher.mu
	lastRefresh time.Time
	status      Update
	hasStatus   bool
}

// NewWatcher returns a Watcher resolving through r.
func NewWatcher(r *Resolver, opts WatcherOptions) *Watcher {
	w := &Watcher{
		r:        r,
		cfg:      r.Config(),
		clock:    r.clock,
		log:      opts.Logger,
		stats:    r.stats,
		onUpdate: opts.OnUpdate,
		observe:  opts.Observe,
		rand:     opts.Rand,
		names:    make(map[string]*watch),
	}
	if w.log == nil {
		w.log = r.log
	}
	if w.rand == nil {
		w.rand = rand.Float64
	}
	if w.onUpdate == nil {
		w.onUpdate = func(Update) {}
	}
	return w
}

// Watch starts following name until ctx ends or Unwatch(name). Watching
// a name already watched does nothing.
func (w *Watcher) Watch(ctx context.Context, name string) error {
	fq, err := Normalize(name)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		old, ok := w.names[fq]
		if !ok {
			break
		}
		if old.ctx.Err() == nil {
			return nil
		}
		// Its context ended but its goroutine may still be delivering:
		// let it finish, so Updates for a name never interleave.
		w.mu.Unlock()
		<-old.done
		w.mu.Lock()
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("watch %s: %w", fq, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	wt := &watch{cancel: cancel, done: make(chan struct{}), refresh: make(chan struct{}, 1)}
	wt.ctx = ctx
	w.names[fq] = wt
	w.wg.Add(1)
	go w.run(ctx, fq, wt)
	return nil
}

// Unwatch stops following name and waits for its goroutine to end; no
// Update for name is delivered after it returns.
func (w *Watcher) Unwatch(name string) {
	fq, err := Normalize(name)
	if err != nil {
		return
	}
	w.mu.Lock()
	wt, ok := w.names[fq]
	delete(w.names, fq)
	w.mu.Unlock()
	if ok {
		wt.cancel()
		<-wt.done
	}
}

// Sync makes the watched names exactly names (a config reload): new names
// start, names no longer listed stop.
func (w *Watcher) Sync(ctx context.Context, names []string) error {
	want := make(map[string]bool, len(names))
	var errs []error
	for _, n := range names {
		fq, err := Normalize(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		want[fq] = true
	}
	for _, n := range w.Names() {
		if !want[n] {
			w.Unwatch(n)
		}
	}
	for n := range want {
		if err := w.Watch(ctx, n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Names returns the watched names, sorted.
func (w *Watcher) Names() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]string, 0, len(w.names))
	for n := range w.names {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Refresh asks for name to be resolved now, e.g. because connections to
// one of its addresses started failing. It is rate-limited to once per
// MinTTL per name and reports whether a lookup was triggered.
func (w *Watcher) Refresh(name string) bool {
	fq, err := Normalize(name)
	if err != nil {
		return false
	}
	now := w.clock.Now()
	w.mu.Lock()
	wt, ok := w.names[fq]
	if !ok {
		w.mu.Unlock()
		return false
	}
	if !wt.lastRefresh.IsZero() && now.Sub(wt.lastRefresh) < w.cfg.MinTTL {
		w.mu.Unlock()
		w.stats.refreshesLimited.Add(1)
		return false
	}
	wt.lastRefresh = now
	w.mu.Unlock()
	select {
	case wt.refresh <- struct{}{}:
	default: // one is already pending
	}
	w.stats.refreshes.Add(1)
	return true
}

// Status returns the latest state of name, published or not: before the
// first good answer it shows why there is none yet.
func (w *Watcher) Status(name string) (Update, bool) {
	fq, err := Normalize(name)
	if err != nil {
		return Update{}, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	wt, ok := w.names[fq]
	if !ok || !wt.hasStatus {
		return Update{}, false
	}
	return wt.status, true
}

// Wait blocks until every name's goroutine has ended (after their
// contexts ended or Unwatch).
func (w *Watcher) Wait() { w.wg.Wait() }

// run is one name's loop.
func (w *Watcher) run(ctx context.Context, name string, wt *watch) {
	defer w.wg.Done()
	defer close(wt.done)
	defer func() {
		wt.cancel()
		w.mu.Lock()
		if w.names[name] == wt {
			delete(w.names, name)
		}
		w.mu.Unlock()
	}()
	st := newNameState(w.cfg, name, w.rand, w.stats)
	log := w.log.With("name", name)
	next := w.clock.Now() // first lookup at once
	for {
		now := w.clock.Now()
		if o, ok := st.tick(now); ok {
			w.deliver(log, wt, o)
		}
		if !now.Before(next) {
			ans, err := w.r.Lookup(ctx, name)
			if ctx.Err() != nil {
				return
			}
			now = w.clock.Now()
			var o outcome
			if err != nil {
				o = st.onFailure(now, err)
			} else {
				o = st.onAnswer(now, ans)
			}
			if !o.next.IsZero() {
				next = o.next
			}
			o.update.Lookup = true
			w.deliver(log, wt, o)
			continue
		}
		wake := next
		if h := st.holdDeadline(); !h.IsZero() && h.Before(wake) {
			wake = h
		}
		t := w.clock.NewTimer(wake.Sub(now))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		case <-wt.refresh:
			t.Stop()
			next = w.clock.Now()
		}
	}
}

// deliver records o's Update as the name's status, logs it and hands it
// to the consumer when it is to be published.
func (w *Watcher) deliver(log *slog.Logger, wt *watch, o outcome) {
	u := o.update
	u.Published = o.publish
	w.mu.Lock()
	wt.status, wt.hasStatus = u, true
	w.mu.Unlock()
	w.logUpdate(log, o)
	if w.observe != nil {
		w.observe(u)
	}
	if !o.publish {
		return
	}
	w.stats.addrsAdded.Add(uint64(len(u.Added)))
	w.stats.addrsRemoved.Add(uint64(len(u.Removed)))
	w.onUpdate(u)
}

func (w *Watcher) logUpdate(log *slog.Logger, o outcome) {
	u := o.update
	switch u.Reason {
	case ReasonAnswer:
		if u.Changed {
			log.Info("dns addresses changed", "added", u.Added, "removed", u.Removed,
				"addrs", u.Addresses(), "ttl", u.Answer.TTL, "server", u.Answer.Server,
				"answer", u.Answer.Seq, "next_lookup", u.NextLookup.Sub(u.At).Round(time.Millisecond))
		} else {
			log.Debug("dns answer unchanged", "addrs", u.Addresses(), "ttl", u.Answer.TTL,
				"server", u.Answer.Server, "answer", u.Answer.Seq)
		}
	case ReasonHold:
		log.Warn("dns name has no address, keeping the last good answer",
			"rcode", rcodeName(u.Rcode), "keep", u.Addresses(), "hold_until", u.HoldUntil,
			"published", o.publish)
	case ReasonHoldExpired:
		log.Warn("dns hold expired, withdrawing the name's addresses", "removed", u.Removed)
	case ReasonNegative:
		log.Debug("dns name still has no address", "rcode", rcodeName(u.Rcode))
	case ReasonFailure:
		log.Warn("dns lookup failed, keeping the last good answer", "kind", u.Failure,
			"failures", u.Failures, "keep", u.Addresses(),
			"retry_in", u.NextLookup.Sub(u.At).Round(time.Millisecond), "err", u.Err)
	}
}
