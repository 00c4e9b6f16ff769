// Package config defines sluice's YAML configuration: the types users write,
// strict decoding with line numbers, defaults and validation.
package config

import (
	"net/netip"
	"time"

	"github.com/sluicelb/sluice/l7/certs"
	"github.com/sluicelb/sluice/l7/service"
)

// Duration is a time.Duration written in YAML as a Go duration string ("2s", "5m").
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Config is the whole file.
type Config struct {
	// Interfaces are the XDP attach points (the lb's links facing clients and backends).
	Interfaces []string  `yaml:"interfaces"` // required when there is a tcp/udp service
	Admin      Admin     `yaml:"admin"`
	Metrics    Metrics   `yaml:"metrics"`
	DNS        DNS       `yaml:"dns"`
	Datapath   Datapath  `yaml:"datapath"`
	Pools      []Pool    `yaml:"pools"`
	Services   []Service `yaml:"services"`
	// BGP announces the L4 VIPs through the node's BGP daemon (nil: not
	// announced; a single node, or routes made by other means).
	BGP *BGP `yaml:"bgp"`

	// Path is the file the config was read from ("" when parsed from bytes).
	Path string `yaml:"-"`
	// Warnings are settings that are valid but likely to surprise (a
	// default that cuts idle connections, certificates not verified):
	// `sluice check` prints them, the agent logs them. In file order.
	Warnings []Problem `yaml:"-"`
}

// Admin configures the admin API (unix socket, mode 0600).
type Admin struct {
	Socket string `yaml:"socket"` // default /run/sluice/admin.sock
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	Listen string `yaml:"listen"` // default 127.0.0.1:9464; "off" disables
}

// DNS configures resolution of backend names.
type DNS struct {
	Servers      []string `yaml:"servers"`       // ip or ip:port (port 53), normalised to ip:port; empty: nameservers of /etc/resolv.conf
	MinTTL       Duration `yaml:"min_ttl"`       // default 1s
	MaxTTL       Duration `yaml:"max_ttl"`       // default 5m
	OnFailure    string   `yaml:"on_failure"`    // keep (default and only value for now)
	NXDomainHold Duration `yaml:"nxdomain_hold"` // default 30s
	Timeout      Duration `yaml:"timeout"`       // per query, default 2s
}

// Datapath configures the XDP data path.
type Datapath struct {
	XDPMode         string   `yaml:"xdp_mode"`          // auto (default: native, generic fallback) | native | generic
	PinPath         string   `yaml:"pin_path"`          // default /sys/fs/bpf/sluice
	MaglevTableSize uint32   `yaml:"maglev_table_size"` // prime in 251..65521, default 16381
	ConntrackMax    uint32   `yaml:"conntrack_max"`     // LRU capacity, >= 1024, default 262144
	RSTRate         uint32   `yaml:"rst_rate"`          // RSTs per second and CPU, >= 1, default 1000
	Timeouts        CTTimers `yaml:"conntrack_timeouts"`
}

// CTTimers are the conntrack idle timeouts per flow state.
type CTTimers struct {
	TCPSyn         Duration `yaml:"tcp_syn"`         // default 60s
	TCPEstablished Duration `yaml:"tcp_established"` // default 1h
	TCPClosing     Duration `yaml:"tcp_closing"`     // default 10s
	UDP            Duration `yaml:"udp"`             // default 60s
}

// Pool is a named set of backends shared by services.
type Pool struct {
	Name         string       `yaml:"name"`
	Backends     []Backend    `yaml:"backends"`
	DrainTimeout Duration     `yaml:"drain_timeout"` // default 30s
	HealthCheck  *HealthCheck `yaml:"health_check"`
	Ejection     Ejection     `yaml:"ejection"`
	// Addresses narrows (or knowingly loosens) which addresses may be
	// backends of the pool, DNS answers and fixed addresses alike.
	Addresses AddressFilter `yaml:"addresses"`

	Line int `yaml:"-"` // line of the pool in the file, for messages
}

// AddressFilter is a pool's allow and deny lists of CIDRs (a bare IP is a
// /32). userspace/addrfilter documents how they combine with the default
// deny list and our own addresses.
type AddressFilter struct {
	Allow []string `yaml:"allow"`
	Deny  []string `yaml:"deny"`

	// AllowPrefixes and DenyPrefixes are Allow and Deny parsed.
	AllowPrefixes []netip.Prefix `yaml:"-"`
	DenyPrefixes  []netip.Prefix `yaml:"-"`
}

// Backend is either a DNS name (every A answer is a backend) or a fixed address.
type Backend struct {
	Name    string `yaml:"name"`    // DNS name; needs Port
	Port    uint16 `yaml:"port"`    // with Name
	Address string `yaml:"address"` // ip:port or [ipv6]:port; exactly one of Name and Address
	Weight  uint32 `yaml:"weight"`  // 1..1000, default 1

	// AddrPort is Address parsed (valid only for address backends).
	AddrPort netip.AddrPort `yaml:"-"`
	Line     int            `yaml:"-"` // line of the backend in the file
}

// HealthCheck configures active health checks; exactly one of HTTP and TCP is set.
type HealthCheck struct {
	HTTP     *HTTPCheck `yaml:"http"`
	TCP      *TCPCheck  `yaml:"tcp"`
	Interval Duration   `yaml:"interval"` // default 2s
	Timeout  Duration   `yaml:"timeout"`  // default 1s
	Rise     int        `yaml:"rise"`     // default 2
	Fall     int        `yaml:"fall"`     // default 3
}

// HTTPCheck probes an HTTP path.
type HTTPCheck struct {
	Path   string `yaml:"path"`   // default /
	Host   string `yaml:"host"`   // Host header, default the address
	Expect string `yaml:"expect"` // status range, default "200-399"
	// TLS makes the check HTTPS. The keys are an upstream's: ServerName
	// is the server name sent (SNI; default: the host key without its
	// port, else the pool's one DNS name), VerifyName the name the
	// certificate must carry (default ServerName), CA the PEM file of
	// CAs to trust instead of the system's, InsecureSkipVerify accepts
	// any certificate (a warning).
	TLS                bool   `yaml:"tls"`
	ServerName         string `yaml:"server_name"`
	VerifyName         string `yaml:"verify_name"`
	CA                 string `yaml:"ca"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// TCPCheck only connects.
type TCPCheck struct{}

// Ejection configures passive ejection from live traffic.
type Ejection struct {
	Failures          int      `yaml:"failures"`            // default 5; 0 disables
	Window            Duration `yaml:"window"`              // default 10s
	BaseTime          Duration `yaml:"base_time"`           // default 10s
	MaxTime           Duration `yaml:"max_time"`            // default 5m
	MaxEjectedPercent int      `yaml:"max_ejected_percent"` // default 50
	// On is what counts as a failure, apart from a service's retry.on;
	// default connect-failure, reset, timeout, 502, 503, 504, grpc-unavailable.
	On []string `yaml:"on"`
}

// Service is a listener: a VIP served by the XDP data path (tcp/udp) or the L7 stage (http).
type Service struct {
	Name       string    `yaml:"name"`
	Listen     string    `yaml:"listen"`      // vip:port
	Protocol   string    `yaml:"protocol"`    // tcp (default) | udp | http
	Mode       string    `yaml:"mode"`        // nat (default) | snat; tcp/udp only ("" for http)
	SNATSource string    `yaml:"snat_source"` // snat only
	Pool       string    `yaml:"pool"`
	Host       string    `yaml:"host"`     // http: keep (default) or a name
	Timeouts   *Timeouts `yaml:"timeouts"` // http only; never nil after Parse for http services
	Retry      *Retry    `yaml:"retry"`    // http only; never nil after Parse for http services
	// TLS makes an http listener HTTPS (HTTP/1.1 and HTTP/2 by ALPN).
	TLS *ServiceTLS `yaml:"tls"`
	// H2C accepts HTTP/2 without TLS (prior knowledge) on an http listener.
	H2C      bool          `yaml:"h2c"`
	Client   *ClientLimits `yaml:"client"`   // http only; never nil after Parse for http services
	Upstream *Upstream     `yaml:"upstream"` // http only; never nil after Parse for http services
	// TrustedProxies are the CIDRs whose forwarding headers are kept
	// (default none: they are replaced or removed).
	TrustedProxies []string `yaml:"trusted_proxies"`
	// Upgrades is the allow-list of protocols a client may switch to with
	// Upgrade (default [websocket]; h2c is refused).
	Upgrades []string `yaml:"upgrades"`
	// Routes send requests to pools by host, path, method or header
	// (http only); Pool, when set, takes what no route does.
	Routes []Route `yaml:"routes"`
	// Headers are the service's header rules (http only; a route's own
	// replace them whole).
	Headers *HeaderRules `yaml:"headers"`
	// RequestID says whether a trusted peer's request id is taken and
	// which header names it (http only; nil: sluice's own ids, header
	// X-Request-Id on its own answers).
	RequestID *RequestID `yaml:"request_id"`
	// AccessLog is where an http service writes its access log: stdout
	// (default), off, or a file path (appended to, reopened on reload).
	AccessLog string `yaml:"access_log"`

	// ListenAddr is Listen parsed.
	ListenAddr netip.AddrPort `yaml:"-"`
	Line       int            `yaml:"-"` // line of the service in the file
}

// Route is one route of an http service: what it matches (l7/route has
// the precedence), the pool it sends to, and what it changes of the
// service's settings.
type Route struct {
	Name      string       `yaml:"name"`
	Hosts     []string     `yaml:"hosts"`      // exact or *.suffix; none: any host (the default site)
	Path      string       `yaml:"path"`       // prefix, default /
	ExactPath string       `yaml:"exact_path"` // instead of path
	Methods   []string     `yaml:"methods"`    // none: any
	Header    *RouteHeader `yaml:"header"`
	Pool      string       `yaml:"pool"`
	Host      string       `yaml:"host"` // keep or a name; default the service's
	// ServerName is the route's TLS server name (upstream.tls), as
	// upstream.server_name; default the service's.
	ServerName string       `yaml:"server_name"`
	Timeouts   *Timeouts    `yaml:"timeouts"` // a key left out is the service's
	Retry      *Retry       `yaml:"retry"`    // replaces the service's whole; default the service's
	Headers    *HeaderRules `yaml:"headers"`  // replaces the service's whole; default the service's
	// MaxBodyBytes is the route's client.max_body_bytes (0: the service's).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxRequests bounds the route's requests in flight, within the
	// service's client.max_requests (0: no bound of its own).
	MaxRequests int `yaml:"max_requests"`
	// TunnelIdleTimeout is the route's client.tunnel_idle_timeout (0:
	// the service's).
	TunnelIdleTimeout Duration `yaml:"tunnel_idle_timeout"`

	Line int `yaml:"-"` // line of the route in the file
}

// HeaderRules change request and response headers (l7/service.HeaderRules).
type HeaderRules struct {
	Request         HeaderOps `yaml:"request"`
	Response        HeaderOps `yaml:"response"`
	RewriteLocation bool      `yaml:"rewrite_location"`
}

// HeaderOps are the changes in one direction: remove, then set, then add.
type HeaderOps struct {
	Remove []string      `yaml:"remove"`
	Set    []HeaderField `yaml:"set"`
	Add    []HeaderField `yaml:"add"`
}

// HeaderField is a header name and value (variables allowed).
type HeaderField struct {
	Name  string `yaml:"name"`
	Value string `yaml:"value"`
}

// L7 is h for l7/service (nil: no rules).
func (h *HeaderRules) L7() service.HeaderRules {
	if h == nil {
		return service.HeaderRules{}
	}
	ops := func(o HeaderOps) service.HeaderOps {
		out := service.HeaderOps{Remove: o.Remove}
		for _, f := range o.Set {
			out.Set = append(out.Set, service.Field{Name: f.Name, Value: f.Value})
		}
		for _, f := range o.Add {
			out.Add = append(out.Add, service.Field{Name: f.Name, Value: f.Value})
		}
		return out
	}
	return service.HeaderRules{Request: ops(h.Request), Response: ops(h.Response), RewriteLocation: h.RewriteLocation}
}

// RequestID is an http service's request_id block (l7/service.RequestID).
type RequestID struct {
	Header        string `yaml:"header"`         // default X-Request-Id
	TrustIncoming bool   `yaml:"trust_incoming"` // take a trusted_proxies peer's id
}

// L7 is r for l7/service (nil: the defaults).
func (r *RequestID) L7() service.RequestID {
	if r == nil {
		return service.RequestID{}
	}
	return service.RequestID{Header: r.Header, TrustIncoming: r.TrustIncoming}
}

// RouteHeader is a route's header condition: present, with Value when set.
type RouteHeader struct {
	Name  string `yaml:"name"`
	Value string `yaml:"value"`
}

// Timeouts are the L7 per-phase timeouts and the total deadline.
type Timeouts struct {
	Connect Duration `yaml:"connect"` // default 2s
	Send    Duration `yaml:"send"`    // default 30s
	Read    Duration `yaml:"read"`    // default 60s
	Total   Duration `yaml:"total"`   // default 90s
}

// Retry is the L7 retry policy.
type Retry struct {
	Attempts          int      `yaml:"attempts"` // tries in total, 1..10, default 3
	On                []string `yaml:"on"`       // default connect-failure, reset, timeout, 502, 503, 504, grpc-unavailable
	Methods           []string `yaml:"methods"`  // default GET, HEAD, OPTIONS, PUT, DELETE
	IdempotencyHeader string   `yaml:"idempotency_header"`
	NonIdempotent     bool     `yaml:"non_idempotent"`
	BudgetPercent     int      `yaml:"budget_percent"` // default 20
	Backoff           Backoff  `yaml:"backoff"`
	BufferBytes       int64    `yaml:"buffer_bytes"` // default 65536
}

// ServiceTLS are the PEM certificate (chain) and key files of an HTTPS
// listener: the default certificate, and more chosen by the client's SNI
// among their DNS names.
type ServiceTLS struct {
	Cert         string     `yaml:"cert"`
	Key          string     `yaml:"key"`
	Certificates []CertPair `yaml:"certificates"`
}

// CertPair is one certificate (chain) and its key (PEM files).
type CertPair struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Files are the listener's certificate files for l7/certs.
func (t ServiceTLS) Files() certs.Files {
	f := certs.Files{Cert: t.Cert, Key: t.Key}
	for _, c := range t.Certificates {
		f.SNI = append(f.SNI, certs.Pair{Cert: c.Cert, Key: c.Key})
	}
	return f
}

// ClientLimits protect an http listener from slow or greedy clients.
type ClientLimits struct {
	HeaderTimeout  Duration `yaml:"header_timeout"`   // default 10s
	IdleTimeout    Duration `yaml:"idle_timeout"`     // keep-alive, default 60s
	MaxHeaderBytes int      `yaml:"max_header_bytes"` // default 65536
	// TunnelIdleTimeout closes an upgraded (WebSocket) connection idle both ways this long.
	TunnelIdleTimeout Duration `yaml:"tunnel_idle_timeout"` // default 60s
	MaxConnections    int      `yaml:"max_connections"`     // open client connections, default 10000
	MaxRequests       int      `yaml:"max_requests"`        // requests in flight, default 1000
	// Per client address (an IPv6 /64; trusted_proxies not counted):
	// default a tenth of max_connections and max_requests, at least 1000
	// and 100, at most the limit itself.
	MaxConnectionsPerIP int   `yaml:"max_connections_per_ip"`
	MaxRequestsPerIP    int   `yaml:"max_requests_per_ip"`
	MaxBodyBytes        int64 `yaml:"max_body_bytes"` // default 64 MiB
	// BodyTimeout bounds each wait for a request body's next bytes;
	// past it, BodyMinRate bytes/s on average (0: none). 408 beyond.
	BodyTimeout       Duration `yaml:"body_timeout"`         // default 30s
	BodyMinRate       int64    `yaml:"body_min_rate"`        // default 500
	MaxHeaderCount    int      `yaml:"max_header_count"`     // default 100
	H2MaxStreams      int      `yaml:"h2_max_streams"`       // concurrent streams per HTTP/2 connection, default 100
	H2StreamWindow    int      `yaml:"h2_stream_window"`     // default 65536
	H2ConnWindow      int      `yaml:"h2_connection_window"` // default 1048576
	H2MaxResetStreams int      `yaml:"h2_max_reset_streams"` // rapid reset: GOAWAY past this many resets, default 200
	// UnderscoreHeaders: a request header field named with an underscore
	// is dropped (default), rejected (400) or allowed.
	UnderscoreHeaders string `yaml:"underscore_headers"`
}

// Upstream configures an http service's connections to its backends.
type Upstream struct {
	TLS                bool   `yaml:"tls"`                  // TLS to the backends
	CA                 string `yaml:"ca"`                   // PEM file of CAs to trust instead of the system's; tls only
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"` // tls only
	// ServerName is the TLS server name (SNI, verification) for every
	// backend; default: the service's host, else the DNS name the address
	// came from, else the address. Never the client's Host. tls only.
	ServerName string `yaml:"server_name"`
	// VerifyName is the name the backends' certificates are verified
	// against when it is not the server name (SNI). tls only, not with
	// insecure_skip_verify.
	VerifyName     string   `yaml:"verify_name"`
	MaxIdle        int      `yaml:"max_idle"`        // idle connections kept per address, default 64
	IdleTimeout    Duration `yaml:"idle_timeout"`    // default 30s
	MaxLifetime    Duration `yaml:"max_lifetime"`    // default 5m
	MaxConnections int      `yaml:"max_connections"` // per backend address, default 1024
	// Protocol is how requests go to the backends: http1 (default),
	// h2c (HTTP/2 in clear text, prior knowledge) or h2 (HTTP/2 over TLS,
	// ALPN h2; needs tls: true). gRPC backends need h2c or h2.
	Protocol string `yaml:"protocol"`
	// MaxStreams bounds the requests at once on one HTTP/2 connection to
	// a backend (h2c, h2), default 100; a backend's own lower
	// SETTINGS_MAX_CONCURRENT_STREAMS wins.
	MaxStreams int `yaml:"max_streams"`
	// MaxHeaderBytes and MaxHeaderCount bound a backend's response header
	// (default 65536 bytes, 100 fields): past either the client gets a
	// 502, not retried and not counted against the backend.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	MaxHeaderCount int `yaml:"max_header_count"`
}

// Upstream protocols (upstream.protocol).
const (
	UpstreamHTTP1 = "http1"
	UpstreamH2C   = "h2c"
	UpstreamH2    = "h2"
)

// Backoff is exponential backoff with full jitter.
type Backoff struct {
	Base Duration `yaml:"base"` // default 25ms
	Max  Duration `yaml:"max"`  // default 250ms
}
