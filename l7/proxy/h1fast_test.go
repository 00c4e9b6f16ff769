package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sluicelb/sluice/l7/service"
)

// fastReading is what a reader of a response header takes from it: the
// status, the framing, the fields passed on to the client (hop-by-hop ones
// and those Connection names dropped), and the body with how it ended.
type fastReading struct {
	Status  int
	Length  int64
	Close   bool
	Fields  map[string][]string
	Body    string
	BodyErr string
}

// readFast is the fast path's reading of raw; ok false when it declines
// (and then it must have read nothing).
func readFast(t testing.TB, raw []byte, method string) (fastReading, bool) {
	br := bufio.NewReaderSize(bytes.NewReader(raw), 64<<10)
	out := &outRequest{fastOK: true, method: method}
	out.respFor.Method = method
	resp, f := readFastResponse(br, out, 64<<10, 100)
	if resp == nil {
		if n, _ := br.Discard(len(raw)); n != len(raw) {
			t.Fatalf("declined after reading %d bytes", len(raw)-n)
		}
		return fastReading{}, false
	}
	defer releaseFastHead(f)
	fields := map[string][]string{}
	f.fields(func(k, v []byte) { fields[string(k)] = append(fields[string(k)], string(v)) })
	return reading(resp, fields), true
}

// reading is what is read of resp, with the fields passed on, its body
// read to its end.
func reading(resp *http.Response, fields map[string][]string) fastReading {
	r := fastReading{Status: resp.StatusCode, Length: resp.ContentLength, Close: resp.Close, Fields: fields}
	body, err := io.ReadAll(resp.Body)
	r.Body = string(body)
	if err != nil {
		r.BodyErr = err.Error()
	}
	return r
}

// readNetHTTP is net/http's reading of raw, as respond passes it on.
func readNetHTTP(raw []byte, method string) (fastReading, *http.Response, error) {
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), &http.Request{Method: method})
	if err != nil {
		return fastReading{}, nil, err
	}
	removeHopByHop(resp.Header)
	r := reading(resp, map[string][]string(resp.Header))
	return r, resp, nil
}

func TestFastResponse(t *testing.T) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
	for _, tc := range []struct {
		name string
		raw  string
		take bool // the fast path reads it
	}{
		{"plain", ok + "Content-Type: text/plain\r\nDate: Sat, 05 Dec 2026 00:00:00 GMT\r\n\r\nhi", true},
		{"no reason phrase", "HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nhi", true},
		{"empty body", "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", true},
		{"hop-by-hop and named by Connection", ok + "Connection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: 1\r\nProxy-Connection: x\r\nUpgrade: h2c\r\nX-Kept: 2\r\n\r\nhi", true},
		{"every hop-by-hop field", ok + "Connection: x\r\nProxy-Connection: x\r\nKeep-Alive: x\r\nProxy-Authenticate: x\r\nProxy-Authorization: x\r\nTe: x\r\nUpgrade: x\r\nX-Kept: 1\r\n\r\nhi", true},
		{"Connection close", ok + "Connection: close\r\n\r\nhi", true},
		{"Connection Close, other option", ok + "Connection: X-A, Close\r\nX-A: 1\r\n\r\nhi", true},
		{"repeated list fields", ok + "Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nVary: A\r\nVary: B\r\nVia: 1.0 edge\r\n\r\nhi", true},
		{"empty value and spaces", ok + "X-Empty:\r\nX-Pad:   v  \r\nX-Tab:\tv\t\r\n\r\nhi", true},
		{"lower-case names", "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: a/b\r\nx-foo-bar: 1\r\n\r\nhi", true},
		{"obs-text value", ok + "X-Latin: caf\xe9\r\n\r\nhi", true},
		{"short body", ok + "\r\nh", true},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", false},
		{"close-delimited", "HTTP/1.1 200 OK\r\n\r\nhi", false},
		{"CL and TE", ok + "Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", false},
		{"two Content-Lengths", ok + "Content-Length: 2\r\n\r\nhi", false},
		{"two Content-Types", ok + "Content-Type: a/b\r\nContent-Type: c/d\r\n\r\nhi", false},
		{"two Servers", ok + "Server: a\r\nServer: b\r\n\r\nhi", false},
		{"folded line", ok + "X-A: 1\r\n 2\r\n\r\nhi", false},
		{"bare LF", "HTTP/1.1 200 OK\nContent-Length: 2\n\nhi", false},
		{"bare LF ends the header early", ok + "X-A: 1\n\r\nX-B: 2\r\n\r\nhi", false},
		{"bare CR", ok + "X-A: 1\r2\r\n\r\nhi", false},
		{"space in a name", ok + "X A: 1\r\n\r\nhi", false},
		{"space before the colon", ok + "X-A : 1\r\n\r\nhi", false},
		{"control byte in a value", ok + "X-A: 1\x002\r\n\r\nhi", false},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", false},
		{"four-digit status", "HTTP/1.1 0200 OK\r\nContent-Length: 2\r\n\r\nhi", false},
		{"100 Continue first", "HTTP/1.1 100 Continue\r\n\r\n" + ok + "\r\nhi", false},
		{"204", "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", false},
		{"304", "HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\n", false},
		{"trailer announced", ok + "Trailer: X-T\r\n\r\nhi", false},
		{"signed length", "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi", false},
		{"header incomplete in the buffer", ok + "X-A: 1\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := []byte(tc.raw)
			fast, took := readFast(t, raw, http.MethodGet)
			if took != tc.take {
				t.Fatalf("fast path took it: %v, want %v", took, tc.take)
			}
			if !took {
				return
			}
			want, _, err := readNetHTTP(raw, http.MethodGet)
			if err != nil {
				t.Fatalf("net/http refuses what the fast path took: %v", err)
			}
			if !reflect.DeepEqual(fast, want) {
				t.Errorf("fast path read\n%+v\nnet/http\n%+v", fast, want)
			}
		})
	}
}

// The fast path is only for requests it can answer from fasthttp's header.
func TestFastResponseDeclines(t *testing.T) {
	raw := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
	if _, took := readFast(t, raw, http.MethodHead); took {
		t.Error("took the response to a HEAD request")
	}
	br := bufio.NewReader(bytes.NewReader(raw))
	if resp, _ := readFastResponse(br, &outRequest{method: http.MethodGet}, 64<<10, 100); resp != nil {
		t.Error("took a response without fastOK")
	}
	br = bufio.NewReader(bytes.NewReader(raw))
	if resp, _ := readFastResponse(br, &outRequest{fastOK: true, method: http.MethodGet}, 64<<10, 0); resp != nil {
		t.Error("took a response past max_header_count")
	}
	br = bufio.NewReader(bytes.NewReader(raw))
	if resp, _ := readFastResponse(br, &outRequest{fastOK: true, method: http.MethodGet}, 20, 100); resp != nil {
		t.Error("took a response past max_header_bytes")
	}
}

// A body shorter than its Content-Length ends in io.ErrUnexpectedEOF, as
// net/http's: never a clean end that would keep the connection.
func TestFastResponseShortBody(t *testing.T) {
	r, took := readFast(t, []byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhi"), http.MethodGet)
	if !took || r.Body != "hi" || r.BodyErr != io.ErrUnexpectedEOF.Error() {
		t.Errorf("took %v, body %q, error %q", took, r.Body, r.BodyErr)
	}
	var b clBody
	if _, err := b.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("an ended body reads %v", err)
	}
}

// FuzzFastResponse: for any response header, the fast path either
// declines (having read nothing) or reads what net/http's ReadResponse
// reads, as respond passes it on: status, framing, the fields, the body.
func FuzzFastResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nhi",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\nKeep-Alive: 5\r\n\r\nhi",
		"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nServer: x\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n 2\r\n\r\nhi",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Encoding: gzip\r\nContent-Encoding: br\r\n\r\nhi",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\nX-A: 1\r\n\r\nhi",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			fast, took := readFast(t, raw, method)
			if !took {
				continue
			}
			want, resp, err := readNetHTTP(raw, method)
			if err != nil {
				t.Fatalf("fast path took a response net/http refuses (%v): %q", err, raw)
			}
			if len(resp.TransferEncoding) > 0 || resp.Trailer != nil {
				t.Fatalf("fast path took a response with a transfer coding or trailers: %q", raw)
			}
			if !reflect.DeepEqual(fast, want) {
				t.Fatalf("%q:\nfast path %+v\nnet/http  %+v", raw, fast, want)
			}
			// The names as net/http canonicalizes them (the client's
			// header is written with fasthttp's).
			for k := range fast.Fields {
				if http.CanonicalHeaderKey(k) != k || strings.ContainsAny(k, " \t:") {
					t.Fatalf("field name %q", k)
				}
			}
		}
	})
}

// Through the proxy, a response the fast path reads reaches the client as
// one the map path passes on (a service with a response header rule takes
// the map path): the same fields but the rule's, hop-by-hop ones and those
// Connection names dropped, Via appended; and the backend connection is
// kept for the next request (the body was read to its end).
func TestFastResponseThroughProxy(t *testing.T) {
	const canned = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n" +
		"Connection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\n" +
		"Via: 1.0 edge\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nVary: A\r\nDate: Sat, 05 Dec 2026 00:00:00 GMT\r\n\r\nhello"
	var conns atomic.Int64
	be := rawServer(t, func(c net.Conn) {
		conns.Add(1)
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if _, err := io.WriteString(c, canned); err != nil {
				return
			}
		}
	})
	get := func(t *testing.T, h *harness) []http.Header {
		t.Helper()
		c, br := rawConn(t, h)
		var got []http.Header
		for range 3 {
			if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, body := readResp(t, br, http.MethodGet)
			if body != "hello" || resp.StatusCode != 200 {
				t.Fatalf("status %d, body %q", resp.StatusCode, body)
			}
			got = append(got, resp.Header)
		}
		return got
	}
	fast := get(t, start(t, newPool(t, nil, be), nil))
	if n := conns.Load(); n != 1 {
		t.Errorf("fast path: %d backend connections for three requests, want 1 (kept)", n)
	}
	mapped := get(t, start(t, newPool(t, nil, be), func(o *Options) {
		o.Service.Headers.Response.Set = []service.Field{{Name: "X-Rule", Value: "1"}}
	}))
	for i := range fast {
		if fast[i].Get("X-Rule") != "" || mapped[i].Get("X-Rule") != "1" {
			t.Fatalf("the rule applied to the fast path, or not to the map path: %v / %v", fast[i], mapped[i])
		}
		delete(mapped[i], "X-Rule")
		if !reflect.DeepEqual(fast[i], mapped[i]) {
			t.Errorf("request %d:\nfast path %v\nmap path  %v", i+1, fast[i], mapped[i])
		}
	}
	h := fast[0]
	for _, name := range []string{"X-Secret", "Keep-Alive", "Proxy-Connection", "Connection"} {
		if _, ok := h[name]; ok {
			t.Errorf("%s passed on: %v", name, h)
		}
	}
	if !reflect.DeepEqual(h["Via"], []string{"1.0 edge", "1.1 sluice"}) || len(h["Set-Cookie"]) != 2 ||
		h.Get("Date") != "Sat, 05 Dec 2026 00:00:00 GMT" {
		t.Errorf("fields: %v", h)
	}
}

// Every hop-by-hop field (the list removeHopByHop uses) is dropped by the
// fast path too, or the response is left to net/http's reader: the fast
// path's own list must not fall behind.
func TestFastResponseHopByHop(t *testing.T) {
	for _, name := range hopByHop {
		raw := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + name + ": x\r\nX-Kept: 1\r\n\r\nhi")
		r, took := readFast(t, raw, http.MethodGet)
		if !took {
			continue
		}
		if _, ok := r.Fields[name]; ok {
			t.Errorf("%s passed on by the fast path", name)
		}
		if _, ok := r.Fields["X-Kept"]; !ok {
			t.Errorf("with %s: X-Kept dropped", name)
		}
	}
}

// headBlock finds what six searches found before it (kept here as the
// reference): the same block and line count, or none, for every short
// string of the bytes that matter and any limit.
func TestHeadBlockAsSearches(t *testing.T) {
	searches := func(buf []byte, limit int) ([]byte, int) {
		end := bytes.Index(buf, []byte("\r\n\r\n"))
		if end < 0 || end+4 > limit {
			return nil, 0
		}
		block := buf[:end+4]
		lines := bytes.Count(block, []byte("\r\n"))
		if bytes.Count(block, []byte("\n")) != lines || bytes.Count(block, []byte("\r")) != lines ||
			bytes.Contains(block, []byte(" :")) || bytes.Contains(block, []byte("\t:")) {
			return nil, 0
		}
		return block, lines
	}
	check := func(buf []byte, limit int) {
		t.Helper()
		gb, gl := headBlock(buf, limit)
		wb, wl := searches(buf, limit)
		if !bytes.Equal(gb, wb) || gb == nil != (wb == nil) || gl != wl {
			t.Fatalf("headBlock(%q, %d) = %q, %d; the searches: %q, %d", buf, limit, gb, gl, wb, wl)
		}
	}
	check([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: Sat, 05 Dec 2026 11:20:39 GMT\r\n\r\nhi"), 4096)
	alphabet := []byte("\r\n \t:aH")
	r := rand.New(rand.NewPCG(5, 6))
	buf := make([]byte, 0, 48)
	for range 2_000_000 {
		buf = buf[:r.IntN(cap(buf))]
		for i := range buf {
			if r.IntN(3) == 0 {
				buf[i] = "\r\n\r\n"[i%4] // runs of CRLF, so that some headers end
			} else {
				buf[i] = alphabet[r.IntN(len(alphabet))]
			}
		}
		check(buf, r.IntN(cap(buf)+8))
	}
}
