package datapath

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestMain fails the package when its tests leave file descriptors open:
// every map, program, link, netns handle and lock a test opens must be
// closed by it (a leaked map fd keeps kernel memory alive; in the agent it
// would be a leak per reload).
func TestMain(m *testing.M) {
	// Let the runtime create its own descriptors (netpoller) first.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	before := openFDs()
	code := m.Run()
	if leaked := leakedFDs(before, openFDs()); code == 0 && len(leaked) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: tests leaked %d file descriptors:\n", len(leaked))
		for _, l := range leaked {
			fmt.Fprintln(os.Stderr, "  ", l)
		}
		code = 1
	}
	os.Exit(code)
}

// openFDs maps every open descriptor of the process to what it points at.
func openFDs() map[string]string {
	out := map[string]string{}
	entries, _ := os.ReadDir("/proc/self/fd")
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // the directory's own descriptor, closed by now
		}
		out[e.Name()] = target
	}
	return out
}

func leakedFDs(before, after map[string]string) []string {
	var leaked []string
	for fd, target := range after {
		if before[fd] != target {
			leaked = append(leaked, fd+" -> "+target)
		}
	}
	slices.Sort(leaked)
	return leaked
}

// TestLeakDetection: the detector sees a descriptor left open.
func TestLeakDetection(t *testing.T) {
	before := openFDs()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	leaked := leakedFDs(before, openFDs())
	f.Close()
	if len(leaked) != 1 {
		t.Fatalf("one open file, %d reported: %v", len(leaked), leaked)
	}
}
