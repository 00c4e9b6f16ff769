package discovery

import (
	"errors"
	"net/netip"
	"slices"
	"time"

	"github.com/sluicelb/sluice/userspace/backoff"
)

// nameState is the pure state machine of one watched name: it turns
// lookup outcomes and the passing of time into Updates and the time of
// the next lookup. It does no I/O and reads no clock, so it is tested
// directly.
type nameState struct {
	cfg   Config
	name  string
	rand  func() float64 // [0, 1)
	stats *Stats

	answerSeq uint64
	updateSeq uint64

	good      bool      // a good (positive) answer was seen
	last      AnswerRef // the latest good answer
	current   []Addr    // the set consumers have (or would have)
	published bool      // an Update was handed to the consumer

	holdUntil    time.Time // non-zero while a negative answer is held
	lastNegative bool      // the latest lookup outcome was a negative answer
	negatives    int       // consecutive negative answers
	failures     int       // consecutive failed lookups

	latest Update // the latest Update, published or not (for status)
}

// outcome is what the state machine decided after an event.
type outcome struct {
	update  Update
	publish bool      // hand the Update to the consumer
	next    time.Time // next lookup; zero: unchanged
}

func newNameState(cfg Config, name string, rnd func() float64, stats *Stats) *nameState {
	return &nameState{cfg: cfg, name: name, rand: rnd, stats: stats}
}

// refreshDelay is the TTL clamped to [MinTTL, MaxTTL], shortened by up to
// Jitter of itself, never below MinTTL.
func (s *nameState) refreshDelay(ttl time.Duration) time.Duration {
	d := min(max(ttl, s.cfg.MinTTL), s.cfg.MaxTTL)
	d -= time.Duration(float64(d) * s.cfg.Jitter * s.rand())
	return max(d, s.cfg.MinTTL)
}

// backoff is the delay before retry n (n >= 1): BackoffBase doubled per
// retry up to BackoffMax, then "equal jitter" (between half and all of it).
func (s *nameState) backoff(n int) time.Duration {
	return backoff.Backoff{Base: s.cfg.BackoffBase, Max: s.cfg.BackoffMax, Jitter: 0.5}.Delay(n, s.rand)
}

// holdDeadline is when tick must run to expire a hold (zero: none due).
// A hold only expires while the latest outcome is negative: a transport
// failure never empties a set.
func (s *nameState) holdDeadline() time.Time {
	if s.holdUntil.IsZero() || !s.lastNegative {
		return time.Time{}
	}
	return s.holdUntil
}

// onAnswer handles a usable reply.
func (s *nameState) onAnswer(now time.Time, a Answer) outcome {
	s.failures = 0
	if a.Negative() {
		return s.onNegative(now, a)
	}
	s.negatives = 0
	s.lastNegative = false
	s.holdUntil = time.Time{}
	s.answerSeq++
	s.good = true
	s.published = true
	s.last = AnswerRef{Seq: s.answerSeq, Server: a.Server, ReceivedAt: a.ReceivedAt, TTL: a.TTL}
	prev := make(map[netip.Addr]Addr, len(s.current))
	for _, c := range s.current {
		prev[c.Addr] = c
	}
	set := make([]Addr, 0, len(a.Addrs))
	for _, ip := range a.Addrs {
		e := Addr{Addr: ip, Answer: s.last, FirstSeen: now, FirstSeq: s.answerSeq}
		if p, ok := prev[ip]; ok {
			e.FirstSeen, e.FirstSeq = p.FirstSeen, p.FirstSeq
		}
		set = append(set, e)
	}
	next := now.Add(s.refreshDelay(a.TTL))
	u := s.make(now, ReasonAnswer, set, next)
	u.Rcode = a.Rcode
	return outcome{update: u, publish: true, next: next}
}

// onNegative handles NXDOMAIN and NOERROR without A or AAAA records.
func (s *nameState) onNegative(now time.Time, a Answer) outcome {
	s.negatives++
	s.lastNegative = true
	next := now.Add(max(s.backoff(s.negatives), s.cfg.MinTTL))
	reason := ReasonNegative
	switch {
	case !s.holdUntil.IsZero():
		// Already holding: expire now if due, else keep holding.
		if !now.Before(s.holdUntil) {
			return s.expire(now, next, a.Rcode)
		}
		reason = ReasonHold
	case len(s.current) > 0 || !s.published:
		// Something to protect: the last good set, or (before anything
		// was published) whatever the consumer had before we started,
		// e.g. addresses adopted across an agent restart.
		s.holdUntil = now.Add(s.cfg.NXDomainHold)
		s.stats.holdsStarted.Add(1)
		if s.cfg.NXDomainHold <= 0 {
			return s.expire(now, next, a.Rcode)
		}
		reason = ReasonHold
	}
	u := s.make(now, reason, s.current, next)
	u.Rcode = a.Rcode
	// Before the first publication a hold is silent: nothing to keep
	// for the consumer, and an empty set must wait for the hold.
	return outcome{update: u, publish: s.published, next: next}
}

// expire ends a hold: the set becomes empty.
func (s *nameState) expire(now, next time.Time, rcode int) outcome {
	s.holdUntil = time.Time{}
	s.stats.holdsExpired.Add(1)
	s.published = true
	u := s.make(now, ReasonHoldExpired, nil, next)
	u.Rcode = rcode
	s.latest = u
	return outcome{update: u, publish: true, next: next}
}

// onFailure handles a lookup where no server gave a usable reply.
func (s *nameState) onFailure(now time.Time, err error) outcome {
	s.failures++
	s.lastNegative = false
	next := now.Add(s.backoff(s.failures))
	u := s.make(now, ReasonFailure, s.current, next)
	u.Rcode = -1
	u.Err = err
	var le *LookupError
	if errors.As(err, &le) {
		u.Failure = le.Kind
	}
	// Nothing is published before the first publication: the consumer
	// keeps whatever it had, the watcher retries.
	return outcome{update: u, publish: s.published, next: next}
}

// tick expires a due hold.
func (s *nameState) tick(now time.Time) (outcome, bool) {
	if d := s.holdDeadline(); d.IsZero() || now.Before(d) {
		return outcome{}, false
	}
	o := s.expire(now, s.latest.NextLookup, s.latest.Rcode)
	return o, true
}

// make builds the Update for the new set and records it as current.
func (s *nameState) make(now time.Time, r Reason, set []Addr, next time.Time) Update {
	added, removed := Diff(addrsOf(s.current), addrsOf(set))
	s.updateSeq++
	u := Update{
		Name:       s.name,
		Seq:        s.updateSeq,
		Addrs:      slices.Clone(set),
		Reason:     r,
		Changed:    len(added)+len(removed) > 0,
		Added:      added,
		Removed:    removed,
		NextLookup: next,
		HoldUntil:  s.holdUntil,
		Failures:   s.failures,
		At:         now,
	}
	if len(set) > 0 {
		u.Answer = s.last
		u.Expires = s.last.Expires()
	}
	s.current = set
	s.latest = u
	return u
}

func addrsOf(set []Addr) []netip.Addr {
	out := make([]netip.Addr, len(set))
	for i, a := range set {
		out[i] = a.Addr
	}
	return out
}
