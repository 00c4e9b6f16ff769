package proxy

import (
	"math/rand/v2"
	"sync/atomic"

	"github.com/sluicelb/sluice/userspace/pool"
)

// Candidate is an address a request may go to.
type Candidate struct {
	// Backend is the address with its state and weight. It points into a
	// copy of the pool's addresses that other requests share: read only.
	Backend  *pool.Backend
	InFlight int // requests in flight to it from this service
}

// Selector picks the backend of a try among candidates (never empty). It
// must be safe for concurrent use.
type Selector interface {
	Select(cands []Candidate) int
}

// LeastRequests is the power of two random choices: of two candidates drawn
// at random, the one with fewer requests in flight per unit of weight.
// It spreads load almost like a full least-requests scan at O(1) and
// avoids sending a burst to the one idle backend.
type LeastRequests struct{}

var _ Selector = LeastRequests{}

// Select implements Selector.
func (LeastRequests) Select(cands []Candidate) int {
	n := len(cands)
	if n == 1 {
		return 0
	}
	a := rand.IntN(n)
	b := rand.IntN(n - 1)
	if b >= a {
		b++
	}
	if load(cands[b]) < load(cands[a]) {
		return b
	}
	return a
}

func load(c Candidate) float64 {
	w := c.Backend.Weight
	if w == 0 {
		w = 1
	}
	return float64(c.InFlight+1) / float64(w)
}

// RoundRobin cycles through the candidates in address order (tests, and
// operators who want it).
type RoundRobin struct{ next *atomic.Uint64 }

// NewRoundRobin returns a round-robin selector.
func NewRoundRobin() RoundRobin { return RoundRobin{next: new(atomic.Uint64)} }

var _ Selector = NewRoundRobin()

// Select implements Selector.
func (r RoundRobin) Select(cands []Candidate) int {
	return int((r.next.Add(1) - 1) % uint64(len(cands)))
}
