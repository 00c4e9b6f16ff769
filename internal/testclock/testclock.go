// Package testclock makes, for tests, the instants a program would see
// after a step of the wall clock (NTP's first sync, a VM resumed, `date
// -s`), without stepping the machine's clock: a time.Time whose wall
// reading is moved while its monotonic reading is kept. Code that keeps
// time on the monotonic clock (as Go's net package does for deadlines)
// treats it as the unmoved instant; code that reads the wall clock
// (UnixNano, Round(0), time.Unix) sees the step.
package testclock

import (
	"testing"
	"time"
	"unsafe"
)

// layout is time.Time's representation (stable since Go 1.9): with the
// hasMonotonic bit set in wall, wall's bits 30–62 are the seconds since
// 1885 and ext the monotonic reading. WallStepped checks what it did
// through the public API and fails the test if the layout ever differs.
type layout struct {
	wall uint64
	ext  int64
	loc  *time.Location
}

const (
	hasMonotonic = 1 << 63
	nsecShift    = 30
)

// WallStepped is at with its wall clock reading moved by step (whole
// seconds, within a year) and its monotonic reading kept: at as a process
// whose wall clock was stepped by -step would have recorded it (a step
// of +1h: at read an hour later by the wall clock, at the same moment).
func WallStepped(t testing.TB, at time.Time, step time.Duration) time.Time {
	t.Helper()
	if step%time.Second != 0 || step > 366*24*time.Hour || step < -366*24*time.Hour {
		t.Fatalf("testclock: a step of %v: whole seconds within a year only", step)
	}
	moved := at
	l := (*layout)(unsafe.Pointer(&moved))
	if l.wall&hasMonotonic == 0 {
		t.Fatalf("testclock: %v has no monotonic reading (make it with time.Now)", at)
	}
	l.wall += uint64(int64(step/time.Second)) << nsecShift
	if got := moved.Round(0).Sub(at.Round(0)); got != step {
		t.Fatalf("testclock: time.Time's layout changed: the wall reading moved by %v, not %v", got, step)
	}
	if got := moved.Sub(at); got != 0 {
		t.Fatalf("testclock: time.Time's layout changed: the monotonic reading moved by %v", got)
	}
	return moved
}
