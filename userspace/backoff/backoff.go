// Package backoff is the one capped exponential backoff of sluice, shared
// by the L7 retries (l7/retry), passive ejection (l7/eject) and DNS
// re-resolution after failures (userspace/discovery).
//
// The n-th delay (n >= 1) has the ceiling Base·2^(n-1), capped at Max; a
// share of it, at most Jitter, is taken off at random so that what failed
// together does not come back together:
//
//	Jitter 1    "full jitter": uniform in [0, ceiling)        (retries)
//	Jitter 0.5  "equal jitter": uniform in [ceiling/2, ceiling) (DNS)
//	Jitter 0.1  at most a tenth taken off                      (ejection)
//	Jitter 0    the ceiling itself
//
// The random draw is injected (a func returning [0, 1)), so tests are
// deterministic.
package backoff

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// Backoff is a capped exponential backoff with jitter. The zero value has
// no delay at all. It is a value: safe for concurrent use.
type Backoff struct {
	Base time.Duration // first ceiling; <= 0: no delay
	Max  time.Duration // cap of the ceiling; <= Base: always Base
	// Jitter is the largest share of the ceiling taken off at random, in
	// [0, 1].
	Jitter float64
}

// Validate checks the fields: Base positive, Max not below it, Jitter in [0, 1].
func (b Backoff) Validate() error {
	switch {
	case b.Base <= 0:
		return fmt.Errorf("backoff base %s: must be positive", b.Base)
	case b.Max < b.Base:
		return fmt.Errorf("backoff max %s: must not be less than base %s", b.Max, b.Base)
	case b.Jitter < 0 || b.Jitter > 1:
		return fmt.Errorf("backoff jitter %v: must be between 0 and 1", b.Jitter)
	}
	return nil
}

// Ceiling is the delay before try n (n >= 1) without jitter:
// min(Max, Base·2^(n-1)); 0 when Base <= 0 or n < 1.
func (b Backoff) Ceiling(n int) time.Duration {
	if b.Base <= 0 || n < 1 {
		return 0
	}
	d := b.Base
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	if d > b.Max {
		d = max(b.Max, b.Base)
	}
	return d
}

// Delay draws the delay before try n: uniform in
// [Ceiling·(1-Jitter), Ceiling), from rnd (a draw in [0, 1); nil: the
// global source).
func (b Backoff) Delay(n int, rnd func() float64) time.Duration {
	c := b.Ceiling(n)
	if c <= 0 || b.Jitter <= 0 {
		return c
	}
	j := min(b.Jitter, 1)
	if rnd == nil {
		rnd = rand.Float64
	}
	r := rnd()
	low := float64(c) * (1 - j)
	return time.Duration(low + float64(c)*j*r)
}
