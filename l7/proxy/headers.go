package proxy

import (
	"bufio"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
)

// hopByHop are the headers meant for one connection only (RFC 9110 7.6.1),
// never forwarded. Headers named in Connection are removed as well.
var hopByHop = [...]string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

// removeHopByHop deletes hop-by-hop headers from h, including every header
// the Connection header names.
func removeHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopByHop {
		delete(h, name) // canonical already
	}
}

// forwarded is what a request going to a backend carries instead of the
// client's header fields of the same names: X-Forwarded-For (appended to),
// X-Forwarded-Proto, X-Forwarded-Host, and this hop's Via entry after the
// client's.
type forwarded struct {
	xff   string // "" when the client address is unknown: the client's passes
	proto string
	host  string
	via   string
}

func newForwarded(r *http.Request) forwarded {
	f := forwarded{proto: "http", host: r.Host, via: via(r)}
	if r.TLS != nil {
		f.proto = "https"
	}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		f.xff = ip
		// A client that names X-Forwarded-For in Connection has it
		// removed as hop-by-hop before ours is added.
		if prior := r.Header["X-Forwarded-For"]; len(prior) > 0 && !namedIn(r.Header["Connection"], "X-Forwarded-For") {
			f.xff = strings.Join(prior, ", ") + ", " + ip
		}
	}
	return f
}

// writeForwardHeader writes the header fields of a request going to a
// backend: the client's, without hop-by-hop ones (and those Connection
// names), Expect, Content-Length and Host (written by the caller), then
// the forwarded ones, then Connection and Upgrade for an upgrade. It works
// on the client's header as is: nothing is copied.
func writeForwardHeader(bw *bufio.Writer, src http.Header, f *forwarded, upgrade string) {
	conn := src["Connection"]
	for k, vv := range src {
		switch k {
		case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
			"Te", "Trailer", "Transfer-Encoding", "Upgrade",
			"Expect", "Content-Length", "Host", "X-Forwarded-Proto", "X-Forwarded-Host", "Via":
			continue
		case "X-Forwarded-For":
			if f.xff != "" {
				continue
			}
		}
		if len(conn) > 0 && namedIn(conn, k) {
			continue
		}
		for _, v := range vv {
			writeField(bw, k, v)
		}
	}
	if f.xff != "" {
		writeField(bw, "X-Forwarded-For", f.xff)
	}
	writeField(bw, "X-Forwarded-Proto", f.proto)
	writeField(bw, "X-Forwarded-Host", f.host)
	if len(conn) == 0 || !namedIn(conn, "Via") {
		for _, v := range src["Via"] {
			writeField(bw, "Via", v)
		}
	}
	writeField(bw, "Via", f.via)
	if upgrade != "" {
		writeField(bw, "Connection", "Upgrade")
		writeField(bw, "Upgrade", upgrade)
	}
}

// namedIn reports whether a Connection header lists name.
func namedIn(conn []string, name string) bool {
	for _, v := range conn {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(tok), name) {
				return true
			}
		}
	}
	return false
}

// writeField writes one header field. Line breaks in v become spaces, as
// http.Header.Write does (the server already refuses them in requests;
// this is a safety net).
func writeField(bw *bufio.Writer, k, v string) {
	if strings.ContainsAny(v, "\r\n") {
		v = strings.Map(func(r rune) rune {
			if r == '\r' || r == '\n' {
				return ' '
			}
			return r
		}, v)
	}
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(textproto.TrimString(v))
	bw.WriteString("\r\n")
}

// via is this hop's Via entry: the protocol version received and our name.
func via(r *http.Request) string {
	switch {
	case r.ProtoMajor >= 2:
		return "2 sluice"
	case r.ProtoMinor == 1:
		return "1.1 sluice"
	case r.ProtoMinor == 0:
		return "1.0 sluice"
	}
	return "1." + strconv.Itoa(r.ProtoMinor) + " sluice"
}

// hostname strips the port of a Host header value.
func hostname(host string) string {
	if strings.HasPrefix(host, "[") {
		if i := strings.IndexByte(host, ']'); i > 0 {
			return host[1:i] // [v6] or [v6]:port
		}
		return host[1:]
	}
	if i := strings.IndexByte(host, ':'); i >= 0 && strings.IndexByte(host[i+1:], ':') < 0 {
		return host[:i] // name:port or v4:port
	}
	return host // no port, or a bare IPv6 address
}
