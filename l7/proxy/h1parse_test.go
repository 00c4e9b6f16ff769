package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

// parsed is what a response parser produced from one input, everything a
// caller can see: the response's fields, its body as read to the end (or
// the first error), and what the reader still holds after the body was
// closed (the next response).
type parsed struct {
	err                           bool
	status                        string
	code, major, minor            int
	proto                         string
	header, trailer               http.Header
	length                        int64
	te                            []string
	close, noBody                 bool
	body                          string
	bodyErr                       string
	afterPartialClose, afterClose string
}

func parseWith(t testing.TB, parse func(*bufio.Reader, *http.Request) (*http.Response, error), in []byte, method string, partial int) parsed {
	t.Helper()
	req := &http.Request{Method: method}
	var p parsed
	// The body read to its end, then closed.
	br := bufio.NewReaderSize(bytes.NewReader(in), 16<<10)
	resp, err := parse(br, req)
	if err != nil {
		p.err = true
		return p
	}
	p.status, p.code, p.major, p.minor, p.proto = resp.Status, resp.StatusCode, resp.ProtoMajor, resp.ProtoMinor, resp.Proto
	p.header, p.trailer, p.length, p.te, p.close = resp.Header, resp.Trailer, resp.ContentLength, resp.TransferEncoding, resp.Close
	p.noBody = resp.Body == http.NoBody
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	p.body = string(b)
	if err != nil {
		p.bodyErr = err.Error()
	}
	if err := resp.Body.Close(); err != nil {
		p.bodyErr += "; close: " + err.Error()
	}
	rest, _ := io.ReadAll(br)
	p.afterClose = string(rest)
	// Part of the body read, then closed: what Close drains.
	br = bufio.NewReaderSize(bytes.NewReader(in), 16<<10)
	resp, err = parse(br, req)
	if err != nil {
		t.Fatalf("second parse of the same input failed: %v", err)
	}
	_, _ = io.ReadFull(resp.Body, make([]byte, partial))
	_ = resp.Body.Close()
	if _, err := resp.Body.Read(make([]byte, 1)); !errors.Is(err, http.ErrBodyReadAfterClose) && resp.Body != http.NoBody {
		p.bodyErr += "; read after close: " + errString(err)
	}
	rest, _ = io.ReadAll(br)
	p.afterPartialClose = string(rest)
	return p
}

// checkSameAsNetHTTP fails when readResponse reads in anything otherwise
// than http.ReadResponse does.
func checkSameAsNetHTTP(t testing.TB, in []byte, method string, partial int) {
	t.Helper()
	want := parseWith(t, http.ReadResponse, in, method, partial)
	got := parseWith(t, readResponse, in, method, partial)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("input %q (%s):\n got %+v\nwant %+v", in, method, got, want)
	}
}

func TestReadResponseAsNetHTTP(t *testing.T) {
	for _, tc := range []struct {
		in     string
		method string
		fast   bool // taken by the fast path
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhelloHTTP/1.1 204", "GET", true},
		{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "GET", true},
		{"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", "GET", true},
		{"HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n", "GET", true},
		{"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", "GET", true},
		{"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", "POST", true},
		{"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-weird_name: a\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nabc", "GET", true},
		{"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc", "GET", true},
		{"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc", "GET", true},
		{"HTTP/1.1 200 OK\r\nContent-Length: 007\r\nPragma: no-cache\r\n\r\n1234567", "GET", true},
		{"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX:  padded \t\r\n\r\nshort", "GET", true},
		{"HTTP/1.1 000 Zero\r\nContent-Length: 1\r\n\r\nz", "GET", true},
		// net/http's to read:
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", "GET", false},
		{"HTTP/1.1 200 OK\r\n\r\nuntil the end", "GET", false},
		{"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\na", "GET", false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na", "GET", false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "GET", false},
		{"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "GET", false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n folded\r\n\r\na", "GET", false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nBad Key: x\r\n\r\na", "GET", false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: \x01\r\n\r\na", "GET", false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: caf\xc3\xa9\r\n\r\na", "GET", false},
		{"HTTP/1.1 200 OK\nContent-Length: 1\n\na", "GET", false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: a\rb\r\n\r\na", "GET", false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", "HEAD", false},
		{"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", "GET", false},
		{"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", "GET", false},
		{"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n", "GET", false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", "GET", false},
		{"HTTP/1.1 200 OK\r\n: empty key\r\nContent-Length: 0\r\n\r\n", "GET", false},
		{"", "GET", false},
		{"garbage\r\n\r\n", "GET", false},
	} {
		br := bufio.NewReaderSize(strings.NewReader(tc.in), 16<<10)
		_, _ = br.Peek(1)
		if got := fastResponse(br, &http.Request{Method: tc.method}) != nil; got != tc.fast {
			t.Errorf("%q: taken by the fast path %v, want %v", tc.in, got, tc.fast)
		}
		for _, partial := range []int{0, 1, 3} {
			checkSameAsNetHTTP(t, []byte(tc.in), tc.method, partial)
		}
	}
}

// TestReadResponseHeaderAcrossReads: a header that is not all in the
// buffer yet is read by net/http, which reads on.
func TestReadResponseHeaderAcrossReads(t *testing.T) {
	in := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	br := bufio.NewReaderSize(io.MultiReader(strings.NewReader(in[:20]), strings.NewReader(in[20:])), 16<<10)
	resp, err := readResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "ok" {
		t.Fatalf("body %q", b)
	}
}

func TestReadResponseErrorsAsNetHTTP(t *testing.T) {
	boom := errors.New("boom")
	for _, r := range []io.Reader{strings.NewReader(""), iotestErrReader{boom}} {
		_, err := readResponse(bufio.NewReader(r), &http.Request{Method: "GET"})
		if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, boom) {
			t.Fatalf("error %v", err)
		}
	}
}

type iotestErrReader struct{ err error }

func (r iotestErrReader) Read([]byte) (int, error) { return 0, r.err }

// BenchmarkReadResponse: a typical backend response header.
func BenchmarkReadResponse(b *testing.B) {
	in := []byte("HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Wed, 02 Dec 2026 20:00:00 GMT\r\nX-Backend: be1\r\n\r\nhello, world\n")
	for _, bc := range []struct {
		name  string
		parse func(*bufio.Reader, *http.Request) (*http.Response, error)
	}{{"net-http", http.ReadResponse}, {"sluice", readResponse}} {
		b.Run(bc.name, func(b *testing.B) {
			rd := bytes.NewReader(in)
			br := bufio.NewReaderSize(rd, 16<<10)
			req := &http.Request{Method: "GET"}
			b.ReportAllocs()
			for b.Loop() {
				rd.Reset(in)
				br.Reset(rd)
				resp, err := bc.parse(br, req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}

// FuzzResponseParse: readResponse reads every input as http.ReadResponse
// does.
func FuzzResponseParse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
		"HTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nab",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
		"HTTP/1.1 100 Continue\r\n\r\n",
	} {
		f.Add([]byte(s), false, uint8(1))
	}
	f.Fuzz(func(t *testing.T, in []byte, head bool, partial uint8) {
		method := "GET"
		if head {
			method = "HEAD"
		}
		checkSameAsNetHTTP(t, in, method, int(partial%8))
	})
}

// parsedRequest is everything a caller sees of a parsed request (see
// parsed).
type parsedRequest struct {
	err                           bool
	method, proto, host, uri      string
	major, minor                  int
	url                           url.URL
	header, trailer               http.Header
	length                        int64
	te                            []string
	close, noBody                 bool
	body, bodyErr                 string
	afterPartialClose, afterClose string
}

func parseRequestWith(t testing.TB, parse func(*bufio.Reader) (*http.Request, error), in []byte, partial int) parsedRequest {
	t.Helper()
	var p parsedRequest
	br := bufio.NewReaderSize(bytes.NewReader(in), 4<<10)
	r, err := parse(br)
	if err != nil {
		p.err = true
		return p
	}
	p.method, p.proto, p.host, p.uri, p.major, p.minor = r.Method, r.Proto, r.Host, r.RequestURI, r.ProtoMajor, r.ProtoMinor
	p.url, p.header, p.trailer, p.length, p.te, p.close = *r.URL, r.Header, r.Trailer, r.ContentLength, r.TransferEncoding, r.Close
	p.noBody = r.Body == http.NoBody
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	p.body = string(b)
	if err != nil {
		p.bodyErr = err.Error()
	}
	if err := r.Body.Close(); err != nil {
		p.bodyErr += "; close: " + err.Error()
	}
	rest, _ := io.ReadAll(br)
	p.afterClose = string(rest)
	br = bufio.NewReaderSize(bytes.NewReader(in), 4<<10)
	if r, err = parse(br); err != nil {
		t.Fatalf("second parse of the same input failed: %v", err)
	}
	_, _ = io.ReadFull(r.Body, make([]byte, partial))
	_ = r.Body.Close()
	rest, _ = io.ReadAll(br)
	p.afterPartialClose = string(rest)
	return p
}

func checkRequestSameAsNetHTTP(t testing.TB, in []byte, partial int) {
	t.Helper()
	want := parseRequestWith(t, readRequest, in, partial)
	got := parseRequestWith(t, parseRequest, in, partial)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("input %q:\n got %+v\nwant %+v", in, got, want)
	}
}

func TestParseRequestAsNetHTTP(t *testing.T) {
	for _, tc := range []struct {
		in   string
		fast bool
	}{
		{"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: wrk\r\n\r\nGET /next HTTP/1.1\r\n", true},
		{"GET /a/b%20c?x=1&y=%2F#frag HTTP/1.1\r\nHost: h\r\n\r\n", true},
		{"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET", true},
		{"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", true},
		{"GET / HTTP/1.0\r\n\r\n", true},
		{"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nhost: h\r\nx-forwarded-for: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\nPragma: no-cache\r\n\r\n", true},
		{"GET / HTTP/1.1\r\n\r\n", true},
		{"GET /..//x HTTP/1.1\r\nHost: h\r\n\r\n", true},
		{"M-SEARCH * HTTP/1.1\r\nHost: h\r\n\r\n", false},
		{"GET http://example.com/x HTTP/1.1\r\nHost: other\r\n\r\n", false},
		{"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", false},
		{"CONNECT /path HTTP/1.1\r\nHost: h\r\n\r\n", false},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false},
		{"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false},
		{"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", false},
		{"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: h\r\nTrailer: X\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n", false},
		{"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", false},
		{"GET / HTTP/1.2\r\nHost: h\r\n\r\n", false},
		{"GET / http/1.1\r\nHost: h\r\n\r\n", false},
		{"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", false},
		{"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", false},
		{"GET / HTTP/1.1\nHost: h\n\n", false},
		{"GET / HTTP/1.1\r\nHost: h\r\n", false},
		{"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", false},
		{"", false},
	} {
		br := bufio.NewReaderSize(strings.NewReader(tc.in), 4<<10)
		_, _ = br.Peek(1)
		if got := fastRequest(br) != nil; got != tc.fast {
			t.Errorf("%q: taken by the fast path %v, want %v", tc.in, got, tc.fast)
		}
		for _, partial := range []int{0, 1, 3} {
			checkRequestSameAsNetHTTP(t, []byte(tc.in), partial)
		}
	}
}

// BenchmarkParseRequest: a typical client request header.
func BenchmarkParseRequest(b *testing.B) {
	in := []byte("GET /index.html?x=1 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n\r\n")
	for _, bc := range []struct {
		name  string
		parse func(*bufio.Reader) (*http.Request, error)
	}{{"net-http", readRequest}, {"sluice", parseRequest}} {
		b.Run(bc.name, func(b *testing.B) {
			rd := bytes.NewReader(in)
			br := bufio.NewReaderSize(rd, 4<<10)
			b.ReportAllocs()
			for b.Loop() {
				rd.Reset(in)
				br.Reset(rd)
				if _, err := bc.parse(br); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzRequestParse: parseRequest reads every input as net/http's server
// parser does.
func FuzzRequestParse(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
		"POST /p?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
		"GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n",
	} {
		f.Add([]byte(s), uint8(1))
	}
	f.Fuzz(func(t *testing.T, in []byte, partial uint8) {
		checkRequestSameAsNetHTTP(t, in, int(partial%8))
	})
}
