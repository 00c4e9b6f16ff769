package discovery

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Reason says why an Update was published.
type Reason string

// Update reasons.
const (
	// ReasonAnswer: a good answer; Addrs is exactly its set.
	ReasonAnswer Reason = "answer"
	// ReasonHold: NXDOMAIN or an empty answer; the last good set is kept
	// until HoldUntil.
	ReasonHold Reason = "nxdomain-hold"
	// ReasonHoldExpired: the name stayed negative for the whole hold; Addrs
	// is empty, the consumer drains the old addresses.
	ReasonHoldExpired Reason = "hold-expired"
	// ReasonNegative: another negative answer after the hold expired; Addrs
	// stays empty.
	ReasonNegative Reason = "negative"
	// ReasonFailure: no server gave a usable reply (timeout, SERVFAIL,
	// REFUSED, garbage); Addrs is the last good set, unchanged.
	ReasonFailure Reason = "lookup-failed"
)

// AnswerRef identifies the answer an address came from.
type AnswerRef struct {
	Seq        uint64        // per-name answer sequence number, from 1
	Server     string        // server that gave the answer
	ReceivedAt time.Time     // when it arrived
	TTL        time.Duration // its TTL as received (not clamped)
}

// Expires is when the answer's TTL runs out.
func (r AnswerRef) Expires() time.Time { return r.ReceivedAt.Add(r.TTL) }

// Addr is one address of a name's current set.
type Addr struct {
	Addr netip.Addr
	// Answer is the latest good answer that returned the address.
	Answer AnswerRef
	// FirstSeen is when the address entered the set (it has been in every
	// published set since).
	FirstSeen time.Time
	// FirstSeq is the sequence number of the answer that first returned it.
	FirstSeq uint64
}

// Info describes where the address came from, for status output, e.g.
// "A 198.18.2.11 ttl 2s, answer #3 from 198.18.2.53:53 at 12:00:01.250,
// first seen in #1" (AAAA for an IPv6 address).
func (a Addr) Info() string {
	rr := "A"
	if !a.Addr.Is4() {
		rr = "AAAA"
	}
	return fmt.Sprintf("%s %s ttl %s, answer #%d from %s at %s, first seen in #%d",
		rr, a.Addr, a.Answer.TTL, a.Answer.Seq, a.Answer.Server,
		a.Answer.ReceivedAt.Format("15:04:05.000"), a.FirstSeq)
}

// Update is the state of one name after a lookup or a hold expiry. Addrs
// is always the complete set the consumer should serve for the name:
// replacing the name's previous set with it is the whole contract.
type Update struct {
	Name   string // fully qualified, lower case
	Seq    uint64 // per-name update sequence number, from 1
	Addrs  []Addr // sorted by address
	Reason Reason
	// Changed reports whether the address set differs from the previous
	// published Update's.
	Changed bool
	// Added and Removed are the addresses that entered and left the set.
	Added, Removed []netip.Addr

	// Answer is the good answer behind Addrs (zero when Addrs is empty
	// because the hold expired or no good answer was ever seen).
	Answer AnswerRef
	// Expires is when the answer's TTL runs out (for "TTL left").
	Expires time.Time
	// NextLookup is when the name is resolved next (TTL clamped and
	// jittered, or the retry backoff after a failure).
	NextLookup time.Time
	// HoldUntil is set while a negative answer is being held.
	HoldUntil time.Time

	// Rcode of the latest reply (dns.RcodeSuccess / dns.RcodeNameError),
	// or -1 if the latest lookup failed.
	Rcode int
	// Failure and Err describe the latest lookup when it failed.
	Failure FailureKind
	Err     error
	// Failures counts consecutive failed lookups.
	Failures int
	// Lookup is true when the Update is the outcome of a lookup, false
	// when a hold ran out between lookups (metrics count lookups by it).
	Lookup bool
	// Published is false for the Updates only observers see: outcomes
	// before anything was published (failures and held negative answers
	// before the first good answer).
	Published bool
	// At is when the Update was made.
	At time.Time
}

// Addresses returns the bare addresses of u, sorted.
func (u Update) Addresses() []netip.Addr {
	out := make([]netip.Addr, len(u.Addrs))
	for i, a := range u.Addrs {
		out[i] = a.Addr
	}
	return out
}

// TTLLeft is how long the current answer is still valid at now (0 when
// expired or there is none).
func (u Update) TTLLeft(now time.Time) time.Duration {
	if u.Expires.IsZero() || !now.Before(u.Expires) {
		return 0
	}
	return u.Expires.Sub(now)
}

// Diff returns the addresses in next but not in prev (added) and in prev
// but not in next (removed), each sorted. Inputs need not be sorted and
// may repeat addresses.
func Diff(prev, next []netip.Addr) (added, removed []netip.Addr) {
	p := sortedSet(prev)
	n := sortedSet(next)
	i, j := 0, 0
	for i < len(p) || j < len(n) {
		switch {
		case j == len(n) || (i < len(p) && p[i].Less(n[j])):
			removed = append(removed, p[i])
			i++
		case i == len(p) || n[j].Less(p[i]):
			added = append(added, n[j])
			j++
		default:
			i++
			j++
		}
	}
	return added, removed
}

func sortedSet(a []netip.Addr) []netip.Addr {
	s := slices.Clone(a)
	slices.SortFunc(s, netip.Addr.Compare)
	return slices.Compact(s)
}
