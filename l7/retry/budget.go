package retry

import (
	"sync"
	"sync/atomic"
)

// DefaultMinRetries is the number of concurrent retries a budget always
// allows, so that a lone request can retry although 20% of 1 is 0.
const DefaultMinRetries = 3

// Budget caps concurrent retries at a share of the active requests (Envoy's
// retry budget): a pool that fails everything gets at most that many extra
// tries, not attempts times the load. It is safe for concurrent use and
// lock-free: counting a request in and out is one atomic add each.
type Budget struct {
	percent  atomic.Int64
	min      int64
	active   atomic.Int64
	retrying atomic.Int64
	peak     atomic.Int64
	denied   atomic.Uint64
}

// NewBudget returns a budget of percent of the active requests, never less
// than min concurrent retries.
func NewBudget(percent, min int) *Budget {
	b := &Budget{min: int64(min)}
	b.percent.Store(int64(percent))
	return b
}

// SetPercent changes the share (on reload).
func (b *Budget) SetPercent(percent int) { b.percent.Store(int64(percent)) }

// Start counts a request as active; Done must follow once.
func (b *Budget) Start() { b.active.Add(1) }

// Done ends a request counted by Start.
func (b *Budget) Done() { b.active.Add(-1) }

// Begin counts a request as active; the returned func ends it (once, however
// often it is called). Start and Done do the same without a closure.
func (b *Budget) Begin() (end func()) {
	b.Start()
	var once sync.Once
	return func() { once.Do(b.Done) }
}

// Acquire takes a retry from the budget; ok is false when the budget is
// spent. release must be called when the retry's try ends.
func (b *Budget) Acquire() (release func(), ok bool) {
	for {
		n := b.retrying.Load()
		if n >= b.limit() {
			b.denied.Add(1)
			return nil, false
		}
		if b.retrying.CompareAndSwap(n, n+1) {
			for p := b.peak.Load(); n+1 > p && !b.peak.CompareAndSwap(p, n+1); p = b.peak.Load() {
			}
			break
		}
	}
	var once sync.Once
	return func() { once.Do(func() { b.retrying.Add(-1) }) }, true
}

func (b *Budget) limit() int64 {
	n := b.active.Load() * b.percent.Load() / 100
	if n < b.min {
		n = b.min
	}
	return n
}

// BudgetStats is a snapshot of a budget.
type BudgetStats struct {
	Active   int    // requests in flight
	Retrying int    // retries in flight
	Limit    int    // retries allowed now
	Peak     int    // most retries in flight at once so far
	Denied   uint64 // retries refused so far
}

// Stats returns a snapshot (each counter read atomically, not all at once).
func (b *Budget) Stats() BudgetStats {
	return BudgetStats{
		Active: int(b.active.Load()), Retrying: int(b.retrying.Load()), Limit: int(b.limit()),
		Peak: int(b.peak.Load()), Denied: b.denied.Load(),
	}
}
