package proxy

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/sluicelb/sluice/l7/accesslog"
	"github.com/sluicelb/sluice/l7/evloop"
	"github.com/sluicelb/sluice/l7/retry"
	"github.com/sluicelb/sluice/userspace/pool"
)

// DNSWaiter is implemented by pools whose addresses come from DNS names
// (*pool.Pool): a request that finds no usable address left can wait for
// the pool's next DNS answer instead of failing (the pool's only address
// refusing is what a name that moved looks like).
type DNSWaiter interface {
	// Reresolve asks for the pool's names to be looked up now and returns
	// a channel closed once the next lookup outcome is applied to the
	// pool; nil when no lookup is in flight and none can be started.
	Reresolve(now time.Time) <-chan struct{}
}

var _ DNSWaiter = (*pool.Pool)(nil)

// WhyWaitedForDNS is the access log's why of a try after which the
// request waited for the pool's next DNS answer (Try.DNSWait says how it
// ended).
const WhyWaitedForDNS = "waited-for-dns"

// Results of a DNS wait: Try.DNSWait and the result label of
// sluice_l7_dns_waits_total.
const (
	DNSWaitNewAddress   = "new-address"    // the answer brought an address the request has not tried: it goes on there
	DNSWaitNoNewAddress = "no-new-address" // the answer (or the failed lookup) changed nothing usable
	DNSWaitDeadline     = "deadline"       // the connect timeout or the total deadline came first
	DNSWaitClientGone   = "client-closed"  // the client went away while waiting
)

// maxDNSWaits bounds the DNS waits of one request (each one is bounded by
// the connect timeout and the total deadline, and needs a lookup in
// flight).
const maxDNSWaits = 2

// dnsWait is one request's state of the DNS-wait step.
type dnsWait struct {
	refused []netip.AddrPort // addresses that failed to connect with nothing sent
	waits   int
	granted int // tries after a wait that brought a new address: not counted against retry.attempts
}

// needsDNS reports whether a request whose try on addr ended with o should
// wait for the pool's next DNS answer before going on: the try failed to
// connect and sent nothing (whatever the method: nothing was delivered),
// the request can be sent again, and no active address it has not seen
// refuse is left. It records addr as refused.
func (s *Server) needsDNS(g *group, dw *dnsWait, addr netip.AddrPort, o retry.Outcome, replayable bool, now time.Time) bool {
	if g.dns == nil || o.Kind != retry.ConnectFailure || o.Sent {
		return false
	}
	if !slices.Contains(dw.refused, addr) {
		dw.refused = append(dw.refused, addr)
	}
	if !replayable || dw.waits >= maxDNSWaits {
		return false
	}
	for _, b := range s.backends(g, now) {
		// Ejected addresses do not count: they are out for failing.
		if b.State == pool.Active && !slices.Contains(dw.refused, b.Addr) {
			return false
		}
	}
	return true
}

// awaitDNS waits for the pool's next DNS answer, until it brings an active
// address the request has not seen refuse, no lookup is left in flight,
// the client goes away, or until passes. It returns how the wait ended
// ("" when there was nothing to wait for: no lookup in flight or
// possible) and how long it took.
func (s *Server) awaitDNS(ctx context.Context, g *group, dw *dnsWait, until time.Time) (result string, took time.Duration) {
	// On an event loop the wait runs aside, the loop serving others.
	evloop.Block(ctx, func() { result, took = s.awaitDNSBlocking(ctx, g, dw, until) })
	return result, took
}

func (s *Server) awaitDNSBlocking(ctx context.Context, g *group, dw *dnsWait, until time.Time) (result string, took time.Duration) {
	start := time.Now()
	ch := g.dns.Reresolve(start)
	if ch == nil {
		return "", 0
	}
	dw.waits++
	timer := time.NewTimer(until.Sub(start))
	defer timer.Stop()
	for ch != nil {
		select {
		case <-ctx.Done():
			return DNSWaitClientGone, time.Since(start)
		case <-timer.C:
			return DNSWaitDeadline, time.Since(start)
		case <-ch:
		}
		now := time.Now()
		for _, b := range s.backends(g, now) {
			if b.State == pool.Active && !slices.Contains(dw.refused, b.Addr) {
				dw.granted++
				return DNSWaitNewAddress, now.Sub(start)
			}
		}
		// Another of the pool's names may still be in flight.
		ch = g.dns.Reresolve(now)
	}
	return DNSWaitNoNewAddress, time.Since(start)
}

// waitForDNS is the step of a request after a failed try on addr: when
// needsDNS says so, it waits for the pool's next DNS answer and notes the
// wait in tr. next: the answer brought a new address, the request goes on
// there without a retry decision (the try is logged, the caller
// continues). done: the client went away while waiting, the request is
// over. Neither: the request goes on to the usual retry decision.
func (q *request) waitForDNS(addr netip.AddrPort, res tryResult, tr *accesslog.Try) (next, done bool) {
	s := q.s
	now := q.now()
	if !s.needsDNS(q.st.grp, &q.dns, addr, res.outcome, q.out.body.replayable(), now) {
		return false, false
	}
	result, took := s.awaitDNS(q.ctx, q.st.grp, &q.dns, minTime(now.Add(q.st.timeouts.Connect), q.deadline))
	if result == "" {
		return false, false
	}
	tr.DNSWait, tr.DNSWaitMillis = result, float64(took.Microseconds())/1000
	switch result {
	case DNSWaitClientGone:
		tr.Outcome, tr.Why = "client-closed", "the client went away while waiting for DNS"
		q.rec.Tries = append(q.rec.Tries, *tr)
		s.discard(res, false)
		q.rec.Status = statusClientClosed
		return false, true
	case DNSWaitNewAddress:
		// The same request goes on to the new address: a try the retry
		// policy does not count, nothing was sent.
		tr.Retry, tr.Why = true, WhyWaitedForDNS
		q.rec.Tries = append(q.rec.Tries, *tr)
		s.discard(res, true)
		return true, false
	}
	return false, false
}
