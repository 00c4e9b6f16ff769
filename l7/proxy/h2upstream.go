package proxy

// HTTP/2 to the backends (upstream.protocol h2c or h2): the try step sends
// the request as one stream on a connection of the service's H2Pools, the
// respond step streams the response back with its trailers (gRPC's
// grpc-status among them). HTTP/1.1 to the backends is exchange.go.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/sluicelb/sluice/l7/accesslog"
	"github.com/sluicelb/sluice/l7/retry"
	"github.com/sluicelb/sluice/l7/service"
	"github.com/sluicelb/sluice/l7/upstream"
	"github.com/sluicelb/sluice/userspace/pool"
)

// Upstream protocols (UpstreamOptions.Protocol).
const (
	ProtocolHTTP1 = "http1"
	ProtocolH2C   = "h2c"
	ProtocolH2    = "h2"
)

// h2Stream is one try's stream on an HTTP/2 connection to a backend.
type h2Stream struct {
	conn   *upstream.H2Conn
	reused bool
	cancel context.CancelCauseFunc
	watch  *h2Watch
	body   *h2ReqBody // nil without a request body
	tee    *teeBody   // the client's body being read and kept (gRPC), nil when none
	done   bool
}

// Timeouts of a stream, as the causes its context is cancelled with;
// they are timeouts (isTimeout) for the retry policy and the logs.
var (
	errH2SendTimeout = fmt.Errorf("send timeout: the backend took no request body for timeouts.send: %w", os.ErrDeadlineExceeded)
	errH2ReadTimeout = fmt.Errorf("read timeout: %w", os.ErrDeadlineExceeded)
	errH2Total       = fmt.Errorf("total deadline: %w", os.ErrDeadlineExceeded)
)

// h2Watch cancels a stream when its current phase lasts too long: the
// send timeout between two reads of the request body, the read timeout
// until the response header and between two reads of the response body.
type h2Watch struct {
	mu     sync.Mutex
	t      *time.Timer
	cancel context.CancelCauseFunc
}

func (w *h2Watch) arm(d time.Duration, cause error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.t != nil {
		w.t.Stop()
		w.t = nil
	}
	if d > 0 {
		w.t = time.AfterFunc(d, func() { w.cancel(cause) })
	}
}

func (w *h2Watch) stop() { w.arm(0, nil) }

// isGRPC is whether r is a gRPC call (content-type application/grpc, +proto etc.).
func isGRPC(h http.Header) bool {
	ct := h.Get("Content-Type")
	return ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+") || strings.HasPrefix(ct, "application/grpc;")
}

// grpcMethod is the gRPC method of r for retry.methods ("" when r is not
// a gRPC call).
func grpcMethod(r *http.Request) string {
	if r.ProtoMajor < 2 || !isGRPC(r.Header) {
		return ""
	}
	return r.URL.Path
}

// tryH2 is try for an HTTP/2 upstream: one stream on a pooled connection.
func (s *Server) tryH2(ctx context.Context, st *settings, out *outRequest, b pool.Backend, t0, deadline time.Time, removals uint64) tryResult {
	t := st.timeouts
	if ctx.Err() != nil {
		return tryResult{err: ctx.Err(), phase: "connect", outcome: retry.Outcome{Kind: retry.ConnectFailure}, clientGone: true}
	}
	connectBy := minTime(t0.Add(t.Connect), deadline)
	conn, reused, err := s.h2.Get(ctx, b.Addr, serverName(st, b), b.Info, connectBy)
	if err != nil {
		res := tryResult{err: err, phase: "connect", outcome: retry.Outcome{Kind: retry.ConnectFailure}, spared: dialSpared(err)}
		if ctx.Err() != nil {
			res.clientGone = true
		} else if !time.Now().Before(deadline) {
			res.phase = "total"
		}
		return res
	}
	if s.removedSince(removals, b.Addr) {
		s.h2.Done(conn, false)
		return removedTry()
	}
	// The stream lives as long as the client's request (a client gone
	// resets it), the total deadline, and the phase timeouts.
	sctx, cancel := context.WithCancelCause(ctx)
	tt := time.AfterFunc(time.Until(deadline), func() { cancel(errH2Total) })
	hs := &h2Stream{conn: conn, reused: reused, watch: &h2Watch{cancel: cancel}}
	hs.cancel = func(cause error) { tt.Stop(); hs.watch.stop(); cancel(cause) }
	res := tryResult{h2: hs}

	req, err := s.h2Request(sctx, conn, out, hs, t)
	if err != nil {
		hs.finish(s, false)
		res.err, res.phase, res.outcome.Kind = err, "send", retry.Reset
		return res
	}
	if hs.body == nil {
		hs.watch.arm(t.Read, errH2ReadTimeout)
	} else {
		hs.watch.arm(t.Send, errH2SendTimeout)
	}
	resp, err := conn.RoundTrip(req)
	hs.watch.stop()
	if err != nil {
		res.err = err
		res.phase = "read"
		// The backend did not process a stream it refused or that
		// came after its graceful GOAWAY (RFC 9113 8.7): not sent.
		res.outcome.Sent = !h2Unprocessed(err)
		cause := context.Cause(sctx)
		switch {
		case ctx.Err() != nil:
			res.clientGone = true
		case errors.Is(cause, errH2Total):
			res.err, res.phase, res.outcome.Kind = cause, "total", retry.Timeout
		case errors.Is(cause, errH2SendTimeout):
			res.err, res.phase, res.outcome.Kind = cause, "send", retry.Timeout
		case errors.Is(cause, errH2ReadTimeout):
			res.err, res.outcome.Kind = cause, retry.Timeout
		case hs.body != nil && hs.body.clientErr():
			res.err, res.clientGone = errors.Join(errClientBody, err), true
		case conn.Removed():
			res.err, res.outcome.Kind = removedErr(err), retry.Reset
		case h2HeaderTooLarge(err):
			res.err, res.outcome.Kind, res.spared = s.headerTooLarge(), retry.Reset, sparedRefused
		case h2FieldTooLarge(err):
			// The whole connection failed, every stream on it with the
			// same error: a reset like any other for each of them.
			res.err, res.outcome.Kind = fmt.Errorf("%w (a response header field longer than upstream.max_header_bytes (%d), or not valid HPACK)", err, s.respHeader.bytes), retry.Reset
		default:
			res.outcome.Kind = retry.Reset
		}
		hs.settleBody(out)
		hs.finish(s, false)
		return res
	}
	if err := s.checkHeaderCount(resp.Header); err != nil {
		resp.Body.Close()
		hs.settleBody(out)
		hs.finish(s, false)
		res.err, res.phase, res.outcome.Sent, res.outcome.Kind, res.spared = err, "read", true, retry.Reset, sparedRefused
		return res
	}
	// From now on `read` bounds the wait between two body reads.
	hs.watch.arm(t.Read, errH2ReadTimeout)
	resp.Body = &h2RespBody{ReadCloser: resp.Body, w: hs.watch, d: t.Read}
	res.resp = resp
	res.outcome.Sent = true
	res.outcome.StatusCode = resp.StatusCode
	res.outcome.GRPC = -1
	if isGRPC(resp.Header) {
		// Only a grpc-status in the header (a trailers-only answer: no
		// message sent) is a try's outcome the policy may act on.
		res.outcome.GRPC = retry.ParseGRPCStatus(resp.Header.Get("Grpc-Status"))
	}
	if st.policy.FailureStatus(resp.StatusCode) || res.outcome.GRPC > 0 && st.policy.FailureGRPC(resp.StatusCode, res.outcome.GRPC) {
		res.outcome.Kind = retry.Status
		hs.settleBody(out)
	}
	return res
}

// h2Unprocessed is whether a stream's error says the backend did not
// process it: REFUSED_STREAM, a GOAWAY whose last stream is before it, or
// a connection that could take no stream. (The library's errors for the
// last two are not exported: by their text.)
func h2Unprocessed(err error) bool {
	var se http2.StreamError
	if errors.As(err, &se) && se.Code == http2.ErrCodeRefusedStream {
		return true
	}
	switch err.Error() {
	case "http2: Transport received Server's graceful shutdown GOAWAY", "http2: client conn not usable":
		return true
	}
	return false
}

// h2HeaderTooLarge is whether a stream failed because the backend's
// response header list was larger than upstream.max_header_bytes (the
// transport's MaxHeaderListSize; the library's error is not exported: by
// its text, which TestResponseHeaderLimits would catch changing).
func h2HeaderTooLarge(err error) bool {
	var se http2.StreamError
	return errors.As(err, &se) && se.Cause != nil && se.Cause.Error() == "http2: response header list larger than advertised limit"
}

// h2FieldTooLarge is whether a connection failed decoding a response
// header: the library's HPACK decoder refuses a field longer than
// MaxHeaderListSize with a COMPRESSION_ERROR of the whole connection
// (which an HPACK block the backend got wrong gives too). Which stream
// carried it is not known: the try is not refused but reset.
func h2FieldTooLarge(err error) bool {
	var ce http2.ConnectionError
	return errors.As(err, &ce) && http2.ErrCode(ce) == http2.ErrCodeCompression
}

// h2Request builds the request of one stream: out's method, target,
// Host and header (forwarding headers as over HTTP/1.1), and its body.
func (s *Server) h2Request(ctx context.Context, conn *upstream.H2Conn, out *outRequest, hs *h2Stream, t service.Timeouts) (*http.Request, error) {
	if out.upgrade != "" {
		return nil, errors.New("a protocol upgrade (WebSocket) is not carried over an HTTP/2 upstream")
	}
	host := out.host
	if host == "" {
		host = conn.Addr().String()
	}
	scheme := "http"
	if s.upTLS {
		scheme = "https"
	}
	u := &url.URL{Scheme: scheme, Host: host, Opaque: out.uri}
	if strings.HasPrefix(out.uri, "//") {
		pu, err := url.ParseRequestURI(out.uri)
		if err != nil {
			return nil, fmt.Errorf("request target %q: %w", out.uri, err)
		}
		u = pu
		u.Scheme, u.Host = scheme, host
	}
	var hb bytes.Buffer
	bw := bufio.NewWriter(&hb)
	writeForwardHeader(bw, out.header, &out.fwd, "")
	bw.WriteString("\r\n")
	bw.Flush()
	mh, err := textproto.NewReader(bufio.NewReader(&hb)).ReadMIMEHeader()
	if err != nil {
		return nil, fmt.Errorf("request header: %w", err)
	}
	h := http.Header(mh)
	// "TE: trailers" is the one TE HTTP/2 allows; gRPC servers want it.
	for _, v := range out.header["Te"] {
		if strings.Contains(strings.ToLower(v), "trailers") {
			h.Set("Te", "trailers")
		}
	}
	req := &http.Request{
		Method: out.method, URL: u, Host: host, Header: h,
		Proto: "HTTP/2.0", ProtoMajor: 2,
	}
	if !out.body.empty() {
		r := out.body.reader()
		if tb, ok := out.body.rest.(*teeBody); ok {
			// A try after another only starts once the transport was
			// done with the body (settleBody): attach is safe.
			hs.tee = tb
			tb.attach()
			r = out.body.streamReader()
		}
		hs.body = &h2ReqBody{r: r, w: hs.watch, d: t.Send, idle: make(chan struct{}), b: out.body}
		req.Body = hs.body
		if out.trailer != nil {
			// The client's trailers follow the body (the transport sends
			// what the map holds once the body's reader reached EOF).
			// Those the client announced are announced to the backend
			// too (Go's HTTP/2 server, for one, drops the others).
			req.Trailer = http.Header{}
			for k := range *out.trailer {
				if trailerField(k, out.underscoreOK) {
					req.Trailer[k] = nil
				}
			}
			hs.body.trailer, hs.body.from, hs.body.underscoreOK = req.Trailer, out.trailer, out.underscoreOK
		}
		req.ContentLength = max(out.body.length, 0)
		if out.body.length < 0 {
			req.ContentLength = -1
		}
	} else {
		req.Body = http.NoBody
	}
	return req.WithContext(ctx), nil
}

// settleBody waits (briefly) for the transport to be done with the
// request body of a try that may be followed by another: closed, and no
// read of it in progress. The next try reads the same client body, never
// both at once: a body still in use then is detached from the try and
// cannot be replayed.
func (hs *h2Stream) settleBody(out *outRequest) {
	if hs.body == nil {
		return
	}
	t := time.NewTimer(clientGoneGrace)
	defer t.Stop()
	select {
	case <-hs.body.idle:
	case <-t.C:
		if hs.tee != nil {
			hs.tee.detach()
		}
		out.body.consumed.Store(true)
	}
}

// finish ends the stream: its context is cancelled (resetting it if it
// is still open) and it is given back to its connection.
func (hs *h2Stream) finish(s *Server, broken bool) {
	if hs.done {
		return
	}
	hs.done = true
	if hs.tee != nil {
		// A read of the client's body the transport may still be
		// blocked in changes nothing the request's steps read from now.
		hs.tee.detach()
	}
	hs.cancel(context.Canceled)
	s.h2.Done(hs.conn, broken)
}

// noteTry adds what the access log says about a try on a stream.
func (hs *h2Stream) noteTry(tr *accesslog.Try) {
	tr.Reused = hs.reused
	if hs.conn.Info() != "" {
		tr.Answer = hs.conn.Info()
	}
}

// h2ReqBody is the request body of one stream: the send timeout runs
// between two reads the transport makes of it, the read timeout from its
// end (the response header must come within it). idle is closed once the
// transport closed it and no read of it is in progress (the transport may
// close a body from another goroutine while a read waits on the client).
type h2ReqBody struct {
	r    io.Reader
	b    *reqBody
	w    *h2Watch
	d    time.Duration
	idle chan struct{}
	// trailer is the stream's request trailer map, filled from the
	// client's (*from) when the body ends.
	trailer      http.Header
	from         *http.Header
	underscoreOK bool // trailer fields named with _ pass (trailerField)

	mu      sync.Mutex
	eof     bool
	closed  bool
	reading bool
	isIdle  bool // idle is closed
}

func (rb *h2ReqBody) Read(p []byte) (int, error) {
	rb.mu.Lock()
	if rb.closed {
		rb.mu.Unlock()
		return 0, errors.New("request body closed")
	}
	rb.reading = true
	rb.mu.Unlock()
	n, err := rb.r.Read(p)
	if err == io.EOF && rb.from != nil {
		copyTrailer(rb.trailer, *rb.from, rb.underscoreOK)
	}
	rb.mu.Lock()
	rb.reading = false
	if err == io.EOF {
		rb.eof = true
	}
	rb.idleLocked()
	rb.mu.Unlock()
	if err == nil {
		rb.w.arm(rb.d, errH2SendTimeout)
	}
	return n, err
}

// Close is called by the transport when it is done with the body.
func (rb *h2ReqBody) Close() error {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	if rb.closed {
		return nil
	}
	rb.closed = true
	if rb.eof {
		// The request is sent: the response header is awaited now.
		rb.w.arm(rb.d, errH2ReadTimeout)
	}
	rb.idleLocked()
	return nil
}

func (rb *h2ReqBody) idleLocked() {
	if rb.closed && !rb.reading && !rb.isIdle {
		rb.isIdle = true
		close(rb.idle)
	}
}

func (rb *h2ReqBody) clientErr() bool { return rb.b.clientErr != nil }

// copyTrailer copies a client's request trailer fields into dst, but
// those a trailer must not carry (framing, routing, hop-by-hop: RFC 9110
// 6.5.1) and those without a value.
func copyTrailer(dst, src http.Header, underscoreOK bool) {
	for k, vv := range src {
		if len(vv) == 0 || !trailerField(k, underscoreOK) {
			continue
		}
		dst[k] = append(dst[k][:0:0], vv...)
	}
}

// h2RespBody re-arms the read timeout on every read of a response body.
type h2RespBody struct {
	io.ReadCloser
	w *h2Watch
	d time.Duration
}

func (b *h2RespBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == nil {
		b.w.arm(b.d, errH2ReadTimeout)
	} else {
		b.w.stop()
	}
	return n, err
}

// initStream is reqBody.init for a gRPC call to an HTTP/2 upstream: nothing
// is read before the first try (a streaming call sends its messages as
// the backend answers: waiting for the buffer to fill would stall it).
// The body is kept as it is sent, up to limit bytes; a try that failed
// after the whole body was read within the limit can be repeated.
func (b *reqBody) initStream(body io.Reader, contentLength, limit int64, atEOF func()) {
	b.length, b.atEOF = contentLength, atEOF
	if body == nil || contentLength == 0 {
		b.length = 0
		return
	}
	b.rest = &teeBody{b: b, r: body, limit: limit}
}

// teeBody reads a client's body for a try, keeping what it read in the
// body's buffer while within the limit (past it, the body cannot be
// replayed). At the end within the limit, the body is all in the buffer.
// It changes the body's state only while attached to a try: a read the
// transport is still blocked in when the try ends (detach) changes
// nothing the request's steps read afterwards.
type teeBody struct {
	b     *reqBody
	r     io.Reader
	limit int64

	mu       sync.Mutex
	detached bool
}

func (t *teeBody) attach() { t.mu.Lock(); t.detached = false; t.mu.Unlock() }
func (t *teeBody) detach() { t.mu.Lock(); t.detached = true; t.mu.Unlock() }

func (t *teeBody) Read(p []byte) (int, error) {
	b := t.b
	n, err := t.r.Read(p)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.detached {
		if err == nil {
			err = errors.New("request body detached from its try")
		}
		return n, err
	}
	if n > 0 {
		b.read.Add(int64(n))
		if !b.consumed.Load() && int64(len(b.buf)+n) <= t.limit {
			b.buf = append(b.buf, p[:n]...)
		} else {
			b.consumed.Store(true)
		}
	}
	switch {
	case err == io.EOF:
		if !b.consumed.Load() {
			b.rest, b.length = nil, int64(len(b.buf))
		}
		b.eof()
	case err != nil:
		b.clientErr = err
		return n, errors.Join(errClientBody, err)
	}
	return n, err
}

// streamReader is reqBody.reader for a body set up by initStream: what
// was kept, then the rest of the client's body (kept too, see teeBody).
func (b *reqBody) streamReader() io.Reader {
	if b.rest == nil {
		return bytes.NewReader(b.buf)
	}
	// teeBody appends to buf past the reader's end: what it reads stays.
	return io.MultiReader(bytes.NewReader(b.buf), b.rest)
}

// respondH2 streams a response that came on an HTTP/2 stream to the
// client, then its trailers (announced or not: gRPC's grpc-status comes
// in a trailer nobody announced). It returns true when the response was
// cut short and the client must see an abort.
func (s *Server) respondH2(ctx context.Context, w http.ResponseWriter, rec *accesslog.Record, res tryResult) (abort bool) {
	resp, hs := res.resp, res.h2
	defer hs.finish(s, false)
	defer resp.Body.Close()
	h := w.Header()
	removeHopByHop(resp.Header)
	for k, vv := range resp.Header {
		h[k] = vv
	}
	h["Via"] = append(h["Via"], "2 sluice")
	for k := range resp.Trailer {
		h.Add("Trailer", k)
	}
	grpc := isGRPC(resp.Header)
	if grpc {
		rec.GRPCStatus = resp.Header.Get("Grpc-Status")
	}
	w.WriteHeader(resp.StatusCode)
	rec.Status = resp.StatusCode
	// gRPC messages and bodies of unknown length go to the client as
	// they come (a streaming call must not sit in a buffer).
	flush := grpc || resp.ContentLength < 0 || strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	readErr, clientGone := s.relayBody(w, resp.Body, flush, rec)
	if clientGone {
		return false
	}
	if readErr != io.EOF {
		if ctx.Err() != nil {
			rec.Status = statusClientClosed
			rec.Error = "client went away during the response"
			return false
		}
		rec.Error = "backend response cut short: " + readErr.Error()
		if cause := context.Cause(ctxOf(resp)); isTimeout(cause) {
			rec.Error = "backend response body timed out: " + cause.Error()
		} else if res.h2 != nil && res.h2.conn.Removed() {
			rec.Error = "backend response cut short: " + removedErr(readErr).Error()
		}
		return true
	}
	for k, vv := range resp.Trailer {
		if slicesContainsFold(h["Trailer"], k) {
			h[k] = vv // announced
			continue
		}
		for _, v := range vv {
			h.Add(http.TrailerPrefix+k, v)
		}
	}
	if grpc {
		if v := resp.Trailer.Get("Grpc-Status"); v != "" {
			rec.GRPCStatus = v
		}
	}
	return false
}

// ctxOf is the context of the request a response answers.
func ctxOf(resp *http.Response) context.Context {
	if resp.Request != nil {
		return resp.Request.Context()
	}
	return context.Background()
}

func slicesContainsFold(l []string, s string) bool {
	for _, x := range l {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// discardH2 ends a try on a stream whose response is not passed on: the
// stream is reset (nothing to drain: the connection stays usable).
func (s *Server) discardH2(res tryResult) {
	if res.resp != nil {
		res.resp.Body.Close()
	}
	res.h2.finish(s, false)
}
