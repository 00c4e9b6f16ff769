package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// rawConn dials the harness and returns the connection and a reader of
// its responses.
func rawConn(t *testing.T, h *harness) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func readResp(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// A plain-text listener is served by the loop, not net/http's server.
func TestH1LoopServesPlainListeners(t *testing.T) {
	be := newBackend(t, status(200))
	h := start(t, newPool(t, nil, be.addr), nil)
	if h.srv.h1 == nil {
		t.Fatal("a plain-text listener without h2c is not served by the HTTP/1 loop")
	}
	off := start(t, newPool(t, nil, be.addr), func(o *Options) { o.NetHTTP1 = true })
	if off.srv.h1 != nil {
		t.Fatal("Options.NetHTTP1: the loop still serves")
	}
}

// Pipelined requests are answered in order, one at a time, on one
// connection; the response header is written from the handler's map
// with Date, Via and framing.
func TestH1LoopPipelining(t *testing.T) {
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Path)
	})
	h := start(t, newPool(t, nil, be.addr), nil)
	c, br := rawConn(t, h)
	io.WriteString(c, "GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\nHEAD /three HTTP/1.1\r\nHost: a\r\n\r\n")
	for _, want := range []string{"/one", "/two"} {
		resp, body := readResp(t, br, "GET")
		if resp.StatusCode != 200 || body != want || resp.Close {
			t.Fatalf("%s: %d %q close %v", want, resp.StatusCode, body, resp.Close)
		}
		if resp.Header.Get("Date") == "" || !strings.Contains(strings.Join(resp.Header["Via"], ","), "sluice") {
			t.Errorf("%s: header %v", want, resp.Header)
		}
	}
	resp, body := readResp(t, br, "HEAD")
	if resp.StatusCode != 200 || body != "" {
		t.Fatalf("HEAD: %d %q", resp.StatusCode, body)
	}
	if n := be.count.Load(); n != 3 {
		t.Errorf("backend executed %d requests, want 3", n)
	}
}

// A body larger than the write buffer goes out with the header in one
// writev (h1Out): with a length and chunked, on a kept-alive connection,
// every byte in order.
func TestH1LoopLargeBodies(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 3<<10) // 48 KiB
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/length" {
			w.Header().Set("Content-Length", strconv.Itoa(len(big)))
		}
		io.WriteString(w, big)
	})
	h := start(t, newPool(t, nil, be.addr), nil)
	c, br := rawConn(t, h)
	for _, path := range []string{"/length", "/chunked", "/length"} {
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: a\r\n\r\n")
		resp, body := readResp(t, br, "GET")
		if resp.StatusCode != 200 || body != big || resp.Close {
			t.Fatalf("%s: %d, %d bytes (equal %v), close %v", path, resp.StatusCode, len(body), body == big, resp.Close)
		}
		if chunked := len(resp.TransferEncoding) > 0; chunked != (path == "/chunked") {
			t.Errorf("%s: transfer encoding %v", path, resp.TransferEncoding)
		}
	}
}

// Expect: 100-continue gets its 100 when the body is first read (net/http's
// rule); another expectation is refused with 417 and never proxied.
func TestH1LoopExpect(t *testing.T) {
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, "got "+string(b))
	})
	h := start(t, newPool(t, nil, be.addr), nil)
	c, br := rawConn(t, h)
	io.WriteString(c, "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
		t.Fatalf("first line %q (%v), want a 100 Continue", line, err)
	}
	if l, _ := br.ReadString('\n'); l != "\r\n" {
		t.Fatalf("100 Continue followed by %q", l)
	}
	io.WriteString(c, "hello")
	resp, body := readResp(t, br, "POST")
	if resp.StatusCode != 200 || body != "got hello" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}

	c2, br2 := rawConn(t, h)
	io.WriteString(c2, "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: teapot\r\n\r\nhello")
	resp, _ = readResp(t, br2, "POST")
	if resp.StatusCode != http.StatusExpectationFailed || !resp.Close {
		t.Fatalf("Expect: teapot: %d close %v, want 417 and close", resp.StatusCode, resp.Close)
	}
	if n := be.count.Load(); n != 1 {
		t.Errorf("backend executed %d requests, want 1", n)
	}
}

// OPTIONS * is answered by the server itself (as net/http's does).
func TestH1LoopOptionsStar(t *testing.T) {
	be := newBackend(t, status(200))
	h := start(t, newPool(t, nil, be.addr), nil)
	c, br := rawConn(t, h)
	io.WriteString(c, "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, _ := readResp(t, br, "OPTIONS")
	if resp.StatusCode != 200 || resp.ContentLength != 0 || be.count.Load() != 0 {
		t.Fatalf("%d length %d, backend %d requests", resp.StatusCode, resp.ContentLength, be.count.Load())
	}
}

// HTTP/1.0: closed after the response unless the client asked for
// keep-alive and the response has a length.
func TestH1LoopHTTP10(t *testing.T) {
	be := newBackend(t, status(200))
	h := start(t, newPool(t, nil, be.addr), nil)
	c, br := rawConn(t, h)
	io.WriteString(c, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
	resp, _ := readResp(t, br, "GET")
	if resp.StatusCode != 200 || resp.Close || resp.Header.Get("Connection") != "keep-alive" {
		t.Fatalf("keep-alive: %d close %v %v", resp.StatusCode, resp.Close, resp.Header)
	}
	io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
	resp, _ = readResp(t, br, "GET")
	if resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("1.0: %d close %v", resp.StatusCode, resp.Close)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("connection not closed after an HTTP/1.0 response: %v", err)
	}
}

// A client that goes away while its request waits on the backend is
// noticed (the loop's watch reads the connection): the request ends as
// 499 and the backend connection is closed, long before the backend
// would answer.
func TestH1LoopClientGone(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	h := start(t, newPool(t, nil, be.addr), nil)
	c, _ := rawConn(t, h)
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
	waitFor(t, "the request at the backend", func() bool { return be.count.Load() == 1 })
	c.Close()
	waitFor(t, "the access log line", func() bool { return len(h.access.lines(t)) == 1 })
	if l := h.access.last(t); l.Status != statusClientClosed {
		t.Fatalf("access log %+v, want status 499", l)
	}
	waitFor(t, "the backend connection closed", func() bool { return be.open() == 0 })
}

// A graceful shutdown closes idle connections at once, lets a request in
// flight finish (its response says Connection: close), then returns.
func TestH1LoopShutdown(t *testing.T) {
	release := make(chan struct{})
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, "done")
	})
	h := start(t, newPool(t, nil, be.addr), nil)
	idle, _ := rawConn(t, h)
	busy, br := rawConn(t, h)
	io.WriteString(busy, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	waitFor(t, "the request at the backend", func() bool { return be.count.Load() == 1 })
	done := make(chan error, 1)
	go func() { done <- h.srv.Shutdown(context.Background()) }()
	if _, err := idle.Read(make([]byte, 1)); err == nil {
		t.Error("an idle connection got bytes at shutdown")
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) with a request in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	resp, body := readResp(t, br, "GET")
	if resp.StatusCode != 200 || body != "done" || !resp.Close {
		t.Errorf("in flight at shutdown: %d %q close %v", resp.StatusCode, body, resp.Close)
	}
	if err := <-done; err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

// postTrailers sends a chunked POST whose body ends with trailers (an
// X-Checksum, a hop-by-hop and a framing field; announced when announce
// is set) and checks it is answered 200.
func postTrailers(t *testing.T, h *harness, announce string) {
	t.Helper()
	c, br := rawConn(t, h)
	io.WriteString(c, "POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"+announce+"\r\n"+
		"3\r\nabc\r\n0\r\nX-Checksum: 42\r\nX_Checksum: 7\r\nKeep-Alive: 1\r\nContent-Length: 9\r\n\r\n")
	if resp, _ := readResp(t, br, "POST"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// The client's request trailers reach an HTTP/1.1 backend after the
// re-framed chunked body, through either HTTP/1 server; hop-by-hop and
// framing ones do not.
func TestRequestTrailersH1Upstream(t *testing.T) {
	got := make(chan http.Header, 1)
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		got <- r.Trailer.Clone()
	})
	for _, h2c := range []bool{true, false} { // net/http's HTTP/1 server, the loop
		h := start(t, newPool(t, nil, be.addr), func(o *Options) { o.H2C = h2c })
		postTrailers(t, h, "")
		tr := <-got
		if tr.Get("X-Checksum") != "42" || len(tr) != 1 {
			t.Fatalf("h2c %v: backend trailer %v, want X-Checksum: 42 alone", h2c, tr)
		}
	}
}

// The loop reads and writes TCP clients and backends outside the
// scheduler's system-call hand-off (sockio); the deadlines still fire on
// that path: the header timeout of a client that stalls mid-header, the
// idle timeout of a keep-alive client, and the read timeout of a backend
// that never answers (504).
func TestH1LoopDeadlinesOnRawPath(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stall" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		io.WriteString(w, "ok")
	})
	h := start(t, newPool(t, nil, be.addr), func(o *Options) {
		o.Client.HeaderTimeout = 200 * time.Millisecond
		o.Client.IdleTimeout = 300 * time.Millisecond
		o.Service.Timeouts.Read = 200 * time.Millisecond
	})

	// A request answered; the connection's reads and writes are sockio's
	// (the backend connection's: upstream's TestPhaseDeadlines).
	c, br := rawConn(t, h)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	h.srv.h1.mu.Lock()
	for hc := range h.srv.h1.conns {
		if hc.ev != nil {
			// On an event loop (its fields are the task's): sockio's
			// raw path over the loop's socket is sockio's
			// TestEventLoopConnIsRaw.
			continue
		}
		if !hc.sock.Raw() || hc.out.sock != hc.sock {
			t.Error("a TCP client connection is not read and written through sockio")
		}
	}
	h.srv.h1.mu.Unlock()

	// Idle timeout: the keep-alive connection is closed after 300ms.
	within(t, "idle connection closed", 250*time.Millisecond, func() error {
		if _, err := br.ReadByte(); err != io.EOF {
			return fmt.Errorf("read %v, want EOF", err)
		}
		return nil
	})

	// Header timeout: half a request header, then nothing; the connection
	// is closed (after a 400, as net/http's server answers a header cut
	// short).
	c2, br2 := rawConn(t, h)
	io.WriteString(c2, "GET / HTTP/1.1\r\nHo")
	within(t, "stalled header closed", 150*time.Millisecond, func() error {
		_, err := io.ReadAll(br2)
		return err
	})

	// Read timeout of the backend connection: 504.
	c3, br3 := rawConn(t, h)
	io.WriteString(c3, "GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
	within(t, "504 for a backend that never answers", 150*time.Millisecond, func() error {
		if resp, _ := readResp(t, br3, "GET"); resp.StatusCode != http.StatusGatewayTimeout {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
}

// within runs f, which must succeed after at least least (a timeout's
// worth) and within 5s.
func within(t *testing.T, what string, least time.Duration, f func() error) {
	t.Helper()
	start := time.Now()
	if err := f(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if d := time.Since(start); d < least || d > 5*time.Second {
		t.Fatalf("%s after %v, want at least %v", what, d, least)
	}
}

// testDispatcher is a Dispatcher over a TCP listener, as the agent's
// listener hand-off is one: it accepts and calls serve on its own
// goroutine; a connection serve gives back is closed.
type testDispatcher struct {
	net.Listener
	serve atomic.Pointer[func(net.Conn) bool]
}

func (d *testDispatcher) Dispatch(serve func(net.Conn) bool) error {
	d.serve.Store(&serve)
	for {
		c, err := d.Accept()
		if err != nil {
			return net.ErrClosed
		}
		if !serve(c) {
			c.Close()
		}
	}
}

// A listener that dispatches its connections is served through Dispatch:
// requests are answered, the connection limit holds, and once the server
// shuts down serve gives connections back (false) without touching them.
func TestH1LoopDispatch(t *testing.T) {
	be := newBackend(t, status(200))
	obs := &refusedObserver{}
	var d *testDispatcher
	h := startOn(t, newPool(t, nil, be.addr), func(o *Options) { o.Client.MaxConnections = 2; o.Observer = obs },
		func(l net.Listener) net.Listener { d = &testDispatcher{Listener: l}; return d })
	if resp, _ := h.do(t, "GET", "/", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if d.serve.Load() == nil {
		t.Fatal("the loop did not serve the Dispatcher through Dispatch")
	}
	h.client.Transport.(*http.Transport).CloseIdleConnections()
	waitFor(t, "the client's connection closed", func() bool { return openConns(h) == 0 })

	a, _ := rawConn(t, h)
	b, _ := rawConn(t, h)
	_, _ = a, b
	waitFor(t, "two connections open", func() bool { return openConns(h) == 2 })
	c, br := rawConn(t, h)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if _, err := br.ReadByte(); err == nil {
		t.Error("a third connection over the limit of 2 was served")
	}
	waitFor(t, "refused{connections} = 1", func() bool { return obs.count(limitConnections) == 1 })

	a.Close()
	b.Close()
	if err := h.srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	p1, p2 := net.Pipe()
	defer p2.Close()
	if (*d.serve.Load())(p1) {
		t.Fatal("serve took a connection after shutdown")
	}
	go func() { _, _ = p1.Write([]byte("x")) }()
	_ = p2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := p2.Read(make([]byte, 1)); err != nil {
		t.Fatalf("a connection given back was closed: %v", err)
	}
	p1.Close()
}

// openConns is the count of open client connections of h's loop.
func openConns(h *harness) int64 {
	h.srv.h1.mu.Lock()
	defer h.srv.h1.mu.Unlock()
	return h.srv.h1.ln.(*limitListener).open.Load()
}

// With Options.EventLoops the loop's connections are served by event
// loops from their second request on: after the first, a kept-alive
// connection moves to a loop (a connection that carries one request is
// served by its goroutine to the end); after the second its task is
// parked on the loop and both the client's socket and the pooled backend
// connection the task used are the loops' (not the runtime poller's);
// without it (the default) a goroutine per connection serves them.
func TestH1LoopOnEventLoops(t *testing.T) {
	be := newBackend(t, status(200))
	h := start(t, newPool(t, nil, be.addr), func(o *Options) { o.EventLoops = true })
	c, br := rawConn(t, h)
	for i := range 2 {
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		if resp, _ := readResp(t, br, "GET"); resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i+1, resp.StatusCode)
		}
	}
	st, ok := h.srv.LoopStats()
	if !ok {
		t.Fatal("no event loops")
	}
	if st.Tasks != 1 || st.Conns != 2 {
		t.Fatalf("event loops: %+v; want the connection's task and two sockets (client, backend)", st)
	}
	// A connection that closes after its only request never reaches a
	// loop.
	c3, br3 := rawConn(t, h)
	io.WriteString(c3, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	if resp, _ := readResp(t, br3, "GET"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if st, _ := h.srv.LoopStats(); st.Tasks != 1 || st.Conns != 2 {
		t.Fatalf("after a one-request connection: %+v; want the kept-alive connection's task and sockets only", st)
	}
	off := start(t, newPool(t, nil, be.addr), func(o *Options) { o.EventLoops = false })
	c2, br2 := rawConn(t, off)
	io.WriteString(c2, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if resp, _ := readResp(t, br2, "GET"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if _, ok := off.srv.LoopStats(); ok {
		t.Fatal("without Options.EventLoops: event loops serve")
	}
}

// A connection's requests share one request state (request.finish):
// each is served as if it were the first. Every request fails over from
// a refused address to a working one and must log both tries, under a
// request id of its own; a request with a body in between (its state is
// not kept) and the one after it are served alike.
func TestRequestStateFreshPerRequest(t *testing.T) {
	good := newBackend(t, status(200))
	gone := refusedAddr(t)
	h := start(t, newPool(t, nil, gone, good.addr), func(o *Options) {
		o.Selector = preferSelector{gone}
		o.Ejection.Failures = 100 // the refused address stays a candidate
	})
	c, br := rawConn(t, h)
	reqs := []string{
		"GET /a HTTP/1.1\r\nHost: example.test\r\n\r\n",
		"GET /b HTTP/1.1\r\nHost: example.test\r\n\r\n",
		"POST /c HTTP/1.1\r\nHost: example.test\r\nContent-Length: 2\r\n\r\nhi",
		"GET /d HTTP/1.1\r\nHost: example.test\r\n\r\n",
	}
	for i, req := range reqs {
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		resp, _ := readResp(t, br, http.MethodGet)
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
	waitFor(t, "the access log lines", func() bool { return len(h.access.lines(t)) >= len(reqs) })
	lines := h.access.lines(t)
	if len(lines) != len(reqs) {
		t.Fatalf("%d access log lines, want %d", len(lines), len(reqs))
	}
	ids := map[string]bool{}
	for i, l := range lines {
		if l.Tries != 2 || len(l.Try) != 2 || l.Try[0].Backend != gone.String() || l.Try[1].Backend != good.addr.String() {
			t.Errorf("request %d: %d tries %+v, want the refused address then the working one", i, l.Tries, l.Try)
		}
		if ids[l.ReqID] {
			t.Errorf("request %d: request id %s again", i, l.ReqID)
		}
		ids[l.ReqID] = true
	}
}
