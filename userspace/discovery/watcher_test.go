package discovery

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

type watchHarness struct {
	observed atomic.Int32
	clock    *fakeClock
	x        *scriptExchanger
	r        *Resolver
	w        *Watcher
	updates  chan Update
	cancel   context.CancelFunc
	ctx      context.Context
}

func newWatchHarness(t *testing.T, script func(q *dns.Msg, network, server string) (*dns.Msg, error)) *watchHarness {
	t.Helper()
	h := &watchHarness{clock: newFakeClock(), x: &scriptExchanger{fn: script}, updates: make(chan Update, 100)}
	h.r = newTestResolver(t, Config{Servers: []string{"198.18.2.53:53"}, NoAAAA: true},
		WithExchanger(h.x), WithClock(h.clock))
	h.w = NewWatcher(h.r, WatcherOptions{
		OnUpdate: func(u Update) { h.updates <- u },
		Observe:  func(Update) { h.observed.Add(1) },
		Rand:     constRand(0),
	})
	h.ctx, h.cancel = context.WithCancel(t.Context())
	t.Cleanup(func() {
		h.cancel()
		h.w.Wait()
	})
	return h
}

func (h *watchHarness) next(t *testing.T) Update {
	t.Helper()
	select {
	case u := <-h.updates:
		return u
	case <-time.After(5 * time.Second):
		t.Fatal("no update")
		return Update{}
	}
}

func (h *watchHarness) none(t *testing.T) {
	t.Helper()
	select {
	case u := <-h.updates:
		t.Fatalf("unexpected update %+v", u)
	case <-time.After(20 * time.Millisecond):
	}
}

// step waits for the watcher to park on its timer, checks when it will
// wake, and advances the clock to then.
func (h *watchHarness) step(t *testing.T, want time.Duration) {
	t.Helper()
	h.clock.waitTimers(t, 1)
	if got := h.clock.Next().Sub(h.clock.Now()); got != want {
		t.Fatalf("next wake in %s, want %s", got, want)
	}
	h.clock.Advance(want)
}

func TestWatcherFollowsTTL(t *testing.T) {
	h := newWatchHarness(t, answerA(5, "198.18.2.11"))
	if err := h.w.Watch(h.ctx, "backend.lab"); err != nil {
		t.Fatal(err)
	}
	u := h.next(t)
	if u.Reason != ReasonAnswer || !slices.Equal(u.Addresses(), addrs("198.18.2.11")) || !u.Changed || u.Seq != 1 {
		t.Fatalf("first update %+v", u)
	}
	if u.NextLookup.Sub(u.At) != 5*time.Second || u.Expires != u.At.Add(5*time.Second) {
		t.Errorf("next lookup %s, expires %s", u.NextLookup.Sub(u.At), u.Expires)
	}
	h.step(t, 5*time.Second)
	if u := h.next(t); u.Changed || u.Answer.Seq != 2 {
		t.Errorf("second update %+v", u)
	}
	// The record changes: the next lookup (at TTL expiry) sees it.
	h.x.set(answerA(2, "198.18.2.12"))
	h.step(t, 5*time.Second)
	u = h.next(t)
	if !u.Changed || !slices.Equal(u.Added, addrs("198.18.2.12")) || !slices.Equal(u.Removed, addrs("198.18.2.11")) {
		t.Errorf("switch update %+v", u)
	}
	h.step(t, 2*time.Second) // the new TTL
	h.next(t)
	st, ok := h.w.Status("BACKEND.lab.")
	if !ok || st.Answer.Seq != 4 {
		t.Errorf("status %+v %v", st, ok)
	}
	if s := h.r.Stats().Snapshot(); s.AddrsAdded != 2 || s.AddrsRemoved != 1 || s.Lookups != 4 {
		t.Errorf("stats %+v", s)
	}
}

func TestWatcherFailuresKeepLastGood(t *testing.T) {
	h := newWatchHarness(t, answerA(10, "198.18.2.11"))
	if err := h.w.Watch(h.ctx, "backend.lab"); err != nil {
		t.Fatal(err)
	}
	h.next(t)
	h.x.set(answerRcode(dns.RcodeServerFailure))
	h.step(t, 10*time.Second)
	// Backoff with rand 0: half of 1s, 2s, 4s, 8s, 16s, 30s, 30s.
	for i, d := range []time.Duration{500, 1000, 2000, 4000, 8000, 15000, 15000} {
		u := h.next(t)
		if u.Reason != ReasonFailure || u.Failure != FailServfail || u.Failures != i+1 ||
			!slices.Equal(u.Addresses(), addrs("198.18.2.11")) || u.Changed {
			t.Fatalf("failure %d: %+v", i+1, u)
		}
		h.step(t, d*time.Millisecond)
	}
	h.next(t)
	h.x.set(answerA(10, "198.18.2.11"))
	h.step(t, 15*time.Second)
	if u := h.next(t); u.Reason != ReasonAnswer || u.Failures != 0 || u.Changed {
		t.Errorf("recovery %+v", u)
	}
	if s := h.r.Stats().Snapshot(); s.LookupFailures[FailServfail] != 8 {
		t.Errorf("stats %+v", s.LookupFailures)
	}
}

func TestWatcherNothingBeforeFirstAnswer(t *testing.T) {
	h := newWatchHarness(t, answerRcode(dns.RcodeRefused))
	if err := h.w.Watch(h.ctx, "backend.lab"); err != nil {
		t.Fatal(err)
	}
	h.step(t, 500*time.Millisecond)
	h.step(t, time.Second)
	h.clock.waitTimers(t, 1)
	h.none(t)
	st, ok := h.w.Status("backend.lab")
	if !ok || st.Failure != FailRefused || st.Failures != 3 || len(st.Addrs) != 0 || st.Published || !st.Lookup {
		t.Errorf("status %+v", st)
	}
	if n := h.observed.Load(); n != 3 {
		t.Errorf("observer saw %d updates, want 3", n)
	}
	h.x.set(answerA(3, "198.18.2.11"))
	h.step(t, 2*time.Second)
	if u := h.next(t); u.Reason != ReasonAnswer || !u.Changed {
		t.Errorf("first update %+v", u)
	}
}

func TestWatcherHoldExpires(t *testing.T) {
	h := newWatchHarness(t, answerA(60, "198.18.2.11"))
	if err := h.w.Watch(h.ctx, "backend.lab"); err != nil {
		t.Fatal(err)
	}
	h.next(t)
	h.x.set(answerRcode(dns.RcodeNameError))
	if !h.w.Refresh("backend.lab") {
		t.Fatal("refresh refused")
	}
	u := h.next(t)
	if u.Reason != ReasonHold || u.HoldUntil.Sub(u.At) != 30*time.Second || len(u.Addrs) != 1 {
		t.Fatalf("hold %+v", u)
	}
	// Negative answers retry on the backoff (floored at min_ttl); the
	// hold deadline wakes the watcher on its own.
	elapsed := time.Duration(0)
	for _, d := range []time.Duration{1, 1, 2, 4, 8} {
		h.step(t, d*time.Second)
		elapsed += d * time.Second
		if u := h.next(t); u.Reason != ReasonHold {
			t.Fatalf("at %s: %+v", elapsed, u)
		}
	}
	h.step(t, 30*time.Second-elapsed)
	u = h.next(t)
	if u.Reason != ReasonHoldExpired || len(u.Addrs) != 0 || !slices.Equal(u.Removed, addrs("198.18.2.11")) || u.Lookup || !u.Published {
		t.Errorf("expiry %+v", u)
	}
}

func TestWatcherRefreshRateLimit(t *testing.T) {
	h := newWatchHarness(t, answerA(300, "198.18.2.11"))
	if h.w.Refresh("backend.lab") {
		t.Error("refresh of an unwatched name")
	}
	if err := h.w.Watch(h.ctx, "backend.lab"); err != nil {
		t.Fatal(err)
	}
	h.next(t)
	h.clock.waitTimers(t, 1)
	if !h.w.Refresh("backend.lab") {
		t.Fatal("first refresh refused")
	}
	h.next(t)
	h.clock.waitTimers(t, 1)
	h.clock.Advance(999 * time.Millisecond)
	if h.w.Refresh("backend.lab") {
		t.Error("second refresh within min_ttl accepted")
	}
	h.none(t)
	h.clock.Advance(time.Millisecond)
	if !h.w.Refresh("backend.lab") {
		t.Error("refresh after min_ttl refused")
	}
	h.next(t)
	if s := h.r.Stats().Snapshot(); s.Refreshes != 2 || s.RefreshesLimited != 1 || s.Lookups != 3 {
		t.Errorf("stats %+v", s)
	}
}

func TestWatcherSyncUnwatch(t *testing.T) {
	h := newWatchHarness(t, answerA(30, "198.18.2.11"))
	if err := h.w.Sync(h.ctx, []string{"a.lab", "b.lab", "A.lab."}); err != nil {
		t.Fatal(err)
	}
	h.next(t)
	h.next(t)
	if got := h.w.Names(); !slices.Equal(got, []string{"a.lab.", "b.lab."}) {
		t.Errorf("names %v", got)
	}
	if err := h.w.Sync(h.ctx, []string{"b.lab", "not a name!"}); err == nil {
		t.Error("invalid name accepted")
	}
	if got := h.w.Names(); !slices.Equal(got, []string{"b.lab."}) {
		t.Errorf("names %v", got)
	}
	h.clock.waitTimers(t, 1) // a.lab's goroutine is gone
	h.cancel()
	done := make(chan struct{})
	go func() { h.w.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("watch goroutines outlived their context")
	}
}

func TestWatcherRewatchAfterContextEnds(t *testing.T) {
	h := newWatchHarness(t, answerA(30, "198.18.2.11"))
	ctx1, cancel1 := context.WithCancel(h.ctx)
	if err := h.w.Watch(ctx1, "backend.lab"); err != nil {
		t.Fatal(err)
	}
	h.next(t)
	cancel1()
	// Watching again with a live context starts a new goroutine, whether
	// or not the old one has finished yet.
	if err := h.w.Watch(h.ctx, "backend.lab"); err != nil {
		t.Fatal(err)
	}
	if u := h.next(t); u.Seq != 1 {
		t.Errorf("new watch update %+v", u)
	}
	h.clock.waitTimers(t, 1)
	if got := h.w.Names(); !slices.Equal(got, []string{"backend.lab."}) {
		t.Errorf("names %v", got)
	}
}

// TestWatcherRealServer drives the whole thing over sockets with the real
// clock: the served record switches and the watcher follows within the
// (clamped) TTL.
func TestWatcherRealServer(t *testing.T) {
	var which atomic.Int32
	srv := startServer(t, func(w dns.ResponseWriter, q *dns.Msg) {
		rr := "backend.lab. 0 A 198.18.2.11"
		if which.Load() == 1 {
			rr = "backend.lab. 0 A 198.18.2.12"
		}
		reply(w, q, dns.RcodeSuccess, rrs(t, rr))
	})
	r := newTestResolver(t, Config{Servers: []string{srv}, MinTTL: 100 * time.Millisecond, MaxTTL: time.Second})
	updates := make(chan Update, 100)
	w := NewWatcher(r, WatcherOptions{OnUpdate: func(u Update) { updates <- u }})
	ctx, cancel := context.WithCancel(t.Context())
	defer w.Wait()
	defer cancel()
	if err := w.Watch(ctx, "backend.lab"); err != nil {
		t.Fatal(err)
	}
	first := <-updates
	if !slices.Equal(first.Addresses(), addrs("198.18.2.11")) {
		t.Fatalf("first %+v", first)
	}
	switched := time.Now()
	which.Store(1)
	for {
		select {
		case u := <-updates:
			if !u.Changed {
				continue
			}
			if !slices.Equal(u.Addresses(), addrs("198.18.2.12")) {
				t.Fatalf("switch %+v", u)
			}
			if d := time.Since(switched); d > 500*time.Millisecond {
				t.Errorf("followed the switch after %s, TTL is 100ms", d)
			}
			return
		case <-time.After(3 * time.Second):
			t.Fatal("switch not followed")
		}
	}
}
