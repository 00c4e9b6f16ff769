package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/sluicelb/sluice/l7/service"
)

// Strict translation: whatever a client sent (HTTP/1.1 or HTTP/2), what
// sluice writes to a backend is well-formed HTTP/1.1. net/http's HTTP/1
// parser already refuses invalid methods, header names and values with
// control characters, but its HTTP/2 server checks pseudo-header values
// only for CR, LF and NUL: a `:method` or `:path` with a space or a tab
// would become a second request line upstream. So the request every try
// sends is checked here, once, whatever the protocol it came in: method a
// token, target in origin form (or `*` for OPTIONS) of visible ASCII,
// Host a valid host[:port], header names tokens, header values without
// control characters (HTAB allowed). A request that fails gets 400 and
// never reaches a backend. There is one parser (net/http's) and one
// writer (writeRequest); nothing else reads client bytes.

// errBadRequest marks a request refused by the strict checks.
var errBadRequest = errors.New("invalid request")

// errUnderscore marks a request refused for a header name with an
// underscore (client.underscore_headers: reject).
var errUnderscore = errors.New("an underscore in its name (client.underscore_headers: reject)")

// tchar is RFC 9110's token character set.
var tchar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return
}()

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tchar[s[i]] {
			return false
		}
	}
	return true
}

// validTarget reports whether uri is an origin-form request target (or
// "*" for OPTIONS) made of visible ASCII only: no space, no control
// character, no fragment, and every '%' followed by two hex digits
// (RFC 3986 pct-encoded). net/http refuses a bad escape in an HTTP/1.1
// request line; an HTTP/2 :path reaches us unparsed, and a backend's
// parser would refuse (or worse, read differently) what we wrote.
func validTarget(method, uri string) bool {
	if uri == "*" {
		return method == http.MethodOptions
	}
	if uri == "" || uri[0] != '/' {
		return false
	}
	for i := 0; i < len(uri); i++ {
		c := uri[i]
		if c <= ' ' || c >= 0x7f || c == '#' {
			return false
		}
		if c == '%' && (i+2 >= len(uri) || !isHex(uri[i+1]) || !isHex(uri[i+2])) {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// validHost reports whether h is a valid Host value: a host name (letters,
// digits, '-', '.', '_'), an IPv4 address or a bracketed IPv6 literal,
// optionally followed by ':' and a port.
func validHost(h string) bool {
	if h == "" {
		return false
	}
	host, port := h, ""
	if h[0] == '[' {
		i := strings.IndexByte(h, ']')
		if i < 0 {
			return false
		}
		host, port = h[1:i], h[i+1:]
		if port != "" && port[0] != ':' {
			return false
		}
		for j := 0; j < len(host); j++ {
			c := host[j]
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == ':' || c == '.') {
				return false
			}
		}
		if host == "" {
			return false
		}
	} else {
		if i := strings.IndexByte(h, ':'); i >= 0 {
			host, port = h[:i], h[i:]
		}
		if host == "" || len(host) > 253 {
			return false
		}
		for j := 0; j < len(host); j++ {
			c := host[j]
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '.' || c == '_') {
				return false
			}
		}
	}
	if port != "" {
		p := port[1:]
		if len(p) == 0 || len(p) > 5 {
			return false
		}
		n, err := strconv.Atoi(p)
		if err != nil || n > 65535 || p[0] == '+' || p[0] == '-' {
			return false
		}
	}
	return true
}

// validFieldValue reports whether v may be written as a header field
// value: no control character but HTAB (obs-text is passed on).
func validFieldValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// checkOutgoing checks the request every try sends; the error says what
// is wrong (for the 400 and the access log). underscores is
// client.underscore_headers: a header field whose name has an underscore
// is removed (drop: dropped says so), refused (reject) or kept (allow).
func checkOutgoing(out *outRequest, underscores string) (dropped bool, err error) {
	if !isToken(out.method) {
		return false, errors.Join(errBadRequest, errors.New("the method is not a token"))
	}
	if !validTarget(out.method, out.uri) {
		return false, errors.Join(errBadRequest, errors.New("the request target is not in origin form (or * for OPTIONS) of visible ASCII"))
	}
	if out.host != "" && !validHost(out.host) || out.fwd.host != "" && !validHost(out.fwd.host) {
		return false, errors.Join(errBadRequest, errors.New("the Host is not a valid host[:port]"))
	}
	out.underscoreOK = underscores == service.UnderscoreAllow
	for k, vv := range out.header {
		if !isToken(k) {
			return false, errors.Join(errBadRequest, errors.New("a header name is not a token"))
		}
		if underscores != service.UnderscoreAllow && strings.IndexByte(k, '_') >= 0 {
			if underscores == service.UnderscoreReject {
				return false, errors.Join(errBadRequest, fmt.Errorf("header %s: %w", k, errUnderscore))
			}
			delete(out.header, k)
			dropped = true
			continue
		}
		for _, v := range vv {
			if !validFieldValue(v) {
				return false, errors.Join(errBadRequest, errors.New("header "+k+" has a control character in its value"))
			}
		}
	}
	return dropped, nil
}
