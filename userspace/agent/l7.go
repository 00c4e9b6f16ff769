package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/sluicelb/sluice/l7/proxy"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/metrics"
	"github.com/sluicelb/sluice/userspace/pool"
)

// l7Service is one running http service.
type l7Service struct {
	svc    config.Service
	pool   *pool.Pool
	srv    *proxy.Server
	cancel context.CancelFunc
}

// l7Stage runs the http services of the config: one proxy.Server each,
// fed by the same pools as the data path, sharing one ejection tracker
// per pool. sync is called by one goroutine at a time (start, reloads),
// never with the agent's lock held; busy may be called with it.
type l7Stage struct {
	log       *slog.Logger
	accessLog *slog.Logger // nil: no access log
	metrics   *metrics.Metrics
	trackers  *trackers // the pools' ejection trackers, shared with the data path's signals

	wg sync.WaitGroup // Serve goroutines

	// mu guards services for busy, which the tick calls while sync may
	// run; sync itself is serialized by the agent's reloadMu.
	mu       sync.Mutex
	services map[string]*l7Service
}

func newL7Stage(log *slog.Logger, accessLog *slog.Logger, m *metrics.Metrics, tr *trackers) *l7Stage {
	return &l7Stage{
		log:       log,
		accessLog: accessLog,
		metrics:   m,
		trackers:  tr,
		services:  make(map[string]*l7Service),
	}
}

// sync makes the running http services those of cfg. pools gives each
// configured pool's *pool.Pool. A service that cannot start (its listen
// address is taken, say) is logged and left out; the others run.
func (s *l7Stage) sync(ctx context.Context, cfg *config.Config, pools map[string]*pool.Pool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := make(map[string]bool)
	for _, svc := range cfg.HTTPServices() {
		want[svc.Name] = true
		p := pools[svc.Pool]
		pc := cfg.Pool(svc.Pool)
		if p == nil || pc == nil {
			s.log.Error("http service has no pool", "service", svc.Name, "pool", svc.Pool)
			continue
		}
		if cur, ok := s.services[svc.Name]; ok {
			if cur.svc.Listen == svc.Listen && cur.pool == p {
				if err := cur.srv.Update(svc, *pc); err != nil {
					s.log.Error("http service not updated, it keeps its settings", "service", svc.Name, "err", err)
					continue
				}
				cur.svc = svc
				continue
			}
			// A new listen address or pool needs a new server: start it,
			// then let the old one finish its requests.
			if err := s.start(ctx, svc, *pc, p); err != nil {
				s.log.Error("http service not restarted, the old one goes on", "service", svc.Name, "err", err)
				continue
			}
			s.stop(cur)
			continue
		}
		if err := s.start(ctx, svc, *pc, p); err != nil {
			s.log.Error("http service not started", "service", svc.Name, "err", err)
		}
	}
	for name, cur := range s.services {
		if !want[name] {
			s.stop(cur)
			delete(s.services, name)
			if s.metrics != nil {
				s.metrics.L7.ForgetService(name)
			}
		}
	}
}

// start builds, listens and serves one service, replacing any entry of
// the same name in s.services.
func (s *l7Stage) start(ctx context.Context, svc config.Service, pc config.Pool, p *pool.Pool) error {
	tr, err := s.trackers.get(pc, p)
	if err != nil {
		return err
	}
	srv, err := proxy.New(proxy.Options{
		Service:   svc,
		Pool:      p,
		Tracker:   tr,
		Log:       s.log,
		AccessLog: s.accessLog,
		Observer:  s.observer(svc),
	})
	if err != nil {
		return fmt.Errorf("build: %w", err)
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", svc.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", svc.Listen, err)
	}
	sctx, cancel := context.WithCancel(ctx)
	// The server follows the pool's transitions itself (pool.Subscribe)
	// until it shuts down.
	cur := &l7Service{svc: svc, pool: p, srv: srv, cancel: cancel}
	s.wg.Go(func() {
		if err := srv.Serve(sctx, l); err != nil {
			s.log.Error("http service stopped", "service", svc.Name, "err", err)
		}
	})
	s.services[svc.Name] = cur
	return nil
}

// stop shuts a service down gracefully (in the background: Serve finishes
// its requests within its shutdown timeout).
func (s *l7Stage) stop(cur *l7Service) {
	cur.cancel()
}

// busy is the number of requests the services of pool p have in flight
// on addr (busy upstream connections).
func (s *l7Stage) busy(p *pool.Pool, addr netip.AddrPort) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, cur := range s.services {
		if cur.pool == p {
			n += cur.srv.UpstreamStats(addr).Busy
		}
	}
	return n
}

// wait blocks until every service has shut down (after ctx ended).
func (s *l7Stage) wait() { s.wg.Wait() }

// observer feeds a service's requests, retries, ejections and panic mode
// to the metrics (nil: none).
func (s *l7Stage) observer(svc config.Service) proxy.Observer {
	if s.metrics == nil {
		return nil
	}
	return proxy.NewMetricsObserver(s.metrics.L7, svc.Pool)
}
