// Package proxy is the L7 stage of sluice: an HTTP/1.1 and HTTP/2 reverse
// proxy for one `protocol: http` service, fed by the same pools as the L4
// data path. A service may carry many sites: its routes (l7/route) pick a
// pool, host, timeouts, retry policy and header rules per request; on TLS
// its certificates are chosen by SNI (l7/certs), and a request whose host
// has another certificate than its connection's gets 421.
//
// For every request it picks a backend among the pool's active addresses
// (power of two choices, least requests in flight), sends the request on a
// pooled keep-alive connection (l7/upstream) and applies the service's
// timeouts and retry policy (l7/retry): per-phase timeouts (connect, send,
// read) under one total deadline for all tries; retries on another backend
// only when the policy allows it, never once the response has started,
// never twice-delivering a non-idempotent request unless configured, within
// a retry budget and with jittered backoff. Failures feed passive ejection
// (l7/eject), whose decisions the pool applies, so the L4 tables drop an
// ejected address as well. Every request is written to the access log as
// one JSON line with every try and why it was or was not retried.
//
// A plain-text listener (no TLS, no h2c) is served by sluice's own
// HTTP/1.1 connection loop (h1.go: net/http's parser, no goroutine,
// context or background read per request); TLS and h2c listeners by
// net/http's server and x/net's HTTP/2 server. Both run the one request
// pipeline, ServeHTTP.
//
// The agent owns a Server per http service:
//
//	srv, err := proxy.New(proxy.Options{Service: svc, Pool: p, Ejection: ej, Log: log, AccessLog: acc})
//	go srv.Serve(ctx, ln)                 // returns after a graceful shutdown when ctx ends
//	srv.AddPools(more)                    // on reload: pools new to the service's routes
//	srv.Update(svc, ej)                   // on reload: new settings and routes, no connection dropped
//	srv.AddressChanged(addr, state)       // automatic with *pool.Pool (Subscribe); otherwise the agent calls it
//	srv.Shutdown(ctx)                     // graceful stop (also done by Serve when ctx ends)
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicelb/sluice/l7/accesslog"
	"github.com/sluicelb/sluice/l7/certs"
	"github.com/sluicelb/sluice/l7/eject"
	"github.com/sluicelb/sluice/l7/evloop"
	"github.com/sluicelb/sluice/l7/reqid"
	"github.com/sluicelb/sluice/l7/retry"
	"github.com/sluicelb/sluice/l7/route"
	"github.com/sluicelb/sluice/l7/service"
	"github.com/sluicelb/sluice/l7/upstream"
	"github.com/sluicelb/sluice/userspace/pool"
)

// PoolView is the part of *pool.Pool the proxy uses.
type PoolView interface {
	Backends() []pool.Backend
	Backend(addr netip.AddrPort) (pool.Backend, bool)
	Eject(now time.Time, addr netip.AddrPort, until time.Time, cause string) error
	Recover(now time.Time, addr netip.AddrPort, cause string) error
}

// settings are the settings of one route (the service's own pool is its
// default route): what a request keeps from start to end, whatever a
// reload changes meanwhile.
type settings struct {
	svc      service.Config // Pool and Host are the route's
	route    string         // the route's name, for the access log ("" when the service has no routes)
	timeouts service.Timeouts
	policy   *retry.Policy
	maxEject int
	maxBody  int64 // the route's max_body_bytes (0: the listener's client.max_body_bytes)
	// maxRequests bounds the route's requests in flight, counted in
	// active (0: no bound of its own); active is carried over from the
	// route of the same name by a reload, so requests started before it
	// still count.
	maxRequests int
	active      *atomic.Int64
	tunnelIdle  time.Duration // the route's tunnel_idle_timeout (0: the listener's)
	grp         *group        // the route's pool
}

// routing is what Update replaces atomically: the routing table and the
// settings of every route.
type routing struct {
	table   *route.Table
	targets []*settings // by route index (route.Table.Match)
	// single is the only route of a service without routes (no table
	// look-up, no dot-segment check: the service as before routes).
	single *settings
	paths  bool // some route matches on a path: dot segments are refused
	base   *settings
}

// group is what the server keeps per pool its routes send to.
type group struct {
	name        string
	pool        PoolView
	dns         DNSWaiter // the pool, when requests can wait for its next DNS answer (dnswait.go)
	tracker     *eject.Tracker
	snapshots   bool // the pool publishes its transitions: backends() may cache
	snapGen     atomic.Uint64
	snap        atomic.Pointer[backendSnap]
	panicking   atomic.Bool
	unsubscribe func() // from the pool's transitions, when it offers them
}

// Server proxies one http service.
type Server struct {
	name string
	log  *slog.Logger
	obs  Observer
	// groups are the pools the routes send to, by name: replaced whole
	// (copy on write) by AddPools and Update under groupsMu.
	groups   atomic.Pointer[map[string]*group]
	groupsMu sync.Mutex
	jitter   float64 // eject.Options.Jitter for the trackers the server makes
	pools    *upstream.Pools
	h2       *upstream.H2Pools // upstream.protocol h2c or h2 (nil: HTTP/1.1)
	budget   *retry.Budget
	selector Selector
	http     *http.Server
	shutdown time.Duration
	tlsOn    bool
	upTLS    bool
	ids      *reqid.Source        // request ids (shared by the agent's servers)
	limits   service.ClientLimits // with defaults
	// respHeader bounds a backend's response header (UpstreamOptions'
	// MaxHeaderBytes, MaxHeaderCount, with defaults).
	respHeader struct{ bytes, count int }
	active     atomic.Int64 // requests in flight (client.max_requests)
	activeIP   *perIP       // requests in flight per client address (client.max_requests_per_ip)

	cfg    atomic.Pointer[routing]
	access atomic.Pointer[accesslog.Logger] // nil: no access log
	certs  atomic.Pointer[certs.Set]
	// certMu orders the loads of certificates (SetCertificates,
	// RefreshCertificates): a check of the files never stores a set
	// older than one a reload stored meanwhile.
	certMu sync.Mutex

	// removals counts the addresses removed (AddressChanged to Removed),
	// raised before their connections are cut: a request that sees it
	// move between its start and a connection taken checks that its
	// address was not removed meanwhile (removedSince).
	removals atomic.Uint64

	loads   sync.Map  // netip.AddrPort → *addrStat
	records sync.Pool // *accesslog.Record

	tunnels tunnels

	bufs sync.Pool // *[]byte of copyBufSize, for response bodies

	// h2c is whether the listener serves h2c; h2serve serves one HTTP/2
	// connection through a frameGuard (nil without TLS or h2c; see
	// setupHTTP2).
	h2c     bool
	h2serve func(hs *http.Server, c net.Conn, h http.Handler, sawPreface bool)
	// h1 serves a plain-text listener (no TLS, no h2c) with sluice's own
	// HTTP/1.1 loop (h1.go); nil: net/http's server serves it.
	h1 *h1Server
	// eventLoops: h1's connections are served by event loops (l7/evloop),
	// made by the first Serve and stopped by Shutdown.
	eventLoops   bool
	loopsMu      sync.Mutex
	loops        *evloop.Group
	loopsStopped bool
	sharedLoops  *evloop.Group // Options.Loops: not the server's to close
}

const copyBufSize = 32 << 10

// compile checks a service and its routes and builds their settings;
// groups are the server's pools (a route naming another pool is refused:
// the agent replaces the server when the set of pools changes); ej is the
// ejection block of the service's own pool (the trackers of the others
// have theirs).
func compile(svc service.Config, ej eject.Config, groups map[string]*group) (*routing, error) {
	base, err := compileRoute(svc, svc.Pool, svc.Host, svc.Timeouts, svc.Retry, svc.Headers)
	if err != nil {
		return nil, err
	}
	if err := eject.Validate(ej); err != nil {
		return nil, fmt.Errorf("service %s: pool %s: %w", svc.Name, svc.Pool, err)
	}
	rt := &routing{base: base}
	grp := func(st *settings) error {
		g := groups[st.svc.Pool]
		if g == nil {
			return fmt.Errorf("service %s: route %s: pool %s is not one of the server's (replace the server)", svc.Name, st.route, st.svc.Pool)
		}
		st.grp = g
		st.maxEject = ej.MaxEjectedPercent
		if st.svc.Pool != svc.Pool {
			st.maxEject = g.tracker.Config().MaxEjectedPercent
		}
		return nil
	}
	if len(svc.Routes) == 0 {
		if err := grp(base); err != nil {
			return nil, err
		}
		rt.single = base
		return rt, nil
	}
	if rt.table, err = svc.Table(); err != nil {
		return nil, fmt.Errorf("service %s: %w", svc.Name, err)
	}
	rt.paths = rt.table.RoutesPaths()
	for _, r := range svc.Routes {
		host := r.Host
		if host == "" {
			host = svc.Host
		}
		retr := r.Retry
		if retr == nil {
			retr = svc.Retry
		}
		hdr := svc.Headers
		if r.Headers != nil {
			hdr = *r.Headers
		}
		st, err := compileRoute(svc, r.Pool, host, r.Timeouts.Inherit(svc.Timeouts), retr, hdr)
		if err != nil {
			return nil, fmt.Errorf("route %s: %w", r.Match.Name, err)
		}
		if r.SNI != "" {
			st.svc.SNI = r.SNI
		}
		if r.MaxBodyBytes < 0 {
			return nil, fmt.Errorf("service %s: route %s: max_body_bytes %d is negative", svc.Name, r.Match.Name, r.MaxBodyBytes)
		}
		st.maxBody = r.MaxBodyBytes
		if r.MaxRequests < 0 || r.TunnelIdleTimeout < 0 {
			return nil, fmt.Errorf("service %s: route %s: max_requests %d and tunnel_idle_timeout %s must not be negative", svc.Name, r.Match.Name, r.MaxRequests, r.TunnelIdleTimeout)
		}
		st.maxRequests, st.tunnelIdle = r.MaxRequests, r.TunnelIdleTimeout
		st.active = new(atomic.Int64)
		st.route = r.Match.Name
		if err := grp(st); err != nil {
			return nil, err
		}
		rt.targets = append(rt.targets, st)
	}
	if svc.Pool != "" {
		base.route = service.DefaultRouteName
		if err := grp(base); err != nil {
			return nil, err
		}
		rt.targets = append(rt.targets, base)
	}
	return rt, nil
}

// compileRoute builds the settings of one route.
func compileRoute(svc service.Config, pool, host string, t service.Timeouts, r *retry.Config, hdr service.HeaderRules) (*settings, error) {
	if err := hdr.Check(); err != nil {
		return nil, fmt.Errorf("service %s: headers: %w", svc.Name, err)
	}
	t = t.WithDefaults()
	if t.Connect < 0 || t.Send < 0 || t.Read < 0 || t.Total < 0 {
		return nil, fmt.Errorf("service %s: timeouts must be positive (connect %s, send %s, read %s, total %s)",
			svc.Name, t.Connect, t.Send, t.Read, t.Total)
	}
	if r == nil {
		d := retry.DefaultConfig()
		r = &d
	}
	pol, err := retry.NewPolicy(r)
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", svc.Name, err)
	}
	svc.Pool, svc.Host, svc.Routes, svc.Headers = pool, host, nil, hdr
	if err := svc.RequestID.Check(); err != nil {
		return nil, fmt.Errorf("service %s: %w", svc.Name, err)
	}
	// Canonical once, for the look-up of every request.
	svc.RequestID.Header = svc.RequestID.HeaderName()
	if svc.Host == "" {
		svc.Host = service.HostKeep
	}
	if svc.Upgrades == nil {
		svc.Upgrades = service.DefaultUpgrades()
	}
	for _, u := range svc.Upgrades {
		if err := service.CheckUpgrade(u); err != nil {
			return nil, fmt.Errorf("service %s: %w", svc.Name, err)
		}
	}
	return &settings{svc: svc, timeouts: t, policy: pol}, nil
}

// keepCounts carries the in-flight counts of the routes of old over to
// the routes of rt with the same name (a route's max_requests counts its
// requests across a reload).
func (rt *routing) keepCounts(old *routing) {
	if old == nil {
		return
	}
	for _, st := range rt.targets {
		for _, o := range old.targets {
			if st.active != nil && o.active != nil && o.route == st.route {
				st.active = o.active
			}
		}
	}
}

// longestTotal is the longest total deadline of the routes (the
// listener's write timeout must not cut any of them).
func (rt *routing) longestTotal() time.Duration {
	d := rt.base.timeouts.Total
	for _, st := range rt.targets {
		d = max(d, st.timeouts.Total)
	}
	return d
}

// New validates opts and builds a server; nothing listens until Serve.
func New(opts Options) (*Server, error) {
	if opts.Pool == nil && opts.Service.Pool != "" || opts.Pool == nil && len(opts.Service.Routes) == 0 {
		return nil, fmt.Errorf("service %s: no pool", opts.Service.Name)
	}
	if opts.Tracker != nil {
		opts.Ejection = opts.Tracker.Config()
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("service", opts.Service.Name)
	s := &Server{
		name:     opts.Service.Name,
		log:      log,
		obs:      opts.Observer,
		selector: opts.Selector,
		shutdown: opts.ShutdownTimeout,
		upTLS:    opts.Upstream.TLS != nil,
		jitter:   opts.EjectionJitter,
		ids:      opts.RequestIDs,
	}
	if s.ids == nil {
		s.ids = reqid.NewSource()
	}
	s.bufs.New = func() any { b := make([]byte, copyBufSize); return &b }
	s.records.New = func() any { return new(accesslog.Record) }
	if s.obs == nil {
		s.obs = NopObserver{}
	}
	if s.selector == nil {
		s.selector = LeastRequests{}
	}
	if s.shutdown <= 0 {
		s.shutdown = service.DefaultShutdownTimeout
	}
	s.respHeader.bytes, s.respHeader.count = opts.Upstream.MaxHeaderBytes, opts.Upstream.MaxHeaderCount
	if s.respHeader.bytes <= 0 {
		s.respHeader.bytes = upstream.DefaultMaxHeaderBytes
	}
	if s.respHeader.count <= 0 {
		s.respHeader.count = upstream.DefaultMaxHeaderCount
	}
	// One group per pool: the service's own, and those of its routes.
	s.pools = upstream.New(upstream.Options{
		MaxIdlePerAddr:  opts.Upstream.MaxIdlePerAddr,
		IdleTimeout:     opts.Upstream.IdleTimeout,
		MaxLifetime:     opts.Upstream.MaxLifetime,
		MaxConnsPerAddr: opts.Upstream.MaxConnsPerAddr,
		MaxDialsPerAddr: opts.Upstream.MaxDialsPerAddr,
		TLS:             opts.Upstream.TLS,
		Dial:            opts.Upstream.Dial,
		Log:             log,
		OnClose: func(addr netip.AddrPort, reason string) {
			s.obs.UpstreamClosed(s.name, addr, reason)
		},
	})
	switch opts.Upstream.Protocol {
	case "", ProtocolHTTP1:
	case ProtocolH2C, ProtocolH2:
		if (opts.Upstream.Protocol == ProtocolH2) != (opts.Upstream.TLS != nil) {
			s.pools.Close()
			return nil, fmt.Errorf("service %s: upstream protocol h2 is HTTP/2 over TLS and h2c without: upstream TLS must be set for h2 only", opts.Service.Name)
		}
		s.h2 = upstream.NewH2(upstream.H2Options{
			TLS:               opts.Upstream.TLS,
			MaxStreamsPerConn: opts.Upstream.MaxStreamsPerConn,
			MaxConnsPerAddr:   opts.Upstream.MaxConnsPerAddr,
			IdleTimeout:       opts.Upstream.IdleTimeout,
			MaxLifetime:       opts.Upstream.MaxLifetime,
			MaxHeaderBytes:    s.respHeader.bytes,
			Dial:              opts.Upstream.Dial,
			Log:               log,
			OnClose: func(addr netip.AddrPort, reason string) {
				s.obs.UpstreamClosed(s.name, addr, reason)
			},
		})
	default:
		s.pools.Close()
		return nil, fmt.Errorf("service %s: upstream protocol %q: must be http1, h2c or h2", opts.Service.Name, opts.Upstream.Protocol)
	}
	// One group per pool: the service's own, and those of its routes.
	pools := make(map[string]RoutePool, len(opts.RoutePools)+1)
	for name, rp := range opts.RoutePools {
		pools[name] = rp
	}
	if opts.Service.Pool != "" {
		pools[opts.Service.Pool] = RoutePool{Pool: opts.Pool, Tracker: opts.Tracker, Ejection: opts.Ejection}
	}
	groups := make(map[string]*group, len(pools))
	for name, rp := range pools {
		g, err := s.newGroup(name, rp)
		if err != nil {
			for _, g := range groups {
				g.stop()
			}
			s.pools.Close()
			return nil, fmt.Errorf("service %s: %w", opts.Service.Name, err)
		}
		groups[name] = g
	}
	s.groups.Store(&groups)
	st, err := compile(opts.Service, opts.Ejection, groups)
	if err != nil {
		s.stopGroups()
		s.pools.Close()
		return nil, err
	}
	s.cfg.Store(st)
	s.access.Store(opts.AccessLog)
	s.budget = retry.NewBudget(st.base.policy.BudgetPercent(), retry.DefaultMinRetries)

	cl := opts.Client.WithDefaults()
	s.limits = cl
	s.activeIP = newPerIP(cl.MaxRequestsPerIP)
	s.http = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: cl.HeaderTimeout,
		IdleTimeout:       cl.IdleTimeout,
		// Every request moves the write deadline to its own total deadline
		// (ServeHTTP); WriteTimeout makes the server reset it when it reads
		// the next request header, so a deadline of an earlier request
		// never cuts a later one, and bounds what the server writes itself
		// (its own error answers, the end of a response).
		WriteTimeout:   cl.HeaderTimeout + st.longestTotal(),
		MaxHeaderBytes: cl.MaxHeaderBytes,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          cl.H2MaxStreams,
			MaxReceiveBufferPerStream:     cl.H2StreamWindow,
			MaxReceiveBufferPerConnection: cl.H2ConnWindow,
			// The protocol's default frame size (Go offers 1 MiB): a
			// larger frame is a FRAME_SIZE_ERROR, as RFC 9113 4.2 says
			// for a peer that did not raise it.
			MaxReadFrameSize: 16 << 10,
		},
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	if opts.TLS != nil {
		if err := s.SetCertificates(*opts.TLS); err != nil {
			return nil, err
		}
		s.tlsOn = true
		protos.SetHTTP2(true)
		s.http.TLSConfig = &tls.Config{
			MinVersion: tls.VersionTLS12,
			GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
				return s.certs.Load().Pick(hello.ServerName), nil
			},
		}
	}
	if opts.H2C {
		protos.SetUnencryptedHTTP2(true)
		s.h2c = true
	}
	s.http.Protocols = &protos
	if opts.TLS != nil || opts.H2C {
		if err := s.setupHTTP2(cl); err != nil {
			return nil, err
		}
	} else if !opts.NetHTTP1 {
		s.h1 = &h1Server{s: s}
		// Event loops need every wait of a request to be one of theirs:
		// an HTTP/2 upstream's streams are served by goroutines of its
		// own, so such a service keeps a goroutine per connection.
		s.eventLoops = opts.EventLoops && s.h2 == nil
		s.sharedLoops = opts.Loops
	}
	return s, nil
}

// SetAccessLog makes later requests log to a (nil: nowhere), e.g. when the
// service's access_log changed on reload.
func (s *Server) SetAccessLog(a *accesslog.Logger) { s.access.Store(a) }

// SetCertificate loads a new listener certificate (on reload), the only
// one; handshakes after it use the new one, open connections keep theirs.
func (s *Server) SetCertificate(certFile, keyFile string) error {
	return s.SetCertificates(TLSFiles{Cert: certFile, Key: keyFile})
}

// SetCertificates loads the listener's certificates (on reload): the
// default one and those chosen by SNI. Handshakes after it use the new
// set, open connections keep theirs; on an error the old set stays.
func (s *Server) SetCertificates(f TLSFiles) error {
	s.certMu.Lock()
	defer s.certMu.Unlock()
	cs, err := certs.Load(f)
	if err != nil {
		return fmt.Errorf("service %s: %w", s.name, err)
	}
	s.certs.Store(cs)
	return nil
}

// RefreshCertificates loads the listener's certificate files again when
// they changed since they were loaded (a renewal: certbot, cert-manager,
// a copy), so new handshakes get the new certificates without a reload;
// open connections keep theirs. It returns whether it loaded them; on an
// error (a file removed, half written, a key that does not match its
// certificate) the certificates served stay as they were, and a later
// call tries again. A server without TLS does nothing.
func (s *Server) RefreshCertificates() (bool, error) {
	s.certMu.Lock()
	defer s.certMu.Unlock()
	cur := s.certs.Load()
	if cur == nil {
		return false, nil
	}
	changed, err := cur.Changed()
	if err != nil || !changed {
		return false, err
	}
	cs, err := certs.Load(cur.Files())
	if err != nil {
		return false, err
	}
	s.certs.Store(cs)
	return true, nil
}

// SetUpstreamTLS makes cfg the TLS configuration of the backend
// connections dialled from now on (the CA file of upstream.ca renewed);
// open ones keep theirs. cfg is nil exactly when the service's backends
// are plain text: TLS is not switched on or off on a running server.
func (s *Server) SetUpstreamTLS(cfg *tls.Config) error {
	if err := s.pools.SetTLS(cfg); err != nil {
		return fmt.Errorf("service %s: %w", s.name, err)
	}
	if s.h2 != nil {
		if err := s.h2.SetTLS(cfg); err != nil {
			return fmt.Errorf("service %s: %w", s.name, err)
		}
	}
	return nil
}

// Certificates is what the listener's certificates say of themselves
// (nil without TLS): the default one first.
func (s *Server) Certificates() []certs.Info {
	if cs := s.certs.Load(); cs != nil {
		return cs.Info()
	}
	return nil
}

// Dispatcher is a listener that can run the accept loop itself and give
// each connection to a function on the accepting goroutine, instead of
// through Accept: the agent's listener hand-off, which accepts for
// whichever server serves the address (see userspace/agent/handoff.go).
// The HTTP/1 connection loop uses it to start a connection's goroutine
// straight from the accept, with no hand-over between two goroutines per
// connection; TLS and h2c listeners use Accept.
type Dispatcher interface {
	net.Listener
	// Dispatch calls serve with each connection accepted from now on,
	// until the listener is closed (then it returns net.ErrClosed).
	// serve returns false when its server takes no more connections
	// (shutting down): the connection is then the Dispatcher's again, to
	// give to another server or close. serve does not block.
	Dispatch(serve func(net.Conn) bool) error
}

// Serve accepts connections on l until ctx ends, then shuts down gracefully
// (in-flight requests finish, within the shutdown timeout) and returns nil.
// With TLS, l is a plain TCP listener: Serve does the handshakes (ALPN h2,
// http/1.1). Serve closes l. A plain-text listener that is a Dispatcher
// (and served by the HTTP/1 loop) gives its connections through Dispatch.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	sweepCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() { s.pools.Run(sweepCtx, time.Second) })
	if s.h2 != nil {
		wg.Go(func() { s.h2.Run(sweepCtx, time.Second) })
	}
	defer wg.Wait()

	errc := make(chan error, 1)
	go func() {
		ll := newLimitListener(l, s.limits.MaxConnections, s.limits.MaxConnectionsPerIP,
			func() []netip.Prefix { return s.cfg.Load().base.svc.TrustedProxies },
			func(limit string) { s.obs.Refused(s.name, limit) })
		if s.tlsOn {
			errc <- s.http.ServeTLS(ll, "", "")
		} else if dl, ok := l.(Dispatcher); ok && s.h1 != nil {
			s.startLoops()
			errc <- s.h1.dispatch(dl, ll)
		} else if s.h1 != nil {
			s.startLoops()
			errc <- s.h1.serve(ll)
		} else {
			var pl net.Listener = ll
			if s.h2c {
				pl = h2cGate{ll}
			}
			errc <- s.http.Serve(pl)
		}
	}()
	s.log.Info("l7 service listening", "listen", l.Addr().String(), "tls", s.tlsOn)
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("service %s: serve: %w", s.name, err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.shutdown)
		defer cancel()
		err := s.Shutdown(sctx)
		<-errc
		return err
	}
}

// startLoops makes the event loops h1 serves its connections on, once
// (when the server uses them, and until Shutdown stopped them).
func (s *Server) startLoops() {
	s.loopsMu.Lock()
	defer s.loopsMu.Unlock()
	if !s.eventLoops || s.loops != nil || s.loopsStopped {
		return
	}
	g := s.sharedLoops
	if g == nil {
		var err error
		g, err = evloop.NewGroup(0, s.log)
		if err != nil {
			// Served with a goroutine per connection instead.
			s.log.Warn("event loops not available", "error", err)
			return
		}
		s.log.Info("l7 event loops", "loops", g.Stats().Loops)
	}
	s.loops = g
	s.h1.mu.Lock()
	s.h1.loops = g
	s.h1.mu.Unlock()
}

// LoopStats counts the event loops' tasks and sockets; false when the
// server has none (its connections have a goroutine each, or it is not
// served by the HTTP/1 loop).
func (s *Server) LoopStats() (evloop.Stats, bool) {
	s.loopsMu.Lock()
	g := s.loops
	s.loopsMu.Unlock()
	if g == nil {
		return evloop.Stats{}, false
	}
	return g.Stats(), true
}

// stopLoops stops the event loops (their connections are closed by then).
func (s *Server) stopLoops() {
	s.loopsMu.Lock()
	g := s.loops
	s.loopsStopped = true
	s.loopsMu.Unlock()
	if g != nil && g != s.sharedLoops {
		g.Close()
	}
}

// ListenKeepAlive is the TCP keep-alive of a service's listening socket
// (net.ListenConfig.KeepAlive): none. Every wait on a client connection
// is bounded by a client timeout (header, idle, tunnel idle, the
// request's total), so keep-alive probes would find nothing those do not,
// and turning them on costs four setsockopt calls per accepted
// connection. nginx and HAProxy do not turn them on by default either.
const ListenKeepAlive = -1

// ListenAndServe listens on the service's listen address and serves until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context) error {
	addr := s.cfg.Load().base.svc.Listen
	lc := net.ListenConfig{KeepAlive: ListenKeepAlive}
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("service %s: listen %s: %w", s.name, addr, err)
	}
	return s.Serve(ctx, l)
}

// Shutdown stops accepting, closes idle client connections, waits for
// in-flight requests and upgraded (WebSocket) connections until ctx ends
// (the grace period), force-closes every client connection and tunnel
// still open then, and closes the upstream pools.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	if s.h1 != nil {
		err = s.h1.shutdown(ctx) // closes what is left when ctx ends
	} else {
		err = s.http.Shutdown(ctx)
	}
	if err != nil {
		// The grace period is over: what is left is closed, so a stalled
		// client cannot hold a request (and its backend connection) open.
		_ = s.http.Close()
	}
	s.tunnels.shutdown(ctx)
	s.pools.Close()
	if s.h2 != nil {
		s.h2.Close()
	}
	s.stopLoops()
	s.stopGroups()
	if err != nil {
		return fmt.Errorf("service %s: shutdown: %w", s.name, err)
	}
	return nil
}

// Update applies a reloaded service and its pool's ejection settings. Requests in
// flight finish under the settings they started with; no connection is
// dropped. The pool, listen address, TLS files and client limits are not
// reloadable here: the agent replaces the Server when they change (a
// changed pool or listen address is refused with an error).
func (s *Server) Update(svc service.Config, ej eject.Config) error {
	s.groupsMu.Lock()
	defer s.groupsMu.Unlock()
	groups := *s.groups.Load()
	st, err := compile(svc, ej, groups)
	if err != nil {
		return err
	}
	if cur := s.cfg.Load().base.svc; svc.Pool != cur.Pool || svc.Listen != cur.Listen {
		return fmt.Errorf("service %s: pool or listen address changed (%s %s → %s %s): replace the server",
			s.name, cur.Pool, cur.Listen, svc.Pool, svc.Listen)
	}
	if g := groups[svc.Pool]; g != nil {
		if err := g.tracker.SetConfig(ej); err != nil {
			return fmt.Errorf("service %s: %w", s.name, err)
		}
	}
	s.budget.SetPercent(st.base.policy.BudgetPercent())
	st.keepCounts(s.cfg.Load())
	s.cfg.Store(st)
	// Pools no route sends to any more are let go (requests in flight
	// keep theirs: a group works unsubscribed, its snapshot ages out).
	used := map[string]bool{svc.Pool: true}
	for _, t := range st.targets {
		used[t.svc.Pool] = true
	}
	kept := make(map[string]*group, len(groups))
	for name, g := range groups {
		if used[name] {
			kept[name] = g
		} else {
			g.stop()
		}
	}
	s.groups.Store(&kept)
	s.log.Info("l7 service updated")
	return nil
}

// AddPools gives the server more pools its routes may send to, before an
// Update naming them (a reload adding a site with a pool of its own: no
// new server, no connection closed). A name it has already must be the
// same pool (else: replace the server).
func (s *Server) AddPools(more map[string]RoutePool) error {
	s.groupsMu.Lock()
	defer s.groupsMu.Unlock()
	cur := *s.groups.Load()
	next := make(map[string]*group, len(cur)+len(more))
	for name, g := range cur {
		next[name] = g
	}
	var added []*group
	for name, rp := range more {
		if g, ok := cur[name]; ok {
			if g.pool != rp.Pool {
				for _, a := range added {
					a.stop()
				}
				return fmt.Errorf("service %s: pool %s is another pool now: replace the server", s.name, name)
			}
			continue
		}
		g, err := s.newGroup(name, rp)
		if err != nil {
			for _, a := range added {
				a.stop()
			}
			return fmt.Errorf("service %s: %w", s.name, err)
		}
		added = append(added, g)
		next[name] = g
	}
	s.groups.Store(&next)
	return nil
}

// newGroup builds the state of one pool and follows its transitions when
// it publishes them (*pool.Pool does; the agent need not call
// AddressChanged then).
func (s *Server) newGroup(name string, rp RoutePool) (*group, error) {
	if rp.Pool == nil {
		return nil, fmt.Errorf("pool %s: no pool", name)
	}
	g := &group{name: name, pool: rp.Pool, tracker: rp.Tracker}
	if g.tracker == nil {
		var err error
		g.tracker, err = eject.New(rp.Ejection, rp.Pool, eject.Options{
			Jitter: s.jitter, Log: s.log.With("pool", name),
			Observe: func(ev eject.Event) { s.obs.Ejection(s.name, ev) },
		})
		if err != nil {
			return nil, fmt.Errorf("pool %s: %w", name, err)
		}
	}
	g.dns, _ = rp.Pool.(DNSWaiter)
	if sub, ok := rp.Pool.(interface {
		Subscribe(pool.Observer) func()
	}); ok {
		g.snapshots = true
		g.unsubscribe = sub.Subscribe(func(t pool.Transition) { s.addressChanged(g, t.Addr, t.To) })
	}
	return g, nil
}

// stop ends the group's subscription to its pool.
func (g *group) stop() {
	if g.unsubscribe != nil {
		g.unsubscribe()
	}
}

// stopGroups stops every group (shutdown).
func (s *Server) stopGroups() {
	s.groupsMu.Lock()
	defer s.groupsMu.Unlock()
	for _, g := range *s.groups.Load() {
		g.stop()
	}
}

// AddressChanged is called on every transition of an address of one of
// the service's pools: by the pool itself when it has Subscribe
// (*pool.Pool), otherwise by the agent. An address that is no longer
// active (draining, ejected, removed) gets no new request; its idle
// pooled connections are closed at once and busy ones when their request
// ends. With several pools, it applies to every pool holding addr.
func (s *Server) AddressChanged(addr netip.AddrPort, state pool.State) {
	for _, g := range *s.groups.Load() {
		s.addressChanged(g, addr, state)
	}
}

func (s *Server) addressChanged(g *group, addr netip.AddrPort, state pool.State) {
	g.snapGen.Add(1)
	if state == pool.Active {
		if v, ok := s.loads.Load(addr); ok {
			v.(*addrStat).gone.Store(false) // back before its last request ended
		}
		return
	}
	s.pools.Retire(addr)
	if s.h2 != nil {
		s.h2.Retire(addr)
	}
	if state == pool.Removed {
		// Removed (drain_timeout passed, or gone from the config): what
		// is still in flight to it is cut, as the data path resets a
		// flow pinned to a removed backend; nothing goes on to an address
		// the pool no longer has (tunnels and long streams included).
		// Unless another of the service's pools still has it: the
		// connections are the service's, shared by its pools.
		if !s.heldElsewhere(g, addr) {
			s.removals.Add(1)
			s.pools.Cut(addr)
			if s.h2 != nil {
				s.h2.Cut(addr)
			}
		}
		g.tracker.Forget(addr)
		if v, ok := s.loads.Load(addr); ok {
			// Forgotten now, or by the last request in flight to it (a
			// cut one ends a moment later).
			as := v.(*addrStat)
			as.gone.Store(true)
			s.forgetStat(addr, as)
		}
	}
}

// heldElsewhere is whether a pool of the service other than g's (any,
// with g nil) has addr in a state other than removed.
func (s *Server) heldElsewhere(g *group, addr netip.AddrPort) bool {
	for _, o := range *s.groups.Load() {
		if g != nil && (o == g || o.pool == g.pool) {
			continue
		}
		if b, ok := o.pool.Backend(addr); ok && b.State != pool.Removed {
			return true
		}
	}
	return false
}

// removedSince is whether addr was removed (no pool of the service has
// it in another state) since the request that read removals began. A
// request picks its address from a copy of the pool made before, and a
// connection dialled or checked while the address is removed is not
// among those Cut closes: the request must not go on to it.
func (s *Server) removedSince(removals uint64, addr netip.AddrPort) bool {
	return s.removals.Load() != removals && !s.heldElsewhere(nil, addr)
}

// Transition is AddressChanged in the shape of a pool.Observer.
func (s *Server) Transition(t pool.Transition) { s.AddressChanged(t.Addr, t.To) }

// UpstreamStats returns the connection counts of one backend address.
// Over HTTP/2, Busy counts streams and Idle connections without one.
func (s *Server) UpstreamStats(addr netip.AddrPort) upstream.Stats {
	if s.h2 != nil {
		h := s.h2.Stats(addr)
		return upstream.Stats{Busy: h.Streams, Idle: h.IdleConns, Dialled: h.Dialled, Reused: h.Reused}
	}
	return s.pools.Stats(addr)
}

// BudgetStats returns the retry budget's counters.
func (s *Server) BudgetStats() retry.BudgetStats { return s.budget.Stats() }

// Panicking reports whether the service is in panic mode.
func (s *Server) Panicking() bool {
	for _, g := range *s.groups.Load() {
		if g.panicking.Load() {
			return true
		}
	}
	return false
}
