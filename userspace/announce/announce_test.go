package announce

import (
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

var (
	vipA = netip.MustParseAddr("198.18.1.100")
	vipB = netip.MustParseAddr("198.18.1.101")
	t0   = time.Unix(1000, 0)
)

func routes(t *testing.T, f *Fake) []netip.Addr {
	t.Helper()
	l, err := f.List()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestSyncAnnouncesOnlyUsableAttached(t *testing.T) {
	f := NewFake()
	a := New(Options{Routes: f})
	want := []VIP{{Addr: vipA, Services: []string{"a"}, Usable: true}, {Addr: vipB, Services: []string{"b"}}}
	if err := a.Sync(t0, want, true); err != nil {
		t.Fatal(err)
	}
	if got := routes(t, f); !slices.Equal(got, []netip.Addr{vipA}) {
		t.Fatalf("routes %v, want only %s", got, vipA)
	}
	st := a.Status()
	if len(st.VIPs) != 2 || !st.VIPs[0].Announced || st.VIPs[1].Announced || st.VIPs[1].Reason != ReasonNoBackend {
		t.Fatalf("status %+v", st)
	}
	// Detached data path: nothing is announced.
	if err := a.Sync(t0, want, false); err != nil {
		t.Fatal(err)
	}
	if got := routes(t, f); len(got) != 0 {
		t.Fatalf("detached: routes %v", got)
	}
	if r := a.Status().VIPs[0].Reason; r != ReasonDetached {
		t.Fatalf("reason %q", r)
	}
	// A VIP gone from the config is withdrawn, also one a previous agent left.
	f2 := NewFake(vipA, vipB)
	a2 := New(Options{Routes: f2})
	if err := a2.Sync(t0, want[:1], true); err != nil {
		t.Fatal(err)
	}
	if got := routes(t, f2); !slices.Equal(got, []netip.Addr{vipA}) {
		t.Fatalf("routes %v", got)
	}
}

// An agent that restarts onto the routes a previous one left changes
// nothing when its first decision is the same (kill -9 withdraws nothing).
func TestRestartChangesNothing(t *testing.T) {
	f := NewFake(vipA)
	a := New(Options{Routes: f})
	if err := a.Sync(t0, []VIP{{Addr: vipA, Usable: true}}, true); err != nil {
		t.Fatal(err)
	}
	if n := f.Changes(); n != 0 {
		t.Fatalf("%d route changes on restart, want 0", n)
	}
}

func TestListFailureChangesNothing(t *testing.T) {
	f := NewFake(vipA)
	a := New(Options{Routes: f})
	f.FailNext(errors.New("netlink down"))
	if err := a.Sync(t0, nil, true); err == nil {
		t.Fatal("want an error")
	}
	if got := routes(t, f); len(got) != 1 || a.Status().LastError == "" {
		t.Fatalf("routes %v, status %+v", got, a.Status())
	}
	if err := a.Sync(t0, []VIP{{Addr: vipA, Usable: true}}, true); err != nil || a.Status().LastError != "" {
		t.Fatalf("retry: %v %+v", err, a.Status())
	}
}

func TestDrain(t *testing.T) {
	f := NewFake()
	file := filepath.Join(t.TempDir(), "node.json")
	a := New(Options{Routes: f, StateFile: file})
	want := []VIP{{Addr: vipA, Usable: true}}
	if err := a.Sync(t0, want, true); err != nil {
		t.Fatal(err)
	}
	if err := a.Drain(t0, time.Minute, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := a.Sync(t0, want, true); err != nil {
		t.Fatal(err)
	}
	if got := routes(t, f); len(got) != 0 {
		t.Fatalf("draining: routes %v", got)
	}
	// Packets within the quiet period after the withdrawal: still draining.
	if a.Observe(t0.Add(2*time.Second), t0.Add(2*time.Second), 0, true) {
		t.Fatal("drained too early")
	}
	// Quiet, but not yet quiet long after the withdrawal.
	if a.Observe(t0.Add(4*time.Second), t0.Add(4*time.Second), 10*time.Second, true) {
		t.Fatal("drained before quiet passed since the withdrawal")
	}
	// A restarted agent resumes the drain and announces nothing.
	b := New(Options{Routes: f, StateFile: file})
	if err := b.Sync(t0, want, true); err != nil {
		t.Fatal(err)
	}
	if b.Status().Node != Draining || len(routes(t, f)) != 0 {
		t.Fatalf("restarted: %+v", b.Status())
	}
	if !b.Observe(t0.Add(6*time.Second), t0.Add(6*time.Second), 5*time.Second, true) {
		t.Fatal("not drained when quiet")
	}
	if st := b.Status(); st.Node != Drained || st.DrainCause != "quiet" {
		t.Fatalf("status %+v", st)
	}
	if err := b.Undrain(); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(t0, want, true); err != nil {
		t.Fatal(err)
	}
	if got := routes(t, f); len(got) != 1 {
		t.Fatalf("undrained: routes %v", got)
	}
	if c := New(Options{Routes: f, StateFile: file}); c.Status().Node != Serving {
		t.Fatal("undrain not saved")
	}
}

func TestDrainDeadline(t *testing.T) {
	a := New(Options{Routes: NewFake()})
	if err := a.Drain(t0, 10*time.Second, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if a.Observe(t0.Add(9*time.Second), t0.Add(9*time.Second), 0, true) {
		t.Fatal("drained before the deadline with packets flowing")
	}
	if !a.Observe(t0.Add(10*time.Second), t0.Add(10*time.Second), 0, true) || a.Status().DrainCause != "deadline" {
		t.Fatalf("status %+v", a.Status())
	}
	if err := a.Drain(t0, 0, time.Second); err == nil {
		t.Fatal("zero timeout accepted")
	}
}
