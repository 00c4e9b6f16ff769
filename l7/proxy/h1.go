package proxy

// HTTP/1.1 from clients on a plain-text listener (no TLS, no h2c): a
// connection loop of sluice's own instead of net/http's server.
//
// One goroutine per client connection reads a request with net/http's
// parser (http.ReadRequest on a pooled bufio.Reader: the same parser,
// hence the same framing rules, as net/http's server), passes it to
// ServeHTTP (the one request pipeline: admit, prepare, pick, try, decide,
// respond) with a ResponseWriter that writes the response header straight
// from the handler's header map (no clone), and reads the next request
// only once the response is done (no pipelining concurrency). What
// net/http's server adds per request and this loop does not: a goroutine
// and a context per request, a background read per request, a header
// map clone per response. The server-level checks net/http makes around
// its parser are made here the same way, with the same answers (see
// readRequest): the header size limit (431), Host required and valid,
// header names and values valid, HTTP/2 and HTTP/0.x refused (505), an
// unsupported transfer coding (501), Expect (100-continue sent when the
// body is first read; any other expectation 417).
//
// A client that goes away while its request is with a backend is noticed
// by a read of the connection (net/http's background read), started only
// for a request still in flight clientWatchDelay after it was read (and
// whose body has been read): most requests never pay for it.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	_ "unsafe" // go:linkname readRequest

	"golang.org/x/net/http/httpguts"

	"github.com/sluicelb/sluice/l7/evloop"
	"github.com/sluicelb/sluice/l7/sockio"
)

// clientWatchDelay is how long a request runs before its connection is
// watched for the client going away.
const clientWatchDelay = 5 * time.Millisecond

// maxPostHandlerRead is how much of a request body nobody read is
// discarded after the response to keep the connection (net/http's
// maxPostHandlerReadBytes); a longer one closes it.
const maxPostHandlerRead = 256 << 10

// rstAvoidanceDelay is how long a connection closed with an unread
// request body stays half-closed, so the client reads the answer before a
// reset (net/http's closeWriteAndWait).
const rstAvoidanceDelay = 500 * time.Millisecond

// aLongTimeAgo is a deadline in the past, to interrupt a read.
var aLongTimeAgo = time.Unix(1, 0)

// h1Server serves the HTTP/1.1 connections of one plain-text listener.
type h1Server struct {
	s        *Server
	mu       sync.Mutex
	conns    map[*h1Conn]struct{}
	ln       net.Listener
	shutting atomic.Bool
	active   sync.WaitGroup // one per connection loop
	readers  sync.Pool      // *bufio.Reader
	writers  sync.Pool      // *bufio.Writer
	socks    sync.Pool      // *sockio.Conn
	date     atomic.Pointer[dateLine]
	// workers are the goroutines connections start on (kept between
	// connections: see workers).
	workers workers
	// loops, when set, serve the connections: each runs as a task of an
	// event loop (l7/evloop) instead of a goroutine on the runtime's
	// poller.
	loops *evloop.Group
}

// dateLine is a response's Date field, made once per second.
type dateLine struct {
	sec  int64
	line string
}

// Connection states, for Shutdown.
const (
	h1Idle   int32 = iota // waiting for a request (or the first byte of one)
	h1Active              // reading a request or answering it
)

// serve accepts connections on l until it is closed.
func (h *h1Server) serve(l net.Listener) error {
	if !h.listening(l) {
		return http.ErrServerClosed
	}
	var backoff time.Duration
	for {
		rwc, err := l.Accept()
		if err != nil {
			if h.shutting.Load() {
				return http.ErrServerClosed
			}
			if acceptRetry(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				h.s.log.Debug("accept", "error", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		if !h.start(rwc) {
			rwc.Close()
		}
	}
}

// dispatch serves the connections dl gives (on its accepting goroutine)
// until it is closed; ll counts them against the connection limit.
func (h *h1Server) dispatch(dl Dispatcher, ll *limitListener) error {
	if !h.listening(ll) {
		return http.ErrServerClosed
	}
	err := dl.Dispatch(func(rwc net.Conn) bool {
		lc := ll.admit(rwc)
		if lc == nil {
			return true // over the limit: closed, counted as refused
		}
		if !h.start(lc) {
			lc.release() // the dispatcher's again
			return false
		}
		return true
	})
	if h.shutting.Load() {
		return http.ErrServerClosed
	}
	return err
}

// listening makes l the listener shutdown closes; false (l closed) when
// the server is shutting down already.
func (h *h1Server) listening(l net.Listener) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.shutting.Load() {
		l.Close()
		return false
	}
	h.ln = l
	return true
}

// start serves rwc on a goroutine (a kept one: workers) that moves it
// to an event loop after its first request, when the server has loops
// and the connection stays open (moveToLoop); false (rwc untouched) when
// the server is shutting down.
func (h *h1Server) start(rwc net.Conn) bool {
	c := &h1Conn{srv: h, rwc: rwc, remain: -1}
	if !h.track(c) {
		return false
	}
	h.workers.Go(c.serve)
	return true
}

// adopt moves the connection's socket to loop l (out of the runtime's
// poller); rwc keeps its wrapper (the connection limit's).
func (c *h1Conn) adopt(l *evloop.Loop) error {
	lc, limited := c.rwc.(*limitConn)
	inner := c.rwc
	if limited {
		inner = lc.Conn
	}
	ec, err := l.Adopt(inner)
	if err != nil {
		return err
	}
	if limited {
		lc.Conn = ec
	} else {
		c.rwc = ec
	}
	c.ev = ec
	return nil
}

// serveTask is serve as a task of an event loop.
func (c *h1Conn) serveTask(ctx context.Context) {
	c.task = evloop.TaskFrom(ctx)
	c.serve()
}

// acceptRetry is whether an accept error passes (out of file
// descriptors or memory for a while, a timeout): retried after a pause
// that doubles up to 1s, as net/http's server does.
func acceptRetry(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() ||
		errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// track adds c to the connections Shutdown waits for, its socket moved
// to an event loop when the server has them (under the lock Shutdown
// closes connections with); false when the server is shutting down.
func (h *h1Server) track(c *h1Conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.shutting.Load() {
		return false
	}
	if h.conns == nil {
		h.conns = map[*h1Conn]struct{}{}
	}
	h.conns[c] = struct{}{}
	h.active.Add(1)
	return true
}

func (h *h1Server) untrack(c *h1Conn) {
	h.mu.Lock()
	delete(h.conns, c)
	h.mu.Unlock()
	h.active.Done()
}

// shutdown stops accepting, closes idle connections and waits for the
// others to finish their request until ctx ends; then it closes them.
func (h *h1Server) shutdown(ctx context.Context) error {
	h.mu.Lock()
	h.shutting.Store(true)
	h.workers.stop()
	if h.ln != nil {
		h.ln.Close()
	}
	for c := range h.conns {
		if c.state.Load() == h1Idle {
			c.rwc.Close()
		}
	}
	h.mu.Unlock()
	done := make(chan struct{})
	go func() { h.active.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	h.closeAll()
	<-done
	return ctx.Err()
}

// closeAll closes every connection.
func (h *h1Server) closeAll() {
	h.mu.Lock()
	h.shutting.Store(true)
	h.workers.stop()
	if h.ln != nil {
		h.ln.Close()
	}
	for c := range h.conns {
		c.rwc.Close()
	}
	h.mu.Unlock()
}

// dateField is the Date of a response sent now.
func (h *h1Server) dateField() string {
	now := time.Now()
	sec := now.Unix()
	if d := h.date.Load(); d != nil && d.sec == sec {
		return d.line
	}
	d := &dateLine{sec: sec, line: now.UTC().Format(http.TimeFormat)}
	h.date.Store(d)
	return d.line
}

// h1Conn is one client connection.
type h1Conn struct {
	srv *h1Server
	rwc net.Conn
	// ev is rwc's socket when an event loop serves the connection, and
	// task the loop's task that does (nil: a goroutine does).
	ev     *evloop.Conn
	task   *evloop.Task
	sock   *sockio.Conn // rwc's reads and writes: outside the scheduler for a TCP connection
	remote string
	peer   peer // remote parsed, not judged against trusted proxies (peer.with)
	br     *bufio.Reader
	bw     *bufio.Writer
	state  atomic.Int32
	ctx    context.Context // ends when the client is seen gone
	cancel context.CancelFunc
	// remain bounds what is read while a request header is read (< 0:
	// no bound).
	remain     int64
	lastMethod string
	hijacked   bool
	moved      bool       // to an event loop, between two requests (moveToLoop)
	resp       h1Response // the response being written (reused)
	out        h1Out      // what bw writes to
	body       h1ReqBody  // the request body's reader (reused)
	// req is the state of the connection's last request, kept for its
	// next (see request.finish): ~1.1 KB that would otherwise be new
	// memory every request (nil: allocate one).
	req *request

	// The watch for a client gone (see watchFire); under wmu.
	wmu       sync.Mutex
	watching  bool // a request is in flight
	bodyDone  bool // its body is read: the connection may be read
	reading   bool // watchFire is reading
	stopping  bool // stopWatch interrupted that read
	hasAhead  bool // watchFire read a byte of what follows the request
	ahead     byte
	watchDone chan struct{}
	timer     *time.Timer
	cw        *clientWatch
	// On an event loop: the loop's timer that makes the watch due, and
	// whether it is (the loop watches the socket then; see watchLoop).
	ltimer   *evloop.Timer
	watchDue bool
}

// Read reads the connection for the bufio.Reader: the byte the watch
// read first, and within remain while a request header is read.
func (c *h1Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.hasAhead {
		p[0] = c.ahead
		c.hasAhead = false
		return 1, nil
	}
	if c.remain >= 0 {
		if c.remain == 0 {
			return 0, io.EOF
		}
		if int64(len(p)) > c.remain {
			p = p[:c.remain]
		}
	}
	n, err := c.sock.Read(p)
	if c.remain >= 0 {
		c.remain -= int64(n)
	}
	return n, err
}

// serve runs the connection's loop: read a request, answer it, again.
func (c *h1Conn) serve() {
	h, s := c.srv, c.srv.s
	// resumed: the connection was moved to this event loop between two
	// requests (moveToLoop); what it has buffered and read ahead goes on.
	resumed := c.moved
	c.moved = false
	if !resumed {
		if ra := c.rwc.RemoteAddr(); ra != nil {
			c.remote = ra.String()
		}
		c.peer = parsePeer(c.remote, nil)
		c.br = h.getReader(c)
	}
	base := context.Background()
	if c.task != nil {
		base = c.task.Context() // the event loop's waits find the task in it
	}
	c.ctx, c.cancel = context.WithCancel(base)
	conn := c.rwc
	if lc, ok := c.rwc.(*limitConn); ok {
		// Reads and writes go to the connection itself: sockio (and
		// net.Buffers' writev) know only the net package's own types.
		conn = lc.Conn
	}
	// A TCP connection's reads and writes skip the scheduler's system-call
	// hand-off (sockio); deadlines and Close act on them as on rwc's.
	c.sock = h.getSock(conn)
	c.out.sock = c.sock
	if !resumed {
		c.bw = h.getWriter(&c.out)
	}
	defer func() {
		c.cancel()
		if c.timer != nil {
			c.timer.Stop()
			c.timer = nil
		}
		if c.ltimer != nil {
			c.ltimer.Stop()
		}
		if c.moved {
			// Served on from here by a task of the loop its socket moved
			// to; this goroutine's socket state is nobody's now.
			h.putSock(c.sock)
			c.ev.Loop().Go(c.serveTask)
			return
		}
		if !c.hijacked {
			_ = c.bw.Flush()
			c.sock.Finish()
			c.rwc.Close()
			h.putReader(c.br)
			h.putWriter(c.bw)
		}
		h.untrack(c)
		if !c.hijacked {
			// After untrack: whoever looked at the connection under the
			// server's lock is done with it.
			h.putSock(c.sock)
		}
	}()
	lim := s.limits
	if resumed {
		if !c.awaitNext() {
			return
		}
	} else {
		// The first request's header must come within the header timeout
		// of the connection (net/http's ReadHeaderTimeout); until its
		// first byte the connection is idle (a shutdown closes it).
		if lim.HeaderTimeout > 0 {
			_ = c.rwc.SetReadDeadline(time.Now().Add(lim.HeaderTimeout))
		}
		c.remain = c.headerLimit() // what the first Peek reads counts
		if _, err := c.br.Peek(1); err != nil {
			return
		}
		c.state.Store(h1Active)
	}
	for {
		r, err := c.readRequest()
		if err != nil {
			c.answerReadError(err)
			return
		}
		if h.shutting.Load() {
			return
		}
		if !c.serveRequest(r) {
			return
		}
		c.state.Store(h1Idle)
		if h.shutting.Load() {
			return
		}
		if c.task == nil && c.moveToLoop() {
			return // the loop's task goes on (see the deferred function)
		}
		if !c.awaitNext() {
			return
		}
	}
}

// awaitNext waits, idle, for the next request, within the idle timeout;
// the header timeout starts with its first byte. False: the connection
// is done.
func (c *h1Conn) awaitNext() bool {
	lim := c.srv.s.limits
	if c.br.Buffered() == 0 {
		if lim.IdleTimeout > 0 {
			_ = c.rwc.SetReadDeadline(c.task.Now().Add(lim.IdleTimeout))
		} else {
			_ = c.rwc.SetReadDeadline(time.Time{})
		}
		if _, err := c.br.Peek(1); err != nil {
			return false
		}
	}
	c.state.Store(h1Active)
	if lim.HeaderTimeout > 0 {
		_ = c.rwc.SetReadDeadline(c.task.Now().Add(lim.HeaderTimeout))
	}
	return true
}

// moveToLoop moves a connection served by a goroutine, idle after a
// request that kept it open, to an event loop of the server (when it has
// some): a connection that carries more than one request is served by a
// loop from its second request on, one that carries a single request
// never pays for the move (taking the socket out of the runtime's poller,
// handing it to the loop's thread). True: moved; serve's deferred
// function starts the loop's task as its last step.
func (c *h1Conn) moveToLoop() bool {
	h := c.srv
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.loops == nil || h.shutting.Load() {
		return false
	}
	// Under h.mu: shutdown and closeAll close rwc, which adopt replaces.
	if err := c.adopt(h.loops.Pick()); err != nil {
		h.s.log.Debug("event loop: connection not moved", "error", err)
		return false
	}
	c.moved = true
	return true
}

// headerLimit is how much may be read for a request header: net/http's
// initialReadLimitSize (client.max_header_bytes and 4 KiB).
func (c *h1Conn) headerLimit() int64 { return int64(c.srv.s.limits.MaxHeaderBytes) + 4096 }

// readRequest reads one request header with net/http's parser and makes
// the checks net/http's server makes around it.
func (c *h1Conn) readRequest() (*http.Request, error) {
	if c.remain < 0 {
		c.remain = c.headerLimit()
	}
	if c.lastMethod == http.MethodPost {
		// RFC 9112 2.2: a CRLF some old clients send after a POST body.
		peek, _ := c.br.Peek(4)
		n := 0
		for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
			n++
		}
		_, _ = c.br.Discard(n)
	}
	r, err := readRequest(c.br)
	if err != nil {
		if c.remain == 0 {
			return nil, errHeaderTooLarge
		}
		return nil, err
	}
	c.remain = -1
	if r.ProtoMajor != 1 && !(r.ProtoMajor == 2 && r.ProtoMinor == 0 && r.Method == "PRI" && r.RequestURI == "*") {
		return nil, statusErr{http.StatusHTTPVersionNotSupported, "unsupported protocol version"}
	}
	c.lastMethod = r.Method
	hosts, haveHost := r.Header["Host"]
	h2Upgrade := r.Method == "PRI" && len(r.Header) == 0 && r.URL.Path == "*" && r.Proto == "HTTP/2.0"
	if r.ProtoAtLeast(1, 1) && (!haveHost || len(hosts) == 0) && !h2Upgrade && r.Method != http.MethodConnect {
		return nil, statusErr{http.StatusBadRequest, "missing required Host header"}
	}
	if len(hosts) == 1 && !httpguts.ValidHostHeader(hosts[0]) {
		return nil, statusErr{http.StatusBadRequest, "malformed Host header"}
	}
	for k, vv := range r.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, statusErr{http.StatusBadRequest, "invalid header name"}
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, statusErr{http.StatusBadRequest, "invalid header value"}
			}
		}
	}
	delete(r.Header, "Host")
	r.RemoteAddr = c.remote
	if h2Upgrade {
		r.Close = true
	}
	return r, nil
}

// readRequest is net/http's parser as its own server calls it: what
// http.ReadRequest runs, before it deletes the Host field (the server
// needs the field itself for its checks: present, once, valid; the
// request's Host may come from an absolute-form target instead). It is
// the parser every HTTP/1 request of every listener goes through.
//
//go:linkname readRequest net/http.readRequest
func readRequest(b *bufio.Reader) (*http.Request, error)

// errHeaderTooLarge is a request header past client.max_header_bytes.
var errHeaderTooLarge = errors.New("request header too large")

// statusErr is a request refused with status and text, as net/http's
// server answers it.
type statusErr struct {
	code int
	text string
}

func (e statusErr) Error() string { return strconv.Itoa(e.code) + " " + e.text }

// answerReadError answers a request that could not be read the way
// net/http's server does (same status, same body), or says nothing when
// the connection ended or timed out.
func (c *h1Conn) answerReadError(err error) {
	const errorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
	_ = c.rwc.SetWriteDeadline(time.Now().Add(errorWriteTime))
	var se statusErr
	switch {
	case err == errHeaderTooLarge:
		const publicErr = "431 Request Header Fields Too Large"
		_, _ = io.WriteString(c.rwc, "HTTP/1.1 "+publicErr+errorHeaders+publicErr)
		c.closeWriteAndWait()
	case strings.HasPrefix(err.Error(), "unsupported transfer encoding"):
		// RFC 9112 6.1: 501 for a transfer coding not understood (the
		// coding is not echoed).
		_, _ = io.WriteString(c.rwc, "HTTP/1.1 501 Not Implemented"+errorHeaders+"Unsupported transfer encoding")
	case isCommonNetReadError(err):
		// The client went away or timed out: nothing to answer.
	case errors.As(err, &se):
		t := http.StatusText(se.code)
		_, _ = fmt.Fprintf(c.rwc, "HTTP/1.1 %d %s: %s%s%d %s: %s", se.code, t, se.text, errorHeaders, se.code, t, se.text)
	default:
		const publicErr = "400 Bad Request"
		_, _ = io.WriteString(c.rwc, "HTTP/1.1 "+publicErr+errorHeaders+publicErr)
	}
}

// isCommonNetReadError is net/http's: the connection ended, timed out or
// failed while reading (no answer is written).
func isCommonNetReadError(err error) bool {
	if err == io.EOF {
		return true
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return true
	}
	if oe, ok := err.(*net.OpError); ok && oe.Op == "read" {
		return true
	}
	return false
}

// closeWriteAndWait half-closes the connection and waits a moment, so
// the client reads the answer before the close resets the connection.
func (c *h1Conn) closeWriteAndWait() {
	_ = c.bw.Flush()
	closeWrite(c.rwc)
	if c.task != nil {
		evloop.Sleep(c.task.Context(), rstAvoidanceDelay) // the loop serves others meanwhile
		return
	}
	time.Sleep(rstAvoidanceDelay)
}

// serveRequest answers one request; false when the connection is to be
// closed after it.
func (c *h1Conn) serveRequest(r *http.Request) (keep bool) {
	h := c.srv
	w := &c.resp
	*w = h1Response{c: c, req: r, h: w.h, cl: -1, trailers: w.trailers[:0]}
	if w.h == nil {
		w.h = make(http.Header, 8)
	} else {
		clear(w.h)
	}
	w.wantsClose = r.Close
	w.wants10KeepAlive = r.ProtoMinor == 0 && hasToken(r.Header["Connection"], "keep-alive")

	hasBody := r.Body != nil && r.Body != http.NoBody
	c.body = h1ReqBody{c: c, rc: r.Body}
	if hasBody {
		r.Body = &c.body
	}
	// As net/http's server: the first Expect field decides.
	if expect := r.Header.Get("Expect"); expect != "" {
		if continues := hasToken([]string{expect}, "100-continue"); continues && r.ProtoAtLeast(1, 1) {
			w.canContinue = hasBody && r.ContentLength != 0
		} else if !continues {
			// net/http: any other expectation is refused.
			w.h.Set("Connection", "close")
			w.h["Content-Length"] = contentLength0
			_ = w.SetWriteDeadline(time.Now().Add(errorWriteTime))
			w.WriteHeader(http.StatusExpectationFailed)
			w.finish()
			return false
		}
	}

	c.wmu.Lock()
	c.watching, c.bodyDone, c.cw = true, !hasBody, nil
	c.wmu.Unlock()
	if c.ev != nil {
		c.watchDue = false
		if c.ltimer == nil {
			c.ltimer = c.task.Loop().AfterFunc(clientWatchDelay, c.watchLoopDue)
		} else {
			c.ltimer.Reset(clientWatchDelay)
		}
	} else if c.timer == nil {
		c.timer = time.AfterFunc(clientWatchDelay, c.watchFire)
	} else {
		c.timer.Reset(clientWatchDelay)
	}
	aborted := c.handle(w, r)
	c.stopWatch()
	if w.hijacked {
		c.hijacked = true
		return false
	}
	if aborted || c.ctx.Err() != nil {
		return false
	}
	w.finish()
	_ = c.bw.Flush()
	if w.closeAfter || w.failed || h.shutting.Load() {
		if !c.bodyEOF() {
			c.closeWriteAndWait()
		}
		return false
	}
	if !c.bodyEOF() && !c.discardBody() {
		c.closeWriteAndWait()
		return false
	}
	return true
}

// bodyEOF is whether the request body was read to its end (or had none).
func (c *h1Conn) bodyEOF() bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.bodyDone
}

// discardBody reads what is left of a request body nobody read, up to
// maxPostHandlerRead, so the connection can carry the next request;
// false when it could not.
func (c *h1Conn) discardBody() bool {
	if c.resp.canContinue && !c.resp.wroteContinue {
		// The client waits for a 100 Continue that never came: it may
		// or may not send the body; the connection is not reusable.
		return false
	}
	_ = c.rwc.SetReadDeadline(time.Now().Add(errorWriteTime))
	n, err := io.CopyN(io.Discard, c.body.rc, maxPostHandlerRead+1)
	return err == io.EOF && n <= maxPostHandlerRead
}

// handle runs ServeHTTP (or the handler a test put in its place) and
// returns true when it aborted the response (http.ErrAbortHandler):
// the client must see the connection cut, never a complete-looking
// response.
func (c *h1Conn) handle(w *h1Response, r *http.Request) (aborted bool) {
	s := c.srv.s
	defer func() {
		if v := recover(); v != nil {
			aborted = true
			if v != http.ErrAbortHandler {
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				s.log.Error("panic serving a request", "client", c.remote, "panic", fmt.Sprint(v), "stack", string(buf))
			}
		}
	}()
	if r.Method == http.MethodOptions && r.RequestURI == "*" {
		// As net/http's server: OPTIONS * is answered here, never proxied.
		_ = w.SetWriteDeadline(time.Now().Add(errorWriteTime))
		w.h.Set("Content-Length", "0")
		if r.ContentLength != 0 {
			_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 4<<10))
		}
		return false
	}
	if hd := s.http.Handler; hd != http.Handler(s) {
		hd.ServeHTTP(w, r) // a test's wrapper around ServeHTTP
		return false
	}
	s.ServeHTTP(w, r)
	return false
}

// watch makes the connection's watch act on cw (the request's) when the
// client goes away.
func (c *h1Conn) watch(cw *clientWatch) {
	c.wmu.Lock()
	c.cw = cw
	c.wmu.Unlock()
}

// watchFire runs clientWatchDelay after a request started: while it is
// still in flight and its body is read, it reads the connection until
// the client goes away (then the request's context ends and its backend
// connection is acted on) or sends more (kept for the next request), or
// until stopWatch interrupts it at the request's end.
func (c *h1Conn) watchFire() {
	c.wmu.Lock()
	if !c.watching || c.reading || !c.bodyDone || c.hasAhead || c.br.Buffered() > 0 {
		c.wmu.Unlock()
		return
	}
	c.reading = true
	c.watchDone = make(chan struct{})
	_ = c.rwc.SetReadDeadline(time.Time{})
	c.wmu.Unlock()
	var b [1]byte
	n, err := c.rwc.Read(b[:])
	c.wmu.Lock()
	if n == 1 {
		c.ahead, c.hasAhead = b[0], true
	}
	gone := n == 0 && err != nil && !c.stopping
	cw := c.cw
	c.wmu.Unlock()
	if gone {
		c.gone(cw)
	}
	c.wmu.Lock()
	c.reading = false
	close(c.watchDone)
	c.wmu.Unlock()
}

// gone acts on the client going away: the connection's context ends and
// the request's watch (cw, when set) acts on its backend connection.
func (c *h1Conn) gone(cw *clientWatch) {
	c.cancel()
	if cw != nil {
		cw.fire()
	}
}

// watchLoopDue runs on the event loop clientWatchDelay after a request
// started: from then on (once its body is read) the loop watches the
// socket for the client going away.
func (c *h1Conn) watchLoopDue() {
	c.watchDue = true
	c.armLoopWatch()
}

// armLoopWatch starts the loop's watch of the socket when the request is
// in flight past clientWatchDelay and its body is read.
func (c *h1Conn) armLoopWatch() {
	c.wmu.Lock()
	arm := c.watching && c.watchDue && c.bodyDone
	c.wmu.Unlock()
	if arm {
		c.ev.Watch(c.watchLoop)
	}
}

// watchLoop is watchFire on an event loop: the loop calls it when the
// socket turns readable while the request is with a backend. It reads
// without waiting: a byte is kept for the next request; the end of the
// stream or an error is the client gone.
func (c *h1Conn) watchLoop() {
	c.wmu.Lock()
	if !c.watching || !c.bodyDone || c.hasAhead || c.br.Buffered() > 0 {
		c.wmu.Unlock()
		return
	}
	b, n, err := c.ev.Read1()
	if n == 1 {
		c.ahead, c.hasAhead = b, true
	}
	gone := n == 0 && err != nil
	if n == 1 || gone {
		c.ev.Unwatch()
	}
	cw := c.cw
	c.wmu.Unlock()
	if gone {
		c.gone(cw)
	}
}

// stopWatch ends the watch of the request that ended (interrupting its
// read, if one runs).
func (c *h1Conn) stopWatch() {
	if c.ev != nil {
		c.ltimer.Stop()
		c.ev.Unwatch()
		c.wmu.Lock()
		c.watching, c.cw = false, nil
		c.wmu.Unlock()
		return
	}
	c.timer.Stop()
	c.wmu.Lock()
	c.watching, c.cw = false, nil
	if c.reading {
		c.stopping = true
		_ = c.rwc.SetReadDeadline(aLongTimeAgo)
		done := c.watchDone
		c.wmu.Unlock()
		<-done
		c.wmu.Lock()
		c.stopping = false
	}
	c.wmu.Unlock()
}

// h1ReqBody is a request body as the handler reads it: it sends 100
// Continue before the first read when the client expects it, and notes
// the body's end (the connection may be watched from then on).
type h1ReqBody struct {
	c  *h1Conn
	rc io.ReadCloser
}

func (b *h1ReqBody) Read(p []byte) (int, error) {
	c := b.c
	w := &c.resp
	if w.canContinue && !w.wroteContinue && !w.wroteHeader {
		w.wroteContinue = true
		_, _ = c.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		_ = c.bw.Flush()
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		c.wmu.Lock()
		c.bodyDone = true
		c.wmu.Unlock()
		if c.ev != nil {
			c.armLoopWatch()
		}
	}
	return n, err
}

// Close does not drain the body (the loop decides what to do with an
// unread one after the response).
func (b *h1ReqBody) Close() error { return nil }

// h1Response is the http.ResponseWriter of the loop: the header is
// written from the handler's map as it is (no clone), the body framed by
// its Content-Length, chunked without one (HTTP/1.1) or delimited by the
// connection's close (HTTP/1.0).
type h1Response struct {
	c                *h1Conn
	req              *http.Request
	h                http.Header
	status           int
	wroteHeader      bool
	noBody           bool // HEAD, 1xx, 204, 304
	chunked          bool
	cl               int64 // the declared Content-Length (-1: none)
	written          int64
	wantsClose       bool
	wants10KeepAlive bool
	closeAfter       bool // the connection closes after this response
	failed           bool // a write failed, or the body is short of its length
	canContinue      bool // the client expects 100 Continue before sending its body
	wroteContinue    bool
	hijacked         bool
	trailers         []string // the trailer fields announced (chunked only)
}

func (w *h1Response) Header() http.Header { return w.h }

// WriteHeader writes the status line and the header.
func (w *h1Response) WriteHeader(code int) {
	if w.wroteHeader || w.hijacked {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	h := w.h
	cl := int64(-1)
	if v := h["Content-Length"]; len(v) == 1 {
		if n, err := strconv.ParseInt(v[0], 10, 64); err == nil && n >= 0 {
			cl = n
		}
	}
	bw := w.beginHeader(code, cl)
	for k, vv := range h {
		switch {
		case k == "Transfer-Encoding" || k == "Connection":
			continue
		case strings.HasPrefix(k, http.TrailerPrefix):
			continue // written after the body
		case k == "Trailer" && w.chunked:
			for _, v := range vv {
				for name := range strings.SplitSeq(v, ",") {
					if name = http.CanonicalHeaderKey(strings.TrimSpace(name)); name != "" {
						w.trailers = append(w.trailers, name)
					}
				}
			}
		case k == "Trailer":
			continue // no trailer section without chunked
		}
		for _, v := range vv {
			writeField(bw, k, v)
		}
	}
	_, date := h["Date"]
	w.endHeader(date)
}

// beginHeader decides the response's framing and whether the connection
// is kept after it (its header's Content-Length cl, -1 when none; a
// Connection: close set in its header map), and writes the status line.
// The fields follow, then endHeader.
func (w *h1Response) beginHeader(code int, cl int64) *bufio.Writer {
	w.wroteHeader = true
	w.status = code
	c, r := w.c, w.req
	w.noBody = r.Method == http.MethodHead || code < 200 || code == http.StatusNoContent || code == http.StatusNotModified
	w.cl = cl
	keep := !w.wantsClose && !c.srv.shutting.Load()
	if r.ProtoMinor == 0 {
		keep = w.wants10KeepAlive && (w.cl >= 0 || w.noBody)
	}
	if hasToken(w.h["Connection"], "close") {
		keep = false
	}
	if !w.noBody && w.cl < 0 {
		if r.ProtoAtLeast(1, 1) {
			w.chunked = true
		} else {
			keep = false // the body ends with the connection
		}
	}
	if w.canContinue && !w.wroteContinue {
		// The client still waits for 100 Continue: it may send its body
		// or not; the connection is not reused.
		keep = false
	}
	w.closeAfter = !keep
	bw := c.bw
	_, _ = bw.WriteString("HTTP/1.1 ")
	writeUint(bw, uint64(code), 10)
	_ = bw.WriteByte(' ')
	if t := http.StatusText(code); t != "" {
		_, _ = bw.WriteString(t)
	} else {
		_, _ = bw.WriteString("status code " + strconv.Itoa(code))
	}
	_, _ = bw.WriteString("\r\n")
	return bw
}

// endHeader writes the fields of sluice's own after the response's: Date
// when it had none (date false), Connection and Transfer-Encoding as
// beginHeader decided, and the header's end.
func (w *h1Response) endHeader(date bool) {
	bw := w.c.bw
	if !date {
		_, _ = bw.WriteString("Date: ")
		_, _ = bw.WriteString(w.c.srv.dateField())
		_, _ = bw.WriteString("\r\n")
	}
	switch {
	case w.closeAfter:
		_, _ = bw.WriteString("Connection: close\r\n")
	case w.req.ProtoMinor == 0:
		_, _ = bw.WriteString("Connection: keep-alive\r\n")
	}
	if w.chunked {
		_, _ = bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	_, _ = bw.WriteString("\r\n")
}

// Write writes body bytes (framed).
func (w *h1Response) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if w.noBody {
		return 0, http.ErrBodyNotAllowed
	}
	if w.cl >= 0 && w.written+int64(len(p)) > w.cl {
		return 0, http.ErrContentLength
	}
	bw := w.c.bw
	if w.chunked {
		writeUint(bw, uint64(len(p)), 16)
		_, _ = bw.WriteString("\r\n")
	}
	var n int
	var err error
	if len(p) > bw.Available() && bw.Buffered() > 0 {
		// What is buffered (the header, a chunk's size) and p in one
		// system call, not two.
		n, err = w.c.out.flushWith(bw, p)
	} else {
		n, err = bw.Write(p)
	}
	w.written += int64(n)
	if err == nil && w.chunked {
		_, err = bw.WriteString("\r\n")
	}
	if err != nil {
		w.failed = true
	}
	return n, err
}

// finish ends the response: the last chunk and the trailers, or a close
// when the body fell short of its Content-Length.
func (w *h1Response) finish() {
	if w.hijacked {
		return
	}
	if !w.wroteHeader {
		if _, ok := w.h["Content-Length"]; !ok && !w.noBodyFor(http.StatusOK) {
			w.h["Content-Length"] = contentLength0
		}
		w.WriteHeader(http.StatusOK)
	}
	if w.cl >= 0 && w.written != w.cl && !w.noBody {
		w.failed = true
		return
	}
	if !w.chunked {
		return
	}
	bw := w.c.bw
	_, _ = bw.WriteString("0\r\n")
	for _, k := range w.trailers {
		for _, v := range w.h[k] {
			writeField(bw, k, v)
		}
	}
	for k, vv := range w.h {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok && name != "" {
			for _, v := range vv {
				writeField(bw, name, v)
			}
		}
	}
	_, _ = bw.WriteString("\r\n")
}

// h1Out is the client connection as the response's bufio.Writer writes
// to it: a body chunk larger than what is left of the buffer goes out in
// one writev with what the buffer holds (the header, usually), instead of
// a write of the buffer and a write of the chunk.
type h1Out struct {
	sock  *sockio.Conn // the client connection
	tail  []byte       // written right after what the buffer flushes
	tailN int          // how much of tail was written
	vec   [2][]byte    // the writev's buffers (reused)
}

func (o *h1Out) Write(p []byte) (int, error) {
	if o.tail == nil {
		return o.sock.Write(p)
	}
	o.vec[0], o.vec[1] = p, o.tail
	o.tail = nil
	n64, err := o.sock.Writev(o.vec[:])
	o.vec = [2][]byte{}
	n := int(n64)
	o.tailN = max(0, n-len(p))
	return min(n, len(p)), err
}

// flushWith flushes bw with p written after it, in one system call where
// the connection can (net.Buffers); it returns how much of p was written.
func (o *h1Out) flushWith(bw *bufio.Writer, p []byte) (int, error) {
	o.tail, o.tailN = p, 0
	err := bw.Flush()
	if o.tail != nil {
		// The buffer was not written (an earlier error).
		o.tail = nil
		return 0, err
	}
	n := o.tailN
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	return n, err
}

// contentLength0 is the Content-Length of an empty answer (shared).
var contentLength0 = []string{"0"}[:1:1]

func (w *h1Response) noBodyFor(code int) bool {
	return w.req.Method == http.MethodHead || code < 200 || code == http.StatusNoContent || code == http.StatusNotModified
}

// Flush sends what is buffered.
func (w *h1Response) Flush() { _ = w.FlushError() }

// FlushError sends what is buffered (http.ResponseController).
func (w *h1Response) FlushError() error {
	if w.hijacked {
		return http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	err := w.c.bw.Flush()
	if err != nil {
		w.failed = true
	}
	return err
}

// SetWriteDeadline moves the connection's write deadline
// (http.ResponseController).
func (w *h1Response) SetWriteDeadline(t time.Time) error { return w.c.rwc.SetWriteDeadline(t) }

// SetReadDeadline moves the connection's read deadline
// (http.ResponseController).
func (w *h1Response) SetReadDeadline(t time.Time) error { return w.c.rwc.SetReadDeadline(t) }

// Hijack hands the connection over (a protocol upgrade); the loop ends
// without closing it.
func (w *h1Response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.wroteHeader {
		return nil, nil, errors.New("hijack after the response header was written")
	}
	c := w.c
	c.stopWatch()
	if c.hasAhead {
		// Never the case for an upgrade (watchFire waits for the body's
		// end and the client for the 101), but a byte read is not lost.
		return nil, nil, errors.New("hijack: the client sent more than its request")
	}
	w.hijacked = true
	c.state.Store(h1Active)
	return c.rwc, bufio.NewReadWriter(c.br, c.bw), nil
}

// writeUint writes n in base 10 or 16 (no allocation: a slice handed
// to bufio.Writer.Write escapes).
func writeUint(bw *bufio.Writer, n uint64, base uint64) {
	const digits = "0123456789abcdef"
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = digits[n%base]
		n /= base
		if n == 0 {
			break
		}
	}
	for ; i < len(b); i++ {
		_ = bw.WriteByte(b[i])
	}
}

// hasToken is whether a header's values list tok (comma-separated,
// case-insensitive).
func hasToken(vv []string, tok string) bool {
	for _, v := range vv {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), tok) {
				return true
			}
		}
	}
	return false
}

func (h *h1Server) getReader(c *h1Conn) *bufio.Reader {
	if br, ok := h.readers.Get().(*bufio.Reader); ok {
		br.Reset(c)
		return br
	}
	return bufio.NewReaderSize(c, 4<<10)
}

func (h *h1Server) putReader(br *bufio.Reader) {
	br.Reset(nil)
	h.readers.Put(br)
}

func (h *h1Server) getWriter(w io.Writer) *bufio.Writer {
	if bw, ok := h.writers.Get().(*bufio.Writer); ok {
		bw.Reset(w)
		return bw
	}
	return bufio.NewWriterSize(w, 4<<10)
}

func (h *h1Server) putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	h.writers.Put(bw)
}

// getSock is a sockio.Conn over c.
func (h *h1Server) getSock(c net.Conn) *sockio.Conn {
	s, ok := h.socks.Get().(*sockio.Conn)
	if !ok {
		s = new(sockio.Conn)
	}
	s.Init(c)
	return s
}

func (h *h1Server) putSock(s *sockio.Conn) {
	s.Release()
	h.socks.Put(s)
}
