package retry

import (
	"math/rand/v2"
	"time"
)

// Backoff is exponential backoff with full jitter: before retry n (1 for the
// first retry) the delay is uniform in [0, min(Max, Base·2^(n-1))].
type Backoff struct {
	Base time.Duration
	Max  time.Duration
}

// Ceiling is the upper bound of the delay before retry n.
func (b Backoff) Ceiling(n int) time.Duration {
	if b.Base <= 0 || n < 1 {
		return 0
	}
	d := b.Base
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	if b.Max > 0 && d > b.Max {
		d = b.Max
	}
	return d
}

// Delay draws the delay before retry n. rnd may be nil (the global source).
func (b Backoff) Delay(n int, rnd *rand.Rand) time.Duration {
	c := b.Ceiling(n)
	if c <= 0 {
		return 0
	}
	if rnd != nil {
		return time.Duration(rnd.Int64N(int64(c) + 1))
	}
	return time.Duration(rand.Int64N(int64(c) + 1))
}
