package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"net/http"
	"net/netip"
	"net/textproto"
	"reflect"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/l7/service"
)

// wantForwardHeader builds the request header the slow way (clone,
// delete, set) following the table in headers.go; writeForwardHeader
// must give the same fields.
func wantForwardHeader(r *http.Request, upgrade string, trusted bool) http.Header {
	h := r.Header.Clone()
	removeHopByHop(h)
	h.Del("Expect")
	h.Del("Content-Length")
	h.Del("Host")
	if !trusted {
		for _, k := range []string{"X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-Ip", "Forwarded"} {
			h.Del(k)
		}
	}
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		ip := ap.Addr().Unmap().WithZone("").String()
		if h.Get("X-Real-Ip") == "" {
			h.Set("X-Real-Ip", ip)
		}
		// RFC 7239 section 6: an IPv6 node is bracketed, and then quoted
		// (':' is no token character); so is a host with a port.
		node := ip
		if strings.Contains(ip, ":") {
			node = `"[` + ip + `]"`
		}
		elem := "for=" + node + ";proto=" + proto
		if r.Host != "" {
			host := r.Host
			if strings.ContainsAny(host, ":[]\" \\") {
				host = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(host) + `"`
			}
			elem += ";host=" + host
		}
		h.Add("Forwarded", elem)
		if prior := h.Values("X-Forwarded-For"); len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		h.Set("X-Forwarded-For", ip)
	}
	if h.Get("X-Forwarded-Proto") == "" {
		h.Set("X-Forwarded-Proto", proto)
	}
	if h.Get("X-Forwarded-Host") == "" {
		h.Set("X-Forwarded-Host", r.Host)
	}
	h.Add("Via", via(r))
	if upgrade != "" {
		h.Set("Connection", "Upgrade")
		h.Set("Upgrade", upgrade)
	}
	return h
}

func TestWriteForwardHeaderMatchesCloneAndEdit(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header http.Header
		remote string
		tls    bool
		proto  [2]int
	}{
		{"plain", http.Header{"Accept": {"*/*"}, "User-Agent": {"wrk"}}, "198.18.0.9:5000", false, [2]int{1, 1}},
		{"hop-by-hop and named", http.Header{
			"Connection": {"keep-alive, X-Hop", "x-other"}, "X-Hop": {"1"}, "X-Other": {"2"}, "Keep-Alive": {"timeout=5"},
			"Te": {"trailers"}, "Trailer": {"X-T"}, "Transfer-Encoding": {"chunked"}, "Proxy-Authorization": {"Basic x"},
			"Proxy-Connection": {"keep-alive"}, "Expect": {"100-continue"}, "Content-Length": {"5"}, "X-Keep": {"a", "b"},
		}, "198.18.0.9:5000", false, [2]int{1, 1}},
		{"forwarded headers replaced and appended", http.Header{
			"X-Forwarded-For": {"203.0.113.1", "203.0.113.2"}, "X-Forwarded-Proto": {"gopher"},
			"X-Forwarded-Host": {"evil"}, "Via": {"1.0 other"},
		}, "[2001:db8::9]:443", true, [2]int{2, 0}},
		{"forwarded headers named in Connection", http.Header{
			"Connection": {"X-Forwarded-For, Via"}, "X-Forwarded-For": {"203.0.113.1"}, "Via": {"1.0 other"},
		}, "198.18.0.9:5000", false, [2]int{1, 0}},
		{"remote address unknown", http.Header{"X-Forwarded-For": {"203.0.113.1"}}, "pipe", false, [2]int{1, 1}},
		{"upgrade", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Key": {"k"}}, "198.18.0.9:5000", false, [2]int{1, 1}},
		{"spoofed from an untrusted peer", http.Header{
			"X-Forwarded-For": {"10.0.0.1"}, "X-Real-Ip": {"10.0.0.1"}, "Forwarded": {"for=10.0.0.1;proto=https"},
			"X-Forwarded-Proto": {"https"}, "X-Forwarded-Host": {"admin.internal"},
		}, "198.18.0.9:5000", false, [2]int{1, 1}},
		{"from a trusted proxy", http.Header{
			"X-Forwarded-For": {"203.0.113.7"}, "X-Real-Ip": {"203.0.113.7"}, "Forwarded": {"for=203.0.113.7;proto=https"},
			"X-Forwarded-Proto": {"https"}, "X-Forwarded-Host": {"shop.example"},
		}, "198.18.5.1:5000", false, [2]int{1, 1}},
		{"trusted proxy that sets none", http.Header{"Accept": {"*/*"}}, "198.18.5.1:5000", false, [2]int{1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &http.Request{Header: tc.header, RemoteAddr: tc.remote, Host: "shop.example:8080", ProtoMajor: tc.proto[0], ProtoMinor: tc.proto[1]}
			if tc.tls {
				r.TLS = &tls.ConnectionState{}
			}
			up := upgradeType(r, service.DefaultUpgrades())
			trustedNet := []netip.Prefix{netip.MustParsePrefix("198.18.5.0/24")}
			want := wantForwardHeader(r, up, strings.HasPrefix(tc.remote, "198.18.5."))
			var buf bytes.Buffer
			bw := bufio.NewWriter(&buf)
			f := newForwarded(r, parsePeer(r.RemoteAddr, trustedNet))
			writeForwardHeader(bw, r.Header, &f, up)
			bw.WriteString("\r\n")
			bw.Flush()
			mh, err := textproto.NewReader(bufio.NewReader(&buf)).ReadMIMEHeader()
			if err != nil {
				t.Fatalf("%v: %q", err, buf.String())
			}
			if got := http.Header(mh); !reflect.DeepEqual(got, want) {
				t.Errorf("\n got %v\nwant %v", got, want)
			}
		})
	}
}

// Our Forwarded element with IPv4 and IPv6 peers (RFC 7239 section 6:
// IPv6 bracketed and quoted), a host with a port quoted, hostile bytes
// escaped; from an untrusted peer the client's element is dropped.
func TestForwardedElement(t *testing.T) {
	for _, c := range []struct {
		remote, host string
		trusted      bool
		want         []string
	}{
		{"198.18.0.9:5000", "shop.example", false, []string{"for=198.18.0.9;proto=http;host=shop.example"}},
		{"[2001:db8::1]:5000", "shop.example", false, []string{`for="[2001:db8::1]";proto=http;host=shop.example`}},
		{"[::ffff:198.18.0.9]:5000", "shop.example", false, []string{"for=198.18.0.9;proto=http;host=shop.example"}},
		{"[fe80::1%eth0]:5000", "[2001:2::100]:80", false, []string{`for="[fe80::1]";proto=http;host="[2001:2::100]:80"`}},
		{"198.18.0.9:5000", `a"b\c`, false, []string{`for=198.18.0.9;proto=http;host="a\"b\\c"`}},
		// (No Host with CR or LF gets this far; were one to, the field
		// stays one line.)
		{"198.18.0.9:5000", "a\r\nX-Evil: 1", false, []string{`for=198.18.0.9;proto=http;host="a  X-Evil: 1"`}},
		{"[2001:2::5]:5000", "shop.example", true, []string{`for=203.0.113.7`, `for="[2001:2::5]";proto=http;host=shop.example`}},
		{"pipe", "shop.example", false, nil},
	} {
		r := &http.Request{Header: http.Header{"Forwarded": {"for=203.0.113.7"}}, RemoteAddr: c.remote, Host: c.host, ProtoMajor: 1, ProtoMinor: 1}
		var trusted []netip.Prefix
		if c.trusted {
			trusted = []netip.Prefix{netip.MustParsePrefix("2001:2::/48")}
		}
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		f := newForwarded(r, parsePeer(r.RemoteAddr, trusted))
		writeForwardHeader(bw, r.Header, &f, "")
		bw.WriteString("\r\n")
		bw.Flush()
		mh, err := textproto.NewReader(bufio.NewReader(&buf)).ReadMIMEHeader()
		if err != nil {
			t.Fatalf("%v: %q", err, buf.String())
		}
		if got := mh["Forwarded"]; !reflect.DeepEqual(got, c.want) || mh["X-Evil"] != nil {
			t.Errorf("%s Host %q: Forwarded %q, want %q", c.remote, c.host, got, c.want)
		}
	}
}

func TestHostname(t *testing.T) {
	for in, want := range map[string]string{
		"example.com": "example.com", "example.com:8080": "example.com", "198.18.1.1:80": "198.18.1.1",
		"[2001:db8::1]:443": "2001:db8::1", "[2001:db8::1]": "2001:db8::1", "2001:db8::1": "2001:db8::1",
		"": "", "name:": "name",
	} {
		if got := hostname(in); got != want {
			t.Errorf("hostname(%q) = %q, want %q", in, got, want)
		}
	}
}

// addrString takes the address text from RemoteAddr only when it is what
// netip would write (IPv4); IPv6 and mapped addresses are formatted.
func TestAddrString(t *testing.T) {
	for _, c := range []struct{ remote, want string }{
		{"198.18.0.7:4242", "198.18.0.7"},
		{"[2001:2::7]:4242", "2001:2::7"},
		{"[::ffff:198.18.0.7]:4242", "198.18.0.7"},
	} {
		ap := netip.MustParseAddrPort(c.remote)
		if got := addrString(c.remote, ap.Addr().Unmap()); got != c.want {
			t.Errorf("addrString(%q) = %q, want %q", c.remote, got, c.want)
		}
	}
}

// writeField never writes a CR or LF inside a field (a value that would
// split the header), and trims the value as net/http does.
func TestWriteField(t *testing.T) {
	for v, want := range map[string]string{
		"plain":              "K: plain\r\n",
		" padded\t":          "K: padded\r\n",
		"a\r\nInjected: yes": "K: a  Injected: yes\r\n",
		"lf\nonly":           "K: lf only\r\n",
		"cr\ronly":           "K: cr only\r\n",
	} {
		var b bytes.Buffer
		bw := bufio.NewWriter(&b)
		writeField(bw, "K", v)
		bw.Flush()
		if b.String() != want {
			t.Errorf("writeField(%q) wrote %q, want %q", v, b.String(), want)
		}
	}
}
