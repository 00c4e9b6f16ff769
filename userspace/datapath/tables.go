package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/bpf"
)

// The Maglev tables are one flat array (bpf/include/maps.h,
// maglev_tables) of 64-byte lines of 16 entries: service id s owns the
// row of rowLines(size) lines from line s*rowLines(size) on, whose first
// size entries are its table, each a backend slot, 0 where the service has
// no table. A
// new flow's pick is then an array read the verifier inlines, where the
// map-in-map it replaces cost a helper call into the inner map
// (docs/benchmarks.md).
//
// A table is written in place, one entry at a time, through the map's
// memory mapping: each entry is one aligned 4-byte atomic store, so a
// packet reads an entry whole, the old table's or the new one's — never a
// torn slot number. While a row is being written a packet may pick from a
// mix of the two tables, and that is safe by the reconciler's order
// (docs/architecture.md, "Maglev tables: one flat array"): every slot of
// the old table and of the new one is an active backend of the service
// for as long as the write lasts (slots become active before a table
// names them, and leave active only once no table names them), and the
// program skips a slot that is not active anyway. So no packet is steered
// outside the service's live backends, and no second copy of every table
// (a generation to flip) is needed.

// tablesMapName is the flat Maglev table's pinned name.
const tablesMapName = "maglev_tables"

// oldTablesMapName is the map-in-map (service id -> inner array) that held
// the tables before the flat array; an upgrade copies its tables over
// (migrateTables) and removes it.
const oldTablesMapName = "maglev_outer"

// maglevLine is the table entries of one maglev_tables element.
const maglevLine = uint32(len(bpf.SluiceMaglevLine{}.Slot))

// rowLines is the maglev_tables elements of one service's row for tables
// of size entries.
func rowLines(size uint32) uint32 { return (size + maglevLine - 1) / maglevLine }

// tablesEntries is maglev_tables' size in elements for tables of size
// entries.
func tablesEntries(size uint32) uint32 { return MaxServices * rowLines(size) }

// row is service id's table (size entries) in the entries of a mapped
// maglev_tables.
func row(entries []uint32, id, size uint32) []uint32 {
	start := id * rowLines(size) * maglevLine
	return entries[start : start+size]
}

// mapTables maps maglev_tables into the process (once), writable when
// the data path was opened by an agent, and returns its entries.
func (r *Real) mapTables() ([]uint32, error) {
	if r.tables == nil {
		return nil, errors.New("no Maglev table map")
	}
	if r.tablesMem == nil {
		b, err := mmapTables(r.tables, r.tablesRW)
		if err != nil {
			return nil, err
		}
		r.tablesMem = b
	}
	return tableEntries(r.tablesMem), nil
}

func (r *Real) unmapTables() {
	if r.tablesMem != nil {
		_ = unix.Munmap(r.tablesMem)
		r.tablesMem = nil
	}
}

// mmapTables maps a flat table map (BPF_F_MMAPABLE) shared with the kernel.
func mmapTables(m *ebpf.Map, writable bool) ([]byte, error) {
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	b, err := unix.Mmap(m.FD(), 0, int(m.MaxEntries()*m.ValueSize()), prot, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map the Maglev tables: %w", err)
	}
	return b, nil
}

// tableEntries views a mapping of maglev_tables as its entries.
func tableEntries(b []byte) []uint32 {
	return unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/4)
}

// SetTable writes a service's Maglev table into its row of the flat table,
// in place, entry by entry (see the top of this file for why a packet
// meanwhile is still steered only to the service's live backends). Only
// entries that change are written. An empty table clears the row: new
// flows to the service get a RST (TCP) or are dropped (UDP).
func (r *Real) SetTable(serviceID uint32, table []uint32) error {
	_, err := r.setTable(serviceID, table, -1)
	return err
}

// setTable is SetTable writing at most limit changed entries (all when
// limit < 0); it returns how many it wrote. Tests stop it half-way.
func (r *Real) setTable(serviceID uint32, table []uint32, limit int) (int, error) {
	if serviceID == 0 || serviceID >= MaxServices {
		return 0, fmt.Errorf("set table of service %d: %w", serviceID, ErrOutOfRange)
	}
	if !r.tablesRW {
		return 0, errors.New("set table: data path opened read-only")
	}
	size := r.tableSize
	if len(table) != 0 && uint32(len(table)) != size {
		return 0, fmt.Errorf("set table of service %d: %d entries, want %d", serviceID, len(table), size)
	}
	for i, v := range table {
		if v == 0 || v >= MaxBackends {
			return 0, fmt.Errorf("set table of service %d: entry %d is slot %d: %w", serviceID, i, v, ErrOutOfRange)
		}
	}
	entries, err := r.mapTables()
	if err != nil {
		return 0, err
	}
	return writeRow(row(entries, serviceID, size), table, limit), nil
}

// writeRow stores table (all zeros when empty) into row, entry by entry in
// order, skipping entries that already hold their value, and stops after
// limit stores when limit >= 0. It returns the stores made.
func writeRow(row, table []uint32, limit int) int {
	n := 0
	for i := range row {
		var v uint32
		if len(table) != 0 {
			v = table[i]
		}
		if atomic.LoadUint32(&row[i]) == v {
			continue
		}
		if limit >= 0 && n == limit {
			break
		}
		atomic.StoreUint32(&row[i], v)
		n++
	}
	return n
}

// Table reads a service's installed table (nil when it has none).
func (r *Real) Table(serviceID uint32) ([]uint32, error) {
	if serviceID >= MaxServices {
		return nil, fmt.Errorf("read table of service %d: %w", serviceID, ErrOutOfRange)
	}
	entries, err := r.mapTables()
	if err != nil {
		return nil, err
	}
	rw := row(entries, serviceID, r.tableSize)
	out := make([]uint32, len(rw))
	empty := true
	for i := range rw {
		out[i] = atomic.LoadUint32(&rw[i])
		empty = empty && out[i] == 0
	}
	if empty {
		return nil, nil
	}
	return out, nil
}

// migrateTables gives the program about to load a flat table of this
// release's size (ms, the spec of maglev_tables), filled from the tables
// pinned under dir, before the program loads: the map-in-map of an older
// release (oldTablesMapName), or a flat table of another size (a changed
// maglev_table_size). A table of another size is resampled (entry i of the
// new one is entry i*old/new of the old one): it steers to the same
// backends, the active ones of the moment, in about the same shares,
// until the agent writes the table its config gives (the next
// milliseconds: an unchanged table is then written over in place), so new
// flows are never refused in between. It returns where the tables came
// from ("" when nothing was migrated) and how many services had one.
// pinnedSize is the table size recorded with the pinned layout (0: none).
func migrateTables(dir string, ms *ebpf.MapSpec, size, pinnedSize uint32) (from string, services int, _ error) {
	rows := map[uint32][]uint32{}
	if m, err := ebpf.LoadPinnedMap(filepath.Join(dir, tablesMapName), nil); err == nil {
		same := m.Type() == ms.Type && m.Flags() == ms.Flags && m.KeySize() == ms.KeySize &&
			m.ValueSize() == ms.ValueSize && m.MaxEntries() == ms.MaxEntries && (pinnedSize == size || pinnedSize == 0)
		readable := m.Type() == ms.Type && m.Flags() == ms.Flags && m.KeySize() == ms.KeySize &&
			m.ValueSize() == ms.ValueSize && pinnedSize != 0 && m.MaxEntries() == tablesEntries(pinnedSize)
		if same || !readable {
			m.Close() // adopted as it is, or not ours to read (the layout check decides)
			return "", 0, nil
		}
		err = readFlatTables(m, pinnedSize, rows)
		m.Close()
		if err != nil {
			return "", 0, err
		}
		from = fmt.Sprintf("%s of %d entries a table", tablesMapName, pinnedSize)
	} else if m, err := ebpf.LoadPinnedMap(filepath.Join(dir, oldTablesMapName), nil); err == nil {
		err = readInnerTables(m, rows)
		m.Close()
		if err != nil {
			return "", 0, err
		}
		from = oldTablesMapName
	} else {
		return "", 0, nil
	}

	ns := ms.Copy()
	ns.Pinning = ebpf.PinNone
	nm, err := ebpf.NewMap(ns)
	if err != nil {
		return "", 0, fmt.Errorf("create %s: %w", tablesMapName, err)
	}
	defer nm.Close()
	b, err := mmapTables(nm, true)
	if err != nil {
		return "", 0, err
	}
	entries := tableEntries(b)
	for id, t := range rows {
		writeRow(row(entries, id, size), resample(t, size), -1)
	}
	_ = unix.Munmap(b)
	if err := pinInPlace(nm, dir, tablesMapName); err != nil {
		return "", 0, fmt.Errorf("%s: %w", tablesMapName, err)
	}
	// The old program keeps its reference to the old map until the new
	// program replaces it; only the pin goes.
	if err := os.Remove(filepath.Join(dir, oldTablesMapName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", 0, fmt.Errorf("unpin %s: %w", oldTablesMapName, err)
	}
	return from, len(rows), nil
}

// readFlatTables reads every non-empty row of a flat table map m of
// tables of size entries.
func readFlatTables(m *ebpf.Map, size uint32, rows map[uint32][]uint32) error {
	b, err := mmapTables(m, false)
	if err != nil {
		return err
	}
	defer unix.Munmap(b)
	entries := tableEntries(b)
	for id := uint32(1); id < MaxServices; id++ {
		rw := row(entries, id, size)
		if atomic.LoadUint32(&rw[0]) == 0 {
			continue
		}
		t := make([]uint32, size)
		for i := range rw {
			t[i] = atomic.LoadUint32(&rw[i])
		}
		rows[id] = t
	}
	return nil
}

// readInnerTables reads every service's inner table of an older
// release's map-in-map outer.
func readInnerTables(outer *ebpf.Map, rows map[uint32][]uint32) error {
	for id := uint32(1); id < min(outer.MaxEntries(), MaxServices); id++ {
		var innerID ebpf.MapID
		if err := outer.Lookup(id, &innerID); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			return fmt.Errorf("read %s[%d]: %w", oldTablesMapName, id, err)
		}
		inner, err := ebpf.NewMapFromID(innerID)
		if err != nil {
			return fmt.Errorf("open the table of service %d: %w", id, err)
		}
		t, err := readArray(inner)
		inner.Close()
		if err != nil {
			return fmt.Errorf("read the table of service %d: %w", id, err)
		}
		if len(t) > 0 && t[0] != 0 {
			rows[id] = t
		}
	}
	return nil
}

// readArray reads an array map of uint32 values whole.
func readArray(m *ebpf.Map) ([]uint32, error) {
	n := m.MaxEntries()
	keys, vals := make([]uint32, n), make([]uint32, n)
	var cursor ebpf.MapBatchCursor
	if got, err := m.BatchLookup(&cursor, keys, vals, nil); err == nil || (errors.Is(err, ebpf.ErrKeyNotExist) && uint32(got) == n) {
		return vals, nil
	}
	for i := uint32(0); i < n; i++ { // no batch operations on this kernel
		if err := m.Lookup(i, &vals[i]); err != nil {
			return nil, err
		}
	}
	return vals, nil
}

// resample returns t stretched or shrunk to n entries (t itself when it
// has n): entry i is t[i*len(t)/n].
func resample(t []uint32, n uint32) []uint32 {
	if uint32(len(t)) == n || len(t) == 0 {
		return t
	}
	out := make([]uint32, n)
	for i := range out {
		out[i] = t[uint64(i)*uint64(len(t))/uint64(n)]
	}
	return out
}
