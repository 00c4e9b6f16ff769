package e2e

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/sluicelb/sluice/internal/h2raw"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The L7 stage in front of hostile clients (issue 9): deadlines both ways,
// limits, strict translation. Raw clients are sockets this test process
// opens inside the lab's client namespace (dialFrom), so a test can send
// exactly the bytes it wants and stop reading when it wants.

// dialFrom opens a TCP connection to addr from inside lab host h: a
// goroutine locked to its OS thread enters h's network namespace, dials,
// and goes back to the namespace it came from before unlocking (if it
// cannot, the thread stays locked and exits with the goroutine). The
// socket stays in h's namespace and is used from any goroutine.
func (l *Lab) dialFrom(h, addr string) net.Conn {
	l.t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		f, err := os.Open("/run/netns/" + l.NS(h))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("setns %s: %w", h, err)}
			return
		}
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	if r.err != nil {
		l.t.Fatalf("dial %s from %s: %v", addr, h, r.err)
	}
	l.t.Cleanup(func() { r.c.Close() })
	return r.c
}

// httpAddr is the L7 service's host:port.
var httpAddr = httpVIP + ":80"

// TestL7ClientDeadlines: deadlines bind the client side too. A client that
// requests a large response and never reads it frees the backend
// connection at timeouts.total (before, the backend stayed blocked until
// the client left); a client that sends its header slowly is closed at
// client.header_timeout while normal requests go on unaffected.
func TestL7ClientDeadlines(t *testing.T) {
	parallel(t)
	const total, headerTimeout = 2 * time.Second, time.Second
	lab, agent := startL7(t, agentConfig{
		Ejection:  noEjection,
		Timeouts:  "{connect: 1s, read: 2s, total: 2s}",
		Backends:  []string{"be1"},
		HTTPExtra: "    client: {header_timeout: 1s}\n",
	})

	t.Run("a client that never reads frees the backend at total", func(t *testing.T) {
		rid := newRID("stall")
		c := lab.dialFrom("client", httpAddr)
		fmt.Fprintf(c, "GET /big?mb=256&rid=%s HTTP/1.1\r\nHost: web\r\n\r\n", rid)
		t0 := time.Now()
		var end struct {
			Result string
			MS     float64
		}
		waitFor(t, total+5*time.Second, "the backend's /big write to end", func() error {
			e, ok := lab.stats("be1").BigEnded[rid]
			if !ok {
				return fmt.Errorf("still writing after %s", time.Since(t0))
			}
			end.Result, end.MS = e.Result, e.MS
			return nil
		})
		d := time.Duration(end.MS * float64(time.Millisecond))
		t.Logf("backend write ended (%s) %s after the request; the client never read", end.Result, d)
		if end.Result != "write-error" || d > total+1500*time.Millisecond {
			t.Errorf("backend write ended %q after %s, want a write error at ~%s (timeouts.total)", end.Result, d, total)
		}
		al := agent.accessFor(t, rid)
		if al.Status != 499 {
			t.Errorf("access log status %d, want 499 (client cut at the deadline): %+v", al.Status, al)
		}
	})

	t.Run("slow header closed at header_timeout, normal traffic unaffected", func(t *testing.T) {
		c := lab.dialFrom("client", httpAddr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: web\r\n")
		t0 := time.Now()
		closed := make(chan time.Duration, 1)
		go func() {
			// One header byte every 200ms: the whole header never comes.
			br := bufio.NewReader(c)
			go func() {
				for i := 0; i < 50; i++ {
					if _, err := io.WriteString(c, "X"); err != nil {
						return
					}
					time.Sleep(200 * time.Millisecond)
				}
			}()
			_, _ = br.ReadByte() // EOF or a 408, then EOF
			_, _ = io.Copy(io.Discard, br)
			closed <- time.Since(t0)
		}()
		// Normal requests in the meantime.
		var wg sync.WaitGroup
		var mu sync.Mutex
		var bad []string
		for i := 0; i < 4; i++ {
			wg.Go(func() {
				r := lab.curl("GET", httpURL)
				if r.Code != 200 {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("%d (curl exit %d)", r.Code, r.Exit))
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(bad) > 0 {
			t.Errorf("normal requests during a slow-header client: %v", bad)
		}
		select {
		case d := <-closed:
			t.Logf("slow-header client closed after %s", d)
			if d < headerTimeout-100*time.Millisecond || d > headerTimeout+time.Second {
				t.Errorf("slow-header client closed after %s, want ~%s (client.header_timeout)", d, headerTimeout)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("slow-header client still open after 10s")
		}
	})
}

// readResponse reads one response from c within d.
func readResponse(t *testing.T, c net.Conn, br *bufio.Reader, d time.Duration) (*http.Response, string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, strings.TrimSpace(string(b))
}

// TestL7Limits: the client-side limits answer with the documented status
// and never reach a backend: too many header fields 431, a body past
// max_body_bytes 413 (declared or chunked), requests past max_requests a
// fast 503 with Retry-After, connections past max_connections closed.
func TestL7Limits(t *testing.T) {
	parallel(t)
	lab, _ := startL7(t, agentConfig{
		Ejection:  noEjection,
		Timeouts:  "{connect: 1s, read: 5s, total: 8s}",
		HTTPExtra: "    client: {max_requests: 2, max_body_bytes: 1000, max_header_count: 20, max_connections: 6}\n",
	})
	before := lab.totalExecuted()

	t.Run("header fields past max_header_count: 431", func(t *testing.T) {
		args := []string{}
		for i := 0; i < 25; i++ {
			args = append(args, "-H", fmt.Sprintf("X-H%d: %d", i, i))
		}
		if r := lab.curl("GET", httpURL+"?rid="+newRID("hdr"), args...); r.Code != 431 {
			t.Errorf("25 header fields: %d, want 431", r.Code)
		}
	})
	t.Run("body past max_body_bytes: 413", func(t *testing.T) {
		big := strings.Repeat("x", 2000)
		if r := lab.curl("POST", httpURL+"?rid="+newRID("body"), "--data-binary", big); r.Code != 413 {
			t.Errorf("2000-byte body: %d, want 413", r.Code)
		}
		if r := lab.curl("POST", httpURL+"?rid="+newRID("chunked"), "-H", "Transfer-Encoding: chunked", "--data-binary", big); r.Code != 413 {
			t.Errorf("2000-byte chunked body: %d, want 413", r.Code)
		}
	})
	if n := lab.totalExecuted() - before; n != 0 {
		t.Errorf("the backends executed %d refused requests", n)
	}

	t.Run("requests past max_requests: fast 503 with Retry-After", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := 0; i < 2; i++ {
			wg.Go(func() { lab.curl("GET", httpURL+"slow?ms=3000&rid="+newRID("hold")) })
		}
		time.Sleep(time.Second) // both in flight
		r := lab.curl("GET", httpURL+"?rid="+newRID("over"))
		if r.Code != 503 || !strings.Contains(r.Body, "Retry-After") || r.Elapsed > time.Second {
			t.Errorf("third request in flight: %d after %s, want 503 with Retry-After at once:\n%s", r.Code, r.Elapsed, r.Body)
		}
		wg.Wait()
		if r := lab.curl("GET", httpURL); r.Code != 200 {
			t.Errorf("after the slow ones ended: %d", r.Code)
		}
	})

	t.Run("connections past max_connections: closed", func(t *testing.T) {
		for i := 0; i < 6; i++ {
			lab.dialFrom("client", httpAddr) // held open, idle
		}
		time.Sleep(300 * time.Millisecond)
		c := lab.dialFrom("client", httpAddr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Errorf("7th connection: read %d bytes, %v; want it closed", n, err)
		}
	})
	_, scrape := lab.scrape()
	for _, limit := range []string{"header_count", "body", "requests", "connections"} {
		if !strings.Contains(scrape, `sluice_l7_refused_total{limit="`+limit+`",service="web-http"}`) {
			t.Errorf("metrics lack sluice_l7_refused_total{limit=%q}", limit)
		}
	}
}

// rawSeen is how many of backend be's recent connections carried b, before
// any parsing (the test backend records what it reads).
func (l *Lab) rawSeen(be, b string) int {
	l.t.Helper()
	out, err := l.Run(be, 5*time.Second, "curl", "-sf", "--max-time", "2", "http://127.0.0.1:80/control/raw?hex="+hex.EncodeToString([]byte(b)))
	if err != nil {
		l.t.Fatalf("raw log of %s: %v", be, err)
	}
	var r struct {
		Connections int `json:"connections"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		l.t.Fatalf("raw log of %s: %v: %s", be, err, out)
	}
	return r.Connections
}

// TestL7StrictTranslation: injected pseudo-headers (HTTP/2) and header
// values never reach a backend, checked on the bytes the backends read;
// an Upgrade: h2c is refused (the request goes on as plain HTTP/1.1 and
// the connection stays HTTP); an h2c preface is refused where h2c is off.
func TestL7StrictTranslation(t *testing.T) {
	parallel(t)
	lab, agent := startL7(t, agentConfig{
		Ejection:  noEjection,
		Backends:  []string{"be1"},
		HTTPExtra: "    h2c: true\n",
	})
	marker := newRID("inject")
	base := func(method, path, authority string) []string {
		return []string{":method", method, ":scheme", "http", ":path", path, ":authority", authority}
	}
	cases := []struct {
		name   string
		fields []string
	}{
		{"request line in :path", base("GET", "/admin?x=1 HTTP/1.1\tfoo /"+marker+" x", "web")},
		{"request line in :method", base("GET /"+marker+" HTTP/1.1\tX", "/", "web")},
		{"space in :authority", base("GET", "/", "a "+marker+"/c")},
		{"DEL in a value", append(base("GET", "/", "web"), "x-a", marker+"\x7f")},
	}
	c := h2raw.New(t, lab.dialFrom("client", httpAddr))
	for i, tc := range cases {
		stream := uint32(2*i + 1)
		c.Headers(stream, true, tc.fields...)
		ev := c.Response(stream)
		t.Logf("%s: %s", tc.name, ev)
		if ev.Status == "200" {
			t.Errorf("%s: answered 200", tc.name)
		}
		if ev.EOF || ev.GoAway {
			c = h2raw.New(t, lab.dialFrom("client", httpAddr))
		}
	}
	if n := lab.rawSeen("be1", marker); n != 0 {
		t.Errorf("the injected bytes reached the backend on %d connections", n)
	}

	t.Run("Upgrade h2c refused, the connection stays HTTP", func(t *testing.T) {
		smuggled := newRID("smuggled")
		conn := lab.dialFrom("client", httpAddr)
		fmt.Fprintf(conn, "GET /?rid=%s HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"+
			"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\nGPOST /%s HTTP/1.1\r\nHost: web\r\n\r\n", marker, smuggled)
		br := bufio.NewReader(conn)
		for i := 0; i < 2; i++ {
			resp, _ := readResponse(t, conn, br, 5*time.Second)
			if resp.StatusCode == 101 || resp.ProtoMajor != 1 {
				t.Fatalf("response %d: %s %d, want HTTP/1.1, no switch", i, resp.Proto, resp.StatusCode)
			}
		}
		if n := lab.rawSeen("be1", "Upgrade: h2c"); n != 0 {
			t.Errorf("Upgrade: h2c reached the backend on %d connections", n)
		}
		// The bytes after the first request were a request of their own,
		// seen (and logged) by sluice: not tunnelled.
		found := false
		for _, al := range agent.accessLog() {
			if al.Method == "GPOST" && strings.Contains(al.URI, smuggled) {
				found = true
			}
		}
		if !found {
			waitFor(t, 5*time.Second, "the second request in the access log", func() error {
				for _, al := range agent.accessLog() {
					if al.Method == "GPOST" && strings.Contains(al.URI, smuggled) {
						return nil
					}
				}
				return fmt.Errorf("not logged")
			})
		}
	})
}

// TestL7ForwardingHeaders: forwarding headers a client sends do not reach
// the backend as if sluice had set them (the client is no trusted proxy):
// X-Real-IP, X-Forwarded-Proto and X-Forwarded-Host are replaced,
// Forwarded replaced by ours, X-Forwarded-For appended to. Checked on the
// bytes the backend read.
func TestL7ForwardingHeaders(t *testing.T) {
	parallel(t)
	lab, _ := startL7(t, agentConfig{Ejection: noEjection, Backends: []string{"be1"}})
	m := newRID("spoof")
	r := lab.curl("GET", httpURL+"?rid="+m,
		"-H", "X-Real-IP: 10.9.9.9",
		"-H", "X-Forwarded-Proto: https-"+m,
		"-H", "X-Forwarded-Host: admin-"+m,
		"-H", "Forwarded: for=10.9.9.9;by="+m,
		"-H", "X-Forwarded-For: 10.9.9.9",
		// What a CGI-style backend would read as X-Forwarded-For and
		// X-Real-IP (client.underscore_headers: drop, the default).
		"-H", "X_Forwarded_For: under-"+m,
		"-H", "X_Real_IP: under-"+m)
	if r.Code != 200 {
		t.Fatalf("request: %d", r.Code)
	}
	for _, spoofed := range []string{"X-Real-Ip: 10.9.9.9", "X-Real-IP: 10.9.9.9", "https-" + m, "admin-" + m, "by=" + m, "under-" + m} {
		if n := lab.rawSeen("be1", spoofed); n != 0 {
			t.Errorf("the client's %q reached the backend", spoofed)
		}
	}
	for _, ours := range []string{"X-Forwarded-For: 10.9.9.9, 198.18.", "X-Real-IP: 198.18.", "X-Forwarded-Proto: http\r\n", "Forwarded: for=198.18.0.2;proto=http;host="} {
		if n := lab.rawSeen("be1", ours); n == 0 {
			t.Errorf("the backend never got %q", ours)
		}
	}
}

// TestL7AccessLogBlocked: an access log nobody reads (a FIFO whose reader
// never reads) does not stall requests: lines beyond the writer's queue
// are dropped and counted.
func TestL7AccessLogBlocked(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	lab.AddLocalVIP(httpVIP)
	fifo := filepath.Join(lab.dir, "access.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// A reader that never reads: the agent's writes block once the pipe
	// buffer is full.
	r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	lab.StartAgent(agentConfig{HTTP: true, Ejection: noEjection, HTTPExtra: "    access_log: " + fifo + "\n"})
	waitFor(t, 10*time.Second, "the L7 listener", func() error {
		_, err := lab.Run("client", 3*time.Second, "curl", "-sf", "--max-time", "2", "-o", "/dev/null", httpURL)
		return err
	})
	rep := lab.Load("--url", httpURL, "--mode", "keepalive", "--conns", "8", "--count", "12000", "--duration", "60s", "--timeout", "2s")
	t.Logf("%d requests, %d ok, %d failures, latency %v", rep.Requests, rep.OK, rep.Failures, rep.LatencyMS)
	if rep.Failures != 0 || rep.OK < 12000 {
		t.Errorf("%d of %d requests failed with the access log blocked", rep.Failures, rep.Requests)
	}
	if p99 := rep.LatencyMS["p99"]; p99 > 500 {
		t.Errorf("p99 latency %.0fms with the access log blocked: requests waited for it", p99)
	}
	values, _ := lab.scrape()
	if n := values[`sluice_l7_refused_total{limit="access_log",service="web-http"}`]; n == 0 {
		t.Error("no dropped access log line counted (sluice_l7_refused_total{limit=\"access_log\"})")
	}
}

// TestL7RapidReset: an HTTP/2 client sending thousands of HEADERS, each
// followed at once by RST_STREAM, on one h2c connection costs a bounded
// number of backend connections (1000-2500 for 20000 before), and the
// next normal request succeeds.
func TestL7RapidReset(t *testing.T) {
	lab, _ := startL7(t, agentConfig{Ejection: noEjection, Backends: []string{"be1"}, HTTPExtra: "    h2c: true\n"})
	before := lab.stats("be1").Accepted
	c := h2raw.New(t, lab.dialFrom("client", httpAddr))
	const n = 10000
	for i := 0; i < n; i++ {
		stream := uint32(2*i + 1)
		c.Headers(stream, true, ":method", "GET", ":scheme", "http", ":path", "/slow?ms=5", ":authority", "web")
		c.RST(stream, 0x8) // CANCEL
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if ev := c.Next(); ev.EOF || ev.GoAway {
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	time.Sleep(time.Second) // requests still in flight end
	dials := lab.stats("be1").Accepted - before
	t.Logf("%d HEADERS+RST_STREAM: the backend accepted %d connections", n, dials)
	// At most the streams a connection may have in flight (100) plus the
	// idle pool kept per address (64), twice.
	if dials > 2*(100+64) {
		t.Errorf("%d backend connections for %d reset streams, want a bounded number", dials, n)
	}
	c2 := h2raw.New(t, lab.dialFrom("client", httpAddr))
	c2.Headers(1, true, ":method", "GET", ":scheme", "http", ":path", "/", ":authority", "web")
	if ev := c2.Response(1); ev.Status != "200" {
		t.Errorf("normal request after the resets: %s", ev)
	}
}

// TestL7ResponseHeaderLimits: a backend's response header past the
// default upstream.max_header_count (100 fields) or max_header_bytes (64
// KiB) gets the client a 502 through the real binary, the request runs
// once (not retried elsewhere), and the backend is not ejected for it,
// though a client chose the headers (the test backend reflects
// ?echo=NAME as X-Echo-NAME). Just under the count limit it passes.
func TestL7ResponseHeaderLimits(t *testing.T) {
	parallel(t)
	lab, agent := startL7(t, agentConfig{
		Timeouts:  "{connect: 1s, read: 5s, total: 8s}",
		HTTPExtra: "    client: {max_header_bytes: 262144}\n", // room for the request reflected below
	})
	// The test backend's answer to / has 6 fields of its own (X-Backend,
	// X-Client-Addr, X-Seen-Host, Date, Content-Type, Content-Length).
	echo := func(n int) string {
		var q strings.Builder
		for i := range n {
			fmt.Fprintf(&q, "echo=E%d&", i)
		}
		return q.String()
	}
	big := "X-Big: " + strings.Repeat("b", 70000)
	cases := []struct {
		name, query string
		args        []string
		refused     string
	}{
		{"100 fields", echo(94), nil, ""},
		{"101 fields", echo(95), nil, "upstream.max_header_count (100)"},
		{"over 64 KiB", "echo=X-Big&", []string{"-H", big}, "upstream.max_header_bytes (65536)"},
	}
	for _, c := range cases {
		for i := range 4 { // past the pool's ejection threshold (2 failures)
			rid := newRID("resphdr")
			r := lab.curl("GET", httpURL+"?"+c.query+"rid="+rid, c.args...)
			al := agent.accessFor(t, rid)
			_, runs := lab.executions(rid)
			if c.refused == "" {
				if r.Code != 200 {
					t.Errorf("%s: %d, want 200", c.name, r.Code)
				}
				continue
			}
			if r.Code != 502 || !strings.Contains(al.Error, c.refused) || al.Tries != 1 || runs != 1 {
				t.Errorf("%s (%d): %d, access log %q after %d tries, executed %d times; want a 502 naming %s, one try, one run",
					c.name, i, r.Code, al.Error, al.Tries, runs, c.refused)
			}
		}
	}
	for _, be := range []string{"be1", "be2", "be3"} {
		if st, err := agent.BackendState(backendAddr[be]); err != nil || st != "active" {
			t.Errorf("%s after refused responses: %q, %v; want active", be, st, err)
		}
	}
	if _, scrape := lab.scrape(); !strings.Contains(scrape, `sluice_l7_refused_total{limit="upstream_header",service="web-http"} 8`) {
		t.Errorf("metrics lack sluice_l7_refused_total{limit=\"upstream_header\"} 8")
	}
}

// longEjection ejects an address after two failures for long enough that
// a test sees it still ejected at its end (four requests over three
// backends give one of them two).
const longEjection = "{failures: 2, window: 60s, base_time: 60s, max_time: 120s, max_ejected_percent: 50}"

// A backend that answers before the end of an upload and stops reading it
// (the test backend's /status/413 reads no body; Go's server then closes
// the connection) has its answer passed on: the client gets the 413, not
// a 502 of sluice's own, and no backend is counted as failing however
// many such uploads a client sends.
func TestL7EarlyResponse(t *testing.T) {
	parallel(t)
	lab, agent := startL7(t, agentConfig{Timeouts: "{connect: 1s, read: 5s, total: 8s}", Ejection: longEjection})
	file := filepath.Join(t.TempDir(), "upload")
	if err := os.WriteFile(file, make([]byte, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range 4 { // one backend at least gets two
		rid := newRID("early")
		r := lab.curl("POST", httpURL+"status/413?rid="+rid, "--data-binary", "@"+file)
		al := agent.accessFor(t, rid)
		if r.Code != 413 || r.Backend == "" || al.Tries != 1 || al.Error != "" || len(al.Try) != 1 ||
			al.Try[0].Status != 413 || !al.Try[0].Early || al.Try[0].Outcome != "ok" {
			t.Errorf("upload %d: %d from %q, access log %+v; want the backend's 413, one try, marked early", i, r.Code, r.Backend, al)
		}
	}
	for _, be := range []string{"be1", "be2", "be3"} {
		if st, err := agent.BackendState(backendAddr[be]); err != nil || st != "active" {
			t.Errorf("%s after early answers: %q, %v; want active", be, st, err)
		}
	}
}

// A backend that refuses an upload early and then neither reads nor closes
// (its kernel buffers fill, sluice's writes wait) has its answer passed on
// within about a second (upstream.AnswerProbe), not at the send or total
// timeout, and is not counted as failing.
func TestL7EarlyResponseWithoutClose(t *testing.T) {
	parallel(t)
	lab, agent := startL7(t, agentConfig{Timeouts: "{connect: 1s, send: 10s, read: 5s, total: 12s}", Ejection: longEjection})
	uploadsAnsweredEarly(t, lab, agent, httpURL)
	for _, be := range []string{"be1", "be2", "be3"} {
		if st, err := agent.BackendState(backendAddr[be]); err != nil || st != "active" {
			t.Errorf("%s after early answers: %q, %v; want active", be, st, err)
		}
	}
}

// uploadsAnsweredEarly posts 32 MiB twice to url's early-hold (the
// backend's 413 at once, then neither reading nor closing for 20s): each
// must get the 413 within a few seconds (timeouts.send is 10s), one try,
// marked early.
func uploadsAnsweredEarly(t *testing.T, lab *Lab, agent *Agent, url string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "upload")
	if err := os.WriteFile(file, make([]byte, 32<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		rid := newRID("hold")
		t0 := time.Now()
		r := lab.curl("POST", url+"early-hold?ms=20000&rid="+rid, "--data-binary", "@"+file)
		took := time.Since(t0)
		al := agent.accessFor(t, rid)
		if r.Code != 413 || al.Tries != 1 || al.Error != "" || len(al.Try) != 1 || !al.Try[0].Early || al.Try[0].Outcome != "ok" {
			t.Errorf("upload %d to %s: %d from %q, access log %+v; want the backend's 413, one try, marked early", i, url, r.Code, r.Backend, al)
		}
		if took > 4*time.Second {
			t.Errorf("upload %d to %s: answered after %v, want within a few seconds", i, url, took)
		}
	}
}

// TestL7EarlyResponseWithoutCloseTLS: the same over TLS to the backend
// (upstream.tls): the backend's 413 is passed on within a few seconds, not
// at timeouts.send — sluice's TLS layer never writes to the socket itself
// during an upload, so no TLS write times out (crypto/tls would then
// refuse every later write), and what the backend sent is read through
// TLS (a session ticket is not mistaken for an answer). Twice: on a new
// backend connection and on the one the warm-up left.
func TestL7EarlyResponseWithoutCloseTLS(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	cert, key := writeTestCert(t, dir, "backend.lab")
	pool := `  - name: tlsweb
    ejection: {failures: 1, window: 60s, base_time: 60s, max_time: 120s, max_ejected_percent: 100}
    backends:
      - address: 198.18.2.11:8443
`
	svc := tlsService(cert, "    timeouts: {connect: 1s, send: 10s, read: 5s, total: 12s}\n")
	lab, agent := startL7(t, agentConfig{ExtraPools: pool, ExtraServices: svc})
	startTLSBackend(t, lab, "be1", cert, key)
	url := fmt.Sprintf("http://%s:81/", httpVIP)
	if r := lab.curl("GET", url); r.Code != 200 {
		t.Fatalf("through the TLS upstream: %d, want 200", r.Code)
	}
	uploadsAnsweredEarly(t, lab, agent, url)
	st, err := agent.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Pools {
		for _, b := range p.Backends {
			if p.Name == "tlsweb" && b.State != "active" {
				t.Errorf("the TLS backend %s after early answers: %q; want active", b.Address, b.State)
			}
		}
	}
}

// A client that stalls its upload past a backend's own body timeout gets
// a 502 when the backend gives up on it, but the backend is not counted
// as failing: slow uploads cannot get backends ejected (the test
// backend's /upload drops a request whose body stalls for 500 ms). An
// upload at the client's pace goes through.
func TestL7ClientStallSparesBackends(t *testing.T) {
	parallel(t)
	lab, agent := startL7(t, agentConfig{Timeouts: "{connect: 1s, read: 5s, total: 8s}", Ejection: longEjection})
	const n = 2 << 20
	upload := func(rid string, stall time.Duration) (int, string) {
		c := lab.dialFrom("client", httpAddr)
		defer c.Close()
		fmt.Fprintf(c, "POST /upload?rid=%s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n", rid, httpVIP, n)
		go func() {
			c.Write(make([]byte, 128<<10))
			time.Sleep(stall)
			c.Write(make([]byte, n-128<<10))
		}()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("upload %s: %v", rid, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	if code, body := upload(newRID("flow"), 0); code != 200 || body != fmt.Sprint(n) {
		t.Fatalf("upload at the client's pace: %d %q, want 200 %d", code, body, n)
	}
	for i := range 4 { // one backend at least gets two
		rid := newRID("stall")
		code, _ := upload(rid, 1500*time.Millisecond)
		al := agent.accessFor(t, rid)
		if code != 502 || len(al.Try) != 1 || al.Try[0].Outcome != "reset" || !strings.Contains(al.Error, "request body had stalled") {
			t.Errorf("stalled upload %d: %d, access log %+v; want a 502 naming the client's stall", i, code, al)
		}
	}
	for _, be := range []string{"be1", "be2", "be3"} {
		if st, err := agent.BackendState(backendAddr[be]); err != nil || st != "active" {
			t.Errorf("%s after stalled uploads: %q, %v; want active", be, st, err)
		}
	}
}

// client.max_requests_per_ip and max_connections_per_ip: one client
// address cannot hold a listener's requests or connections: past its
// share, a fast 429 with Retry-After and a connection closed at once.
func TestL7PerIPLimits(t *testing.T) {
	parallel(t)
	lab, _ := startL7(t, agentConfig{
		Ejection: noEjection,
		Timeouts: "{connect: 1s, read: 5s, total: 8s}",
		HTTPExtra: "    client: {max_requests: 100, max_requests_per_ip: 2, " +
			"max_connections: 100, max_connections_per_ip: 4}\n",
	})
	t.Run("requests", func(t *testing.T) {
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() { lab.curl("GET", httpURL+"slow?ms=3000&rid="+newRID("hold")) })
		}
		time.Sleep(time.Second) // both in flight
		r := lab.curl("GET", httpURL+"?rid="+newRID("over"))
		if r.Code != 429 || !strings.Contains(r.Body, "Retry-After") || !strings.Contains(r.Body, "max_requests_per_ip") || r.Elapsed > time.Second {
			t.Errorf("third request in flight from one address: %d after %s, want 429 with Retry-After at once:\n%s", r.Code, r.Elapsed, r.Body)
		}
		wg.Wait()
		if r := lab.curl("GET", httpURL); r.Code != 200 {
			t.Errorf("after the slow ones ended: %d", r.Code)
		}
	})
	refusedConns := func() float64 {
		m, _ := lab.scrape()
		return m[`sluice_l7_refused_total{limit="connections_per_ip",service="web-http"}`]
	}
	t.Run("connections", func(t *testing.T) {
		// Four idle connections held open, all admitted: the connections
		// of the subtest before may count for a moment more (their
		// close not yet seen by a busy agent), and a connection refused
		// then is closed at once — such a set is closed and tried again.
		var held []net.Conn
		for try := 1; held == nil; try++ {
			var cs []net.Conn
			for range 4 {
				cs = append(cs, lab.dialFrom("client", httpAddr))
			}
			time.Sleep(300 * time.Millisecond)
			admitted := true
			for _, c := range cs {
				c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
					admitted = false // closed by the agent
				}
				c.SetReadDeadline(time.Time{})
			}
			if admitted {
				held = cs
				break
			}
			for _, c := range cs {
				c.Close()
			}
			if try == 10 {
				t.Fatal("four connections from one address never all admitted")
			}
			time.Sleep(300 * time.Millisecond)
		}
		before := refusedConns()
		c := lab.dialFrom("client", httpAddr)
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Errorf("5th connection from one address: read %d bytes, %v; want it closed", n, err)
		}
		if d := refusedConns() - before; d != 1 {
			t.Errorf("sluice_l7_refused_total{limit=\"connections_per_ip\"} went up by %v at the 5th connection, want 1", d)
		}
		for _, h := range held {
			h.Close()
		}
		waitFor(t, 5*time.Second, "a connection's place given back", func() error {
			if r := lab.curl("GET", httpURL); r.Code != 200 {
				return fmt.Errorf("status %d", r.Code)
			}
			return nil
		})
	})
	if _, scrape := lab.scrape(); !strings.Contains(scrape, `sluice_l7_refused_total{limit="requests_per_ip",service="web-http"} 1`) {
		t.Error(`metrics lack sluice_l7_refused_total{limit="requests_per_ip"} 1`)
	}
}

// client.max_requests_per_ip behind a trusted proxy (here: the lab's
// client host, in trusted_proxies): requests count against the client
// address the proxy names in X-Forwarded-For, not against the proxy (all
// would share one place) nor not at all (one client could take every
// request slot through a CDN or a cloud load balancer).
func TestL7PerIPLimitsBehindProxy(t *testing.T) {
	parallel(t)
	lab, _ := startL7(t, agentConfig{
		Ejection: noEjection,
		Timeouts: "{connect: 1s, read: 5s, total: 8s}",
		HTTPExtra: "    trusted_proxies: [198.18.0.0/24]\n" +
			"    client: {max_requests: 100, max_requests_per_ip: 2}\n",
	})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			lab.curl("GET", httpURL+"slow?ms=3000&rid="+newRID("hold"), "-H", "X-Forwarded-For: 198.19.0.7")
		})
	}
	time.Sleep(time.Second) // both in flight
	r := lab.curl("GET", httpURL+"?rid="+newRID("over"), "-H", "X-Forwarded-For: 198.19.0.9, 198.19.0.7")
	if r.Code != 429 || !strings.Contains(r.Body, "max_requests_per_ip") {
		t.Errorf("third request in flight of 198.19.0.7: %d, want 429:\n%s", r.Code, r.Body)
	}
	for _, xff := range []string{"198.19.0.8", ""} {
		extra := []string{}
		if xff != "" {
			extra = []string{"-H", "X-Forwarded-For: " + xff}
		}
		if r := lab.curl("GET", httpURL+"?rid="+newRID("other"), extra...); r.Code != 200 {
			t.Errorf("request of another client (X-Forwarded-For %q) meanwhile: %d, want 200", xff, r.Code)
		}
	}
	wg.Wait()
	if r := lab.curl("GET", httpURL, "-H", "X-Forwarded-For: 198.19.0.7"); r.Code != 200 {
		t.Errorf("after the slow ones ended: %d", r.Code)
	}
}

// client.body_timeout: a client that stalls its upload gets 408 after it,
// long before timeouts.total, and the backend connection the upload was
// streaming to is given up; a client at its pace is not affected.
func TestL7BodyTimeout(t *testing.T) {
	parallel(t)
	lab, agent := startL7(t, agentConfig{
		Timeouts:  "{connect: 1s, read: 5s, total: 20s}",
		HTTPExtra: "    client: {body_timeout: 1s}\n",
	})
	rid := newRID("bodyto")
	c := lab.dialFrom("client", httpAddr)
	defer c.Close()
	t0 := time.Now()
	// The backend's own body timeout (10 s) is longer than sluice's.
	fmt.Fprintf(c, "POST /upload?timeout_ms=10000&rid=%s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n", rid, httpVIP, 1<<20)
	c.Write(make([]byte, 200<<10)) // past retry.buffer_bytes: streamed to a backend, then nothing
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("stalled upload: %v", err)
	}
	resp.Body.Close()
	took := time.Since(t0)
	al := agent.accessFor(t, rid)
	if resp.StatusCode != 408 || took > 5*time.Second || !strings.Contains(al.Error, "client.body_timeout") {
		t.Errorf("stalled upload: %d after %s, access log error %q; want 408 after about body_timeout (1s)", resp.StatusCode, took, al.Error)
	}
	if _, runs := lab.executions(rid); runs != 1 {
		t.Errorf("the upload reached %d backends, want 1 (streamed, then given up)", runs)
	}
	// An upload at the client's pace.
	file := filepath.Join(t.TempDir(), "upload")
	if err := os.WriteFile(file, make([]byte, 300<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	r := lab.curl("POST", httpURL+"upload?rid="+newRID("paced"), "--data-binary", "@"+file)
	if r.Code != 200 || !strings.Contains(r.Body, strconv.Itoa(300<<10)) {
		t.Errorf("upload at the client's pace: %d %q", r.Code, r.Body)
	}
}

// A host out of local ports (every ephemeral port towards a backend in
// use: here the lb's port range cut to two ports) fails its dials with
// EADDRNOTAVAIL. That is sluice's shortage, not the backends' failure: no
// backend is ejected (with the lab's ejection after 2 failures, half the
// pool would go), the refusals are counted as host_resources, and the
// health checks (none here) would skip such checks alike. A try that
// cannot dial waits for a connection in use instead: most requests are
// served.
func TestL7HostOutOfPortsEjectsNothing(t *testing.T) {
	lab, agent := startL7After(t, agentConfig{}, func(lab *Lab) {
		lab.MustRun("lb", 5*time.Second, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40001")
	})
	// 24 connections at once need up to 8 backend connections per
	// address; the host can make 2.
	rep := lab.Load("--url", httpURL, "--mode", "keepalive", "--conns", "24", "--count", "2400", "--duration", "30s", "--timeout", "3s")
	t.Logf("%d requests, %d ok, %d failures", rep.Requests, rep.OK, rep.Failures)
	// A try that cannot dial waits for a connection in use to come back
	// (until the connect timeout) instead of failing at once: most
	// requests are served over the few connections the host can make
	// (82-97 % measured; 35-41 % when failing at once).
	if rep.OK < rep.Requests*6/10 {
		t.Errorf("%d of %d requests served with the host out of ports, want at least 60%%", rep.OK, rep.Requests)
	}
	for _, be := range []string{"be1", "be2", "be3"} {
		if st, err := agent.BackendState(backendAddr[be]); err != nil || st != "active" {
			t.Errorf("%s is %q (%v) after the host ran out of ports: the backends did nothing wrong", be, st, err)
		}
	}
	values, _ := lab.scrape()
	if n := values[`sluice_l7_refused_total{limit="host_resources",service="web-http"}`]; n == 0 {
		t.Error("no dial refused for lack of local ports counted (or the test did not exhaust them)")
	}
}

// A pool whose backend is, through another hop, the load balancer itself
// (here a TCP relay in be1 that passes every connection back to the
// service's own listener, as a cloud load balancer in front of sluice
// would when the site's public name is used as a backend's) would send a
// request round until every request slot ran out. Each pass adds a Via
// entry; the sixth arrival is answered 508 Loop Detected, which goes back
// through the passes before it: the client gets the 508 naming the
// pool, after five relayed connections, and the service goes on serving.
func TestL7ForwardingLoop(t *testing.T) {
	parallel(t)
	pool := `  - name: loop
    backends:
      - address: 198.18.2.11:8090
`
	svc := fmt.Sprintf(`  - name: web-loop
    listen: %s:8080
    protocol: http
    pool: loop
`, httpVIP)
	lab, agent := startL7(t, agentConfig{ExtraPools: pool, ExtraServices: svc})
	relay := lab.Start("be1-relay", "be1", env.backend, "--listen", ":8091", "--name", "relay",
		"--relay", fmt.Sprintf(":8090=%s:8080", httpVIP))
	waitFor(t, 5*time.Second, "the relay", func() error {
		_, err := lab.Run("be1", 2*time.Second, "curl", "-sf", "-o", "/dev/null", "--max-time", "1", "http://127.0.0.1:8091/healthz")
		return err
	})
	rid := newRID("loop")
	r := lab.curl("GET", fmt.Sprintf("http://%s:8080/?rid=%s", httpVIP, rid))
	if r.Code != 508 || !strings.Contains(r.Body, "forwarding loop") || !strings.Contains(r.Body, "pool loop") {
		t.Errorf("through the loop: %d %q, want 508 naming the forwarding loop and pool loop", r.Code, r.Body)
	}
	agent.accessFor(t, rid)
	var passes []AccessLine
	waitFor(t, 5*time.Second, "six access log lines", func() error {
		passes = passes[:0]
		for _, al := range agent.accessLog() {
			if strings.Contains(al.URI, "rid="+rid) {
				passes = append(passes, al)
			}
		}
		if len(passes) < 6 {
			return fmt.Errorf("%d lines", len(passes))
		}
		return nil
	})
	for i, al := range passes {
		if al.Service != "web-loop" || al.Status != 508 || al.Tries > 1 {
			t.Errorf("pass %d: service %s, status %d after %d tries (%s); want web-loop, 508, not retried", i, al.Service, al.Status, al.Tries, al.Error)
		}
	}
	if len(passes) != 6 {
		t.Errorf("%d passes through the service, want 6 (five forwarded, the sixth answered 508)", len(passes))
	}
	if n := strings.Count(relay.Log(), "relayed connection"); n != 5 {
		t.Errorf("the relay passed on %d connections, want 5", n)
	}
	values, _ := lab.scrape()
	if n := values[`sluice_l7_refused_total{limit="loop",service="web-loop"}`]; n != 1 {
		t.Errorf(`sluice_l7_refused_total{limit="loop",service="web-loop"} = %v, want 1`, n)
	}
	if r := lab.curl("GET", httpURL); r.Code != 200 {
		t.Errorf("web-http after the loop: %d, want 200", r.Code)
	}
}
