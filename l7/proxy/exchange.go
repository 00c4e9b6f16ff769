package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/sluicelb/sluice/l7/accesslog"
	"github.com/sluicelb/sluice/l7/reqid"
	"github.com/sluicelb/sluice/l7/retry"
	"github.com/sluicelb/sluice/l7/upstream"
	"github.com/sluicelb/sluice/userspace/pool"
)

type exResult struct {
	tryResult
	// stale: the connection was a pooled one the backend had closed,
	// found so by writing on it (reset before any response byte; see
	// upstream.RecentWithoutPeek). Server.try sends the request again on
	// another when it may.
	stale bool
}

// max1xx bounds the informational responses skipped before the real one.
const max1xx = 8

// readAhead is what a backend connection's reader may hold past the
// response header (its buffer: upstream.Conn's bufio.Reader), read with
// it: the read limit on a response header leaves room for it, and the
// header's exact size is checked once it is parsed.
const readAhead = 16 << 10

// exchange writes the request on conn and reads the response header. On
// success the response body is still to be read from conn; on failure conn
// is closed and given back.
func (s *Server) exchange(ctx context.Context, cw *clientWatch, st *settings, conn *upstream.Conn, out *outRequest, deadline time.Time) exResult {
	t := st.timeouts
	written0, read0 := conn.Written(), conn.ReadBytes()
	res := exResult{tryResult: tryResult{conn: conn}}

	// A client that goes away aborts the try: closing the connection
	// unblocks any read or write.
	// A request whose body is all in memory can be written to its end
	// even when its client goes away: its connection can be reused then.
	cw.watch(conn, out.body.rest == nil)
	defer cw.unwatch()

	fail := func(phase string, err error) exResult {
		res.err = err
		res.phase = phase
		res.outcome.Sent = conn.Written() > written0
		readNothing := conn.ReadBytes() == read0
		switch {
		case ctx.Err() != nil:
			res.clientGone = true
		case errors.Is(err, errClientBody):
			res.clientGone = true
		case isTimeout(err):
			res.outcome.Kind = retry.Timeout
			if !time.Now().Before(deadline) {
				res.phase = "total"
			}
		default:
			res.outcome.Kind = retry.Reset
		}
		if errors.Is(err, errRespHeaderLimit) {
			res.spared = sparedRefused
		}
		res.stale = !res.clientGone && conn.Reused() && res.outcome.Kind == retry.Reset && readNothing && !conn.Removed()
		if conn.Removed() && !res.clientGone {
			res.err = removedErr(err)
		}
		why := upstream.CloseError
		switch {
		case res.clientGone:
			why = upstream.CloseClient
		case res.stale:
			why = upstream.CloseBackend // the backend closed it, nothing failed on it
		}
		s.pools.Put(conn, why)
		res.conn = conn
		return res
	}

	conn.SetTimeouts(t.Send, t.Read, deadline)
	host := out.host
	if host == "" {
		// An HTTP/1.0 client sent no Host: name the backend (this try
		// only: the next may go elsewhere).
		out.host = conn.Addr().String()
	}
	// A backend that answers an upload early and stops reading it, but
	// keeps the connection open, is noticed within upstream.AnswerProbe
	// rather than at the send timeout.
	conn.WatchAnswer(!out.body.empty())
	err := writeRequest(conn.Writer(), out)
	conn.WatchAnswer(false)
	out.host = host
	var resp *http.Response
	switch {
	case err == nil:
		cw.requestSent()
		// The response header must come within `read` of the request's end.
		conn.SetTimeouts(t.Send, 0, minTime(conn.Now().Add(t.Read), deadline))
		if resp, res.fast, err = s.readResponse(conn, out, read0); err != nil {
			return fail("read", err)
		}
	case ctx.Err() != nil || errors.Is(err, errClientBody):
		return fail("send", err)
	default:
		// The backend may have answered before the request's end and
		// stopped reading it (a 413 or a 401 before an upload): the
		// write failed, but its response came first. Pass that on
		// rather than a reset of sluice's own.
		conn.SetTimeouts(t.Send, 0, minTime(time.Now().Add(earlyWait), deadline))
		early, fast, rerr := s.readResponse(conn, out, read0)
		switch {
		case errors.Is(rerr, errRespHeaderLimit):
			return fail("read", rerr)
		case rerr != nil || early.StatusCode == http.StatusSwitchingProtocols:
			return fail("send", err)
		}
		resp, res.fast = early, fast
		// The rest of the request was not sent: the connection is
		// not reused.
		resp.Close = true
		res.early = true
	}
	// From now on `read` bounds the wait between two body reads.
	conn.SetTimeouts(t.Send, t.Read, deadline)
	res.resp = resp
	res.outcome.Sent = true
	res.outcome.StatusCode = resp.StatusCode
	if st.policy.FailureStatus(resp.StatusCode) {
		res.outcome.Kind = retry.Status
	}
	return res
}

// earlyWait bounds the wait for the response of a backend that stopped
// reading a request before its end: a response sent before the backend
// closed or reset the connection is already there (TCP delivers it ahead
// of the close); one that takes longer is not waited for.
const earlyWait = 100 * time.Millisecond

// readResponse reads the backend's response header on conn, skipping the
// informational responses before the final one (at most max1xx). The
// header (with those before it) is bounded by upstream.max_header_bytes as
// it is read; past that limit or upstream.max_header_count the error
// wraps errRespHeaderLimit. read0 is conn.ReadBytes() before the response.
// A response the fast path read (h1fast.go) comes with its fastHead, and
// without a header map.
func (s *Server) readResponse(conn *upstream.Conn, out *outRequest, read0 int64) (*http.Response, *fastHead, error) {
	if resp, f := readFastResponse(conn.Reader(), out, s.respHeader.bytes, s.respHeader.count); resp != nil {
		return resp, f, nil
	}
	resp, err := s.readResponseHeader(conn, out, read0)
	return resp, nil, err
}

// readResponseHeader is readResponse with net/http's parser.
func (s *Server) readResponseHeader(conn *upstream.Conn, out *outRequest, read0 int64) (*http.Response, error) {
	conn.LimitReads(int64(s.respHeader.bytes) + readAhead)
	defer conn.LimitReads(0)
	var resp *http.Response
	for i := 0; ; i++ {
		out.respFor.Method = out.method
		r, err := http.ReadResponse(conn.Reader(), &out.respFor)
		if errors.Is(err, upstream.ErrTooLarge) {
			return nil, s.headerTooLarge()
		}
		if err != nil {
			return nil, err
		}
		if r.StatusCode == http.StatusSwitchingProtocols {
			if out.upgrade == "" {
				return nil, errors.New("backend switched protocols, which was not asked for")
			}
			if got := r.Header.Get("Upgrade"); !strings.EqualFold(strings.TrimSpace(got), out.upgrade) {
				return nil, fmt.Errorf("backend switched to %q, not the %q asked for", got, out.upgrade)
			}
			resp = r
			break
		}
		if r.StatusCode >= 200 {
			if out.upgrade != "" {
				// The backend declined the upgrade: the connection stays
				// HTTP on both sides, but one that was offered a switch
				// is not reused.
				r.Close = true
			}
			resp = r
			break
		}
		if i >= max1xx {
			return nil, fmt.Errorf("more than %d informational responses", max1xx)
		}
	}
	if conn.ReadBytes()-read0-int64(conn.Reader().Buffered()) > int64(s.respHeader.bytes) {
		return nil, s.headerTooLarge()
	}
	if err := s.checkHeaderCount(resp.Header); err != nil {
		return nil, err
	}
	return resp, nil
}

// headerTooLarge is the error of a response whose header is larger than
// upstream.max_header_bytes.
func (s *Server) headerTooLarge() error {
	return fmt.Errorf("%w: backend response header larger than upstream.max_header_bytes (%d)", errRespHeaderLimit, s.respHeader.bytes)
}

// checkHeaderCount refuses a response header with more fields than
// upstream.max_header_count (each value of a repeated field counts).
func (s *Server) checkHeaderCount(h http.Header) error {
	if n := fieldCount(h); n > s.respHeader.count {
		return fmt.Errorf("%w: backend response header has %d fields, more than upstream.max_header_count (%d)", errRespHeaderLimit, n, s.respHeader.count)
	}
	return nil
}

// fieldCount is how many fields h has, each value of a repeated name
// counted (what client.max_header_count and upstream.max_header_count
// bound).
func fieldCount(h http.Header) int {
	n := 0
	for _, vv := range h {
		n += len(vv)
	}
	return n
}

// errRespHeaderLimit marks a response refused at the service's response
// header limits (upstream.max_header_bytes, max_header_count).
var errRespHeaderLimit = errors.New("response refused")

// writeRequest writes an HTTP/1.1 request with out's header and body.
func writeRequest(bw *bufio.Writer, out *outRequest) error {
	bw.WriteString(out.method)
	bw.WriteByte(' ')
	bw.WriteString(out.uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(out.host)
	bw.WriteString("\r\n")
	writeForwardHeader(bw, out.header, &out.fwd, out.upgrade)
	chunked := false
	switch b := out.body; {
	case b.empty():
		switch out.method {
		case http.MethodPost, http.MethodPut, http.MethodPatch:
			bw.WriteString("Content-Length: 0\r\n")
		}
	case b.length >= 0 && (out.trailer == nil || len(*out.trailer) == 0):
		bw.WriteString("Content-Length: " + strconv.FormatInt(b.length, 10) + "\r\n")
	default:
		chunked = true
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	bw.WriteString("\r\n")
	if !out.body.empty() {
		if chunked {
			cw := httputil.NewChunkedWriter(bw)
			if _, err := io.Copy(cw, out.body.reader()); err != nil {
				return err
			}
			if err := cw.Close(); err != nil {
				return err
			}
			if out.trailer != nil {
				// The client's trailers, read with the body's end.
				writeTrailer(bw, *out.trailer, out.underscoreOK)
			}
			bw.WriteString("\r\n")
		} else {
			n, err := io.Copy(bw, out.body.reader())
			if err != nil {
				return err
			}
			if n != out.body.length {
				return fmt.Errorf("%w: body ended after %d of %d bytes", errClientBody, n, out.body.length)
			}
		}
	}
	return bw.Flush()
}

// writeTrailer writes a client's request trailer fields (those that
// may be passed on).
func writeTrailer(bw *bufio.Writer, tr http.Header, underscoreOK bool) {
	for k, vv := range tr {
		if !trailerField(k, underscoreOK) {
			continue
		}
		for _, v := range vv {
			writeField(bw, k, v)
		}
	}
}

// trailerField is whether a client's request trailer field k is passed
// on: not one a trailer must not carry (framing, routing: RFC 9110
// 6.5.1) nor a hop-by-hop one, nor one named with an underscore unless
// client.underscore_headers allows them (underscoreOK), as in the header.
func trailerField(k string, underscoreOK bool) bool {
	return httpguts.ValidTrailerHeader(k) && !slices.Contains(hopByHop[:], k) &&
		(underscoreOK || strings.IndexByte(k, '_') < 0)
}

// respond streams the backend's response to the client. It returns true
// when the response was cut short and the client must see an abort.
// relayBody copies a backend's response body to the client, each read
// flushed at once when flush, counting rec.BytesOut. It returns the body's
// read error (io.EOF at its end), or clientGone when a write to the client
// failed (rec then says so).
func (s *Server) relayBody(w http.ResponseWriter, body io.Reader, flush bool, rec *accesslog.Record) (readErr error, clientGone bool) {
	var rc *http.ResponseController
	if flush {
		rc = http.NewResponseController(w)
	}
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	for {
		n, err := body.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			rec.BytesOut += int64(m)
			if werr != nil {
				rec.Status = statusClientClosed
				rec.Error = "client went away during the response"
				return nil, true
			}
			if flush {
				_ = rc.Flush()
			}
		}
		if err != nil {
			return err, false
		}
	}
}

func (s *Server) respond(ctx context.Context, cw *clientWatch, w http.ResponseWriter, rec *accesslog.Record, res tryResult, addr netip.AddrPort, g *group) (abort bool) {
	resp := res.resp
	defer resp.Body.Close()
	// A client that goes away stops a body read waiting on the backend
	// (the connection is closed: a body half passed on is not drained).
	cw.watch(res.conn, false)
	defer cw.unwatch()
	closeDelimited := resp.ContentLength < 0 && len(resp.TransferEncoding) == 0 && bodyAllowed(rec.Method, resp.StatusCode)
	var flush bool
	if f := res.fast; f != nil {
		// Read by the fast path for an HTTP/1.1 client (out.fastOK):
		// written from fasthttp's header, no map.
		defer releaseFastHead(f) // resp.Body is f's
		w.(*h1Response).writeFastHeader(f, resp.StatusCode, resp.ContentLength)
		flush = bytes.HasPrefix(f.h.ContentType(), eventStream)
	} else {
		h := w.Header()
		removeHopByHop(resp.Header)
		for k, vv := range resp.Header {
			h[k] = vv
		}
		if vv := h["Via"]; len(vv) > 0 {
			h["Via"] = append(vv, "1.1 sluice")
		} else {
			h["Via"] = viaSluice // shared: its capacity makes an append copy
		}
		for k := range resp.Trailer {
			h.Add("Trailer", k)
		}
		w.WriteHeader(resp.StatusCode)
		flush = resp.ContentLength < 0 || strings.HasPrefix(resp.Header.Get("Content-Type"), string(eventStream))
	}
	rec.Status = resp.StatusCode
	readErr, clientGone := s.relayBody(w, resp.Body, flush, rec)
	if clientGone {
		// The backend connection is unusable.
		s.pools.Put(res.conn, upstream.CloseClient)
		return false
	}
	if readErr != io.EOF {
		if ctx.Err() != nil {
			s.pools.Put(res.conn, upstream.CloseClient)
			rec.Status = statusClientClosed
			rec.Error = "client went away during the response"
			return false
		}
		s.pools.Put(res.conn, upstream.CloseError)
		rec.Error = "backend response cut short: " + readErr.Error()
		switch {
		case res.conn.Removed():
			rec.Error = "backend response cut short: " + removedErr(readErr).Error()
		case isTimeout(readErr):
			rec.Error = "backend response body timed out: " + readErr.Error()
		}
		return true
	}
	if len(resp.Trailer) > 0 {
		h := w.Header()
		for k, vv := range resp.Trailer {
			h[k] = vv
		}
	}
	if !bodyAllowed(rec.Method, resp.StatusCode) {
		// A body sent anyway would be read as the next response.
		res.conn.PeekNext()
	}
	why := ""
	switch {
	case resp.Close || closeDelimited:
		why = upstream.CloseBackend
	case !s.usable(g, addr, res.conn.Now()):
		why = upstream.CloseDraining
	}
	s.pools.Put(res.conn, why)
	return false
}

// removedErr is err of an exchange the pools cut because its address was
// removed while it was in flight (upstream.Pools.Cut, H2Pools.Cut).
func removedErr(err error) error {
	return fmt.Errorf("address removed (drain_timeout passed), in-flight exchange cut: %w", err)
}

// errRemovedUnsent is a try's error when its address was removed between
// its pick and its connection (Server.removedSince): nothing was sent.
var errRemovedUnsent = errors.New("address removed (drain_timeout passed) before the request was sent")

// removedTry is the result of such a try: a connect-phase failure, which
// the retry rules may send elsewhere, that no ejection counts.
func removedTry() tryResult {
	return tryResult{err: errRemovedUnsent, phase: "connect", outcome: retry.Outcome{Kind: retry.ConnectFailure}, spared: sparedRemoved}
}

// eventStream starts the Content-Type of a response whose body is passed
// on as it comes (server-sent events).
var eventStream = []byte("text/event-stream")

// viaSluice is the Via of a response that had none.
var viaSluice = []string{"1.1 sluice"}[:1:1]

// bodyAllowed is whether a response to method with status has a body.
func bodyAllowed(method string, status int) bool {
	return method != http.MethodHead && status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// discard ends a try whose response is not passed on: the body is drained
// (a little) so the connection can be reused, or the connection is closed.
func (s *Server) discard(res tryResult, drain bool) {
	if res.h2 != nil {
		s.discardH2(res)
		return
	}
	if res.resp == nil || res.conn == nil {
		return
	}
	why := upstream.CloseClient
	framed := res.resp.ContentLength >= 0 || len(res.resp.TransferEncoding) > 0
	switch {
	case !drain:
	case res.resp.Close || !framed:
		why = upstream.CloseBackend
	default:
		// A short error body is read to its end so the connection can be
		// reused; a long one is not worth it.
		n, err := io.Copy(io.Discard, io.LimitReader(res.resp.Body, 64<<10))
		switch {
		case err != nil || n >= 64<<10:
			why = upstream.CloseError
		case !s.usable(nil, res.conn.Addr(), res.conn.Now()):
			why = upstream.CloseDraining
		default:
			why = ""
			if !bodyAllowed(res.resp.Request.Method, res.resp.StatusCode) {
				res.conn.PeekNext() // as in respond
			}
		}
	}
	res.resp.Body.Close()
	releaseFastHead(res.fast)
	s.pools.Put(res.conn, why)
}

// usable is whether pooled connections to addr may be kept: it is still
// active in a pool of the service, or ejected while panic mode sends
// requests there. first (if not nil) is the pool looked at first: the one
// the request picked addr from, which nearly always has it.
func (s *Server) usable(first *group, addr netip.AddrPort, now time.Time) bool {
	if first != nil && s.usableIn(first, addr, now) {
		return true
	}
	for _, g := range *s.groups.Load() {
		if g != first && s.usableIn(g, addr, now) {
			return true
		}
	}
	return false
}

// usableIn is usable for the pool of g.
func (s *Server) usableIn(g *group, addr netip.AddrPort, now time.Time) bool {
	var b pool.Backend
	ok := false
	if g.snapshots {
		for _, x := range s.backends(g, now) {
			if x.Addr == addr {
				b, ok = x, true
				break
			}
		}
	} else {
		b, ok = g.pool.Backend(addr)
	}
	return ok && (b.State == pool.Active || b.State == pool.Ejected && g.panicking.Load())
}

// fail answers the client with an error of sluice's own.
func (s *Server) fail(w http.ResponseWriter, rec *accesslog.Record, status int, why string) {
	rec.Status = status
	rec.Error = why
	s.writeError(w, status, why, rec.RequestID)
}

// errorWriteTime bounds writing one of sluice's own (short) answers. It
// is given afresh, as such an answer often comes when the request's total
// deadline has passed (504, 408).
const errorWriteTime = 2 * time.Second

func (s *Server) writeError(w http.ResponseWriter, status int, why string, id reqid.ID) {
	_ = setWriteDeadline(w, time.Now().Add(errorWriteTime))
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Add("Via", "1.1 sluice")
	rid := id.String()
	if rid != "" {
		// The id the access log line has, for the client to quote.
		h.Set(s.cfg.Load().base.svc.RequestID.Header, rid)
		rid = "; request id " + rid
	}
	body := strconv.Itoa(status) + " " + http.StatusText(status) + " (sluice: " + why + rid + ")\n"
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// describe says what happened in one try, for logs and the pool's causes.
func describe(res tryResult) string {
	switch res.outcome.Kind {
	case retry.OK, retry.Status:
		if g := res.outcome.GRPC; g > 0 {
			return "grpc-status " + strconv.Itoa(g) + " (" + retry.GRPCName(g) + ")"
		}
		return "status " + strconv.Itoa(res.outcome.StatusCode)
	case retry.ConnectFailure:
		if isTimeout(res.err) {
			return "connect timeout"
		}
		return "connect failure: " + errString(res.err)
	case retry.Timeout:
		return res.phase + " timeout"
	}
	return "reset: " + errString(res.err)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func isTimeout(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var de *upstream.DialError
	if errors.As(err, &de) && de.Timeout {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// kindLabel is an outcome's kind as a bounded label: status,
// connect-failure, reset, timeout. A response is "status" whether or not
// retry.on lists it (ejection.on may count a status retry.on does not).
func kindLabel(o retry.Outcome) string {
	if o.Kind == retry.OK {
		return retry.Status.String()
	}
	return o.Kind.String()
}
