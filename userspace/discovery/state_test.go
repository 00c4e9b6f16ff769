package discovery

import (
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluicelb/sluice/userspace/config"
)

func testConfig() Config {
	return Config{Servers: []string{"198.18.2.53:53"}}.WithDefaults()
}

func constRand(v float64) func() float64 { return func() float64 { return v } }

func TestRefreshDelayClamp(t *testing.T) {
	tests := []struct {
		ttl  time.Duration
		rnd  float64
		want time.Duration
	}{
		{0, 0, time.Second},                                                              // TTL 0 -> min_ttl
		{500 * time.Millisecond, 0, time.Second},                                         // below min_ttl
		{10 * time.Second, 0, 10 * time.Second},                                          // as is
		{10 * time.Second, 0.5, 9500 * time.Millisecond},                                 // jitter takes up to 10% off
		{time.Hour, 0, 5 * time.Minute},                                                  // above max_ttl
		{time.Hour, 0.5, 4*time.Minute + 45*time.Second},                                 // jitter on the clamped value
		{time.Second, 0.99, time.Second},                                                 // never below min_ttl
		{1050 * time.Millisecond, 0.9, time.Second},                                      // jitter floored at min_ttl
		{2 * time.Second, 0.5, 1900 * time.Millisecond},                                  // report-1 TTL
		{5*time.Minute + time.Second, 0, 5 * time.Minute},                                // max_ttl boundary
		{5 * time.Minute, 0.999999, 4*time.Minute + 30*time.Second + 9*time.Millisecond}, // ~10% off
	}
	for _, tt := range tests {
		s := newNameState(testConfig(), "x.", constRand(tt.rnd), &Stats{})
		got := s.refreshDelay(tt.ttl)
		if d := got - tt.want; d < -10*time.Millisecond || d > 10*time.Millisecond {
			t.Errorf("refreshDelay(%s, rand %v) = %s, want %s", tt.ttl, tt.rnd, got, tt.want)
		}
	}
}

func TestRefreshJitterBounds(t *testing.T) {
	cfg := testConfig()
	rng := rand.New(rand.NewPCG(1, 2))
	s := newNameState(cfg, "x.", rng.Float64, &Stats{})
	seen := make(map[time.Duration]bool)
	for i := range 10000 {
		ttl := time.Duration(i%400) * time.Second
		clamped := min(max(ttl, cfg.MinTTL), cfg.MaxTTL)
		d := s.refreshDelay(ttl)
		lo := max(cfg.MinTTL, clamped-time.Duration(float64(clamped)*cfg.Jitter))
		if d < lo || d > clamped {
			t.Fatalf("ttl %s: delay %s outside [%s, %s]", ttl, d, lo, clamped)
		}
		if ttl == 60*time.Second {
			seen[d] = true
		}
	}
	if len(seen) < 10 {
		t.Errorf("only %d distinct delays for one TTL: no jitter", len(seen))
	}
}

func TestBackoffGrowth(t *testing.T) {
	cfg := testConfig()
	low := newNameState(cfg, "x.", constRand(0), &Stats{})
	high := newNameState(cfg, "x.", constRand(0.999999), &Stats{})
	full := []time.Duration{1, 2, 4, 8, 16, 30, 30, 30}
	for i, f := range full {
		n := i + 1
		f *= time.Second
		if got := low.backoff(n); got != f/2 {
			t.Errorf("backoff(%d) low = %s, want %s", n, got, f/2)
		}
		if got := high.backoff(n); got < f-time.Millisecond || got > f {
			t.Errorf("backoff(%d) high = %s, want ~%s", n, got, f)
		}
	}
	if got := high.backoff(1000); got > cfg.BackoffMax {
		t.Errorf("backoff(1000) = %s above max", got)
	}
}

// event is one step of a state machine scenario.
type event struct {
	at      time.Duration // since start
	kind    string        // answer | nx | empty | fail | tick
	addrs   []string      // for answer
	publish bool
	reason  Reason
	want    []string // the set after the event
}

func runScenario(t *testing.T, events []event) []Update {
	t.Helper()
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newNameState(testConfig(), "backend.lab.", constRand(0), &Stats{})
	var published []Update
	for i, e := range events {
		now := start.Add(e.at)
		var o outcome
		var ok = true
		switch e.kind {
		case "answer":
			o = s.onAnswer(now, Answer{Name: "backend.lab.", Addrs: addrs(e.addrs...), TTL: 2 * time.Second, Server: "s", ReceivedAt: now})
		case "nx":
			o = s.onAnswer(now, Answer{Name: "backend.lab.", Rcode: dns.RcodeNameError, ReceivedAt: now})
		case "empty":
			o = s.onAnswer(now, Answer{Name: "backend.lab.", ReceivedAt: now})
		case "fail":
			o = s.onFailure(now, &LookupError{Name: "backend.lab.", Kind: FailServfail})
		case "tick":
			o, ok = s.tick(now)
		}
		if !ok {
			o = outcome{}
		}
		if o.publish != e.publish {
			t.Fatalf("step %d (%s at %s): publish %v, want %v (%+v)", i, e.kind, e.at, o.publish, e.publish, o.update)
		}
		if !e.publish {
			continue
		}
		u := o.update
		if u.Reason != e.reason {
			t.Fatalf("step %d: reason %s, want %s", i, u.Reason, e.reason)
		}
		if got := u.Addresses(); !slices.Equal(got, addrs(e.want...)) {
			t.Fatalf("step %d: addrs %v, want %v", i, got, e.want)
		}
		published = append(published, u)
	}
	return published
}

func TestHoldLogic(t *testing.T) {
	a, b, c := "198.18.2.11", "198.18.2.12", "198.18.2.13"
	sec := time.Second
	tests := []struct {
		name   string
		events []event
	}{
		{"nxdomain kept for the hold, then empty", []event{
			{0, "answer", []string{a, b}, true, ReasonAnswer, []string{a, b}},
			{5 * sec, "nx", nil, true, ReasonHold, []string{a, b}},
			{20 * sec, "nx", nil, true, ReasonHold, []string{a, b}},
			{34 * sec, "tick", nil, false, "", nil},
			{35 * sec, "tick", nil, true, ReasonHoldExpired, nil},
			{40 * sec, "nx", nil, true, ReasonNegative, nil},
			{50 * sec, "answer", []string{c}, true, ReasonAnswer, []string{c}},
		}},
		{"empty answer held like nxdomain", []event{
			{0, "answer", []string{a}, true, ReasonAnswer, []string{a}},
			{1 * sec, "empty", nil, true, ReasonHold, []string{a}},
			{31 * sec, "empty", nil, true, ReasonHoldExpired, nil},
		}},
		{"answer during the hold cancels it", []event{
			{0, "answer", []string{a}, true, ReasonAnswer, []string{a}},
			{1 * sec, "nx", nil, true, ReasonHold, []string{a}},
			{2 * sec, "answer", []string{a, b}, true, ReasonAnswer, []string{a, b}},
			{40 * sec, "tick", nil, false, "", nil},
			{41 * sec, "nx", nil, true, ReasonHold, []string{a, b}}, // a new, full hold
			{70 * sec, "tick", nil, false, "", nil},
			{71 * sec, "tick", nil, true, ReasonHoldExpired, nil},
		}},
		{"failures keep the last good answer, even past the hold", []event{
			{0, "answer", []string{a}, true, ReasonAnswer, []string{a}},
			{1 * sec, "fail", nil, true, ReasonFailure, []string{a}},
			{2 * sec, "nx", nil, true, ReasonHold, []string{a}},
			{10 * sec, "fail", nil, true, ReasonFailure, []string{a}},
			{40 * sec, "tick", nil, false, "", nil}, // hold due, but the latest lookup failed
			{60 * sec, "fail", nil, true, ReasonFailure, []string{a}},
			{61 * sec, "nx", nil, true, ReasonHoldExpired, nil}, // confirmed negative
		}},
		{"nothing before the first good answer", []event{
			{0, "fail", nil, false, "", nil},
			{1 * sec, "fail", nil, false, "", nil},
			{2 * sec, "answer", []string{a}, true, ReasonAnswer, []string{a}},
		}},
		{"negative first answer: silent hold, then empty", []event{
			{0, "nx", nil, false, "", nil},
			{10 * sec, "nx", nil, false, "", nil},
			{30 * sec, "tick", nil, true, ReasonHoldExpired, nil},
			{31 * sec, "nx", nil, true, ReasonNegative, nil},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { runScenario(t, tt.events) })
	}
}

func TestNoHold(t *testing.T) {
	cfg := testConfig()
	cfg.NXDomainHold = -1
	s := newNameState(cfg, "x.", constRand(0), &Stats{})
	now := time.Now()
	s.onAnswer(now, Answer{Addrs: addrs("198.18.2.11"), TTL: time.Second, ReceivedAt: now})
	o := s.onAnswer(now.Add(time.Second), Answer{Rcode: dns.RcodeNameError})
	if !o.publish || o.update.Reason != ReasonHoldExpired || len(o.update.Addrs) != 0 || o.next.IsZero() {
		t.Errorf("no hold: %+v", o)
	}
}

// A name's AAAA addresses are served like its A addresses: a move from
// IPv4 to IPv6 is a change of set like any other, and an IPv6-only answer
// is no negative answer.
func TestIPv6AddressesServed(t *testing.T) {
	s := newNameState(testConfig(), "x.", constRand(0), &Stats{})
	now := time.Now()
	s.onAnswer(now, Answer{Addrs: addrs("198.18.2.11", "2001:2:0:2::11"), TTL: time.Second, ReceivedAt: now})
	o := s.onAnswer(now, Answer{Addrs: addrs("2001:2:0:2::12"), TTL: time.Second, ReceivedAt: now})
	if o.update.Reason != ReasonAnswer || !o.publish || !slices.Equal(o.update.Addresses(), addrs("2001:2:0:2::12")) ||
		!slices.Equal(o.update.Removed, addrs("198.18.2.11", "2001:2:0:2::11")) || !slices.Equal(o.update.Added, addrs("2001:2:0:2::12")) {
		t.Errorf("%+v", o.update)
	}
	if info := o.update.Addrs[0].Info(); !strings.HasPrefix(info, "AAAA 2001:2:0:2::12 ttl 1s") {
		t.Errorf("info %q", info)
	}
}

func TestFromConfig(t *testing.T) {
	c := FromConfig(config.DNS{
		Servers: []string{"198.18.2.53:53"}, MinTTL: config.Duration(2 * time.Second),
		MaxTTL: config.Duration(time.Minute), Timeout: config.Duration(time.Second),
	})
	c = c.WithDefaults()
	if c.NXDomainHold >= 0 || c.MinTTL != 2*time.Second || c.MaxTTL != time.Minute || c.Timeout != time.Second {
		t.Errorf("%+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
	if h := FromConfig(config.DNS{NXDomainHold: config.Duration(5 * time.Second)}).NXDomainHold; h != 5*time.Second {
		t.Errorf("hold %s", h)
	}
}

func TestAnswerProvenance(t *testing.T) {
	a, b := "198.18.2.11", "198.18.2.12"
	us := runScenario(t, []event{
		{0, "answer", []string{a}, true, ReasonAnswer, []string{a}},
		{10 * time.Second, "answer", []string{a, b}, true, ReasonAnswer, []string{a, b}},
		{20 * time.Second, "answer", []string{b}, true, ReasonAnswer, []string{b}},
	})
	u := us[1]
	if !u.Changed || !slices.Equal(u.Added, addrs(b)) || len(u.Removed) != 0 {
		t.Errorf("update 2 diff: %+v", u)
	}
	if u.Addrs[0].FirstSeq != 1 || u.Addrs[0].Answer.Seq != 2 || u.Addrs[1].FirstSeq != 2 {
		t.Errorf("provenance %+v", u.Addrs)
	}
	if u.Addrs[0].FirstSeen.Equal(u.Addrs[1].FirstSeen) {
		t.Error("first seen not kept")
	}
	if u.Expires != u.Answer.ReceivedAt.Add(2*time.Second) || u.TTLLeft(u.At.Add(time.Second)) != time.Second {
		t.Errorf("expiry %s, ttl left %s", u.Expires, u.TTLLeft(u.At.Add(time.Second)))
	}
	if u := us[2]; !slices.Equal(u.Removed, addrs(a)) || len(u.Added) != 0 {
		t.Errorf("update 3 diff: %+v", u)
	}
}

func TestFailureUpdateCarriesKind(t *testing.T) {
	s := newNameState(testConfig(), "x.", constRand(0), &Stats{})
	now := time.Now()
	s.onAnswer(now, Answer{Addrs: addrs("198.18.2.11"), TTL: time.Second, ReceivedAt: now})
	for i, want := range []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second} {
		o := s.onFailure(now, &LookupError{Kind: FailTimeout, Attempts: []Attempt{{Err: errors.New("x")}}})
		if o.update.Failure != FailTimeout || o.update.Failures != i+1 || o.update.Rcode != -1 {
			t.Errorf("failure update %+v", o.update)
		}
		if got := o.next.Sub(now); got != want {
			t.Errorf("retry %d in %s, want %s", i+1, got, want)
		}
	}
}

func TestDiff(t *testing.T) {
	tests := []struct {
		prev, next, added, removed []string
	}{
		{nil, nil, nil, nil},
		{nil, []string{"198.18.2.11"}, []string{"198.18.2.11"}, nil},
		{[]string{"198.18.2.11"}, nil, nil, []string{"198.18.2.11"}},
		{[]string{"198.18.2.12", "198.18.2.11"}, []string{"198.18.2.11", "198.18.2.12"}, nil, nil},
		{[]string{"198.18.2.11", "198.18.2.12"}, []string{"198.18.2.12", "198.18.2.13", "198.18.2.13"}, []string{"198.18.2.13"}, []string{"198.18.2.11"}},
		{[]string{"198.18.2.1", "198.18.2.3", "198.18.2.5"}, []string{"198.18.2.2", "198.18.2.3", "198.18.2.4"}, []string{"198.18.2.2", "198.18.2.4"}, []string{"198.18.2.1", "198.18.2.5"}},
	}
	for _, tt := range tests {
		added, removed := Diff(addrs(tt.prev...), addrs(tt.next...))
		if !slices.Equal(added, addrs(tt.added...)) || !slices.Equal(removed, addrs(tt.removed...)) {
			t.Errorf("Diff(%v, %v) = +%v -%v", tt.prev, tt.next, added, removed)
		}
	}
}
