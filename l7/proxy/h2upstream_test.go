package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/sluicelb/sluice/l7/retry"
	"github.com/sluicelb/sluice/userspace/pool"
)

// h2cTestBackend is an HTTP/2 (h2c) backend on loopback counting its
// connections and requests.
type h2cTestBackend struct {
	addr  netip.AddrPort
	conns atomic.Int64
	reqs  atomic.Int64
}

func newH2CBackend(t *testing.T, h http.HandlerFunc) *h2cTestBackend {
	t.Helper()
	b := &h2cTestBackend{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			http.Error(w, "HTTP/2 only", http.StatusHTTPVersionNotSupported)
			return
		}
		b.reqs.Add(1)
		h(w, r)
	}))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			b.conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	b.addr = netip.MustParseAddrPort(srv.Listener.Addr().String())
	return b
}

// grpcAnswer answers like a gRPC server: a message, then grpc-status in
// an unannounced trailer.
func grpcAnswer(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/grpc")
	w.WriteHeader(200)
	io.WriteString(w, "\x00\x00\x00\x00\x02hi")
	w.Header().Set(http.TrailerPrefix+"Grpc-Status", "0")
	w.Header().Set(http.TrailerPrefix+"Grpc-Message", "fine")
}

// grpcUnavailable answers like a gRPC server that is unavailable: a
// trailers-only response (grpc-status in the header, no message).
func grpcUnavailable(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/grpc")
	w.Header().Set("Grpc-Status", "14")
	w.Header().Set("Grpc-Message", "going away")
	w.WriteHeader(200)
}

func startH2Upstream(t *testing.T, mod func(*Options), addrs ...netip.AddrPort) *harness {
	t.Helper()
	h := start(t, newPool(t, nil, addrs...), func(o *Options) {
		o.H2C = true
		o.Upstream.Protocol = ProtocolH2C
		o.Selector = preferSelector(addrs)
		if mod != nil {
			mod(o)
		}
	})
	tr := &http.Transport{}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	h.client = &http.Client{Transport: tr, Timeout: 20 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	return h
}

type grpcLogLine struct {
	Status     int    `json:"status"`
	GRPCStatus string `json:"grpc_status"`
	Tries      int    `json:"tries"`
	Try        []struct {
		Backend    string `json:"backend"`
		GRPCStatus string `json:"grpc_status"`
		Reused     bool   `json:"reused"`
		Retry      bool   `json:"retry"`
		Why        string `json:"why"`
	} `json:"try"`
}

func (s *syncBuffer) grpcLines(t *testing.T) []grpcLogLine {
	t.Helper()
	var out []grpcLogLine
	for l := range strings.SplitSeq(strings.TrimSpace(s.String()), "\n") {
		var ll grpcLogLine
		if err := json.Unmarshal([]byte(l), &ll); err != nil {
			t.Fatalf("access log line %q: %v", l, err)
		}
		out = append(out, ll)
	}
	return out
}

func grpcCall(t *testing.T, h *harness, path string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", h.url+path, strings.NewReader("\x00\x00\x00\x00\x02yo"))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func TestH2UpstreamTrailersAndSharedConnection(t *testing.T) {
	b := newH2CBackend(t, grpcAnswer)
	h := startH2Upstream(t, nil, b.addr)
	for i := range 3 {
		resp := grpcCall(t, h, "/pkg.Echo/Say")
		if resp.StatusCode != 200 || resp.Trailer.Get("Grpc-Status") != "0" || resp.Trailer.Get("Grpc-Message") != "fine" {
			t.Fatalf("call %d: %d, trailer %v", i, resp.StatusCode, resp.Trailer)
		}
	}
	if n := b.conns.Load(); n != 1 {
		t.Fatalf("backend saw %d connections for 3 calls, want 1 (shared)", n)
	}
	ls := h.access.grpcLines(t)
	if len(ls) != 3 || ls[2].GRPCStatus != "0" || !ls[2].Try[0].Reused {
		t.Fatalf("access log %+v", ls)
	}
}

// The client's request trailers (an HTTP/1.1 chunked body's, announced)
// reach an HTTP/2 backend after the body; hop-by-hop ones do not.
func TestH2UpstreamRequestTrailers(t *testing.T) {
	got := make(chan http.Header, 1)
	b := newH2CBackend(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		got <- r.Trailer.Clone()
	})
	for _, h2c := range []bool{true, false} { // net/http's HTTP/1 server, the loop
		h := start(t, newPool(t, nil, b.addr), func(o *Options) {
			o.H2C, o.Upstream.Protocol = h2c, ProtocolH2C
		})
		postTrailers(t, h, "Trailer: X-Checksum, Keep-Alive, X_Checksum\r\n")
		if tr := <-got; tr.Get("X-Checksum") != "42" || len(tr) != 1 {
			t.Fatalf("h2c %v: backend trailer %v, want X-Checksum: 42 alone", h2c, tr)
		}
	}
}

func TestH2UpstreamGRPCUnavailableRetried(t *testing.T) {
	bad := newH2CBackend(t, grpcUnavailable)
	good := newH2CBackend(t, grpcAnswer)
	h := startH2Upstream(t, func(o *Options) {
		o.Service.Retry.Methods = append(o.Service.Retry.Methods, "/pkg.Echo/*")
	}, bad.addr, good.addr)
	resp := grpcCall(t, h, "/pkg.Echo/Say")
	if resp.Trailer.Get("Grpc-Status") != "0" {
		t.Fatalf("not failed over: header %v trailer %v", resp.Header, resp.Trailer)
	}
	l := h.access.grpcLines(t)[0]
	if l.Tries != 2 || l.Try[0].GRPCStatus != "14" || !l.Try[0].Retry || l.GRPCStatus != "0" {
		t.Fatalf("access log %+v", l)
	}
	// A method retry.methods does not list: the UNAVAILABLE goes to the client.
	resp = grpcCall(t, h, "/pkg.Other/Say")
	if resp.Header.Get("Grpc-Status") != "14" {
		t.Fatalf("retried a method not in retry.methods: %v %v", resp.Header, resp.Trailer)
	}
	l = h.access.grpcLines(t)[1]
	if l.Tries != 1 || l.GRPCStatus != "14" || !strings.Contains(l.Try[0].Why, "not in retry.methods") {
		t.Fatalf("access log %+v", l)
	}
	if bad.reqs.Load() != 2 || good.reqs.Load() != 1 {
		t.Fatalf("requests bad %d good %d", bad.reqs.Load(), good.reqs.Load())
	}
}

func TestH2UpstreamGRPCUnavailableEjects(t *testing.T) {
	bad := newH2CBackend(t, grpcUnavailable)
	good := newH2CBackend(t, grpcAnswer)
	h := startH2Upstream(t, func(o *Options) {
		o.Service.Retry = &retry.Config{Attempts: 1, On: retry.DefaultOn(), BufferBytes: 1 << 10}
	}, bad.addr, good.addr)
	// ejection.on's default counts grpc-unavailable: 3 failures eject.
	for range 3 {
		grpcCall(t, h, "/pkg.Echo/Say")
	}
	before := good.reqs.Load()
	for range 3 {
		if resp := grpcCall(t, h, "/pkg.Echo/Say"); resp.Trailer.Get("Grpc-Status") != "0" {
			t.Fatalf("the ejected backend still answers: %v", resp.Header)
		}
	}
	if good.reqs.Load() != before+3 || bad.reqs.Load() != 3 {
		t.Fatalf("requests bad %d good %d", bad.reqs.Load(), good.reqs.Load()-before)
	}
}

// A streaming call: the client sends its next message only after the
// echo of the previous one came back through sluice.
func TestH2UpstreamStreamingEcho(t *testing.T) {
	b := newH2CBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(200)
		rc := http.NewResponseController(w)
		rc.Flush()
		br := bufio.NewReader(r.Body)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				break
			}
			io.WriteString(w, "echo "+line)
			rc.Flush()
		}
		w.Header().Set(http.TrailerPrefix+"Grpc-Status", "0")
	})
	h := startH2Upstream(t, nil, b.addr)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", h.url+"/pkg.Echo/Chat", pr)
	req.Header.Set("Content-Type", "application/grpc")
	done := make(chan *http.Response, 1)
	go func() {
		resp, err := h.client.Do(req)
		if err != nil {
			t.Error(err)
			close(done)
			return
		}
		done <- resp
	}()
	io.WriteString(pw, "one\n")
	resp := <-done
	if resp == nil {
		t.FailNow()
	}
	br := bufio.NewReader(resp.Body)
	for _, m := range []string{"one", "two", "three"} {
		if m != "one" {
			io.WriteString(pw, m+"\n")
		}
		got, err := br.ReadString('\n')
		if err != nil || got != "echo "+m+"\n" {
			t.Fatalf("got %q, %v", got, err)
		}
	}
	pw.Close()
	io.ReadAll(br)
	resp.Body.Close()
	if resp.Trailer.Get("Grpc-Status") != "0" {
		t.Fatalf("trailer %v", resp.Trailer)
	}
}

func TestH2UpstreamRetireDrains(t *testing.T) {
	b := newH2CBackend(t, grpcAnswer)
	h := startH2Upstream(t, nil, b.addr)
	grpcCall(t, h, "/pkg.Echo/Say")
	if s := h.srv.UpstreamStats(b.addr); s.Idle != 1 || s.Dialled != 1 {
		t.Fatalf("stats %+v", s)
	}
	h.srv.AddressChanged(b.addr, pool.Draining)
	if s := h.srv.UpstreamStats(b.addr); s.Idle != 0 {
		t.Fatalf("idle HTTP/2 connection kept after its address left active: %+v", s)
	}
}

// upstream.protocol h2: HTTP/2 over TLS (ALPN h2), the certificate
// verified as for HTTP/1.1 over TLS.
func TestH2UpstreamTLS(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(grpcAnswer))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	addr := netip.MustParseAddrPort(srv.Listener.Addr().String())
	h := startH2Upstream(t, func(o *Options) {
		o.Upstream.Protocol = ProtocolH2
		o.Upstream.TLS = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}, addr)
	resp := grpcCall(t, h, "/pkg.Echo/Say")
	if resp.Trailer.Get("Grpc-Status") != "0" {
		t.Fatalf("over h2: %d %v %v", resp.StatusCode, resp.Header, resp.Trailer)
	}
}

func TestH2UpstreamProtocolNeedsTLS(t *testing.T) {
	_, err := New(Options{Service: testService(), Pool: newPool(t, nil), Upstream: UpstreamOptions{Protocol: ProtocolH2}})
	if err == nil || !strings.Contains(err.Error(), "upstream protocol h2") {
		t.Fatalf("h2 without TLS: %v", err)
	}
	_, err = New(Options{Service: testService(), Pool: newPool(t, nil), Upstream: UpstreamOptions{Protocol: "http2"}})
	if err == nil {
		t.Fatal("unknown protocol accepted")
	}
}

func TestH2Unprocessed(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{http2.StreamError{StreamID: 3, Code: http2.ErrCodeRefusedStream}, true},
		{http2.StreamError{StreamID: 3, Code: http2.ErrCodeInternal}, false},
		{errors.New("http2: Transport received Server's graceful shutdown GOAWAY"), true},
		{errors.New("http2: client conn not usable"), true},
		{io.ErrUnexpectedEOF, false},
	} {
		if got := h2Unprocessed(tc.err); got != tc.want {
			t.Errorf("%v: %v, want %v", tc.err, got, tc.want)
		}
	}
}
