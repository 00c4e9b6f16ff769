package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/pool"
)

// tooLarge answers 413 without reading the request body, as a backend
// with a body limit does (Go's server then closes the connection, and the
// upload's next writes fail).
func tooLarge(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Connection", "close")
	w.WriteHeader(http.StatusRequestEntityTooLarge)
	io.WriteString(w, "too large\n")
}

// rstBackend reads a request's header, then answers with resp (none when
// "") and closes at once with the body unread: the kernel resets the
// connection, and the proxy's writes of the body fail.
func rstBackend(t *testing.T, resp string) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				if resp != "" {
					io.WriteString(c, resp)
				}
				// Let some of the body arrive unread: close then resets.
				time.Sleep(20 * time.Millisecond)
			}()
		}
	}()
	return netip.MustParseAddrPort(l.Addr().String())
}

// A backend that answers before the end of a request's body and stops
// reading it (a 413 before an upload) gets its answer to the client: not
// a 502 of sluice's own, and not a failure counted against the backend
// (a client could otherwise get healthy backends ejected by sending
// bodies they refuse).
func TestEarlyResponse(t *testing.T) {
	body := bytes.Repeat([]byte("a"), 8<<20)
	ej := func(o *Options) { o.Ejection.Failures = 1 }
	cases := []struct {
		name    string
		backend func(t *testing.T) netip.AddrPort
		h2c     bool
	}{
		{"http1", func(t *testing.T) netip.AddrPort { return newBackend(t, tooLarge).addr }, false},
		{"http1-reset", func(t *testing.T) netip.AddrPort {
			return rstBackend(t, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 10\r\n\r\ntoo large\n")
		}, false},
		{"h2c", func(t *testing.T) netip.AddrPort {
			return newH2CBackend(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusRequestEntityTooLarge)
				io.WriteString(w, "too large\n")
			}).addr
		}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr := c.backend(t)
			spare := newBackend(t, status(200)).addr
			p := newPool(t, nil, addr, spare)
			var h *harness
			if c.h2c {
				h = startH2Upstream(t, ej, addr)
			} else {
				h = start(t, p, func(o *Options) { ej(o); o.Selector = preferSelector{addr} })
			}
			for i := range 3 {
				var resp *http.Response
				var got string
				if c.h2c {
					resp, got = h.do(t, "POST", "/upload", body, nil)
				} else {
					resp, got = uploadRaw(t, h, body)
				}
				if resp.StatusCode != http.StatusRequestEntityTooLarge || got != "too large\n" {
					t.Fatalf("request %d: %d %q, want the backend's 413", i, resp.StatusCode, got)
				}
				l := h.access.last(t)
				if l.Tries != 1 || l.Error != "" || l.Try[0].Outcome != "ok" || l.Try[0].Status != 413 {
					t.Fatalf("request %d: access log %+v", i, l)
				}
				if !c.h2c && !l.Try[0].Early {
					t.Errorf("request %d: try not marked early: %+v", i, l.Try[0])
				}
			}
			if !c.h2c {
				if b, _ := p.Backend(addr); b.State != pool.Active {
					t.Errorf("backend %v: an early answer is not a failure", b.State)
				}
			}
		})
	}
}

// uploadRaw posts body over a connection of its own and reads the
// response while the body is still being written, as curl does: Go's
// client may report the failed write of the body's rest instead of the
// response that came first.
func uploadRaw(t *testing.T, h *harness, body []byte) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n")
		c.Write(body)
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("upload: reading body: %v", err)
	}
	return resp, string(got)
}

// A backend that resets the connection during the body without a
// response is still a reset (502), found without waiting.
func TestResetDuringBodyNoResponse(t *testing.T) {
	addr := rstBackend(t, "")
	h := start(t, newPool(t, nil, addr), nil)
	t0 := time.Now()
	resp, got := uploadRaw(t, h, bytes.Repeat([]byte("a"), 8<<20))
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(got, "reset") {
		t.Fatalf("%d %q, want a 502 reset", resp.StatusCode, got)
	}
	if l := h.access.last(t); l.Try[0].Early || l.Try[0].Phase != "send" {
		t.Errorf("try %+v, want a send-phase reset", l.Try[0])
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
}

// A backend that gives up on a request whose body the client stalled (its
// own body timeout) and resets the connection is not counted as failing:
// a client could otherwise get every backend ejected with slow uploads.
// The same reset with a client sending at its pace still counts.
func TestClientStallNotCountedAgainstBackend(t *testing.T) {
	for _, stall := range []bool{true, false} {
		t.Run(map[bool]string{true: "stalled", false: "flowing"}[stall], func(t *testing.T) {
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				// Reads at most 256 KiB, within 500 ms (its body timeout),
				// then drops the connection without an answer.
				io.Copy(io.Discard, io.LimitReader(r.Body, 256<<10))
				panic(http.ErrAbortHandler)
			}))
			srv.Config.ReadTimeout = 500 * time.Millisecond
			srv.Start()
			t.Cleanup(srv.Close)
			addr := netip.MustParseAddrPort(srv.Listener.Addr().String())
			p := newPool(t, nil, addr, newBackend(t, status(200)).addr)
			h := start(t, p, func(o *Options) {
				o.Ejection.Failures = 1
				o.Selector = preferSelector{addr}
			})
			c, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			const n = 4 << 20
			io.WriteString(c, "POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: "+strconv.Itoa(n)+"\r\n\r\n")
			go func() {
				c.Write(make([]byte, 128<<10))
				if stall {
					time.Sleep(1500 * time.Millisecond)
				}
				c.Write(make([]byte, n-128<<10))
			}()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			l := h.access.last(t)
			if resp.StatusCode != http.StatusBadGateway || len(l.Try) != 1 || l.Try[0].Outcome != "reset" {
				t.Fatalf("%d, access log %+v; want a 502 after one reset", resp.StatusCode, l)
			}
			b, _ := p.Backend(addr)
			if stalled := strings.Contains(l.Try[0].Error, "request body had stalled"); stalled != stall || (b.State == pool.Active) != stall {
				t.Errorf("backend %v, try error %q; want it active and the stall named only when the client stalled", b.State, l.Try[0].Error)
			}
		})
	}
}

// The rest of a body a backend answered early is never read as requests:
// the client connection reads it to its end by its framing (or closes)
// before serving the next request.
func TestEarlyResponseBodyNotSmuggled(t *testing.T) {
	var smuggled atomic.Int64
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/smuggled" {
			smuggled.Add(1)
		}
		if r.Method == http.MethodPost {
			tooLarge(w, r)
			return
		}
		io.WriteString(w, "next\n")
	})
	h := start(t, newPool(t, nil, be.addr), nil)
	req := "GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n"
	body := strings.Repeat(req, (1<<20)/len(req))
	c, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
		io.WriteString(c, "GET /next HTTP/1.1\r\nHost: test\r\n\r\n")
	}()
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("upload: %d, want 413", resp.StatusCode)
	}
	// The connection then serves /next, or is closed.
	if resp, err := http.ReadResponse(br, nil); err == nil {
		got, _ := io.ReadAll(resp.Body)
		if string(got) != "next\n" {
			t.Errorf("next response %d %q", resp.StatusCode, got)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if n := smuggled.Load(); n != 0 {
		t.Errorf("%d requests from the body's rest reached the backend", n)
	}
}
