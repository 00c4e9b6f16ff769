package proxy

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicelb/sluice/l7/eject"
	"github.com/sluicelb/sluice/l7/retry"
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
	sni     string      // TLS server name
	header  http.Header // the client's, written by writeForwardHeader
	fwd     forwarded
	body    *reqBody
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
}

// ServeHTTP proxies one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	st := s.cfg.Load()
	rec := s.records.Get().(*Record)
	*rec = Record{
		Service: s.name, Client: r.RemoteAddr, Method: r.Method, Host: r.Host,
		URI: r.RequestURI, Proto: r.Proto, Tries: rec.Tries[:0],
	}
	abort := false
	defer func() {
		rec.End = time.Now()
		rec.Duration = rec.End.Sub(start)
		s.access.Load().Log(rec)
		s.obs.Request(rec)
		if cap(rec.Tries) <= 16 {
			clear(rec.Tries[:cap(rec.Tries)])
			s.records.Put(rec)
		}
		if abort {
			// The response was cut short: make the client see it (the
			// connection or stream is reset), never a complete-looking body.
			panic(http.ErrAbortHandler)
		}
	}()
	if r.Method == http.MethodConnect {
		s.fail(w, rec, http.StatusMethodNotAllowed, "CONNECT is not proxied")
		return
	}
	if r.ProtoMajor == 1 && len(r.TransferEncoding) > 0 && r.Header.Get("Content-Length") != "" {
		s.fail(w, rec, http.StatusBadRequest, "ambiguous request framing: Content-Length and Transfer-Encoding")
		return
	}
	s.budget.Start()
	defer s.budget.Done()
	// A client that goes away aborts the try or the response in progress.
	cw := &clientWatch{}
	defer context.AfterFunc(r.Context(), cw.fire)()

	deadline := start.Add(st.timeouts.Total)
	// The total deadline bounds reading the request body from the client
	// too (a slow upload cannot hold a request past it). It is lifted as
	// soon as the body is read: the server's own read of the connection
	// after the body must not hit it (that would cancel the request).
	var bodyRead func()
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		rc := http.NewResponseController(w)
		if rc.SetReadDeadline(deadline) == nil {
			bodyRead = func() { _ = rc.SetReadDeadline(time.Time{}) }
		}
	}
	out := &outRequest{}
	body := &out.bodyStore
	if err := body.init(r.Body, r.ContentLength, st.policy.BufferBytes(), bodyRead); err != nil {
		s.fail(w, rec, clientBodyStatus(err), err.Error())
		return
	}
	s.outgoing(out, st, r, body)
	defer func() { rec.BytesIn += body.read }()

	var triedArr [4]netip.AddrPort
	tried := triedArr[:0]
	var release func()
	defer func() {
		if release != nil {
			release()
		}
	}()
	for n := 1; ; n++ {
		now := start
		if n > 1 {
			now = time.Now()
		}
		b, trial, panicMode, ok := s.pick(st, tried, now)
		rec.Panic = rec.Panic || panicMode
		if !ok {
			s.fail(w, rec, http.StatusServiceUnavailable, "no backend available in pool "+st.svc.Pool)
			return
		}
		tried = append(tried, b.Addr)
		t0 := time.Now()
		as := s.stat(b.Addr)
		as.inflight.Add(1)
		res := s.try(r.Context(), cw, st, out, b, t0, deadline)
		as.inflight.Add(-1)
		if release != nil {
			release()
			release = nil
		}
		tEnd := time.Now()
		tr := Try{
			Backend: as.name, Answer: b.Info, Trial: trial,
			Outcome: res.outcome.Kind.String(), Phase: res.phase, Sent: res.outcome.Sent,
			Duration: tEnd.Sub(t0),
		}
		tr.Millis = float64(tr.Duration.Microseconds()) / 1000
		if res.conn != nil {
			tr.Reused = res.conn.Reused()
			if res.conn.Info() != "" {
				tr.Answer = res.conn.Info()
			}
		}
		if res.resp != nil {
			tr.Status = res.resp.StatusCode
		}
		if res.err != nil {
			tr.Error = res.err.Error()
		}
		if res.clientGone || r.Context().Err() != nil {
			if trial {
				s.tracker.Abandon(b.Addr)
			}
			tr.Outcome, tr.Why = "client-closed", "the client went away"
			rec.Tries = append(rec.Tries, tr)
			s.discard(res, false)
			rec.Status = statusClientClosed
			// A body that stalled also cancels the request's context: answer
			// anyway (if the client is really gone, nobody reads it).
			if res.err != nil && errors.Is(res.err, errClientBody) {
				rec.Error = "client request body: " + res.err.Error()
				rec.Status = clientBodyStatus(res.err)
				s.writeError(w, rec.Status, "error reading the request body")
			}
			return
		}
		failed := res.outcome.Kind != retry.OK
		if failed || trial {
			s.tracker.Report(tEnd, b.Addr, trial, failed, kindLabel(res.outcome), describe(res))
		}

		d := st.policy.Decide(retry.Request{
			Method: out.method, Header: r.Header, Replayable: body.replayable(),
			Tries: n, DeadlineLeft: tEnd.Before(deadline),
		}, res.outcome)
		if d.Retry {
			rel, ok := s.budget.Acquire()
			if !ok {
				d = retry.Decision{Reason: d.Reason + "; but the retry budget is spent"}
				tr.BudgetRefused = true
			} else {
				release = rel
			}
		}
		var delay time.Duration
		if d.Retry {
			delay = st.policy.Backoff().Delay(n, nil)
			if !time.Now().Add(delay).Before(deadline) {
				d = retry.Decision{Reason: d.Reason + "; but the total deadline ends before the backoff"}
				release()
				release = nil
			}
		}
		tr.Retry, tr.Why = d.Retry, d.Reason
		if d.Retry {
			tr.Backoff = float64(delay.Microseconds()) / 1000
		}
		rec.Tries = append(rec.Tries, tr)
		if d.Retry {
			s.discard(res, true)
			if delay > 0 {
				t := time.NewTimer(delay)
				select {
				case <-t.C:
				case <-r.Context().Done():
					t.Stop()
					rec.Status = statusClientClosed
					return
				}
			}
			continue
		}
		if res.resp != nil && res.resp.StatusCode == http.StatusSwitchingProtocols {
			s.tunnel(w, rec, st, res)
			return
		}
		if res.resp != nil {
			abort = s.respond(r.Context(), cw, w, rec, res, b.Addr)
			return
		}
		status := http.StatusBadGateway
		if res.outcome.Kind == retry.Timeout || res.phase == "connect" && isTimeout(res.err) {
			status = http.StatusGatewayTimeout
		}
		s.fail(w, rec, status, describe(res))
		return
	}
}

// clientBodyStatus is the status for a request body the client did not
// deliver: 408 when it was too slow, 400 otherwise.
func clientBodyStatus(err error) int {
	if isTimeout(err) {
		return http.StatusRequestTimeout
	}
	return http.StatusBadRequest
}

// outgoing fills out, the request every try sends.
func (s *Server) outgoing(out *outRequest, st *settings, r *http.Request, body *reqBody) {
	host := r.Host
	if st.svc.Host != service.HostKeep && st.svc.Host != "" {
		host = st.svc.Host
	}
	uri := r.RequestURI
	if uri == "" || (uri[0] != '/' && uri != "*") {
		uri = r.URL.RequestURI()
	}
	out.upgrade, out.method, out.uri, out.host, out.sni = upgradeType(r), r.Method, uri, host, hostname(host)
	out.header, out.fwd, out.body = r.Header, newForwarded(r), body
}

// pick chooses the backend of the next try: an active address not tried yet
// while one is left, through the selector and the trial gate. In panic
// mode ejected addresses are candidates too.
func (s *Server) pick(st *settings, tried []netip.AddrPort, now time.Time) (b pool.Backend, trial, panicMode, ok bool) {
	all := s.backends(now)
	panicMode = eject.Panic(all, st.maxEject)
	if s.panicking.Load() != panicMode && s.panicking.CompareAndSwap(!panicMode, panicMode) {
		if panicMode {
			s.log.Warn("panic mode: too much of the pool is ejected, spreading load over every address", "pool", st.svc.Pool)
		} else {
			s.log.Info("panic mode over", "pool", st.svc.Pool)
		}
		s.obs.Panic(s.name, panicMode)
	}
	var arr [8]Candidate
	cands := arr[:0]
	untried := 0
	for i := range all {
		b := &all[i]
		if b.State == pool.Active || panicMode && b.State == pool.Ejected {
			cands = append(cands, Candidate{Backend: b, InFlight: s.inflight(b.Addr)})
			if !slices.Contains(tried, b.Addr) {
				untried++
			}
		}
	}
	if len(cands) == 0 {
		return pool.Backend{}, false, panicMode, false
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
		if ok, trial := s.tracker.Admit(*c.Backend); ok {
			return *c.Backend, trial, panicMode, true
		}
		// Refused (its trial is in flight): choose among the others.
		rest = append(append(make([]Candidate, 0, len(rest)-1), rest[:i]...), rest[i+1:]...)
	}
	// Every candidate is an address whose trial request is in flight:
	// better a second request to one of them than none.
	return *cands[s.selector.Select(cands)].Backend, false, panicMode, true
}

// addrStat is what the server keeps per backend address: its requests in
// flight and its name for the access log (formatted once).
type addrStat struct {
	inflight atomic.Int64
	name     string
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
}

const snapMaxAge = 250 * time.Millisecond

// backends returns the pool's addresses. With a pool that publishes its
// transitions the copy is shared by the requests until the next
// transition, instead of one copy (and one pass through the pool's lock)
// per request.
func (s *Server) backends(now time.Time) []pool.Backend {
	if !s.snapshots {
		return s.pool.Backends()
	}
	gen := s.snapGen.Load()
	if sn := s.snap.Load(); sn != nil && sn.gen == gen && now.Sub(sn.at) < snapMaxAge {
		return sn.all
	}
	all := s.pool.Backends()
	s.snap.Store(&backendSnap{gen: gen, at: now, all: all})
	return all
}

// maxStaleRedials bounds how often one try moves to another connection of
// the same address because a pooled one turned out closed by the backend.
const maxStaleRedials = 2

// try sends the request to b once and reads the response header.
func (s *Server) try(ctx context.Context, cw *clientWatch, st *settings, out *outRequest, b pool.Backend, t0, deadline time.Time) tryResult {
	t := st.timeouts
	for redial := 0; ; redial++ {
		if redial > 0 {
			t0 = time.Now()
		}
		connectBy := minTime(t0.Add(t.Connect), deadline)
		conn, err := s.pools.Get(ctx, b.Addr, out.sni, b.Info, connectBy)
		if err != nil {
			res := tryResult{err: err, phase: "connect", outcome: retry.Outcome{Kind: retry.ConnectFailure}}
			if ctx.Err() != nil {
				res.clientGone = true
			} else if !time.Now().Before(deadline) {
				res.phase = "total"
			}
			return res
		}
		res := s.exchange(ctx, cw, st, conn, out, deadline)
		if res.err == nil || res.clientGone {
			return res.tryResult
		}
		// A pooled connection the backend closed while it was idle fails
		// before any response byte: go again on another connection when
		// that cannot deliver the request twice.
		stale := conn.Reused() && res.outcome.Kind == retry.Reset && res.resp == nil && res.readNothing
		if stale && redial < maxStaleRedials && out.body.replayable() &&
			(!res.outcome.Sent || st.policy.MayResend(out.method, out.header)) {
			s.log.Debug("pooled connection was closed by the backend, sending again on another", "address", b.Addr.String(), "error", res.err)
			continue
		}
		return res.tryResult
	}
}

// clientWatch closes the backend connection in use by a request when its
// client goes away (the request's context ends), which unblocks any read
// or write on it: one context.AfterFunc per request, not one per phase.
type clientWatch struct {
	mu   sync.Mutex
	conn *upstream.Conn
	gone bool
}

// watch makes c the connection to close; it is closed at once when the
// client is already gone.
func (w *clientWatch) watch(c *upstream.Conn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.gone {
		c.Close()
		return
	}
	w.conn = c
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
		w.conn.Close()
	}
}
