package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"golang.org/x/net/http2"

	"github.com/sluicelb/sluice/l7/service"
)

// HTTP/2 of the client side.
//
// HTTP/2 (ALPN h2 on a TLS listener, prior knowledge with `h2c: true`) is
// served by golang.org/x/net/http2 with the settings of s.http.HTTP2 (the
// service's client.h2_* keys: Envoy's edge defaults; the header list is
// bounded by client.max_header_bytes). Every HTTP/2 connection is read
// through a frameGuard (h2guard.go), which makes the server refuse what
// RFC 9113 calls malformed but x/net answers with a 400 (connection-specific
// header fields, TE other than "trailers": a stream error PROTOCOL_ERROR
// instead) or passes on without its body (an invalid content-length),
// accepts a SETTINGS frame that repeats a parameter (x/net refuses it),
// and closes with GOAWAY ENHANCE_YOUR_CALM a connection whose client
// resets most of its streams (rapid reset, client.h2_max_reset_streams).
//
// The request side of rapid reset (a reset stream must not cost a backend
// connection) is in the handler: see clientWatch.

// Names of the frame guard's refusals, as Observer.Refused gives them
// (sluice_l7_refused_total's limit label).
const (
	limitH2Resets    = "h2_resets"    // a connection closed for rapid reset
	limitH2Malformed = "h2_malformed" // a request refused by the guard (RST_STREAM)
	limitH2Flood     = "h2_flood"     // a connection closed for frames that do no work
)

// setupHTTP2 makes s.http serve HTTP/2 through a frameGuard, on TLS
// connections that negotiate h2 and on h2c (prior knowledge) ones.
func (s *Server) setupHTTP2(cl service.ClientLimits) error {
	// The settings come from s.http.HTTP2 (x/net reads them there).
	h2 := &http2.Server{
		IdleTimeout: s.http.IdleTimeout,
		CountError: func(errType string) {
			s.log.Debug("http2 client error", "error", errType)
		},
	}
	// ConfigureServer ties h2's connections to s.http's Shutdown (GOAWAY
	// to every connection) and sets up ALPN; its TLSNextProto entries are
	// replaced below so that every connection goes through a frameGuard.
	if err := http2.ConfigureServer(s.http, h2); err != nil {
		return fmt.Errorf("service %s: http2: %w", s.name, err)
	}
	maxFrame := 16 << 10
	if s.http.HTTP2 != nil && s.http.HTTP2.MaxReadFrameSize > 0 {
		maxFrame = s.http.HTTP2.MaxReadFrameSize
	}
	lim := guardLimits{
		maxFrame:     maxFrame,
		maxResets:    cl.H2MaxResetStreams,
		maxHeaderStr: s.http.MaxHeaderBytes + 4096,
		onMalformed:  func() { s.obs.Refused(s.name, limitH2Malformed) },
		onAbuse: func(c net.Conn, streams, resets int) {
			s.obs.Refused(s.name, limitH2Resets)
			s.log.Info("http2 client reset most of its streams: GOAWAY ENHANCE_YOUR_CALM, connection closed",
				"client", c.RemoteAddr().String(), "streams", streams, "resets", resets)
		},
		onFlood: func(c net.Conn, what string, n int) {
			s.obs.Refused(s.name, limitH2Flood)
			s.log.Info("http2 client flooded frames that do no work: GOAWAY ENHANCE_YOUR_CALM, connection closed",
				"client", c.RemoteAddr().String(), "frames", what, "count", n)
		},
	}
	s.h2serve = func(hs *http.Server, c net.Conn, h http.Handler, sawPreface bool) {
		var ctx context.Context
		if bc, ok := h.(interface{ BaseContext() context.Context }); ok {
			ctx = bc.BaseContext()
		}
		h2.ServeConn(newFrameGuard(c, lim, sawPreface), &http2.ServeConnOpts{
			Context: ctx, Handler: h, BaseConfig: hs, SawClientPreface: sawPreface,
		})
	}
	s.http.TLSNextProto[http2.NextProtoTLS] = func(hs *http.Server, c *tls.Conn, h http.Handler) {
		s.h2serve(hs, c, h, false)
	}
	// net/http hands an h2c connection over under this key, wrapped in a
	// *tls.Conn that is not one, after reading the preface from it.
	s.http.TLSNextProto["unencrypted_http2"] = func(hs *http.Server, c *tls.Conn, h http.Handler) {
		u, ok := c.NetConn().(interface{ UnencryptedNetConn() net.Conn })
		if !ok {
			s.log.Error("h2c connection handed over without its connection")
			_ = c.Close()
			return
		}
		s.h2serve(hs, u.UnencryptedNetConn(), h, true)
	}
	return nil
}

// h2cGate is the listener of an h2c service: a connection whose first
// line is neither an HTTP/1.x request line nor the start of the HTTP/2
// preface is closed without an answer (RFC 9113 3.4: an invalid preface
// is a connection error; an HTTP/1 400 would be garbage to an HTTP/2
// client).
type h2cGate struct{ net.Listener }

func (g h2cGate) Accept() (net.Conn, error) {
	c, err := g.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &firstLineConn{Conn: c}, nil
}

// maxFirstLine is how much of a connection's start h2cGate reads to find
// its first line; a longer line is left to the HTTP/1 server's limits.
const maxFirstLine = 8 << 10

// errNotHTTP closes a connection that speaks neither HTTP/1.x nor HTTP/2.
var errNotHTTP = errors.New("neither an HTTP/1.x request line nor the HTTP/2 preface")

// firstLineConn checks the first line of a connection before the server
// reads it.
type firstLineConn struct {
	net.Conn
	checked bool
	ahead   []byte // read while checking, not yet given to the server
}

func (c *firstLineConn) Read(p []byte) (int, error) {
	if !c.checked {
		if err := c.check(); err != nil {
			return 0, err
		}
	}
	if len(c.ahead) > 0 {
		n := copy(p, c.ahead)
		c.ahead = c.ahead[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *firstLineConn) check() error {
	b := make([]byte, 0, 1024)
	for {
		switch firstLine(b) {
		case lineHTTP:
			c.checked, c.ahead = true, b
			return nil
		case lineOther:
			c.checked = true
			_ = c.Conn.Close()
			return errNotHTTP
		}
		if len(b) == cap(b) {
			if cap(b) >= maxFirstLine {
				c.checked, c.ahead = true, b
				return nil
			}
			b = append(make([]byte, 0, 2*cap(b)), b...)
		}
		n, err := c.Conn.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			c.checked, c.ahead = true, b
			if len(b) > 0 {
				return nil
			}
			return err
		}
	}
}

type lineKind int

const (
	lineMore  lineKind = iota // not enough to tell
	lineHTTP                  // HTTP/1.x request line or HTTP/2 preface
	lineOther                 // anything else
)

// firstLine tells what the start b of a connection is.
func firstLine(b []byte) lineKind {
	for len(b) > 0 && (b[0] == '\r' || b[0] == '\n') {
		b = b[1:] // empty lines before a request (RFC 9112 2.2)
	}
	const pri = "PRI * HTTP/2.0\r\n"
	if len(b) < len(pri) && strings.HasPrefix(pri, string(b)) {
		return lineMore
	}
	if strings.HasPrefix(string(b), pri) {
		return lineHTTP
	}
	i := strings.IndexByte(string(b), '\n')
	if i < 0 {
		return lineMore
	}
	line := strings.TrimSuffix(string(b[:i]), "\r")
	if n := len(line); n >= 9 && line[n-9:n-1] == " HTTP/1." && line[n-1] >= '0' && line[n-1] <= '9' {
		return lineHTTP
	}
	return lineOther
}
