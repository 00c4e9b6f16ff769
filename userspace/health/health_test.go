package health

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/config"
)

func TestStep(t *testing.T) {
	tests := []struct {
		name    string
		initial bool
		rise    int
		fall    int
		checks  string // p = pass, f = fail
		want    string // transitions: "-" unhealthy, "+" healthy, "." none, one per check
	}{
		{"healthy stays healthy", true, 2, 3, "pppp", "...."},
		{"fall after three", true, 2, 3, "fff", "..-"},
		{"a pass resets the failures", true, 2, 3, "ffpfff", ".....-"},
		{"rise after two", false, 2, 3, "pp", ".+"},
		{"a failure resets the passes", false, 2, 3, "pfpp", "...+"},
		{"down, up, down", true, 2, 2, "ffppff", ".-.+.-"},
		{"fall 1 rise 1", true, 1, 1, "fpfp", "-+-+"},
		{"unhealthy failures report nothing", false, 2, 1, "fff", "..."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := Status{Healthy: tt.initial}
			var got strings.Builder
			for _, c := range tt.checks {
				changed, cause := step(&st, c == 'p', KindStatus, tt.rise, tt.fall)
				switch {
				case !changed:
					got.WriteByte('.')
				case st.Healthy:
					got.WriteByte('+')
					if cause != CausePassed {
						t.Errorf("cause %q, want %q", cause, CausePassed)
					}
				default:
					got.WriteByte('-')
					if cause != "health:status" {
						t.Errorf("cause %q, want health:status", cause)
					}
				}
			}
			if got.String() != tt.want {
				t.Errorf("transitions %q, want %q", got.String(), tt.want)
			}
		})
	}
}

func TestFromConfig(t *testing.T) {
	d := func(s string) config.Duration {
		v, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		return config.Duration(v)
	}
	tests := []struct {
		name    string
		in      *config.HealthCheck
		want    Config
		wantErr string
	}{
		{"http", &config.HealthCheck{
			HTTP:     &config.HTTPCheck{Path: "/healthz", Host: "web.lab", Expect: "200-299"},
			Interval: d("2s"), Timeout: d("1s"), Rise: 2, Fall: 3,
		}, Config{HTTP: &HTTP{Path: "/healthz", Host: "web.lab", ExpectLo: 200, ExpectHi: 299},
			Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}, ""},
		{"http default expect", &config.HealthCheck{
			HTTP: &config.HTTPCheck{Path: "/"}, Interval: d("2s"), Timeout: d("1s"), Rise: 1, Fall: 1,
		}, Config{HTTP: &HTTP{Path: "/", ExpectLo: 200, ExpectHi: 399},
			Interval: 2 * time.Second, Timeout: time.Second, Rise: 1, Fall: 1}, ""},
		{"tcp", &config.HealthCheck{TCP: &config.TCPCheck{}, Interval: d("5s"), Timeout: d("500ms"), Rise: 1, Fall: 2},
			Config{Interval: 5 * time.Second, Timeout: 500 * time.Millisecond, Rise: 1, Fall: 2}, ""},
		{"nil", nil, Config{}, "no health check"},
		{"bad expect", &config.HealthCheck{HTTP: &config.HTTPCheck{Expect: "2xx"}, Interval: d("2s"), Timeout: d("1s"), Rise: 1, Fall: 1},
			Config{}, "expect"},
		{"zero rise", &config.HealthCheck{Interval: d("2s"), Timeout: d("1s"), Fall: 1}, Config{}, "rise"},
		{"zero interval", &config.HealthCheck{Timeout: d("1s"), Rise: 1, Fall: 1}, Config{}, "interval"},
		{"relative path", &config.HealthCheck{HTTP: &config.HTTPCheck{Path: "healthz"}, Interval: d("2s"), Timeout: d("1s"), Rise: 1, Fall: 1},
			Config{}, "path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FromConfig(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (got.HTTP == nil) != (tt.want.HTTP == nil) || (got.HTTP != nil && *got.HTTP != *tt.want.HTTP) {
				t.Errorf("HTTP = %+v, want %+v", got.HTTP, tt.want.HTTP)
			}
			got.HTTP, tt.want.HTTP = nil, nil
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// backend is an HTTP server on 127.0.0.1 whose behaviour a test switches.
type backend struct {
	srv    *httptest.Server
	addr   netip.AddrPort
	delay  atomic.Int64 // time.Duration before the headers
	hits   atomic.Int64 // requests received
	conns  atomic.Int64 // connections accepted
	closed atomic.Int64 // connections closed

	mu        sync.Mutex
	status    int // status to answer with
	phaseHits int // responses sent with status since it was set
	last      *http.Request
}

func newBackend(t *testing.T) *backend {
	t.Helper()
	b := &backend{status: http.StatusOK}
	b.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		b.mu.Lock()
		b.last = r
		b.mu.Unlock()
		if d := time.Duration(b.delay.Load()); d > 0 {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		b.mu.Lock()
		status := b.status
		b.phaseHits++
		b.mu.Unlock()
		w.WriteHeader(status)
		_, _ = w.Write([]byte("ok\n"))
	}))
	b.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			b.conns.Add(1)
		case http.StateClosed, http.StateHijacked:
			b.closed.Add(1)
		}
	}
	b.srv.Start()
	t.Cleanup(b.srv.Close)
	b.addr = netip.MustParseAddrPort(b.srv.Listener.Addr().String())
	return b
}

// setStatus switches the status and restarts the count of responses
// sent with it.
func (b *backend) setStatus(status int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.status, b.phaseHits = status, 0
}

func (b *backend) sentSinceSet() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.phaseHits
}

func (b *backend) lastRequest() *http.Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

// refusedAddr returns a loopback address nothing listens on.
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

// rawServer accepts connections on 127.0.0.1 and hands each to fn.
func rawServer(t *testing.T, fn func(net.Conn)) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); fn(c) })
		}
	})
	return netip.MustParseAddrPort(l.Addr().String())
}

func httpConfig(timeout time.Duration) Config {
	return Config{
		HTTP:     &HTTP{Path: "/healthz", ExpectLo: 200, ExpectHi: 399},
		Interval: 4 * timeout, Timeout: timeout, Rise: 2, Fall: 3,
	}
}

func newChecker(t *testing.T, ctx context.Context, cfg Config, report Report, o Options) *Checker {
	t.Helper()
	if report == nil {
		report = func(netip.AddrPort, bool, string) {}
	}
	c, err := New(ctx, cfg, report, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop(); c.Wait() })
	return c
}

func TestProbe(t *testing.T) {
	const timeout = 300 * time.Millisecond
	tests := []struct {
		name     string
		cfg      func(Config) Config
		target   func(t *testing.T) netip.AddrPort
		kind     string
		status   int
		maxTook  time.Duration
		minTook  time.Duration
		errMatch string
	}{
		{name: "200 passes", target: func(t *testing.T) netip.AddrPort { return newBackend(t).addr }, kind: KindPass, status: 200},
		{name: "503 fails", target: func(t *testing.T) netip.AddrPort {
			b := newBackend(t)
			b.setStatus(503)
			return b.addr
		}, kind: KindStatus, status: 503, errMatch: "status 503, expected 200-399"},
		{name: "302 is in range, not followed", target: func(t *testing.T) netip.AddrPort {
			b := newBackend(t)
			b.setStatus(302)
			return b.addr
		}, kind: KindPass, status: 302},
		{name: "204 outside an exact expect", cfg: func(c Config) Config {
			c.HTTP = &HTTP{Path: "/", ExpectLo: 200, ExpectHi: 200}
			return c
		}, target: func(t *testing.T) netip.AddrPort {
			b := newBackend(t)
			b.setStatus(204)
			return b.addr
		}, kind: KindStatus, status: 204},
		{name: "refused", target: refusedAddr, kind: KindRefused, errMatch: "refused"},
		{name: "headers never come", target: func(t *testing.T) netip.AddrPort {
			b := newBackend(t)
			b.delay.Store(int64(10 * time.Second))
			return b.addr
		}, kind: KindTimeout, minTook: timeout - 10*time.Millisecond, maxTook: timeout + 500*time.Millisecond},
		{name: "accepts, never answers", target: func(t *testing.T) netip.AddrPort {
			return rawServer(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
		}, kind: KindTimeout, maxTook: timeout + 500*time.Millisecond},
		{name: "one deadline over headers and body", target: func(t *testing.T) netip.AddrPort {
			// Headers at 2/3 of the timeout, then the body trickles: each
			// phase alone is within the timeout, together they are not.
			return rawServer(t, func(c net.Conn) {
				_, _ = c.Read(make([]byte, 4096))
				time.Sleep(timeout * 2 / 3)
				_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"))
				for i := 0; i < 100; i++ {
					if _, err := c.Write([]byte("x")); err != nil {
						return
					}
					time.Sleep(timeout / 20)
				}
			})
		}, kind: KindTimeout, status: 200, maxTook: timeout + 500*time.Millisecond},
		{name: "closed mid-headers", target: func(t *testing.T) netip.AddrPort {
			return rawServer(t, func(c net.Conn) {
				_, _ = c.Read(make([]byte, 4096))
				_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Le"))
			})
		}, kind: KindRead},
		{name: "garbage", target: func(t *testing.T) netip.AddrPort {
			return rawServer(t, func(c net.Conn) {
				_, _ = c.Read(make([]byte, 4096))
				_, _ = c.Write([]byte("SSH-2.0-OpenSSH\r\n\r\n"))
			})
		}, kind: KindRead},
		{name: "endless body is capped", target: func(t *testing.T) netip.AddrPort {
			return rawServer(t, func(c net.Conn) {
				_, _ = c.Read(make([]byte, 4096))
				_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n"))
				chunk := make([]byte, 32<<10)
				for {
					if _, err := c.Write(chunk); err != nil {
						return
					}
				}
			})
		}, kind: KindPass, status: 200, maxTook: timeout},
		{name: "tcp connects", cfg: tcpConfig, target: func(t *testing.T) netip.AddrPort {
			return rawServer(t, func(net.Conn) {})
		}, kind: KindPass},
		{name: "tcp refused", cfg: tcpConfig, target: refusedAddr, kind: KindRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := httpConfig(timeout)
			if tt.cfg != nil {
				cfg = tt.cfg(cfg)
			}
			c := newChecker(t, context.Background(), cfg, nil, Options{})
			addr := tt.target(t)
			r := c.Probe(context.Background(), addr)
			if r.Kind != tt.kind || r.Status != tt.status {
				t.Fatalf("kind %q status %d (err %v), want %q %d", r.Kind, r.Status, r.Err, tt.kind, tt.status)
			}
			if r.OK() != (r.Err == nil) {
				t.Errorf("OK %v with err %v", r.OK(), r.Err)
			}
			if tt.errMatch != "" && (r.Err == nil || !strings.Contains(r.Err.Error(), tt.errMatch)) {
				t.Errorf("err %v, want it to mention %q", r.Err, tt.errMatch)
			}
			if tt.maxTook > 0 && r.Took > tt.maxTook {
				t.Errorf("took %v, want at most %v", r.Took, tt.maxTook)
			}
			if r.Took < tt.minTook {
				t.Errorf("took %v, want at least %v", r.Took, tt.minTook)
			}
		})
	}
}

func tcpConfig(c Config) Config {
	c.HTTP = nil
	return c
}

func TestHTTPRequestAndFreshConnections(t *testing.T) {
	b := newBackend(t)
	cfg := httpConfig(time.Second)
	cfg.HTTP.Host = "web.lab"
	c := newChecker(t, context.Background(), cfg, nil, Options{})
	const n = 5
	for i := 0; i < n; i++ {
		if r := c.Probe(context.Background(), b.addr); !r.OK() {
			t.Fatalf("probe %d: %v", i, r.Err)
		}
	}
	r := b.lastRequest()
	if r.Method != http.MethodGet || r.URL.Path != "/healthz" || r.Host != "web.lab" {
		t.Errorf("request %s %s Host %q, want GET /healthz Host web.lab", r.Method, r.URL.Path, r.Host)
	}
	if b.hits.Load() != n {
		t.Errorf("%d requests, want %d", b.hits.Load(), n)
	}
	if got := b.conns.Load(); got != n {
		t.Errorf("%d connections for %d checks, want one each", got, n)
	}
	waitFor(t, "every connection closed", func() bool { return b.closed.Load() == n })

	// Without a Host, the address is sent.
	cfg.HTTP.Host = ""
	c2 := newChecker(t, context.Background(), cfg, nil, Options{})
	c2.Probe(context.Background(), b.addr)
	if got := b.lastRequest().Host; got != b.addr.String() {
		t.Errorf("Host %q, want %q", got, b.addr)
	}
}

// transitions records Reports.
type transitions struct {
	mu  sync.Mutex
	got []string
	ch  chan string
}

func newTransitions() *transitions { return &transitions{ch: make(chan string, 100)} }

func (tr *transitions) report(addr netip.AddrPort, healthy bool, cause string) {
	s := addr.String() + " down " + cause
	if healthy {
		s = addr.String() + " up " + cause
	}
	tr.mu.Lock()
	tr.got = append(tr.got, s)
	tr.mu.Unlock()
	tr.ch <- s
}

func (tr *transitions) next(t *testing.T, within time.Duration) string {
	t.Helper()
	select {
	case s := <-tr.ch:
		return s
	case <-time.After(within):
		t.Fatalf("no transition within %v", within)
		return ""
	}
}

func (tr *transitions) none(t *testing.T, during time.Duration) {
	t.Helper()
	select {
	case s := <-tr.ch:
		t.Fatalf("unexpected transition %q", s)
	case <-time.After(during):
	}
}

func TestFallAndRise(t *testing.T) {
	b := newBackend(t)
	cfg := Config{HTTP: &HTTP{Path: "/", ExpectLo: 200, ExpectHi: 399},
		// The timeout is far above the checks' cost so that a loaded machine
		// never turns a pass or a 503 into a timeout and shifts the counts;
		// only the hanging phase below times out.
		Interval: 30 * time.Millisecond, Timeout: 500 * time.Millisecond, Rise: 2, Fall: 3}
	tr := newTransitions()
	var observed atomic.Int64
	// The report notes how many responses the backend sent since its
	// status last changed: it runs before the next check.
	report := func(addr netip.AddrPort, healthy bool, cause string) {
		tr.report(addr, healthy, cause+" after "+strconv.Itoa(b.sentSinceSet()))
	}
	c := newChecker(t, context.Background(), cfg, report, Options{
		Observe: func(Result) { observed.Add(1) },
	})
	c.SetTargets([]netip.AddrPort{b.addr})

	// Healthy from the start: passes report nothing.
	waitFor(t, "three checks", func() bool { return b.hits.Load() >= 3 })
	tr.none(t, 50*time.Millisecond)
	if st, ok := c.Status(b.addr); !ok || !st.Healthy || !st.Last.OK() {
		t.Fatalf("status %+v %v, want healthy", st, ok)
	}

	// Failing: reported after exactly `fall` failures. The count is taken
	// in the report, before the next check runs.
	b.setStatus(503)
	if got, want := tr.next(t, 2*time.Second), b.addr.String()+" down health:status after 3"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	tr.none(t, 100*time.Millisecond) // still failing: no repeat

	// Passing again: reported after exactly `rise` passes.
	b.setStatus(200)
	if got, want := tr.next(t, 2*time.Second), b.addr.String()+" up health:passed after 2"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}

	// Hanging: a timeout counts as a failure.
	b.delay.Store(int64(3 * time.Second))
	if got := tr.next(t, 5*time.Second); !strings.HasPrefix(got, b.addr.String()+" down health:timeout") {
		t.Errorf("got %q, want a timeout", got)
	}
	b.delay.Store(0)
	if observed.Load() < 8 {
		t.Errorf("Observe saw %d checks, want every one", observed.Load())
	}
}

func TestInitialUnhealthy(t *testing.T) {
	up := newBackend(t)
	down := refusedAddr(t)
	// A timeout far above a refused connect's cost: under load a short one
	// turned the refusal into a timeout. Checks start at once (Rand 0).
	cfg := httpConfig(time.Second)
	cfg.Interval = 50 * time.Millisecond
	tr := newTransitions()
	c := newChecker(t, context.Background(), cfg, tr.report, Options{
		Initial: func(a netip.AddrPort) bool { return a != up.addr },
	})
	c.SetTargets([]netip.AddrPort{up.addr, down})
	got := map[string]bool{tr.next(t, 15*time.Second): true, tr.next(t, 15*time.Second): true}
	for _, w := range []string{up.addr.String() + " up health:passed", down.String() + " down health:refused"} {
		if !got[w] {
			t.Errorf("transitions %v lack %q", got, w)
		}
	}
}

func TestInitialOffset(t *testing.T) {
	b := newBackend(t)
	cfg := httpConfig(100 * time.Millisecond) // interval 400ms
	var calls atomic.Int64
	c := newChecker(t, context.Background(), cfg, nil, Options{
		Rand: func() float64 { calls.Add(1); return 0.5 },
	})
	start := time.Now()
	c.SetTargets([]netip.AddrPort{b.addr})
	waitFor(t, "first check", func() bool { return b.hits.Load() > 0 })
	if took := time.Since(start); took < 190*time.Millisecond {
		t.Errorf("first check after %v, want about half the interval (200ms)", took)
	}
	if calls.Load() != 1 {
		t.Errorf("Rand called %d times for one target", calls.Load())
	}
}

func TestSetTargets(t *testing.T) {
	bs := []*backend{newBackend(t), newBackend(t), newBackend(t)}
	addrs := []netip.AddrPort{bs[0].addr, bs[1].addr, bs[2].addr}
	cfg := httpConfig(10 * time.Millisecond) // interval 40ms
	base := runtime.NumGoroutine()
	c := newChecker(t, context.Background(), cfg, nil, Options{})

	c.SetTargets(addrs)
	c.SetTargets(append(addrs, addrs[0])) // duplicates and repeats change nothing
	for i, b := range bs {
		waitFor(t, "checks of backend "+strconv.Itoa(i), func() bool { return b.hits.Load() >= 2 })
	}
	if n := len(c.Statuses()); n != 3 {
		t.Fatalf("%d targets, want 3", n)
	}

	// Remove two: their checks stop, their goroutines end.
	c.SetTargets(addrs[:1])
	if n := len(c.Statuses()); n != 1 {
		t.Fatalf("%d targets after removing two, want 1", n)
	}
	if _, ok := c.Status(addrs[1]); ok {
		t.Error("removed target still has a status")
	}
	time.Sleep(20 * time.Millisecond) // let a check in flight finish
	h1, h2, h0 := bs[1].hits.Load(), bs[2].hits.Load(), bs[0].hits.Load()
	time.Sleep(5 * cfg.Interval)
	if bs[1].hits.Load() != h1 || bs[2].hits.Load() != h2 {
		t.Errorf("removed targets still checked: %d->%d, %d->%d", h1, bs[1].hits.Load(), h2, bs[2].hits.Load())
	}
	if bs[0].hits.Load() <= h0 {
		t.Error("the kept target is no longer checked")
	}

	// Re-add one: checked again.
	c.SetTargets(addrs[:2])
	waitFor(t, "re-added target checked", func() bool { return bs[1].hits.Load() > h1 })

	// Empty set: nothing runs, goroutines back to where they were.
	c.SetTargets(nil)
	waitFor(t, "goroutines of removed targets end", func() bool {
		return runtime.NumGoroutine() <= base
	})
}

func TestContextCancelStopsEverything(t *testing.T) {
	bs := []*backend{newBackend(t), newBackend(t)}
	hang := newBackend(t)
	hang.delay.Store(int64(10 * time.Second))
	cfg := httpConfig(200 * time.Millisecond)
	cfg.Interval = 250 * time.Millisecond
	base := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	reports := newTransitions()
	c, err := New(ctx, cfg, reports.report, Options{Rand: func() float64 { return 0 }})
	if err != nil {
		t.Fatal(err)
	}
	c.SetTargets([]netip.AddrPort{bs[0].addr, bs[1].addr, hang.addr})
	waitFor(t, "checks running", func() bool {
		return bs[0].hits.Load() > 0 && bs[1].hits.Load() > 0 && hang.hits.Load() > 0
	})

	cancel() // the hanging check is in flight
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Wait did not return after cancel")
	}
	h0, h1 := bs[0].hits.Load(), bs[1].hits.Load()
	c.SetTargets([]netip.AddrPort{bs[0].addr, refusedAddr(t)}) // no effect now
	time.Sleep(3 * cfg.Interval)
	if bs[0].hits.Load() != h0 || bs[1].hits.Load() != h1 {
		t.Error("checks went on after cancel")
	}
	reports.none(t, 10*time.Millisecond) // the abandoned check reported nothing
	for _, b := range append(bs, hang) {
		b.srv.CloseClientConnections()
	}
	waitFor(t, "goroutines end", func() bool { return runtime.NumGoroutine() <= base })
}

func TestNewRefusesBadConfig(t *testing.T) {
	report := func(netip.AddrPort, bool, string) {}
	if _, err := New(context.Background(), Config{Interval: time.Second, Timeout: time.Second, Rise: 0, Fall: 1}, report, Options{}); err == nil {
		t.Error("rise 0 accepted")
	}
	if _, err := New(context.Background(), httpConfig(time.Second), nil, Options{}); err == nil {
		t.Error("nil report accepted")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// kindProber answers every check with the kind it holds.
type kindProber struct{ kind atomic.Value }

func (p *kindProber) probe(context.Context, netip.AddrPort) (string, int, error) {
	k := p.kind.Load().(string)
	if k == KindPass {
		return k, 200, nil
	}
	return k, 0, fmt.Errorf("check failed: %s", k)
}

// A check the host could not make (no local port, no file descriptor, no
// memory: KindLocal) moves an address neither way: with every address
// failing at once for the host's own shortage the pool would be emptied.
func TestLocalFailureCountsNeitherWay(t *testing.T) {
	if got := classify(context.Background(), &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.EADDRNOTAVAIL)}); got != KindLocal {
		t.Errorf("classify(EADDRNOTAVAIL) = %q, want %q", got, KindLocal)
	}
	if got := classify(context.Background(), &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", syscall.EMFILE)}); got != KindLocal {
		t.Errorf("classify(EMFILE) = %q, want %q", got, KindLocal)
	}
	addr := netip.MustParseAddrPort("198.18.2.11:80")
	cfg := Config{Interval: 10 * time.Millisecond, Timeout: 5 * time.Millisecond, Rise: 2, Fall: 2}
	tr := newTransitions()
	c := newChecker(t, context.Background(), cfg, tr.report, Options{})
	p := &kindProber{}
	p.kind.Store(KindPass)
	c.probe = p
	c.SetTargets([]netip.AddrPort{addr})
	waitFor(t, "a passing check", func() bool { st, ok := c.Status(addr); return ok && st.Last.OK() })
	p.kind.Store(KindLocal)
	waitFor(t, "a check not made", func() bool { st, _ := c.Status(addr); return st.Last.Kind == KindLocal })
	tr.none(t, 100*time.Millisecond) // ten checks not made: no transition
	if st, _ := c.Status(addr); !st.Healthy || st.Failures != 0 {
		t.Fatalf("status %+v after checks not made, want healthy with no failure counted", st)
	}
	p.kind.Store(KindConnect)
	if got := tr.next(t, 2*time.Second); !strings.HasPrefix(got, addr.String()+" down health:connect") {
		t.Errorf("got %q, want down after real failures", got)
	}
}
