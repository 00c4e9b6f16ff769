package testclock

import (
	"testing"
	"time"
)

func TestWallStepped(t *testing.T) {
	now := time.Now()
	for _, step := range []time.Duration{time.Hour, -time.Hour, 0, 24 * time.Hour} {
		m := WallStepped(t, now, step)
		if d := m.UnixNano() - now.UnixNano(); d != int64(step) {
			t.Errorf("step %v: wall moved %v", step, time.Duration(d))
		}
		if d := m.Sub(now); d != 0 {
			t.Errorf("step %v: monotonic moved %v", step, d)
		}
		if d := time.Until(m); d > 0 || d < -time.Second {
			t.Errorf("step %v: time.Until %v (should follow the monotonic reading)", step, d)
		}
	}
}
