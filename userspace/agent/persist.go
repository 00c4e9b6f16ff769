package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/sluicelb/sluice/userspace/pool"
)

// StateFile is where an agent whose admin socket is socket keeps the
// decisions it persists across restarts: next to the socket, in the
// runtime directory (/run/sluice by default), so the state lives as long
// as the pinned maps do — both are gone after a reboot — and every agent
// (one admin socket each) has its own. `sluice teardown` removes it.
func StateFile(socket string) string {
	return filepath.Join(filepath.Dir(socket), "state.json")
}

// stateVersion is the layout version of the state file; a file of another
// version is ignored (and logged), never half-read.
const stateVersion = 1

// savedState is the state file.
type savedState struct {
	Version int                     `json:"version"`
	Pools   map[string][]savedEntry `json:"pools"`
}

// savedEntry is one address's pool.Saved.
type savedEntry struct {
	Address       string     `json:"address"`
	State         string     `json:"state"`
	Held          bool       `json:"held,omitempty"`
	Cause         string     `json:"cause,omitempty"`
	Since         time.Time  `json:"since"`
	DrainDeadline *time.Time `json:"drain_deadline,omitempty"`
	EjectedUntil  *time.Time `json:"ejected_until,omitempty"`
	Ejections     int        `json:"ejections,omitempty"`
}

var savedStates = map[string]pool.State{
	pool.Draining.String(): pool.Draining,
	pool.Ejected.String():  pool.Ejected,
	pool.Removed.String():  pool.Removed,
}

// stateStore persists what the agent decided and the data path's slot
// states cannot carry: operator holds (also of DNS-derived addresses and
// of addresses already removed), drain deadlines, ejection ends and
// counts. It writes the file only when its content changes, atomically
// (a temporary file renamed into place). Its own lock guards it.
type stateStore struct {
	path string // "": nothing is persisted
	log  interface {
		Warn(msg string, args ...any)
		Info(msg string, args ...any)
	}

	mu    sync.Mutex
	dirty bool
	last  []byte
}

// markDirty asks for the state to be saved at the next save.
func (s *stateStore) markDirty() {
	s.mu.Lock()
	s.dirty = true
	s.mu.Unlock()
}

// load reads the state file: the saved addresses by pool. A missing file
// is an empty state; an unreadable or foreign one is logged and ignored.
func (s *stateStore) load() map[string]map[netip.AddrPort]pool.Saved {
	if s.path == "" {
		return nil
	}
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		s.log.Warn("saved state not read, operator drains and ejections start afresh", "file", s.path, "err", err)
		return nil
	}
	var st savedState
	if err := json.Unmarshal(data, &st); err != nil || st.Version != stateVersion {
		s.log.Warn("saved state ignored, operator drains and ejections start afresh", "file", s.path,
			"version", st.Version, "want_version", stateVersion, "err", err)
		return nil
	}
	out := make(map[string]map[netip.AddrPort]pool.Saved, len(st.Pools))
	for name, entries := range st.Pools {
		m := make(map[netip.AddrPort]pool.Saved, len(entries))
		for _, e := range entries {
			addr, err := netip.ParseAddrPort(e.Address)
			state, ok := savedStates[e.State]
			if err != nil || !ok {
				continue
			}
			sv := pool.Saved{State: state, Held: e.Held, Cause: e.Cause, Since: e.Since, Ejections: e.Ejections}
			if e.DrainDeadline != nil {
				sv.DrainDeadline = *e.DrainDeadline
			}
			if e.EjectedUntil != nil {
				sv.EjectedUntil = *e.EjectedUntil
			}
			m[addr] = sv
		}
		out[name] = m
	}
	s.mu.Lock()
	s.last = data
	s.mu.Unlock()
	return out
}

// save writes pools' saved states when marked dirty and changed.
func (s *stateStore) save(pools map[string]*pool.Pool) error {
	if s.path == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.dirty {
		return nil
	}
	st := savedState{Version: stateVersion, Pools: make(map[string][]savedEntry)}
	for name, p := range pools {
		saved := p.SavedAll()
		if len(saved) == 0 {
			continue
		}
		entries := make([]savedEntry, 0, len(saved))
		for addr, sv := range saved {
			e := savedEntry{Address: addr.String(), State: sv.State.String(), Held: sv.Held, Cause: sv.Cause,
				Since: sv.Since, Ejections: sv.Ejections}
			if !sv.DrainDeadline.IsZero() {
				d := sv.DrainDeadline
				e.DrainDeadline = &d
			}
			if !sv.EjectedUntil.IsZero() {
				u := sv.EjectedUntil
				e.EjectedUntil = &u
			}
			entries = append(entries, e)
		}
		slices.SortFunc(entries, func(x, y savedEntry) int {
			a, _ := netip.ParseAddrPort(x.Address)
			b, _ := netip.ParseAddrPort(y.Address)
			return a.Compare(b)
		})
		st.Pools[name] = entries
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode saved state: %w", err)
	}
	data = append(data, '\n')
	if bytes.Equal(data, s.last) {
		s.dirty = false
		return nil
	}
	if err := writeFileAtomic(s.path, data); err != nil {
		return err // dirty stays: retried on the next save
	}
	s.last, s.dirty = data, false
	return nil
}

// writeFileAtomic writes data to a temporary file next to path (mode
// 0600) and renames it into place, so a reader never sees half a file.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	f, err := os.CreateTemp(dir, ".state-*.tmp")
	if err != nil {
		return fmt.Errorf("write saved state: %w", err)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write saved state %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("move saved state into place: %w", err)
	}
	return nil
}
