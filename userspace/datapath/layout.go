package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/sluicelb/sluice/bpf"
)

// The layout version of the pinned state. Every pinned map's layout (map
// type, key and value sizes, flags, size where it is fixed, and the BTF of
// its key and value: field names, offsets, types) is hashed into a
// fingerprint, and the fingerprints of the release that wrote the maps are
// pinned next to them, in the map named layoutMapName. At open, a pinned
// map whose recorded fingerprint differs from this release's was written
// by a release with another layout (a field moved, a value's meaning
// changed at equal size, a fixed size changed): it is never adopted as it
// is. Counter maps and maps rebuilt at every open start afresh alone
// (disposableMaps); any other change starts the whole data path state on
// fresh maps (the maps refer to each other by service id and backend
// slot), said in the log and by Real.LayoutReset. The program already
// attached keeps forwarding on the old maps until the new one replaces it.
const layoutMapName = "layout"

// layoutNameLen is the key size of the layout map: a map name, NUL padded
// (the kernel's BPF_OBJ_NAME_LEN).
const layoutNameLen = 16

// resizableMaps are sized by the configuration, so their size is not part
// of their layout: the flow tables keep a pinned size that differs from the
// configured one (see Open), and the flat Maglev table is rebuilt at the
// configured maglev_table_size (migrateTables).
var resizableMaps = map[string]bool{"conntrack": true, "halfopen": true, "snat_rev": true, "snat_rev_ho": true, "conntrack6": true, "halfopen6": true,
	tablesMapName: true}

// mapFingerprint hashes the layout of a map spec (see layoutMapName).
func mapFingerprint(name string, ms *ebpf.MapSpec) uint64 {
	var b strings.Builder
	fmt.Fprintf(&b, "%s type=%d key=%d value=%d flags=%#x", name, ms.Type, ms.KeySize, ms.ValueSize, ms.Flags)
	if !resizableMaps[name] {
		fmt.Fprintf(&b, " max=%d", ms.MaxEntries)
	}
	b.WriteString(" k:")
	describeBTF(&b, ms.Key, 0)
	b.WriteString(" v:")
	describeBTF(&b, ms.Value, 0)
	if ms.InnerMap != nil {
		// The inner maps' size is configured (maglev_table_size), and
		// BPF_F_INNER_MAP lets it change: not part of the layout.
		in := ms.InnerMap
		fmt.Fprintf(&b, " inner type=%d key=%d value=%d flags=%#x", in.Type, in.KeySize, in.ValueSize, in.Flags)
	}
	h := fnv.New64a()
	h.Write([]byte(b.String()))
	return h.Sum64()
}

// describeBTF writes a canonical description of t: what a reader of the
// map's bytes depends on (names of typedefs are left out, __u32 and
// unsigned int are the same bytes).
func describeBTF(b *strings.Builder, t btf.Type, depth int) {
	if depth > 16 {
		b.WriteString("…")
		return
	}
	switch t := t.(type) {
	case nil:
		b.WriteString("none")
	case *btf.Typedef:
		describeBTF(b, t.Type, depth+1)
	case *btf.Volatile:
		describeBTF(b, t.Type, depth+1)
	case *btf.Const:
		describeBTF(b, t.Type, depth+1)
	case *btf.Int:
		fmt.Fprintf(b, "int%d/%d", t.Size*8, t.Encoding)
	case *btf.Enum:
		fmt.Fprintf(b, "enum%d{", t.Size*8)
		for _, v := range t.Values {
			fmt.Fprintf(b, "%s=%d,", v.Name, v.Value)
		}
		b.WriteString("}")
	case *btf.Array:
		fmt.Fprintf(b, "[%d]", t.Nelems)
		describeBTF(b, t.Type, depth+1)
	case *btf.Struct:
		describeMembers(b, "struct", t.Size, t.Members, depth)
	case *btf.Union:
		describeMembers(b, "union", t.Size, t.Members, depth)
	case *btf.Pointer:
		b.WriteString("ptr")
	default:
		fmt.Fprintf(b, "%T", t)
	}
}

func describeMembers(b *strings.Builder, kind string, size uint32, ms []btf.Member, depth int) {
	fmt.Fprintf(b, "%s%d{", kind, size)
	for _, m := range ms {
		fmt.Fprintf(b, "%s@%d/%d:", m.Name, m.Offset, m.BitfieldSize)
		describeBTF(b, m.Type, depth+1)
		b.WriteString(";")
	}
	b.WriteString("}")
}

// layoutOf returns this release's fingerprint of every pinned map.
func layoutOf(spec *ebpf.CollectionSpec) (map[string]uint64, error) {
	out := make(map[string]uint64, len(mapNames))
	for _, name := range mapNames {
		ms, ok := spec.Maps[name]
		if !ok {
			return nil, fmt.Errorf("%w: no map %s", ErrLayout, name)
		}
		out[name] = mapFingerprint(name, ms)
	}
	return out, nil
}

func layoutKey(name string) [layoutNameLen]byte {
	var k [layoutNameLen]byte
	copy(k[:layoutNameLen-1], name)
	return k
}

// readLayout returns the fingerprints pinned under dir; ok false: there is
// no layout map (the maps come from a release before layout versions).
func readLayout(dir string) (_ map[string]uint64, ok bool, _ error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, layoutMapName), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("open the pinned layout version: %w", err)
	}
	defer m.Close()
	if m.KeySize() != layoutNameLen || m.ValueSize() != 8 {
		// Not a layout this release can read: as good as another one.
		return map[string]uint64{}, true, nil
	}
	out := make(map[string]uint64)
	var k [layoutNameLen]byte
	var v uint64
	it := m.Iterate()
	for it.Next(&k, &v) {
		if name := strings.TrimRight(string(k[:]), "\x00"); name != hoKeyName && name != tableSizeName {
			out[name] = v
		}
	}
	if err := it.Err(); err != nil {
		return nil, false, fmt.Errorf("read the pinned layout version: %w", err)
	}
	return out, true, nil
}

// hoKeyName is the layout map's entry holding the half-open table's hash
// key (sluice_config.ho_key): the pinned table's slots were placed with
// it, so an agent that adopts the table must load the program with the
// same key. Kept with the layout record, which is written with the maps.
const hoKeyName = "halfopen_key"

// tableSizeName is the layout map's entry holding the Maglev table size
// the pinned maglev_tables was laid out for: its rows are padded to whole
// lines, so the map's size alone does not give it.
const tableSizeName = "maglev_size"

// pinnedHOKey returns the hash key of the half-open table pinned under
// dir, 0 when none is pinned or no key was recorded.
func pinnedHOKey(dir string) (uint64, error) {
	if _, err := os.Lstat(filepath.Join(dir, "halfopen")); err != nil {
		return 0, nil
	}
	key, err := layoutValue(dir, hoKeyName)
	if err != nil {
		return 0, fmt.Errorf("read the half-open table's key: %w", err)
	}
	return key, nil
}

// pinnedTableSize returns the Maglev table size of the maglev_tables
// pinned under dir, 0 when none is pinned or no size was recorded.
func pinnedTableSize(dir string) (uint32, error) {
	if _, err := os.Lstat(filepath.Join(dir, tablesMapName)); err != nil {
		return 0, nil
	}
	n, err := layoutValue(dir, tableSizeName)
	if err != nil {
		return 0, fmt.Errorf("read the Maglev table size: %w", err)
	}
	return uint32(n), nil
}

// layoutValue returns the layout map's entry name under dir, 0 when there
// is no such map or entry.
func layoutValue(dir, name string) (uint64, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, layoutMapName), nil)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("open the pinned layout version: %w", err)
	}
	defer m.Close()
	if m.KeySize() != layoutNameLen || m.ValueSize() != 8 {
		return 0, nil
	}
	var v uint64
	if err := m.Lookup(layoutKey(name), &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, nil
		}
		return 0, err
	}
	return v, nil
}

// writeLayout pins this release's fingerprints under dir, with the
// half-open table's hash key and the Maglev table size, replacing any
// older record. Written after the program loaded with its maps.
func writeLayout(dir string, layout map[string]uint64, hoKey uint64, tableSize uint32) error {
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       layoutMapName,
		Type:       ebpf.Hash,
		KeySize:    layoutNameLen,
		ValueSize:  8,
		MaxEntries: 64,
	})
	if err != nil {
		return fmt.Errorf("create the layout version map: %w", err)
	}
	defer m.Close()
	for name, fp := range layout {
		if err := m.Put(layoutKey(name), fp); err != nil {
			return fmt.Errorf("write the layout version of %s: %w", name, err)
		}
	}
	if err := m.Put(layoutKey(hoKeyName), hoKey); err != nil {
		return fmt.Errorf("write the half-open table's key: %w", err)
	}
	if err := m.Put(layoutKey(tableSizeName), uint64(tableSize)); err != nil {
		return fmt.Errorf("write the Maglev table size: %w", err)
	}
	if err := pinInPlace(m, dir, layoutMapName); err != nil {
		return fmt.Errorf("the layout version: %w", err)
	}
	return nil
}

// sameShape tells whether the pinned map m can be used where spec ms is
// expected, as far as the kernel can tell (what makes the load fail with
// ErrMapIncompatible otherwise).
func sameShape(name string, m *ebpf.Map, ms *ebpf.MapSpec) bool {
	return m.Type() == ms.Type && m.KeySize() == ms.KeySize && m.ValueSize() == ms.ValueSize &&
		m.Flags() == ms.Flags && (resizableMaps[name] || m.MaxEntries() == ms.MaxEntries)
}

// changedMaps returns the pinned maps under dir whose layout is not this
// release's: a recorded fingerprint that differs, or, without a record (a
// release before layout versions), a shape the kernel would refuse. A map
// not pinned is not changed (the load creates it).
func changedMaps(dir string, spec *ebpf.CollectionSpec, want, recorded map[string]uint64, haveRecord bool) []string {
	var changed []string
	for _, name := range mapNames {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			continue
		}
		same := sameShape(name, m, spec.Maps[name])
		m.Close()
		if fp, ok := recorded[name]; haveRecord && (!ok || fp != want[name]) {
			same = false
		}
		if !same {
			changed = append(changed, name)
		}
	}
	return changed
}

// upgradeLayout makes the pinned maps under dir usable by this release
// (see layoutMapName): disposable maps of another layout are removed
// alone, and when any other map changed, every pinned map is removed, so
// the load starts the data path state afresh. It returns the maps whose
// layout changed when the state was reset (nil: adopted as it is).
func upgradeLayout(dir string, spec *ebpf.CollectionSpec, want map[string]uint64, log *slog.Logger) ([]string, error) {
	recorded, haveRecord, err := readLayout(dir)
	if err != nil {
		return nil, err
	}
	if recorded == nil {
		recorded = map[string]uint64{}
	}
	migrated, err := migrate(dir, spec, want, recorded, haveRecord)
	if err != nil {
		return nil, err
	}
	for name, n := range migrated {
		log.Info("pinned map migrated to this release's layout (one entry per flow, the pool id in services)", "map", name, "entries", n)
	}
	var c bpf.SluiceSluiceConfig
	if err := spec.Variables["cfg"].Get(&c); err != nil {
		return nil, fmt.Errorf("read the program's config: %w", err)
	}
	pinnedSize, err := pinnedTableSize(dir)
	if err != nil {
		return nil, err
	}
	from, services, err := migrateTables(dir, spec.Maps[tablesMapName], c.MaglevSize, pinnedSize)
	if err != nil {
		return nil, fmt.Errorf("migrate the Maglev tables: %w", err)
	}
	if from != "" {
		log.Info("pinned map migrated to this release's layout (one flat Maglev table; each service's table copied, resized to maglev_table_size)",
			"map", tablesMapName, "from", from, "services", services)
		recorded[tablesMapName] = want[tablesMapName]
	}
	changed := changedMaps(dir, spec, want, recorded, haveRecord)
	if !haveRecord {
		log.Info("the pinned maps carry no layout version (written by an older release): adopting those of the same shape, recording this release's version")
	}
	var state []string
	for _, name := range changed {
		if _, ok := disposableMaps[name]; !ok {
			state = append(state, name)
		}
	}
	if len(state) == 0 {
		for _, name := range changed {
			log.Warn("a pinned map has another layout (a release changed it): starting it afresh",
				"map", name, "consequence", disposableMaps[name])
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return nil, fmt.Errorf("replace map %s: %w", name, err)
			}
		}
		return nil, nil
	}
	slices.Sort(state)
	log.Warn("the pinned data path state was written by a release with another map layout: starting on fresh maps "+
		"(services, backends and tables are programmed again from the config; tracked flows are forgotten: "+
		"established connections through sluice are reset, new ones work at once); "+
		"the running program forwards on the old maps until this one replaces it",
		"changed", strings.Join(state, ","))
	for _, name := range append(slices.Clone(mapNames), oldTablesMapName) {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("start map %s afresh: %w", name, err)
		}
	}
	return state, nil
}

// Older layouts this release migrates (their fingerprints as those
// releases recorded them; a release before layout versions recorded
// none, and is recognised by its value sizes).
const (
	// conntrack entries carried the flow's next hop (64-byte ct_value):
	// the first 34 bytes are the fields below, the rest was the next hop
	// (now cached per backend and per client).
	conntrackWithNextHop = 0x4eb9f98b85fd15db
	// Two entries per flow (40-byte ct_value): a forward entry and a
	// reverse one (flags bit 1) translating the replies.
	conntrackTwoEntries = 0xd0e1cc634161eaad
	// services without the pool id (12-byte svc_value).
	servicesWithoutPool = 0x6cef96730a512e48
)

// The bytes of an older ct_value this release reads: last_seen ..
// dport_new and state are at the same offsets as in today's; flags (byte
// 33) marked a reverse entry.
const (
	oldCTKept      = 33 // last_seen .. state
	oldCTFlags     = 33
	oldCTReply     = 1
	ctSaddrNewOff  = 20
	ctDaddrNewOff  = 24
	ctSportNewOff  = 28
	ctDportNewOff  = 30
	ctKeyProtoOff  = 12
	ctKeySize      = 16
	ctNextHopValue = 64
)

// migration is one map an upgrade rewrites from an older layout.
type migration struct {
	name  string          // the map
	from  map[uint64]bool // recorded fingerprints it migrates
	sizes map[uint32]bool // value sizes it migrates when nothing is recorded
	rev   string          // the snat reverse map it fills (flow tables only)
}

var migrations = []migration{
	{name: "conntrack", from: map[uint64]bool{conntrackWithNextHop: true, conntrackTwoEntries: true},
		sizes: map[uint32]bool{ctNextHopValue: true}, rev: "snat_rev"},
	{name: "services", from: map[uint64]bool{servicesWithoutPool: true}, sizes: map[uint32]bool{12: true}},
}

// migrate rewrites the pinned maps of an older layout this release knows
// (migrations) into new maps of this release's layout, pinned in their
// place before the program loads, and marks them in recorded as this
// release's. Flow tables keep every flow's entry (without the next hop,
// without the reverse entries of the two-entry layout) and give each snat
// flow its reverse entry in snat_rev; services keep their
// ids (the pool id starts at 0 and the agent writes it with its config).
// The program still attached keeps the old maps until the new one
// replaces it; what it writes meanwhile (a flow confirmed in those
// milliseconds) is not carried over, and such a flow is confirmed again
// from the half-open table by its next packets. It returns what it
// migrated, for the log.
func migrate(dir string, spec *ebpf.CollectionSpec, want, recorded map[string]uint64, haveRecord bool) (map[string]int, error) {
	done := map[string]int{}
	for _, mg := range migrations {
		p := filepath.Join(dir, mg.name)
		old, err := ebpf.LoadPinnedMap(p, nil)
		if err != nil {
			continue
		}
		ms := spec.Maps[mg.name]
		fp, ok := recorded[mg.name]
		known := haveRecord && ok && mg.from[fp] || !haveRecord && mg.sizes[old.ValueSize()]
		if !known || old.KeySize() != ms.KeySize || old.Type() != ms.Type {
			old.Close()
			continue
		}
		n, err := migrateMap(dir, mg.name, old, ms, mg.rev, spec)
		old.Close()
		if err != nil {
			return nil, fmt.Errorf("migrate %s: %w", mg.name, err)
		}
		done[mg.name] = n
		recorded[mg.name] = want[mg.name]
		if mg.rev != "" {
			recorded[mg.rev] = want[mg.rev]
		}
	}
	return done, nil
}

// migrateMap copies old into a new map of spec ms (old's size), with an
// snat reverse map rev when it is a flow table, pins them in place of old
// and returns the entries copied.
func migrateMap(dir, name string, old *ebpf.Map, ms *ebpf.MapSpec, rev string, spec *ebpf.CollectionSpec) (n int, _ error) {
	ns := ms.Copy()
	ns.Pinning = ebpf.PinNone
	ns.MaxEntries = old.MaxEntries()
	nm, err := ebpf.NewMap(ns)
	if err != nil {
		return 0, fmt.Errorf("create the new map: %w", err)
	}
	defer nm.Close()
	var rm *ebpf.Map
	if rev != "" {
		rs := spec.Maps[rev].Copy()
		rs.Pinning = ebpf.PinNone
		if rm, err = ebpf.NewMap(rs); err != nil {
			return 0, fmt.Errorf("create %s: %w", rev, err)
		}
		defer rm.Close()
	}
	var k, v []byte
	nv := make([]byte, ms.ValueSize)
	it := old.Iterate()
	for it.Next(&k, &v) {
		clear(nv)
		if rev == "" {
			copy(nv, v) // services: the new field (pool id) follows the old ones
		} else {
			if len(v) <= oldCTFlags || v[oldCTFlags]&oldCTReply != 0 {
				continue // a reverse entry: replies find the flow's entry now
			}
			copy(nv[:oldCTKept], v[:oldCTKept])
			if rk, ok := oldSNATReverseKey(k, nv); ok {
				if err := rm.Put(rk, k); err != nil {
					return 0, fmt.Errorf("write an snat reverse entry: %w", err)
				}
			}
		}
		if err := nm.Put(k, nv); err != nil {
			return 0, fmt.Errorf("copy an entry: %w", err)
		}
		n++
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("read the old map: %w", err)
	}
	if rm != nil {
		if err := pinInPlace(rm, dir, rev); err != nil {
			return 0, fmt.Errorf("%s: %w", rev, err)
		}
	}
	return n, pinInPlace(nm, dir, name)
}

// oldSNATReverseKey is the reverse key of an snat flow entry v (raw
// bytes of a ct_value) at key k: (backend, snat address, ports).
func oldSNATReverseKey(k, v []byte) ([]byte, bool) {
	if len(k) < ctKeySize || len(v) < ctDportNewOff+2 {
		return nil, false
	}
	if binary.NativeEndian.Uint32(v[ctSaddrNewOff:]) == 0 {
		return nil, false
	}
	rk := make([]byte, ctKeySize)
	copy(rk[0:4], v[ctDaddrNewOff:ctDaddrNewOff+4])   // saddr: the backend
	copy(rk[4:8], v[ctSaddrNewOff:ctSaddrNewOff+4])   // daddr: the snat address
	copy(rk[8:10], v[ctDportNewOff:ctDportNewOff+2])  // sport: the backend's port
	copy(rk[10:12], v[ctSportNewOff:ctSportNewOff+2]) // dport: the snat port
	rk[ctKeyProtoOff] = k[ctKeyProtoOff]
	return rk, true
}

// pinInPlace pins m as dir/name, replacing what is pinned there.
func pinInPlace(m *ebpf.Map, dir, name string) error {
	p := filepath.Join(dir, name)
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unpin the old map: %w", err)
	}
	if err := m.Pin(p); err != nil {
		return fmt.Errorf("pin the new map: %w", err)
	}
	return nil
}
