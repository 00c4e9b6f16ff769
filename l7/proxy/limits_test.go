package proxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/l7/service"
)

// refusedObserver counts Refused calls by limit.
type refusedObserver struct {
	NopObserver
	mu sync.Mutex
	n  map[string]int
}

func (o *refusedObserver) Refused(_, limit string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n == nil {
		o.n = map[string]int{}
	}
	o.n[limit]++
}

func (o *refusedObserver) count(limit string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[limit]
}

// blockingBackend holds every request until release is closed.
func blockingBackend(t *testing.T) (*backend, chan struct{}, chan struct{}) {
	release, arrived := make(chan struct{}), make(chan struct{}, 16)
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "ok")
	})
	return be, release, arrived
}

// client.max_requests: past it, a fast 503 with Retry-After, counted.
func TestMaxRequests(t *testing.T) {
	cases := []struct {
		name   string
		set    func(*service.ClientLimits)
		status int
		limit  string
	}{
		{"client.max_requests", func(c *service.ClientLimits) { c.MaxRequests = 1 }, 503, limitRequests},
		// client.max_requests_per_ip: one address's request past it gets
		// a 429 (the client's own share, not the listener's overload).
		{"client.max_requests_per_ip", func(c *service.ClientLimits) { c.MaxRequestsPerIP = 1 }, 429, limitRequestsPerIP},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			be, release, arrived := blockingBackend(t)
			p := newPool(t, nil, be.addr)
			obs := &refusedObserver{}
			h := start(t, p, func(o *Options) { c.set(&o.Client); o.Observer = obs })
			done := make(chan struct{})
			go func() {
				defer close(done)
				if resp, _ := h.do(t, "GET", "/first", nil, nil); resp.StatusCode != 200 {
					t.Errorf("first request: %d", resp.StatusCode)
				}
			}()
			<-arrived
			t0 := time.Now()
			resp, body := h.do(t, "GET", "/second", nil, nil)
			if resp.StatusCode != c.status || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, c.name) {
				t.Errorf("second request: %d, Retry-After %q, %q; want a %d with Retry-After naming %s", resp.StatusCode, resp.Header.Get("Retry-After"), body, c.status, c.name)
			}
			if d := time.Since(t0); d > time.Second {
				t.Errorf("refusal took %s, want it at once", d)
			}
			close(release)
			<-done
			if n := obs.count(c.limit); n != 1 {
				t.Errorf("refused{%s} = %d, want 1", c.limit, n)
			}
			if resp, _ := h.do(t, "GET", "/third", nil, nil); resp.StatusCode != 200 {
				t.Errorf("after the first ended: %d", resp.StatusCode)
			}
		})
	}
}

// client.max_header_count and client.max_body_bytes: 431 and 413, before
// the backend sees anything.
func TestHeaderCountAndBodyLimits(t *testing.T) {
	be := newBackend(t, status(200))
	p := newPool(t, nil, be.addr)
	obs := &refusedObserver{}
	h := start(t, p, func(o *Options) {
		o.Client.MaxHeaderCount = 20
		o.Client.MaxBodyBytes = 1000
		o.Observer = obs
	})
	hdr := http.Header{}
	for i := range 25 {
		hdr.Add("Cookie", "c"+strings.Repeat("x", i)+"=1")
	}
	if resp, _ := h.do(t, "GET", "/", nil, hdr); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("25 header fields: %d, want 431", resp.StatusCode)
	}
	if resp, _ := h.do(t, "POST", "/", bytes.Repeat([]byte("x"), 1001), nil); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("1001-byte body: %d, want 413", resp.StatusCode)
	}
	// Chunked: the length is known only when the body is read.
	req, _ := http.NewRequest("POST", h.url+"/", io.MultiReader(bytes.NewReader(bytes.Repeat([]byte("y"), 5000))))
	req.ContentLength = -1
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked 5000-byte body: %d, want 413", resp.StatusCode)
	}
	if resp, _ := h.do(t, "POST", "/", bytes.Repeat([]byte("x"), 1000), nil); resp.StatusCode != 200 {
		t.Errorf("1000-byte body: %d, want 200", resp.StatusCode)
	}
	if n := be.count.Load(); n != 1 {
		t.Errorf("the backend executed %d requests, want only the one within the limits", n)
	}
	if obs.count(limitHeaderCount) != 1 || obs.count(limitBody) != 2 {
		t.Errorf("refused: %v", obs.n)
	}
}

// holdConns opens n idle connections to addr (closed at the test's end)
// and gives the server time to accept them.
func holdConns(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var held []net.Conn
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		held = append(held, c)
	}
	time.Sleep(100 * time.Millisecond) // accepted
	return held
}

// client.max_connections: a connection past it is closed at once.
func TestMaxConnections(t *testing.T) {
	be := newBackend(t, status(200))
	p := newPool(t, nil, be.addr)
	obs := &refusedObserver{}
	h := start(t, p, func(o *Options) { o.Client.MaxConnections = 2; o.Observer = obs })
	addr := strings.TrimPrefix(h.url, "http://")
	held := holdConns(t, addr, 2)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("third connection: read %d, %v; want it closed", n, err)
	}
	// The close may reach the client before the refusal is counted.
	waitFor(t, "refused{connections} = 1", func() bool { return obs.count(limitConnections) == 1 })
	// One closed: room for a new one.
	held[0].Close()
	waitFor(t, "a connection's place given back", func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		b, _ := io.ReadAll(c)
		return strings.HasPrefix(string(b), "HTTP/1.1 200")
	})
}

// upstream max connections per address: a try that finds its address full
// until the connect timeout gets a 503 and never counts against the
// backend (no ejection).
func TestUpstreamMaxConnsNotABackendFailure(t *testing.T) {
	be, release, arrived := blockingBackend(t)
	p := newPool(t, nil, be.addr)
	obs := &refusedObserver{}
	h := start(t, p, func(o *Options) {
		o.Upstream.MaxConnsPerAddr = 1
		o.Service.Timeouts.Connect = 100 * time.Millisecond
		o.Observer = obs
		ej := testEjection()
		ej.Failures = 1
		o.Ejection = ej
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.do(t, "GET", "/first", nil, nil)
	}()
	<-arrived
	resp, body := h.do(t, "GET", "/second", nil, nil)
	if resp.StatusCode != 503 || !strings.Contains(body, "connection limit") {
		t.Errorf("second request: %d %q, want 503 (address at its connection limit)", resp.StatusCode, body)
	}
	close(release)
	<-done
	if b, _ := p.Backend(be.addr); b.State.String() != "active" {
		t.Errorf("the backend is %s after sluice's own limit refused a try: it must stay active", b.State)
	}
	if obs.count(limitUpstreamConnections) == 0 {
		t.Error("refused{upstream_connections} not counted")
	}
}

// A dial that fails for lack of this host's resources (no local port
// left towards the address, no file descriptor, no memory) is sluice's
// shortage, not the backend's failure: 503 with Retry-After, counted as
// refused{host_resources}, and the backend is never ejected for it (with
// ejection after one failure, every backend would go at once).
func TestLocalDialFailureNotABackendFailure(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EADDRNOTAVAIL, syscall.EMFILE, syscall.ENOBUFS} {
		t.Run(errno.Error(), func(t *testing.T) {
			be := newBackend(t, status(200))
			p := newPool(t, nil, be.addr)
			obs := &refusedObserver{}
			h := start(t, p, func(o *Options) {
				o.Observer = obs
				ej := testEjection()
				ej.Failures = 1
				o.Ejection = ej
				o.Upstream.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
					return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", errno)}
				}
			})
			for range 3 {
				resp, body := h.do(t, "GET", "/", nil, nil)
				if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
					t.Errorf("%d %q, want 503 with Retry-After", resp.StatusCode, body)
				}
			}
			if b, _ := p.Backend(be.addr); b.State.String() != "active" {
				t.Errorf("the backend is %s after the host ran out of %v: it must stay active", b.State, errno)
			}
			if obs.count(limitHostResources) == 0 {
				t.Error("refused{host_resources} not counted")
			}
		})
	}
}
