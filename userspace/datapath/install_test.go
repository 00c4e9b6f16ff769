package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
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
