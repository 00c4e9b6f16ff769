// Package proxy is the L7 stage of sluice: an HTTP/1.1 and HTTP/2 reverse
// proxy for one `protocol: http` service, fed by the same pool as the L4
// data path.
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
// The agent owns a Server per http service:
//
//	srv, err := proxy.New(proxy.Options{Service: svc, Pool: p, Ejection: ej, Log: log, AccessLog: acc})
//	go srv.Serve(ctx, ln)                 // returns after a graceful shutdown when ctx ends
//	srv.Update(svc, ej)                   // on reload: new settings, no connection dropped
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
	"github.com/sluicelb/sluice/l7/eject"
	"github.com/sluicelb/sluice/l7/retry"
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

// settings is what Update replaces atomically.
type settings struct {
	svc      service.Config
	timeouts service.Timeouts
	policy   *retry.Policy
	maxEject int
}

// Server proxies one http service.
type Server struct {
	name     string
	log      *slog.Logger
	obs      Observer
	pool     PoolView
	dns      DNSWaiter // the pool, when requests can wait for its next DNS answer (dnswait.go)
	pools    *upstream.Pools
	tracker  *eject.Tracker
	budget   *retry.Budget
	selector Selector
	http     *http.Server
	shutdown time.Duration
	tlsOn    bool
	upTLS    bool
	limits   service.ClientLimits // with defaults
	active   atomic.Int64         // requests in flight (client.max_requests)

	cfg       atomic.Pointer[settings]
	access    atomic.Pointer[accesslog.Logger] // nil: no access log
	cert      atomic.Pointer[tls.Certificate]
	panicking atomic.Bool

	loads     sync.Map // netip.AddrPort → *addrStat
	snapshots bool     // the pool publishes its transitions: backends() may cache
	snapGen   atomic.Uint64
	snap      atomic.Pointer[backendSnap]
	records   sync.Pool // *accesslog.Record

	unsubscribe func() // from the pool's transitions, when it offers them
	tunnels     tunnels

	bufs sync.Pool // *[]byte of copyBufSize, for response bodies

	// h2c is whether the listener serves h2c; h2serve serves one HTTP/2
	// connection through a frameGuard (nil without TLS or h2c; see
	// setupHTTP2).
	h2c     bool
	h2serve func(hs *http.Server, c net.Conn, h http.Handler, sawPreface bool)
}

const copyBufSize = 32 << 10

func compile(svc service.Config, ej eject.Config) (*settings, error) {
	t := svc.Timeouts.WithDefaults()
	if t.Connect < 0 || t.Send < 0 || t.Read < 0 || t.Total < 0 {
		return nil, fmt.Errorf("service %s: timeouts must be positive (connect %s, send %s, read %s, total %s)",
			svc.Name, t.Connect, t.Send, t.Read, t.Total)
	}
	r := svc.Retry
	if r == nil {
		d := retry.DefaultConfig()
		r = &d
	}
	pol, err := retry.NewPolicy(r)
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", svc.Name, err)
	}
	if err := eject.Validate(ej); err != nil {
		return nil, fmt.Errorf("service %s: pool %s: %w", svc.Name, svc.Pool, err)
	}
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
	return &settings{svc: svc, timeouts: t, policy: pol, maxEject: ej.MaxEjectedPercent}, nil
}

// New validates opts and builds a server; nothing listens until Serve.
func New(opts Options) (*Server, error) {
	if opts.Pool == nil {
		return nil, fmt.Errorf("service %s: no pool", opts.Service.Name)
	}
	if opts.Tracker != nil {
		opts.Ejection = opts.Tracker.Config()
	}
	st, err := compile(opts.Service, opts.Ejection)
	if err != nil {
		return nil, err
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
		pool:     opts.Pool,
		selector: opts.Selector,
		shutdown: opts.ShutdownTimeout,
		upTLS:    opts.Upstream.TLS != nil,
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
	s.cfg.Store(st)
	s.access.Store(opts.AccessLog)
	s.budget = retry.NewBudget(st.policy.BudgetPercent(), retry.DefaultMinRetries)
	s.tracker = opts.Tracker
	if s.tracker == nil {
		s.tracker, err = eject.New(opts.Ejection, opts.Pool, eject.Options{
			Jitter: opts.EjectionJitter, Log: log,
			Observe: func(ev eject.Event) { s.obs.Ejection(s.name, ev) },
		})
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", opts.Service.Name, err)
		}
	}
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

	s.dns, _ = opts.Pool.(DNSWaiter)

	// A pool that publishes its transitions (*pool.Pool does) is followed
	// directly; the agent need not call AddressChanged then.
	if sub, ok := opts.Pool.(interface {
		Subscribe(pool.Observer) func()
	}); ok {
		s.unsubscribe = sub.Subscribe(s.Transition)
		s.snapshots = true
	}

	cl := opts.Client.WithDefaults()
	s.limits = cl
	s.http = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: cl.HeaderTimeout,
		IdleTimeout:       cl.IdleTimeout,
		// Every request moves the write deadline to its own total deadline
		// (ServeHTTP); WriteTimeout makes the server reset it when it reads
		// the next request header, so a deadline of an earlier request
		// never cuts a later one, and bounds what the server writes itself
		// (its own error answers, the end of a response).
		WriteTimeout:   cl.HeaderTimeout + st.timeouts.Total,
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
		if err := s.SetCertificate(opts.TLS.Cert, opts.TLS.Key); err != nil {
			return nil, err
		}
		s.tlsOn = true
		protos.SetHTTP2(true)
		s.http.TLSConfig = &tls.Config{
			MinVersion: tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				return s.cert.Load(), nil
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
	}
	return s, nil
}

// SetAccessLog makes later requests log to a (nil: nowhere), e.g. when the
// service's access_log changed on reload.
func (s *Server) SetAccessLog(a *accesslog.Logger) { s.access.Store(a) }

// SetCertificate loads a new listener certificate (on reload); handshakes
// after it use the new one, open connections keep theirs.
func (s *Server) SetCertificate(certFile, keyFile string) error {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("service %s: load certificate: %w", s.name, err)
	}
	s.cert.Store(&c)
	return nil
}

// Serve accepts connections on l until ctx ends, then shuts down gracefully
// (in-flight requests finish, within the shutdown timeout) and returns nil.
// With TLS, l is a plain TCP listener: Serve does the handshakes (ALPN h2,
// http/1.1). Serve closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	sweepCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() { s.pools.Run(sweepCtx, time.Second) })
	defer wg.Wait()

	errc := make(chan error, 1)
	go func() {
		ll := newLimitListener(l, s.limits.MaxConnections, func() { s.obs.Refused(s.name, limitConnections) })
		if s.tlsOn {
			errc <- s.http.ServeTLS(ll, "", "")
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

// ListenAndServe listens on the service's listen address and serves until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context) error {
	addr := s.cfg.Load().svc.Listen
	var lc net.ListenConfig
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
	err := s.http.Shutdown(ctx)
	if err != nil {
		// The grace period is over: what is left is closed, so a stalled
		// client cannot hold a request (and its backend connection) open.
		_ = s.http.Close()
	}
	s.tunnels.shutdown(ctx)
	s.pools.Close()
	if s.unsubscribe != nil {
		s.unsubscribe()
	}
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
	st, err := compile(svc, ej)
	if err != nil {
		return err
	}
	if cur := s.cfg.Load().svc; svc.Pool != cur.Pool || svc.Listen != cur.Listen {
		return fmt.Errorf("service %s: pool or listen address changed (%s %s → %s %s): replace the server",
			s.name, cur.Pool, cur.Listen, svc.Pool, svc.Listen)
	}
	if err := s.tracker.SetConfig(ej); err != nil {
		return fmt.Errorf("service %s: %w", s.name, err)
	}
	s.budget.SetPercent(st.policy.BudgetPercent())
	s.cfg.Store(st)
	s.log.Info("l7 service updated")
	return nil
}

// AddressChanged is called on every transition of an address of the
// service's pool: by the pool itself when it has Subscribe (*pool.Pool),
// otherwise by the agent. An address that is no longer active (draining,
// ejected, removed) gets no new request; its idle pooled connections are
// closed at once and busy ones when their request ends.
func (s *Server) AddressChanged(addr netip.AddrPort, state pool.State) {
	s.snapGen.Add(1)
	if state == pool.Active {
		return
	}
	s.pools.Retire(addr)
	if state == pool.Removed {
		s.tracker.Forget(addr)
		if v, ok := s.loads.Load(addr); ok && v.(*addrStat).inflight.Load() <= 0 {
			s.loads.Delete(addr)
		}
	}
}

// Transition is AddressChanged in the shape of a pool.Observer.
func (s *Server) Transition(t pool.Transition) { s.AddressChanged(t.Addr, t.To) }

// UpstreamStats returns the connection counts of one backend address.
func (s *Server) UpstreamStats(addr netip.AddrPort) upstream.Stats { return s.pools.Stats(addr) }

// BudgetStats returns the retry budget's counters.
func (s *Server) BudgetStats() retry.BudgetStats { return s.budget.Stats() }

// Panicking reports whether the service is in panic mode.
func (s *Server) Panicking() bool { return s.panicking.Load() }
