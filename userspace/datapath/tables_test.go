package datapath

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/userspace/maglev"
)

// TestMaglevTableIsFlat: a new flow's Maglev pick reads one flat array
// (maglev_tables), which the verifier inlines, never a map-in-map, whose
// inner lookup is a helper call per probe (docs/benchmarks.md). Fails if
// the tables go back to an array of maps, in the object or in the program
// the kernel runs.
func TestMaglevTableIsFlat(t *testing.T) {
	spec, err := bpf.LoadSluice()
	if err != nil {
		t.Fatal(err)
	}
	for name, ms := range spec.Maps {
		if ms.Type == ebpf.ArrayOfMaps || ms.Type == ebpf.HashOfMaps {
			t.Errorf("map %s is a map of maps (%s): the Maglev pick must be an inlined array read", name, ms.Type)
		}
	}
	ms := spec.Maps[tablesMapName]
	if ms == nil || ms.Type != ebpf.Array || ms.Flags&unix.BPF_F_MMAPABLE == 0 {
		t.Fatalf("%s: %+v, want a BPF_F_MMAPABLE array", tablesMapName, ms)
	}
	// Every lookup in the program that names maglev_tables is a
	// bpf_map_lookup_elem on the map itself (an array lookup, inlined by
	// the verifier), never on a value read from another map.
	refs := 0
	for _, p := range spec.Programs {
		var mapInR1 string
		for _, ins := range p.Instructions {
			if ins.IsLoadFromMap() && ins.Dst == asm.R1 {
				mapInR1 = ins.Reference()
			}
			if ins.IsBuiltinCall() && ins.Constant == int64(asm.FnMapLookupElem) && mapInR1 == tablesMapName {
				refs++
			}
		}
	}
	if refs == 0 {
		t.Errorf("no bpf_map_lookup_elem(&%s, ...) in the program: where does a new flow's pick read its table?", tablesMapName)
	}

	l := newLab(t, testTableSize)
	info, err := l.r.prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	ids, ok := info.MapIDs()
	if !ok {
		t.Skip("the kernel does not report a program's maps")
	}
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		mi, err := m.Info()
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		if mi.Type == ebpf.ArrayOfMaps || mi.Type == ebpf.HashOfMaps {
			t.Errorf("the loaded program uses map %s of type %s", mi.Name, mi.Type)
		}
	}
}

// TestTableUpdateSteersToLiveBackends: a table is written in place, entry
// by entry, while packets read it. The rule that makes that safe: at any
// point of the write every entry holds its old value or its new one, so a
// new flow goes to a backend of the old table or of the new one — both
// active backends of the service while the write lasts (the reconciler
// writes slots active before a table names them and takes them out only
// once no table does: userspace/agent TestStartProgramsServiceSlotsThenTable,
// TestDrainKeepsFlowsThenRemovesOnNoFlows, TestMapErrorsAreRetriedInOrder).
// Stopped after every
// eighth of the changed entries, SYNs from many client ports never reach
// an active backend of the pool that neither table names, and the entries
// read back are each the old or the new one. The same for clearing a
// table (the service losing its last backend): a SYN then goes to an old
// backend or gets a RST.
func TestTableUpdateSteersToLiveBackends(t *testing.T) {
	l := newLab(t, testTableSize)
	l.reset(t)
	r := l.r
	outsider := netip.MustParseAddrPort("198.18.2.14:80")
	mustSet(t, r.SetBackend(5, Backend{Addr: outsider, Gen: 1, State: BackendActive, PoolID: PoolID("web")}))
	build := func(slots ...uint32) []uint32 {
		var bs []maglev.Backend
		for _, s := range slots {
			bs = append(bs, maglev.Backend{ID: s, Key: fmt.Sprint(s), Weight: 1})
		}
		tb, err := maglev.Build(bs, r.TableSize())
		mustSet(t, err)
		return tb
	}
	addrOf := map[uint32]netip.Addr{1: be1.Addr(), 2: be2.Addr(), 4: be3.Addr(), 5: outsider.Addr()}
	old, nw := build(1, 2), build(2, 4)

	changed := 0
	for i := range old {
		if old[i] != nw[i] {
			changed++
		}
	}
	port := uint16(20000)
	check := func(t *testing.T, allowed map[netip.Addr]bool, rstOK bool) {
		t.Helper()
		got := map[netip.Addr]int{}
		for i := 0; i < 200; i++ {
			port++
			syn := pkt{src: netip.AddrPortFrom(client.Addr(), port), dst: vip, proto: TCP, flags: fSYN, seq: 1000}
			verdict, out := l.run(t, syn.bytes(), l.clientIf)
			p, err := parse(out)
			if err != nil {
				t.Fatalf("SYN from port %d: %v", port, err)
			}
			if verdict == xdpTX && rstOK && p.flags&fRST != 0 {
				continue
			}
			if !allowed[p.dst.Addr()] {
				t.Fatalf("SYN from port %d went to %v (verdict %s), outside the old and the new table", port, p.dst, verdictName[verdict])
			}
			got[p.dst.Addr()]++
		}
		if len(got) == 0 {
			t.Fatal("no SYN was forwarded")
		}
	}
	oldOrNew := map[netip.Addr]bool{be1.Addr(): true, be2.Addr(): true, be3.Addr(): true}
	for step := 0; step <= 8; step++ {
		t.Run(fmt.Sprintf("%d-of-8-written", step), func(t *testing.T) {
			mustSet(t, r.SetTable(svcTCP, old))
			n, err := r.setTable(svcTCP, nw, changed*step/8)
			mustSet(t, err)
			if want := changed * step / 8; n != want {
				t.Fatalf("wrote %d entries, want %d", n, want)
			}
			tab, err := r.Table(svcTCP)
			mustSet(t, err)
			for i, v := range tab {
				if v != old[i] && v != nw[i] {
					t.Fatalf("entry %d is slot %d (%v): neither the old table's %d nor the new one's %d", i, v, addrOf[v], old[i], nw[i])
				}
			}
			check(t, oldOrNew, false)
		})
	}
	t.Run("clearing", func(t *testing.T) {
		mustSet(t, r.SetTable(svcTCP, old))
		if _, err := r.setTable(svcTCP, nil, len(old)/2); err != nil {
			t.Fatal(err)
		}
		check(t, map[netip.Addr]bool{be1.Addr(): true, be2.Addr(): true}, true)
		mustSet(t, r.SetTable(svcTCP, nil))
		if tab, err := r.Table(svcTCP); err != nil || tab != nil {
			t.Fatalf("cleared table reads %d entries (%v)", len(tab), err)
		}
	})
}

// TestTablesMigration: the Maglev tables survive an upgrade from the
// map-in-map layout (maglev_outer with one inner array per service) and a
// change of maglev_table_size: the agent copies them into the flat table
// before the program loads, resized (entry i of the new one is entry
// i*old/new of the old one), so a new flow goes to one of the same
// backends before the agent has written its config's tables.
func TestTablesMigration(t *testing.T) {
	requireRoot(t)
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("sluice-test-tables-%d", os.Getpid()))
	_ = Teardown(pin)
	t.Cleanup(func() { _ = Teardown(pin) })
	open := func(size uint32) *Real {
		t.Helper()
		r, err := Open(Options{PinPath: pin, MaglevTableSize: size, NoNeighbours: true})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := open(251)
	mustSet(t, r.SetBackend(1, Backend{Addr: be1, Gen: 1, State: BackendActive, PoolID: PoolID("web")}))
	mustSet(t, r.SetBackend(2, Backend{Addr: be2, Gen: 1, State: BackendActive, PoolID: PoolID("web")}))
	old := fill(251, 1, 2, 2)
	mustSet(t, r.SetTable(7, old))
	r.Close()

	inSet := func(t *testing.T, tab []uint32, size int, slots ...uint32) {
		t.Helper()
		if len(tab) != size {
			t.Fatalf("table of %d entries, want %d", len(tab), size)
		}
		for i, v := range tab {
			if !slices.Contains(slots, v) {
				t.Fatalf("entry %d is slot %d, not one of %v", i, v, slots)
			}
		}
	}

	t.Run("another-table-size", func(t *testing.T) {
		r := open(1021)
		defer r.Close()
		tab, err := r.Table(7)
		mustSet(t, err)
		inSet(t, tab, 1021, 1, 2)
		if want := resample(old, 1021); !slices.Equal(tab, want) {
			t.Fatal("the table was not resampled entry by entry")
		}
		if other, err := r.Table(8); err != nil || other != nil {
			t.Fatalf("an empty row reads %d entries (%v)", len(other), err)
		}
	})

	t.Run("map-in-map", func(t *testing.T) {
		// The pinned state of a release before the flat table: its
		// maglev_outer instead of maglev_tables.
		mustSet(t, os.Remove(filepath.Join(pin, tablesMapName)))
		outer, err := ebpf.NewMap(&ebpf.MapSpec{
			Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: MaxServices,
			InnerMap: &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 251, Flags: unix.BPF_F_INNER_MAP},
		})
		mustSet(t, err)
		inner, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 251, Flags: unix.BPF_F_INNER_MAP})
		mustSet(t, err)
		for i, v := range fill(251, 2) {
			mustSet(t, inner.Put(uint32(i), v))
		}
		mustSet(t, outer.Put(uint32(9), inner))
		inner.Close()
		mustSet(t, outer.Pin(filepath.Join(pin, oldTablesMapName)))
		outer.Close()

		r := open(1021)
		defer r.Close()
		tab, err := r.Table(9)
		mustSet(t, err)
		inSet(t, tab, 1021, 2)
		if _, err := os.Stat(filepath.Join(pin, oldTablesMapName)); !os.IsNotExist(err) {
			t.Errorf("%s still pinned after the migration (%v)", oldTablesMapName, err)
		}
	})
}
