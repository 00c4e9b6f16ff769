package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
)

// pinnedByName maps the name of each map pinned under the pin path (one of
// mapNames) to the loaded map, for KeepPinned.
func pinnedByName(objs *bpf.SluiceMaps) map[string]*ebpf.Map {
	out := make(map[string]*ebpf.Map, len(mapNames))
	v, t := reflect.ValueOf(objs).Elem(), reflect.TypeOf(objs).Elem()
	for i := range t.NumField() {
		name := t.Field(i).Tag.Get("ebpf")
		if m, ok := v.Field(i).Interface().(*ebpf.Map); ok && m != nil && slices.Contains(mapNames, name) {
			out[name] = m
		}
	}
	return out
}

// KeepPinned pins again what was unpinned under the pin path while the
// agent runs — a `rm -r` of the directory, a tool that cleans /sys/fs/bpf:
// the maps, the links and the layout record, and takes the directory's
// lock again. Without it the next agent would find nothing to adopt: the
// program is detached when this agent's links close, and every flow's
// state is gone (snat flows break; nat flows are balanced anew). It
// returns what it pinned again (nil: nothing was missing), and an error
// when it could not (the pin path is no longer on bpffs: unmounted). The
// agent calls it on every tick; a check is one lstat per pin.
func (r *Real) KeepPinned() (repinned []string, err error) {
	if r.pinned == nil {
		return nil, nil // opened read-only
	}
	var missingMaps []string
	for _, name := range mapNames {
		if _, ok := r.pinned[name]; !ok {
			continue
		}
		if _, err := os.Lstat(filepath.Join(r.pinPath, name)); errors.Is(err, os.ErrNotExist) {
			missingMaps = append(missingMaps, name)
		}
	}
	var missingLinks []string
	for name := range r.links { // every link the agent holds is pinned
		if _, err := os.Lstat(linkPin(r.pinPath, name)); errors.Is(err, os.ErrNotExist) {
			missingLinks = append(missingLinks, name)
		}
	}
	_, lerr := os.Lstat(filepath.Join(r.pinPath, layoutMapName))
	missingLayout := errors.Is(lerr, os.ErrNotExist)
	if len(missingMaps) == 0 && len(missingLinks) == 0 && !missingLayout {
		return nil, nil
	}
	slices.Sort(missingLinks)

	if err := os.MkdirAll(filepath.Join(r.pinPath, "links"), 0o700); err != nil {
		return nil, fmt.Errorf("pin path %s: %w", r.pinPath, err)
	}
	var errs []error
	for _, name := range missingMaps {
		m := r.pinned[name]
		if err := m.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("map %s: %w", name, err))
			continue
		}
		if err := m.Pin(filepath.Join(r.pinPath, name)); err != nil {
			errs = append(errs, fmt.Errorf("map %s: %w", name, err))
			continue
		}
		repinned = append(repinned, name)
	}
	for _, name := range missingLinks {
		l := r.links[name]
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("link of %s: %w", name, err))
			continue
		}
		if err := l.Pin(linkPin(r.pinPath, name)); err != nil {
			errs = append(errs, fmt.Errorf("link of %s: %w", name, err))
			continue
		}
		repinned = append(repinned, "links/"+filepath.Base(linkPin(r.pinPath, name)))
	}
	if missingLayout {
		if err := writeLayout(r.pinPath, r.layout, r.hoKey, r.tableSize); err != nil {
			errs = append(errs, err)
		} else {
			repinned = append(repinned, layoutMapName)
		}
	}
	// A directory made again is another inode: the lock that keeps a
	// second agent off this data path is taken on it too.
	if lock, err := lockPinPath(r.pinPath); err == nil {
		if r.lock != nil {
			_ = r.lock.Close()
		}
		r.lock = lock
	}
	if len(errs) > 0 {
		return repinned, fmt.Errorf("pin again under %s: %w", r.pinPath, errors.Join(errs...))
	}
	return repinned, nil
}
