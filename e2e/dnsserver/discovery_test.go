package main

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/discovery"
)

// TestDiscoveryFollowsServer runs sluice's watcher against this server and
// walks the DNS scenarios: a switch, then each fault mode (the
// last good answer must stay), then NXDOMAIN (kept for the hold, then
// withdrawn).
func TestDiscoveryFollowsServer(t *testing.T) {
	h := start(t, "backend.lab. 0 A 198.18.2.11\n")
	r, err := discovery.NewResolver(discovery.Config{
		Servers:      []string{h.addr},
		Timeout:      100 * time.Millisecond,
		MinTTL:       50 * time.Millisecond,
		MaxTTL:       time.Second,
		NXDomainHold: 400 * time.Millisecond,
		BackoffBase:  20 * time.Millisecond,
		BackoffMax:   50 * time.Millisecond,
	}, discovery.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	updates := make(chan discovery.Update, 1000)
	w := discovery.NewWatcher(r, discovery.WatcherOptions{OnUpdate: func(u discovery.Update) { updates <- u }})
	ctx, cancel := context.WithCancel(t.Context())
	defer w.Wait()
	defer cancel()
	if err := w.Watch(ctx, "backend.lab"); err != nil {
		t.Fatal(err)
	}
	want := func(addrs ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range addrs {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	// until reads updates until one satisfies ok, checking every update
	// on the way with each.
	until := func(what string, d time.Duration, each, ok func(discovery.Update) bool) discovery.Update {
		t.Helper()
		deadline := time.After(d)
		for {
			select {
			case u := <-updates:
				if each != nil && !each(u) {
					t.Fatalf("%s: unexpected update %+v", what, u)
				}
				if ok(u) {
					return u
				}
			case <-deadline:
				t.Fatalf("%s: not within %s", what, d)
			}
		}
	}
	write := func(body string) { t.Helper(); h.replace(t, body) }
	is := func(addrs ...string) func(discovery.Update) bool {
		return func(u discovery.Update) bool { return slices.Equal(u.Addresses(), want(addrs...)) }
	}
	until("first answer", time.Second, nil, is("198.18.2.11"))

	write("backend.lab. 0 A 198.18.2.12\n")
	until("switch", time.Second, nil, is("198.18.2.12"))

	// Each fault until lookups failed with it twice: not by the count of
	// failures in a row, which the previous mode's leave high (a lookup
	// made before the server loads the new mode fails the old way).
	for _, m := range []struct {
		mode string
		kind discovery.FailureKind
	}{
		{"servfail", discovery.FailServfail},
		{"refused", discovery.FailRefused},
		{"garbage", discovery.FailGarbage},
		{"drop", discovery.FailTimeout},
	} {
		before := r.Stats().Snapshot().LookupFailures[m.kind]
		write("backend.lab. 0 A 198.18.2.99\nbackend.lab. mode " + m.mode + "\n")
		until(m.mode, 3*time.Second, is("198.18.2.12"), func(u discovery.Update) bool {
			return u.Reason == discovery.ReasonFailure && r.Stats().Snapshot().LookupFailures[m.kind] >= before+2
		})
	}
	write("backend.lab. 0 A 198.18.2.12\n")
	until("recovery", time.Second, is("198.18.2.12"), func(u discovery.Update) bool { return u.Reason == discovery.ReasonAnswer })

	// The hold cannot start before the write does: t0 is a lower bound.
	t0 := time.Now()
	write("other.lab. 0 A 198.18.2.12\n") // backend.lab is NXDOMAIN now
	u := until("hold", time.Second, is("198.18.2.12"), func(u discovery.Update) bool { return u.Reason == discovery.ReasonHold })
	if u.HoldUntil.IsZero() {
		t.Error("hold without deadline")
	}
	until("hold expiry", 2*time.Second, func(u discovery.Update) bool {
		return u.Reason == discovery.ReasonHold || u.Reason == discovery.ReasonHoldExpired
	}, func(u discovery.Update) bool { return u.Reason == discovery.ReasonHoldExpired && len(u.Addrs) == 0 })
	if d := time.Since(t0); d < 400*time.Millisecond {
		t.Errorf("withdrawn after %s, hold is 400ms", d)
	}
	s := r.Stats().Snapshot()
	for _, k := range []discovery.FailureKind{discovery.FailServfail, discovery.FailRefused, discovery.FailGarbage, discovery.FailTimeout} {
		if s.LookupFailures[k] == 0 {
			t.Errorf("no %s failures counted: %+v", k, s.LookupFailures)
		}
	}
}
