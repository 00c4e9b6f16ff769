package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net/http"
	"net/netip"
	"net/textproto"
	"reflect"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/l7/service"
)

// translate runs the request path up to the bytes written upstream: the
// outgoing request built from r, the strict checks, writeRequest. ok is
// false when the checks refuse r (it would get 400).
func translate(t *testing.T, r *http.Request, body []byte, trusted []netip.Prefix) (out []byte, ok bool) {
	st := &settings{svc: service.Config{Host: service.HostKeep, Upgrades: service.DefaultUpgrades(), TrustedProxies: trusted}}
	var o outRequest
	b := &o.bodyStore
	var rd io.Reader
	cl := int64(len(body))
	if r.ContentLength < 0 {
		cl = -1
	}
	if len(body) > 0 || cl < 0 {
		rd = bytes.NewReader(body)
	}
	if err := b.init(rd, cl, 1<<20, nil); err != nil {
		t.Fatalf("body: %v", err)
	}
	(&Server{}).outgoing(&o, st, r, parsePeer(r.RemoteAddr, trusted), b)
	if _, err := checkOutgoing(&o, service.UnderscoreAllow); err != nil {
		return nil, false
	}
	if o.host == "" {
		o.host = "198.18.2.11:80" // what exchange does for an HTTP/1.0 request without Host
	}
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	if err := writeRequest(bw, &o); err != nil {
		t.Fatalf("writeRequest: %v", err)
	}
	return buf.Bytes(), true
}

// checkUpstream parses what was written upstream with net/http's strict
// HTTP/1.1 parser and checks it is one request with the semantics of the
// input: method, target, Host, body, and every client header field that
// is not hop-by-hop or a forwarding one, with its values.
func checkUpstream(t *testing.T, raw []byte, method, target, host string, body []byte, hdr http.Header) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(raw))
	up, err := http.ReadRequest(br)
	if err != nil {
		t.Fatalf("upstream bytes do not parse: %v\n%q", err, raw)
	}
	got, err := io.ReadAll(up.Body)
	if err != nil {
		t.Fatalf("upstream body: %v\n%q", err, raw)
	}
	if br.Buffered() != 0 {
		t.Fatalf("bytes after the upstream request (a second request?):\n%q", raw)
	}
	if up.Method != method || up.RequestURI != target || (host != "" && up.Host != host) {
		t.Fatalf("upstream %s %s Host %q, want %s %s Host %q\n%q", up.Method, up.RequestURI, up.Host, method, target, host, raw)
	}
	if !bytes.Equal(got, body) {
		t.Fatalf("upstream body %q, want %q", got, body)
	}
	skip := map[string]bool{"Host": true, "Content-Length": true, "Transfer-Encoding": true, "Expect": true, "Via": true,
		"X-Forwarded-For": true, "X-Forwarded-Proto": true, "X-Forwarded-Host": true, "X-Real-Ip": true, "Forwarded": true}
	conn := hdr["Connection"]
	for k, vv := range hdr {
		ck := textproto.CanonicalMIMEHeaderKey(k)
		if skip[ck] || slicesContains(hopByHop[:], ck) || namedIn(conn, ck) {
			continue
		}
		want := make([]string, len(vv))
		for i, v := range vv {
			want[i] = textproto.TrimString(v)
		}
		if !reflect.DeepEqual(up.Header[ck], want) {
			t.Fatalf("header %s upstream %q, want %q\n%q", ck, up.Header[ck], want, raw)
		}
	}
}

func slicesContains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// FuzzTranslateH1: any HTTP/1.x request net/http's parser accepts and the
// strict checks let through is written upstream as exactly one well-formed
// HTTP/1.1 request with the same method, target, Host, body and headers.
func FuzzTranslateH1(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
		"POST /a?b=c HTTP/1.1\r\nHost: web:8080\r\nContent-Length: 3\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nG\r\n0\r\n\r\n",
		"GET http://other/x HTTP/1.1\r\nHost: web\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, X-A\r\nUpgrade: h2c\r\nX-A: 1\r\nX-B: 2\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: web\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web\r\nX-Folded: a\r\n b\r\n\r\n",
		"GPOST /hidden HTTP/1.1\r\nHost: web\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(in)))
		if err != nil || r.Method == "PRI" || r.Method == "CONNECT" {
			return // refused by net/http, or by admit
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return // a body the client did not deliver: refused
		}
		r.RemoteAddr = "198.18.0.9:5000"
		raw, ok := translate(t, r, body, nil)
		if !ok {
			return
		}
		target := r.RequestURI
		if target == "" || target[0] != '/' && target != "*" {
			target = r.URL.RequestURI()
		}
		checkUpstream(t, raw, r.Method, target, r.Host, body, r.Header)
	})
}

// FuzzTranslateH2: whatever an HTTP/2 client puts in :method, :path,
// :authority and its header fields (net/http's HTTP/2 server checks little
// more than CR, LF and NUL), the request is refused or written upstream as
// exactly one well-formed HTTP/1.1 request with those semantics.
func FuzzTranslateH2(f *testing.F) {
	f.Add("GET", "/", "web", "x-a", "1", []byte(nil))
	f.Add("GET", "/admin?x=1 HTTP/1.1\tfoo /public x", "web", "x-a", "1", []byte(nil))
	f.Add("GET /x HTTP/1.1\r\nX: y", "/", "a b/c", "x-a", "b\x7fc", []byte(nil))
	f.Add("POST", "/upload", "web:443", "content-type", "text/plain", []byte("hello"))
	f.Add("OPTIONS", "*", "[2001:db8::1]:8443", "te", "trailers", []byte(nil))
	f.Fuzz(func(t *testing.T, method, path, authority, name, value string, body []byte) {
		for _, s := range []string{method, path, authority, name, value} {
			if strings.ContainsAny(s, "\r\n\x00") {
				return // refused by net/http's HTTP/2 server
			}
		}
		hdr := http.Header{}
		if name != "" {
			hdr.Add(textproto.CanonicalMIMEHeaderKey(name), value)
		}
		r := &http.Request{
			Method: method, RequestURI: path, Host: authority, Header: hdr,
			Proto: "HTTP/2.0", ProtoMajor: 2, RemoteAddr: "198.18.0.9:5000",
			ContentLength: int64(len(body)), TLS: &tls.ConnectionState{},
		}
		raw, ok := translate(t, r, body, nil)
		if !ok {
			return
		}
		checkUpstream(t, raw, method, path, authority, body, hdr)
	})
}

// FuzzForwardHeaders: for any client header and peer, trusted or not, the
// forwarding headers written are those of the table in headers.go (a
// clone-and-edit reference), and they parse.
func FuzzForwardHeaders(f *testing.F) {
	f.Add("X-Forwarded-For", "203.0.113.1", "X-Real-Ip", "10.0.0.1", "198.18.0.9:5000", false)
	f.Add("Forwarded", "for=10.0.0.1", "X-Forwarded-Proto", "https", "198.18.5.1:5000", true)
	f.Add("Connection", "X-Forwarded-For, Via", "Via", "1.0 other", "[2001:db8::9]:443", false)
	f.Add("X-Forwarded-Host", "admin.internal", "Accept", "*/*", "pipe", true)
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, remote string, trusted bool) {
		hdr := http.Header{}
		for _, kv := range [][2]string{{k1, v1}, {k2, v2}} {
			if !isToken(kv[0]) || !validFieldValue(kv[1]) {
				return // refused before (400)
			}
			hdr.Add(textproto.CanonicalMIMEHeaderKey(kv[0]), kv[1])
		}
		r := &http.Request{Header: hdr, RemoteAddr: remote, Host: "shop.example", ProtoMajor: 1, ProtoMinor: 1}
		var nets []netip.Prefix
		if ap, err := netip.ParseAddrPort(remote); err == nil && trusted {
			nets = append(nets, netip.PrefixFrom(ap.Addr().Unmap(), ap.Addr().Unmap().BitLen()))
		}
		isTrusted := len(nets) > 0
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		fw := newForwarded(r, parsePeer(r.RemoteAddr, nets))
		writeForwardHeader(bw, hdr, &fw, "")
		bw.WriteString("\r\n")
		bw.Flush()
		mh, err := textproto.NewReader(bufio.NewReader(&buf)).ReadMIMEHeader()
		if err != nil {
			t.Fatalf("written header does not parse: %v\n%q", err, buf.String())
		}
		// net/http splits an IPv6 RemoteAddr the way the reference does
		// only when it is a valid address: compare on valid peers.
		if _, err := netip.ParseAddrPort(remote); err != nil && remote != "pipe" {
			return
		}
		want := wantForwardHeader(r, "", isTrusted)
		for k, vv := range want {
			for i := range vv {
				vv[i] = textproto.TrimString(vv[i])
			}
			want[k] = vv
		}
		if got := http.Header(mh); !reflect.DeepEqual(got, want) {
			t.Fatalf("\n got %v\nwant %v\n%q", got, want, buf.String())
		}
	})
}
