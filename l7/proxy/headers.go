package proxy

import (
	"bufio"
	"net/http"
	"net/netip"
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

// Forwarding headers (Envoy's use_remote_address is the model). The peer
// is the address the client connection comes from; it is trusted when it
// is in the service's trusted_proxies (default: none).
//
//	header             untrusted peer                 trusted peer
//	X-Forwarded-For    client's value + ", " + peer   same
//	X-Forwarded-Proto  replaced: http or https        kept if sent, else ours
//	X-Forwarded-Host   replaced: the request's Host   kept if sent, else ours
//	X-Real-IP          replaced: the peer's address   kept if sent, else ours
//	Forwarded          replaced: ours                 client's, then ours
//	Via                client's + "1.1 sluice"        same
//
// Ours in Forwarded (RFC 7239) is for=PEER;proto=http|https;host=HOST,
// written only when the peer's address is known; an IPv6 peer is quoted
// and bracketed (for="[2001:db8::1]"), a host that is not a token is
// quoted.
//
// A header the client names in Connection is hop-by-hop and removed first
// (then ours is set as if it had not been sent).

// forwarded is what a request going to a backend carries instead of the
// client's header fields of the same names.
type forwarded struct {
	xff     string // "" when the client address is unknown: the client's passes
	realIP  string // the peer's address ("" when unknown)
	proto   string
	host    string
	via     string
	trusted bool // the peer is a trusted proxy: its forwarding headers are kept
	// elem is whether there is our Forwarded element (the peer is known),
	// and v6 whether it names an IPv6 address.
	elem, v6 bool
}

// peer is a request's peer as sluice judges it: its address (unmapped,
// without zone: a zone, fe80::1%eth0, names one of our interfaces) and
// whether it is a trusted proxy; ok is false when the address is not
// known. ServeHTTP makes it once (parsePeer) for the forwarding headers,
// the per-address limits and trusted request ids.
type peer struct {
	ip          netip.Addr
	trusted, ok bool
}

// parsePeer is the peer remote ("ip:port", a request's RemoteAddr) with
// the service's trusted proxies.
func parsePeer(remote string, trusted []netip.Prefix) peer {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return peer{}
	}
	return peer{ip: ap.Addr().Unmap().WithZone(""), ok: true}.with(trusted)
}

// with is p judged against the trusted proxies (a connection's peer is
// parsed once, the trusted proxies may change with a reload between two
// of its requests).
func (p peer) with(trusted []netip.Prefix) peer {
	p.trusted = p.ok && inPrefixes(p.ip, trusted)
	return p
}

func newForwarded(r *http.Request, p peer) forwarded {
	f := forwarded{proto: "http", host: r.Host, via: via(r)}
	if r.TLS != nil {
		f.proto = "https"
	}
	if p.ok {
		ip := p.ip
		f.trusted = p.trusted
		f.realIP = addrString(r.RemoteAddr, ip)
		f.xff = f.realIP
		f.elem, f.v6 = true, !ip.Is4()
		// A client that names X-Forwarded-For in Connection has it
		// removed as hop-by-hop before ours is added.
		if prior := r.Header["X-Forwarded-For"]; len(prior) > 0 && !namedIn(r.Header["Connection"], "X-Forwarded-For") {
			f.xff = strings.Join(prior, ", ") + ", " + f.realIP
		}
	}
	return f
}

// writeForwardedElem writes our Forwarded field, one element (RFC 7239
// section 4): for=, proto= and host= (when known), quoted where the
// syntax asks. Straight into the request's buffer: no string is made for
// it, as the field goes with every request.
func writeForwardedElem(bw *bufio.Writer, f *forwarded) {
	bw.WriteString("Forwarded: for=")
	if !f.v6 {
		bw.WriteString(f.realIP)
	} else {
		bw.WriteString(`"[`)
		bw.WriteString(f.realIP)
		bw.WriteString(`]"`)
	}
	bw.WriteString(";proto=")
	bw.WriteString(f.proto)
	if f.host != "" {
		bw.WriteString(";host=")
		writeTokenOrQuoted(bw, f.host)
	}
	bw.WriteString("\r\n")
}

// writeTokenOrQuoted writes v as an RFC 9110 token when it is one, else
// as a quoted-string (backslash before '"' and '\\').
// A CR or LF (which no host that reaches here has) is written as a space,
// as writeField does.
func writeTokenOrQuoted(b *bufio.Writer, v string) {
	if isToken(v) {
		b.WriteString(v)
		return
	}
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case '\r', '\n':
			b.WriteByte(' ')
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
}

// addrString is ip as a string, taken from remote (an "ip:port" it was
// parsed from) when that is the same text, without making a new string.
func addrString(remote string, ip netip.Addr) string {
	if i := strings.LastIndexByte(remote, ':'); i > 0 && ip.Is4() {
		if a, err := netip.ParseAddr(remote[:i]); err == nil && a == ip {
			return remote[:i]
		}
	}
	return ip.String()
}

// writeForwardHeader writes the header fields of a request going to a
// backend: the client's, without hop-by-hop ones (and those Connection
// names), Expect, Content-Length and Host (written by the caller), then
// the forwarding ones (see the table above), then Connection and Upgrade
// for an upgrade. It works on the client's header as is: nothing is
// copied.
func writeForwardHeader(bw *bufio.Writer, src http.Header, f *forwarded, upgrade string) {
	conn := src["Connection"]
	sent := func(k string) bool {
		return len(src[k]) > 0 && (len(conn) == 0 || !namedIn(conn, k))
	}
	// given: a trusted peer's forwarding field counts only with a value; an
	// empty one (found by FuzzForwardHeaders) is replaced by ours, as if it
	// had not been sent, rather than passed on empty.
	given := func(k string) bool { return sent(k) && src[k][0] != "" }
	for k, vv := range src {
		switch k {
		case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
			"Te", "Trailer", "Transfer-Encoding", "Upgrade",
			"Expect", "Content-Length", "Host", "Via":
			continue
		case "X-Forwarded-For":
			if f.xff != "" {
				continue
			}
		case "X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-Ip":
			if !f.trusted || !given(k) {
				continue
			}
		case "Forwarded":
			if !f.trusted {
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
	if !f.trusted || !given("X-Forwarded-Proto") {
		writeField(bw, "X-Forwarded-Proto", f.proto)
	}
	if f.host != "" && (!f.trusted || !given("X-Forwarded-Host")) {
		writeField(bw, "X-Forwarded-Host", f.host)
	}
	if f.realIP != "" && (!f.trusted || !given("X-Real-Ip")) {
		writeField(bw, "X-Real-IP", f.realIP)
	}
	if f.elem {
		writeForwardedElem(bw, f)
	}
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
	// (Two byte searches: ContainsAny builds its set on every call, and
	// this runs for every field of every request.)
	if strings.IndexByte(v, '\r') >= 0 || strings.IndexByte(v, '\n') >= 0 {
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

// maxSluiceHops is how many times a request may have passed through sluice
// (its Via entries, of any node) before it is answered 508 Loop Detected:
// a chain of load balancers is two or three deep; a pool whose backend is
// the load balancer itself (the site's public name used as the backend's)
// would otherwise send a request round until client.max_header_count or
// every request slot ran out.
const maxSluiceHops = 5

// sluiceHops counts the elements of the Via fields vv (RFC 9110 7.6.3:
// "protocol received-by [comment]", comma-separated) received by "sluice".
func sluiceHops(vv []string) int {
	n := 0
	for _, v := range vv {
		for v != "" {
			var elem string
			elem, v, _ = strings.Cut(v, ",")
			_, by, ok := strings.Cut(strings.TrimSpace(elem), " ")
			if !ok {
				continue
			}
			by = strings.TrimLeft(by, " \t")
			if by, _, _ = strings.Cut(by, " "); by == "sluice" {
				n++
			}
		}
	}
	return n
}
