package discovery

import (
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Stats counts what the resolver and the watcher did. The zero value is
// ready; all methods are safe for concurrent use. A metrics collector
// reads Snapshot at scrape time.
type Stats struct {
	lookups   atomic.Uint64
	answers   atomic.Uint64
	nxdomain  atomic.Uint64
	empty     atomic.Uint64
	truncated atomic.Uint64

	lookupFailures [numKinds]atomic.Uint64 // every server failed
	serverFailures [numKinds]atomic.Uint64 // one server failed (failover may have saved the lookup)

	addrsAdded       atomic.Uint64
	addrsRemoved     atomic.Uint64
	holdsStarted     atomic.Uint64
	holdsExpired     atomic.Uint64
	refreshes        atomic.Uint64
	refreshesLimited atomic.Uint64
}

const numKinds = 5

func kindIndex(k FailureKind) int {
	switch k {
	case FailTimeout:
		return 0
	case FailServfail:
		return 1
	case FailRefused:
		return 2
	case FailGarbage:
		return 3
	default:
		return 4
	}
}

// StatsSnapshot is a copy of the counters.
type StatsSnapshot struct {
	Lookups   uint64 // Resolver.Lookup calls
	Answers   uint64 // lookups that got a usable reply (including negative ones)
	NXDomain  uint64 // of which NXDOMAIN
	Empty     uint64 // of which NOERROR without A records
	Truncated uint64 // UDP replies retried over TCP

	LookupFailures map[FailureKind]uint64 // lookups where every server failed, by the last kind
	ServerFailures map[FailureKind]uint64 // single-server failures, by kind

	AddrsAdded       uint64 // addresses that appeared in a published set
	AddrsRemoved     uint64 // addresses that left a published set
	HoldsStarted     uint64 // negative answers that started a hold
	HoldsExpired     uint64 // holds that ran out (an empty set was published)
	Refreshes        uint64 // Refresh calls that triggered a lookup
	RefreshesLimited uint64 // Refresh calls refused by the rate limit
}

// Snapshot copies the counters.
func (s *Stats) Snapshot() StatsSnapshot {
	out := StatsSnapshot{
		Lookups:          s.lookups.Load(),
		Answers:          s.answers.Load(),
		NXDomain:         s.nxdomain.Load(),
		Empty:            s.empty.Load(),
		Truncated:        s.truncated.Load(),
		LookupFailures:   make(map[FailureKind]uint64, numKinds),
		ServerFailures:   make(map[FailureKind]uint64, numKinds),
		AddrsAdded:       s.addrsAdded.Load(),
		AddrsRemoved:     s.addrsRemoved.Load(),
		HoldsStarted:     s.holdsStarted.Load(),
		HoldsExpired:     s.holdsExpired.Load(),
		Refreshes:        s.refreshes.Load(),
		RefreshesLimited: s.refreshesLimited.Load(),
	}
	for _, k := range FailureKinds() {
		out.LookupFailures[k] = s.lookupFailures[kindIndex(k)].Load()
		out.ServerFailures[k] = s.serverFailures[kindIndex(k)].Load()
	}
	return out
}

func (s *Stats) serverFailure(k FailureKind) { s.serverFailures[kindIndex(k)].Add(1) }
func (s *Stats) lookupFailure(k FailureKind) { s.lookupFailures[kindIndex(k)].Add(1) }

func (s *Stats) answer(a Answer) {
	s.answers.Add(1)
	switch {
	case a.Rcode == dns.RcodeNameError:
		s.nxdomain.Add(1)
	case len(a.Addrs) == 0:
		s.empty.Add(1)
	}
}

// Clock is the time source; tests inject a fake one.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer the watcher uses.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }
