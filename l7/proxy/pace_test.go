package proxy

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// client.body_timeout and body_min_rate: a client that stalls its body,
// or trickles it, gets 408 long before timeouts.total, before or during
// the try (a body past retry.buffer_bytes is streamed to the backend, and
// the backend's connection is freed); a slow backend does not count
// against the client.
func TestBodyPace(t *testing.T) {
	readAll := func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		io.WriteString(w, strconv.FormatInt(n, 10))
	}
	cases := []struct {
		name    string
		rate    int64
		n       int
		write   func(c net.Conn)
		backend http.HandlerFunc
		want    int
	}{
		{"stall in the buffered part", -1, 32 << 10, func(c net.Conn) { c.Write(make([]byte, 1000)) }, readAll, 408},
		{"stall in the streamed part", -1, 1 << 20, func(c net.Conn) { c.Write(make([]byte, 200<<10)) }, readAll, 408},
		{"trickle under the rate", 20000, 1 << 20, func(c net.Conn) {
			for range 200 { // 1000 bytes every 100 ms: never idle 300 ms, 10 kB/s
				if _, err := c.Write(make([]byte, 1000)); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}, readAll, 408},
		{"slow backend", 1 << 20, 512 << 10, func(c net.Conn) { c.Write(make([]byte, 512<<10)) },
			func(w http.ResponseWriter, r *http.Request) {
				// 4 KiB every 10 ms: 1.3 s for the body, past body_timeout
				// and at a fifth of the rate, with the client done at once.
				buf := make([]byte, 4<<10)
				var n int64
				for {
					m, err := io.ReadFull(r.Body, buf)
					n += int64(m)
					if err != nil {
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
				io.WriteString(w, strconv.FormatInt(n, 10))
			}, 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			be := newBackend(t, c.backend)
			h := start(t, newPool(t, nil, be.addr), func(o *Options) {
				o.Client.BodyTimeout, o.Client.BodyMinRate = 300*time.Millisecond, c.rate
				o.Service.Timeouts.Total = 8 * time.Second
				o.Service.Timeouts.Send = 8 * time.Second
			})
			status, body, took := postRaw(t, h, c.n, c.write)
			if status != c.want {
				t.Fatalf("%d %q after %s, want %d", status, body, took, c.want)
			}
			if c.want == 408 {
				if took > 3*time.Second {
					t.Errorf("408 after %s: want it within a second or two, long before timeouts.total", took)
				}
				if l := h.access.last(t); !strings.Contains(l.Error, "client.body_timeout") {
					t.Errorf("access log error %q, want it to name client.body_timeout", l.Error)
				}
				waitFor(t, "the backend's connections closed or idle", func() bool {
					be.mu.Lock()
					defer be.mu.Unlock()
					for _, st := range be.states {
						if st == http.StateActive {
							return false
						}
					}
					return true
				})
			} else if body != strconv.Itoa(c.n) {
				t.Errorf("backend read %q bytes, want %d", body, c.n)
			}
		})
	}
}

// Over HTTP/2 (h2c) a stream's stalled body gets 408 the same way (the
// stream's read deadline).
func TestBodyPaceH2(t *testing.T) {
	be := newBackend(t, status(200))
	h := start(t, newPool(t, nil, be.addr), func(o *Options) {
		o.H2C = true
		o.Client.BodyTimeout, o.Client.BodyMinRate = 300*time.Millisecond, -1
		o.Service.Timeouts.Total = 8 * time.Second
	})
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write(make([]byte, 1000)) // then nothing
	req, _ := http.NewRequest("POST", h.url+"/up", pr)
	req.ContentLength = 1 << 20
	t0 := time.Now()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 408 || resp.ProtoMajor != 2 || time.Since(t0) > 3*time.Second {
		t.Errorf("HTTP/%d %d after %s, want a 408 over HTTP/2 within a second or two", resp.ProtoMajor, resp.StatusCode, time.Since(t0))
	}
}
