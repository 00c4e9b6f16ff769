package datapath

import (
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

// resizableMaps keep a pinned size that differs from the configured one
// (see Open): their size is not part of their layout.
var resizableMaps = map[string]bool{"conntrack": true, "halfopen": true}

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
		out[strings.TrimRight(string(k[:]), "\x00")] = v
	}
	if err := it.Err(); err != nil {
		return nil, false, fmt.Errorf("read the pinned layout version: %w", err)
	}
	return out, true, nil
}

// writeLayout pins this release's fingerprints under dir, replacing any
// older record. Written after the program loaded with its maps.
func writeLayout(dir string, layout map[string]uint64) error {
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
	p := filepath.Join(dir, layoutMapName)
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replace the layout version: %w", err)
	}
	if err := m.Pin(p); err != nil {
		return fmt.Errorf("pin the layout version: %w", err)
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
	migrated, done, err := migrateConntrack(dir, spec, recorded, haveRecord)
	if err != nil {
		return nil, err
	}
	if done {
		if recorded == nil {
			recorded = map[string]uint64{}
		}
		recorded["conntrack"] = want["conntrack"]
		log.Info("conntrack migrated to this release's layout (the next hop left the flow entries)", "flows", migrated)
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
	for _, name := range mapNames {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("start map %s afresh: %w", name, err)
		}
	}
	return state, nil
}

// conntrackWithNextHop is the layout version of the conntrack map of the
// releases whose ct_value (64 bytes) carried the flow's next hop: the
// first 34 bytes (last seen .. flags) are this release's ct_value, the
// rest was the next hop (now cached per backend and per client).
const conntrackWithNextHop = 0x4eb9f98b85fd15db

// migrateConntrack rewrites a pinned conntrack map of the layout with the
// next hop in every entry (recorded as conntrackWithNextHop, or unrecorded
// with its 64-byte value: every release before layout versions) into a
// new map of this release's layout, pinned in its place, and returns the
// entries copied (done false: nothing to migrate). The program still attached keeps
// the old map until the new one replaces it; what it writes meanwhile (a
// flow confirmed in those milliseconds) is not carried over, and such a
// flow is confirmed again from the half-open table by its next packets.
func migrateConntrack(dir string, spec *ebpf.CollectionSpec, recorded map[string]uint64, haveRecord bool) (n int, done bool, _ error) {
	p := filepath.Join(dir, "conntrack")
	old, err := ebpf.LoadPinnedMap(p, nil)
	if err != nil {
		return 0, false, nil
	}
	defer old.Close()
	ms := spec.Maps["conntrack"]
	const oldValue = 64
	if old.KeySize() != ms.KeySize || old.ValueSize() != oldValue || old.Type() != ms.Type || ms.ValueSize >= oldValue {
		return 0, false, nil
	}
	if fp, ok := recorded["conntrack"]; haveRecord && (!ok || fp != conntrackWithNextHop) {
		return 0, false, nil
	}
	ns := ms.Copy()
	ns.Pinning = ebpf.PinNone
	ns.MaxEntries = old.MaxEntries()
	nm, err := ebpf.NewMap(ns)
	if err != nil {
		return 0, false, fmt.Errorf("migrate conntrack: create the new map: %w", err)
	}
	defer nm.Close()
	const kept = 34 // last_seen .. flags
	var k []byte
	var v []byte
	nv := make([]byte, ms.ValueSize)
	it := old.Iterate()
	for it.Next(&k, &v) {
		clear(nv)
		copy(nv[:kept], v[:kept])
		if err := nm.Put(k, nv); err != nil {
			return 0, false, fmt.Errorf("migrate conntrack: copy an entry: %w", err)
		}
		n++
	}
	if err := it.Err(); err != nil {
		return 0, false, fmt.Errorf("migrate conntrack: read the old map: %w", err)
	}
	if err := os.Remove(p); err != nil {
		return 0, false, fmt.Errorf("migrate conntrack: unpin the old map: %w", err)
	}
	if err := nm.Pin(p); err != nil {
		return 0, false, fmt.Errorf("migrate conntrack: pin the new map: %w", err)
	}
	return n, true, nil
}
