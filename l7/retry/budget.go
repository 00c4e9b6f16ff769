package retry

import "sync"

// DefaultMinRetries is the number of concurrent retries a budget always
// allows, so that a lone request can retry although 20% of 1 is 0.
const DefaultMinRetries = 3

// Budget caps concurrent retries at a share of the active requests (Envoy's
// retry budget): a pool that fails everything gets at most that many extra
// tries, not attempts times the load. It is safe for concurrent use.
type Budget struct {
	mu       sync.Mutex
	percent  int
	min      int
	active   int
	retrying int
	peak     int
	denied   uint64
}

// NewBudget returns a budget of percent of the active requests, never less
// than min concurrent retries.
func NewBudget(percent, min int) *Budget {
	return &Budget{percent: percent, min: min}
}

// SetPercent changes the share (on reload).
func (b *Budget) SetPercent(percent int) {
	b.mu.Lock()
	b.percent = percent
	b.mu.Unlock()
}

// Begin counts a request as active; the returned func ends it.
func (b *Budget) Begin() (end func()) {
	b.mu.Lock()
	b.active++
	b.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			b.mu.Lock()
			b.active--
			b.mu.Unlock()
		})
	}
}

// Acquire takes a retry from the budget; ok is false when the budget is
// spent. release must be called when the retry's try ends.
func (b *Budget) Acquire() (release func(), ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.retrying >= b.limitLocked() {
		b.denied++
		return nil, false
	}
	b.retrying++
	if b.retrying > b.peak {
		b.peak = b.retrying
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			b.mu.Lock()
			b.retrying--
			b.mu.Unlock()
		})
	}, true
}

func (b *Budget) limitLocked() int {
	n := b.active * b.percent / 100
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

// Stats returns a snapshot.
func (b *Budget) Stats() BudgetStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return BudgetStats{Active: b.active, Retrying: b.retrying, Limit: b.limitLocked(), Peak: b.peak, Denied: b.denied}
}
