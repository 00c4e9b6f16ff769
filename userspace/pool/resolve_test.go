package pool

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

// refresher is a Refresher that records the names asked for and starts a
// lookup unless the name is in limited.
type refresher struct {
	asked   []string
	limited map[string]bool
}

func (r *refresher) refresh(name string) bool {
	r.asked = append(r.asked, name)
	return !r.limited[name]
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func dnsPool(t *testing.T, now time.Time) *Pool {
	t.Helper()
	p := New("web", Config{DrainTimeout: time.Minute}, nil, nil)
	p.Expect(now, []string{SourceStatic, "a.lab", "b.lab"})
	p.SetSource(now, "a.lab", []Desired{{Addr: netip.MustParseAddrPort("198.18.2.11:80")}})
	return p
}

func TestReresolveWaitsForTheNextLookup(t *testing.T) {
	now := time.Unix(1000, 0)
	p := dnsPool(t, now)
	if ch := p.Reresolve(now); ch != nil {
		t.Fatal("a channel without a refresher")
	}
	r := &refresher{}
	p.SetRefresher(r.refresh)
	ch := p.Reresolve(now)
	if ch == nil {
		t.Fatal("no channel while lookups were started")
	}
	if !slices.Equal(r.asked, []string{"a.lab", "b.lab"}) {
		t.Fatalf("asked %v, want both names (never static)", r.asked)
	}
	// In flight: a second request waits on the same lookup, the refresher
	// is not asked again.
	if ch2 := p.Reresolve(now.Add(time.Millisecond)); ch2 != ch {
		t.Fatal("a second caller got another channel")
	}
	if len(r.asked) != 2 {
		t.Fatalf("refresher asked again while in flight: %v", r.asked)
	}
	if closed(ch) {
		t.Fatal("closed before any outcome")
	}
	p.Resolved("a.lab")
	if !closed(ch) {
		t.Fatal("not closed by the outcome")
	}
	// b.lab is still in flight: a new channel, without asking again (a.lab
	// was just looked up: the watcher's rate limit says no).
	r.limited = map[string]bool{"a.lab": true}
	ch3 := p.Reresolve(now.Add(2 * time.Millisecond))
	if ch3 == nil || closed(ch3) || !slices.Equal(r.asked, []string{"a.lab", "b.lab", "a.lab"}) {
		t.Fatalf("after a's outcome: channel %v, asked %v", ch3, r.asked)
	}
	p.Resolved("b.lab")
	if !closed(ch3) {
		t.Fatal("not closed by b's outcome")
	}
	// Every name looked up too recently (rate limit) and nothing in
	// flight: nothing to wait for.
	r.limited = map[string]bool{"a.lab": true, "b.lab": true}
	if ch := p.Reresolve(now.Add(3 * time.Millisecond)); ch != nil {
		t.Fatal("a channel though no lookup is in flight or could start")
	}
}

func TestReresolveStaticPool(t *testing.T) {
	now := time.Unix(1000, 0)
	p := New("web", Config{}, nil, nil)
	p.SetSource(now, SourceStatic, []Desired{{Addr: netip.MustParseAddrPort("198.18.2.11:80")}})
	r := &refresher{}
	p.SetRefresher(r.refresh)
	if ch := p.Reresolve(now); ch != nil || len(r.asked) != 0 {
		t.Fatalf("static pool: channel %v, asked %v", ch, r.asked)
	}
	if p.Refresh(now, SourceStatic) {
		t.Fatal("refreshed the static source")
	}
}

func TestRefreshCountsAsInFlight(t *testing.T) {
	now := time.Unix(1000, 0)
	p := dnsPool(t, now)
	r := &refresher{limited: map[string]bool{"b.lab": true}}
	p.SetRefresher(r.refresh)
	if !p.Refresh(now, "a.lab") {
		t.Fatal("refresh not started")
	}
	// The refresher now rate-limits a.lab too, but its lookup is in flight.
	r.limited["a.lab"] = true
	ch := p.Reresolve(now)
	if ch == nil {
		t.Fatal("no channel for the lookup in flight")
	}
	p.Resolved("a.lab")
	if !closed(ch) {
		t.Fatal("not closed")
	}
	// A lookup whose outcome never comes stops counting after MaxLookupWait.
	r.limited["a.lab"] = false
	p.Refresh(now, "a.lab")
	r.limited["a.lab"] = true
	if ch := p.Reresolve(now.Add(MaxLookupWait)); ch != nil {
		t.Fatal("a lookup lost long ago still counts as in flight")
	}
}
