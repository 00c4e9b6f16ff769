package proxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicelb/sluice/l7/accesslog"
	"github.com/sluicelb/sluice/l7/retry"
	"github.com/sluicelb/sluice/userspace/metrics"
	"github.com/sluicelb/sluice/userspace/pool"
)

// fakeDNSPool is a pool whose name is looked up again on Reresolve: the
// test decides what the lookup brings (answer) and whether a lookup can
// start at all (lookups left). The answer is applied and the channel closed
// from another goroutine, as the agent does when the lookup returns.
type fakeDNSPool struct {
	*pool.Pool
	t *testing.T

	mu      sync.Mutex
	lookups int              // lookups that may still start (the watcher's rate limit)
	answer  []netip.AddrPort // what the next lookup answers; nil: the same as before
	hold    bool             // the lookup never returns
	asked   int              // Reresolve calls
	started chan struct{}    // gets one value per lookup started
}

func newFakeDNSPool(t *testing.T, lookups int, addrs ...netip.AddrPort) *fakeDNSPool {
	return &fakeDNSPool{Pool: newPool(t, nil, addrs...), t: t, lookups: lookups, started: make(chan struct{}, 16)}
}

func (f *fakeDNSPool) Reresolve(time.Time) <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked++
	if f.lookups == 0 {
		return nil
	}
	f.lookups--
	ch := make(chan struct{})
	answer, hold := f.answer, f.hold
	f.started <- struct{}{}
	if hold {
		return ch
	}
	go func() {
		if answer != nil {
			var ds []pool.Desired
			for _, a := range answer {
				ds = append(ds, pool.Desired{Addr: a, Weight: 1, Info: "A " + a.String()})
			}
			f.SetSource(time.Now(), pool.SourceStatic, ds)
		}
		close(ch)
	}()
	return ch
}

var _ DNSWaiter = (*fakeDNSPool)(nil)

// The pool's only address refuses and its name has moved: the request
// waits for the answer and is served by the new address; one request, one
// 200, the wait in its try chain and in the metrics.
func TestDNSWaitNewAddress(t *testing.T) {
	good := newBackend(t, status(200))
	gone := refusedAddr(t)
	p := newFakeDNSPool(t, 1, gone)
	p.answer = []netip.AddrPort{good.addr}
	m := metrics.New(metrics.Options{NoRuntimeCollectors: true})
	h := start(t, p, func(o *Options) { o.Observer = NewMetricsObserver(m.L7, "web") })

	resp, _ := h.do(t, "GET", "/", nil, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200 from the new address", resp.StatusCode)
	}
	l := h.access.last(t)
	if len(l.Try) != 2 {
		t.Fatalf("tries %+v, want the refused one and the new address", l.Try)
	}
	first, second := l.Try[0], l.Try[1]
	if first.Backend != gone.String() || first.Outcome != "connect-failure" || first.Sent ||
		!first.Retry || first.Why != WhyWaitedForDNS || first.DNSWait != DNSWaitNewAddress || first.DNSWaitMillis <= 0 {
		t.Errorf("first try %+v, want refused, retried, why %q, dns_wait %q", first, WhyWaitedForDNS, DNSWaitNewAddress)
	}
	if second.Backend != good.addr.String() || second.Status != 200 {
		t.Errorf("second try %+v, want 200 from %s", second, good.addr)
	}
	if good.count.Load() != 1 {
		t.Errorf("the new address executed %d requests, want 1", good.count.Load())
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out, _ := io.ReadAll(rec.Body)
	if want := `sluice_l7_dns_waits_total{result="new-address",service="web-http"} 1`; !strings.Contains(string(out), want) {
		t.Errorf("scrape lacks %s:\n%s", want, grepLines(string(out), "sluice_l7_"))
	}
}

// The wait is no retry: a service without retries (one attempt) and a POST
// (not in retry.methods) wait too, since the refused connect sent nothing;
// the body reaches the new address once.
func TestDNSWaitNoRetriesAndPOST(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	good := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(b))
		mu.Unlock()
		w.WriteHeader(201)
	})
	gone := refusedAddr(t)
	p := newFakeDNSPool(t, 1, gone)
	p.answer = []netip.AddrPort{good.addr}
	h := start(t, p, func(o *Options) {
		o.Service.Retry = &retry.Config{Attempts: 1, On: retry.DefaultOn(), Methods: []string{"GET"}, BufferBytes: 64 << 10}
	})
	resp, _ := h.do(t, "POST", "/orders", []byte("one order"), nil)
	if resp.StatusCode != 201 {
		t.Fatalf("status %d, want 201 from the new address (log %+v)", resp.StatusCode, h.access.last(t))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bodies) != 1 || bodies[0] != "one order" {
		t.Errorf("the new address got %q, want the body once", bodies)
	}
}

// The name did not move: the lookup brings the same address, the request
// goes on as it would have without the wait (its retries refused too) and
// fails with 502 well within its deadline. Later requests find the lookup
// rate-limited and do not wait at all.
func TestDNSWaitSameAnswer(t *testing.T) {
	gone := refusedAddr(t)
	p := newFakeDNSPool(t, 1, gone)
	h := start(t, p, nil)
	began := time.Now()
	resp, _ := h.do(t, "GET", "/", nil, nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", resp.StatusCode)
	}
	if took := time.Since(began); took > testService().Timeouts.Total {
		t.Errorf("took %s, longer than the total deadline", took)
	}
	l := h.access.last(t)
	if len(l.Try) != 3 {
		t.Fatalf("tries %+v, want attempts=3 on the same address", l.Try)
	}
	if tr := l.Try[0]; tr.DNSWait != DNSWaitNoNewAddress || !strings.HasPrefix(tr.Why, WhyWaitedForDNS+" (no-new-address); ") || !tr.Retry {
		t.Errorf("first try %+v, want the wait recorded and a normal retry", tr)
	}
	for _, tr := range l.Try[1:] {
		if tr.DNSWait != "" {
			t.Errorf("try %+v waited again", tr)
		}
	}
	// The next request: no lookup can start (rate limit), no wait.
	resp, _ = h.do(t, "GET", "/", nil, nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("second request: status %d, want 502", resp.StatusCode)
	}
	for _, tr := range h.access.last(t).Try {
		if tr.DNSWait != "" {
			t.Errorf("second request waited: %+v", tr)
		}
	}
}

// The lookup does not come back: the wait ends at the connect timeout and
// the request fails as without it, no later than its deadline.
func TestDNSWaitDeadline(t *testing.T) {
	gone := refusedAddr(t)
	p := newFakeDNSPool(t, 1, gone)
	p.hold = true
	const connect = 50 * time.Millisecond
	h := start(t, p, func(o *Options) {
		o.Service.Timeouts.Connect = connect
		o.Service.Timeouts.Total = 2 * time.Second
	})
	resp, _ := h.do(t, "GET", "/", nil, nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", resp.StatusCode)
	}
	tr := h.access.last(t).Try[0]
	if tr.DNSWait != DNSWaitDeadline || tr.DNSWaitMillis < float64(connect.Milliseconds()) {
		t.Errorf("first try %+v, want a wait of the connect timeout ended by the deadline", tr)
	}
}

// Another address still works: no wait, the retry goes there.
func TestDNSWaitNotWhileAnotherAddressIsLeft(t *testing.T) {
	good := newBackend(t, status(200))
	gone := refusedAddr(t)
	p := newFakeDNSPool(t, 1, gone, good.addr)
	h := start(t, p, func(o *Options) { o.Selector = preferSelector{gone} })
	resp, _ := h.do(t, "GET", "/", nil, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.asked != 0 {
		t.Errorf("asked for a lookup %d times while another address was left", p.asked)
	}
}

// A static pool (no DNSWaiter) fails as before.
func TestDNSWaitStaticPool(t *testing.T) {
	gone := refusedAddr(t)
	h := start(t, newPool(t, nil, gone), nil)
	resp, _ := h.do(t, "GET", "/", nil, nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", resp.StatusCode)
	}
	for _, tr := range h.access.last(t).Try {
		if tr.DNSWait != "" {
			t.Errorf("try %+v waited for DNS in a static pool", tr)
		}
	}
}

// doneObserver hands every finished request's tries to a channel.
type doneObserver struct {
	NopObserver
	done chan []accesslog.Try
}

func (o doneObserver) Request(rec *accesslog.Record) {
	o.done <- append([]accesslog.Try(nil), rec.Tries...)
}

// The client goes away while its request waits for DNS: the wait ends at
// once (not at the connect timeout) and the request is logged as 499.
func TestDNSWaitClientGone(t *testing.T) {
	gone := refusedAddr(t)
	p := newFakeDNSPool(t, 1, gone)
	p.hold = true
	obs := doneObserver{done: make(chan []accesslog.Try, 1)}
	h := start(t, p, func(o *Options) {
		o.Observer = obs
		o.Service.Timeouts.Connect = time.Minute
		o.Service.Timeouts.Total = time.Minute
	})
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", h.url+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		resp, err := h.client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-p.started // the request is waiting for the lookup
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("the request succeeded")
	}
	tries := <-obs.done
	if len(tries) != 1 || tries[0].DNSWait != DNSWaitClientGone || tries[0].Outcome != "client-closed" {
		t.Fatalf("tries %+v, want one ended by the client while waiting", tries)
	}
}

// A request's DNS waits are its own, also when a kept-alive connection's
// next request reuses its state (h1Conn.req): three requests on one
// connection each find the pool's only address refusing and the name
// moved, and each waits for the answer (maxDNSWaits is two per request).
func TestDNSWaitEveryRequestOfAConnection(t *testing.T) {
	const n = maxDNSWaits + 1
	var gone, good [n]netip.AddrPort
	for i := range n {
		gone[i], good[i] = refusedAddr(t), newBackend(t, status(200)).addr
	}
	p := newFakeDNSPool(t, n, gone[0])
	h := start(t, p, nil)
	c, br := rawConn(t, h)
	for i := range n {
		if i > 0 { // the name moved again: only a refusing address is left
			p.SetSource(time.Now(), pool.SourceStatic, []pool.Desired{{Addr: gone[i], Weight: 1, Info: "A " + gone[i].String()}})
		}
		p.mu.Lock()
		p.answer = []netip.AddrPort{good[i]}
		p.mu.Unlock()
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if resp, _ := readResp(t, br, http.MethodGet); resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d, want 200 from the new address", i, resp.StatusCode)
		}
		// The line is written after the response.
		waitFor(t, "the request's access log line", func() bool { return len(h.access.lines(t)) > i })
		lines := h.access.lines(t)
		if len(lines) != i+1 {
			t.Fatalf("request %d: %d access log lines", i, len(lines))
		}
		l := lines[i]
		if len(l.Try) != 2 || l.Try[0].Backend != gone[i].String() || l.Try[0].DNSWait != DNSWaitNewAddress ||
			l.Try[1].Backend != good[i].String() {
			t.Fatalf("request %d: tries %+v, want %s refused, a wait, then %s", i, l.Try, gone[i], good[i])
		}
	}
}
