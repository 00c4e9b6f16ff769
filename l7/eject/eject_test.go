package eject

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/l7/retry"
	"github.com/sluicelb/sluice/userspace/pool"
)

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

func addrs(n int) []netip.AddrPort {
	var out []netip.AddrPort
	for i := range n {
		out = append(out, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 2, byte(10 + i)}), 80))
	}
	return out
}

func setup(t *testing.T, n int, jitter float64) (*pool.Pool, *Tracker, []netip.AddrPort, *[]Event) {
	t.Helper()
	as := addrs(n)
	p := pool.New("web", pool.Config{DrainTimeout: time.Minute, MaxEjectedPercent: 50}, nil, nil)
	var ds []pool.Desired
	for _, a := range as {
		ds = append(ds, pool.Desired{Addr: a})
	}
	p.SetSource(t0, pool.SourceStatic, ds)
	var evs []Event
	tr, err := New(Config{
		Failures: 3, Window: 10 * time.Second, BaseTime: 10 * time.Second,
		MaxTime: 35 * time.Second, MaxEjectedPercent: 50,
	}, p, Options{Jitter: jitter, Observe: func(e Event) { evs = append(evs, e) }})
	if err != nil {
		t.Fatal(err)
	}
	return p, tr, as, &evs
}

func state(p *pool.Pool, a netip.AddrPort) pool.Backend {
	b, _ := p.Backend(a)
	return b
}

func TestWindow(t *testing.T) {
	p, tr, as, _ := setup(t, 4, -1)
	a := as[0]
	// Failures spread wider than the window never eject.
	for i := range 6 {
		tr.Report(t0.Add(time.Duration(i)*6*time.Second), a, false, true, "status", "status 503")
	}
	if s := state(p, a).State; s != pool.Active {
		t.Fatalf("ejected by failures outside the window: %s", s)
	}
	// Successes do not reset the window (nginx counts failures in fail_timeout).
	now := t0.Add(time.Minute)
	tr.Report(now, a, false, true, "status", "status 503")
	tr.Report(now.Add(time.Second), a, false, false, "status", "status 200")
	tr.Report(now.Add(2*time.Second), a, false, true, "status", "status 503")
	if state(p, a).State != pool.Active {
		t.Fatal("ejected after 2 failures")
	}
	tr.Report(now.Add(3*time.Second), a, false, true, "status", "connect failure")
	b := state(p, a)
	if b.State != pool.Ejected || b.EjectedUntil != now.Add(13*time.Second) {
		t.Errorf("after 3 failures in 10s: %s until %s", b.State, b.EjectedUntil)
	}
}

func TestTrialDoublingAndRecovery(t *testing.T) {
	p, tr, as, evs := setup(t, 4, -1)
	a := as[1]
	now := t0
	for range 3 {
		tr.Report(now, a, false, true, "status", "status 503")
	}
	wantTimes := []time.Duration{10 * time.Second, 20 * time.Second, 35 * time.Second, 35 * time.Second}
	for i, want := range wantTimes {
		b := state(p, a)
		if b.State != pool.Ejected || b.EjectedUntil.Sub(now) != want {
			t.Fatalf("ejection %d: %s for %s, want %s", i+1, b.State, b.EjectedUntil.Sub(now), want)
		}
		now = b.EjectedUntil
		p.Tick(now, nil)
		b = state(p, a)
		if !tr.OnTrial(b) {
			t.Fatalf("ejection %d over: not on trial (%+v)", i+1, b)
		}
		ok, trial := tr.Admit(b)
		if !ok || !trial {
			t.Fatalf("first request after ejection %d: admit %v trial %v", i+1, ok, trial)
		}
		if ok, _ := tr.Admit(b); ok {
			t.Fatal("a second request was admitted while the trial is in flight")
		}
		tr.Report(now, a, true, true, "status", "status 503")
	}
	// Recovery: a successful trial, and the doubling starts over.
	b := state(p, a)
	p.Tick(b.EjectedUntil, nil)
	now = b.EjectedUntil
	b = state(p, a)
	if _, trial := tr.Admit(b); !trial {
		t.Fatal("no trial")
	}
	stale := b // a snapshot taken before the trial succeeded (the proxy caches one)
	tr.Report(now, a, true, false, "status", "status 200")
	if ok, trial := tr.Admit(stale); !ok || trial || tr.OnTrial(stale) {
		t.Errorf("recovered address, stale snapshot: admit %v trial %v: still gated", ok, trial)
	}
	b = state(p, a)
	if b.Cause != CauseTrialSucceeded {
		t.Errorf("cause after a good trial %q, want %q", b.Cause, CauseTrialSucceeded)
	}
	if b.State != pool.Active || b.Ejections != 0 || tr.OnTrial(b) {
		t.Fatalf("after a good trial: %+v", b)
	}
	if ok, trial := tr.Admit(b); !ok || trial {
		t.Error("recovered address still gated")
	}
	last := (*evs)[len(*evs)-1]
	if !last.Recover || last.Err != nil {
		t.Errorf("last event %+v, want a recovery", last)
	}
	for range 3 {
		tr.Report(now, a, false, true, "status", "status 503")
	}
	if b := state(p, a); b.EjectedUntil.Sub(now) != 10*time.Second {
		t.Errorf("ejection after recovery lasts %s, want base_time", b.EjectedUntil.Sub(now))
	}
}

func TestAbandonedTrial(t *testing.T) {
	p, tr, as, _ := setup(t, 2, -1)
	for range 3 {
		tr.Report(t0, as[0], false, true, "status", "timeout")
	}
	p.Tick(t0.Add(time.Minute), nil)
	b := state(p, as[0])
	if _, trial := tr.Admit(b); !trial {
		t.Fatal("no trial")
	}
	tr.Abandon(as[0])
	if ok, trial := tr.Admit(b); !ok || !trial {
		t.Error("after an abandoned trial the next request is not the trial")
	}
}

func TestEjectionLimit(t *testing.T) {
	p, tr, as, evs := setup(t, 4, -1)
	for _, a := range as {
		for range 3 {
			tr.Report(t0, a, false, true, "status", "status 503")
		}
	}
	if n := p.Counts()[pool.Ejected]; n != 2 {
		t.Errorf("%d of 4 ejected with max_ejected_percent 50", n)
	}
	refused := 0
	for _, e := range *evs {
		if errors.Is(e.Err, pool.ErrEjectionLimit) {
			refused++
		}
	}
	if refused != 2 {
		t.Errorf("%d refusals, want 2", refused)
	}
	if Panic(p.Backends(), 50) {
		t.Error("panic with exactly 50% out")
	}
	if err := p.Drain(t0, as[3]); err != nil {
		t.Fatal(err)
	}
	if !Panic(p.Backends(), 50) {
		t.Error("no panic with 2 of 3 serving addresses ejected")
	}
}

// A trial that fails when the pool refuses another ejection leaves the
// address serving normally rather than gated forever.
func TestTrialFailureAtLimit(t *testing.T) {
	p, tr, as, _ := setup(t, 2, -1)
	for range 3 {
		tr.Report(t0, as[0], false, true, "status", "status 503")
	}
	p.Tick(t0.Add(time.Minute), nil)
	// Meanwhile the other one is ejected: ejecting as[0] again would be 100%.
	if err := p.Eject(t0.Add(time.Minute), as[1], t0.Add(time.Hour), "test"); err != nil {
		t.Fatal(err)
	}
	b := state(p, as[0])
	tr.Admit(b)
	tr.Report(t0.Add(time.Minute), as[0], true, true, "status", "status 503")
	b = state(p, as[0])
	if b.State != pool.Active || tr.OnTrial(b) {
		t.Errorf("after a refused re-ejection: %s, on trial %v", b.State, tr.OnTrial(b))
	}
}

func TestJitter(t *testing.T) {
	_, tr, _, _ := setup(t, 2, 0.2)
	for range 200 {
		tr.mu.Lock()
		d := tr.durationLocked(1)
		tr.mu.Unlock()
		if d > 20*time.Second || d < 16*time.Second {
			t.Fatalf("jittered 2×base %s outside [16s, 20s]", d)
		}
	}
	if tr.Duration(5) != 35*time.Second {
		t.Errorf("capped at max_time: %s", tr.Duration(5))
	}
}

func TestValidate(t *testing.T) {
	bad := []Config{
		{Failures: -1},
		{Failures: 1, Window: 0, BaseTime: 1, MaxTime: 1},
		{Failures: 1, Window: 1, BaseTime: 0, MaxTime: 1},
		{Failures: 1, Window: 1, BaseTime: 2, MaxTime: 1},
		{Failures: 1, Window: 1, BaseTime: 1, MaxTime: 1, MaxEjectedPercent: 101},
	}
	for _, c := range bad {
		if Validate(c) == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if Validate(Config{}) != nil {
		t.Error("disabled ejection refused")
	}
}

// Requests in flight when an address is ejected fail afterwards: they must
// not extend the ejection nor count towards its doubling.
func TestLateFailuresIgnored(t *testing.T) {
	p, tr, as, _ := setup(t, 4, -1)
	a := as[2]
	for range 3 {
		tr.Report(t0, a, false, true, "status", "status 503")
	}
	before := state(p, a)
	for range 10 {
		tr.Report(t0.Add(time.Second), a, false, true, "status", "status 503")
	}
	after := state(p, a)
	if after.Ejections != before.Ejections || !after.EjectedUntil.Equal(before.EjectedUntil) {
		t.Errorf("late failures changed the ejection: %d until %s, was %d until %s",
			after.Ejections, after.EjectedUntil, before.Ejections, before.EjectedUntil)
	}
}

func TestCounts(t *testing.T) {
	_, tr, _, _ := setup(t, 2, -1)
	out := func(k retry.Kind, code int) retry.Outcome { return retry.Outcome{Kind: k, StatusCode: code} }
	// Default ejection.on: connect-failure, reset, timeout, 502, 503, 504,
	// whether or not retry.on lists the status (Kind OK or Status).
	for _, tc := range []struct {
		o    retry.Outcome
		want bool
	}{
		{out(retry.ConnectFailure, 0), true},
		{out(retry.Reset, 0), true},
		{out(retry.Timeout, 0), true},
		{out(retry.Status, 503), true},
		{out(retry.OK, 503), true},
		{out(retry.OK, 502), true},
		{out(retry.OK, 500), false},
		{out(retry.Status, 429), false},
		{out(retry.OK, 200), false},
	} {
		if got := tr.Counts(tc.o); got != tc.want {
			t.Errorf("default: Counts(%+v) = %v, want %v", tc.o, got, tc.want)
		}
	}
	cfg := tr.Config()
	cfg.On = []string{"connect-failure", "500"}
	if err := tr.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if tr.Counts(out(retry.Status, 503)) || tr.Counts(out(retry.Reset, 0)) || !tr.Counts(out(retry.OK, 500)) || !tr.Counts(out(retry.ConnectFailure, 0)) {
		t.Errorf("after SetConfig(on: %v) the conditions did not follow", cfg.On)
	}
	cfg.On = []string{"5xx"}
	if err := tr.SetConfig(cfg); err == nil || !strings.Contains(err.Error(), `ejection condition "5xx"`) {
		t.Errorf("SetConfig(on: [5xx]) = %v, want a refusal", err)
	}
	if _, err := ParseCondition("404"); err == nil {
		t.Error("404 accepted as an ejection condition")
	}
}
