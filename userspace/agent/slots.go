package agent

import (
	"errors"
	"net/netip"
	"time"

	"github.com/sluicelb/sluice/userspace/datapath"
)

// errExhausted is returned when no slot or service id is free.
var errExhausted = errors.New("no free id left")

// slotKey is what a backend slot is bound to: an address of a pool.
type slotKey struct {
	pool uint32 // datapath.PoolID(name)
	addr netip.AddrPort
}

// slot is one backend slot as the agent knows it.
type slot struct {
	key slotKey
	gen uint32
	src netip.Addr // the host's source address towards the backend (snat)
	// want is the state the slot should have in the data path.
	want datapath.BackendState
	// written is what the data path holds, as far as we know (ok false:
	// nothing written by us nor adopted).
	written   datapath.Backend
	writtenOK bool
	// live: bound to key (slots.byKey points here). A slot is unbound once
	// it is written BackendRemoved; it stays in the map as removed, and
	// can be reused with gen+1 after the reuse delay.
	live      bool
	retiredAt time.Time
}

func (s *slot) desired() datapath.Backend {
	return datapath.Backend{Addr: s.key.addr, Gen: s.gen, State: s.want, PoolID: s.key.pool, Src: s.src}
}

// synced is whether the data path holds what we want.
func (s *slot) synced() bool {
	return s.writtenOK && s.written == s.desired()
}

// reusable is whether a retired slot may be bound to another address: it
// never reached the data path, or it has been removed there for delay.
func (s *slot) reusable(now time.Time, delay time.Duration) bool {
	if s.live || s.retiredAt.IsZero() {
		return false
	}
	if !s.writtenOK {
		return true
	}
	removed := s.written.State == datapath.BackendRemoved || s.written.State == datapath.BackendFree
	return removed && now.Sub(s.retiredAt) >= delay
}

// slots allocates backend slots: lowest free first; a removed slot is
// reusable only after reuseDelay, and reuse bumps its generation so flows
// pinned to the old backend are recognised as stale.
type slots struct {
	max        uint32 // slots are 1..max-1
	reuseDelay time.Duration
	bySlot     map[uint32]*slot
	byKey      map[slotKey]uint32
}

func newSlots(max uint32, reuseDelay time.Duration) *slots {
	return &slots{max: max, reuseDelay: reuseDelay, bySlot: make(map[uint32]*slot), byKey: make(map[slotKey]uint32)}
}

// adopt records a slot read from the data path at start and reports
// whether it is bound to its address. A removed slot starts its reuse delay
// now; a live one is bound unless another slot already is bound to the
// same address (that one is to be removed).
func (s *slots) adopt(now time.Time, n uint32, b datapath.Backend) (bound bool) {
	sl := &slot{key: slotKey{b.PoolID, b.Addr}, gen: b.Gen, src: b.Src, want: b.State, written: b, writtenOK: true}
	s.bySlot[n] = sl
	if b.State == datapath.BackendRemoved || b.State == datapath.BackendFree {
		sl.retiredAt = now
		return false
	}
	if _, dup := s.byKey[sl.key]; dup {
		sl.want = datapath.BackendRemoved
		return false
	}
	sl.live = true
	s.byKey[sl.key] = n
	return true
}

// lookup returns the live slot bound to k.
func (s *slots) lookup(k slotKey) (uint32, *slot, bool) {
	n, ok := s.byKey[k]
	if !ok {
		return 0, nil, false
	}
	return n, s.bySlot[n], true
}

// alloc binds the lowest free slot to k; src is the host's source address
// towards the backend.
func (s *slots) alloc(now time.Time, k slotKey, src netip.Addr) (uint32, *slot, error) {
	for n := uint32(1); n < s.max; n++ {
		old, used := s.bySlot[n]
		gen := uint32(1)
		if used {
			if !old.reusable(now, s.reuseDelay) {
				continue
			}
			gen = old.gen + 1
			if gen == 0 {
				gen = 1
			}
		}
		sl := &slot{key: k, gen: gen, src: src, want: datapath.BackendActive, live: true}
		if used {
			// The map still holds the removed backend until we write.
			sl.written, sl.writtenOK = old.written, old.writtenOK
		}
		s.bySlot[n] = sl
		s.byKey[k] = n
		return n, sl, nil
	}
	return 0, nil, errExhausted
}

// retire unbinds a slot that has been written BackendRemoved.
func (s *slots) retire(now time.Time, n uint32) {
	sl := s.bySlot[n]
	if sl == nil {
		return
	}
	if sl.live {
		if s.byKey[sl.key] == n {
			delete(s.byKey, sl.key)
		}
		sl.live = false
	}
	if sl.retiredAt.IsZero() {
		sl.retiredAt = now
	}
}

// ids allocates service ids 1..max-1, lowest first; a freed id is reusable
// after reuseDelay.
type ids struct {
	max        uint32
	reuseDelay time.Duration
	used       map[uint32]bool
	freed      map[uint32]time.Time
}

func newIDs(max uint32, reuseDelay time.Duration) *ids {
	return &ids{max: max, reuseDelay: reuseDelay, used: make(map[uint32]bool), freed: make(map[uint32]time.Time)}
}

func (a *ids) take(id uint32) {
	a.used[id] = true
	delete(a.freed, id)
}

func (a *ids) alloc(now time.Time) (uint32, error) {
	for id := uint32(1); id < a.max; id++ {
		if a.used[id] {
			continue
		}
		if t, ok := a.freed[id]; ok && now.Sub(t) < a.reuseDelay {
			continue
		}
		a.take(id)
		return id, nil
	}
	return 0, errExhausted
}

func (a *ids) free(now time.Time, id uint32) {
	delete(a.used, id)
	a.freed[id] = now
}
