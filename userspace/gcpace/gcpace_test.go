package gcpace

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	for _, tc := range []struct {
		live, headroom uint64
		want           int
	}{
		{0, 64 << 20, 1600},         // counted as Go's 4 MiB minimum
		{1 << 20, 64 << 20, 1600},   // likewise
		{0, 1 << 30, MaxPercent},    // capped
		{8 << 20, 64 << 20, 800},    // 64 MiB more than 8 MiB
		{64 << 20, 64 << 20, 100},   // Go's default from there on
		{1 << 30, 64 << 20, 100},    // never below it
		{3 << 20, 64 << 20, 1600},   // the agent under load
		{40 << 20, 64 << 20, 160},   // 64/40
		{100 << 20, 200 << 20, 200}, // another headroom
	} {
		if got := Percent(tc.live, tc.headroom); got != tc.want {
			t.Errorf("Percent(%d, %d) = %d, want %d", tc.live, tc.headroom, got, tc.want)
		}
	}
}

// gogc reads the GOGC in force.
func gogc() int {
	v := debug.SetGCPercent(100)
	debug.SetGCPercent(v)
	return v
}

// TestPacerFollowsCollections: the pacer sets GOGC at start and again
// after collections (its finalizer hook re-arms), and Stop puts 100 back.
func TestPacerFollowsCollections(t *testing.T) {
	defer debug.SetGCPercent(gogc())
	p := Start(1<<40, nil) // a headroom no test heap reaches: MaxPercent
	if got := gogc(); got != MaxPercent || p.Percent() != MaxPercent {
		t.Fatalf("GOGC %d (pacer %d) after Start, want %d", got, p.Percent(), MaxPercent)
	}
	// Someone else changes GOGC: the pacer puts its own back after the
	// next collections (the hook runs after each).
	for range 3 {
		debug.SetGCPercent(100)
		p.mu.Lock()
		p.percent = 100
		p.mu.Unlock()
		deadline := time.Now().Add(5 * time.Second)
		for gogc() != MaxPercent {
			if time.Now().After(deadline) {
				t.Fatal("GOGC not set again after collections")
			}
			runtime.GC()
			time.Sleep(time.Millisecond)
		}
	}
	p.Stop()
	if got := gogc(); got != 100 {
		t.Fatalf("GOGC %d after Stop, want 100", got)
	}
	runtime.GC()
	runtime.GC()
	if got := gogc(); got != 100 {
		t.Fatalf("GOGC %d after collections past Stop, want 100 (the hook ended)", got)
	}
}
