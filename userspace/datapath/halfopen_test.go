package datapath

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

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
// place it). The table must be empty.
func (l *lab) fillHalfOpen(tb testing.TB, frac float64) {
	tb.Helper()
	r := l.r
	n := int(frac * float64(r.halfopen.MaxEntries()))
	now := monotonicNow()
	used := make([]bool, r.halfopen.MaxEntries()) // the table starts empty (a new lab)
	filled := 0
	for i := 0; filled < n && i < 1<<24; i++ {
		k, v := fillFlow(i, now)
		kh := hoKeyHash(r.hoKey, &k)
		idx := hoIndex(kh, r.hoMask)
		if used[idx] {
			continue
		}
		used[idx] = true
		writeSlot(tb, r, idx, bpf.SluiceHoSlot{Key: k, Val: v, Check: hoCheck(kh, &v)})
		filled++
	}
}

// ctKeyOf is the conntrack key of a flow from c to v.
func ctKeyOf(c, v netip.AddrPort, proto Proto) bpf.SluiceCtKey {
	return bpf.SluiceCtKey{Saddr: be32(c.Addr()), Daddr: be32(v.Addr()), Sport: be16(c.Port()), Dport: be16(v.Port()), Proto: uint8(proto)}
}

// TestHalfOpenSlot: a SYN's state is one slot of the direct-mapped
// half-open array, where the Go side's hash finds it (the program and
// halfopen.go agree), with a valid check; and the table is an mmapable
// array, no hash table (a SYN that inserted into one again would fail
// here).
func TestHalfOpenSlot(t *testing.T) {
	l := newLab(t, testTableSize)
	l.reset(t)
	r := l.r
	if r.halfopen.Type() != ebpf.Array || r.halfopen.Flags()&unix.BPF_F_MMAPABLE == 0 || int(r.halfopen.ValueSize()) != hoSlotSize || hoSlotSize != 64 {
		t.Fatalf("halfopen is a %v (flags %#x) of %d-byte values, want an mmapable array of 64-byte slots",
			r.halfopen.Type(), r.halfopen.Flags(), r.halfopen.ValueSize())
	}
	if n := r.halfopen.MaxEntries(); n&(n-1) != 0 || r.hoMask != n-1 {
		t.Fatalf("halfopen has %d slots, mask %#x: want a power of two", n, r.hoMask)
	}
	syn := pkt{src: client, dst: vip, proto: TCP, flags: fSYN, seq: 1000}
	if ret, out := l.run(t, syn.bytes(), l.clientIf); ret != xdpRedirect || !bytes.Equal(out, toBackend(be1, macBE1)(l, syn.bytes())) {
		t.Fatalf("SYN: verdict %s", verdictName[ret])
	}
	k := ctKeyOf(client, vip, TCP)
	idx, s, err := r.hoSlotOf(&k)
	mustSet(t, err)
	if !sameKey(&s.Key, &k) || !r.hoValid(&s) || s.Val.DaddrNew != be32(be1.Addr()) || s.Val.BackendId != 1 ||
		s.Val.State != uint8(FlowSynSent) {
		t.Fatalf("slot %d after the SYN: %+v, want the flow to be1, syn-sent, with a valid check", idx, s)
	}
	n := 0
	mustSet(t, r.eachHalfOpen(func(i uint32, _ *bpf.SluiceHoSlot) bool { n++; return i == idx }))
	if n != 1 {
		t.Errorf("%d slots in use, want 1", n)
	}
	// The agent removes it: its slot is empty again.
	mustSet(t, r.DeleteFlow(Flow{Client: client, VIP: vip, Proto: TCP}))
	if _, s, _ := r.hoSlotOf(&k); s.Check != 0 {
		t.Errorf("slot after DeleteFlow: %+v, want empty", s)
	}
}

// collidingClient returns a client address and port of 198.19.0.0/16
// whose flow to vip lands in the same half-open slot as k's.
func collidingClient(t *testing.T, r *Real, k bpf.SluiceCtKey) netip.AddrPort {
	t.Helper()
	want := hoIndex(hoKeyHash(r.hoKey, &k), r.hoMask)
	for i := 0; i < 1<<24; i++ {
		c := netip.AddrPortFrom(netipFrom4(198, 19, byte(i>>8), byte(i)), uint16(1024+i>>16))
		ck := ctKeyOf(c, vip, TCP)
		if hoIndex(hoKeyHash(r.hoKey, &ck), r.hoMask) == want {
			return c
		}
	}
	t.Fatal("no colliding client found")
	return netip.AddrPort{}
}

// TestHalfOpenCollision: a flow whose slot another flow took is
// forgotten, not misrouted: its next packet is placed by Maglev again
// (the same backend while the table is unchanged) and tracked again, and
// its SYN-ACK is still translated; the other flow keeps its slot.
func TestHalfOpenCollision(t *testing.T) {
	l := newLab(t, testTableSize)
	l.reset(t)
	r := l.r
	k := ctKeyOf(client, vip, TCP)
	other := collidingClient(t, r, k)
	for _, c := range []netip.AddrPort{client, other} {
		syn := pkt{src: c, dst: vip, proto: TCP, flags: fSYN, seq: 1000}
		if ret, _ := l.run(t, syn.bytes(), l.clientIf); ret != xdpRedirect {
			t.Fatalf("SYN from %v: verdict %s", c, verdictName[ret])
		}
	}
	if _, ok, _ := r.halfOpenLookup(&k); ok {
		t.Fatal("the first flow's slot still holds it after a colliding SYN")
	}
	overwritten := func(want uint64) {
		t.Helper()
		if g, err := r.GlobalStats(); err != nil || g.HalfOpenOverwritten != want {
			t.Errorf("live half-open slots overwritten: %d (%v), want %d", g.HalfOpenOverwritten, err, want)
		}
	}
	overwritten(1)
	synAck := pkt{src: be1, dst: client, proto: TCP, flags: fSYN | fACK, seq: 5000, ack: 1001}
	if ret, out := l.run(t, synAck.bytes(), l.backendIf); ret != xdpRedirect || !bytes.Equal(out, toClient(vip, client)(l, synAck.bytes())) {
		t.Errorf("the forgotten flow's SYN-ACK: verdict %s, not translated", verdictName[ret])
	}
	ack := pkt{src: client, dst: vip, proto: TCP, flags: fACK, seq: 1001, ack: 5001}
	if ret, out := l.run(t, ack.bytes(), l.clientIf); ret != xdpRedirect || !bytes.Equal(out, toBackend(be1, macBE1)(l, ack.bytes())) {
		t.Errorf("the forgotten flow's ACK: verdict %s, not to be1", verdictName[ret])
	}
	if v, ok, _ := r.halfOpenLookup(&k); !ok || v.State != uint8(FlowEstablished) || v.DaddrNew != be32(be1.Addr()) {
		t.Errorf("the forgotten flow after its ACK: %+v (%v), want tracked again, established, to be1", v, ok)
	}
	overwritten(2) // tracked again, in place of the other flow's live entry
	// The flow's own next packet rewrites its own slot: not counted.
	if ret, _ := l.run(t, ack.bytes(), l.clientIf); ret != xdpRedirect {
		t.Fatalf("the flow's next ACK: verdict %s", verdictName[ret])
	}
	overwritten(2)
}

// TestHalfOpenTornSlot: a slot holding a mix of two flows' writes (two
// CPUs wrote it at once, or it was read half-written) never steers a
// packet: its check does not match, the flow is placed by Maglev, and the
// slot is rewritten whole. The same slot with a matching check is
// followed (the test is not vacuous).
func TestHalfOpenTornSlot(t *testing.T) {
	l := newLab(t, testTableSize)
	r := l.r
	k := ctKeyOf(client, vip, TCP)
	kh := hoKeyHash(r.hoKey, &k)
	idx := hoIndex(kh, r.hoMask)
	now := monotonicNow()
	toBE1 := bpf.SluiceCtValue{LastSeen: now, ServiceId: svcTCP, BackendId: 1, BackendGen: 1,
		DaddrNew: be32(be1.Addr()), DportNew: be16(be1.Port()), State: uint8(FlowSynSent)}
	toBE2 := toBE1
	toBE2.BackendId, toBE2.DaddrNew, toBE2.DportNew = 2, be32(be2.Addr()), be16(be2.Port())
	otherKey := ctKeyOf(netip.MustParseAddrPort("198.19.0.1:1024"), vip, TCP)
	ack := pkt{src: client, dst: vip, proto: TCP, flags: fACK, seq: 1001, ack: 5001}
	for _, c := range []struct {
		name string
		slot bpf.SluiceHoSlot
		to   netip.AddrPort
		mac  [6]byte
	}{
		{"a whole entry to be2 is followed", bpf.SluiceHoSlot{Key: k, Val: toBE2, Check: hoCheck(kh, &toBE2)}, be2, macBE2},
		{"the flow's key and check with another flow's value (be2)", bpf.SluiceHoSlot{Key: k, Val: toBE2, Check: hoCheck(kh, &toBE1)}, be1, macBE1},
		{"the flow's key with another flow's value and check", bpf.SluiceHoSlot{Key: k, Val: toBE2,
			Check: hoCheck(hoKeyHash(r.hoKey, &otherKey), &toBE2)}, be1, macBE1},
		{"the flow's key, a value to be2 and no check yet", bpf.SluiceHoSlot{Key: k, Val: toBE2}, be1, macBE1},
	} {
		t.Run(c.name, func(t *testing.T) {
			l.reset(t) // the table: be1 only
			writeSlot(t, r, idx, c.slot)
			if ret, out := l.run(t, ack.bytes(), l.clientIf); ret != xdpRedirect || !bytes.Equal(out, toBackend(c.to, c.mac)(l, ack.bytes())) {
				t.Fatalf("ACK: verdict %s, not to %v", verdictName[ret], c.to)
			}
			_, s, err := r.hoSlotOf(&k)
			mustSet(t, err)
			if !r.hoValid(&s) || !sameKey(&s.Key, &k) || s.Val.DaddrNew != be32(c.to.Addr()) {
				t.Errorf("slot after the ACK: %+v, want a whole entry of the flow to %v", s, c.to)
			}
		})
	}
}

// TestHalfOpenKeyKept: an agent restart adopts the pinned half-open
// table with its hash key, so a flow still opening keeps its slot (and
// its backend, whatever the table says meanwhile).
func TestHalfOpenKeyKept(t *testing.T) {
	l := newLab(t, testTableSize)
	l.reset(t)
	syn := pkt{src: client, dst: vip, proto: TCP, flags: fSYN, seq: 1000}
	if ret, _ := l.run(t, syn.bytes(), l.clientIf); ret != xdpRedirect {
		t.Fatalf("SYN: verdict %s", verdictName[ret])
	}
	key := l.r.hoKey
	if key == 0 {
		t.Fatal("no half-open key")
	}
	pr, err := OpenPinned(l.r.pinPath)
	mustSet(t, err)
	defer pr.Close()
	k := ctKeyOf(client, vip, TCP)
	if pr.hoKey != key {
		t.Errorf("OpenPinned read key %#x, want %#x", pr.hoKey, key)
	}
	if v, ok, err := pr.halfOpenLookup(&k); err != nil || !ok || v.DaddrNew != be32(be1.Addr()) {
		t.Errorf("the half-open flow through OpenPinned: %+v %v %v", v, ok, err)
	}
	if k2, err := pinnedHOKey(l.r.pinPath); err != nil || k2 != key {
		t.Errorf("pinned key %#x (%v), want %#x", k2, err, key)
	}
}

// TestHalfOpenUpgrade: an upgrade from the release whose half-open table
// was an LRU hash (with or without a layout record) keeps the confirmed
// flows and the services, drops the half-open ones (their table is
// replaced by the array, at the configured size), and does not reset the
// state.
func TestHalfOpenUpgrade(t *testing.T) {
	requireRoot(t)
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("sluice-houpgrade-%d", os.Getpid()))
	t.Cleanup(func() { _ = Teardown(pin) })
	fk := bpf.SluiceCtKey{Saddr: 0x020012c6, Daddr: 0x010012c6, Sport: 0x1234, Dport: 0x5000, Proto: 6}
	fv := bpf.SluiceCtValue{LastSeen: monotonicNow(), ServiceId: 1, BackendId: 1, BackendGen: 1, DaddrNew: 0x0d0212c6, DportNew: 0x5000,
		State: uint8(FlowEstablished)}
	hk := fk
	hk.Sport = 0x4321
	for _, withRecord := range []bool{true, false} {
		r, err := Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true})
		mustSet(t, err)
		mustSet(t, r.SetService(keyTCP, Service{ID: 1}))
		mustSet(t, r.conntrack.Put(fk, fv))
		slots := r.halfopen.MaxEntries()
		r.Close()

		// The older release's half-open table: an LRU hash of flows.
		p := filepath.Join(pin, "halfopen")
		mustSet(t, os.Remove(p))
		old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 16, ValueSize: 40, MaxEntries: 65536})
		mustSet(t, err)
		mustSet(t, old.Put(hk, fv))
		mustSet(t, old.Pin(p))
		old.Close()
		lm, err := ebpf.LoadPinnedMap(filepath.Join(pin, layoutMapName), nil)
		mustSet(t, err)
		if withRecord {
			mustSet(t, lm.Put(layoutKey("halfopen"), uint64(0xe6b7c129c3feb95b)))
			mustSet(t, lm.Delete(layoutKey(hoKeyName)))
			lm.Close()
		} else {
			lm.Close()
			mustSet(t, os.Remove(filepath.Join(pin, layoutMapName)))
		}
		if _, err := OpenPinned(pin); !errors.Is(err, ErrPinnedLayout) && withRecord {
			t.Errorf("record %v: OpenPinned over the LRU half-open table: %v, want ErrPinnedLayout", withRecord, err)
		}

		r, err = Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true})
		if err != nil {
			t.Fatalf("record %v: open over the LRU half-open table: %v", withRecord, err)
		}
		if got := r.LayoutReset(); got != nil {
			t.Errorf("record %v: LayoutReset = %v, want the state adopted", withRecord, got)
		}
		var got bpf.SluiceCtValue
		if err := r.conntrack.Lookup(fk, &got); err != nil || got != fv {
			t.Errorf("record %v: confirmed flow = %+v (%v), want %+v", withRecord, got, err, fv)
		}
		if r.halfopen.Type() != ebpf.Array || r.halfopen.MaxEntries() != slots {
			t.Errorf("record %v: halfopen is a %v of %d entries, want the array of %d slots", withRecord, r.halfopen.Type(), r.halfopen.MaxEntries(), slots)
		}
		if _, ok, _ := r.halfOpenLookup(&hk); ok {
			t.Errorf("record %v: the old half-open flow is in the new table", withRecord)
		}
		r.Close()
		pr, err := OpenPinned(pin)
		if err != nil {
			t.Fatalf("record %v: OpenPinned after the upgrade: %v", withRecord, err)
		}
		pr.Close()
	}
}

// BenchmarkHalfOpenScan: one walk of every flow (what the agent does once
// a tick) with conntrack empty and the half-open table (the default size)
// empty or half full.
//
//	go test -run '^$' -bench HalfOpenScan ./userspace/datapath/
func BenchmarkHalfOpenScan(b *testing.B) {
	l := newLabSized(b, 16381, 262144)
	for _, fill := range []float64{0, 0.5} {
		b.Run(fmt.Sprintf("fill-%.1f", fill), func(b *testing.B) {
			l.reset(b)
			l.fillHalfOpen(b, fill)
			n := 0
			for b.Loop() {
				n = 0
				mustSet(b, l.r.Flows(func(Flow) bool { n++; return true }))
			}
			b.ReportMetric(float64(n), "flows")
		})
	}
}
