package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/syncbuf"
	"github.com/sluicelb/sluice/l7/accesslog"
	"github.com/sluicelb/sluice/l7/eject"
	"github.com/sluicelb/sluice/l7/retry"
	"github.com/sluicelb/sluice/l7/service"
	"github.com/sluicelb/sluice/userspace/pool"
)

var _ PoolView = (*pool.Pool)(nil)

// backend is an HTTP test server on loopback that counts the requests it
// executes and runs a replaceable handler.
type backend struct {
	t       *testing.T
	srv     *httptest.Server
	addr    netip.AddrPort
	count   atomic.Int64
	handler atomic.Pointer[http.HandlerFunc]

	mu     sync.Mutex
	states map[net.Conn]http.ConnState
	closed int
}

func newBackend(t *testing.T, h http.HandlerFunc) *backend {
	t.Helper()
	b := &backend{t: t, states: map[net.Conn]http.ConnState{}}
	b.set(h)
	b.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.count.Add(1)
		(*b.handler.Load())(w, r)
	}))
	b.srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		b.mu.Lock()
		defer b.mu.Unlock()
		if s == http.StateClosed || s == http.StateHijacked {
			delete(b.states, c)
			b.closed++
			return
		}
		b.states[c] = s
	}
	b.srv.Start()
	t.Cleanup(b.srv.Close)
	b.addr = netip.MustParseAddrPort(b.srv.Listener.Addr().String())
	return b
}

func (b *backend) set(h http.HandlerFunc) { b.handler.Store(&h) }

// open is the number of connections the backend has open.
func (b *backend) open() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.states)
}

func status(code int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(code)
		io.WriteString(w, http.StatusText(code))
	}
}

// rawBackend is a TCP server that reads one request (header and body),
// counts it, and closes the connection without answering.
type rawBackend struct {
	addr  netip.AddrPort
	count atomic.Int64
}

func newClosingBackend(t *testing.T) *rawBackend {
	t.Helper()
	rb := &rawBackend{}
	rb.addr = rawServer(t, func(c net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		rb.count.Add(1)
	})
	return rb
}

// rawServer serves each TCP connection on a loopback listener with serve
// (within 5 s), closing it when serve returns; stopped at the test's end.
func rawServer(t *testing.T, serve func(c net.Conn)) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				serve(c)
			}()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return netip.MustParseAddrPort(l.Addr().String())
}

// refusedAddr is a loopback address nothing listens on.
func refusedAddr(t *testing.T) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	return a
}

func newPool(t *testing.T, observe pool.Observer, addrs ...netip.AddrPort) *pool.Pool {
	t.Helper()
	p := pool.New("web", pool.Config{DrainTimeout: time.Minute, MaxEjectedPercent: 50}, nil, observe)
	var ds []pool.Desired
	for _, a := range addrs {
		ds = append(ds, pool.Desired{Addr: a, Weight: 1, Info: "static " + a.String()})
	}
	p.SetSource(time.Now(), pool.SourceStatic, ds)
	return p
}

func testService() service.Config {
	return service.Config{
		Name: "web-http", Pool: "web", Host: service.HostKeep,
		Listen: "127.0.0.1:0",
		Timeouts: service.Timeouts{
			Connect: time.Second, Send: 2 * time.Second,
			Read: 2 * time.Second, Total: 5 * time.Second,
		},
		Retry: &retry.Config{
			Attempts: 3, On: retry.DefaultOn(), Methods: retry.DefaultMethods(),
			IdempotencyHeader: "Idempotency-Key", BudgetPercent: 20,
			BackoffBase: time.Millisecond, BackoffMax: 5 * time.Millisecond,
			BufferBytes: 64 << 10,
		},
	}
}

func testEjection() eject.Config {
	return eject.Config{
		Failures: 3, Window: 10 * time.Second,
		BaseTime: time.Second, MaxTime: 8 * time.Second, MaxEjectedPercent: 50,
	}
}

// syncBuffer is an access log sink, read as JSON lines.
type syncBuffer struct{ syncbuf.Buffer }

// logLine is an access log line as JSON.
type logLine struct {
	Service string          `json:"service"`
	Route   string          `json:"route"`
	ReqID   string          `json:"request_id"`
	Method  string          `json:"method"`
	Status  int             `json:"status"`
	Error   string          `json:"error"`
	Tries   int             `json:"tries"`
	MS      float64         `json:"ms"`
	Try     []accesslog.Try `json:"try"`
}

func (s *syncBuffer) lines(t *testing.T) []logLine {
	t.Helper()
	var out []logLine
	for l := range strings.SplitSeq(strings.TrimSpace(s.String()), "\n") {
		if l == "" {
			continue
		}
		var ll logLine
		if err := json.Unmarshal([]byte(l), &ll); err != nil {
			t.Fatalf("access log line %q: %v", l, err)
		}
		out = append(out, ll)
	}
	return out
}

func (s *syncBuffer) last(t *testing.T) logLine {
	t.Helper()
	ls := s.lines(t)
	if len(ls) == 0 {
		t.Fatal("no access log line")
	}
	return ls[len(ls)-1]
}

// preferSelector picks candidates in a fixed order of preference, so tests
// know where the first try goes.
type preferSelector []netip.AddrPort

func (p preferSelector) Select(cands []Candidate) int {
	best, bestRank := 0, len(p)+1
	for i, c := range cands {
		r := slices.Index(p, c.Backend.Addr)
		if r < 0 {
			r = len(p)
		}
		if r < bestRank {
			best, bestRank = i, r
		}
	}
	return best
}

type harness struct {
	srv    *Server
	url    string
	access *syncBuffer
	client *http.Client
}

// start builds and serves a proxy over p; mod edits the options first.
func start(t *testing.T, p PoolView, mod func(*Options)) *harness {
	t.Helper()
	return startOn(t, p, mod, nil)
}

// startOn is start with the listener passed through wrap first (nil: as
// it is).
func startOn(t *testing.T, p PoolView, mod func(*Options), wrap func(net.Listener) net.Listener) *harness {
	t.Helper()
	acc := &syncBuffer{}
	opts := Options{
		Service: testService(), Pool: p, Ejection: testEjection(),
		AccessLog:       accesslog.New(acc, 0),
		ShutdownTimeout: 5 * time.Second,
		EjectionJitter:  -1,
		// SLUICE_TEST_EVENTLOOPS=1 runs every test on event loops (make
		// unit runs the package both ways).
		EventLoops: os.Getenv("SLUICE_TEST_EVENTLOOPS") != "",
	}
	if testing.Verbose() {
		opts.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if mod != nil {
		mod(&opts)
	}
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if wrap != nil {
		l = wrap(l)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(func() {
		// Idle client connections first: a connection the client dialled
		// but never used would hold a graceful shutdown for 5s.
		tr.CloseIdleConnections()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return &harness{srv: srv, url: "http://" + addr, access: acc, client: &http.Client{Transport: tr, Timeout: 20 * time.Second}}
}

func (h *harness) do(t *testing.T, method, path string, body []byte, hdr http.Header) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, h.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, vv := range hdr {
		req.Header[k] = vv
	}
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp, string(b)
}

// statusLater sends a request in the background (one that waits at the
// backend) and delivers its status once its body is read, 0 when it
// failed.
func statusLater(send func() (*http.Response, error)) <-chan int {
	done := make(chan int, 1)
	go func() {
		resp, err := send()
		if err != nil {
			done <- 0
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	return done
}
