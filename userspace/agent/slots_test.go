package agent

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/datapath"
)

func TestSlotAllocation(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	key := func(i int) slotKey {
		return slotKey{pool: 7, addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 2, byte(i)}), 80)}
	}
	s := newSlots(5, time.Minute) // slots 1..4
	// Adopted: 2 live, 3 removed (resting since t0).
	if !s.adopt(t0, 2, datapath.Backend{Addr: key(2).addr, Gen: 4, State: datapath.BackendActive, PoolID: 7}) {
		t.Fatal("live slot not bound")
	}
	if s.adopt(t0, 3, datapath.Backend{Addr: key(9).addr, Gen: 6, State: datapath.BackendRemoved, PoolID: 7}) {
		t.Fatal("removed slot bound")
	}
	if s.adopt(t0, 4, datapath.Backend{Addr: key(2).addr, Gen: 1, State: datapath.BackendDraining, PoolID: 7}) {
		t.Fatal("duplicate slot bound")
	}
	if sl := s.bySlot[4]; sl.want != datapath.BackendRemoved {
		t.Fatalf("duplicate slot want = %v", sl.want)
	}

	steps := []struct {
		at      time.Duration
		key     int
		slot    uint32
		gen     uint32
		wantErr error
	}{
		{0, 10, 1, 1, nil},                    // lowest never-used slot
		{0, 11, 0, 0, errExhausted},           // 3 rests, 4 (duplicate) not removed yet
		{time.Minute, 11, 3, 7, nil},          // 3 rested long enough: reused, gen+1
		{time.Minute, 12, 0, 0, errExhausted}, // nothing left
	}
	for i, st := range steps {
		n, sl, err := s.alloc(t0.Add(st.at), key(st.key), netip.Addr{})
		if !errors.Is(err, st.wantErr) {
			t.Fatalf("step %d: err = %v, want %v", i, err, st.wantErr)
		}
		if err != nil {
			continue
		}
		if n != st.slot || sl.gen != st.gen || sl.want != datapath.BackendActive {
			t.Fatalf("step %d: slot %d gen %d, want slot %d gen %d", i, n, sl.gen, st.slot, st.gen)
		}
		if got, _, ok := s.lookup(key(st.key)); !ok || got != n {
			t.Fatalf("step %d: lookup = %d %v", i, got, ok)
		}
	}

	// A slot retired without ever being written is reusable at once.
	n, _, _ := s.lookup(key(10))
	s.retire(t0, n)
	if _, _, ok := s.lookup(key(10)); ok {
		t.Fatal("retired slot still bound")
	}
	if got, sl, err := s.alloc(t0, key(12), netip.Addr{}); err != nil || got != n || sl.gen != 2 {
		t.Fatalf("alloc after retire = %d %+v %v", got, sl, err)
	}
}

func TestServiceIDs(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	a := newIDs(4, time.Minute) // ids 1..3
	a.take(2)
	if id, _ := a.alloc(t0); id != 1 {
		t.Fatalf("first id = %d", id)
	}
	if id, _ := a.alloc(t0); id != 3 {
		t.Fatalf("second id = %d", id)
	}
	if _, err := a.alloc(t0); !errors.Is(err, errExhausted) {
		t.Fatalf("err = %v", err)
	}
	a.free(t0, 1)
	if _, err := a.alloc(t0.Add(59 * time.Second)); !errors.Is(err, errExhausted) {
		t.Fatal("freed id reused before its delay")
	}
	if id, _ := a.alloc(t0.Add(time.Minute)); id != 1 {
		t.Fatalf("reused id = %d", id)
	}
}
