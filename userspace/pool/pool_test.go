package pool

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	a1 = netip.MustParseAddrPort("198.18.2.11:80")
	a2 = netip.MustParseAddrPort("198.18.2.12:80")
	a3 = netip.MustParseAddrPort("198.18.2.13:80")
	a4 = netip.MustParseAddrPort("198.18.2.14:80")
)

func at(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

func want(addrs ...netip.AddrPort) []Desired {
	out := make([]Desired, len(addrs))
	for i, a := range addrs {
		out[i] = Desired{Addr: a, Weight: 1}
	}
	return out
}

// step is one action on the pool at a given second.
type step struct {
	at int
	do func(p *Pool, now time.Time) error
	// err, when set, must be matched by errors.Is.
	err error
}

func static(addrs ...netip.AddrPort) func(*Pool, time.Time) error {
	return func(p *Pool, now time.Time) error { p.SetSource(now, SourceStatic, want(addrs...)); return nil }
}

func dns(name string, addrs ...netip.AddrPort) func(*Pool, time.Time) error {
	return func(p *Pool, now time.Time) error { p.SetSource(now, name, want(addrs...)); return nil }
}

// counts are known flow counts (a nil map: none anywhere).
func counts(m map[netip.AddrPort]int) FlowCounts {
	return func(a netip.AddrPort) (int, bool) { return m[a], true }
}

// tick runs Tick with flows; a nil map means the counts are unknown.
func tick(flows map[netip.AddrPort]int) func(*Pool, time.Time) error {
	return func(p *Pool, now time.Time) error {
		if flows == nil {
			p.Tick(now, nil)
			return nil
		}
		p.Tick(now, counts(flows))
		return nil
	}
}

func drain(a netip.AddrPort) func(*Pool, time.Time) error {
	return func(p *Pool, now time.Time) error { return p.Drain(now, a) }
}

func undrain(a netip.AddrPort) func(*Pool, time.Time) error {
	return func(p *Pool, now time.Time) error { return p.Undrain(now, a) }
}

func eject(a netip.AddrPort, secs int) func(*Pool, time.Time) error {
	return func(p *Pool, now time.Time) error {
		return p.Eject(now, a, now.Add(time.Duration(secs)*time.Second), "ejection")
	}
}

func TestTransitions(t *testing.T) {
	cfg := Config{DrainTimeout: 30 * time.Second, MaxEjectedPercent: 50, RemovedGrace: time.Minute}
	tests := []struct {
		name  string
		steps []step
		// trans are the expected transitions, "addr from>to cause".
		trans []string
		// final states by address; an address missing from the pool is "gone".
		final map[netip.AddrPort]string
	}{
		{
			name:  "new addresses are active",
			steps: []step{{at: 0, do: static(a1, a2)}},
			trans: []string{"198.18.2.11:80 absent>active config", "198.18.2.12:80 absent>active config"},
			final: map[netip.AddrPort]string{a1: "active", a2: "active"},
		},
		{
			name: "dropped address drains, then removed when its flows end",
			steps: []step{
				{at: 0, do: static(a1, a2)},
				{at: 1, do: static(a1)},
				{at: 2, do: tick(map[netip.AddrPort]int{a2: 3})},
				{at: 5, do: tick(map[netip.AddrPort]int{a2: 0})},
			},
			trans: []string{
				"198.18.2.11:80 absent>active config", "198.18.2.12:80 absent>active config",
				"198.18.2.12:80 active>draining config",
				"198.18.2.12:80 draining>removed no-flows",
			},
			final: map[netip.AddrPort]string{a1: "active", a2: "removed"},
		},
		{
			name: "drain timeout removes even with flows",
			steps: []step{
				{at: 0, do: static(a1)},
				{at: 1, do: static()},
				{at: 30, do: tick(map[netip.AddrPort]int{a1: 3})},
				{at: 31, do: tick(map[netip.AddrPort]int{a1: 3})},
			},
			trans: []string{
				"198.18.2.11:80 absent>active config",
				"198.18.2.11:80 active>draining config",
				"198.18.2.11:80 draining>removed drain-timeout",
			},
			final: map[netip.AddrPort]string{a1: "removed"},
		},
		{
			name: "unknown flow counts only apply deadlines",
			steps: []step{
				{at: 0, do: static(a1)},
				{at: 1, do: static()},
				{at: 2, do: tick(nil)},
			},
			trans: []string{"198.18.2.11:80 absent>active config", "198.18.2.11:80 active>draining config"},
			final: map[netip.AddrPort]string{a1: "draining"},
		},
		{
			name: "removed address forgotten after the grace",
			steps: []step{
				{at: 0, do: static(a1)},
				{at: 1, do: static()},
				{at: 2, do: tick(map[netip.AddrPort]int{})},
				{at: 61, do: tick(map[netip.AddrPort]int{})},
				{at: 62, do: tick(map[netip.AddrPort]int{})},
			},
			trans: []string{
				"198.18.2.11:80 absent>active config",
				"198.18.2.11:80 active>draining config",
				"198.18.2.11:80 draining>removed no-flows",
			},
			final: map[netip.AddrPort]string{a1: "gone"},
		},
		{
			name: "DNS returns a draining address: active again",
			steps: []step{
				{at: 0, do: dns("backend.lab", a1, a2)},
				{at: 1, do: dns("backend.lab", a2)},
				{at: 2, do: tick(map[netip.AddrPort]int{a1: 1})},
				{at: 3, do: dns("backend.lab", a1, a2)},
			},
			trans: []string{
				"198.18.2.11:80 absent>active dns:backend.lab", "198.18.2.12:80 absent>active dns:backend.lab",
				"198.18.2.11:80 active>draining dns:backend.lab",
				"198.18.2.11:80 draining>active dns:backend.lab",
			},
			final: map[netip.AddrPort]string{a1: "active", a2: "active"},
		},
		{
			name: "union of sources: dropped by one, kept by another",
			steps: []step{
				{at: 0, do: static(a1)},
				{at: 0, do: dns("backend.lab", a1, a2)},
				{at: 1, do: dns("backend.lab", a2)},
			},
			trans: []string{
				"198.18.2.11:80 absent>active config",
				"198.18.2.12:80 absent>active dns:backend.lab",
			},
			final: map[netip.AddrPort]string{a1: "active", a2: "active"},
		},
		{
			name: "operator drain sticks while desired, undrain restores",
			steps: []step{
				{at: 0, do: static(a1, a2)},
				{at: 1, do: drain(a1)},
				{at: 2, do: static(a1, a2)},
				{at: 3, do: tick(map[netip.AddrPort]int{a1: 2})},
				{at: 4, do: undrain(a1)},
			},
			trans: []string{
				"198.18.2.11:80 absent>active config", "198.18.2.12:80 absent>active config",
				"198.18.2.11:80 active>draining operator",
				"198.18.2.11:80 draining>active operator",
			},
			final: map[netip.AddrPort]string{a1: "active", a2: "active"},
		},
		{
			name: "operator drain runs to removal and stays until undrain",
			steps: []step{
				{at: 0, do: static(a1, a2)},
				{at: 1, do: drain(a1)},
				{at: 2, do: tick(map[netip.AddrPort]int{a1: 0})},
				{at: 100, do: tick(map[netip.AddrPort]int{})},
				{at: 101, do: static(a1, a2)},
				{at: 102, do: undrain(a1)},
			},
			trans: []string{
				"198.18.2.11:80 absent>active config", "198.18.2.12:80 absent>active config",
				"198.18.2.11:80 active>draining operator",
				"198.18.2.11:80 draining>removed no-flows",
				"198.18.2.11:80 removed>active operator",
			},
			final: map[netip.AddrPort]string{a1: "active", a2: "active"},
		},
		{
			name: "undrain of an address no source wants keeps it draining",
			steps: []step{
				{at: 0, do: static(a1, a2)},
				{at: 1, do: drain(a1)},
				{at: 2, do: static(a2)},
				{at: 3, do: undrain(a1)},
			},
			trans: []string{
				"198.18.2.11:80 absent>active config", "198.18.2.12:80 absent>active config",
				"198.18.2.11:80 active>draining operator",
			},
			final: map[netip.AddrPort]string{a1: "draining", a2: "active"},
		},
		{
			name: "drain of an unknown address",
			steps: []step{
				{at: 0, do: static(a1)},
				{at: 1, do: drain(a2), err: ErrUnknownAddress},
				{at: 1, do: undrain(a2), err: ErrUnknownAddress},
			},
			trans: []string{"198.18.2.11:80 absent>active config"},
			final: map[netip.AddrPort]string{a1: "active"},
		},
		{
			name: "ejection and trial after its time",
			steps: []step{
				{at: 0, do: static(a1, a2)},
				{at: 1, do: eject(a1, 10)},
				{at: 10, do: tick(map[netip.AddrPort]int{})},
				{at: 11, do: tick(map[netip.AddrPort]int{})},
			},
			trans: []string{
				"198.18.2.11:80 absent>active config", "198.18.2.12:80 absent>active config",
				"198.18.2.11:80 active>ejected ejection",
				"198.18.2.11:80 ejected>active ejection-expired",
			},
			final: map[netip.AddrPort]string{a1: "active", a2: "active"},
		},
		{
			name: "max ejected percent: second of two refused",
			steps: []step{
				{at: 0, do: static(a1, a2)},
				{at: 1, do: eject(a1, 10)},
				{at: 2, do: eject(a2, 10), err: ErrEjectionLimit},
			},
			trans: []string{
				"198.18.2.11:80 absent>active config", "198.18.2.12:80 absent>active config",
				"198.18.2.11:80 active>ejected ejection",
			},
			final: map[netip.AddrPort]string{a1: "ejected", a2: "active"},
		},
		{
			name: "max ejected percent: a single backend is never ejected",
			steps: []step{
				{at: 0, do: static(a1)},
				{at: 1, do: eject(a1, 10), err: ErrEjectionLimit},
			},
			trans: []string{"198.18.2.11:80 absent>active config"},
			final: map[netip.AddrPort]string{a1: "active"},
		},
		{
			name: "max ejected percent: two of four",
			steps: []step{
				{at: 0, do: static(a1, a2, a3, a4)},
				{at: 1, do: eject(a1, 10)},
				{at: 1, do: eject(a2, 10)},
				{at: 1, do: eject(a3, 10), err: ErrEjectionLimit},
				{at: 1, do: eject(a1, 20)}, // re-ejection moves the time, no limit check
			},
			trans: []string{
				"198.18.2.11:80 absent>active config", "198.18.2.12:80 absent>active config",
				"198.18.2.13:80 absent>active config", "198.18.2.14:80 absent>active config",
				"198.18.2.11:80 active>ejected ejection",
				"198.18.2.12:80 active>ejected ejection",
			},
			final: map[netip.AddrPort]string{a1: "ejected", a2: "ejected", a3: "active", a4: "active"},
		},
		{
			name: "draining address cannot be ejected",
			steps: []step{
				{at: 0, do: static(a1, a2, a3)},
				{at: 1, do: drain(a1)},
				{at: 2, do: eject(a1, 10), err: ErrNotActive},
			},
			trans: []string{
				"198.18.2.11:80 absent>active config", "198.18.2.12:80 absent>active config",
				"198.18.2.13:80 absent>active config",
				"198.18.2.11:80 active>draining operator",
			},
			final: map[netip.AddrPort]string{a1: "draining", a2: "active", a3: "active"},
		},
		{
			name: "ejected address dropped by its source drains",
			steps: []step{
				{at: 0, do: static(a1, a2)},
				{at: 1, do: eject(a1, 100)},
				{at: 2, do: static(a2)},
			},
			trans: []string{
				"198.18.2.11:80 absent>active config", "198.18.2.12:80 absent>active config",
				"198.18.2.11:80 active>ejected ejection",
				"198.18.2.11:80 ejected>draining config",
			},
			final: map[netip.AddrPort]string{a1: "draining", a2: "active"},
		},
		{
			name: "ejected address stays ejected when its source lists it again",
			steps: []step{
				{at: 0, do: static(a1, a2)},
				{at: 1, do: eject(a1, 100)},
				{at: 2, do: static(a1, a2)},
			},
			trans: []string{
				"198.18.2.11:80 absent>active config", "198.18.2.12:80 absent>active config",
				"198.18.2.11:80 active>ejected ejection",
			},
			final: map[netip.AddrPort]string{a1: "ejected", a2: "active"},
		},
		{
			name: "removed address returned by DNS is active again",
			steps: []step{
				{at: 0, do: dns("backend.lab", a1)},
				{at: 1, do: dns("backend.lab", a2)},
				{at: 2, do: tick(map[netip.AddrPort]int{})},
				{at: 3, do: dns("backend.lab", a1)},
			},
			trans: []string{
				"198.18.2.11:80 absent>active dns:backend.lab",
				"198.18.2.11:80 active>draining dns:backend.lab",
				"198.18.2.12:80 absent>active dns:backend.lab",
				"198.18.2.11:80 draining>removed no-flows",
				"198.18.2.12:80 active>draining dns:backend.lab",
				"198.18.2.11:80 removed>active dns:backend.lab",
			},
			final: map[netip.AddrPort]string{a1: "active", a2: "draining"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			p := New("web", cfg, nil, func(tr Transition) {
				if tr.Pool != "web" {
					t.Errorf("transition of pool %q", tr.Pool)
				}
				got = append(got, fmt.Sprintf("%s %s>%s %s", tr.Addr, tr.From, tr.To, tr.Cause))
			})
			for i, s := range tc.steps {
				err := s.do(p, at(s.at))
				if s.err == nil && err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if s.err != nil && !errors.Is(err, s.err) {
					t.Fatalf("step %d: err = %v, want %v", i, err, s.err)
				}
			}
			// One call may move several addresses in map order, so only
			// the order per address is compared.
			if !sameTransitions(got, tc.trans) {
				t.Errorf("transitions:\n got  %s\n want %s", strings.Join(got, "\n      "), strings.Join(tc.trans, "\n      "))
			}
			for a, st := range tc.final {
				b, ok := p.Backend(a)
				gotSt := "gone"
				if ok {
					gotSt = b.State.String()
				}
				if gotSt != st {
					t.Errorf("%s: state %s, want %s", a, gotSt, st)
				}
			}
		})
	}
}

// sameTransitions compares transition logs: the same transitions, in the
// same order for each address.
func sameTransitions(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	byAddr := func(l []string) map[string][]string {
		m := make(map[string][]string)
		for _, s := range l {
			a, _, _ := strings.Cut(s, " ")
			m[a] = append(m[a], s)
		}
		return m
	}
	g, w := byAddr(got), byAddr(want)
	if len(g) != len(w) {
		return false
	}
	for a, l := range w {
		if !slices.Equal(g[a], l) {
			return false
		}
	}
	return true
}

func TestDrainDeadlineAndFields(t *testing.T) {
	p := New("web", Config{DrainTimeout: 30 * time.Second, MaxEjectedPercent: 50}, nil, nil)
	p.SetSource(at(0), SourceStatic, []Desired{{Addr: a1, Weight: 3, Info: "config line 7"}, {Addr: a2}})
	p.SetSource(at(5), SourceStatic, want(a2))
	b, _ := p.Backend(a1)
	if b.State != Draining || !b.DrainDeadline.Equal(at(35)) || !b.Since.Equal(at(5)) || b.Cause != CauseConfig {
		t.Fatalf("a1 = %+v", b)
	}
	if b.Desired || b.Source != "" {
		t.Fatalf("a1 still desired: %+v", b)
	}
	b2, _ := p.Backend(a2)
	if b2.Weight != 1 || b2.Source != SourceStatic || !b2.Desired {
		t.Fatalf("a2 = %+v", b2)
	}
	act := p.Active()
	if len(act) != 1 || act[0].Addr != a2 {
		t.Fatalf("active = %+v", act)
	}
	p.Tick(at(6), counts(map[netip.AddrPort]int{a1: 4, a2: 9}))
	if b, _ := p.Backend(a1); b.Flows != 4 {
		t.Fatalf("flows = %d", b.Flows)
	}
	if d := p.Draining(); !slices.Equal(d, []netip.AddrPort{a1}) {
		t.Fatalf("draining = %v", d)
	}
	c := p.Counts()
	if c[Active] != 1 || c[Draining] != 1 {
		t.Fatalf("counts = %v", c)
	}
}

func TestStaticWinsWeight(t *testing.T) {
	p := New("web", Config{DrainTimeout: time.Second}, nil, nil)
	p.SetSource(at(0), "b.lab", []Desired{{Addr: a1, Weight: 5}})
	p.SetSource(at(0), "a.lab", []Desired{{Addr: a1, Weight: 4}})
	if b, _ := p.Backend(a1); b.Source != "a.lab" || b.Weight != 4 {
		t.Fatalf("a1 = %+v", b)
	}
	p.SetSource(at(0), SourceStatic, []Desired{{Addr: a1, Weight: 2}})
	if b, _ := p.Backend(a1); b.Source != SourceStatic || b.Weight != 2 {
		t.Fatalf("a1 = %+v", b)
	}
	if got := p.Sources(); !slices.Equal(got, []string{"a.lab", "b.lab", SourceStatic}) {
		t.Fatalf("sources = %v", got)
	}
}

func TestAdoptWaitsForExpectedSources(t *testing.T) {
	p := New("web", Config{DrainTimeout: 30 * time.Second}, nil, nil)
	p.Adopt(at(0), a1, Active, 1, time.Time{})   // from static
	p.Adopt(at(0), a2, Active, 1, time.Time{})   // from backend.lab, not resolved yet
	p.Adopt(at(0), a3, Draining, 1, time.Time{}) // drained by an operator before the restart
	p.Adopt(at(0), a4, Removed, 1, time.Time{})  // ignored
	p.Adopt(at(0), a1, Ejected, 1, at(100))      // already known: ignored
	p.Expect(at(0), []string{SourceStatic, "backend.lab"})
	p.SetSource(at(0), SourceStatic, want(a1, a3))
	for a, st := range map[netip.AddrPort]State{a1: Active, a2: Active, a3: Draining} {
		if b, _ := p.Backend(a); b.State != st {
			t.Errorf("%s = %s, want %s", a, b.State, st)
		}
	}
	if _, ok := p.Backend(a4); ok {
		t.Errorf("removed slot adopted")
	}
	if b, _ := p.Backend(a3); !b.Held {
		t.Errorf("adopted draining address not held: %+v", b)
	}
	// The DNS name resolves without a2: now it drains.
	p.SetSource(at(1), "backend.lab", want(a4))
	if b, _ := p.Backend(a2); b.State != Draining || b.Cause != "dns:backend.lab" {
		t.Errorf("a2 = %+v", b)
	}
	if b, _ := p.Backend(a4); b.State != Active {
		t.Errorf("a4 = %+v", b)
	}
}

func TestExpectDropsSource(t *testing.T) {
	p := New("web", Config{DrainTimeout: 30 * time.Second}, nil, nil)
	p.Expect(at(0), []string{SourceStatic, "backend.lab"})
	p.SetSource(at(0), SourceStatic, want(a1))
	p.SetSource(at(0), "backend.lab", want(a2))
	p.Expect(at(1), []string{SourceStatic})
	if b, _ := p.Backend(a2); b.State != Draining || b.Cause != "dns:backend.lab" {
		t.Fatalf("a2 = %+v", b)
	}
	p.Expect(at(2), nil)
	p.SetSource(at(2), SourceStatic, nil)
	if b, _ := p.Backend(a1); b.State != Draining {
		t.Fatalf("a1 = %+v", b)
	}
	if p.Empty() {
		t.Fatal("empty while addresses drain")
	}
	p.Tick(at(3), counts(nil))
	p.Tick(at(100), counts(nil))
	if !p.Empty() {
		t.Fatalf("not empty: %+v", p.Backends())
	}
}

func TestRecoverResetsEjections(t *testing.T) {
	p := New("web", Config{DrainTimeout: time.Second, MaxEjectedPercent: 50}, nil, nil)
	p.SetSource(at(0), SourceStatic, want(a1, a2))
	if err := p.Eject(at(1), a1, at(11), "health"); err != nil {
		t.Fatal(err)
	}
	if err := p.Eject(at(2), a1, at(22), "health"); err != nil {
		t.Fatal(err)
	}
	b, _ := p.Backend(a1)
	if b.Ejections != 2 || !b.EjectedUntil.Equal(at(22)) {
		t.Fatalf("a1 = %+v", b)
	}
	if err := p.Eject(at(2), a2, at(12), "health"); !errors.Is(err, ErrEjectionLimit) {
		t.Fatalf("ejecting the whole pool: %v", err)
	}
	if n := p.EjectionsRefused(); n != 1 {
		t.Fatalf("refused = %d", n)
	}
	if err := p.Recover(at(3), a1, "health"); err != nil {
		t.Fatal(err)
	}
	b, _ = p.Backend(a1)
	if b.State != Active || b.Ejections != 0 || b.Cause != "health" {
		t.Fatalf("a1 = %+v", b)
	}
	if err := p.Recover(at(3), a4, "health"); !errors.Is(err, ErrUnknownAddress) {
		t.Fatalf("err = %v", err)
	}
}

func TestNextDeadline(t *testing.T) {
	p := New("web", Config{DrainTimeout: 30 * time.Second, MaxEjectedPercent: 50}, nil, nil)
	if d := p.NextDeadline(); !d.IsZero() {
		t.Fatalf("empty pool deadline = %v", d)
	}
	p.SetSource(at(0), SourceStatic, want(a1, a2, a3, a4))
	if err := p.Drain(at(1), a1); err != nil {
		t.Fatal(err)
	}
	if d := p.NextDeadline(); !d.Equal(at(31)) {
		t.Fatalf("deadline = %v, want drain deadline", d)
	}
	if err := p.Eject(at(2), a2, at(12), "ejection"); err != nil {
		t.Fatal(err)
	}
	if d := p.NextDeadline(); !d.Equal(at(12)) {
		t.Fatalf("deadline = %v, want end of ejection", d)
	}
}

func TestSubscribe(t *testing.T) {
	var main, sub []Transition
	p := New("web", Config{DrainTimeout: time.Second}, nil, func(tr Transition) { main = append(main, tr) })
	unsubscribe := p.Subscribe(func(tr Transition) { sub = append(sub, tr) })
	p.SetSource(at(0), SourceStatic, want(a1))
	unsubscribe()
	p.SetSource(at(1), SourceStatic, nil)
	if len(main) != 2 || len(sub) != 1 || sub[0].To != Active {
		t.Fatalf("main %v, subscriber %v", main, sub)
	}
}

func TestAdoptedDrainingFromDNSComesBack(t *testing.T) {
	p := New("web", Config{DrainTimeout: 30 * time.Second}, nil, nil)
	p.Adopt(at(0), a1, Draining, 1, time.Time{}) // a DNS answer had left it out
	p.Adopt(at(0), a2, Draining, 1, time.Time{}) // its name no longer returns it
	p.Expect(at(0), []string{SourceStatic, "backend.lab"})
	p.SetSource(at(0), SourceStatic, nil)
	p.SetSource(at(1), "backend.lab", want(a1))
	if b, _ := p.Backend(a1); b.State != Active || b.Held {
		t.Fatalf("a1 = %+v", b)
	}
	if b, _ := p.Backend(a2); b.State != Draining || b.Held || !b.DrainDeadline.Equal(at(30)) {
		t.Fatalf("a2 = %+v", b)
	}
}

func TestEjectionRoom(t *testing.T) {
	p := New("web", Config{DrainTimeout: time.Second, MaxEjectedPercent: 50}, nil, nil)
	if n := p.EjectionRoom(); n != 0 {
		t.Fatalf("empty pool room = %d", n)
	}
	p.SetSource(at(0), SourceStatic, want(a1, a2, a3, a4))
	if n := p.EjectionRoom(); n != 2 {
		t.Fatalf("room = %d, want 2 of 4 at 50%%", n)
	}
	if err := p.Eject(at(1), a1, time.Time{}, "health:timeout"); err != nil {
		t.Fatal(err)
	}
	if n := p.EjectionRoom(); n != 1 {
		t.Fatalf("room = %d, want 1", n)
	}
	// No end time: only Recover brings it back.
	p.Tick(at(1000), counts(nil))
	if b, _ := p.Backend(a1); b.State != Ejected {
		t.Fatalf("a1 = %+v", b)
	}
	p.SetConfig(Config{DrainTimeout: time.Second, MaxEjectedPercent: 100})
	if n := p.EjectionRoom(); n != 3 {
		t.Fatalf("room at 100%% = %d, want 3", n)
	}
}

// An unchanged answer changes nothing a consumer acts on: SetSource says
// so, Version stays, only the Info shown in status moves.
func TestUnchangedSourceChangesNothing(t *testing.T) {
	var seen []Transition
	p := New("web", Config{DrainTimeout: 30 * time.Second}, nil, func(tr Transition) { seen = append(seen, tr) })
	if !p.SetSource(at(0), "backend.lab", []Desired{{Addr: a1, Info: "answer #1"}, {Addr: a2, Weight: 2}}) {
		t.Fatal("first answer reported unchanged")
	}
	v := p.Version()
	n := len(seen)
	if p.SetSource(at(5), "backend.lab", []Desired{{Addr: a2, Weight: 2}, {Addr: a1, Weight: 1, Info: "answer #2"}}) {
		t.Fatal("same set reported changed")
	}
	if p.Version() != v || len(seen) != n {
		t.Fatalf("version %d -> %d, transitions %d -> %d", v, p.Version(), n, len(seen))
	}
	if b, _ := p.Backend(a1); b.Info != "answer #2" || !b.Since.Equal(at(0)) {
		t.Fatalf("a1 = %+v", b)
	}
	// A weight change is a change; so is a duplicate hiding a missing address.
	if !p.SetSource(at(6), "backend.lab", []Desired{{Addr: a1}, {Addr: a2, Weight: 3}}) || p.Version() == v {
		t.Fatal("weight change not reported")
	}
	if !p.SetSource(at(7), "backend.lab", []Desired{{Addr: a1}, {Addr: a1}}) {
		t.Fatal("set with a duplicate reported unchanged")
	}
	if b, _ := p.Backend(a2); b.State != Draining {
		t.Fatalf("a2 = %+v", b)
	}
}

func TestTickReportsForgotten(t *testing.T) {
	p := New("web", Config{DrainTimeout: 30 * time.Second, RemovedGrace: time.Minute}, nil, nil)
	p.SetSource(at(0), SourceStatic, want(a1, a2))
	p.SetSource(at(1), SourceStatic, want(a2))
	if got := p.Tick(at(2), counts(nil)); len(got) != 0 {
		t.Fatalf("forgotten at once: %v", got)
	}
	v := p.Version()
	if got := p.Tick(at(62), counts(nil)); !slices.Equal(got, []netip.AddrPort{a1}) {
		t.Fatalf("forgotten = %v", got)
	}
	if p.Version() == v {
		t.Fatal("forgetting an address did not change the version")
	}
}

// A restart adopts states from the data path's slots; Restore puts back
// what the slots cannot carry: the operator's hold (also on a DNS-derived
// address), the drain deadline, the ejection's end.
func TestSavedAndRestore(t *testing.T) {
	p := New("web", Config{DrainTimeout: 30 * time.Second, MaxEjectedPercent: 100}, nil, nil)
	p.Expect(at(0), []string{SourceStatic, "backend.lab"})
	p.SetSource(at(0), SourceStatic, want(a1))
	p.SetSource(at(0), "backend.lab", want(a2, a3, a4))
	if err := p.Drain(at(1), a2); err != nil { // operator, DNS-derived
		t.Fatal(err)
	}
	if err := p.Eject(at(2), a3, at(60), "connect-failure"); err != nil {
		t.Fatal(err)
	}
	if err := p.Drain(at(3), a4); err != nil {
		t.Fatal(err)
	}
	p.Tick(at(4), counts(map[netip.AddrPort]int{a2: 1})) // a4 has no flow: removed, still held
	saved := p.SavedAll()
	if len(saved) != 3 || saved[a2].State != Draining || !saved[a2].Held || !saved[a2].DrainDeadline.Equal(at(31)) ||
		saved[a3].State != Ejected || !saved[a3].EjectedUntil.Equal(at(60)) || saved[a3].Ejections != 1 ||
		saved[a4].State != Removed || !saved[a4].Held {
		t.Fatalf("saved = %+v", saved)
	}

	// The restarted agent: slots give a1 active, a2 draining, a3 ejected;
	// a4 (removed) is not in the data path any more.
	q := New("web", Config{DrainTimeout: 30 * time.Second, MaxEjectedPercent: 100}, nil, nil)
	q.Adopt(at(100), a1, Active, 1, time.Time{})
	q.Adopt(at(100), a2, Draining, 1, time.Time{})
	q.Adopt(at(100), a3, Ejected, 1, at(110))
	for addr, s := range saved {
		q.Restore(at(100), addr, s)
	}
	q.Expect(at(100), []string{SourceStatic, "backend.lab"})
	q.SetSource(at(100), SourceStatic, want(a1))
	q.SetSource(at(101), "backend.lab", want(a2, a3, a4)) // the name still answers all
	for _, tc := range []struct {
		addr  netip.AddrPort
		state State
		check func(Backend) bool
	}{
		{a2, Draining, func(b Backend) bool { return b.Held && b.DrainDeadline.Equal(at(31)) && b.Cause == CauseOperator }},
		{a3, Ejected, func(b Backend) bool { return b.EjectedUntil.Equal(at(60)) && b.Ejections == 1 }},
		{a4, Removed, func(b Backend) bool { return b.Held }},
	} {
		b, ok := q.Backend(tc.addr)
		if !ok || b.State != tc.state || !tc.check(b) {
			t.Errorf("%s after restart = %+v (known %v), want %s as saved", tc.addr, b, ok, tc.state)
		}
	}
}
