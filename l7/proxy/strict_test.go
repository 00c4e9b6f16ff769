package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/h2raw"
	"github.com/sluicelb/sluice/l7/service"
)

// Pseudo-headers and header values that would inject a request line or
// header upstream are refused (400 or a stream reset) and never reach a
// backend, over HTTP/2 and HTTP/1.1.
func TestStrictTranslationH2(t *testing.T) {
	be := newBackend(t, status(200))
	p := newPool(t, nil, be.addr)
	h := start(t, p, func(o *Options) { o.H2C = true })
	addr := strings.TrimPrefix(h.url, "http://")
	base := func(method, path, authority string) []string {
		return []string{":method", method, ":scheme", "http", ":path", path, ":authority", authority}
	}
	cases := []struct {
		name   string
		fields []string
	}{
		{"space in :path", base("GET", "/admin?x=1 HTTP/1.1\tfoo /public", "web")},
		{"tab in :method", base("GET /admin HTTP/1.1\tX", "/", "web")},
		{"space in :method", base("GET /x", "/", "web")},
		{":path not in origin form", base("GET", "http://evil/x", "web")},
		{"* for GET", base("GET", "*", "web")},
		{"space in :authority", base("GET", "/", "a b/c")},
		{"slash in :authority", base("GET", "/", "a/b")},
		{"bad port in :authority", base("GET", "/", "web:99999")},
		{"non-ASCII in :path", base("GET", "/caf\xc3\xa9", "web")},
		{"fragment in :path", base("GET", "/a#b", "web")},
		{"DEL in a header value", append(base("GET", "/", "web"), "x-a", "b\x7fc")},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := h2raw.Dial(t, addr)
			stream := uint32(2*i + 1)
			c.Headers(stream, true, tc.fields...)
			ev := c.Response(stream)
			if ev.Status == "200" || !(ev.Status == "400" || ev.RST || ev.GoAway || ev.EOF) {
				t.Errorf("got %s, want 400 or a stream error", ev)
			}
		})
	}
	if n := be.count.Load(); n != 0 {
		t.Fatalf("%d invalid requests reached the backend", n)
	}
	// A valid one goes through.
	c := h2raw.Dial(t, addr)
	c.Headers(1, true, base("GET", "/ok?a=b", "web:8080")...)
	if ev := c.Response(1); ev.Status != "200" {
		t.Errorf("valid request: %s", ev)
	}
}

// Over HTTP/1.1: the h2c preface on a listener without h2c is refused,
// never proxied as a request; OPTIONS * is answered by net/http itself.
func TestStrictTranslationH1(t *testing.T) {
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Method+" "+r.RequestURI)
	})
	p := newPool(t, nil, be.addr)
	h := start(t, p, nil)
	addr := strings.TrimPrefix(h.url, "http://")
	send := func(raw string) (*http.Response, string) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		io.WriteString(c, raw)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return nil, err.Error()
		}
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	if resp, body := send("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); resp != nil && resp.StatusCode < 400 {
		t.Errorf("h2c preface without h2c: %d %q, want it refused", resp.StatusCode, body)
	}
	if be.count.Load() != 0 {
		t.Fatal("the h2c preface reached the backend")
	}
	if resp, body := send("OPTIONS * HTTP/1.1\r\nHost: web\r\n\r\n"); resp == nil || resp.StatusCode != 200 {
		t.Errorf("OPTIONS *: %v %q", resp, body)
	}
	if resp, body := send("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"); resp == nil || resp.StatusCode != 400 {
		t.Errorf("Host with a space: %v %q", resp, body)
	}
}

// rawHeadBackend is a TCP backend that records the raw head of every
// request it gets and answers 200, or 101 when told to accept upgrades.
type rawHeadBackend struct {
	addr  string
	heads chan string
}

func newRawHeadBackend(t *testing.T, accept101 bool) *rawHeadBackend {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	b := &rawHeadBackend{addr: l.Addr().String(), heads: make(chan string, 64)}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					var head strings.Builder
					for {
						line, err := br.ReadString('\n')
						if err != nil {
							return
						}
						head.WriteString(line)
						if line == "\r\n" {
							break
						}
					}
					b.heads <- head.String()
					if accept101 && strings.Contains(strings.ToLower(head.String()), "upgrade: websocket") {
						io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
						io.Copy(c, br)
						return
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
			}()
		}
	}()
	return b
}

// An Upgrade the allow-list does not name (h2c, foo) is not passed on and
// never turns the client connection into a tunnel: what follows on the
// connection is parsed and proxied as HTTP, request by request. A
// websocket upgrade the backend declines (200) leaves the connection HTTP
// as well.
func TestUpgradeSmuggling(t *testing.T) {
	rb := newRawHeadBackend(t, false)
	p := newPool(t, nil, mustAddrPort(t, rb.addr))
	h := start(t, p, nil)
	addr := strings.TrimPrefix(h.url, "http://")
	for _, proto := range []string{"h2c", "foo", "websocket"} {
		t.Run(proto, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, "GET /first HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: "+proto+
				"\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"+
				"GPOST /hidden HTTP/1.1\r\nHost: web\r\n\r\n")
			br := bufio.NewReader(c)
			for i := range 2 {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("response %d: %v", i, err)
				}
				io.Copy(io.Discard, resp.Body)
				if resp.StatusCode == http.StatusSwitchingProtocols {
					t.Fatalf("response %d: 101", i)
				}
			}
			first := <-rb.heads
			if proto != "websocket" && strings.Contains(strings.ToLower(first), "upgrade") {
				t.Errorf("an Upgrade: %s not in the allow-list reached the backend:\n%s", proto, first)
			}
			if strings.Contains(first, "GPOST") {
				t.Errorf("smuggled bytes reached the backend in the first request:\n%s", first)
			}
			second := <-rb.heads
			if !strings.HasPrefix(second, "GPOST /hidden HTTP/1.1\r\n") {
				t.Errorf("the second request was not proxied as a request of its own:\n%s", second)
			}
		})
	}
	if n := len(h.access.lines(t)); n != 6 {
		t.Errorf("%d access log lines, want 6: every request seen by sluice", n)
	}
}

func mustAddrPort(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	a, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// client.underscore_headers: a request header field named with an
// underscore (X_Forwarded_For, which a CGI-style backend reads as the
// X-Forwarded-For sluice writes) is dropped by default, refused with 400
// under reject (the backend never sees the request), passed under allow.
func TestUnderscoreHeaders(t *testing.T) {
	for _, c := range []struct {
		mode     string
		status   int
		reaches  bool
		spoofSet bool
	}{
		{"", 200, true, false}, // the default: drop
		{service.UnderscoreDrop, 200, true, false},
		{service.UnderscoreReject, 400, false, false},
		{service.UnderscoreAllow, 200, true, true},
	} {
		t.Run("mode="+c.mode, func(t *testing.T) {
			be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "%q %q", r.Header.Get("X_Forwarded_For"), r.Header.Get("X-Ok"))
			})
			h := start(t, newPool(t, nil, be.addr), func(o *Options) { o.Client.UnderscoreHeaders = c.mode })
			resp, body := h.do(t, http.MethodGet, "/", nil, http.Header{"X_Forwarded_For": {"6.6.6.6"}, "X-Ok": {"1"}})
			if resp.StatusCode != c.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, c.status)
			}
			if got := be.count.Load() == 1; got != c.reaches {
				t.Fatalf("the backend got %d requests", be.count.Load())
			}
			if !c.reaches {
				if l := h.access.last(t); !strings.Contains(strings.ToLower(l.Error), "x_forwarded_for") || !strings.Contains(l.Error, "underscore") {
					t.Errorf("access log error %q, want the field and why", l.Error)
				}
				return
			}
			want := `"" "1"`
			if c.spoofSet {
				want = `"6.6.6.6" "1"`
			}
			if body != want {
				t.Errorf("the backend saw %s, want %s", body, want)
			}
		})
	}
}
