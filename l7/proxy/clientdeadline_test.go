package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// bigBackend answers every request with an endless body and reports on
// ended when its write fails (sluice closed the connection).
func bigBackend(t *testing.T) (*backend, chan time.Time) {
	ended := make(chan time.Time, 4)
	chunk := make([]byte, 64<<10)
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1073741824")
		for {
			if _, err := w.Write(chunk); err != nil {
				ended <- time.Now()
				return
			}
		}
	})
	return be, ended
}

// A client that requests a large response and never reads it frees the
// backend connection at timeouts.total (the response write to the client
// is bounded by the same deadline), over HTTP/1.1 and HTTP/2.
func TestStalledClientFreesBackend(t *testing.T) {
	const total = time.Second
	for _, h2 := range []bool{false, true} {
		name := "h1"
		if h2 {
			name = "h2c"
		}
		t.Run(name, func(t *testing.T) {
			be, ended := bigBackend(t)
			p := newPool(t, nil, be.addr)
			h := start(t, p, func(o *Options) { o.Service.Timeouts.Total = total; o.H2C = true })
			t0 := time.Now()
			if !h2 {
				c, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
			} else {
				var protos http.Protocols
				protos.SetUnencryptedHTTP2(true)
				tr := &http.Transport{Protocols: &protos}
				defer tr.CloseIdleConnections()
				resp, err := (&http.Client{Transport: tr}).Get(h.url + "/big")
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close() // never read
			}
			select {
			case at := <-ended:
				if d := at.Sub(t0); d > total+1500*time.Millisecond {
					t.Errorf("backend connection freed after %s, want ~%s (timeouts.total)", d, total)
				}
				t.Logf("backend write failed %s after the request", at.Sub(t0))
			case <-time.After(10 * time.Second):
				t.Fatal("the backend is still sending 10s after the request: the stalled client holds it")
			}
			waitFor(t, "access log", func() bool { return len(h.access.lines(t)) == 1 })
			if l := h.access.last(t); l.Status != statusClientClosed {
				t.Errorf("access log status %d, want %d", l.Status, statusClientClosed)
			}
		})
	}
}

// The write deadline of one request does not cut the next one on the same
// keep-alive connection, even after the first's deadline has passed.
func TestWriteDeadlineIsPerRequest(t *testing.T) {
	be := newBackend(t, status(200))
	p := newPool(t, nil, be.addr)
	h := start(t, p, func(o *Options) { o.Service.Timeouts.Total = 200 * time.Millisecond })
	c, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := range 2 {
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
		time.Sleep(400 * time.Millisecond) // past the first request's deadline
	}
}

// echoUpgradeBackend answers an Upgrade: echo with 101 and echoes bytes
// (echoUpgrade).
func echoUpgradeBackend(t *testing.T) *backend { return newBackend(t, echoUpgrade) }

// upgradeClient upgrades a new client connection to h to the echo
// protocol (echoUpgrade behind it), the Upgrade token in a list as
// browsers send it; the connection is closed at the test's end.
func upgradeClient(t *testing.T, h *harness) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "echo" {
		t.Fatalf("upgrade: got %d %v", resp.StatusCode, resp.Header)
	}
	return c, br
}

// A tunnel nothing passes through is closed at the tunnel idle timeout;
// one with traffic in either direction stays open.
func TestTunnelIdleTimeout(t *testing.T) {
	// The idle timeout is far above the busy period's gaps (100ms), so a
	// loaded machine stretching a gap does not close a busy tunnel.
	const idle = time.Second
	be := echoUpgradeBackend(t)
	p := newPool(t, nil, be.addr)
	h := start(t, p, func(o *Options) { o.Client.TunnelIdleTimeout = idle; o.Service.Upgrades = []string{"echo"} })

	// Busy: a message every 100ms for 1.5s, well past the idle timeout.
	c, br := upgradeClient(t, h)
	for range 15 {
		io.WriteString(c, "ping")
		got := make([]byte, 4)
		if _, err := io.ReadFull(br, got); err != nil {
			t.Fatalf("busy tunnel closed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Idle: closed by sluice.
	t0 := time.Now()
	_, err := br.ReadByte()
	if err == nil || time.Since(t0) > idle+time.Second {
		t.Errorf("idle tunnel: read returned %v after %s, want EOF at ~%s", err, time.Since(t0), idle)
	}
	waitFor(t, "access log", func() bool { return len(h.access.lines(t)) == 1 })
	if l := h.access.last(t); !strings.Contains(l.Error, "idle") {
		t.Errorf("access log error %q, want the idle timeout", l.Error)
	}
}

// After the shutdown grace period, what is left (a client that never
// reads its response) is closed, and the backend connection with it.
func TestShutdownForceClosesAfterGrace(t *testing.T) {
	be, ended := bigBackend(t)
	p := newPool(t, nil, be.addr)
	h := start(t, p, func(o *Options) { o.Service.Timeouts.Total = time.Minute })
	c, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "request in flight", func() bool { return h.srv.UpstreamStats(be.addr).Busy == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if err := h.srv.Shutdown(ctx); err == nil {
		t.Error("Shutdown with a request left at the end of the grace period returned nil")
	}
	select {
	case <-ended:
		if d := time.Since(t0); d > 2*time.Second {
			t.Errorf("backend freed %s after shutdown began, want ~300ms", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("backend still busy 5s after a shutdown with a 300ms grace period")
	}
}
