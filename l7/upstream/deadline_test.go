package upstream

import (
	"testing"
	"time"
)

func TestNeedSet(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := time.Millisecond
	for _, tc := range []struct {
		name       string
		want, have time.Time
		timeout    time.Duration
		set        bool
	}{
		{"same", t0, t0, time.Minute, false},
		{"none set yet", t0, time.Time{}, time.Minute, true},
		{"lift", time.Time{}, t0, time.Minute, true},
		{"earlier is always set", t0.Add(-ms), t0, time.Minute, true},
		{"later within the slack (20ms cap)", t0.Add(19 * ms), t0, time.Minute, false},
		{"later beyond the cap", t0.Add(20 * ms), t0, time.Minute, true},
		{"short timeout: slack is 1/32", t0.Add(5 * ms), t0, 160 * ms, true},
		{"short timeout within 1/32", t0.Add(5*ms - 1), t0, 160 * ms, false},
		{"no timeout (deadline only): moved", t0.Add(ms), t0, 0, true},
	} {
		if got := needSet(tc.want, tc.have, tc.timeout); got != tc.set {
			t.Errorf("%s: needSet = %v, want %v", tc.name, got, tc.set)
		}
	}
}
