package proxy

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"time"

	"github.com/sluicelb/sluice/l7/accesslog"
	"github.com/sluicelb/sluice/l7/certs"
	"github.com/sluicelb/sluice/l7/eject"
	"github.com/sluicelb/sluice/l7/evloop"
	"github.com/sluicelb/sluice/l7/reqid"
	"github.com/sluicelb/sluice/l7/service"
)

// TLSFiles are the certificates and keys of an HTTPS listener (PEM
// files): the default one, and more chosen by the client's SNI (see
// l7/certs).
type TLSFiles = certs.Files

// CertFiles are one certificate (chain) and its key (PEM files).
type CertFiles = certs.Pair

// UpstreamOptions tune the connection pools to the backends.
type UpstreamOptions struct {
	MaxIdlePerAddr int           // default 64
	IdleTimeout    time.Duration // default 30s
	MaxLifetime    time.Duration // default 5m
	// MaxConnsPerAddr bounds the connections to one backend address
	// (default 1024); MaxDialsPerAddr the dials in progress (default 32).
	MaxConnsPerAddr int
	MaxDialsPerAddr int
	// TLS makes connections to the backends TLS. The server name (SNI and
	// verification) is TLS.ServerName when set, else the service's host,
	// else the DNS name the address came from, else the address; never
	// the client's Host.
	TLS *tls.Config
	// Protocol is how requests go to the backends: ProtocolHTTP1 ("" too),
	// ProtocolH2C (HTTP/2 in clear text, prior knowledge) or ProtocolH2
	// (HTTP/2 over TLS, ALPN h2; needs TLS). Over HTTP/2, requests to one
	// address share its connections, MaxStreamsPerConn at once each
	// (default 100) and MaxConnsPerAddr connections at most (default 64
	// for HTTP/2).
	Protocol          string
	MaxStreamsPerConn int
	// MaxHeaderBytes and MaxHeaderCount bound a backend's response header
	// (bytes, and fields with every value of a repeated one counted;
	// defaults upstream.DefaultMaxHeaderBytes, DefaultMaxHeaderCount). A
	// response past either gets the client a 502 and is neither retried
	// nor counted against the backend: a client could otherwise make a
	// backend that reflects its headers look broken.
	MaxHeaderBytes int
	MaxHeaderCount int
	// Dial replaces the TCP dialer (e.g. to bind a source address; tests).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Options build a Server.
type Options struct {
	Service service.Config
	Pool    PoolView // the service's pool
	// Ejection is the pool's ejection block (Failures 0: off); its
	// max_ejected_percent also decides panic mode.
	Ejection eject.Config
	TLS      *TLSFiles // nil: plain HTTP (HTTP/1.1, and h2c when H2C is set)
	H2C      bool      // accept HTTP/2 without TLS (prior knowledge)
	// NetHTTP1 serves a plain-text listener (no TLS, no h2c) with
	// net/http's HTTP/1 server instead of sluice's own connection loop
	// (h1.go): a diagnostic switch, to compare the two. The agent sets it
	// from SLUICE_L7_NETHTTP1 in its environment (cmd/sluice).
	NetHTTP1 bool
	// EventLoops serves the HTTP/1 loop's connections from per-CPU event
	// loops (l7/evloop) instead of a goroutine each on the Go runtime's
	// poller (docs/l7.md, "Event loops"). The agent sets it unless
	// SLUICE_L7_EVENTLOOPS=0 is in its environment (cmd/sluice).
	EventLoops bool
	// Loops, with EventLoops, are the event loops to serve on, shared
	// with other servers (the agent's one group for every service, whose
	// loops hold their processors: evloop.Options.HoldProcs). The caller
	// owns them: it closes them once every server on them is shut down.
	// nil: the server starts loops of its own on its first connection
	// and stops them when it shuts down.
	Loops    *evloop.Group
	Client   service.ClientLimits
	Upstream UpstreamOptions
	// ShutdownTimeout bounds the graceful shutdown Serve does when its
	// context ends; default 30s.
	ShutdownTimeout time.Duration
	Log             *slog.Logger // operational log; nil discards
	// AccessLog gets one line per request (see accesslog.New); nil: none.
	// It may be shared by servers; its owner closes it once they stopped.
	AccessLog *accesslog.Logger
	Observer  Observer // nil: NopObserver
	Selector  Selector // nil: LeastRequests
	// EjectionJitter is passed to eject.Options.Jitter (0: default, <0: none).
	EjectionJitter float64
	// Tracker, when set, is the ejection tracker to use instead of a new
	// one: services sharing a pool should share its tracker, so failures
	// are counted per pool (see eject.New). Ejection is then ignored.
	Tracker *eject.Tracker
	// RoutePools are the pools the service's routes send to, by name
	// (the service's own pool may be left out: it is Pool). A reload
	// naming a pool not here needs a new server.
	RoutePools map[string]RoutePool
	// RequestIDs makes the requests' ids; the agent gives every server
	// the same, so ids are unique across services. nil: the server makes
	// its own (a random prefix of its own).
	RequestIDs *reqid.Source
}

// RoutePool is one pool a service's routes send to.
type RoutePool struct {
	Pool PoolView
	// Tracker is the pool's ejection tracker, shared with the other
	// services of the pool; nil: a new one with Ejection.
	Tracker  *eject.Tracker
	Ejection eject.Config
}
