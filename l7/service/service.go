// Package service holds the settings of one http service of the L7 stage
// that more than one package needs: its timeouts, its client-side limits
// and their defaults. l7 owns them (the agent builds them from the config
// file; userspace/config fills and validates the file's keys with them),
// and this package imports only l7 packages that import nothing of
// sluice (retry, route), so every side can use it.
package service

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/sluicelb/sluice/l7/retry"
	"github.com/sluicelb/sluice/l7/route"
)

// HostKeep is Service.Host's value that passes the client's Host header on.
const HostKeep = "keep"

// Config is the http service a proxy serves (the agent builds it from
// the service's config keys).
type Config struct {
	Name   string
	Listen string // ip:port, for ListenAndServe
	// Pool is the pool of the default route (every request no route of
	// Routes takes); "" when the service has routes and no default.
	Pool string
	// Host is HostKeep ("" too) to pass the client's Host on, or the name
	// sent as Host to the backends.
	Host string
	// SNI, when set, is the TLS server name sent to TLS backends (and
	// the name their certificates are verified against, unless the
	// upstream TLS settings verify another): upstream.server_name. Else
	// the name comes from Host, the DNS name or the address.
	SNI      string
	Timeouts Timeouts
	Retry    *retry.Config // nil: retry.DefaultConfig()
	// Upgrades are the protocols a client may switch to with Upgrade
	// (HTTP/1.1, e.g. websocket); nil: DefaultUpgrades. An Upgrade for
	// another protocol is not passed on: the request goes to the backend
	// as a plain request. h2c is never allowed (CheckUpgrade).
	Upgrades []string
	// TrustedProxies are the peers whose forwarding headers are kept
	// (X-Forwarded-Proto, X-Forwarded-Host, X-Real-IP, Forwarded); from
	// any other peer they are replaced or removed. Default: none.
	TrustedProxies []netip.Prefix
	// Headers are the service's header rules (its routes' default).
	Headers HeaderRules
	// RequestID says where a request's id may come from (it is sluice's
	// own unless a trusted peer sent one) and the header naming it on
	// sluice's own answers.
	RequestID RequestID
	// Routes send requests to other pools by host, path, method or header
	// (l7/route has the precedence). Pool, when set, is the route of
	// whatever no route takes, after all of them.
	Routes []Route
}

// Route is one route of a service: what it matches and where it sends.
// Host, Timeouts and Retry left zero take the service's.
type Route struct {
	Match route.Spec
	Pool  string
	// Host is HostKeep or a name, as Config.Host; "" takes the service's.
	Host string
	// SNI is the route's TLS server name, as Config.SNI; "" takes the
	// service's.
	SNI string
	// Timeouts: a zero field takes the service's.
	Timeouts Timeouts
	// Retry: nil takes the service's policy whole.
	Retry *retry.Config
	// Headers: nil takes the service's rules whole.
	Headers *HeaderRules
	// MaxBodyBytes bounds the request bodies of the route (413 above);
	// 0: the listener's ClientLimits.MaxBodyBytes. It may be larger or
	// smaller than the listener's (an upload route, a small API).
	MaxBodyBytes int64
	// MaxRequests bounds the route's requests in flight (a fast 503 with
	// Retry-After above), within the listener's ClientLimits.MaxRequests:
	// one slow site cannot take every slot of the listener. 0: no bound
	// of its own.
	MaxRequests int
	// TunnelIdleTimeout is ClientLimits.TunnelIdleTimeout for the
	// route's upgraded connections (a WebSocket route whose clients stay
	// quiet for minutes); 0: the listener's.
	TunnelIdleTimeout time.Duration
	// (The other client limits act before the request is routed — its
	// header is read under header_timeout, max_header_bytes and
	// max_header_count — or belong to a connection that may carry
	// requests of many routes — connections, keep-alive idle time,
	// HTTP/2 settings — so they are the listener's.)
}

// RequestID is the request-id setting of a service.
type RequestID struct {
	// Header names the id on sluice's own answers and, with
	// TrustIncoming, the header a trusted peer's id comes in; "":
	// DefaultRequestIDHeader.
	Header string
	// TrustIncoming takes the id a peer in TrustedProxies sent in Header
	// (when it is a valid id) instead of making one; from any other peer
	// the header is never believed.
	TrustIncoming bool
}

// DefaultRequestIDHeader is RequestID.Header's default.
const DefaultRequestIDHeader = "X-Request-Id"

// HeaderName is the header of the request id (Header or the default),
// in canonical form.
func (r RequestID) HeaderName() string {
	if r.Header == "" {
		return DefaultRequestIDHeader
	}
	return http.CanonicalHeaderKey(r.Header)
}

// Check refuses a request_id header that is not a token or that a rule
// could not name either (a header framing the message or written by
// sluice).
func (r RequestID) Check() error {
	if r.Header == "" {
		return nil
	}
	if err := checkRuleName("request", r.Header); err != nil {
		return fmt.Errorf("request_id.header: %w", err)
	}
	return nil
}

// DefaultRouteName names a service's own pool as a route (access log).
const DefaultRouteName = "default"

// Table compiles the service's routes, its own pool last as the route of
// any host and path when set; the indexes Match returns are those of
// Routes, len(Routes) for the service's pool.
func (c Config) Table() (*route.Table, error) {
	specs := make([]route.Spec, 0, len(c.Routes)+1)
	names := make(map[string]int)
	for i, r := range c.Routes {
		if r.Match.Name == "" {
			return nil, fmt.Errorf("route %d: no name", i+1)
		}
		if r.Match.Name == DefaultRouteName && c.Pool != "" {
			return nil, fmt.Errorf("route %s: the name %s is the service's pool's route", r.Match.Name, DefaultRouteName)
		}
		if j, dup := names[r.Match.Name]; dup {
			return nil, fmt.Errorf("route %s: name used twice (routes %d and %d)", r.Match.Name, j+1, i+1)
		}
		names[r.Match.Name] = i
		if r.Pool == "" {
			return nil, fmt.Errorf("route %s: no pool", r.Match.Name)
		}
		specs = append(specs, r.Match)
	}
	if c.Pool != "" {
		specs = append(specs, route.Spec{Name: DefaultRouteName + " (the service's pool " + c.Pool + ")"})
	}
	if len(specs) == 0 {
		return nil, fmt.Errorf("service %s: no pool and no route", c.Name)
	}
	return route.Compile(specs)
}

// Inherit is t with its zero fields taken from the service's.
func (t Timeouts) Inherit(svc Timeouts) Timeouts {
	for _, f := range []struct{ v, def *time.Duration }{
		{&t.Connect, &svc.Connect}, {&t.Send, &svc.Send}, {&t.Read, &svc.Read}, {&t.Total, &svc.Total},
	} {
		if *f.v == 0 {
			*f.v = *f.def
		}
	}
	return t
}

// ParseTrustedProxies parses a trusted_proxies list: CIDRs (a bare
// address is a /32 or /128).
func ParseTrustedProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("trusted proxy %q: not a CIDR or an address", s)
			}
			if a.Zone() != "" {
				return nil, fmt.Errorf("trusted proxy %q: no zone allowed", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Addr().Zone() != "" {
			return nil, fmt.Errorf("trusted proxy %q: no zone allowed", s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// DefaultUpgrades is the upgrade allow-list of a service that sets none.
func DefaultUpgrades() []string { return []string{"websocket"} }

// CheckUpgrade checks one upgrades entry: a token, and not h2c (HTTP/2 is
// served by the listener itself, with tls or h2c: true, never tunnelled).
func CheckUpgrade(p string) error {
	if p == "" {
		return fmt.Errorf("upgrade %q: must be a protocol name such as websocket", p)
	}
	// RFC 9110 7.8: protocol-name ["/" protocol-version], both tokens.
	name, version, slash := strings.Cut(p, "/")
	if !httpguts.ValidHeaderFieldName(name) || slash && !httpguts.ValidHeaderFieldName(version) {
		return fmt.Errorf("upgrade %q: must be a protocol token such as websocket", p)
	}
	if strings.EqualFold(p, "h2c") || strings.HasPrefix(strings.ToLower(p), "h2c/") || strings.EqualFold(p, "h2") {
		return fmt.Errorf("upgrade %q: HTTP/2 is never tunnelled (use h2c: true or tls for HTTP/2)", p)
	}
	return nil
}

// Timeouts are the per-phase timeouts and the total deadline of a request
// (a zero field takes its default).
type Timeouts struct {
	Connect time.Duration // a connection to a backend
	Send    time.Duration // between two writes of the request
	Read    time.Duration // the response header, and between two body reads
	Total   time.Duration // all tries of one request
}

// DefaultTimeouts are the timeouts of a service that sets none.
func DefaultTimeouts() Timeouts {
	return Timeouts{Connect: DefaultConnect, Send: DefaultSend, Read: DefaultRead, Total: DefaultTotal}
}

// WithDefaults is t with its zero fields set to their defaults.
func (t Timeouts) WithDefaults() Timeouts {
	d := DefaultTimeouts()
	for _, f := range []struct{ v, def *time.Duration }{
		{&t.Connect, &d.Connect}, {&t.Send, &d.Send}, {&t.Read, &d.Read}, {&t.Total, &d.Total},
	} {
		if *f.v == 0 {
			*f.v = *f.def
		}
	}
	return t
}

// Defaults of an http service: the proxy uses them for zero fields and
// userspace/config fills the keys a file leaves out with them.
const (
	DefaultHeaderTimeout   = 10 * time.Second
	DefaultIdleTimeout     = 60 * time.Second
	DefaultMaxHeaderBytes  = 64 << 10
	DefaultShutdownTimeout = 30 * time.Second
	DefaultConnect         = 2 * time.Second
	DefaultSend            = 30 * time.Second
	DefaultRead            = 60 * time.Second
	DefaultTotal           = 90 * time.Second
	DefaultTunnelIdle      = 60 * time.Second
	DefaultMaxConnections  = 10000
	DefaultMaxRequests     = 1000
	// client.max_connections_per_ip and max_requests_per_ip default to a
	// tenth of max_connections and max_requests, but never below these
	// floors (nor above the limit itself): see PerIPDefault.
	PerIPShare            = 10
	PerIPConnectionFloor  = 1000
	PerIPRequestFloor     = 100
	DefaultMaxBodyBytes   = 64 << 20
	DefaultBodyTimeout    = 30 * time.Second
	DefaultBodyMinRate    = 500 // bytes a second
	DefaultMaxHeaderCount = 100
	// HTTP/2, Envoy's edge recommendations.
	DefaultH2MaxStreams   = 100
	DefaultH2StreamWindow = 64 << 10
	DefaultH2ConnWindow   = 1 << 20
	// DefaultH2MaxResetStreams: twice the default stream limit.
	DefaultH2MaxResetStreams = 200
)

// PerIPDefault is the default per-address share of a client limit: a
// tenth of it, but at least floor, and at most the limit itself (a small
// limit is not split: a browser's six connections must not be refused on
// a service that allows sixty).
func PerIPDefault(limit, floor int) int { return min(limit, max(limit/PerIPShare, floor)) }

// What client.underscore_headers does with a request header field whose
// name has an underscore.
const (
	UnderscoreDrop   = "drop"   // removed before the request goes on (nginx's default)
	UnderscoreReject = "reject" // the request gets 400 (Envoy's edge recommendation)
	UnderscoreAllow  = "allow"  // passed on like any other
)

// Bounds of the client limits (validation).
const (
	MinMaxHeaderBytes = 1 << 10
	MaxMaxHeaderBytes = 16 << 20
	MaxMaxHeaderCount = 10000
)

// ClientLimits protect the listener from slow or greedy clients.
type ClientLimits struct {
	// HeaderTimeout bounds reading a request's header (slowloris);
	// default 10s (nginx client_header_timeout 60s).
	HeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive client connection idle this long;
	// default 60s (nginx keepalive_timeout 75s).
	IdleTimeout time.Duration
	// MaxHeaderBytes caps the request header size; default 64 KiB.
	MaxHeaderBytes int
	// TunnelIdleTimeout closes an upgraded (WebSocket) connection when no
	// byte has passed in either direction for this long; default 60s
	// (nginx proxy_read_timeout 60s, HAProxy timeout tunnel).
	TunnelIdleTimeout time.Duration
	// MaxConnections bounds the open client connections (tunnels
	// included); one more is closed at once. Default 10000.
	MaxConnections int
	// MaxRequests bounds the requests in flight; one more gets a fast 503
	// with Retry-After. Default 1000.
	MaxRequests int
	// MaxConnectionsPerIP and MaxRequestsPerIP bound what one client
	// address (an IPv6 /64; trusted proxies are not counted) may hold of
	// them: a connection past it is closed at once, a request gets a fast
	// 429 with Retry-After. Default PerIPDefault of MaxConnections and
	// MaxRequests (1000 and 100 with theirs).
	MaxConnectionsPerIP int
	MaxRequestsPerIP    int
	// MaxBodyBytes bounds a request body; a larger one gets 413. Default
	// 64 MiB (nginx client_max_body_size 1m).
	MaxBodyBytes int64
	// BodyTimeout bounds each wait for the next bytes of a request body
	// from its client; past that grace, the body must keep BodyMinRate
	// bytes a second of the time waited on it on average (0: the
	// default; negative: no rate).
	// A client slower than that gets 408. Defaults 30s and 500 bytes/s
	// (Apache mod_reqtimeout body=20,MinRate=500; nginx
	// client_body_timeout 60s).
	BodyTimeout time.Duration
	BodyMinRate int64
	// MaxHeaderCount bounds the header fields of a request (every value
	// of a repeated name counts); more get 431. Default 100 (Envoy
	// max_headers_count 100, HAProxy tune.http.maxhdr 101).
	MaxHeaderCount int
	// H2MaxStreams bounds the concurrent streams of an HTTP/2 connection
	// (default 100); H2StreamWindow and H2ConnWindow are the flow-control
	// windows sluice grants a client per stream (default 64 KiB) and per
	// connection (default 1 MiB): Envoy's edge recommendations.
	H2MaxStreams   int
	H2StreamWindow int
	H2ConnWindow   int
	// H2MaxResetStreams bounds the streams a client may reset on one
	// HTTP/2 connection (rapid reset, CVE-2023-44487): once it reset more
	// than this many, and at least half of the streams it opened, the
	// connection gets GOAWAY ENHANCE_YOUR_CALM and is closed. Default 200.
	H2MaxResetStreams int
	// UnderscoreHeaders is what happens to a request header field whose
	// name has an underscore: UnderscoreDrop (default), UnderscoreReject
	// or UnderscoreAllow. Backends that see headers through CGI-style
	// names (PHP, WSGI, Rack: HTTP_X_FORWARDED_FOR) cannot tell
	// X_Forwarded_For from the X-Forwarded-For sluice writes: passed on,
	// a client could spoof the forwarding headers.
	UnderscoreHeaders string
}

// WithDefaults is c with its zero fields set to their defaults.
func (c ClientLimits) WithDefaults() ClientLimits {
	if c.HeaderTimeout <= 0 {
		c.HeaderTimeout = DefaultHeaderTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.TunnelIdleTimeout <= 0 {
		c.TunnelIdleTimeout = DefaultTunnelIdle
	}
	if c.MaxConnections <= 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.MaxRequests <= 0 {
		c.MaxRequests = DefaultMaxRequests
	}
	if c.MaxConnectionsPerIP <= 0 {
		c.MaxConnectionsPerIP = PerIPDefault(c.MaxConnections, PerIPConnectionFloor)
	}
	if c.MaxRequestsPerIP <= 0 {
		c.MaxRequestsPerIP = PerIPDefault(c.MaxRequests, PerIPRequestFloor)
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.BodyTimeout <= 0 {
		c.BodyTimeout = DefaultBodyTimeout
	}
	if c.BodyMinRate == 0 {
		c.BodyMinRate = DefaultBodyMinRate
	}
	if c.MaxHeaderCount <= 0 {
		c.MaxHeaderCount = DefaultMaxHeaderCount
	}
	if c.UnderscoreHeaders == "" {
		c.UnderscoreHeaders = UnderscoreDrop
	}
	if c.H2MaxStreams <= 0 {
		c.H2MaxStreams = DefaultH2MaxStreams
	}
	if c.H2StreamWindow <= 0 {
		c.H2StreamWindow = DefaultH2StreamWindow
	}
	if c.H2ConnWindow <= 0 {
		c.H2ConnWindow = DefaultH2ConnWindow
	}
	if c.H2MaxResetStreams <= 0 {
		c.H2MaxResetStreams = DefaultH2MaxResetStreams
	}
	return c
}
