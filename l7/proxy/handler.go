package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/sluicelb/sluice/l7/accesslog"
	"github.com/sluicelb/sluice/l7/eject"
	"github.com/sluicelb/sluice/l7/evloop"
	"github.com/sluicelb/sluice/l7/retry"
	"github.com/sluicelb/sluice/l7/route"
	"github.com/sluicelb/sluice/l7/service"
	"github.com/sluicelb/sluice/l7/upstream"
	"github.com/sluicelb/sluice/userspace/pool"
)

// Status written when the client went away before the response (nginx's 499).
const statusClientClosed = 499

// outRequest is what every try of one request sends.
type outRequest struct {
	upgrade string // the protocol asked for with Upgrade ("" when none)
	method  string
	uri     string
	host    string      // Host header sent
	header  http.Header // the client's, written by writeForwardHeader
	// trailer is where the client's request trailers are once its body
	// is read (net/http fills the request's Trailer then); nil when the
	// request cannot have any.
	trailer *http.Header
	fwd     forwarded
	body    *reqBody
	// underscoreOK: client.underscore_headers allows header and trailer
	// fields named with an underscore.
	underscoreOK bool
	// fastOK: a response to this request may be read by the fast path
	// (h1fast.go): its client is on sluice's HTTP/1 loop and no response
	// header rule or Location rewrite applies.
	fastOK bool
	// bodyStore and respFor live here to save allocations: body points to
	// bodyStore; respFor is what http.ReadResponse is told the request was.
	bodyStore reqBody
	respFor   http.Request
}

// tryResult is one try's result.
type tryResult struct {
	conn       *upstream.Conn
	resp       *http.Response
	outcome    retry.Outcome
	phase      string // connect, send, read, total
	err        error
	clientGone bool
	// spared says why the try, though it failed, says nothing about the
	// backend (sparedNot: it does): such a try counts toward no ejection
	// and waits for no DNS answer.
	spared spareReason
	// h2 is the try's stream when the upstream is HTTP/2 (conn is nil
	// then; see h2upstream.go).
	h2 *h2Stream
	// fast: the response was read by the fast path (h1fast.go); resp has
	// no header map then.
	fast *fastHead
	// early: the backend answered before the request's end, and the
	// rest of it was not sent (see Server.exchange).
	early bool
	// resent counts the times the request was sent again on another
	// pooled connection, the one taken having been closed by the backend
	// while idle (stale; see Server.try).
	resent int
}

// dialSpared is why a failed dial is not the backend's failure
// (sparedNot: it is).
func dialSpared(err error) spareReason {
	switch {
	case errors.Is(err, upstream.ErrAddrFull):
		return sparedLocal
	case upstream.LocalFailure(err):
		return sparedHost
	}
	return sparedNot
}

// spareReason is why a failed try is not the backend's failure.
type spareReason uint8

const (
	sparedNot spareReason = iota // the backend's outcome, judged as usual
	// sparedLocal: sluice held the try back (the address at its
	// connection limit); the client gets a 503 of sluice's own.
	sparedLocal
	// sparedHost: the dial failed for lack of this host's resources
	// (file descriptors, local ports, memory: upstream.LocalFailure);
	// another backend may be tried, none is blamed.
	sparedHost
	// sparedRemoved: the address was removed (drain_timeout passed)
	// between the pick and the connection; nothing was sent.
	sparedRemoved
	// sparedRefused: the response was past the service's response header
	// limits (upstream.max_header_bytes, max_header_count). The client
	// gets a 502; the try is not retried (another backend would most
	// likely answer alike, after running the request once more) and not
	// counted against the backend (a client could make a backend that
	// reflects its headers look broken).
	sparedRefused
	// sparedClientStall: the backend reset the exchange while the
	// client's request body had stalled (clientStall or longer): the
	// backend may have given up on the client (its own body timeout), so
	// a slow client could otherwise get backends ejected.
	sparedClientStall
)

// request is the state of one request being proxied, shared by the steps
// of ServeHTTP: admit, pick, try, decide, respond.
type request struct {
	s *Server
	w http.ResponseWriter
	r *http.Request
	// ctx ends when the client goes away: the request's context under
	// net/http's server, the connection's under the HTTP/1 loop (h1.go).
	ctx      context.Context
	st       *settings // the settings the request started with
	rec      *accesslog.Record
	start    time.Time
	deadline time.Time   // timeouts.total from start
	cw       clientWatch // closes the backend connection in use when the client goes away
	out      outRequest  // what every try sends
	tried    []netip.AddrPort
	triedArr [4]netip.AddrPort
	cands    [8]Candidate // pick's room (not an allocation per request)
	dns      dnsWait      // the DNS-wait step's state (dnswait.go)
	release  func()       // the retry budget token of the retry in progress
	removals uint64       // Server.removals when the request began (removedSince)
	slots    requestSlots // the request's places in the request limits
	peer     peer         // the client's address, trusted or not (parsed once)
	abort    bool         // the response was cut short: the client must see an abort
}

// ServeHTTP proxies one request: admit it, then pick a backend, try it,
// decide whether to try again, and respond with the outcome. It serves
// net/http's server (HTTP/2, TLS, h2c) and sluice's HTTP/1 loop (h1.go)
// alike: w is the loop's *h1Response there.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st, status, miss := s.cfg.Load().route(r)
	h1, _ := w.(*h1Response)
	var q *request
	if h1 != nil && h1.c.req != nil {
		// The connection's last request's state (see finish).
		q, h1.c.req = h1.c.req, nil
		*q = request{}
	} else {
		q = new(request)
	}
	q.s, q.w, q.r, q.ctx, q.st, q.start, q.removals = s, w, r, r.Context(), st, time.Now(), s.removals.Load()
	if h1 != nil {
		q.ctx = h1.c.ctx
		q.peer = h1.c.peer.with(st.svc.TrustedProxies) // parsed once per connection
	} else {
		q.peer = parsePeer(r.RemoteAddr, st.svc.TrustedProxies)
	}
	routeName := st.route
	if status != 0 {
		routeName = ""
	}
	q.deadline = q.start.Add(q.st.timeouts.Total)
	q.tried = q.triedArr[:0]
	// timeouts.total bounds the whole exchange, writing the response to
	// the client included: a client that stops reading cannot hold the
	// request, nor the backend connection it streams from, past it.
	_ = setWriteDeadline(w, q.deadline)
	q.rec = s.records.Get().(*accesslog.Record)
	*q.rec = accesslog.Record{
		Service: s.name, Route: routeName, Client: r.RemoteAddr, Method: r.Method, Host: r.Host,
		URI: r.RequestURI, Proto: r.Proto, Tries: q.rec.Tries[:0],
		RequestID: s.requestID(r, st, q.peer),
	}
	defer q.finish()
	// client.max_requests: past it, a fast 503 before anything is read.
	if n := s.active.Add(1); n > int64(s.limits.MaxRequests) {
		s.active.Add(-1)
		w.Header().Set("Retry-After", "1")
		s.fail(w, q.rec, http.StatusServiceUnavailable, "overload: client.max_requests ("+strconv.Itoa(s.limits.MaxRequests)+") requests in flight")
		s.obs.Refused(s.name, limitRequests)
		return
	}
	q.slots.active = true
	defer q.releaseSlots()
	// client.max_requests_per_ip: one client address (an IPv6 /64) may
	// not hold the listener's requests (HTTP/2 streams need no new
	// connections); behind a trusted proxy, the address it names.
	if key, ok := requestKey(q.peer, r.Header, st.svc.TrustedProxies); ok {
		if !s.activeIP.acquire(key) {
			w.Header().Set("Retry-After", "1")
			s.fail(w, q.rec, http.StatusTooManyRequests, "client.max_requests_per_ip ("+strconv.Itoa(s.limits.MaxRequestsPerIP)+") requests in flight from this client's address")
			s.obs.Refused(s.name, limitRequestsPerIP)
			return
		}
		q.slots.setKey(key)
	}
	if lim := st.maxRequests; lim > 0 && status == 0 {
		// The route's max_requests: its share of the listener's.
		if n := st.active.Add(1); n > int64(lim) {
			st.active.Add(-1)
			w.Header().Set("Retry-After", "1")
			s.fail(w, q.rec, http.StatusServiceUnavailable, "overload: the route's max_requests ("+strconv.Itoa(lim)+") requests in flight")
			s.obs.Refused(s.name, limitRouteRequests)
			return
		}
		q.slots.route = st.active
	}
	if !q.admit() {
		return
	}
	if r.TLS != nil && s.tlsOn {
		if cs := s.certs.Load(); cs.Misdirected(r.TLS.ServerName, r.Host) {
			s.fail(w, q.rec, http.StatusMisdirectedRequest,
				"misdirected: the connection's certificate (SNI "+strconv.Quote(r.TLS.ServerName)+") is not the one for host "+strconv.Quote(r.Host))
			return
		}
	}
	if status != 0 {
		s.fail(w, q.rec, status, miss)
		return
	}
	s.budget.Start()
	defer s.budget.Done()
	// A client that goes away aborts the try or the response in progress.
	if h1 != nil {
		h1.c.watch(&q.cw) // the loop's watch of the connection (no context.AfterFunc)
	} else {
		defer context.AfterFunc(q.ctx, q.cw.fire)()
	}
	if !q.prepare() {
		return
	}
	defer q.releaseBudget()

	for n := 1; ; n++ {
		b, as, trial, ok := q.pick(n)
		if !ok {
			s.fail(w, q.rec, http.StatusServiceUnavailable, "no backend available in pool "+q.st.svc.Pool)
			return
		}
		res, tr := q.try(b, as, trial)
		if res.clientGone || q.ctx.Err() != nil {
			q.clientGone(b, trial, res, tr)
			return
		}
		// What counts toward ejection is the pool's ejection.on, apart
		// from what is retried (retry.on): a 503 may be retried
		// without ejecting the address that answered it.
		failed := q.st.grp.tracker.Counts(res.outcome)
		switch res.spared {
		case sparedNot:
			if failed || trial {
				q.st.grp.tracker.Report(time.Now(), b.Addr, trial, failed, kindLabel(res.outcome), describe(res))
			}
			if next, done := q.waitForDNS(b.Addr, res, &tr); done {
				return
			} else if next {
				continue
			}
		default:
			// Nothing to judge the backend by; and no DNS wait: an
			// address at sluice's own limit refused nothing, a removed
			// one will not answer again, a refused response or a client's
			// stall came from a backend that is there.
			switch res.spared {
			case sparedLocal:
				s.obs.Refused(s.name, limitUpstreamConnections)
			case sparedHost:
				s.obs.Refused(s.name, limitHostResources)
			case sparedRefused:
				s.obs.Refused(s.name, limitUpstreamHeader)
			}
			if trial {
				q.st.grp.tracker.Abandon(b.Addr)
			}
		}
		var again bool
		var delay time.Duration
		if res.spared == sparedRefused {
			tr.Why = "response refused at the service's upstream header limits: not retried"
		} else {
			again, delay = q.decide(n-q.dns.granted, res, &tr)
		}
		if tr.DNSWait != "" {
			tr.Why = WhyWaitedForDNS + " (" + tr.DNSWait + "); " + tr.Why
		}
		q.rec.Tries = append(q.rec.Tries, tr)
		if !again {
			q.respond(res, b)
			return
		}
		s.discard(res, true)
		if !q.backoff(delay) {
			return
		}
	}
}

// route picks the settings of a request's route. With no route for it,
// status is 404 (or 400 for a path with a dot segment on a listener that
// routes by path) and why says so; st is then the service's settings,
// for the answer.
func (rt *routing) route(r *http.Request) (st *settings, status int, why string) {
	if rt.single != nil {
		return rt.single, 0, ""
	}
	path := r.RequestURI
	if path == "" || path[0] != '/' {
		path = r.URL.RequestURI() // HTTP/1.1 absolute form, as outgoing sends it
	}
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	if rt.paths {
		if err := route.CheckPath(path); err != nil {
			return rt.base, http.StatusBadRequest, "routing: " + err.Error()
		}
	}
	i, ok := rt.table.Match(r.Host, path, r.Method, r.Header)
	if !ok {
		return rt.base, http.StatusNotFound, "no route for host " + strconv.Quote(r.Host) + " and path " + strconv.Quote(path)
	}
	return rt.targets[i], 0, ""
}

// finish ends a request: the access log line, the observer, the record
// back to its pool, and an abort the client must see.
func (q *request) finish() {
	s, rec := q.s, q.rec
	rec.End = time.Now()
	rec.Duration = rec.End.Sub(q.start)
	rec.BytesIn += q.out.bodyStore.read.Load()
	s.access.Load().Log(rec)
	s.obs.Request(rec)
	if cap(rec.Tries) <= 16 {
		clear(rec.Tries[:cap(rec.Tries)])
		s.records.Put(rec)
	}
	if h1, ok := q.w.(*h1Response); ok && !h1.hijacked && (q.r.Body == nil || q.r.Body == http.NoBody) {
		// Kept for the connection's next request, which starts after
		// this one's watch stopped (serveRequest): nothing refers to q
		// then. Not after a request with a body: an HTTP/2 upstream's
		// transport may still read a body it was given (settleBody);
		// not after a protocol switch: no request follows.
		h1.c.req = q
	}
	if q.abort {
		// The response was cut short: make the client see it (the
		// connection or stream is reset), never a complete-looking body.
		panic(http.ErrAbortHandler)
	}
}

// admit refuses what is never proxied: it answers the client itself and
// returns false when the request goes no further.
func (q *request) admit() bool {
	s, w, r := q.s, q.w, q.r
	if r.Method == http.MethodConnect {
		s.fail(w, q.rec, http.StatusMethodNotAllowed, "CONNECT is not proxied")
		return false
	}
	if r.Method == "PRI" {
		// An HTTP/2 preface on a listener without h2c (net/http's HTTP/1
		// server hands it over): never proxied.
		s.fail(w, q.rec, http.StatusHTTPVersionNotSupported, "HTTP/2 without TLS is not enabled (h2c) on this listener")
		return false
	}
	if r.ProtoMajor == 1 && len(r.TransferEncoding) > 0 {
		// One framing policy on every listener: a chunked body is read
		// by Transfer-Encoding alone (net/http drops a Content-Length
		// sent with it, RFC 9112 6.3) and re-framed upstream; the client
		// connection is closed after the response (RFC 9112 6.1: a
		// request that had both must not be followed by another).
		w.Header().Set("Connection", "close")
	}
	if n := fieldCount(r.Header); n > s.limits.MaxHeaderCount {
		s.fail(w, q.rec, http.StatusRequestHeaderFieldsTooLarge,
			"request has "+strconv.Itoa(n)+" header fields, more than client.max_header_count ("+strconv.Itoa(s.limits.MaxHeaderCount)+")")
		s.obs.Refused(s.name, limitHeaderCount)
		return false
	}
	if vv := r.Header["Via"]; len(vv) > 0 {
		if n := sluiceHops(vv); n >= maxSluiceHops {
			s.fail(w, q.rec, http.StatusLoopDetected,
				"forwarding loop: the request has passed through sluice "+strconv.Itoa(n)+
					" times (Via); is a backend of pool "+q.st.svc.Pool+" this load balancer itself?")
			s.obs.Refused(s.name, limitLoop)
			return false
		}
	}
	maxBody, limitKey := s.limits.MaxBodyBytes, "client.max_body_bytes"
	if q.st.maxBody > 0 {
		maxBody, limitKey = q.st.maxBody, "the route's max_body_bytes"
	}
	if r.ContentLength > maxBody {
		s.fail(w, q.rec, http.StatusRequestEntityTooLarge,
			"request body of "+strconv.FormatInt(r.ContentLength, 10)+" bytes, more than "+limitKey+" ("+strconv.FormatInt(maxBody, 10)+")")
		s.obs.Refused(s.name, limitBody)
		return false
	}
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		// A body of unknown length (chunked, HTTP/2 without
		// content-length) is cut at the limit as it is read.
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	}
	return true
}

// prepare reads the request body (its replayable part) and builds what
// every try sends; it answers the client itself and returns false when
// the body could not be read.
func (q *request) prepare() bool {
	s, w, r := q.s, q.w, q.r
	// The total deadline bounds reading the request body from the client
	// too (a slow upload cannot hold a request past it). It is lifted as
	// soon as the body is read: the server's own read of the connection
	// after the body must not hit it (that would cancel the request).
	var bodyRead func()
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		if setReadDeadline(w, q.deadline) == nil {
			bodyRead = func() { _ = setReadDeadline(w, time.Time{}) }
		}
	}
	body := &q.out.bodyStore
	s.outgoing(&q.out, q.st, r, q.peer, body)
	q.out.fastOK = fastResponseOK(w, &q.out, &q.st.svc)
	dropped, err := checkOutgoing(&q.out, s.limits.UnderscoreHeaders)
	if dropped || errors.Is(err, errUnderscore) {
		s.obs.Refused(s.name, limitUnderscoreHeader)
	}
	if err != nil {
		s.fail(w, q.rec, http.StatusBadRequest, err.Error())
		return false
	}
	if q.out.upgrade != "" && s.h2 != nil {
		s.fail(w, q.rec, http.StatusNotImplemented, "a protocol upgrade ("+q.out.upgrade+") is not carried over HTTP/2 to the backends (upstream.protocol)")
		return false
	}
	// The route's request header rules, once for every try (the header
	// is the client's, the request's own).
	if rq := &q.st.svc.Headers.Request; len(rq.Remove)+len(rq.Set)+len(rq.Add) > 0 {
		applyRules(q.out.header, rq, q)
	}
	if s.h2 != nil && grpcMethod(r) != "" {
		// A gRPC call to an HTTP/2 upstream: its body is streamed (a
		// streaming call would stall waiting for the buffer to fill).
		body.initStream(r.Body, r.ContentLength, q.st.policy.BufferBytes(), bodyRead)
	} else if err := body.init(s.paced(w, r.Body, q.deadline, bodyRead != nil), r.ContentLength, q.st.policy.BufferBytes(), bodyRead); err != nil {
		s.fail(w, q.rec, s.clientBodyStatus(err), err.Error())
		return false
	}
	return true
}

// pick chooses the backend of try n (see Server.pick).
func (q *request) pick(n int) (b pool.Backend, as *addrStat, trial, ok bool) {
	now := q.start
	if n > 1 {
		now = q.now()
	}
	b, as, trial, panicMode, ok := q.s.pick(q.st, q.tried, now, q.cands[:0])
	q.rec.Panic = q.rec.Panic || panicMode
	if ok {
		q.tried = append(q.tried, b.Addr)
	}
	return b, as, trial, ok
}

// try sends the request to b once and describes the try for the access
// log. as is b's addrStat when pick had it at hand (nil: looked up).
func (q *request) try(b pool.Backend, as *addrStat, trial bool) (tryResult, accesslog.Try) {
	s := q.s
	t0 := time.Now()
	if as == nil {
		as = s.stat(b.Addr)
	}
	as.inflight.Add(1)
	res := s.try(q.ctx, &q.cw, q.st, &q.out, b, t0, q.deadline, q.removals)
	s.tryDone(b.Addr, as)
	if res.resp == nil && !res.clientGone && res.spared == sparedNot && res.outcome.Kind == retry.Reset {
		if d := q.out.body.stalledFor(); d > 0 {
			// The body's rest is read by one try only (it is not
			// replayable once read): the stall was this try's.
			res.spared = sparedClientStall
			res.err = fmt.Errorf("%w (the client's request body had stalled for %s: the backend may have given up on it; not counted against the backend)", res.err, d.Round(time.Millisecond))
		}
	}
	// The budget token of a retry is held for its try only.
	q.releaseBudget()
	tr := accesslog.Try{
		Backend: as.name, Answer: b.Info, Trial: trial,
		Outcome: res.outcome.Kind.String(), Phase: res.phase, Sent: res.outcome.Sent,
		Duration: time.Since(t0), Resent: res.resent, Early: res.early,
	}
	tr.Millis = float64(tr.Duration.Microseconds()) / 1000
	if res.conn != nil {
		tr.Reused = res.conn.Reused()
		if res.conn.Info() != "" {
			tr.Answer = res.conn.Info()
		}
	}
	if res.h2 != nil {
		res.h2.noteTry(&tr)
	}
	if res.resp != nil {
		tr.Status = res.resp.StatusCode
		if res.outcome.GRPC > 0 {
			tr.GRPCStatus = res.resp.Header.Get("Grpc-Status")
		}
	}
	if res.err != nil {
		tr.Error = res.err.Error()
	}
	return res, tr
}

// clientGone ends a request whose client went away during a try.
func (q *request) clientGone(b pool.Backend, trial bool, res tryResult, tr accesslog.Try) {
	s, rec := q.s, q.rec
	if trial {
		q.st.grp.tracker.Abandon(b.Addr)
	}
	tr.Outcome, tr.Why = "client-closed", "the client went away"
	rec.Tries = append(rec.Tries, tr)
	// A response that came anyway is drained (a little, within the
	// grace the watch gave it) so its connection can be reused.
	s.discard(res, res.resp != nil)
	rec.Status = statusClientClosed
	// A body that stalled also cancels the request's context: answer
	// anyway (if the client is really gone, nobody reads it).
	if res.err != nil && errors.Is(res.err, errClientBody) {
		rec.Error = "client request body: " + res.err.Error()
		rec.Status = s.clientBodyStatus(res.err)
		s.writeError(q.w, rec.Status, "error reading the request body", rec.RequestID)
	}
}

// decide applies the retry policy, the retry budget and the deadline to
// try n, and notes the decision in tr. It returns whether to try again
// and the backoff before.
func (q *request) decide(n int, res tryResult, tr *accesslog.Try) (again bool, delay time.Duration) {
	s, st := q.s, q.st
	now := q.now()
	d := st.policy.Decide(retry.Request{
		Method: q.out.method, GRPCMethod: grpcMethod(q.r), Header: q.r.Header, Replayable: q.out.body.replayable(),
		Tries: n, DeadlineLeft: now.Before(q.deadline),
	}, res.outcome)
	if d.Retry {
		rel, ok := s.budget.Acquire()
		if !ok {
			d = retry.Decision{Reason: d.Reason + "; but the retry budget is spent"}
			tr.BudgetRefused = true
		} else {
			q.release = rel
		}
	}
	if d.Retry {
		delay = st.policy.Backoff().Delay(n, nil)
		if !now.Add(delay).Before(q.deadline) {
			d = retry.Decision{Reason: d.Reason + "; but the total deadline ends before the backoff"}
			q.releaseBudget()
		}
	}
	tr.Retry, tr.Why = d.Retry, d.Reason
	if d.Retry {
		tr.Backoff = float64(delay.Microseconds()) / 1000
	}
	return d.Retry, delay
}

// backoff waits before the next try; false when the client went away.
func (q *request) backoff(delay time.Duration) bool {
	if delay <= 0 {
		return true
	}
	// On an event loop the task parks; elsewhere a timer.
	if !evloop.Sleep(q.ctx, delay) {
		q.rec.Status = statusClientClosed
		return false
	}
	return true
}

// respond passes the last try's outcome to the client: the backend's
// response (or its 101 and the tunnel after it), or sluice's own error.
func (q *request) respond(res tryResult, b pool.Backend) {
	s := q.s
	switch {
	case res.resp != nil && res.resp.StatusCode == http.StatusSwitchingProtocols:
		// A tunnel (WebSocket) is a connection from now on, bounded by
		// client.max_connections and max_connections_per_ip, not a
		// request in flight: a listener's max_requests (and one address's
		// share) is not taken by long-lived tunnels. A route's
		// max_requests still counts it: the knob that caps a WebSocket
		// route's tunnels, as nginx's limit_conn in a location does.
		q.releaseListenerSlots()
		s.tunnel(q.ctx, q.w, q.rec, q.st, res)
	case res.resp != nil:
		hr := &q.st.svc.Headers
		if len(hr.Response.Remove)+len(hr.Response.Set)+len(hr.Response.Add) > 0 {
			applyRules(res.resp.Header, &hr.Response, q)
		}
		if hr.RewriteLocation && q.st.svc.Host != service.HostKeep {
			rewriteLocations(res.resp.Header, q.st.svc.Host, q.out.fwd.proto, q.r.Host)
		}
		if res.h2 != nil {
			q.abort = s.respondH2(q.ctx, q.w, q.rec, res)
		} else {
			q.abort = s.respond(q.ctx, &q.cw, q.w, q.rec, res, b.Addr, q.st.grp)
		}
	case res.spared == sparedLocal || res.spared == sparedHost:
		// Sluice's own shortage, not the backend's failure: 503.
		q.w.Header().Set("Retry-After", "1")
		s.fail(q.w, q.rec, http.StatusServiceUnavailable, "overload: "+describe(res))
	default:
		status := http.StatusBadGateway
		if res.outcome.Kind == retry.Timeout || res.phase == "connect" && isTimeout(res.err) {
			status = http.StatusGatewayTimeout
		}
		s.fail(q.w, q.rec, status, describe(res))
	}
}

// requestSlots are the places a request holds in client.max_requests,
// client.max_requests_per_ip (under its client's key) and its route's
// max_requests (nil: none).
type requestSlots struct {
	route *atomic.Int64
	// key is the client address counted in client.max_requests_per_ip
	// (when ip), as 16 bytes and whether it is IPv4: a netip.Addr would
	// take 8 bytes more, and the request struct the next size class.
	key              [16]byte
	active, ip, key4 bool
}

// setKey records the client address counted per address.
func (sl *requestSlots) setKey(a netip.Addr) { sl.key, sl.key4, sl.ip = a.As16(), a.Is4(), true }

// keyAddr is the address setKey recorded.
func (sl *requestSlots) keyAddr() netip.Addr {
	a := netip.AddrFrom16(sl.key)
	if sl.key4 {
		return a.Unmap()
	}
	return a
}

// releaseSlots gives back the request's places in the request limits
// when it ends.
func (q *request) releaseSlots() {
	q.releaseListenerSlots()
	if q.slots.route != nil {
		q.slots.route.Add(-1)
		q.slots.route = nil
	}
}

// releaseListenerSlots gives back the request's places in the listener's
// limits (client.max_requests and max_requests_per_ip): when it ends, or
// when it becomes a tunnel.
func (q *request) releaseListenerSlots() {
	sl := &q.slots
	if sl.active {
		q.s.active.Add(-1)
		sl.active = false
	}
	if sl.ip {
		q.s.activeIP.release(sl.keyAddr())
		sl.ip = false
	}
}

// now is the time for the request's deadlines and decisions: the event
// loop's turn when its HTTP/1 connection is served by a loop's task
// (evloop's Task.Now, no clock read), time.Now() otherwise. What the
// access log shows as durations is measured with time.Now.
func (q *request) now() time.Time {
	if h1, ok := q.w.(*h1Response); ok {
		return h1.c.task.Now()
	}
	return time.Now()
}

// releaseBudget gives back the retry budget token held, if any.
func (q *request) releaseBudget() {
	if q.release != nil {
		q.release()
		q.release = nil
	}
}

// clientBodyStatus is the status for a request body the client did not
// deliver: 413 when it was larger than client.max_body_bytes (counted),
// 408 when it was too slow, 400 otherwise.
func (s *Server) clientBodyStatus(err error) int {
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		s.obs.Refused(s.name, limitBody)
		return http.StatusRequestEntityTooLarge
	case isTimeout(err):
		return http.StatusRequestTimeout
	}
	return http.StatusBadRequest
}

// outgoing fills out, the request every try sends.
func (s *Server) outgoing(out *outRequest, st *settings, r *http.Request, p peer, body *reqBody) {
	host := r.Host
	if st.svc.Host != service.HostKeep && st.svc.Host != "" {
		host = st.svc.Host
	}
	uri := r.RequestURI
	if r.ProtoMajor == 1 && (uri == "" || uri[0] != '/' && uri != "*") {
		// HTTP/1.1 absolute form (net/http took the Host from it): sent
		// in origin form. HTTP/2's :path must be in origin form already
		// (RFC 9113 8.3.1); checkOutgoing refuses anything else.
		uri = r.URL.RequestURI()
	}
	out.upgrade, out.method, out.uri, out.host = upgradeType(r, st.svc.Upgrades), r.Method, uri, host
	out.header, out.fwd, out.body = r.Header, newForwarded(r, p), body
	out.trailer = nil
	if r.Trailer != nil || r.ProtoMajor == 1 && len(r.TransferEncoding) > 0 {
		// Announced trailers, or a chunked body that may end with some.
		out.trailer = &r.Trailer
	}
}

// serverName is the TLS server name (SNI, and the name the backend's
// certificate is verified against unless upstream.verify_name says
// another) for a try on b. It comes from the config, never from the
// client: the route's (or service's) server_name when set, else its host
// when set, else the DNS name the address came from, else the address
// itself (an upstream tls.Config with a ServerName overrides all four).
// A client's Host cannot make a handshake fail, so it cannot make a
// backend look broken (and ejected).
func serverName(st *settings, b pool.Backend) string {
	if st.svc.SNI != "" {
		return st.svc.SNI
	}
	if h := st.svc.Host; h != service.HostKeep && h != "" {
		return hostname(h)
	}
	if b.Source != "" && b.Source != pool.SourceStatic {
		return strings.TrimSuffix(b.Source, ".")
	}
	return b.Addr.Addr().String()
}

// pick chooses the backend of the next try: an active address not tried yet
// while one is left, through the selector and the trial gate. In panic
// mode ejected addresses are candidates too.
func (s *Server) pick(st *settings, tried []netip.AddrPort, now time.Time, cands []Candidate) (b pool.Backend, as *addrStat, trial, panicMode, ok bool) {
	g := st.grp
	all, stats := s.backendStats(g, now)
	panicMode = eject.Panic(all, st.maxEject)
	if g.panicking.Load() != panicMode && g.panicking.CompareAndSwap(!panicMode, panicMode) {
		if panicMode {
			s.log.Warn("panic mode: too much of the pool is ejected, spreading load over every address", "pool", st.svc.Pool)
		} else {
			s.log.Info("panic mode over", "pool", st.svc.Pool)
		}
		if po, ok := s.obs.(PoolPanicObserver); ok {
			po.PoolPanic(s.name, g.name, panicMode)
		} else {
			s.obs.Panic(s.name, panicMode)
		}
	}
	untried := 0
	for i := range all {
		b := &all[i]
		if b.State == pool.Active || panicMode && b.State == pool.Ejected {
			n := 0
			if stats != nil {
				n = int(stats[i].inflight.Load())
			} else {
				n = s.inflight(b.Addr)
			}
			cands = append(cands, Candidate{Backend: b, InFlight: n})
			if !slices.Contains(tried, b.Addr) {
				untried++
			}
		}
	}
	if len(cands) == 0 {
		return pool.Backend{}, nil, false, panicMode, false
	}
	if len(tried) > 0 && untried > 0 && untried < len(cands) {
		kept := cands[:0]
		for _, c := range cands {
			if !slices.Contains(tried, c.Backend.Addr) {
				kept = append(kept, c)
			}
		}
		cands = kept
	}
	rest := cands
	for len(rest) > 0 {
		i := s.selector.Select(rest)
		c := rest[i]
		if ok, trial := g.tracker.Admit(*c.Backend); ok {
			return *c.Backend, statOf(all, stats, c.Backend), trial, panicMode, true
		}
		// Refused (its trial is in flight): choose among the others.
		rest = append(append(make([]Candidate, 0, len(rest)-1), rest[:i]...), rest[i+1:]...)
	}
	// Every candidate is an address whose trial request is in flight:
	// better a second request to one of them than none.
	c := cands[s.selector.Select(cands)]
	return *c.Backend, statOf(all, stats, c.Backend), false, panicMode, true
}

// statOf is the addrStat of b, a pointer into all, from stats (all's,
// index for index; nil when stats is). A Candidate does not carry it:
// the request's room for candidates would take it past its size class
// (TestRequestSizeClass).
func statOf(all []pool.Backend, stats []*addrStat, b *pool.Backend) *addrStat {
	if stats == nil || len(all) == 0 {
		return nil
	}
	off := uintptr(unsafe.Pointer(b)) - uintptr(unsafe.Pointer(&all[0]))
	if i := off / unsafe.Sizeof(all[0]); off%unsafe.Sizeof(all[0]) == 0 && i < uintptr(len(all)) {
		return stats[i]
	}
	return nil
}

// addrStat is what the server keeps per backend address: its requests in
// flight and its name for the access log (formatted once).
type addrStat struct {
	inflight atomic.Int64
	// gone: the address was removed while requests were in flight to it;
	// the last of them to end forgets the addrStat (forgetStat).
	gone atomic.Bool
	name string
}

// tryDone ends a try's count on as, addr's addrStat.
func (s *Server) tryDone(addr netip.AddrPort, as *addrStat) {
	if as.inflight.Add(-1) <= 0 {
		s.forgetStat(addr, as)
	}
}

// forgetStat forgets as, addr's addrStat, once its address is removed
// and no request is in flight to it (whichever of the two comes last
// calls it: the removal, or the end of the last try).
func (s *Server) forgetStat(addr netip.AddrPort, as *addrStat) {
	if as.gone.Load() && as.inflight.Load() <= 0 {
		s.loads.CompareAndDelete(addr, as)
	}
}

// stat returns the addrStat of addr.
func (s *Server) stat(addr netip.AddrPort) *addrStat {
	if v, ok := s.loads.Load(addr); ok {
		return v.(*addrStat)
	}
	v, _ := s.loads.LoadOrStore(addr, &addrStat{name: addr.String()})
	return v.(*addrStat)
}

func (s *Server) inflight(addr netip.AddrPort) int {
	if v, ok := s.loads.Load(addr); ok {
		return int(v.(*addrStat).inflight.Load())
	}
	return 0
}

// backendSnap is a copy of the pool's addresses, valid while no
// transition happened since (gen) and for at most snapMaxAge (weights
// and DNS answers change without a transition).
type backendSnap struct {
	gen uint64
	at  time.Time
	all []pool.Backend
	// stats are the addrStats of all's addresses that may be picked
	// (active or ejected; nil for the others, which pick skips), looked up once per
	// snapshot rather than per request and address.
	stats []*addrStat
}

const snapMaxAge = 250 * time.Millisecond

// backends returns the pool's addresses. With a pool that publishes its
// transitions the copy is shared by the requests until the next
// transition, instead of one copy (and one pass through the pool's lock)
// per request.
func (s *Server) backends(g *group, now time.Time) []pool.Backend {
	all, _ := s.backendStats(g, now)
	return all
}

// backendStats is backends with the addrStats of the addresses that may be
// picked, index for index (nil when the pool does not publish its
// transitions: then no copy is shared, and stat or inflight looks each up).
// A stat forgotten while a snapshot holds it (its address removed from
// another of the service's pools, which does not make this one's snapshot
// stale) stays consistent: this snapshot's picks read it and their tries
// count on it, until the snapshot is made again (snapMaxAge at most).
func (s *Server) backendStats(g *group, now time.Time) ([]pool.Backend, []*addrStat) {
	if !g.snapshots {
		return g.pool.Backends(), nil
	}
	gen := g.snapGen.Load()
	if sn := g.snap.Load(); sn != nil && sn.gen == gen && now.Sub(sn.at) < snapMaxAge {
		return sn.all, sn.stats
	}
	all := g.pool.Backends()
	stats := make([]*addrStat, len(all))
	for i, b := range all {
		if b.State == pool.Active || b.State == pool.Ejected {
			stats[i] = s.stat(b.Addr)
		}
	}
	g.snap.Store(&backendSnap{gen: gen, at: now, all: all, stats: stats})
	return all, stats
}

// maxStaleRedials bounds how often one try moves to another connection of
// the same address because a pooled one turned out closed by the backend.
const maxStaleRedials = 2

// try sends the request to b once and reads the response header.
func (s *Server) try(ctx context.Context, cw *clientWatch, st *settings, out *outRequest, b pool.Backend, t0, deadline time.Time, removals uint64) (res tryResult) {
	if s.h2 != nil {
		return s.tryH2(ctx, st, out, b, t0, deadline, removals)
	}
	t := st.timeouts
	redial := 0
	defer func() { res.resent = redial }()
	for ; ; redial++ {
		if redial > 0 {
			t0 = time.Now()
		}
		if ctx.Err() != nil {
			// The client is gone (an HTTP/2 stream reset at once, say):
			// no connection is taken, none is dialled.
			return tryResult{err: ctx.Err(), phase: "connect", outcome: retry.Outcome{Kind: retry.ConnectFailure}, clientGone: true}
		}
		connectBy := minTime(t0.Add(t.Connect), deadline)
		get := s.pools.Get
		if redial == 0 && out.body.replayable() && st.policy.MayResend(out.method, out.header) {
			// A pooled connection found closed is sent on again below
			// (stale): the first one may skip the liveness peek.
			get = s.pools.GetResendable
		}
		sn := ""
		if s.upTLS {
			sn = serverName(st, b) // (a string made per try: only for TLS)
		}
		conn, err := get(ctx, b.Addr, sn, b.Info, connectBy)
		if err != nil {
			res := tryResult{err: err, phase: "connect", outcome: retry.Outcome{Kind: retry.ConnectFailure}, spared: dialSpared(err)}
			if ctx.Err() != nil {
				res.clientGone = true
			} else if !time.Now().Before(deadline) {
				res.phase = "total"
			}
			return res
		}
		if ctx.Err() != nil {
			// The client went away while the connection was being made:
			// it is given back unused, for the next request.
			s.pools.Put(conn, "")
			return tryResult{err: ctx.Err(), phase: "connect", outcome: retry.Outcome{Kind: retry.ConnectFailure}, clientGone: true}
		}
		if s.removedSince(removals, b.Addr) {
			s.pools.Put(conn, upstream.CloseRemoved)
			return removedTry()
		}
		res := s.exchange(ctx, cw, st, conn, out, deadline)
		if res.err == nil || res.clientGone {
			return res.tryResult
		}
		// A pooled connection the backend closed while it was idle fails
		// before any response byte: go again on another connection when
		// that cannot deliver the request twice.
		if res.stale && redial < maxStaleRedials && out.body.replayable() &&
			(!res.outcome.Sent || st.policy.MayResend(out.method, out.header)) {
			s.log.Debug("pooled connection was closed by the backend, sending again on another", "address", b.Addr.String(), "error", res.err)
			continue
		}
		return res.tryResult
	}
}

// clientWatch acts on the backend connection in use by a request when its
// client goes away (the request's context ends; over HTTP/2 a
// RST_STREAM): one context.AfterFunc per request, not one per phase.
// While the request is being sent the connection is closed (it cannot be
// reused with half a request on it), which unblocks any write. Once the
// request is sent, the response gets clientGoneGrace to arrive (its
// reads are capped, not cut): a reset stream then costs no backend
// connection, the response is drained and the connection pooled.
type clientWatch struct {
	mu   sync.Mutex
	conn *upstream.Conn
	sent bool
	gone bool
}

// clientGoneGrace is how long a response may still take once its client
// went away, for its connection to be reused.
const clientGoneGrace = time.Second

// watch makes c the connection to act on; sent is whether the whole
// request is on it already. When the client is gone already it acts at once.
func (w *clientWatch) watch(c *upstream.Conn, sent bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.conn, w.sent = c, sent
	if w.gone {
		w.actLocked()
	}
}

// requestSent marks the request as written on the watched connection.
func (w *clientWatch) requestSent() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sent = true
	if w.gone && w.conn != nil {
		w.actLocked()
	}
}

// unwatch ends watch; the connection is the caller's again.
func (w *clientWatch) unwatch() {
	w.mu.Lock()
	w.conn = nil
	w.mu.Unlock()
}

func (w *clientWatch) fire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gone = true
	if w.conn != nil {
		w.actLocked()
	}
}

func (w *clientWatch) actLocked() {
	if w.sent {
		w.conn.CapDeadline(time.Now().Add(clientGoneGrace))
		return
	}
	w.conn.Close()
}

// setWriteDeadline moves the write deadline of w's connection (or
// HTTP/2 stream): straight on the writers that have the method (the
// loop's, net/http's), through a ResponseController otherwise.
func setWriteDeadline(w http.ResponseWriter, t time.Time) error {
	if d, ok := w.(interface{ SetWriteDeadline(time.Time) error }); ok {
		return d.SetWriteDeadline(t)
	}
	return http.NewResponseController(w).SetWriteDeadline(t)
}

// setReadDeadline is setWriteDeadline for reads.
func setReadDeadline(w http.ResponseWriter, t time.Time) error {
	if d, ok := w.(interface{ SetReadDeadline(time.Time) error }); ok {
		return d.SetReadDeadline(t)
	}
	return http.NewResponseController(w).SetReadDeadline(t)
}
