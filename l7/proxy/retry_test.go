package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/pool"
)

// One backend answers 503: clients see 200 from the others; it is ejected
// after `failures`; after the ejection time one trial request goes to it;
// a failed trial doubles its time, a successful one brings it back.
func TestEjectionTrialAndRecovery(t *testing.T) {
	bad := newBackend(t, status(503))
	good1 := newBackend(t, status(200))
	good2 := newBackend(t, status(200))
	p := newPool(t, nil, bad.addr, good1.addr, good2.addr)
	h := start(t, p, func(o *Options) { o.Selector = preferSelector{bad.addr} })

	for i := range 5 {
		if resp, _ := h.do(t, "GET", "/", nil, nil); resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
	if n := bad.count.Load(); n != 3 {
		t.Errorf("bad backend executed %d requests before its ejection, want failures=3", n)
	}
	b, _ := p.Backend(bad.addr)
	if b.State != pool.Ejected {
		t.Fatalf("bad backend is %s, want ejected", b.State)
	}
	if d := b.EjectedUntil.Sub(b.Since); d < 990*time.Millisecond || d > 1010*time.Millisecond {
		t.Errorf("first ejection lasts %s, want base_time 1s", d)
	}
	l := h.access.lines(t)[0]
	if len(l.Try) != 2 || !l.Try[0].Retry || l.Try[0].Status != 503 || l.Try[1].Status != 200 {
		t.Errorf("first request's tries: %+v", l.Try)
	}

	// Ejection time over: the pool makes it active on trial. Exactly one
	// request goes to it; it fails; it is out again for twice as long.
	now := b.EjectedUntil.Add(time.Millisecond)
	p.Tick(now, nil)
	if b, _ = p.Backend(bad.addr); b.State != pool.Active {
		t.Fatalf("after its time the backend is %s", b.State)
	}
	before := bad.count.Load()
	for range 4 {
		if resp, _ := h.do(t, "GET", "/", nil, nil); resp.StatusCode != 200 {
			t.Fatalf("status %d during the trial", resp.StatusCode)
		}
	}
	if n := bad.count.Load() - before; n != 1 {
		t.Errorf("%d requests went to the backend on trial, want exactly 1", n)
	}
	b, _ = p.Backend(bad.addr)
	if b.State != pool.Ejected {
		t.Fatalf("after a failed trial the backend is %s, want ejected", b.State)
	}
	if d := b.EjectedUntil.Sub(b.Since); d < 1990*time.Millisecond || d > 2010*time.Millisecond {
		t.Errorf("second ejection lasts %s, want 2×base_time", d)
	}

	// It recovers: the next trial succeeds and brings it back for good.
	bad.set(status(200))
	p.Tick(b.EjectedUntil.Add(time.Millisecond), nil)
	before = bad.count.Load()
	for range 4 {
		h.do(t, "GET", "/", nil, nil)
	}
	b, _ = p.Backend(bad.addr)
	if b.State != pool.Active || b.Ejections != 0 {
		t.Errorf("after a good trial: %s with %d ejections, want active with 0", b.State, b.Ejections)
	}
	if n := bad.count.Load() - before; n != 4 {
		t.Errorf("recovered backend got %d of 4 requests (it is preferred), want all", n)
	}
}

// POST to a backend that closes after reading the body: not retried,
// executed once. With the idempotency header: retried once elsewhere.
func TestPostClosedAfterBody(t *testing.T) {
	closer := newClosingBackend(t)
	good := newBackend(t, status(200))
	p := newPool(t, nil, closer.addr, good.addr)
	h := start(t, p, func(o *Options) {
		o.Selector = preferSelector{closer.addr}
		o.Ejection.Failures = 0
	})

	resp, _ := h.do(t, "POST", "/order", []byte(`{"n":1}`), nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status %d, want 502", resp.StatusCode)
	}
	if c, g := closer.count.Load(), good.count.Load(); c != 1 || g != 0 {
		t.Errorf("executed %d times on the closer and %d elsewhere, want once and never", c, g)
	}
	l := h.access.last(t)
	if len(l.Try) != 1 || l.Try[0].Retry || !l.Try[0].Sent || l.Try[0].Outcome != "reset" || !strings.Contains(l.Try[0].Why, "POST is not in retry.methods") {
		t.Errorf("tries: %+v", l.Try)
	}

	resp, _ = h.do(t, "POST", "/order", []byte(`{"n":2}`), http.Header{"Idempotency-Key": {"k2"}})
	if resp.StatusCode != 200 {
		t.Errorf("with the idempotency header: status %d, want 200", resp.StatusCode)
	}
	if c, g := closer.count.Load(), good.count.Load(); c != 2 || g != 1 {
		t.Errorf("closer executed %d (want 2 in all), good %d (want 1)", c, g)
	}
	if l := h.access.last(t); len(l.Try) != 2 || !strings.Contains(l.Try[0].Why, "Idempotency-Key") {
		t.Errorf("tries: %+v", l.Try)
	}
}

// POST whose connect is refused: retried, executed once.
func TestPostConnectRefusedRetried(t *testing.T) {
	dead := refusedAddr(t)
	good := newBackend(t, status(201))
	p := newPool(t, nil, dead, good.addr)
	h := start(t, p, func(o *Options) { o.Selector = preferSelector{dead} })
	resp, _ := h.do(t, "POST", "/", []byte("x"), nil)
	if resp.StatusCode != 201 || good.count.Load() != 1 {
		t.Errorf("status %d, executed %d times, want 201 once", resp.StatusCode, good.count.Load())
	}
	l := h.access.last(t)
	if len(l.Try) != 2 || l.Try[0].Outcome != "connect-failure" || l.Try[0].Sent || !l.Try[0].Retry {
		t.Errorf("tries: %+v", l.Try)
	}
}

// All backends refuse: 502, the cause in the log.
func TestAllConnectsRefused(t *testing.T) {
	p := newPool(t, nil, refusedAddr(t), refusedAddr(t))
	h := start(t, p, func(o *Options) { o.Ejection.Failures = 0 })
	resp, body := h.do(t, "GET", "/", nil, nil)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "connect failure") {
		t.Errorf("got %d %q", resp.StatusCode, body)
	}
	if l := h.access.last(t); len(l.Try) != 3 || !strings.Contains(l.Error, "connect failure") || l.Try[2].Why != "attempts exhausted (3)" {
		t.Errorf("log: %+v", l)
	}
}

// PUT excluded from retry.methods is never retried after sending.
func TestPutExcludedFromMethods(t *testing.T) {
	bad := newBackend(t, status(503))
	good := newBackend(t, status(200))
	p := newPool(t, nil, bad.addr, good.addr)
	h := start(t, p, func(o *Options) {
		o.Selector = preferSelector{bad.addr}
		o.Service.Retry.Methods = []string{"GET", "HEAD"}
	})
	resp, _ := h.do(t, "PUT", "/x", []byte("v"), nil)
	if resp.StatusCode != 503 || bad.count.Load() != 1 || good.count.Load() != 0 {
		t.Errorf("status %d, bad %d, good %d: want the 503 passed on, executed once", resp.StatusCode, bad.count.Load(), good.count.Load())
	}
	if l := h.access.last(t); l.Try[0].Retry || !strings.Contains(l.Try[0].Why, "PUT is not in retry.methods") {
		t.Errorf("try: %+v", l.Try[0])
	}
	// GET is still retried.
	if resp, _ := h.do(t, "GET", "/x", nil, nil); resp.StatusCode != 200 {
		t.Errorf("GET: %d", resp.StatusCode)
	}
}

// A body larger than buffer_bytes is streamed, and not retried once sent.
func TestLargeBodyNotRetriedAfterSending(t *testing.T) {
	var mu sync.Mutex
	var got []int
	record := func(code int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var buf bytes.Buffer
			buf.ReadFrom(r.Body)
			mu.Lock()
			got = append(got, buf.Len())
			mu.Unlock()
			w.WriteHeader(code)
		}
	}
	bad := newBackend(t, record(503))
	good := newBackend(t, record(200))
	p := newPool(t, nil, bad.addr, good.addr)
	h := start(t, p, func(o *Options) {
		o.Selector = preferSelector{bad.addr}
		o.Service.Retry.BufferBytes = 1024
	})
	body := bytes.Repeat([]byte("a"), 4096)
	resp, _ := h.do(t, "PUT", "/upload", body, nil)
	if resp.StatusCode != 503 || good.count.Load() != 0 {
		t.Errorf("status %d, good got %d: want the 503, not retried", resp.StatusCode, good.count.Load())
	}
	if len(got) != 1 || got[0] != 4096 {
		t.Errorf("backend bodies %v, want one of 4096 bytes", got)
	}
	if l := h.access.last(t); l.Try[0].Retry || !strings.Contains(l.Try[0].Why, "larger than retry.buffer_bytes") {
		t.Errorf("try: %+v", l.Try[0])
	}
	// A small body is replayed whole on the other backend.
	resp, _ = h.do(t, "PUT", "/upload", body[:1000], nil)
	if resp.StatusCode != 200 || len(got) != 3 || got[2] != 1000 {
		t.Errorf("small body: status %d, bodies %v", resp.StatusCode, got)
	}
}

// The response header never comes: 504 after `read`.
func TestReadTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	slow := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	p := newPool(t, nil, slow.addr)
	h := start(t, p, func(o *Options) {
		o.Service.Timeouts.Read = 300 * time.Millisecond
		o.Service.Retry.Attempts = 1
	})
	t0 := time.Now()
	resp, _ := h.do(t, "GET", "/", nil, nil)
	el := time.Since(t0)
	if resp.StatusCode != http.StatusGatewayTimeout || el < 290*time.Millisecond || el > 800*time.Millisecond {
		t.Errorf("status %d after %s, want 504 after ~300ms", resp.StatusCode, el)
	}
	if l := h.access.last(t); l.Try[0].Outcome != "timeout" || l.Try[0].Phase != "read" || !strings.Contains(l.Error, "read timeout") {
		t.Errorf("log: %+v", l)
	}
}

// Three slow tries: 504 at `total`, not at the sum of the phases.
func TestTotalDeadlineOverTries(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	hang := func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}
	var addrs []netip.AddrPort
	for range 3 {
		addrs = append(addrs, newBackend(t, hang).addr)
	}
	p := newPool(t, nil, addrs...)
	h := start(t, p, func(o *Options) {
		o.Service.Timeouts.Read = 500 * time.Millisecond
		o.Service.Timeouts.Total = 1200 * time.Millisecond
		o.Ejection.Failures = 0
	})
	t0 := time.Now()
	resp, _ := h.do(t, "GET", "/", nil, nil)
	el := time.Since(t0)
	if resp.StatusCode != http.StatusGatewayTimeout || el < 1150*time.Millisecond || el > 1450*time.Millisecond {
		t.Errorf("status %d after %s, want 504 at total=1.2s (the sum of the reads would be 1.5s)", resp.StatusCode, el)
	}
	l := h.access.last(t)
	if len(l.Try) != 3 || l.Try[0].Phase != "read" || l.Try[2].Phase != "total" || !strings.Contains(l.Error, "total timeout") {
		t.Errorf("log: %+v", l)
	}
}

// A backend that never reads the request body: 504 after `send`, and a
// body that did not fit the buffer is not sent again.
func TestSendTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stuck := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			stuck <- c // accepted, never read
		}
	}()
	t.Cleanup(func() {
		l.Close()
		for len(stuck) > 0 {
			(<-stuck).Close()
		}
	})
	addr := netip.MustParseAddrPort(l.Addr().String())
	good := newBackend(t, status(200))
	p := newPool(t, nil, addr, good.addr)
	h := start(t, p, func(o *Options) {
		o.Selector = preferSelector{addr}
		o.Service.Timeouts.Send = 300 * time.Millisecond
		o.Service.Retry.BufferBytes = 1024
	})
	body := bytes.Repeat([]byte("x"), 64<<20) // more than the socket buffers hold
	req, _ := http.NewRequest("PUT", h.url+"/big", bytes.NewReader(body))
	t0 := time.Now()
	resp, err := h.client.Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusGatewayTimeout {
			t.Errorf("status %d, want 504", resp.StatusCode)
		}
	} // else: the proxy answered and closed while the client was still uploading
	waitFor(t, "access log", func() bool { return len(h.access.lines(t)) == 1 })
	l1 := h.access.last(t)
	if l1.Status != http.StatusGatewayTimeout || len(l1.Try) != 1 || l1.Try[0].Phase != "send" || l1.Try[0].Retry ||
		!strings.Contains(l1.Try[0].Why, "buffer_bytes") {
		t.Errorf("log: %+v", l1)
	}
	if el := time.Since(t0); el > 3*time.Second {
		t.Errorf("took %s", el)
	}
	if good.count.Load() != 0 {
		t.Error("the unreplayable body went to another backend")
	}
}

// A connect that does not complete within `connect`: 504, "connect
// timeout", retried elsewhere when attempts allow (nothing was sent).
func TestConnectTimeout(t *testing.T) {
	good := newBackend(t, status(200))
	black := netip.MustParseAddrPort("127.0.0.1:9") // never dialled: see Dial below
	p := newPool(t, nil, black, good.addr)
	for _, attempts := range []int{1, 2} {
		h := start(t, p, func(o *Options) {
			o.Selector = preferSelector{black}
			o.Service.Timeouts.Connect = 200 * time.Millisecond
			o.Service.Retry.Attempts = attempts
			o.Ejection.Failures = 0
			o.Upstream.Dial = func(ctx context.Context, n, a string) (net.Conn, error) {
				if a == black.String() {
					<-ctx.Done()
					return nil, ctx.Err()
				}
				var d net.Dialer
				return d.DialContext(ctx, n, a)
			}
		})
		t0 := time.Now()
		resp, body := h.do(t, "GET", "/", nil, nil)
		el := time.Since(t0)
		want := map[int]int{1: http.StatusGatewayTimeout, 2: http.StatusOK}[attempts]
		if resp.StatusCode != want || el < 190*time.Millisecond || el > time.Second {
			t.Errorf("attempts %d: %d %q after %s, want %d after ~200ms", attempts, resp.StatusCode, body, el, want)
		}
		l := h.access.last(t)
		if l.Try[0].Outcome != "connect-failure" || l.Try[0].Phase != "connect" || l.Try[0].Sent {
			t.Errorf("attempts %d: first try %+v", attempts, l.Try[0])
		}
		if attempts == 1 && !strings.Contains(l.Error, "connect timeout") {
			t.Errorf("error %q", l.Error)
		}
	}
}

// A client that stops sending its body: 408 at the total deadline, the
// backend never sees a complete request.
func TestSlowClientBody(t *testing.T) {
	be := newBackend(t, status(200))
	p := newPool(t, nil, be.addr)
	h := start(t, p, func(o *Options) { o.Service.Timeouts.Total = 400 * time.Millisecond })
	c, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a part")
	t0 := time.Now()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusRequestTimeout || time.Since(t0) > 2*time.Second {
		t.Errorf("status %d after %s, want 408 at ~400ms", resp.StatusCode, time.Since(t0))
	}
	if be.count.Load() != 0 {
		t.Error("the backend got the incomplete request")
	}
}

// A pooled connection that fails before any response byte: a GET goes
// again on a new connection to the same backend without costing a try; a
// POST that may have been executed is not sent twice.
func TestStaleConnectionRedial(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var executed atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for i := 0; ; i++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					executed.Add(1)
					if i == 1 {
						return // the second request on a connection: closed unanswered
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
			}()
		}
	}()
	addr := netip.MustParseAddrPort(l.Addr().String())
	p := newPool(t, nil, addr)
	h := start(t, p, func(o *Options) { o.Ejection.Failures = 0 })

	h.do(t, "GET", "/", nil, nil)
	resp, _ := h.do(t, "GET", "/", nil, nil)
	if resp.StatusCode != 200 {
		t.Errorf("GET on a connection the backend drops: %d", resp.StatusCode)
	}
	if l := h.access.last(t); len(l.Try) != 1 || l.Try[0].Reused {
		t.Errorf("GET tries %+v: want one try, on a new connection", l.Try)
	}
	// Now a POST on the pooled connection left by the last GET.
	before := executed.Load()
	resp, _ = h.do(t, "POST", "/", []byte("x"), nil)
	if resp.StatusCode != http.StatusBadGateway || executed.Load()-before != 1 {
		t.Errorf("POST: %d, executed %d times; want 502 and once", resp.StatusCode, executed.Load()-before)
	}
}

// Issue 16: what is retried (retry.on) and what ejects (ejection.on) are
// apart. Behind an ALB an application's 503 comes through a healthy node:
// it is retried on another address, and the address is never ejected.
func TestRetryWithoutEjection(t *testing.T) {
	bad := newBackend(t, status(503))
	good := newBackend(t, status(200))
	p := newPool(t, nil, bad.addr, good.addr)
	h := start(t, p, func(o *Options) {
		o.Selector = preferSelector{bad.addr}
		o.Ejection.On = []string{"connect-failure", "reset", "timeout"}
	})
	for i := range 10 {
		if resp, _ := h.do(t, "GET", "/", nil, nil); resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d, want the retry's 200", i, resp.StatusCode)
		}
	}
	if n := bad.count.Load(); n != 10 {
		t.Errorf("503 backend got %d requests, want all 10 (never ejected)", n)
	}
	if b, _ := p.Backend(bad.addr); b.State != pool.Active {
		t.Fatalf("503 backend is %s, want active: 503 is not in ejection.on", b.State)
	}
	l := h.access.lines(t)[0]
	if len(l.Try) != 2 || !l.Try[0].Retry || l.Try[0].Status != 503 {
		t.Errorf("tries: %+v, want the 503 retried", l.Try)
	}
}

// And the other way round: a status ejection.on lists but retry.on does
// not is answered to the client as it is, and still ejects.
func TestEjectionWithoutRetry(t *testing.T) {
	bad := newBackend(t, status(500))
	good := newBackend(t, status(200))
	p := newPool(t, nil, bad.addr, good.addr)
	h := start(t, p, func(o *Options) {
		o.Selector = preferSelector{bad.addr}
		o.Ejection.On = []string{"connect-failure", "500"}
	})
	for i := range 3 {
		if resp, _ := h.do(t, "GET", "/", nil, nil); resp.StatusCode != 500 {
			t.Fatalf("request %d: status %d, want 500 passed on (not in retry.on)", i, resp.StatusCode)
		}
	}
	if b, _ := p.Backend(bad.addr); b.State != pool.Ejected {
		t.Fatalf("500 backend is %s, want ejected after failures=3", b.State)
	}
	if resp, _ := h.do(t, "GET", "/", nil, nil); resp.StatusCode != 200 {
		t.Errorf("after the ejection: status %d, want the other backend's 200", resp.StatusCode)
	}
}
