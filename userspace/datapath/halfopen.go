package datapath

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
)

// The IPv4 half-open table is a direct-mapped array (bpf/include/maps.h,
// halfopen): a flow's slot is a keyed hash of its key, and each slot
// carries a check over its key and steering fields. The functions below
// are the Go side of bpf/include/flow.h's ho_* functions, bit for bit:
// the agent reads the slots to list half-open flows (and tell the
// data path's torn or stale slots from live ones) and finds a flow's slot
// to delete it.

// hoSlotSize is sizeof(struct ho_slot): one cache line.
const hoSlotSize = int(unsafe.Sizeof(bpf.SluiceHoSlot{}))

// hoCheckOff is the offset of ho_slot.check.
const hoCheckOff = int(unsafe.Offsetof(bpf.SluiceHoSlot{}.Check))

// hoSlotsFor returns the half-open table's slot count for a configured
// maximum: a power of two, at least n.
func hoSlotsFor(n uint32) uint32 {
	if n <= 1 {
		return 1
	}
	return 1 << bits.Len32(n-1)
}

// hoMaskOf is the slot mask of a half-open array of n entries (the
// largest power of two not above n, less one).
func hoMaskOf(n uint32) uint32 {
	if n == 0 {
		return 0
	}
	return 1<<(bits.Len32(n)-1) - 1
}

// newHOKey returns a fresh per-node secret for the half-open hash.
func newHOKey() (uint64, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, fmt.Errorf("half-open table key: %w", err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

func hoMix(h, w uint64) uint64 {
	h ^= w
	h *= 0x9e3779b97f4a7c15
	return h ^ h>>32
}

func hoFin(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	return h ^ h>>33
}

// hoKeyHash is ho_key_hash: the keyed hash state after a flow's key.
func hoKeyHash(secret uint64, k *bpf.SluiceCtKey) uint64 {
	h := hoMix(secret, uint64(k.Saddr)<<32|uint64(k.Daddr))
	return hoMix(h, uint64(k.Sport)<<48|uint64(k.Dport)<<32|uint64(k.Proto))
}

// hoCheck is ho_check: a slot's check (never 0).
func hoCheck(kh uint64, v *bpf.SluiceCtValue) uint64 {
	h := hoMix(kh, uint64(v.ServiceId)<<32|uint64(v.BackendId))
	h = hoMix(h, uint64(v.BackendGen)<<32|uint64(v.SaddrNew))
	h = hoMix(h, uint64(v.DaddrNew)<<32|uint64(v.SportNew)<<16|uint64(v.DportNew))
	return hoFin(h) | 1
}

// hoIndex is the slot of key hash kh.
func hoIndex(kh uint64, mask uint32) uint32 { return uint32(hoFin(kh)) & mask }

// sameKey compares two flow keys as the program does (padding ignored).
func sameKey(a, b *bpf.SluiceCtKey) bool {
	return a.Saddr == b.Saddr && a.Daddr == b.Daddr && a.Sport == b.Sport && a.Dport == b.Dport && a.Proto == b.Proto
}

// hoValid tells whether a slot holds a whole entry (not empty, not a mix
// of two flows' writes).
func (r *Real) hoValid(s *bpf.SluiceHoSlot) bool {
	return s.Check != 0 && s.Check == hoCheck(hoKeyHash(r.hoKey, &s.Key), &s.Val)
}

// mapHalfOpen maps the half-open array (BPF_F_MMAPABLE) into the
// process, once, when the data path is opened: reading it then costs no
// system call, and concurrent walks share the mapping.
func (r *Real) mapHalfOpen() error {
	mm, err := r.halfopen.Memory()
	if err != nil {
		return fmt.Errorf("map the half-open table: %w", err)
	}
	r.hoMem = mm
	return nil
}

// hoMemory is the half-open array's mapping.
func (r *Real) hoMemory() (*ebpf.Memory, error) {
	if r.hoMem == nil {
		return nil, errors.New("the half-open table is not mapped")
	}
	return r.hoMem, nil
}

// hoChunk is how many slots eachHalfOpen copies at a time.
const hoChunk = 4096

// eachHalfOpen calls fn for every slot of the half-open table that holds
// a whole entry, live or not (fn sees last_seen), until fn returns false.
// It reads the array through its memory mapping, a chunk at a time: a
// slot the program rewrites meanwhile is seen whole, or as a mix whose
// check fails (skipped).
func (r *Real) eachHalfOpen(fn func(idx uint32, s *bpf.SluiceHoSlot) bool) error {
	if r.halfopen == nil {
		return nil
	}
	mm, err := r.hoMemory()
	if err != nil {
		return err
	}
	n := r.halfopen.MaxEntries()
	buf := make([]bpf.SluiceHoSlot, hoChunk)
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), len(buf)*hoSlotSize)
	for base := uint32(0); base < n; base += hoChunk {
		cnt := min(uint32(hoChunk), n-base)
		if _, err := mm.ReadAt(raw[:int(cnt)*hoSlotSize], int64(base)*int64(hoSlotSize)); err != nil {
			return fmt.Errorf("read the half-open table: %w", err)
		}
		for i := uint32(0); i < cnt; i++ {
			s := &buf[i]
			if s.Check == 0 || !r.hoValid(s) {
				continue
			}
			if !fn(base+i, s) {
				return nil
			}
		}
	}
	return nil
}

// hoSlotOf returns the index of flow k's slot and the slot as it is now.
func (r *Real) hoSlotOf(k *bpf.SluiceCtKey) (uint32, bpf.SluiceHoSlot, error) {
	idx := hoIndex(hoKeyHash(r.hoKey, k), r.hoMask)
	var s bpf.SluiceHoSlot
	if err := r.halfopen.Lookup(idx, &s); err != nil {
		return idx, s, fmt.Errorf("read half-open slot %d: %w", idx, err)
	}
	return idx, s, nil
}

// halfOpenLookup returns flow k's half-open entry (live or not); ok
// false: its slot holds another flow, or nothing.
func (r *Real) halfOpenLookup(k *bpf.SluiceCtKey) (bpf.SluiceCtValue, bool, error) {
	if r.halfopen == nil {
		return bpf.SluiceCtValue{}, false, nil
	}
	_, s, err := r.hoSlotOf(k)
	if err != nil {
		return bpf.SluiceCtValue{}, false, err
	}
	if !sameKey(&s.Key, k) || !r.hoValid(&s) {
		return bpf.SluiceCtValue{}, false, nil
	}
	return s.Val, true, nil
}

// halfOpenDelete empties flow k's slot if it holds k: only the check is
// written (8 bytes, one store through the mapping), so a slot the program
// filled with another flow since the read keeps its key and value — its
// check is the program's own unless the program wrote it between the
// read and this store, in which case that flow is forgotten (placed by
// Maglev again by its next packet).
func (r *Real) halfOpenDelete(k *bpf.SluiceCtKey) error {
	if r.halfopen == nil {
		return nil
	}
	idx, s, err := r.hoSlotOf(k)
	if err != nil {
		return err
	}
	if !sameKey(&s.Key, k) || s.Check == 0 {
		return nil
	}
	mm, err := r.hoMemory()
	if err != nil {
		return err
	}
	var zero [8]byte
	if _, err := mm.WriteAt(zero[:], int64(idx)*int64(hoSlotSize)+int64(hoCheckOff)); err != nil {
		if errors.Is(err, ebpf.ErrReadOnly) {
			return fmt.Errorf("delete half-open flow: %w", err)
		}
		return fmt.Errorf("clear half-open slot %d: %w", idx, err)
	}
	return nil
}
