package main

// The parsers alone, for docs/benchmarks.md (issue 11): net/http's
// ReadResponse and ReadRequest against fasthttp's header parsers, on the
// lab's request (wrk's) and a Go backend's response, from memory. What a
// swap of parsers could save at most, before the work of turning
// fasthttp's headers into what the rest of the proxy reads.
//
//	cd l7/proxy/testdata/fhproxy && go test -run '^$' -bench Parse -benchmem

import (
	"bufio"
	"bytes"
	"net/http"
	"testing"

	"github.com/valyala/fasthttp"
)

var (
	labResponse = []byte("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Type: text/plain; charset=utf-8\r\n" +
		"Date: Fri, 04 Dec 2026 06:00:00 GMT\r\nX-Backend: be1\r\n\r\nbe1\n")
	labRequest = []byte("GET / HTTP/1.1\r\nHost: 198.18.1.101\r\n\r\n")
)

// parseLoop runs parse on a reader refilled with msg each time.
func parseLoop(b *testing.B, msg []byte, parse func(*bufio.Reader) error) {
	r := bytes.NewReader(msg)
	br := bufio.NewReaderSize(r, 4096)
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(msg)
		br.Reset(r)
		if err := parse(br); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseResponseNetHTTP(b *testing.B) {
	req := &http.Request{Method: http.MethodGet}
	parseLoop(b, labResponse, func(br *bufio.Reader) error {
		_, err := http.ReadResponse(br, req)
		return err
	})
}

func BenchmarkParseResponseFastHTTP(b *testing.B) {
	var h fasthttp.ResponseHeader
	parseLoop(b, labResponse, func(br *bufio.Reader) error {
		h.Reset()
		return h.Read(br)
	})
}

func BenchmarkParseRequestNetHTTP(b *testing.B) {
	parseLoop(b, labRequest, func(br *bufio.Reader) error {
		_, err := http.ReadRequest(br)
		return err
	})
}

func BenchmarkParseRequestFastHTTP(b *testing.B) {
	var h fasthttp.RequestHeader
	parseLoop(b, labRequest, func(br *bufio.Reader) error {
		h.Reset()
		return h.Read(br)
	})
}
