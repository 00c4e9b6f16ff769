// Package gcpace keeps the garbage collector from running dozens of times
// a second over a small heap.
//
// Go collects when the heap has grown by GOGC percent (100) of what the
// last collection found live. The agent's live heap is small (a few MiB)
// while its HTTP stage allocates a few KiB per request, so at the default
// it collected every 4 MiB: ~12 times a second at 12k requests/s, each
// cycle ~3.7 ms of CPU and a stop-the-world that must interrupt the event
// loops sleeping in epoll_wait (~0.7 ms) — about 6 % of the agent's CPU.
//
// A Pacer raises GOGC after each collection so the heap may grow by at
// least Headroom bytes before the next (GOGC = Headroom / live, within
// [100, MaxPercent]); once the live heap reaches Headroom it is GOGC 100,
// Go's default. Memory costs at most Headroom more than the default, and
// a memory limit (GOMEMLIMIT) still bounds it. The operator's own GOGC
// (the environment variable) is left alone: the caller does not start a
// Pacer then.
package gcpace

import (
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// DefaultHeadroom is the agent's: the heap may grow by 16 MiB between
// collections, ~5× less often than at GOGC 100 under HTTP load. 64 MiB
// collected less often still, but the e2e SYN flood test lost packets
// more often with it (2 of 5 runs, against 0 of 4 at GOGC 100); whether
// the pacing or the test's own flakiness was the cause is not settled,
// so only an agent serving http services is paced (agent's l7Stage).
const DefaultHeadroom = 16 << 20

// MaxPercent bounds the GOGC a Pacer sets.
const MaxPercent = 2000

// liveMetric is the heap the last collection found live.
const liveMetric = "/gc/heap/live:bytes"

// Pacer sets GOGC from the live heap after each collection.
type Pacer struct {
	headroom uint64
	log      *slog.Logger

	mu      sync.Mutex
	stopped bool
	percent int // the GOGC set last (0: none yet)
	sample  []metrics.Sample
}

// Start starts a pacer with headroom bytes (> 0), GOGC being Go's
// default (100) until then; Stop ends it.
func Start(headroom uint64, log *slog.Logger) *Pacer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Pacer{headroom: headroom, log: log, sample: []metrics.Sample{{Name: liveMetric}}}
	p.adjust()
	p.arm()
	return p
}

// Percent is the GOGC the pacer set last.
func (p *Pacer) Percent() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.percent
}

// Stop ends the pacing; GOGC is 100 again.
func (p *Pacer) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return
	}
	p.stopped = true
	debug.SetGCPercent(100)
	p.percent = 100
}

// sentinel is an object whose finalizer runs after the collection that
// found it unreachable: the pacer's hook after each cycle. It holds a
// pointer so it is not one of the tiny allocations a finalizer may never
// run for.
type sentinel struct {
	p *Pacer
	_ [2]uintptr
}

// arm makes the next collection call adjust (and arm again).
func (p *Pacer) arm() {
	s := &sentinel{p: p}
	runtime.SetFinalizer(s, func(s *sentinel) {
		if s.p.adjust() {
			s.p.arm()
		}
	})
}

// adjust sets GOGC for the live heap now; false once stopped.
func (p *Pacer) adjust() bool {
	metrics.Read(p.sample)
	var live uint64
	if v := p.sample[0].Value; v.Kind() == metrics.KindUint64 {
		live = v.Uint64()
	}
	want := Percent(live, p.headroom)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return false
	}
	if want != p.percent {
		debug.SetGCPercent(want)
		if p.percent == 0 {
			p.log.Info("garbage collector paced", "gogc", want, "live_bytes", live, "headroom_bytes", p.headroom)
		}
		p.percent = want
	}
	return true
}

// minHeap is Go's smallest heap goal at GOGC 100 (its heapminimum): a
// live heap below it is counted as this much.
const minHeap = 4 << 20

// Percent is the GOGC that lets a heap with live bytes grow by headroom
// before the next collection, within [100, MaxPercent].
func Percent(live, headroom uint64) int {
	pc := headroom * 100 / max(live, minHeap)
	return int(min(max(pc, 100), MaxPercent))
}
