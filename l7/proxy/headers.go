package proxy

import (
	"net"
	"net/http"
	"net/textproto"
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
		h.Del(name)
	}
}

// forwardedHeaders sets X-Forwarded-For (appended), X-Forwarded-Proto,
// X-Forwarded-Host and Via on a request going to a backend.
func forwardedHeaders(h http.Header, r *http.Request) {
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := h.Values("X-Forwarded-For"); len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		h.Set("X-Forwarded-For", ip)
	}
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	h.Set("X-Forwarded-Proto", proto)
	h.Set("X-Forwarded-Host", r.Host)
	h.Add("Via", via(r))
}

// via is this hop's Via entry: the protocol version received and our name.
func via(r *http.Request) string {
	if r.ProtoMajor >= 2 {
		return "2 sluice"
	}
	return "1." + string(rune('0'+r.ProtoMinor)) + " sluice"
}

// hostname strips the port of a Host header value.
func hostname(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
}
