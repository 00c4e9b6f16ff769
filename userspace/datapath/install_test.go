package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/sluicelb/sluice/bpf"
	"github.com/vishvananda/netlink"
)

// TestFirstInstallAtomic: a first install publishes the whole pin directory
// at once (no temporary directory left behind, every map pinned); the
// temporary directory of an install that died half-way (one map pinned,
// its lock free) is removed; an empty pin directory is installed into.
func TestFirstInstallAtomic(t *testing.T) {
	requireRoot(t)
	base := fmt.Sprintf("sluice-installtest-%d", os.Getpid())
	pin := filepath.Join("/sys/fs/bpf", base)
	t.Cleanup(func() { _ = Teardown(pin) })
	if err := EnsureBPFFS(pin); err != nil {
		t.Fatal(err)
	}

	// A crashed first install: a temporary directory holding one map.
	stale := filepath.Join("/sys/fs/bpf", base+"-tmp-123")
	if err := os.Mkdir(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Pin(filepath.Join(stale, "services")); err != nil {
		t.Fatal(err)
	}
	m.Close()
	// An empty pin directory (an older version created it up front).
	if err := os.MkdirAll(filepath.Join(pin, "links"), 0o700); err != nil {
		t.Fatal(err)
	}

	r, err := Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, name := range append(mapNames, "links") {
		if _, err := os.Stat(filepath.Join(pin, name)); err != nil {
			t.Errorf("after the first install: %v", err)
		}
	}
	left, _ := filepath.Glob(filepath.Join("/sys/fs/bpf", base+"-tmp-*"))
	if len(left) != 0 {
		t.Errorf("temporary directories left behind: %v", left)
	}
	// The published directory is the locked one.
	if _, err := Open(Options{PinPath: pin, MaglevTableSize: 251}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open of the fresh install: %v, want ErrLocked", err)
	}
}

// TestCounterMapsReplaced: a pinned counter map of an older layout (fewer
// counters) is replaced at open, flows and the other maps are kept; any
// other map of another layout still refuses to load.
func TestCounterMapsReplaced(t *testing.T) {
	requireRoot(t)
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("sluice-countertest-%d", os.Getpid()))
	t.Cleanup(func() { _ = Teardown(pin) })
	r, err := Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true})
	if err != nil {
		t.Fatal(err)
	}
	mustSet(t, r.SetService(keyTCP, Service{ID: 1}))
	r.Close()

	older := func(name string, spec *ebpf.MapSpec) {
		t.Helper()
		p := filepath.Join(pin, name)
		mustSet(t, os.Remove(p))
		m, err := ebpf.NewMap(spec)
		mustSet(t, err)
		defer m.Close()
		mustSet(t, m.Pin(p))
	}
	older("global_stats", &ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8 * 3, MaxEntries: 1})
	r, err = Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true})
	if err != nil {
		t.Fatalf("open over an older counter map: %v", err)
	}
	if _, err := r.GlobalStats(); err != nil {
		t.Errorf("global stats after the replacement: %v", err)
	}
	if svcs, err := r.Services(); err != nil || len(svcs) != 1 {
		t.Errorf("services kept: %v (%v)", svcs, err)
	}
	r.Close()

	// Any other map of another layout: the state starts afresh (see
	// TestLayoutVersion), the agent is not stopped.
	older("services", &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 8, MaxEntries: MaxServices})
	r, err = Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true})
	if err != nil {
		t.Fatalf("open over a services map of another layout: %v", err)
	}
	defer r.Close()
	if got := r.LayoutReset(); !slices.Equal(got, []string{"services"}) {
		t.Errorf("LayoutReset = %v, want [services]", got)
	}
}

// TestLayoutVersion: the pinned state carries this release's map layout
// version; an open adopts maps of the same version (flows and services
// kept) and of no version when their shape matches (an older release),
// and starts on fresh maps, saying which changed, for a layout change at
// equal sizes (only the recorded version differs) and a size change.
func TestLayoutVersion(t *testing.T) {
	requireRoot(t)
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("sluice-layouttest-%d", os.Getpid()))
	t.Cleanup(func() { _ = Teardown(pin) })
	open := func(wantReset []string) *Real {
		t.Helper()
		r, err := Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true})
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		if got := r.LayoutReset(); !slices.Equal(got, wantReset) {
			r.Close()
			t.Fatalf("LayoutReset = %v, want %v", got, wantReset)
		}
		return r
	}
	fk := bpf.SluiceCtKey{Saddr: 0x020012c6, Daddr: 0x010012c6, Sport: 0x1234, Dport: 0x5000, Proto: 6}
	populate := func(r *Real) {
		t.Helper()
		mustSet(t, r.SetService(keyTCP, Service{ID: 1}))
		mustSet(t, r.conntrack.Put(fk, bpf.SluiceCtValue{ServiceId: 1, BackendId: 1, DaddrNew: 0x0d0212c6, DportNew: 0x5000}))
	}
	kept := func(r *Real, want bool) {
		t.Helper()
		svcs, err := r.Services()
		mustSet(t, err)
		var v bpf.SluiceCtValue
		flow := r.conntrack.Lookup(fk, &v) == nil
		if (len(svcs) == 1) != want || flow != want {
			t.Fatalf("services %v, flow %v: want kept %v", svcs, flow, want)
		}
	}
	setRecord := func(name string, fp uint64) {
		t.Helper()
		m, err := ebpf.LoadPinnedMap(filepath.Join(pin, layoutMapName), nil)
		mustSet(t, err)
		defer m.Close()
		mustSet(t, m.Put(layoutKey(name), fp))
	}

	r := open(nil)
	if rec, ok, err := readLayout(pin); err != nil || !ok || len(rec) != len(mapNames) {
		t.Fatalf("layout after the first install: %v %v %v", rec, ok, err)
	}
	populate(r)
	r.Close()
	r = open(nil) // the same release: adopted
	kept(r, true)
	r.Close()

	// A layout change at equal sizes: only the version tells.
	setRecord("conntrack", 1)
	r = open([]string{"conntrack"})
	kept(r, false)
	populate(r)
	r.Close()
	r = open(nil) // the new version was recorded
	kept(r, true)
	r.Close()

	// A size change (the older release's backends map was smaller).
	p := filepath.Join(pin, "backends")
	mustSet(t, os.Remove(p))
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: uint32(binarySize(bpf.SluiceBackend{})), MaxEntries: MaxBackends / 2})
	mustSet(t, err)
	mustSet(t, old.Pin(p))
	old.Close()
	r = open([]string{"backends"})
	if r.backends.MaxEntries() != MaxBackends {
		t.Errorf("backends has %d entries, want %d", r.backends.MaxEntries(), MaxBackends)
	}
	kept(r, false)
	populate(r)
	r.Close()

	// An older release (no layout version) with maps of this shape.
	mustSet(t, os.Remove(filepath.Join(pin, layoutMapName)))
	r = open(nil)
	kept(r, true)
	r.Close()
	if _, ok, _ := readLayout(pin); !ok {
		t.Fatal("no layout version recorded over an older release's maps")
	}
}

// TestXDPModeFallback: with xdp_mode auto, an interface whose driver has
// native XDP (veth) runs the program natively and one without (a bridge) falls
// back to generic mode, which Attachments reports as a fallback; with
// xdp_mode native the same interface is an error.
func TestXDPModeFallback(t *testing.T) {
	l := newLab(t, testTableSize)
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("sluice-modetest-%d", os.Getpid()))
	var got []Attachment
	var nativeErr, err error
	l.exec(func() {
		la := netlink.NewLinkAttrs()
		la.Name = "dm0"
		if err = netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return
		}
		dm, _ := netlink.LinkByName("dm0")
		if err = netlink.LinkSetUp(dm); err != nil {
			return
		}
		var r *Real
		r, err = Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true, Interfaces: []string{"tc", "dm0"}, XDPMode: "auto"})
		if err != nil {
			return
		}
		got = r.Attachments()
		r.Close()
		err = Teardown(pin)

		pin2 := pin + "-native"
		r, nativeErr = Open(Options{PinPath: pin2, MaglevTableSize: 251, NoNeighbours: true, Interfaces: []string{"dm0"}, XDPMode: "native"})
		if nativeErr == nil {
			r.Close()
		}
		_ = Teardown(pin2)
	})
	mustSet(t, err)
	want := []Attachment{{Interface: "dm0", Mode: "generic", Fallback: true}, {Interface: "tc", Mode: "native"}}
	if !slices.Equal(got, want) {
		t.Errorf("attachments %+v, want %+v", got, want)
	}
	if nativeErr == nil {
		t.Error("xdp_mode native on an interface without native XDP: no error")
	}
}

func binarySize(v any) int { return binary.Size(v) }

// TestConntrackMigration: a pinned conntrack of the layout with the next
// hop in every entry (64-byte values: recorded as such, or from a release
// without layout versions) is migrated, not dropped: the flows stay, the
// rest of the state is adopted.
func TestConntrackMigration(t *testing.T) {
	requireRoot(t)
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("sluice-migratetest-%d", os.Getpid()))
	t.Cleanup(func() { _ = Teardown(pin) })
	fk := bpf.SluiceCtKey{Saddr: 0x020012c6, Daddr: 0x010012c6, Sport: 0x1234, Dport: 0x5000, Proto: 6}
	fv := bpf.SluiceCtValue{LastSeen: 12345, ServiceId: 1, BackendId: 3, BackendGen: 7, DaddrNew: 0x0d0212c6,
		DportNew: 0x5000, State: uint8(FlowEstablished)}
	for _, withRecord := range []bool{true, false} {
		r, err := Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true})
		mustSet(t, err)
		mustSet(t, r.SetService(keyTCP, Service{ID: 1}))
		size := r.conntrack.MaxEntries()
		r.Close()

		// The older release's conntrack: the same fields, then a next hop.
		p := filepath.Join(pin, "conntrack")
		mustSet(t, os.Remove(p))
		old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 16, ValueSize: 64, MaxEntries: size})
		mustSet(t, err)
		v, err := binary.Append(nil, binary.LittleEndian, fv)
		mustSet(t, err)
		v = append(v[:34], make([]byte, 30)...)
		for i := 40; i < 64; i++ {
			v[i] = 0xab // the next hop
		}
		mustSet(t, old.Put(fk, v))
		mustSet(t, old.Pin(p))
		old.Close()
		lm, err := ebpf.LoadPinnedMap(filepath.Join(pin, layoutMapName), nil)
		mustSet(t, err)
		if withRecord {
			mustSet(t, lm.Put(layoutKey("conntrack"), uint64(conntrackWithNextHop)))
			lm.Close()
		} else {
			lm.Close()
			mustSet(t, os.Remove(filepath.Join(pin, layoutMapName)))
		}

		r, err = Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true})
		if err != nil {
			t.Fatalf("record %v: open over the older conntrack: %v", withRecord, err)
		}
		if got := r.LayoutReset(); got != nil {
			t.Errorf("record %v: LayoutReset = %v, want the state adopted", withRecord, got)
		}
		var got bpf.SluiceCtValue
		if err := r.conntrack.Lookup(fk, &got); err != nil || got != fv {
			t.Errorf("record %v: migrated flow = %+v (%v), want %+v", withRecord, got, err, fv)
		}
		if svcs, err := r.Services(); err != nil || len(svcs) != 1 {
			t.Errorf("record %v: services kept: %v (%v)", withRecord, svcs, err)
		}
		r.Close()
		if rec, _, _ := readLayout(pin); rec["conntrack"] == conntrackWithNextHop {
			t.Errorf("record %v: the old layout version is still recorded", withRecord)
		}
	}
}

// TestTwoEntryMigration: the layout with two entries per flow (a forward
// entry and a reverse one, 40-byte values) and services without a pool id
// is migrated: the flows' entries stay, the reverse entries go, an snat
// flow gets its reverse entry in snat_rev, services keep their ids; and
// OpenPinned refuses the old layout before the migration with a clear
// error.
func TestTwoEntryMigration(t *testing.T) {
	requireRoot(t)
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("sluice-migrate2-%d", os.Getpid()))
	t.Cleanup(func() { _ = Teardown(pin) })
	r, err := Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true})
	mustSet(t, err)
	size := r.conntrack.MaxEntries()
	r.Close()

	natKey := bpf.SluiceCtKey{Saddr: 0x020012c6, Daddr: 0x640112c6, Sport: 0x1234, Dport: 0x5000, Proto: 6}
	natVal := bpf.SluiceCtValue{LastSeen: 12345, ServiceId: 1, BackendId: 3, BackendGen: 7, DaddrNew: 0x0b0212c6,
		DportNew: 0x5000, State: uint8(FlowEstablished)}
	snatKey := bpf.SluiceCtKey{Saddr: 0x030012c6, Daddr: 0x660112c6, Sport: 0x2234, Dport: 0x5000, Proto: 6}
	snatVal := bpf.SluiceCtValue{LastSeen: 12345, ServiceId: 2, BackendId: 3, BackendGen: 7, SaddrNew: 0x010212c6,
		DaddrNew: 0x0b0212c6, SportNew: 0x2050, DportNew: 0x5000, State: uint8(FlowEstablished)}
	raw := func(v bpf.SluiceCtValue, flags byte) []byte {
		b, err := binary.Append(nil, binary.LittleEndian, v)
		mustSet(t, err)
		b[oldCTFlags] = flags
		return b
	}
	// The older conntrack: each flow's forward entry and its reverse entry.
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 16, ValueSize: 40, MaxEntries: size})
	mustSet(t, err)
	natRev := bpf.SluiceCtKey{Saddr: natVal.DaddrNew, Sport: natVal.DportNew, Daddr: natKey.Saddr, Dport: natKey.Sport, Proto: 6}
	mustSet(t, old.Put(natKey, raw(natVal, 0)))
	mustSet(t, old.Put(natRev, raw(bpf.SluiceCtValue{ServiceId: 1, SaddrNew: natKey.Daddr, SportNew: natKey.Dport}, oldCTReply)))
	mustSet(t, old.Put(snatKey, raw(snatVal, 0)))
	p := filepath.Join(pin, "conntrack")
	mustSet(t, os.Remove(p))
	mustSet(t, old.Pin(p))
	old.Close()
	// The older services: 12-byte values.
	svcs, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 12, MaxEntries: MaxServices})
	mustSet(t, err)
	mustSet(t, svcs.Put(svcKey(keyTCP), []byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}))
	mustSet(t, os.Remove(filepath.Join(pin, "services")))
	mustSet(t, svcs.Pin(filepath.Join(pin, "services")))
	svcs.Close()
	for _, m := range []string{"snat_rev", "snat_rev_ho"} {
		mustSet(t, os.Remove(filepath.Join(pin, m))) // the older release had none
	}
	lm, err := ebpf.LoadPinnedMap(filepath.Join(pin, layoutMapName), nil)
	mustSet(t, err)
	mustSet(t, lm.Put(layoutKey("conntrack"), uint64(conntrackTwoEntries)))
	mustSet(t, lm.Put(layoutKey("services"), uint64(servicesWithoutPool)))
	mustSet(t, lm.Delete(layoutKey("snat_rev")))
	mustSet(t, lm.Delete(layoutKey("snat_rev_ho")))
	lm.Close()

	if _, err := OpenPinned(pin); !errors.Is(err, ErrPinnedLayout) || !strings.Contains(err.Error(), "conntrack") {
		t.Errorf("OpenPinned over the older layout: %v, want ErrPinnedLayout naming conntrack", err)
	}

	r, err = Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true})
	if err != nil {
		t.Fatalf("open over the older layout: %v", err)
	}
	if got := r.LayoutReset(); got != nil {
		t.Errorf("LayoutReset = %v, want the state adopted", got)
	}
	var got bpf.SluiceCtValue
	if err := r.conntrack.Lookup(natKey, &got); err != nil || got != natVal {
		t.Errorf("migrated nat flow = %+v (%v), want %+v", got, err, natVal)
	}
	if err := r.conntrack.Lookup(snatKey, &got); err != nil || got != snatVal {
		t.Errorf("migrated snat flow = %+v (%v), want %+v", got, err, snatVal)
	}
	if err := r.conntrack.Lookup(natRev, &got); err == nil {
		t.Errorf("the nat flow's reverse entry was kept: %+v", got)
	}
	rk, _ := snatReverseKey(snatKey, snatVal)
	var fk bpf.SluiceCtKey
	if err := r.snatRev.Lookup(rk, &fk); err != nil || fk != snatKey {
		t.Errorf("the snat flow's reverse entry = %+v (%v), want %+v", fk, err, snatKey)
	}
	if s, err := r.Services(); err != nil || s[keyTCP].ID != 1 {
		t.Errorf("services after the migration: %v (%v)", s, err)
	}
	r.Close()
	pr, err := OpenPinned(pin)
	if err != nil {
		t.Fatalf("OpenPinned after the migration: %v", err)
	}
	pr.Close()
}

// TestKeepAttached: the program's link lost on an interface — detached by
// another tool, or gone with an interface deleted and made again — is
// found by KeepAttached, which attaches the program again (and reports
// the interface missing from Attachments while it cannot).
func TestKeepAttached(t *testing.T) {
	l := newLab(t, testTableSize)
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("sluice-keeptest-%d", os.Getpid()))
	bridge := func() error {
		la := netlink.NewLinkAttrs()
		la.Name = "ka0"
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return err
		}
		dm, err := netlink.LinkByName("ka0")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(dm)
	}
	attachedProg := func() bool {
		dm, err := netlink.LinkByName("ka0")
		return err == nil && dm.Attrs().Xdp != nil && dm.Attrs().Xdp.Attached
	}
	var steps []string
	note := func(format string, args ...any) { steps = append(steps, fmt.Sprintf(format, args...)) }
	l.exec(func() {
		defer func() { _ = Teardown(pin) }()
		if err := bridge(); err != nil {
			note("bridge: %v", err)
			return
		}
		r, err := Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true, Interfaces: []string{"ka0"}, XDPMode: "auto"})
		if err != nil {
			note("open: %v", err)
			return
		}
		defer r.Close()
		if ch := r.KeepAttached(); len(ch) != 0 {
			note("attached: changes %+v, want none", ch)
		}

		// Detached by another tool.
		if err := r.links["ka0"].Detach(); err != nil {
			note("detach: %v", err)
			return
		}
		if attachedProg() {
			note("still attached after Detach")
		}
		ch := r.KeepAttached()
		if len(ch) != 1 || ch[0].Err != nil || !strings.Contains(ch[0].Lost, "detached") || !attachedProg() || len(r.Attachments()) != 1 {
			note("after a detach: changes %+v, attached %v, attachments %+v; want it attached again", ch, attachedProg(), r.Attachments())
		}

		// The interface deleted, then made again.
		dm, _ := netlink.LinkByName("ka0")
		if err := netlink.LinkDel(dm); err != nil {
			note("delete: %v", err)
			return
		}
		ch = r.KeepAttached()
		if len(ch) != 1 || ch[0].Err == nil || len(r.Attachments()) != 0 {
			note("interface gone: changes %+v, attachments %+v; want the loss reported, nothing attached", ch, r.Attachments())
		}
		if ch := r.KeepAttached(); len(ch) != 0 {
			note("still gone: changes %+v, want none (said once)", ch)
		}
		if err := bridge(); err != nil {
			note("bridge again: %v", err)
			return
		}
		ch = r.KeepAttached()
		if len(ch) != 1 || ch[0].Err != nil || !attachedProg() || len(r.Attachments()) != 1 {
			note("interface back: changes %+v, attached %v, attachments %+v; want it attached again", ch, attachedProg(), r.Attachments())
		}
	})
	for _, s := range steps {
		t.Error(s)
	}
}

// TestKeepPinned: pins removed while the agent runs — the whole pin
// directory, or one map — are pinned again by KeepPinned, so the next
// agent adopts the same maps (the service set before is still there) and
// the program's link.
func TestKeepPinned(t *testing.T) {
	l := newLab(t, testTableSize)
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("sluice-keeppins-%d", os.Getpid()))
	var steps []string
	note := func(format string, args ...any) { steps = append(steps, fmt.Sprintf(format, args...)) }
	l.exec(func() {
		defer func() { _ = Teardown(pin) }()
		la := netlink.NewLinkAttrs()
		la.Name = "kp0"
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			note("bridge: %v", err)
			return
		}
		r, err := Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true, Interfaces: []string{"kp0"}, XDPMode: "auto"})
		if err != nil {
			note("open: %v", err)
			return
		}
		if err := r.SetService(keyTCP, Service{ID: 1}); err != nil {
			note("set service: %v", err)
		}
		if again, err := r.KeepPinned(); again != nil || err != nil {
			note("nothing removed: pinned again %v, %v; want nothing", again, err)
		}
		// One map.
		if err := os.Remove(filepath.Join(pin, "conntrack")); err != nil {
			note("remove conntrack: %v", err)
		}
		if again, err := r.KeepPinned(); !slices.Equal(again, []string{"conntrack"}) || err != nil {
			note("conntrack removed: pinned again %v, %v", again, err)
		}
		// The whole directory.
		if err := os.RemoveAll(pin); err != nil {
			note("remove the pin directory: %v", err)
		}
		again, err := r.KeepPinned()
		if err != nil || len(again) != len(mapNames)+2 || !slices.Contains(again, "links/xdp_kp0") || !slices.Contains(again, layoutMapName) {
			note("directory removed: pinned again %v, %v; want every map, the link and the layout", again, err)
		}
		// A second agent is still kept off (the lock taken on the new
		// directory), and the next one adopts what was pinned again.
		if _, err := Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true}); !errors.Is(err, ErrLocked) {
			note("a second agent while the first runs: %v, want ErrLocked", err)
		}
		r.Close()
		r2, err := Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true, Interfaces: []string{"kp0"}, XDPMode: "auto"})
		if err != nil {
			note("reopen: %v", err)
			return
		}
		defer r2.Close()
		if s, err := r2.Services(); err != nil || s[keyTCP].ID != 1 {
			note("after the pins were made again and the agent restarted: services %v (%v), want the one set before", s, err)
		}
		if len(r2.LayoutReset()) != 0 {
			note("layout reset on reopen: %v", r2.LayoutReset())
		}
	})
	for _, s := range steps {
		t.Error(s)
	}
}
