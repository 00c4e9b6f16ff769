package agent

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/pool"
)

func TestRefusedConnectsEject(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	s2 := h.slotOf(be2)
	h.refuse(s2, 100) // before: not counted
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	h.refuse(s2, 104)
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if b := h.state(be2); b.State != pool.Active {
		t.Fatalf("ejected after 4 refusals (failures: 5): %+v", b)
	}
	h.refuse(s2, 105)
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	b := h.state(be2)
	if b.State != pool.Ejected || !strings.Contains(b.Cause, "connect refused") {
		t.Fatalf("be2 after 5 refusals = %+v", b)
	}
	if got := h.dp.Backend(s2); got.State != datapath.BackendEjected {
		t.Fatalf("slot = %+v", got)
	}
	if slices.Contains(h.tableSlots(1), s2) {
		t.Fatal("ejected backend still in the table")
	}
	st, err := h.a.Status(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Pools {
		for _, ab := range p.Backends {
			if ab.Address == be2.String() && (ab.EjectedUntil == nil || !ab.EjectedUntil.Equal(b.EjectedUntil)) {
				t.Errorf("status ejected_until = %v, want %v", ab.EjectedUntil, b.EjectedUntil)
			}
		}
	}
	// Its ejection time (base_time 10s, minus jitter) runs out: back on trial.
	for range 11 {
		if err := h.tick(time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if b := h.state(be2); b.State != pool.Active || b.Cause != pool.CauseEjectionExpired {
		t.Fatalf("be2 after its ejection = %+v", b)
	}
	if !slices.Contains(h.tableSlots(1), s2) {
		t.Fatal("backend back from ejection not in the table")
	}
}

func TestUnansweredSYNsEjectOncePerFlow(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	s3 := h.slotOf(be3)
	port := uint16(40000)
	stuck := func() {
		f := h.addFlow(port, s3, false)
		f.State, f.Idle, f.HalfOpen = datapath.FlowSynSent, time.Second, true
		h.dp.AddFlow(f)
		port++
	}
	// One stuck flow seen on many ticks is one failure (ejection.window
	// 10s: it still counts with the four below).
	stuck()
	for range 4 {
		if err := h.tick(time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if b := h.state(be3); b.State != pool.Active {
		t.Fatalf("one unanswered SYN ejected it: %+v", b)
	}
	// A backend that stops answering: new SYNs stuck on every scan.
	for range 4 {
		stuck()
		if err := h.tick(time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if b := h.state(be3); b.State != pool.Ejected || !strings.Contains(b.Cause, "SYN unanswered") {
		t.Fatalf("be3 after 5 scans with unanswered SYNs = %+v", b)
	}
}

// TestSYNFloodCannotEject: unanswered SYNs a flood of spoofed clients
// leaves behind (every address at once, or one address that answers most
// of its SYNs, or a burst in one scan) never eject a healthy backend.
func TestSYNFloodCannotEject(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	port := uint16(10000)
	add := func(a netip.AddrPort, n int, state datapath.FlowState) {
		for range n {
			f := h.addFlow(port, h.slotOf(a), false)
			f.State, f.Idle, f.HalfOpen = state, time.Second, true
			h.dp.AddFlow(f)
			port++
		}
	}
	healthy := func(when string) {
		t.Helper()
		for _, a := range []netip.AddrPort{be1, be2, be3} {
			if b := h.state(a); b.State != pool.Active {
				t.Fatalf("%s: %v = %+v", when, a, b)
			}
		}
	}
	// Spread over the whole pool, scan after scan.
	for range 20 {
		for _, a := range []netip.AddrPort{be1, be2, be3} {
			add(a, 50, datapath.FlowSynSent)
		}
		if err := h.tick(time.Second); err != nil {
			t.Fatal(err)
		}
	}
	healthy("a flood over every address")
	clearFlows(t, h.dp)

	// Aimed at one address, which answers most of its SYNs.
	for range 20 {
		add(be1, 50, datapath.FlowSynSent)
		add(be1, 60, datapath.FlowSynRecv)
		if err := h.tick(time.Second); err != nil {
			t.Fatal(err)
		}
	}
	healthy("a flood at one answering address")
	clearFlows(t, h.dp)

	// A burst of unanswered SYNs in one scan counts once.
	add(be2, 1000, datapath.FlowSynSent)
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	healthy("a burst in one scan")
}

func TestPassiveEjectionOffAndLimited(t *testing.T) {
	off := strings.Replace(baseConfig, "    drain_timeout: 30s\n", "    drain_timeout: 30s\n    ejection: {failures: 0}\n", 1)
	h := newHarness(t, nil, off)
	h.dp.SetBackendStats(h.slotOf(be1), datapath.BackendStats{})
	_ = h.tick(time.Second)
	h.refuse(h.slotOf(be1), 50)
	_ = h.tick(time.Second)
	if b := h.state(be1); b.State != pool.Active {
		t.Fatalf("ejected with failures: 0: %+v", b)
	}

	// Every backend refusing: at most max_ejected_percent (50% of 3: 1) out.
	h = newHarness(t, nil, baseConfig)
	_ = h.tick(time.Second)
	for _, a := range []netip.AddrPort{be1, be2, be3} {
		h.refuse(h.slotOf(a), 10)
	}
	_ = h.tick(time.Second)
	n := 0
	for _, a := range []netip.AddrPort{be1, be2, be3} {
		if h.state(a).State == pool.Ejected {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d of 3 ejected, want 1 (max_ejected_percent 50)", n)
	}
}

func clearFlows(t *testing.T, dp *datapath.Fake) {
	t.Helper()
	var all []datapath.Flow
	if err := dp.Flows(func(f datapath.Flow) bool { all = append(all, f); return true }); err != nil {
		t.Fatal(err)
	}
	for _, f := range all {
		if err := dp.DeleteFlow(f); err != nil {
			t.Fatal(err)
		}
	}
}

// A dsr service's backends answer the client directly: the node never
// sees a SYN-ACK, so SYNs its clients leave in syn-sent (a flood, or
// clients that went away) are no backend's failure.
func TestDSRSYNsAreNotJudged(t *testing.T) {
	cfg := strings.Replace(baseConfig, "    protocol: tcp\n", "    protocol: tcp\n    mode: dsr\n", 1)
	h := newHarness(t, nil, cfg)
	s3 := h.slotOf(be3)
	port := uint16(40000)
	for range 8 {
		f := h.addFlow(port, s3, false)
		f.State, f.Idle, f.HalfOpen = datapath.FlowSynSent, time.Second, true
		h.dp.AddFlow(f)
		port++
		if err := h.tick(time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if b := h.state(be3); b.State != pool.Active {
		t.Fatalf("unanswered SYNs of a dsr service ejected be3: %+v", b)
	}
}
