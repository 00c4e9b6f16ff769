package datapath

import (
	"testing"
	"unsafe"

	"github.com/sluicelb/sluice/bpf"
)

// clearHalfOpen empties every slot of the half-open table.
func clearHalfOpen(tb testing.TB, r *Real) {
	tb.Helper()
	mm, err := r.hoMemory()
	mustSet(tb, err)
	zero := make([]byte, 1<<16)
	size := int64(r.halfopen.MaxEntries()) * int64(hoSlotSize)
	for off := int64(0); off < size; off += int64(len(zero)) {
		n := min(int64(len(zero)), size-off)
		if _, err := mm.WriteAt(zero[:n], off); err != nil {
			tb.Fatalf("clear the half-open table: %v", err)
		}
	}
}

// writeSlot writes s into slot idx of the half-open table as it is (its
// check included), as a test's stand-in for the program.
func writeSlot(tb testing.TB, r *Real, idx uint32, s bpf.SluiceHoSlot) {
	tb.Helper()
	mm, err := r.hoMemory()
	mustSet(tb, err)
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&s)), hoSlotSize)
	if _, err := mm.WriteAt(raw, int64(idx)*int64(hoSlotSize)); err != nil {
		tb.Fatalf("write half-open slot %d: %v", idx, err)
	}
}

// fillHalfOpen fills frac of the half-open table's slots with live
// established flows of clients in 198.19.0.0/16 that no benchmark frame
// uses, to backend slot 1, each in its own slot (as the program would
// place it).
func (l *lab) fillHalfOpen(tb testing.TB, frac float64) {
	tb.Helper()
	r := l.r
	n := int(frac * float64(r.halfopen.MaxEntries()))
	now := monotonicNow()
	filled := 0
	for i := 0; filled < n && i < 1<<24; i++ {
		k := bpf.SluiceCtKey{
			Saddr: be32(netipFrom4(198, 19, byte(i>>8), byte(i))),
			Daddr: be32(vip.Addr()),
			Sport: be16(uint16(1024 + i>>16)),
			Dport: be16(vip.Port()),
			Proto: uint8(TCP),
		}
		kh := hoKeyHash(r.hoKey, &k)
		idx := hoIndex(kh, r.hoMask)
		var cur bpf.SluiceHoSlot
		mustSet(tb, r.halfopen.Lookup(idx, &cur))
		if cur.Check != 0 {
			continue
		}
		v := bpf.SluiceCtValue{
			LastSeen: now, ServiceId: svcTCP, BackendId: 1, BackendGen: 1,
			DaddrNew: be32(be1.Addr()), DportNew: be16(be1.Port()), State: uint8(FlowEstablished),
		}
		writeSlot(tb, r, idx, bpf.SluiceHoSlot{Key: k, Val: v, Check: hoCheck(kh, &v)})
		filled++
	}
}
