package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
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

	"github.com/sluicelb/sluice/internal/testcert"
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
	return rawServer(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		if resp != "" {
			io.WriteString(c, resp)
		}
		// Let some of the body arrive unread: close then resets.
		time.Sleep(20 * time.Millisecond)
	})
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
				var code int
				var got string
				if c.h2c {
					resp, b := h.do(t, "POST", "/upload", body, nil)
					code, got = resp.StatusCode, b
				} else {
					code, got, _ = postRaw(t, h, len(body), writeAll(body))
				}
				if code != http.StatusRequestEntityTooLarge || got != "too large\n" {
					t.Fatalf("request %d: %d %q, want the backend's 413", i, code, got)
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

// postRaw posts a body of n bytes to h over a connection of its own:
// write writes the body (on its own goroutine) while the response is
// read, as curl does (Go's client may report the failed write of a
// body's rest instead of the response that came first). It returns the
// response's status and body and how long they took.
func postRaw(t *testing.T, h *harness, n int, write func(c net.Conn)) (int, string, time.Duration) {
	t.Helper()
	c, br := rawConn(t, h)
	t0 := time.Now()
	io.WriteString(c, "POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: "+strconv.Itoa(n)+"\r\n\r\n")
	go write(c)
	resp, body := readResp(t, br, "POST")
	return resp.StatusCode, body, time.Since(t0)
}

// writeAll is a postRaw writer of body.
func writeAll(body []byte) func(net.Conn) { return func(c net.Conn) { c.Write(body) } }

// A backend that resets the connection during the body without a
// response is still a reset (502), found without waiting.
func TestResetDuringBodyNoResponse(t *testing.T) {
	addr := rstBackend(t, "")
	h := start(t, newPool(t, nil, addr), nil)
	t0 := time.Now()
	code, got, _ := postRaw(t, h, 8<<20, writeAll(bytes.Repeat([]byte("a"), 8<<20)))
	if code != http.StatusBadGateway || !strings.Contains(got, "reset") {
		t.Fatalf("%d %q, want a 502 reset", code, got)
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
			const n = 4 << 20
			code, _, _ := postRaw(t, h, n, func(c net.Conn) {
				c.Write(make([]byte, 128<<10))
				if stall {
					time.Sleep(1500 * time.Millisecond)
				}
				c.Write(make([]byte, n-128<<10))
			})
			l := h.access.last(t)
			if code != http.StatusBadGateway || len(l.Try) != 1 || l.Try[0].Outcome != "reset" {
				t.Fatalf("%d, access log %+v; want a 502 after one reset", code, l)
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
	c, br := rawConn(t, h)
	go func() {
		io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
		io.WriteString(c, "GET /next HTTP/1.1\r\nHost: test\r\n\r\n")
	}()
	if resp, _ := readResp(t, br, "POST"); resp.StatusCode != http.StatusRequestEntityTooLarge {
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

// holdBackend reads a request's header, writes pre (nothing when ""),
// and then reads nothing more for hold, keeping the connection open (a
// backend that answered an upload early without closing, or is slow to
// read one); then it reads the body to its end and writes rest.
func holdBackend(t *testing.T, pre string, hold time.Duration, rest string) netip.AddrPort {
	t.Helper()
	return rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.WriteString(c, pre)
		time.Sleep(hold)
		io.Copy(io.Discard, r.Body)
		io.WriteString(c, rest)
	})
}

// A backend that answers an upload early and stops reading it while
// keeping the connection open (the kernel's buffers fill, sluice's writes
// wait) has its answer passed on within about upstream.AnswerProbe, not
// at the send timeout; a backend that only sent "100 Continue", or a
// success, and is slow to read is waited for (the whole body is sent).
func TestEarlyResponseWithoutClose(t *testing.T) {
	body := bytes.Repeat([]byte("a"), 16<<20)
	cases := []struct {
		name       string
		pre, rest  string
		hold       time.Duration
		wantCode   int
		wantBody   string
		early      bool
		maxElapsed time.Duration
	}{
		{"answered", "HTTP/1.1 413 Content Too Large\r\nContent-Length: 10\r\n\r\ntoo large\n", "",
			6 * time.Second, http.StatusRequestEntityTooLarge, "too large\n", true, 2500 * time.Millisecond},
		{"continue-then-slow", "HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
			2500 * time.Millisecond, http.StatusOK, "ok\n", false, 4 * time.Second},
		// A success sent before the body is read (a backend answering as
		// it reads) is not a refusal: the whole body is sent.
		{"success-then-slow", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", "",
			2500 * time.Millisecond, http.StatusOK, "ok\n", false, 4 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr := holdBackend(t, c.pre, c.hold, c.rest)
			p := newPool(t, nil, addr)
			h := start(t, p, func(o *Options) {
				o.Ejection.Failures = 1
				o.Service.Timeouts.Send = 10 * time.Second
			})
			code, got, took := postRaw(t, h, len(body), writeAll(body))
			if code != c.wantCode || got != c.wantBody {
				t.Fatalf("%d %q, want %d %q", code, got, c.wantCode, c.wantBody)
			}
			if took > c.maxElapsed {
				t.Errorf("took %v, want at most %v", took, c.maxElapsed)
			}
			l := h.access.last(t)
			if l.Tries != 1 || l.Error != "" || l.Try[0].Outcome != "ok" || l.Try[0].Early != c.early {
				t.Errorf("access log %+v, want one ok try, early %v", l, c.early)
			}
			if b, _ := p.Backend(addr); b.State != pool.Active {
				t.Errorf("backend %v, want active", b.State)
			}
		})
	}
}

// Over TLS to the backend too, a backend that answers an upload early
// and stops reading it without closing has its answer passed on within
// about upstream.AnswerProbe (the TLS layer's writes never wait on the
// socket: a write that timed out would break the connection), and one
// that is slow to read is waited for. As the first request of a client
// connection (served by a goroutine) and as the second of a kept-alive
// one (on an event loop with SLUICE_TEST_EVENTLOOPS=1, the backend
// connection dialled by the loop).
func TestEarlyResponseWithoutCloseTLS(t *testing.T) {
	der, key := testcert.New(t, testcert.Options{Names: []string{"backend.test"}})
	cfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	body := bytes.Repeat([]byte("a"), 16<<20)
	cases := []struct {
		name      string
		pre, rest string
		wantCode  int
		early     bool
	}{
		{"answered", "HTTP/1.1 413 Content Too Large\r\nContent-Length: 10\r\n\r\ntoo large\n", "", http.StatusRequestEntityTooLarge, true},
		{"slow", "", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", http.StatusOK, false},
	}
	for _, c := range cases {
		for _, kept := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/kept-alive=%v", c.name, kept), func(t *testing.T) {
				// GET: 200 at once; POST: pre, then nothing read for
				// 2.5s, then the body to its end and rest.
				addr := rawServer(t, func(nc net.Conn) {
					tc := tls.Server(nc, cfg)
					br := bufio.NewReader(tc)
					for {
						r, err := http.ReadRequest(br)
						if err != nil {
							return
						}
						if r.Method == http.MethodGet {
							io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwarm\n")
							continue
						}
						io.WriteString(tc, c.pre)
						time.Sleep(2500 * time.Millisecond)
						io.Copy(io.Discard, r.Body)
						io.WriteString(tc, c.rest)
						return
					}
				})
				p := newPool(t, nil, addr)
				h := start(t, p, func(o *Options) {
					o.Ejection.Failures = 1
					o.Service.Timeouts.Send = 10 * time.Second
					o.Upstream.TLS = &tls.Config{InsecureSkipVerify: true}
				})
				conn, br := rawConn(t, h)
				if kept {
					io.WriteString(conn, "GET /warm HTTP/1.1\r\nHost: test\r\n\r\n")
					if resp, got := readResp(t, br, "GET"); resp.StatusCode != 200 || got != "warm\n" {
						t.Fatalf("warm-up: %d %q", resp.StatusCode, got)
					}
				}
				t0 := time.Now()
				io.WriteString(conn, "POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n")
				go conn.Write(body)
				resp, _ := readResp(t, br, "POST")
				took := time.Since(t0)
				if resp.StatusCode != c.wantCode {
					t.Fatalf("%d, want %d", resp.StatusCode, c.wantCode)
				}
				if c.early && took > 2200*time.Millisecond {
					t.Errorf("the early answer took %v, want about a second (upstream.AnswerProbe)", took)
				}
				l := h.access.last(t)
				if l.Tries != 1 || l.Error != "" || l.Try[0].Outcome != "ok" || l.Try[0].Early != c.early {
					t.Errorf("access log %+v, want one ok try, early %v", l, c.early)
				}
				if b, _ := p.Backend(addr); b.State != pool.Active {
					t.Errorf("backend %v, want active", b.State)
				}
			})
		}
	}
}
