package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
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

	older("services", &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 8, MaxEntries: MaxServices})
	if r, err := Open(Options{PinPath: pin, MaglevTableSize: 251, NoNeighbours: true}); !errors.Is(err, ebpf.ErrMapIncompatible) {
		if err == nil {
			r.Close()
		}
		t.Fatalf("open over a services map of another layout: %v, want ErrMapIncompatible", err)
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
