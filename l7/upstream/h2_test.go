package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// h2cBackend serves HTTP/2 without TLS on loopback; release unblocks the
// requests to /wait.
func h2cBackend(t *testing.T) (netip.AddrPort, chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			http.Error(w, "not h2", 500)
			return
		}
		if r.URL.Path == "/wait" {
			<-release
		}
		io.WriteString(w, "ok")
	})}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return netip.MustParseAddrPort(ln.Addr().String()), release
}

type closeLog struct {
	mu  sync.Mutex
	why []string
	ch  chan string
}

func (l *closeLog) on(_ netip.AddrPort, why string) {
	l.mu.Lock()
	l.why = append(l.why, why)
	l.mu.Unlock()
	l.ch <- why
}

func h2get(t *testing.T, p *H2Pools, addr netip.AddrPort, path string) (*H2Conn, *http.Response) {
	t.Helper()
	c, _, err := p.Get(context.Background(), addr, "", "", time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "http://"+addr.String()+path, nil)
	resp, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	return c, resp
}

func TestH2PoolMultiplexes(t *testing.T) {
	addr, release := h2cBackend(t)
	p := NewH2(H2Options{MaxStreamsPerConn: 2})
	defer p.Close()
	// Two requests at once share one connection; the third needs another.
	var wg sync.WaitGroup
	conns := make([]*H2Conn, 3)
	for i := range 3 {
		c, _, err := p.Get(context.Background(), addr, "", "", time.Now().Add(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		wg.Go(func() {
			req, _ := http.NewRequest("GET", "http://x/wait", nil)
			resp, err := c.RoundTrip(req)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			p.Done(c, err != nil)
		})
	}
	if conns[0] != conns[1] || conns[2] == conns[0] {
		t.Fatalf("streams per connection not bounded at 2: %p %p %p", conns[0], conns[1], conns[2])
	}
	if s := p.Stats(addr); s.Conns != 2 || s.Streams != 3 || s.Dialled != 2 || s.Reused != 1 {
		t.Fatalf("stats %+v", s)
	}
	close(release)
	wg.Wait()
	// Idle now: the next request reuses a connection.
	c, resp := h2get(t, p, addr, "/")
	resp.Body.Close()
	p.Done(c, false)
	if s := p.Stats(addr); s.Dialled != 2 || s.Streams != 0 {
		t.Fatalf("stats after reuse %+v", s)
	}
}

func TestH2PoolRetire(t *testing.T) {
	addr, release := h2cBackend(t)
	cl := &closeLog{ch: make(chan string, 8)}
	p := NewH2(H2Options{MaxStreamsPerConn: 1, OnClose: cl.on})
	defer p.Close()
	idle, resp := h2get(t, p, addr, "/")
	resp.Body.Close()
	busy, _, err := p.Get(context.Background(), addr, "", "", time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if busy == idle {
		t.Fatal("a connection with a stream in use was given a second one (max 1)")
	}
	p.Done(idle, false)
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequest("GET", "http://x/wait", nil)
		resp, err := busy.RoundTrip(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		p.Done(busy, err != nil)
	}()
	// DNS dropped the address: the idle connection closes now, the busy
	// one when its stream ends (not before).
	if n := p.Retire(addr); n != 1 {
		t.Fatalf("Retire closed %d connections now, want 1 (the idle one)", n)
	}
	if why := <-cl.ch; why != CloseDraining {
		t.Fatalf("closed for %q", why)
	}
	select {
	case why := <-cl.ch:
		t.Fatalf("busy connection closed (%s) before its stream ended", why)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-done
	if why := <-cl.ch; why != CloseDraining {
		t.Fatalf("busy connection closed for %q", why)
	}
	// The address back in DNS: a new connection, not an old one.
	c, resp := h2get(t, p, addr, "/")
	resp.Body.Close()
	p.Done(c, false)
	if c == idle || c == busy {
		t.Fatal("a retired connection was reused")
	}
}

// TestH2PoolCut: a retired connection waits for its streams (Retire),
// until the address is removed: Cut closes it with the stream open, the
// stream fails, and the connection counts CloseRemoved. Also for one
// dialled while its address was being retired (retired from the start).
func TestH2PoolCut(t *testing.T) {
	for _, retiredWhileDialling := range []bool{false, true} {
		t.Run(fmt.Sprintf("retired-while-dialling=%v", retiredWhileDialling), func(t *testing.T) {
			testH2PoolCut(t, retiredWhileDialling)
		})
	}
}

func testH2PoolCut(t *testing.T, retiredWhileDialling bool) {
	addr, release := h2cBackend(t)
	defer close(release)
	cl := &closeLog{ch: make(chan string, 8)}
	var p *H2Pools
	opts := H2Options{OnClose: cl.on}
	if retiredWhileDialling {
		opts.Dial = func(ctx context.Context, network, a string) (net.Conn, error) {
			p.Retire(addr)
			var d net.Dialer
			return d.DialContext(ctx, network, a)
		}
	}
	p = NewH2(opts)
	defer p.Close()
	busy, _, err := p.Get(context.Background(), addr, "", "", time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	failed := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://x/wait", nil)
		resp, err := busy.RoundTrip(req)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		p.Done(busy, err != nil)
		failed <- err
	}()
	for p.Stats(addr).Streams == 0 {
		time.Sleep(time.Millisecond)
	}
	if n := p.Retire(addr); n != 0 {
		t.Fatalf("Retire closed %d connections, want 0 (one stream open)", n)
	}
	if n := p.Cut(addr); n != 1 {
		t.Fatalf("Cut closed %d connections, want 1", n)
	}
	if why := <-cl.ch; why != CloseRemoved {
		t.Fatalf("closed for %q, want %q", why, CloseRemoved)
	}
	select {
	case err := <-failed:
		if err == nil {
			t.Fatal("the stream of a cut connection succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stream of a cut connection still waits")
	}
	if !busy.Removed() {
		t.Error("a cut connection says it was not removed")
	}
	select {
	case why := <-cl.ch:
		t.Fatalf("closed a second time (%s)", why)
	case <-time.After(50 * time.Millisecond):
	}
	if s := p.Stats(addr); s.Streams != 0 || s.Conns != 0 {
		t.Errorf("stats after the cut %+v", s)
	}
}

func TestH2PoolLifetime(t *testing.T) {
	addr, _ := h2cBackend(t)
	cl := &closeLog{ch: make(chan string, 8)}
	p := NewH2(H2Options{MaxLifetime: time.Millisecond, OnClose: cl.on})
	defer p.Close()
	c1, resp := h2get(t, p, addr, "/")
	resp.Body.Close()
	p.Done(c1, false)
	time.Sleep(2 * time.Millisecond)
	c2, resp := h2get(t, p, addr, "/")
	resp.Body.Close()
	if c2 == c1 {
		t.Fatal("connection past its lifetime reused")
	}
	if why := <-cl.ch; why != CloseLifetime {
		t.Fatalf("closed for %q", why)
	}
	p.Done(c2, false)
}

func tlsBackend(t *testing.T, h2 bool) (netip.AddrPort, *tls.Config) {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Proto)
	}))
	srv.EnableHTTP2 = h2
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return netip.MustParseAddrPort(srv.Listener.Addr().String()), &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

func TestH2PoolTLS(t *testing.T) {
	addr, cfg := tlsBackend(t, true)
	p := NewH2(H2Options{TLS: cfg})
	defer p.Close()
	// httptest's certificate is for example.com and 127.0.0.1.
	c, _, err := p.Get(context.Background(), addr, "example.com", "", time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Done(c, false)
	req, _ := http.NewRequest("GET", "https://example.com/", nil)
	resp, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "HTTP/2.0" {
		t.Fatalf("backend saw %q", b)
	}
}

func TestH2PoolTLSWithoutALPNh2(t *testing.T) {
	addr, cfg := tlsBackend(t, false)
	p := NewH2(H2Options{TLS: cfg})
	defer p.Close()
	_, _, err := p.Get(context.Background(), addr, "example.com", "", time.Now().Add(5*time.Second))
	var de *DialError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "did not agree to HTTP/2") {
		t.Fatalf("a backend without h2 in ALPN: %v", err)
	}
	if s := p.Stats(addr); s.Conns != 0 || s.Streams != 0 {
		t.Fatalf("stats after a failed dial: %+v", s)
	}
}

// SetTLS changes what the connections dialled after it trust (a CA file
// renewed): a backend whose certificate the first configuration does not
// trust is reached once the new one does, over HTTP/1.1 and HTTP/2; TLS
// is not switched off on running pools.
func TestSetTLS(t *testing.T) {
	addr, trusting := tlsBackend(t, true)
	untrusting := &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12}
	deadline := func() time.Time { return time.Now().Add(5 * time.Second) }

	p := New(Options{TLS: untrusting})
	defer p.Close()
	if _, err := p.Get(context.Background(), addr, "example.com", "", deadline()); err == nil {
		t.Fatal("a backend whose certificate is not trusted was connected to")
	}
	if err := p.SetTLS(trusting); err != nil {
		t.Fatal(err)
	}
	c, err := p.Get(context.Background(), addr, "example.com", "", deadline())
	if err != nil {
		t.Fatalf("after SetTLS: %v", err)
	}
	p.Put(c, CloseError)
	if err := p.SetTLS(nil); err == nil {
		t.Error("SetTLS(nil) switched TLS off on running pools")
	}

	h := NewH2(H2Options{TLS: untrusting})
	defer h.Close()
	if _, _, err := h.Get(context.Background(), addr, "example.com", "", deadline()); err == nil {
		t.Fatal("HTTP/2: a backend whose certificate is not trusted was connected to")
	}
	if err := h.SetTLS(trusting); err != nil {
		t.Fatal(err)
	}
	hc, _, err := h.Get(context.Background(), addr, "example.com", "", deadline())
	if err != nil {
		t.Fatalf("HTTP/2 after SetTLS: %v", err)
	}
	h.Done(hc, false)
	if err := NewH2(H2Options{}).SetTLS(trusting); err == nil {
		t.Error("SetTLS switched TLS on for h2c pools")
	}
}

// TestTLSWatchAnswer: over TLS, a backend that answers an upload early
// (413) and stops reading it without closing the connection is noticed
// within about AnswerProbe, as in plain text, not at the send timeout;
// its answer is left for the exchange to read. The TLS layer's writes
// never time out (a timed-out write breaks crypto/tls's connection).
// A backend that is only slow to read (its TLS 1.3 session tickets
// waiting unread meanwhile) is waited for and answers 200. One that
// neither reads nor answers, closed from another goroutine (the client
// gone) while the records are being sent, ends the upload at once.
func TestTLSWatchAnswer(t *testing.T) {
	const body = 32 << 20
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			// Reads a little, pauses longer than AnswerProbe, then the rest.
			_, _ = io.CopyN(io.Discard, r.Body, 1<<20)
			time.Sleep(AnswerProbe + 500*time.Millisecond)
			n, _ := io.Copy(io.Discard, r.Body)
			fmt.Fprint(w, n+1<<20)
			return
		}
		if r.URL.Path == "/early" {
			w.Header().Set("Content-Length", "0")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			w.(http.Flusher).Flush()
		}
		select { // holds the connection, reading nothing
		case <-release:
		case <-time.After(20 * time.Second):
		}
	}))
	srv.StartTLS()
	defer srv.Close()
	defer close(release)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	addr := netip.MustParseAddrPort(srv.Listener.Addr().String())
	p := New(Options{TLS: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}})
	defer p.Close()
	for _, tc := range []struct {
		path   string
		status int
	}{{"/early", http.StatusRequestEntityTooLarge}, {"/slow", http.StatusOK}, {"/silent", 0}} {
		t.Run(tc.path, func(t *testing.T) {
			c, err := p.Get(context.Background(), addr, "example.com", "", time.Now().Add(5*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			defer p.Put(c, CloseError)
			const send = 8 * time.Second
			c.SetTimeouts(send, 5*time.Second, time.Now().Add(30*time.Second))
			c.WatchAnswer(true)
			if tc.status == 0 {
				// A backend that neither reads nor answers; the client
				// goes away meanwhile: the connection is closed from
				// another goroutine while its records are being sent.
				time.AfterFunc(300*time.Millisecond, func() { c.Close() })
			}
			bw := c.Writer()
			fmt.Fprintf(bw, "POST %s HTTP/1.1\r\nHost: example.com\r\nContent-Length: %d\r\n\r\n", tc.path, body)
			t0 := time.Now()
			chunk := make([]byte, 32<<10)
			for sent := 0; sent < body && err == nil; sent += len(chunk) {
				_, err = bw.Write(chunk)
			}
			if err == nil {
				err = bw.Flush()
			}
			c.WatchAnswer(false)
			took := time.Since(t0)
			switch {
			case tc.status == 0:
				if err == nil || took > 3*time.Second {
					t.Fatalf("upload closed from another goroutine: %v after %v, want an error within a second or so", err, took)
				}
				return
			case tc.status == http.StatusOK && err != nil:
				t.Fatalf("upload to a backend slow to read: %v after %v, want it sent whole", err, took)
			case tc.status != http.StatusOK && (!errors.Is(err, ErrAnswered) || took > send/2):
				t.Fatalf("upload to a backend that answered early: %v after %v; want ErrAnswered within a few seconds (send timeout %v)", err, took, send)
			}
			c.SetTimeouts(time.Second, 5*time.Second, time.Now().Add(10*time.Second))
			resp, err := http.ReadResponse(c.Reader(), nil)
			if err != nil {
				t.Fatalf("the backend's answer: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("the backend's answer: %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
}
