package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluicelb/sluice/l7/eject"
	"github.com/sluicelb/sluice/userspace/pool"
)

// Fuzz targets of the request translation: whatever a client sends over
// HTTP/1.1 (FuzzH1Translation, FuzzHeaderForwarding) or HTTP/2
// (FuzzH2Translation), what sluice writes to a backend must be one
// well-formed HTTP/1.1 request (checked byte by byte by strictRequest,
// then parsed by net/http's ReadRequest with nothing left over) with the
// meaning of the request the handler got: method, target, Host, end-to-end
// header fields and body; hop-by-hop fields removed and the forwarding
// fields sluice's own.
//
// Requests go through the real stack: a Server serving an in-memory
// listener (HTTP/1.1 and h2c, so net/http's and x/net's parsers and the
// HTTP/2 frame guard run as in production) and dialling an in-memory
// backend that records every request's bytes and answers 204.

// fuzzPeer is the client address the rig's connections come from.
const fuzzPeer = "198.18.0.7"

// pipeListener hands out the server ends of in-memory connections.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
	// open counts the server's ends of the pipes not closed yet: the
	// server may still read a request from one (one pipelined behind
	// the response the client had, say).
	open atomic.Int64
}

type pipeAddr string

func (a pipeAddr) Network() string { return "pipe" }
func (a pipeAddr) String() string  { return string(a) }

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error   { l.once.Do(func() { close(l.closed) }); return nil }
func (l *pipeListener) Addr() net.Addr { return pipeAddr("192.0.2.1:80") }

// peerConn gives a pipe end the client's address, and counts itself
// out of its listener's open ends when the server closes it.
type peerConn struct {
	net.Conn
	l    *pipeListener
	once sync.Once
}

func (*peerConn) RemoteAddr() net.Addr { return pipeAddr(fuzzPeer + ":40000") }
func (*peerConn) LocalAddr() net.Addr  { return pipeAddr("192.0.2.1:80") }

func (c *peerConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

func (l *pipeListener) dial() net.Conn {
	c, s := net.Pipe()
	l.open.Add(1)
	select {
	case l.conns <- &peerConn{Conn: s, l: l}:
	case <-l.closed:
		l.open.Add(-1)
	}
	return c
}

// captured is one request as the backend read it.
type captured struct {
	raw       []byte // every byte read on the connection
	err       error  // the request could not be read, or bytes followed it
	truncated bool   // the body ended early (the connection was closed)
}

// memBackend is the backend at the end of Options.Upstream.Dial: one
// request per connection, answered with 204 and closed.
type memBackend struct {
	mu    sync.Mutex
	caps  []captured
	open  map[net.Conn]bool
	wg    sync.WaitGroup
	close bool
}

func (b *memBackend) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, s := net.Pipe()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.close {
		return nil, net.ErrClosed
	}
	if b.open == nil {
		b.open = map[net.Conn]bool{}
	}
	b.open[s] = true
	b.wg.Go(func() { b.serve(s) })
	return c, nil
}

// closeAll ends every backend connection (a request the proxy never
// finished leaves its reader waiting) and waits for their goroutines.
func (b *memBackend) closeAll() {
	b.mu.Lock()
	b.close = true
	for c := range b.open {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

func (b *memBackend) serve(c net.Conn) {
	defer func() {
		b.mu.Lock()
		delete(b.open, c)
		b.mu.Unlock()
		c.Close()
	}()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var raw bytes.Buffer
	br := bufio.NewReaderSize(io.TeeReader(c, &raw), 64<<10)
	cp := captured{}
	req, err := http.ReadRequest(br)
	if err != nil {
		if errors.Is(err, io.EOF) && raw.Len() == 0 {
			return // dialled, never used
		}
		cp.err = fmt.Errorf("backend: reading the request: %w", err)
	} else {
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				cp.truncated = true
			} else {
				cp.err = fmt.Errorf("backend: reading the body: %w", err)
			}
		}
		if cp.err == nil && !cp.truncated && br.Buffered() > 0 {
			cp.err = fmt.Errorf("backend: %d bytes after the request", br.Buffered())
		}
	}
	cp.raw = slices.Clone(raw.Bytes())
	b.mu.Lock()
	b.caps = append(b.caps, cp)
	b.mu.Unlock()
	if cp.err == nil && !cp.truncated {
		_, _ = io.WriteString(c, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
	}
}

func (b *memBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.caps)
}

func (b *memBackend) since(n int) []captured {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.caps[n:])
}

// seen is a request as the handler got it, and what the backend read for it.
type seen struct {
	method string
	url    url.URL
	host   string
	header http.Header
	caps   []captured
}

// fuzzRig is a Server on a pipeListener with a memBackend.
type fuzzRig struct {
	h2c      bool // h2c listener: HTTP/1 by net/http's server (else sluice's loop, h1.go)
	l        *pipeListener
	be       *memBackend
	inflight atomic.Int64
	mu       sync.Mutex
	seen     []seen
}

func newFuzzRig(f testing.TB) *fuzzRig { return newFuzzRigOn(f, rigH2C) }

// What serves a fuzzRig's HTTP/1 connections.
const (
	rigH2C     = iota // an h2c listener: net/http's server behind the h2c gate
	rigNetHTTP        // a plain listener served by net/http's server (Options.NetHTTP1)
	rigLoop           // a plain listener served by sluice's loop (h1.go)
)

// newFuzzRigOn is newFuzzRig on a listener of the given kind.
func newFuzzRigOn(f testing.TB, kind int) *fuzzRig {
	h2c := kind == rigH2C
	rig := &fuzzRig{h2c: h2c, l: &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}, be: &memBackend{}}
	addr := netip.MustParseAddrPort("192.0.2.10:80")
	p := pool.New("web", pool.Config{DrainTimeout: time.Minute, MaxEjectedPercent: 50}, nil, nil)
	p.SetSource(time.Now(), pool.SourceStatic, []pool.Desired{{Addr: addr, Weight: 1, Info: "static"}})
	svc := testService()
	svc.Retry.Attempts = 1
	srv, err := New(Options{
		Service: svc, Pool: p, Ejection: eject.Config{}, H2C: h2c, NetHTTP1: kind == rigNetHTTP,
		Upstream:        UpstreamOptions{Dial: rig.be.dial},
		ShutdownTimeout: time.Second,
		Log:             slog.New(slog.DiscardHandler),
	})
	if err != nil {
		f.Fatal(err)
	}
	if (srv.h1 == nil) != (kind != rigLoop) {
		f.Fatalf("rig kind %d: the HTTP/1 loop is %v", kind, srv.h1 != nil)
	}
	srv.http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rig.inflight.Add(1)
		defer rig.inflight.Add(-1)
		sn := seen{method: r.Method, url: *r.URL, host: r.Host, header: r.Header.Clone()}
		n := rig.be.count()
		defer func() {
			sn.caps = rig.be.since(n)
			rig.mu.Lock()
			rig.seen = append(rig.seen, sn)
			rig.mu.Unlock()
		}()
		srv.ServeHTTP(w, r)
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, rig.l) }()
	f.Cleanup(func() {
		cancel()
		<-done
		rig.be.closeAll()
	})
	return rig
}

// settle waits until no handler runs and the server is done with every
// connection (closed its end), then returns what the handlers saw since
// the last call. Waiting for the handlers alone let a request pipelined
// behind the response the client read be handled after settle returned,
// and be counted as the next input's.
func (rig *fuzzRig) settle(t *testing.T) []seen {
	t.Helper()
	for deadline := time.Now().Add(6 * time.Second); rig.inflight.Load() > 0 || rig.l.open.Load() > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("after 6s: %d handlers still running, %d connections open", rig.inflight.Load(), rig.l.open.Load())
		}
		time.Sleep(100 * time.Microsecond)
	}
	rig.mu.Lock()
	defer rig.mu.Unlock()
	s := rig.seen
	rig.seen = nil
	return s
}

// sendH1 writes raw on a new connection and reads one response. A raw
// that net/http would wait on for more bytes (an incomplete request) is
// not sent: the server would only answer at its header timeout.
func (rig *fuzzRig) sendH1(raw []byte) (status int) {
	if incomplete(raw) {
		return 0
	}
	c := rig.l.dial()
	defer c.Close()
	// Anything complete is answered at once (the backend is in memory);
	// a server waiting for more is left at 2s.
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	go func() { _, _ = c.Write(raw) }()
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	return 0
}

// sameH1 checks that both HTTP/1 servers (net/http's, sluice's loop)
// answered raw alike: the same status, and the same first request
// reaching the handler (or none) with the same method, target, Host and
// header, reaching the backend as often. (Whether a request pipelined
// after it is handled races with sendH1 closing the connection once it
// has the first response, on either server: not compared.)
func sameH1(t *testing.T, raw []byte, statusA, statusB int, a, b []seen) {
	t.Helper()
	if statusA != statusB {
		t.Fatalf("net/http answered %d, the loop %d, to %q", statusA, statusB, raw)
	}
	if (len(a) == 0) != (len(b) == 0) {
		t.Fatalf("net/http handled %d requests, the loop %d, of %q", len(a), len(b), raw)
	}
	for i := range min(len(a), len(b), 1) {
		x, y := a[i], b[i]
		if x.method != y.method || x.url.String() != y.url.String() || x.host != y.host || !reflect.DeepEqual(x.header, y.header) || len(x.caps) != len(y.caps) {
			t.Fatalf("request %d of %q: net/http %s %s %q %v (%d tries), the loop %s %s %q %v (%d tries)",
				i, raw, x.method, x.url.String(), x.host, x.header, len(x.caps), y.method, y.url.String(), y.host, y.header, len(y.caps))
		}
	}
}

// sendH2 sends one request on a new h2c connection and waits for the end
// of its stream (response, reset or connection error).
func (rig *fuzzRig) sendH2(fields []hpack.HeaderField, body []byte) {
	c := rig.l.dial()
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	fr := http2.NewFramer(c, c)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if f.Header().StreamID == 1 && f.Header().Flags.Has(http2.FlagDataEndStream) {
				return
			}
			switch f.(type) {
			case *http2.RSTStreamFrame, *http2.GoAwayFrame:
				return
			}
		}
	}()
	go func() {
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, hf := range fields {
			_ = enc.WriteField(hf)
		}
		if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
			return
		}
		if fr.WriteSettings() != nil {
			return
		}
		block := hb.Bytes()
		first := true
		for first || len(block) > 0 {
			n := min(len(block), 16<<10)
			var err error
			if first {
				err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:n],
					EndStream: len(body) == 0, EndHeaders: n == len(block)})
			} else {
				err = fr.WriteContinuation(1, n == len(block), block[:n])
			}
			if err != nil {
				return
			}
			first, block = false, block[n:]
		}
		for len(body) > 0 {
			n := min(len(body), 16<<10)
			if fr.WriteData(1, n == len(body), body[:n]) != nil {
				return
			}
			body = body[n:]
		}
	}()
	<-ended
}

// hopByHopIn is the set of header names removed before a request goes
// upstream: the fixed list and what Connection names (canonical).
func hopByHopIn(h http.Header) map[string]bool {
	m := map[string]bool{}
	for _, n := range hopByHop {
		m[n] = true
	}
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				m[textproto.CanonicalMIMEHeaderKey(name)] = true
			}
		}
	}
	return m
}

// ownedBySluice are the fields sluice writes itself (framing, Host,
// forwarding), compared separately, and Expect, which sluice answers
// itself and never forwards (a 100 Continue when the body is first read;
// an empty Expect, no expectation at all, goes no further either: found
// by FuzzH1Translation).
var ownedBySluice = map[string]bool{
	"Host": true, "Content-Length": true, "Transfer-Encoding": true, "Expect": true,
	"X-Forwarded-For": true, "X-Forwarded-Proto": true, "X-Forwarded-Host": true,
	"Forwarded": true, "X-Real-Ip": true, "Via": true, "Connection": true, "Upgrade": true,
}

// checkSeen checks the backend side of one request the handler got.
func checkSeen(t *testing.T, sn seen, body []byte, bodyKnown bool) {
	t.Helper()
	if len(sn.caps) > 1 {
		t.Fatalf("one request from the client, %d to the backend: %+v", len(sn.caps), sn.caps)
	}
	if len(sn.caps) == 0 {
		return
	}
	cp := sn.caps[0]
	if cp.err != nil {
		t.Fatalf("%v\nupstream bytes: %q", cp.err, cp.raw)
	}
	up, err := strictRequest(cp.raw)
	if err != nil {
		t.Fatalf("upstream request not strict HTTP/1.1: %v\n%q", err, cp.raw)
	}
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("upstream request does not match the client's: "+format+"\nclient: %s %s Host %q %q\nupstream: %q",
			append(args, sn.method, sn.url.String(), sn.host, sn.header, cp.raw)...)
	}
	if up.Method != sn.method {
		fail("method %q, want %q", up.Method, sn.method)
	}
	wantPath := sn.url.Path
	if wantPath == "" {
		wantPath = "/"
	}
	if up.URL.Path != wantPath || up.URL.RawQuery != sn.url.RawQuery {
		fail("target path %q query %q, want %q %q", up.URL.Path, up.URL.RawQuery, wantPath, sn.url.RawQuery)
	}
	if sn.host != "" && up.Host != sn.host {
		fail("Host %q, want %q", up.Host, sn.host)
	}
	hop := hopByHopIn(sn.header)
	for k, vv := range sn.header {
		if hop[k] || ownedBySluice[k] {
			continue
		}
		if strings.IndexByte(k, '_') >= 0 {
			// client.underscore_headers: drop (the default).
			if up.Header[k] != nil {
				fail("%s (an underscore in its name) forwarded", k)
			}
			continue
		}
		// Whitespace around a value is not part of it (RFC 9110 5.5).
		trim := func(vs []string) []string {
			out := make([]string, len(vs))
			for i, v := range vs {
				out[i] = strings.Trim(v, " \t")
			}
			return out
		}
		if !slices.Equal(trim(up.Header[k]), trim(vv)) {
			fail("%s: %q, want %q", k, up.Header[k], vv)
		}
	}
	for k := range up.Header {
		if hop[k] && !ownedBySluice[k] {
			fail("hop-by-hop %s forwarded", k)
		}
	}
	xff := up.Header.Values("X-Forwarded-For")
	if len(xff) == 0 {
		fail("no X-Forwarded-For")
	}
	last := xff[len(xff)-1]
	if i := strings.LastIndexByte(last, ','); i >= 0 {
		last = last[i+1:]
	}
	if strings.TrimSpace(last) != fuzzPeer {
		fail("X-Forwarded-For %q does not end with the peer %s", xff, fuzzPeer)
	}
	if p := up.Header.Values("X-Forwarded-Proto"); len(p) != 1 || p[0] != "http" {
		fail("X-Forwarded-Proto %q, want [http] (the client reached sluice in plain text)", p)
	}
	if bodyKnown && !cp.truncated && !bytes.Equal(up.body, body) {
		fail("body %q, want %q", up.body, body)
	}
}

// upstreamRequest is a request strictRequest read.
type upstreamRequest struct {
	*http.Request
	body []byte
}

// strictRequest checks that raw is exactly one HTTP/1.1 request with
// nothing a lenient parser could read another way (RFC 9112): a request
// line of a token method, an origin-form (or "*") target of visible ASCII
// and HTTP/1.1; CRLF line ends only; header names tokens, values without
// control characters but HTAB, no obs-fold; one valid Host; at most one
// Content-Length, never with Transfer-Encoding, and chunked the only
// transfer coding. Then net/http must read it, body included, with no byte
// left over.
func strictRequest(raw []byte) (upstreamRequest, error) {
	end := bytes.Index(raw, []byte("\r\n\r\n"))
	if end < 0 {
		return upstreamRequest{}, errors.New("header does not end")
	}
	head := string(raw[:end])
	for i := 0; i < len(head); i++ {
		switch {
		case head[i] == '\n' && (i == 0 || head[i-1] != '\r'):
			return upstreamRequest{}, fmt.Errorf("bare LF at %d", i)
		case head[i] == '\r' && (i+1 >= len(head) || head[i+1] != '\n'):
			return upstreamRequest{}, fmt.Errorf("bare CR at %d", i)
		}
	}
	lines := strings.Split(head, "\r\n")
	parts := strings.Split(lines[0], " ")
	if len(parts) != 3 || parts[2] != "HTTP/1.1" {
		return upstreamRequest{}, fmt.Errorf("request line %q", lines[0])
	}
	if !tokenRef(parts[0]) {
		return upstreamRequest{}, fmt.Errorf("method %q is not a token", parts[0])
	}
	target := parts[1]
	if target != "*" || parts[0] != http.MethodOptions {
		if !strings.HasPrefix(target, "/") {
			return upstreamRequest{}, fmt.Errorf("target %q is not in origin form", target)
		}
		for i := 0; i < len(target); i++ {
			if target[i] <= ' ' || target[i] >= 0x7f || target[i] == '#' {
				return upstreamRequest{}, fmt.Errorf("target %q has byte %#x", target, target[i])
			}
		}
	}
	hosts, cls, tes := 0, 0, 0
	for _, l := range lines[1:] {
		if l == "" || l[0] == ' ' || l[0] == '\t' {
			return upstreamRequest{}, fmt.Errorf("empty or folded header line %q", l)
		}
		name, value, ok := strings.Cut(l, ":")
		if !ok || !tokenRef(name) {
			return upstreamRequest{}, fmt.Errorf("header line %q", l)
		}
		for i := 0; i < len(value); i++ {
			if c := value[i]; c < ' ' && c != '\t' || c == 0x7f {
				return upstreamRequest{}, fmt.Errorf("header %s has control byte %#x", name, c)
			}
		}
		value = strings.Trim(value, " \t")
		switch textproto.CanonicalMIMEHeaderKey(name) {
		case "Host":
			hosts++
			if value == "" || !httpguts.ValidHostHeader(value) || strings.ContainsAny(value, " \t") {
				return upstreamRequest{}, fmt.Errorf("Host %q", value)
			}
		case "Content-Length":
			cls++
			for i := 0; i < len(value); i++ {
				if value[i] < '0' || value[i] > '9' {
					return upstreamRequest{}, fmt.Errorf("Content-Length %q", value)
				}
			}
			if value == "" {
				return upstreamRequest{}, errors.New("empty Content-Length")
			}
		case "Transfer-Encoding":
			tes++
			if !strings.EqualFold(value, "chunked") {
				return upstreamRequest{}, fmt.Errorf("Transfer-Encoding %q", value)
			}
		}
	}
	switch {
	case hosts != 1:
		return upstreamRequest{}, fmt.Errorf("%d Host fields", hosts)
	case cls > 1 || tes > 1 || cls+tes > 1:
		return upstreamRequest{}, fmt.Errorf("framing: %d Content-Length, %d Transfer-Encoding", cls, tes)
	}
	br := bufio.NewReader(bytes.NewReader(raw))
	req, err := http.ReadRequest(br)
	if err != nil {
		return upstreamRequest{}, fmt.Errorf("net/http: %w", err)
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return upstreamRequest{}, fmt.Errorf("net/http: body: %w", err)
	}
	if br.Buffered() > 0 {
		return upstreamRequest{}, fmt.Errorf("%d bytes after the request", br.Buffered())
	}
	return upstreamRequest{req, body}, nil
}

// tokenRef is RFC 9110's token, by httpguts (not the proxy's own check).
func tokenRef(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !httpguts.IsTokenRune(rune(s[i])) {
			return false
		}
	}
	return true
}

// incomplete is whether net/http would wait for more than raw before it
// is done with its first request (or can refuse it).
func incomplete(raw []byte) bool {
	if !bytes.Contains(raw, []byte("\n\r\n")) && !bytes.Contains(raw, []byte("\n\n")) {
		return true // the header section never ends
	}
	mr := &moreReader{r: bytes.NewReader(raw)}
	req, err := http.ReadRequest(bufio.NewReader(mr))
	if err == nil {
		_, _ = io.Copy(io.Discard, req.Body)
	}
	return mr.wanted
}

// moreReader reads r, then notes that more was wanted.
type moreReader struct {
	r      *bytes.Reader
	wanted bool
}

var errWantMore = errors.New("more bytes wanted")

func (m *moreReader) Read(p []byte) (int, error) {
	if m.r.Len() == 0 {
		m.wanted = true
		return 0, errWantMore
	}
	return m.r.Read(p)
}

// h1Body is the body net/http reads from raw (nil when it reads none).
func h1Body(raw []byte) ([]byte, bool) {
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		return nil, false
	}
	b, err := io.ReadAll(req.Body)
	return b, err == nil
}

func FuzzH1Translation(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /p?q=1&r HTTP/1.1\r\nHost: example.test:8080\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
		"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
		"PUT /x HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n\r\n",
		"GET http://other.test/abs?x HTTP/1.1\r\nHost: a\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n",
		"DELETE /a%20b/%2F HTTP/1.1\r\nHost: [2001:db8::1]:443\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
		// Where sluice's HTTP/1 loop makes net/http's server checks itself.
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: foo\r\n\r\nhi",
		"GET http://h/ HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost:\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
		"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 1.2.3.4\r\nX-Ok: 1\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	// The same input through the HTTP/1 servers: net/http's behind the
	// h2c gate, net/http's on a plain listener and sluice's loop on a
	// plain listener, each checked, and the last two compared.
	rig, nh, loop := newFuzzRig(f), newFuzzRigOn(f, rigNetHTTP), newFuzzRigOn(f, rigLoop)
	f.Fuzz(func(t *testing.T, raw []byte) {
		rig.sendH1(raw)
		statusA := nh.sendH1(raw)
		statusB := loop.sendH1(raw)
		body, ok := h1Body(raw)
		for i, sn := range rig.settle(t) {
			checkSeen(t, sn, body, ok && i == 0)
		}
		a, b := nh.settle(t), loop.settle(t)
		for i, sn := range a {
			checkSeen(t, sn, body, ok && i == 0)
		}
		for i, sn := range b {
			checkSeen(t, sn, body, ok && i == 0)
		}
		sameH1(t, raw, statusA, statusB, a, b)
	})
}

// FuzzHeaderForwarding fuzzes the header section of a GET: hop-by-hop
// removal (Connection lists included) and the forwarding fields.
func FuzzHeaderForwarding(f *testing.F) {
	for _, s := range []string{
		"X-Forwarded-For: 1.2.3.4\r\n",
		"X-Forwarded-For: 1.2.3.4, 5.6.7.8\r\nX-Forwarded-For: 9.9.9.9\r\nForwarded: for=1.1.1.1\r\nX-Real-IP: 2.2.2.2\r\n",
		"Connection: X-Forwarded-For, Keep-Alive\r\nKeep-Alive: 1\r\n",
		"Connection: close\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nVia: 1.0 a\r\n",
		"Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic x\r\nTE: gzip\r\nTrailer: X\r\n",
		"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
		"Accept-Encoding: gzip\r\nAccept-Encoding: br\r\nX-Empty:\r\n",
	} {
		f.Add(s)
	}
	rig, nh, loop := newFuzzRig(f), newFuzzRigOn(f, rigNetHTTP), newFuzzRigOn(f, rigLoop)
	f.Fuzz(func(t *testing.T, fields string) {
		raw := []byte("GET /f HTTP/1.1\r\nHost: fwd.test\r\n" + fields + "\r\n")
		rig.sendH1(raw)
		statusA := nh.sendH1(raw)
		statusB := loop.sendH1(raw)
		for _, sn := range rig.settle(t) {
			checkSeen(t, sn, nil, true)
		}
		a, b := nh.settle(t), loop.settle(t)
		for _, sn := range a {
			checkSeen(t, sn, nil, true)
		}
		for _, sn := range b {
			checkSeen(t, sn, nil, true)
		}
		sameH1(t, raw, statusA, statusB, a, b)
	})
}

// h2Fields builds a request's header list: the pseudo-header fields, then
// the regular ones from extra ("name\x00value\x00…").
func h2Fields(method, authority, path, extra string) []hpack.HeaderField {
	fs := []hpack.HeaderField{
		{Name: ":method", Value: method}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: authority}, {Name: ":path", Value: path},
	}
	parts := strings.Split(extra, "\x00")
	for i := 0; i+1 < len(parts); i += 2 {
		fs = append(fs, hpack.HeaderField{Name: parts[i], Value: parts[i+1]})
	}
	return fs
}

func FuzzH2Translation(f *testing.F) {
	for _, s := range []struct {
		method, authority, path, extra string
		body                           []byte
	}{
		{"GET", "a", "/", "", nil},
		{"GET", "example.test:8443", "/p?q=1", "accept\x00*/*\x00x-forwarded-for\x0010.0.0.1\x00", nil},
		{"POST", "a", "/upload", "content-length\x005\x00", []byte("hello")},
		{"POST", "a", "/stream", "", []byte("no length")},
		{"GET", "a", "/", "cookie\x00a=1\x00cookie\x00b=2\x00te\x00trailers\x00", nil},
		{"GET", "a", "/", "connection\x00close\x00", nil},
		{"OPTIONS", "a", "*", "", nil},
		{"GET /admin HTTP/1.1\tx", "a b/c", "/public x", "", nil},
		{"GET", "a", "/x HTTP/1.1\r\nHost: b", "", nil},
		{"GET", "a", "/", "x_real_ip\x001.2.3.4\x00x-ok\x001\x00", nil},
	} {
		f.Add(s.method, s.authority, s.path, s.extra, s.body)
	}
	rig := newFuzzRig(f)
	f.Fuzz(func(t *testing.T, method, authority, path, extra string, body []byte) {
		if len(body) > 32<<10 {
			body = body[:32<<10] // within the stream window
		}
		fields := h2Fields(method, authority, path, extra)
		rig.sendH2(fields, body)
		for _, sn := range rig.settle(t) {
			checkSeen(t, sn, declaredBody(fields, body), true)
		}
	})
}

// declaredBody is the body a backend may see of an HTTP/2 request with
// these fields and DATA: a content-length shorter than the DATA makes the
// request malformed (RFC 9113 8.1.1), but the server learns it only when
// the excess arrives, and sluice may have forwarded the declared length
// by then — never a byte past it.
func declaredBody(fields []hpack.HeaderField, body []byte) []byte {
	n := -1
	for _, f := range fields {
		if f.Name != "content-length" {
			continue
		}
		v, err := strconv.Atoi(f.Value)
		if err != nil || v < 0 || n >= 0 {
			return body // invalid or repeated: refused before any body is read
		}
		n = v
	}
	if n >= 0 && n < len(body) {
		return body[:n]
	}
	return body
}

// TestFuzzRig: the rig's requests do reach the backend (a fuzz target whose
// requests never got there would pass whatever the translation does), and
// strictRequest refuses what a lenient backend could read two ways.
func TestFuzzRig(t *testing.T) {
	rig := newFuzzRig(t)
	rig.sendH1([]byte("POST /a?b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nhi"))
	rig.sendH2(h2Fields("PUT", "h2.test", "/c", "x-b\x002\x00"), []byte("body"))
	got := rig.settle(t)
	if len(got) != 2 || len(got[0].caps) != 1 || len(got[1].caps) != 1 {
		t.Fatalf("want two requests, each reaching the backend once: %+v", got)
	}
	checkSeen(t, got[0], []byte("hi"), true)
	checkSeen(t, got[1], []byte("body"), true)
	for _, bad := range []string{
		"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nX: y\r\n z\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
	} {
		if _, err := strictRequest([]byte(bad)); err == nil {
			t.Errorf("strictRequest accepted %q", bad)
		}
	}
}
