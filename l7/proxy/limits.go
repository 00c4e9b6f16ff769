package proxy

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// Names of the limits, as Observer.Refused and the access log give them.
const (
	limitConnections         = "connections"
	limitConnectionsPerIP    = "connections_per_ip"
	limitRequests            = "requests"
	limitRequestsPerIP       = "requests_per_ip"
	limitRouteRequests       = "route_requests"
	limitBody                = "body"
	limitHeaderCount         = "header_count"
	limitUpstreamConnections = "upstream_connections"
	limitHostResources       = "host_resources" // a dial failed for lack of file descriptors, ports or memory
	limitUpstreamHeader      = "upstream_header"
	limitUnderscoreHeader    = "underscore_header"
	limitLoop                = "loop"
	// (and metrics.LimitAccessLog: the agent counts its access logs'
	// dropped lines)
)

// limitListener bounds the open client connections: a connection accepted
// beyond max is closed at once (Envoy's listener connection limit), so
// sluice never holds more sockets, goroutines and buffers for clients than
// configured. Closing (rather than not accepting) keeps the kernel's
// backlog from filling with connections nobody will serve.
// It also bounds the connections of each client address
// (client.max_connections_per_ip; trusted proxies are not counted).
type limitListener struct {
	net.Listener
	max     int64
	open    *atomic.Int64
	refused func(limit string)
	perIP   *perIP
	trusted func() []netip.Prefix
}

func newLimitListener(l net.Listener, max, perIP int, trusted func() []netip.Prefix, refused func(limit string)) *limitListener {
	return &limitListener{Listener: l, max: int64(max), open: new(atomic.Int64), refused: refused,
		perIP: newPerIP(perIP), trusted: trusted}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if lc := l.admit(c); lc != nil {
			return lc, nil
		}
	}
}

// admit counts c among the open connections, or closes it (nil) when max
// are open already.
func (l *limitListener) admit(c net.Conn) *limitConn {
	if l.open.Add(1) > l.max {
		l.open.Add(-1)
		c.Close()
		l.refused(limitConnections)
		return nil
	}
	lc := &limitConn{Conn: c, open: l.open}
	if key, ok := connKey(c, l.trusted()); ok {
		if !l.perIP.acquire(key) {
			l.open.Add(-1)
			c.Close()
			l.refused(limitConnectionsPerIP)
			return nil
		}
		lc.perIP, lc.key = l.perIP, key
	}
	return lc
}

// limitConn gives its place back when closed (once), hijacked or not.
type limitConn struct {
	net.Conn
	open  *atomic.Int64
	perIP *perIP // nil when the peer is not counted per address
	key   netip.Addr
	once  sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

// release gives the connection's place back without closing it (a
// connection handed on to another server).
func (c *limitConn) release() {
	c.once.Do(func() {
		c.open.Add(-1)
		if c.perIP != nil {
			c.perIP.release(c.key)
		}
	})
}

// CloseWrite lets the server half-close like on a *net.TCPConn.
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
