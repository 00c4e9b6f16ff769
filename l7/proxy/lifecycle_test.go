package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/testcert"
	"github.com/sluicelb/sluice/l7/accesslog"
	"github.com/sluicelb/sluice/l7/eject"
	"github.com/sluicelb/sluice/l7/upstream"
	"github.com/sluicelb/sluice/userspace/pool"
)

// All backends failing: retries stay within the budget and at most
// max_ejected_percent of the pool is ejected; the pool goes to panic mode
// only if more are out.
func TestAllFailingBudgetAndEjectionLimit(t *testing.T) {
	var addrs []netip.AddrPort
	var bes []*backend
	for range 4 {
		b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(5 * time.Millisecond)
			w.WriteHeader(503)
		})
		bes = append(bes, b)
		addrs = append(addrs, b.addr)
	}
	p := newPool(t, nil, addrs...)
	var ejections, refused atomic.Int64
	obs := &countingObserver{ejected: &ejections, refused: &refused}
	h := start(t, p, func(o *Options) {
		o.Observer = obs
		o.Service.Retry.Attempts = 4
	})
	const clients, perClient = 40, 10
	var wg sync.WaitGroup
	var requests, not503 atomic.Int64
	for range clients {
		wg.Go(func() {
			for range perClient {
				resp, err := h.client.Get(h.url + "/")
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				requests.Add(1)
				if resp.StatusCode != 503 {
					not503.Add(1)
				}
			}
		})
	}
	wg.Wait()
	var executed int64
	for _, b := range bes {
		executed += b.count.Load()
	}
	st := h.srv.BudgetStats()
	limit := max(3, clients*20/100)
	if st.Peak > limit {
		t.Errorf("%d retries in flight at once, budget allows %d", st.Peak, limit)
	}
	if st.Denied == 0 {
		t.Errorf("no retry was refused by the budget (%d requests, %d tries)", requests.Load(), executed)
	}
	// Without a budget every request would make 4 tries; with 20% of the
	// requests in flight allowed to retry, retries stay near 20% of them.
	if executed*100 > requests.Load()*135 {
		t.Errorf("%d tries for %d requests: more than 35%% retries under a 20%% budget", executed, requests.Load())
	}
	if n := p.Counts()[pool.Ejected]; n != 2 {
		t.Errorf("%d of 4 ejected, want exactly max_ejected_percent (2)", n)
	}
	if refused.Load() == 0 {
		t.Error("no ejection was refused by the limit")
	}
	if not503.Load() != 0 {
		t.Errorf("%d responses were not the backends' 503", not503.Load())
	}
	if h.srv.Panicking() {
		t.Error("panic mode with exactly max_ejected_percent out")
	}
	t.Logf("%d requests, %d tries, budget %+v", requests.Load(), executed, st)
}

type countingObserver struct {
	NopObserver
	ejected, refused *atomic.Int64
	panics           atomic.Int64
}

func (o *countingObserver) Ejection(_ string, ev eject.Event) {
	if ev.Err != nil {
		o.refused.Add(1)
	} else if !ev.Recover {
		o.ejected.Add(1)
	}
}

func (o *countingObserver) Panic(_ string, on bool) {
	if on {
		o.panics.Add(1)
	}
}

// More than max_ejected_percent out (active ones drained): panic mode
// spreads requests over ejected addresses too, and says so.
func TestPanicMode(t *testing.T) {
	a, b := newBackend(t, status(200)), newBackend(t, status(200))
	p := newPool(t, nil, a.addr, b.addr)
	obs := &countingObserver{ejected: new(atomic.Int64), refused: new(atomic.Int64)}
	h := start(t, p, func(o *Options) { o.Observer = obs })
	now := time.Now()
	if err := p.Eject(now, a.addr, now.Add(time.Hour), "test"); err != nil {
		t.Fatal(err)
	}
	if err := p.Drain(now, b.addr); err != nil {
		t.Fatal(err)
	}
	resp, _ := h.do(t, "GET", "/", nil, nil)
	if resp.StatusCode != 200 || a.count.Load() != 1 || b.count.Load() != 0 {
		t.Errorf("status %d, ejected got %d, drained got %d: want the ejected one to serve", resp.StatusCode, a.count.Load(), b.count.Load())
	}
	if !h.srv.Panicking() || obs.panics.Load() != 1 {
		t.Errorf("panicking %v, panic events %d", h.srv.Panicking(), obs.panics.Load())
	}
	if err := p.Recover(now, a.addr, "test"); err != nil {
		t.Fatal(err)
	}
	h.do(t, "GET", "/", nil, nil)
	if h.srv.Panicking() {
		t.Error("still panicking after recovery")
	}
}

// An address going draining: its idle pooled connections are closed at
// once, a busy one after its request, and no new request goes to it.
func TestDrainClosesPooledConnections(t *testing.T) {
	gate, hold := make(chan struct{}), make(chan struct{})
	var closeGate, closeHold sync.Once
	t.Cleanup(func() { closeGate.Do(func() { close(gate) }); closeHold.Do(func() { close(hold) }) })
	var inSlow, inHold atomic.Int64
	a := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			inSlow.Add(1)
			<-gate
		case "/hold":
			inHold.Add(1)
			<-hold
		}
		w.Write([]byte("a"))
	})
	b := newBackend(t, status(200))
	// The server follows the pool's transitions through pool.Subscribe.
	p := newPool(t, nil, a.addr, b.addr)
	h := start(t, p, func(o *Options) { o.Selector = preferSelector{a.addr} })

	// Warm four connections to a (four requests at once), then make one busy.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { h.do(t, "GET", "/hold", nil, nil) })
	}
	waitFor(t, "four requests held", func() bool { return inHold.Load() == 4 })
	closeHold.Do(func() { close(hold) })
	wg.Wait()
	slowDone := make(chan int)
	go func() {
		resp, err := h.client.Get(h.url + "/slow")
		if err != nil {
			t.Error(err)
			slowDone <- 0
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		slowDone <- resp.StatusCode
	}()
	for i := 0; inSlow.Load() == 0 && i < 200; i++ {
		time.Sleep(5 * time.Millisecond)
	}
	idle := h.srv.UpstreamStats(a.addr).Idle
	if idle == 0 || a.open() < 2 {
		t.Fatalf("setup: %d idle pooled, %d open at the backend", idle, a.open())
	}

	if err := p.Drain(time.Now(), a.addr); err != nil {
		t.Fatal(err)
	}
	if st := h.srv.UpstreamStats(a.addr); st.Idle != 0 || st.Busy != 1 {
		t.Errorf("after drain: %+v, want no idle and the one busy", st)
	}
	waitFor(t, "idle connections closed at the backend", func() bool { return a.open() == 1 })
	before := a.count.Load()
	for range 5 {
		h.do(t, "GET", "/", nil, nil)
	}
	if n := a.count.Load() - before; n != 0 {
		t.Errorf("%d new requests reached the draining address", n)
	}
	closeGate.Do(func() { close(gate) })
	if code := <-slowDone; code != 200 {
		t.Errorf("the request in flight on the draining address ended with %d", code)
	}
	waitFor(t, "busy connection closed after its request", func() bool { return a.open() == 0 })
	if st := h.srv.UpstreamStats(a.addr); st.Idle != 0 {
		t.Errorf("a connection to the draining address went back to the pool: %+v", st)
	}
}

// TestRemovedCutsWhatIsInFlight: an address removed (its drain_timeout
// passed) keeps nothing: a request still waiting on it fails at once (a
// POST already sent is not retried: 502), and a tunnel to it is closed,
// as the data path resets a flow pinned to a removed backend.
func TestRemovedCutsWhatIsInFlight(t *testing.T) {
	gate := make(chan struct{})
	var inSlow atomic.Int64
	a := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			echoUpgrade(w, r)
			return
		}
		io.ReadAll(r.Body) // then net/http sees the connection close
		inSlow.Add(1)
		select {
		case <-gate:
		case <-r.Context().Done():
		}
		w.Write([]byte("a"))
	})
	t.Cleanup(func() { close(gate) }) // before the backend's cleanup waits for its handlers
	p := newPool(t, nil, a.addr)
	h := start(t, p, func(o *Options) { o.Service.Upgrades = []string{"echo"} })

	// A tunnel, open and echoing.
	c, br := upgradeClient(t, h)
	io.WriteString(c, "ping")
	if got := make([]byte, 4); func() error { _, err := io.ReadFull(br, got); return err }() != nil {
		t.Fatal("no echo through the tunnel")
	}
	// A POST waiting for its response.
	posted := statusLater(func() (*http.Response, error) {
		return h.client.Post(h.url+"/slow", "text/plain", strings.NewReader("once"))
	})
	waitFor(t, "the POST at the backend", func() bool { return inSlow.Load() == 1 })
	if st := h.srv.UpstreamStats(a.addr); st.Busy != 2 {
		t.Fatalf("setup: %+v, want 2 busy (the tunnel and the POST)", st)
	}

	// Draining keeps both; removed cuts both.
	h.srv.AddressChanged(a.addr, pool.Draining)
	select {
	case code := <-posted:
		t.Fatalf("the POST ended (%d) when its address started draining", code)
	case <-time.After(50 * time.Millisecond):
	}
	h.srv.AddressChanged(a.addr, pool.Removed)
	select {
	case code := <-posted:
		if code != http.StatusBadGateway {
			t.Errorf("the POST in flight to a removed address: %d, want 502", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the POST in flight to a removed address still waits")
	}
	if n, err := io.ReadAll(br); err != nil || len(n) != 0 {
		t.Errorf("the tunnel to a removed address: read %q, %v; want its end", n, err)
	}
	if inSlow.Load() != 1 {
		t.Errorf("the POST reached the backend %d times", inSlow.Load())
	}
	waitFor(t, "both connections closed at the backend", func() bool { return a.open() == 0 })
	waitFor(t, "two access log lines", func() bool { return len(h.access.lines(t)) == 2 })
	for _, l := range h.access.lines(t) {
		if !strings.Contains(l.Error, "removed") {
			t.Errorf("access log of a cut exchange: %+v", l)
		}
	}
	// The address's in-flight counter, kept at the removal (the POST was
	// in flight), is forgotten when the cut exchange ends: a removed
	// address leaves nothing behind.
	waitFor(t, "the removed address's counter forgotten", func() bool {
		_, ok := h.srv.loads.Load(a.addr)
		return !ok
	})
}

// TestAddrStatOutlivesARemovalUndone: an address removed while a request
// was in flight to it and active again before that request ended keeps
// its in-flight counter (the snapshot's picks and the tries count on the
// same one); one removed for good loses it with its last request.
func TestAddrStatOutlivesARemovalUndone(t *testing.T) {
	be := newBackend(t, status(200))
	h := start(t, newPool(t, nil, be.addr), nil)
	s := h.srv
	as := s.stat(be.addr)
	as.inflight.Add(1) // a try in flight
	s.AddressChanged(be.addr, pool.Removed)
	if v, ok := s.loads.Load(be.addr); !ok || v != as {
		t.Fatal("the counter was forgotten with a request still in flight")
	}
	s.AddressChanged(be.addr, pool.Active)
	s.tryDone(be.addr, as)
	if v, ok := s.loads.Load(be.addr); !ok || v != as {
		t.Fatal("an address active again lost its counter when its last request ended")
	}
	as.inflight.Add(1)
	s.AddressChanged(be.addr, pool.Removed)
	s.tryDone(be.addr, as)
	if _, ok := s.loads.Load(be.addr); ok {
		t.Error("a removed address's counter outlived its last request")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("timed out waiting: %s", what)
}

// Update (reload) under keep-alive load: zero failed requests.
func TestUpdateUnderLoad(t *testing.T) {
	a, b := newBackend(t, status(200)), newBackend(t, status(200))
	p := newPool(t, nil, a.addr, b.addr)
	h := start(t, p, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for ctx.Err() == nil {
				t0 := time.Now()
				resp, err := h.client.Get(h.url + "/")
				if d := time.Since(t0); d > time.Second {
					t.Logf("slow request: %s", d)
				}
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					ok.Add(1)
				} else {
					failed.Add(1)
				}
			}
		})
	}
	for i := 0; ctx.Err() == nil; i++ {
		svc := testService()
		svc.Timeouts.Read = time.Duration(1+i%3) * time.Second
		svc.Retry.Attempts = 1 + i%3
		svc.Retry.BudgetPercent = 10 * (i % 5)
		ej := testEjection()
		ej.Failures = 1 + i%4
		if err := h.srv.Update(svc, ej); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	if failed.Load() != 0 || ok.Load() < 100 {
		t.Errorf("%d ok, %d failed during reloads", ok.Load(), failed.Load())
	}
	bad := testService()
	bad.Timeouts.Total = -time.Second
	if err := h.srv.Update(bad, testEjection()); err == nil {
		t.Error("an invalid update was accepted")
	}
}

// Shutdown lets the request in flight finish.
func TestGracefulShutdown(t *testing.T) {
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond)
		w.Write([]byte("done"))
	})
	p := newPool(t, nil, be.addr)
	srv, err := New(Options{Service: testService(), Pool: p, Ejection: testEjection()})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	got := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + l.Addr().String() + "/")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	waitFor(t, "request in flight", func() bool { return be.count.Load() == 1 })
	cancel()
	if s := <-got; s != "done" {
		t.Errorf("in-flight request got %q", s)
	}
	if err := <-done; err != nil {
		t.Errorf("serve: %v", err)
	}
	if _, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		t.Error("still accepting after shutdown")
	}
}

// HTTPS listener with ALPN h2; upstream TLS with SNI and Host from `host:`.
func TestTLSAndHostRewrite(t *testing.T) {
	var sni, host atomic.Value
	be := newTLSBackend(t, func(w http.ResponseWriter, r *http.Request) {
		sni.Store(r.TLS.ServerName)
		host.Store(r.Host)
		w.Write([]byte("secure"))
	})
	p := newPool(t, nil, be)
	dir := t.TempDir()
	cert, key := writeCert(t, dir, "sluice.test")
	h := start(t, p, func(o *Options) {
		o.TLS = &TLSFiles{Cert: cert, Key: key}
		o.Service.Host = "api.example.test"
		o.Upstream.TLS = &tls.Config{InsecureSkipVerify: true}
	})
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := c.Get(strings.Replace(h.url, "http://", "https://", 1) + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || string(b) != "secure" {
		t.Errorf("got %s %q, want HTTP/2 and the backend's body", resp.Proto, b)
	}
	if sni.Load() != "api.example.test" || host.Load() != "api.example.test" {
		t.Errorf("backend saw SNI %v, Host %v", sni.Load(), host.Load())
	}
	for range 3 {
		resp, err := c.Get(strings.Replace(h.url, "http://", "https://", 1) + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if st := h.srv.UpstreamStats(be); st.Dialled != 1 || st.Reused != 3 {
		t.Errorf("upstream TLS connections %+v: want one reused", st)
	}
	// An HTTP/2 PUT with a body of unknown length, retried after a 503 with its body.
	var bodies []string
	var mu sync.Mutex
	bad := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, "bad:"+string(b))
		mu.Unlock()
		w.WriteHeader(503)
	})
	good := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, "good:"+string(b))
		mu.Unlock()
	})
	p2 := newPool(t, nil, bad.addr, good.addr)
	h2 := start(t, p2, func(o *Options) {
		o.TLS = &TLSFiles{Cert: cert, Key: key}
		o.Selector = preferSelector{bad.addr}
	})
	req, _ := http.NewRequest("PUT", strings.Replace(h2.url, "http://", "https://", 1)+"/", io.NopCloser(strings.NewReader("payload")))
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 || strings.Join(bodies, ",") != "bad:payload,good:payload" {
		t.Errorf("h2 PUT: %s %d, backends saw %v", resp.Proto, resp.StatusCode, bodies)
	}
}

func newTLSBackend(t *testing.T, h http.HandlerFunc) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key := writeCert(t, dir, "backend.test")
	srv := &http.Server{Handler: h}
	go srv.ServeTLS(l, cert, key)
	t.Cleanup(func() { srv.Close() })
	a := netip.MustParseAddrPort(l.Addr().String())
	tlsBackendDirs.Store(a, dir)
	return a
}

// tlsBackendDirs holds the directory of each TLS test backend's
// certificate (backend.test.crt), by address.
var tlsBackendDirs sync.Map

func tlsBackendDir(t *testing.T, a netip.AddrPort) string {
	t.Helper()
	d, ok := tlsBackendDirs.Load(a)
	if !ok {
		t.Fatalf("no TLS backend at %s", a)
	}
	return d.(string)
}

func writeCert(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	return testcert.Write(t, dir, name, testcert.Options{Names: []string{name}})
}

// Connections are not reused past their max lifetime; a pooled connection
// the backend closed is replaced without failing the request.
func TestMaxLifetimeAndStaleConnections(t *testing.T) {
	be := newBackend(t, status(200))
	p := newPool(t, nil, be.addr)
	h := start(t, p, func(o *Options) { o.Upstream.MaxLifetime = 200 * time.Millisecond })
	h.do(t, "GET", "/", nil, nil)
	h.do(t, "GET", "/", nil, nil)
	time.Sleep(250 * time.Millisecond)
	h.do(t, "GET", "/", nil, nil)
	if st := h.srv.UpstreamStats(be.addr); st.Dialled != 2 || st.Reused != 1 {
		t.Errorf("stats %+v: want a new connection after the lifetime", st)
	}
	// The backend closes its idle connections: the next POST (not
	// retryable once sent) still succeeds on a fresh connection.
	be.srv.CloseClientConnections()
	waitFor(t, "backend closed its connections", func() bool { return be.open() == 0 })
	resp, _ := h.do(t, "POST", "/", []byte("x"), nil)
	if resp.StatusCode != 200 {
		t.Errorf("POST after the backend closed the pooled connection: %d", resp.StatusCode)
	}
}

// A backend restart closes all its pooled connections at once, just
// after they were used (within upstream.RecentWithoutPeek, so handed out
// without the liveness peek): every GET still succeeds, concurrent or
// not — a request that meets a dead one sends again on a peeked or new
// connection — and the backend executes each exactly once.
func TestBackendRestartClosesRecentConnections(t *testing.T) {
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond) // concurrent requests need connections of their own
		w.WriteHeader(200)
	})
	p := newPool(t, nil, be.addr)
	closes := &closeReasons{n: map[string]int{}}
	h := start(t, p, func(o *Options) {
		o.Ejection.Failures = 0
		o.Observer = closes
	})
	burst := func(n int) {
		t.Helper()
		var wg sync.WaitGroup
		codes := make([]int, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, _ := h.do(t, "GET", "/", nil, nil)
				codes[i] = resp.StatusCode
			}()
		}
		wg.Wait()
		for i, c := range codes {
			if c != 200 {
				t.Errorf("request %d: status %d", i, c)
			}
		}
	}
	burst(6)
	if st := h.srv.UpstreamStats(be.addr); st.Idle < 2 {
		t.Fatalf("stats %+v: want several pooled connections", st)
	}
	before := be.count.Load()
	be.srv.CloseClientConnections()
	waitFor(t, "backend closed its connections", func() bool { return be.open() == 0 })
	burst(6)
	for range 3 {
		if resp, _ := h.do(t, "GET", "/", nil, nil); resp.StatusCode != 200 {
			t.Errorf("GET after the restart: %d", resp.StatusCode)
		}
	}
	if n := be.count.Load() - before; n != 9 {
		t.Errorf("backend executed %d requests after the restart, want 9", n)
	}
	// The dead connections are counted closed by the backend (found so
	// by the peek or by a write), not as failed exchanges.
	closes.mu.Lock()
	defer closes.mu.Unlock()
	if closes.n[upstream.CloseError] != 0 || closes.n[upstream.CloseBackend] < 2 {
		t.Errorf("upstream connections closed by reason %v: want the dead ones as %q, none as %q",
			closes.n, upstream.CloseBackend, upstream.CloseError)
	}
	// The sends again are visible: in the access log's try ("resent")
	// and from there in sluice_l7_upstream_stale_resends_total.
	if closes.resent == 0 {
		t.Error("no try counted a send again on another connection (resent)")
	}
}

// closeReasons counts the upstream connections closed, by reason.
type closeReasons struct {
	NopObserver
	mu     sync.Mutex
	n      map[string]int
	resent int // the tries' Resent, summed
}

func (c *closeReasons) Request(rec *accesslog.Record) {
	c.mu.Lock()
	for _, tr := range rec.Tries {
		c.resent += tr.Resent
	}
	c.mu.Unlock()
}

func (c *closeReasons) UpstreamClosed(_ string, _ netip.AddrPort, reason string) {
	c.mu.Lock()
	c.n[reason]++
	c.mu.Unlock()
}

// A backend that dies in the middle of the body: the client sees the
// response cut (not a complete one), and nothing is retried.
func TestMidResponseClose(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var count atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				count.Add(1)
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
			}()
		}
	}()
	good := newBackend(t, status(200))
	addr := netip.MustParseAddrPort(l.Addr().String())
	p := newPool(t, nil, addr, good.addr)
	h := start(t, p, func(o *Options) { o.Selector = preferSelector{addr} })
	// The header may or may not have reached the client before the cut;
	// either way the client must see an error, never a complete body.
	resp, err := h.client.Get(h.url + "/")
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Error("the client read a complete body from a cut response")
	}
	if count.Load() != 1 || good.count.Load() != 0 {
		t.Errorf("tries: %d on the cutting backend, %d elsewhere; want 1 and 0", count.Load(), good.count.Load())
	}
	waitFor(t, "access log", func() bool { return len(h.access.lines(t)) == 1 })
	if l := h.access.last(t); !strings.Contains(l.Error, "cut short") {
		t.Errorf("log: %+v", l)
	}
}

// Client-side limits and framing the proxy refuses.
func TestClientLimitsAndFraming(t *testing.T) {
	be := newBackend(t, status(200))
	p := newPool(t, nil, be.addr)
	h := start(t, p, func(o *Options) { o.Client.MaxHeaderBytes = 4096 })
	addr := strings.TrimPrefix(h.url, "http://")
	cases := []struct {
		name, req string
		want      int
	}{
		{"huge header", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 8192) + "\r\n\r\n", 431},
		{"two content lengths", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400},
		{"unknown transfer coding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
		{"connect", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			io.WriteString(c, tc.req)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	if n := be.count.Load(); n != 0 {
		t.Errorf("%d refused requests reached the backend", n)
	}
	// Content-Length with chunked: one policy on every listener (TLS or
	// not): read by Transfer-Encoding alone, re-framed upstream, and the
	// client connection closed after the response.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 || !resp.Close {
		t.Errorf("Content-Length and chunked: %d, close %v; want 200 and the connection closed", resp.StatusCode, resp.Close)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("a second response on a connection that sent Content-Length with chunked")
	}
	if n := be.count.Load(); n != 1 {
		t.Errorf("the backend executed %d requests, want 1 (nothing smuggled)", n)
	}
}

// Field report 1 at L7: the DNS answer moves from one address to another
// under keep-alive load. No request fails, no request reaches the old
// address once the pool has moved it to draining (except those already
// in flight), and the pooled connections to it are closed.
func TestAnswerMovesUnderLoad(t *testing.T) {
	oldBe := newBackend(t, status(200))
	newBe := newBackend(t, status(200))
	p := pool.New("web", pool.Config{DrainTimeout: time.Minute, MaxEjectedPercent: 50}, nil, nil)
	p.SetSource(time.Now(), "backend.lab", []pool.Desired{{Addr: oldBe.addr, Info: "A " + oldBe.addr.Addr().String() + " ttl 2s"}})
	h := start(t, p, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Millisecond)
	defer cancel()
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for ctx.Err() == nil {
				resp, err := h.client.Get(h.url + "/")
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					ok.Add(1)
				} else {
					failed.Add(1)
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	if h.srv.UpstreamStats(oldBe.addr).Idle+h.srv.UpstreamStats(oldBe.addr).Busy == 0 {
		t.Fatal("no pooled connection to the old address before the switch")
	}
	p.SetSource(time.Now(), "backend.lab", []pool.Desired{{Addr: newBe.addr, Info: "A " + newBe.addr.Addr().String() + " ttl 2s"}})
	if b, _ := p.Backend(oldBe.addr); b.State != pool.Draining {
		t.Fatalf("old address is %s", b.State)
	}
	// Requests already on their way to the old address may still land.
	time.Sleep(50 * time.Millisecond)
	atSwitch := oldBe.count.Load()
	wg.Wait()
	if n := oldBe.count.Load() - atSwitch; n != 0 {
		t.Errorf("%d requests reached the old address after the switch", n)
	}
	if failed.Load() != 0 || newBe.count.Load() == 0 {
		t.Errorf("%d ok, %d failed, %d on the new address", ok.Load(), failed.Load(), newBe.count.Load())
	}
	if st := h.srv.UpstreamStats(oldBe.addr); st.Idle != 0 || st.Busy != 0 {
		t.Errorf("connections to the old address left: %+v", st)
	}
	waitFor(t, "old backend's connections closed", func() bool { return oldBe.open() == 0 })
	var answers []string
	for _, l := range h.access.lines(t) {
		answers = append(answers, l.Try[0].Answer)
	}
	if !strings.Contains(strings.Join(answers, ","), "ttl 2s") {
		t.Errorf("the access log does not name the DNS answer: %v", answers[:min(3, len(answers))])
	}
}

// An Upgrade (WebSocket-style) request: the 101 is passed on and bytes
// flow both ways until the client closes; the backend connection is never
// pooled.
func TestUpgradeTunnel(t *testing.T) {
	be := newBackend(t, echoUpgrade)
	p := newPool(t, nil, be.addr)
	h := start(t, p, func(o *Options) { o.Service.Upgrades = []string{"echo"} })
	c, br := upgradeClient(t, h)
	for _, msg := range []string{"ping", "\r\n\r\n", "GET / HTTP/1.1\r\n"} {
		io.WriteString(c, msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(br, got); err != nil || string(got) != msg {
			t.Fatalf("echo of %q: %q %v", msg, got, err)
		}
	}
	c.Close()
	waitFor(t, "access log", func() bool { return len(h.access.lines(t)) == 1 })
	if l := h.access.last(t); l.Status != 101 {
		t.Errorf("log %+v", l)
	}
	if st := h.srv.UpstreamStats(be.addr); st.Idle != 0 || st.Busy != 0 {
		t.Errorf("upgraded connection left in the pool: %+v", st)
	}
	// A plain request after that still works (and is not an upgrade).
	if resp, _ := h.do(t, "GET", "/", nil, nil); resp.StatusCode != 400 {
		t.Errorf("plain request: %d", resp.StatusCode)
	}
}

// echoUpgrade is a backend that switches a request with "Upgrade: echo"
// (and "Connection: upgrade" as sluice forwards it) to a protocol that
// echoes every byte; 400 to anything else.
func echoUpgrade(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") != "echo" || !strings.EqualFold(r.Header.Get("Connection"), "upgrade") {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	brw.Flush()
	io.Copy(c, brw)
}

// HTTP/2 without TLS (prior knowledge), through the framing guard.
func TestH2C(t *testing.T) {
	be := newBackend(t, status(200))
	p := newPool(t, nil, be.addr)
	h := start(t, p, func(o *Options) { o.H2C = true })
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	for range 3 {
		resp, err := c.Get(h.url + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
			t.Fatalf("got %s %d", resp.Proto, resp.StatusCode)
		}
	}
	// HTTP/1.1 still works on the same listener.
	if resp, _ := h.do(t, "GET", "/", nil, nil); resp.StatusCode != 200 || resp.ProtoMajor != 1 {
		t.Errorf("HTTP/1.1: %s %d", resp.Proto, resp.StatusCode)
	}
}

// An address removed while a request's connection to it is being made
// (the request picked it before the removal, its connection came after;
// Cut closed only what was in use then): the request sends nothing on
// that connection, no ejection counts it, and a GET goes on to another
// address. HTTP/1 and HTTP/2 upstreams alike.
func TestRemovedWhileConnecting(t *testing.T) {
	for _, proto := range []string{"http1", "h2c"} {
		t.Run(proto, func(t *testing.T) {
			var aReqs func() int64
			var a, b netip.AddrPort
			if proto == "h2c" {
				ba, bb := newH2CBackend(t, status(200)), newH2CBackend(t, status(200))
				a, b, aReqs = ba.addr, bb.addr, ba.reqs.Load
			} else {
				ba, bb := newBackend(t, status(200)), newBackend(t, status(200))
				a, b, aReqs = ba.addr, bb.addr, ba.count.Load
			}
			p := newPool(t, nil, a, b)
			var srv atomic.Pointer[Server] // (the hook runs on the server's goroutines)
			var dialled atomic.Int64
			h := start(t, p, func(o *Options) {
				o.Selector = preferSelector{a, b}
				if proto == "h2c" {
					o.Upstream.Protocol = ProtocolH2C
				}
				o.Upstream.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
					if addr == a.String() && dialled.Add(1) == 1 {
						// The drain_timeout passes while this dial runs.
						now := time.Now()
						if err := p.Drain(now, a); err != nil {
							return nil, err
						}
						p.Tick(now.Add(2*time.Minute), func(netip.AddrPort) (int, bool) { return 1, true })
						srv.Load().AddressChanged(a, pool.Removed)
					}
					var d net.Dialer
					return d.DialContext(ctx, network, addr)
				}
			})
			srv.Store(h.srv)
			resp, _ := h.do(t, http.MethodGet, "/", nil, nil)
			if resp.StatusCode != http.StatusOK {
				t.Errorf("status %d, want 200 from the other address", resp.StatusCode)
			}
			if dialled.Load() != 1 {
				t.Fatalf("setup: %d dials to the removed address, want 1", dialled.Load())
			}
			if n := aReqs(); n != 0 {
				t.Errorf("the removed address got %d requests", n)
			}
			l := h.access.last(t)
			if len(l.Try) != 2 || !strings.Contains(l.Try[0].Error, "removed") || l.Try[1].Backend != b.String() {
				t.Errorf("access log tries: %+v, want the removed address's (its error) then %s", l.Try, b)
			}
			if st := h.srv.UpstreamStats(a); st.Busy != 0 {
				t.Errorf("the removed address's connections: %+v, none busy", st)
			}
		})
	}
}

// A backend's response header past upstream.max_header_bytes or
// max_header_count: the client gets a 502 saying so, the request is not
// sent again (to this backend or another), and nothing counts against
// the backend (a client could make one that reflects its headers look
// broken). Just under the limits it passes. HTTP/1 and HTTP/2 upstreams.
func TestResponseHeaderLimits(t *testing.T) {
	// ?fields=N adds N fields, ?big=N one field of N bytes, ?kb=N N
	// fields of 1000 bytes (net/http adds Date, Content-Length and
	// Content-Type: 3 more).
	answer := func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("fields"))
		for i := range n {
			w.Header().Set(fmt.Sprintf("X-F%d", i), "v")
		}
		kb, _ := strconv.Atoi(r.URL.Query().Get("kb"))
		for i := range kb {
			w.Header().Set(fmt.Sprintf("X-K%d", i), strings.Repeat("k", 1000))
		}
		if big, _ := strconv.Atoi(r.URL.Query().Get("big")); big > 0 {
			w.Header().Set("X-Big", strings.Repeat("b", big))
		}
		io.WriteString(w, "ok")
	}
	for _, proto := range []string{"http1", "h2c"} {
		t.Run(proto, func(t *testing.T) {
			var a, b netip.AddrPort
			var reqs func() int64
			if proto == "h2c" {
				ba, bb := newH2CBackend(t, answer), newH2CBackend(t, answer)
				a, b = ba.addr, bb.addr
				reqs = func() int64 { return ba.reqs.Load() + bb.reqs.Load() }
			} else {
				ba, bb := newBackend(t, answer), newBackend(t, answer)
				a, b = ba.addr, bb.addr
				reqs = func() int64 { return ba.count.Load() + bb.count.Load() }
			}
			p := newPool(t, nil, a, b)
			h := start(t, p, func(o *Options) {
				o.Selector = preferSelector{a, b}
				o.Upstream.MaxHeaderBytes, o.Upstream.MaxHeaderCount = 8<<10, 20
				if proto == "h2c" {
					o.Upstream.Protocol = ProtocolH2C
				}
			})
			cases := []struct {
				query, refused string
			}{
				{"fields=17", ""},
				{"big=6000", ""},
				{"kb=7", ""},
				{"kb=10", "max_header_bytes (8192)"}, // every field within it, not their sum
				{"fields=18", "max_header_count (20)"},
			}
			if proto == "http1" {
				// (Over HTTP/2 one field longer than the limit fails the
				// whole connection: below.)
				cases = append(cases, struct{ query, refused string }{"big=9000", "max_header_bytes (8192)"},
					struct{ query, refused string }{"big=200000", "max_header_bytes (8192)"}) // past the read-ahead too
			}
			for _, c := range cases {
				before := reqs()
				for range 4 { // past the ejection's consecutive failures
					resp, body := h.do(t, http.MethodGet, "/?"+c.query, nil, nil)
					l := h.access.last(t)
					if c.refused == "" {
						if resp.StatusCode != http.StatusOK || body != "ok" {
							t.Errorf("%s: %d %q, want 200 ok", c.query, resp.StatusCode, body)
						}
						continue
					}
					if resp.StatusCode != http.StatusBadGateway || !strings.Contains(l.Error, c.refused) || len(l.Try) != 1 || l.Try[0].Retry {
						t.Errorf("%s: %d, access log %+v; want a 502 refusing it (%s), one try, no retry", c.query, resp.StatusCode, l, c.refused)
					}
				}
				if c.refused != "" {
					if n := reqs() - before; n != 4 {
						t.Errorf("%s: the backends got %d requests for 4, want each once", c.query, n)
					}
					for _, addr := range []netip.AddrPort{a, b} {
						if be, _ := p.Backend(addr); be.State != pool.Active {
							t.Errorf("%s: %s is %v after refused responses, want active", c.query, addr, be.State)
						}
					}
				}
			}
			if proto == "h2c" {
				// One field longer than the limit: the library's HPACK
				// decoder fails the connection (COMPRESSION_ERROR), every
				// stream on it alike; a reset, said in the access log.
				resp, _ := h.do(t, http.MethodGet, "/?big=9000", nil, nil)
				if l := h.access.last(t); resp.StatusCode != http.StatusBadGateway || !strings.Contains(l.Error, "longer than upstream.max_header_bytes (8192)") {
					t.Errorf("one field past the limit over HTTP/2: %d, access log %q", resp.StatusCode, l.Error)
				}
			}
		})
	}
}
