package proxy

import (
	"sync"
	"time"
)

// workers runs client connections on goroutines that outlive them: a
// goroutine that served a connection waits for the next one instead of
// ending. A new goroutine starts on a small stack that a request's first
// pass through the pipeline grows (the runtime copies it, two or three
// times, each copy walking every frame): with a connection per request
// that was ~4 % of the CPU the proxy spent. A kept goroutine keeps its
// grown stack (until a garbage collection finds it mostly unused and
// halves it).
//
// Idle goroutines are a stack, the most recently idle on top (its stack
// and caches are the warmest); those idle longer than workerIdle end, as
// do all of them when the server stops.
type workers struct {
	mu       sync.Mutex
	idle     []*worker
	stopped  bool
	cleaning bool // a clean is due
	alive    int  // goroutines, busy and idle
}

// worker is one kept goroutine.
type worker struct {
	run   chan func() // its next job (nil: end); never blocks the sender
	since time.Time   // idle since, under workers.mu
}

// workerIdle is how long a goroutine without a connection is kept.
const workerIdle = 10 * time.Second

// maxIdleWorkers bounds the goroutines kept without a connection (a burst
// of connections leaves at most this many behind).
const maxIdleWorkers = 4096

// Go runs fn on an idle goroutine, or on a new one when none is.
func (p *workers) Go(fn func()) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		w := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		w.run <- fn
		return
	}
	p.alive++
	p.mu.Unlock()
	go p.loop(&worker{run: make(chan func(), 1)}, fn)
}

// loop runs fn, then the jobs given to w until it is told to end.
func (p *workers) loop(w *worker, fn func()) {
	defer func() {
		p.mu.Lock()
		p.alive--
		p.mu.Unlock()
	}()
	for fn != nil {
		fn()
		if !p.park(w) {
			return
		}
		fn = <-w.run
	}
}

// park makes w idle; false when it is to end instead.
func (p *workers) park(w *worker) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped || len(p.idle) >= maxIdleWorkers {
		return false
	}
	w.since = time.Now()
	p.idle = append(p.idle, w)
	if !p.cleaning {
		p.cleaning = true
		time.AfterFunc(workerIdle, p.clean)
	}
	return true
}

// clean ends the goroutines idle for workerIdle or longer (at the bottom
// of the stack).
func (p *workers) clean() {
	p.mu.Lock()
	cut := time.Now().Add(-workerIdle)
	n := 0
	for n < len(p.idle) && !p.idle[n].since.After(cut) {
		n++
	}
	old := make([]*worker, n)
	copy(old, p.idle)
	rest := copy(p.idle, p.idle[n:])
	clear(p.idle[rest:])
	p.idle = p.idle[:rest]
	p.cleaning = len(p.idle) > 0 && !p.stopped
	if p.cleaning {
		time.AfterFunc(p.idle[0].since.Add(workerIdle).Sub(time.Now())+time.Millisecond, p.clean)
	}
	p.mu.Unlock()
	for _, w := range old {
		w.run <- nil
	}
}

// stop ends the idle goroutines, and each busy one when its job ends.
func (p *workers) stop() {
	p.mu.Lock()
	p.stopped = true
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, w := range idle {
		w.run <- nil
	}
}

// counts is how many goroutines there are, and how many of them wait for
// a job.
func (p *workers) counts() (alive, idle int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.alive, len(p.idle)
}
