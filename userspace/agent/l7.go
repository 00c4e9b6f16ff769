package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/sluicelb/sluice/l7/certs"
	"github.com/sluicelb/sluice/l7/evloop"
	"github.com/sluicelb/sluice/l7/proxy"
	"github.com/sluicelb/sluice/l7/reqid"
	l7service "github.com/sluicelb/sluice/l7/service"
	"github.com/sluicelb/sluice/l7/upstream"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/gcpace"
	"github.com/sluicelb/sluice/userspace/logthrottle"
	"github.com/sluicelb/sluice/userspace/metrics"
	"github.com/sluicelb/sluice/userspace/pool"
	"github.com/sluicelb/sluice/userspace/relisten"
)

// l7Service is one running http service.
type l7Service struct {
	svc    config.Service
	pools  map[string]*pool.Pool // the service's pool and its routes' (config.Service.Pools)
	srv    *proxy.Server
	cancel context.CancelFunc
	listen *listenerHandoff // the socket, passed on to a replacement on the same address
	// caStamp is the stamp of the upstream CA file as last read (""
	// without one), under l7Stage.mu: watchFiles reads it again when it
	// changes.
	caStamp certs.Stamp
}

// l7Stage runs the http services of the config: one proxy.Server each,
// fed by the same pools as the data path, sharing one ejection tracker
// per pool. sync is called by one goroutine at a time (start, reloads),
// never with the agent's lock held; busy may be called with it.
type l7Stage struct {
	log        *slog.Logger
	accessLogs *accessLogs
	metrics    *metrics.Metrics
	trackers   *trackers     // the pools' ejection trackers, shared with the data path's signals
	requestIDs *reqid.Source // one for every server: ids unique across services
	netHTTP1   bool          // proxy.Options.NetHTTP1 of every server
	eventLoops bool          // proxy.Options.EventLoops of every server
	// gcHeadroom paces the garbage collector (gcpace) from the first
	// http service on (0: not); the pacer stops with the stage.
	gcHeadroom uint64
	pacer      *gcpace.Pacer // under loopsMu

	// loops are the event loops every server serves on (with eventLoops),
	// started with the first service that needs them, closed by wait.
	loopsMu    sync.Mutex
	loops      *evloop.Group
	loopsTried bool
	procs      int // GOMAXPROCS before the loops took theirs

	wg sync.WaitGroup // Serve goroutines

	// mu guards services for busy, which the tick calls while sync may
	// run; sync itself is serialized by the agent's reloadMu.
	mu       sync.Mutex
	services map[string]*l7Service
	// certWarned is when each certificate warning was last given
	// (certWarnDue), under mu.
	certWarned map[string]time.Time
	// fileWatch starts watchFiles with the first sync.
	fileWatch sync.Once
}

// accessLogWarnEvery spaces the warnings of an access log destination
// whose writes fail.
const accessLogWarnEvery = 10 * time.Second

// newL7Stage returns the stage; stdout is where `access_log: stdout` goes
// (nil: nowhere).
func newL7Stage(log *slog.Logger, stdout io.Writer, m *metrics.Metrics, tr *trackers) *l7Stage {
	acc := newAccessLogs(stdout)
	if m != nil {
		acc.onDrop = func(service string) { m.L7.Refused(service, metrics.LimitAccessLog) }
	}
	warn := logthrottle.New(log, accessLogWarnEvery)
	acc.onWriteError = func(dest string, err error, lines int) {
		if m != nil {
			m.L7.AccessLogLost(dest, lines)
		}
		warn.Note(dest, lines, "access log lines lost: the destination refused the write", "access_log", dest, "err", err)
	}
	return &l7Stage{
		log:        log,
		accessLogs: acc,
		metrics:    m,
		trackers:   tr,
		requestIDs: reqid.NewSource(),
		services:   make(map[string]*l7Service),
	}
}

// reopenAccessLogs opens every access log file again (log rotation).
func (s *l7Stage) reopenAccessLogs() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accessLogs.reopen(s.log)
}

// sync makes the running http services those of cfg. pools gives each
// configured pool's *pool.Pool. A service that cannot start (its listen
// address is taken, say) is logged and left out; the others run. It
// returns what did not apply, one sentence each.
func (s *l7Stage) sync(ctx context.Context, cfg *config.Config, pools map[string]*pool.Pool) (problems []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A reload reopens the access log files (log rotation: move the file,
	// then reload).
	s.accessLogs.reopen(s.log)
	want := make(map[string]bool)
	for _, svc := range cfg.HTTPServices() {
		want[svc.Name] = true
		sp := make(map[string]*pool.Pool)
		missing := ""
		for _, name := range svc.Pools() {
			if p := pools[name]; p != nil && cfg.Pool(name) != nil {
				sp[name] = p
			} else if missing == "" {
				missing = name
			}
		}
		if missing != "" {
			s.log.Error("http service has no pool", "service", svc.Name, "pool", missing)
			problems = append(problems, fmt.Sprintf("http service %s: no pool %s", svc.Name, missing))
			continue
		}
		if cur, ok := s.services[svc.Name]; ok {
			if cur.svc.Listen == svc.Listen && cur.svc.Pool == svc.Pool && samePools(cur.pools, sp) && !needsNewServer(cur.svc, svc) {
				if err := s.update(cur, svc, cfg, sp); err != nil {
					s.log.Error("http service not updated, it keeps its settings", "service", svc.Name, "err", err)
					problems = append(problems, fmt.Sprintf("http service %s not updated, it keeps its settings: %v", svc.Name, err))
					continue
				}
				cur.svc = svc
				continue
			}
			// A new listen address, pool, client limits, upstream settings
			// or h2c need a new server: start it (on the same address it
			// takes the socket over), then let the old one finish its
			// requests.
			var reuse *listenerHandoff
			if cur.svc.Listen == svc.Listen {
				reuse = cur.listen
			}
			if err := s.start(ctx, svc, cfg, sp, reuse); err != nil {
				s.log.Error("http service not restarted, the old one goes on", "service", svc.Name, "err", err)
				problems = append(problems, fmt.Sprintf("http service %s not restarted, the old one goes on: %v", svc.Name, err))
				continue
			}
			if reuse == nil {
				cur.listen.close()
			}
			s.stop(cur)
			continue
		}
		if err := s.start(ctx, svc, cfg, sp, nil); err != nil {
			s.log.Error("http service not started", "service", svc.Name, "err", err)
			problems = append(problems, fmt.Sprintf("http service %s not started: %v", svc.Name, err))
		}
	}
	for name, cur := range s.services {
		if !want[name] {
			cur.listen.close()
			s.stop(cur)
			delete(s.services, name)
			if s.metrics != nil {
				s.metrics.L7.ForgetService(name)
			}
		}
	}
	// Certificates as the reload left them (read again from their files),
	// then watched for renewals, and the access log files for removal.
	now := time.Now()
	for name, cur := range s.services {
		if cur.svc.TLS != nil {
			s.noteCertificates(name, cur, now, true)
		} else if s.metrics != nil {
			s.metrics.L7.SetCertificates(name, nil)
		}
	}
	s.fileWatch.Do(func() { s.wg.Go(func() { s.watchFiles(ctx) }) })
	return problems
}

// start builds, listens and serves one service, replacing any entry of
// the same name in s.services. With reuse, the service takes that socket
// over instead of listening.
func (s *l7Stage) start(ctx context.Context, svc config.Service, cfg *config.Config, sp map[string]*pool.Pool, reuse *listenerHandoff) error {
	s.pace()
	caStamp := upstreamCAStamp(svc)
	opts, err := s.options(svc)
	if err != nil {
		return err
	}
	// Every pool's tracker is the one shared with the data path and the
	// other services of the pool.
	opts.RoutePools = make(map[string]proxy.RoutePool, len(sp))
	for name, p := range sp {
		tr, err := s.trackers.get(*cfg.Pool(name), p)
		if err != nil {
			return err
		}
		if name == svc.Pool {
			opts.Pool, opts.Tracker = familyView(svc, p), tr
		} else {
			opts.RoutePools[name] = proxy.RoutePool{Pool: familyView(svc, p), Tracker: tr}
		}
	}
	srv, err := proxy.New(opts)
	if err != nil {
		return fmt.Errorf("build: %w", err)
	}
	hand := reuse
	if hand == nil {
		lc := net.ListenConfig{KeepAlive: proxy.ListenKeepAlive}
		l, err := lc.Listen(ctx, "tcp", svc.Listen)
		if err != nil {
			return fmt.Errorf("listen %s: %w", svc.Listen, err)
		}
		// A listening socket closed under the agent (ss -K) listens
		// again: the service is not down until a restart.
		l = relisten.New(l, lc, func(err error) {
			s.log.Warn("http listener was closed under the agent (ss -K?): listening again", "service", svc.Name, "listen", svc.Listen, "err", err)
		})
		hand = newListenerHandoff(l, s.log)
		s.wg.Go(func() { hand.run(ctx) })
	}
	l := hand.next()
	sctx, cancel := context.WithCancel(ctx)
	// The server follows the pool's transitions itself (pool.Subscribe)
	// until it shuts down.
	cur := &l7Service{svc: svc, pools: sp, srv: srv, cancel: cancel, listen: hand, caStamp: caStamp}
	s.wg.Go(func() {
		if err := srv.Serve(sctx, l); err != nil {
			s.log.Error("http service stopped", "service", svc.Name, "err", err)
		}
	})
	s.services[svc.Name] = cur
	return nil
}

// options builds the proxy options of svc from its config keys (all but
// the pool and tracker).
func (s *l7Stage) options(svc config.Service) (proxy.Options, error) {
	acc, err := s.accessLogs.get(svc.AccessLog)
	if err != nil {
		return proxy.Options{}, err
	}
	opts := proxy.Options{
		Service:    proxyService(svc),
		Log:        s.log,
		AccessLog:  acc,
		RequestIDs: s.requestIDs,
		Observer:   s.observer(svc),
		H2C:        svc.H2C,
		NetHTTP1:   s.netHTTP1,
		EventLoops: s.eventLoops,
	}
	if s.eventLoops {
		opts.Loops = s.loopGroup()
	}
	if t := svc.TLS; t != nil {
		f := t.Files()
		opts.TLS = &f
	}
	if c := svc.Client; c != nil {
		opts.Client = l7service.ClientLimits{
			HeaderTimeout: c.HeaderTimeout.D(), IdleTimeout: c.IdleTimeout.D(), MaxHeaderBytes: c.MaxHeaderBytes,
			TunnelIdleTimeout: c.TunnelIdleTimeout.D(),
			MaxConnections:    c.MaxConnections, MaxRequests: c.MaxRequests,
			MaxConnectionsPerIP: c.MaxConnectionsPerIP, MaxRequestsPerIP: c.MaxRequestsPerIP,
			BodyTimeout: c.BodyTimeout.D(), BodyMinRate: bodyMinRate(c.BodyMinRate),
			MaxBodyBytes: c.MaxBodyBytes, MaxHeaderCount: c.MaxHeaderCount,
			H2MaxStreams: c.H2MaxStreams, H2StreamWindow: c.H2StreamWindow, H2ConnWindow: c.H2ConnWindow,
			H2MaxResetStreams: c.H2MaxResetStreams, UnderscoreHeaders: c.UnderscoreHeaders,
		}
	}
	if u := svc.Upstream; u != nil {
		opts.Upstream = proxy.UpstreamOptions{
			MaxIdlePerAddr: u.MaxIdle, IdleTimeout: u.IdleTimeout.D(), MaxLifetime: u.MaxLifetime.D(),
			MaxConnsPerAddr: u.MaxConnections,
			Protocol:        u.Protocol, MaxStreamsPerConn: u.MaxStreams,
			MaxHeaderBytes: u.MaxHeaderBytes, MaxHeaderCount: u.MaxHeaderCount,
		}
		if u.TLS {
			tc, err := upstreamTLS(u)
			if err != nil {
				return proxy.Options{}, err
			}
			opts.Upstream.TLS = tc
		}
	}
	return opts, nil
}

// upstreamTLS is the TLS configuration of an upstream with tls on, its CA
// file (upstream.ca) read now. The server name (upstream.server_name, per
// route too) is the proxy's per request (proxyService), not fixed here.
func upstreamTLS(u *config.Upstream) (*tls.Config, error) {
	tc, err := upstream.ClientTLS(upstream.TLSOptions{CA: u.CA, InsecureSkipVerify: u.InsecureSkipVerify, VerifyName: u.VerifyName})
	if err != nil {
		return nil, fmt.Errorf("upstream %w", err)
	}
	return tc, nil
}

// setUpstreamCA reads u's CA file (upstream.ca) again for the backend
// connections cur dials from now on; st is the file's stamp taken before
// (kept on success).
func (cur *l7Service) setUpstreamCA(u *config.Upstream, st certs.Stamp) error {
	tc, err := upstreamTLS(u)
	if err != nil {
		return err
	}
	if err := cur.srv.SetUpstreamTLS(tc); err != nil {
		return err
	}
	cur.caStamp = st
	return nil
}

// upstreamCAStamp is the stamp of svc's upstream CA file, taken before it
// is read ("" without one, or when it cannot be looked at: the read then
// fails on its own).
func upstreamCAStamp(svc config.Service) certs.Stamp {
	u := svc.Upstream
	if u == nil || !u.TLS || u.CA == "" {
		return ""
	}
	st, _ := certs.StampFiles(u.CA)
	return st
}

// update applies a reloaded service to its running server: settings,
// access log, and the certificate files read again (renewed certificates
// are picked up by a reload).
func (s *l7Stage) update(cur *l7Service, svc config.Service, cfg *config.Config, sp map[string]*pool.Pool) error {
	acc, err := s.accessLogs.get(svc.AccessLog)
	if err != nil {
		return err
	}
	// Pools new to the service (a site added with a pool of its own) join
	// the running server: no new server, no connection closed.
	more := make(map[string]proxy.RoutePool)
	for name, p := range sp {
		if _, ok := cur.pools[name]; !ok {
			tr, err := s.trackers.get(*cfg.Pool(name), p)
			if err != nil {
				return err
			}
			more[name] = proxy.RoutePool{Pool: familyView(svc, p), Tracker: tr}
		}
	}
	if len(more) > 0 {
		if err := cur.srv.AddPools(more); err != nil {
			return err
		}
	}
	if t := svc.TLS; t != nil {
		if err := cur.srv.SetCertificates(t.Files()); err != nil {
			return err
		}
	}
	// The upstream CA file read again too (a reload picks up a rotated
	// CA, as it does renewed certificates).
	caStamp := upstreamCAStamp(svc)
	if u := svc.Upstream; u != nil && u.TLS {
		if err := cur.setUpstreamCA(u, caStamp); err != nil {
			return err
		}
	}
	cur.caStamp = caStamp
	// The ejection block of the service's own pool (the trackers of its
	// routes' pools are kept up to date with their pools).
	var ej config.Ejection
	if pc := cfg.Pool(svc.Pool); pc != nil {
		ej = pc.Ejection
	}
	if err := cur.srv.Update(proxyService(svc), ejectionConfig(ej)); err != nil {
		return err
	}
	cur.srv.SetAccessLog(acc)
	cur.pools = sp
	return nil
}

// familyPool is a pool as one http service sees it: the addresses of the
// service's own family only (an IPv4 listener sends to IPv4 backends, an
// IPv6 one to IPv6 backends, as the data path does). The rest of
// *pool.Pool (Subscribe, the DNS wait) passes through; ejections and
// max_ejected_percent stay the whole pool's (the tracker is shared).
type familyPool struct {
	*pool.Pool
	v6 bool
}

// familyView is p as svc sees it.
func familyView(svc config.Service, p *pool.Pool) proxy.PoolView {
	ap := svc.ListenAddr
	if !ap.IsValid() {
		ap, _ = netip.ParseAddrPort(svc.Listen)
	}
	return familyPool{Pool: p, v6: ap.IsValid() && !ap.Addr().Unmap().Is4()}
}

// Backends returns the pool's addresses of the service's family.
func (f familyPool) Backends() []pool.Backend {
	return slices.DeleteFunc(f.Pool.Backends(), func(b pool.Backend) bool { return b.Addr.Addr().Is4() == f.v6 })
}

// samePools reports whether the pools two versions of a service share
// are the same pool objects (a pool only one of them names is not a
// reason for a new server: AddPools, Update).
func samePools(a, b map[string]*pool.Pool) bool {
	for name, p := range b {
		if q, ok := a[name]; ok && q != p {
			return false
		}
	}
	return true
}

// needsNewServer reports whether a reloaded service changed settings a
// running proxy.Server cannot take in place: whether it has TLS, h2c,
// client limits, upstream settings.
func needsNewServer(old, cur config.Service) bool {
	return (old.TLS == nil) != (cur.TLS == nil) || old.H2C != cur.H2C ||
		!equalPtr(old.Client, cur.Client) || !equalPtr(old.Upstream, cur.Upstream)
}

func equalPtr[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// stop shuts a service down gracefully (in the background: Serve finishes
// its requests within its shutdown timeout).
func (s *l7Stage) stop(cur *l7Service) {
	cur.cancel()
}

// busy is the number of requests the services of pool p have in flight
// on addr (busy upstream connections; streams over HTTP/2).
func (s *l7Stage) busy(p *pool.Pool, addr netip.AddrPort) int {
	n, _ := s.inFlight(p, addr)
	return n
}

// inFlight is busy, and whether any running http service sends requests
// to pool p (its own pool or a route's): without one, no request can be
// in flight to its addresses and status shows none.
func (s *l7Stage) inFlight(p *pool.Pool, addr netip.AddrPort) (n int, served bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cur := range s.services {
		for _, sp := range cur.pools {
			if sp == p {
				n += cur.srv.UpstreamStats(addr).Busy
				served = true
				break
			}
		}
	}
	return n, served
}

// wait blocks until every service has shut down (after ctx ended), then
// flushes and closes the access logs.
func (s *l7Stage) wait() {
	s.wg.Wait()
	s.accessLogs.close(s.log)
	s.loopsMu.Lock()
	defer s.loopsMu.Unlock()
	if s.pacer != nil {
		s.pacer.Stop()
		s.pacer = nil
	}
	if s.loops != nil {
		if s.metrics != nil {
			s.metrics.L7.SetLoopStats(nil)
		}
		s.loops.Close()
		s.loops = nil
		runtime.GOMAXPROCS(s.procs)
	}
}

// loopGroup is the agent's event loops, started on first use: one loop
// per processor the Go runtime had (GOMAXPROCS: the CPUs, or the CPU
// limit of the agent's cgroup), each keeping its processor while it
// sleeps in epoll_wait (evloop.Options.HoldProcs), and GOMAXPROCS raised
// by one so that the rest of the agent (accepts, DNS, health checks, the
// access log's writer, the collector) always has a processor of its own.
// nil when they could not start: each server then starts loops of its
// own that give their processors back when they sleep.
func (s *l7Stage) loopGroup() *evloop.Group {
	s.loopsMu.Lock()
	defer s.loopsMu.Unlock()
	if s.loops != nil || s.loopsTried {
		return s.loops
	}
	s.loopsTried = true
	n := runtime.GOMAXPROCS(0)
	s.procs = runtime.GOMAXPROCS(n + 1)
	g, err := evloop.Start(evloop.Options{Loops: n, HoldProcs: true, Log: s.log})
	if err != nil {
		runtime.GOMAXPROCS(s.procs)
		s.log.Warn("l7 event loops holding their processors not available", "error", err)
		return nil
	}
	s.log.Info("l7 event loops", "loops", n, "gomaxprocs", n+1, "hold_procs", true)
	s.loops = g
	if s.metrics != nil {
		s.metrics.L7.SetLoopStats(func() metrics.LoopStats {
			st := g.Stats()
			return metrics.LoopStats{Loops: st.Loops, Tasks: st.Tasks, Conns: st.Conns}
		})
	}
	return g
}

// ping checks that every shared event loop runs (evloop.Group.Ping):
// nil without loops.
func (s *l7Stage) ping(timeout time.Duration) error {
	s.loopsMu.Lock()
	g := s.loops
	s.loopsMu.Unlock()
	if g == nil {
		return nil
	}
	return g.Ping(timeout)
}

// pace starts the garbage collector's pacing (once): the HTTP stage is
// what allocates per request. An agent with L4 services only keeps Go's
// GOGC (under a SYN flood a growing heap competed with the XDP path).
func (s *l7Stage) pace() {
	s.loopsMu.Lock()
	defer s.loopsMu.Unlock()
	if s.gcHeadroom > 0 && s.pacer == nil {
		s.pacer = gcpace.Start(s.gcHeadroom, s.log.With("component", "gc"))
	}
}

// paced is whether the garbage collector is paced.
func (s *l7Stage) paced() bool {
	s.loopsMu.Lock()
	defer s.loopsMu.Unlock()
	return s.pacer != nil
}

// loopStats is the shared event loops' counts (no loops before they
// start).
func (s *l7Stage) loopStats() evloop.Stats {
	s.loopsMu.Lock()
	defer s.loopsMu.Unlock()
	return s.loops.Stats()
}

// observer feeds a service's requests, retries, ejections and panic mode
// to the metrics (nil: none).
func (s *l7Stage) observer(svc config.Service) proxy.Observer {
	if s.metrics == nil {
		return nil
	}
	// The service's own pool labels its upstream-connection metrics (a
	// service with routes only: the first of its routes' pools); panic
	// mode is labelled with the pool that is in it (PoolPanic).
	p := svc.Pool
	if p == "" {
		if ps := svc.Pools(); len(ps) > 0 {
			p = ps[0]
		}
	}
	return proxy.NewMetricsObserver(s.metrics.L7, p)
}

// bodyMinRate is client.body_min_rate as the proxy takes it: 0 (no rate)
// is negative there, where 0 is the default.
func bodyMinRate(r int64) int64 {
	if r == 0 {
		return -1
	}
	return r
}
