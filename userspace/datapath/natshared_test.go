package datapath

import "testing"

// TestNATSharedFlag: the program looks for another VIP's flow of a new
// nat flow's client port (nat_conflict) only once an endpoint serves two
// nat services, and the agent says so before that endpoint's entry lists
// the second one.
func TestNATSharedFlag(t *testing.T) {
	l := newLab(t, testTableSize)
	l.reset(t)
	flag := func() uint32 {
		var v uint32
		mustSet(t, l.r.natShared.Lookup(uint32(0), &v))
		return v
	}
	if l.r.natSharedSet {
		t.Skip("an earlier test in this lab shared an endpoint already")
	}
	if got := flag(); got != 0 {
		t.Fatalf("nat_shared = %d with no endpoint of two nat services, want 0", got)
	}
	addVIP2(t, l) // be1 in both vip's and vip2's pool
	if got := flag(); got != 1 {
		t.Fatalf("nat_shared = %d once be1 serves two nat services, want 1", got)
	}
}
