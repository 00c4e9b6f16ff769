// Package metrics is everything Prometheus for the agent, on the agent's own
// registry (nothing is registered on the default one, nothing is a
// package-level variable).
//
// Three parts, all under the sluice_ prefix:
//
//   - the data path: a Collector that reads the BPF counters at scrape time
//     through Stats (datapath.Map satisfies it) and names them through a
//     Topology the agent implements;
//   - the agent: backend transitions and drain durations, DNS lookups,
//     config reloads, map errors, health checks (Agent, methods the agent
//     calls);
//   - the L7 stage: requests, durations, tries, retries, ejections and
//     panic mode (L7, methods the proxy calls);
//   - the VIP announcements over BGP and the node's drain (Announce,
//     methods userspace/announce calls).
//
// Label values are service, pool, address, reason and state names that come
// from the config, DNS answers and fixed lists in this package: never client
// addresses, so every label set is bounded. Series that name an address are
// deleted with Agent.ForgetBackend when the address leaves its pool.
//
// docs/metrics.md lists every metric.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluicelb/sluice/userspace/relisten"
)

// Off is the listen value that disables the endpoint (config.MetricsOff).
const Off = "off"

// Path is where the endpoint serves the metrics.
const Path = "/metrics"

// Options configure New. Every field may be left zero.
type Options struct {
	// Version is exported as sluice_build_info{version}.
	Version string
	// DataPath is read at scrape time; nil: no data path metrics (an agent
	// serving only L7 services, or tests of the other parts).
	DataPath Stats
	// Topology names the data path's service ids and backend slots, and
	// gives every address's state. Without it no per-service or
	// per-backend metric is exported.
	Topology Topology
	// ConntrackCapacity is the conntrack map's size in entries
	// (datapath.conntrack_max), exported as sluice_conntrack_capacity.
	ConntrackCapacity uint32
	// Logger receives the endpoint's errors; nil discards them.
	Logger *slog.Logger
	// NoRuntimeCollectors leaves out the Go runtime and process
	// collectors (tests that compare whole outputs).
	NoRuntimeCollectors bool
	// LogCounts, when set, gives how many warnings and errors the agent
	// logged since it started (sluice_log_messages_total).
	LogCounts func() (warnings, errors uint64)
}

// Metrics owns the agent's registry and everything registered on it.
type Metrics struct {
	// Agent has the methods the agent calls.
	Agent *Agent
	// L7 has the methods the L7 stage calls.
	L7 *L7
	// Announce has the methods of the VIP announcements (userspace/announce).
	Announce *Announce

	reg *prometheus.Registry
	dp  *collector // nil without DataPath
	log *slog.Logger
}

// New builds a fresh registry with the data path collector (when
// o.DataPath is set), the agent and L7 metrics, sluice_build_info, and the
// Go runtime and process collectors.
func New(o Options) *Metrics {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{
		Agent:    newAgent(),
		L7:       newL7(),
		Announce: newAnnounce(),
		reg:      prometheus.NewRegistry(),
		log:      log,
	}
	m.reg.MustRegister(m.Agent, m.L7, m.Announce)
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "sluice_build_info",
		Help:        "Always 1; the version label is the running agent's version.",
		ConstLabels: prometheus.Labels{"version": o.Version},
	})
	build.Set(1)
	m.reg.MustRegister(build)
	if lc := o.LogCounts; lc != nil {
		for _, level := range []string{"warn", "error"} {
			m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name:        "sluice_log_messages_total",
				Help:        "Warnings and errors the agent logged since it started, by level.",
				ConstLabels: prometheus.Labels{"level": level},
			}, func() float64 {
				w, e := lc()
				if level == "warn" {
					return float64(w)
				}
				return float64(e)
			}))
		}
	}
	if o.DataPath != nil {
		m.dp = newCollector(o.DataPath, o.Topology, o.ConntrackCapacity)
		m.reg.MustRegister(m.dp)
	}
	if !o.NoRuntimeCollectors {
		m.reg.MustRegister(
			collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		)
	}
	return m
}

// Registry returns the agent's registry, for collectors of other packages.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition formats. A
// failure to collect one metric is logged and the rest is still served.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:      slogPrinter{m.log},
		ErrorHandling: promhttp.ContinueOnError,
		// Scrapes read the BPF maps; two at once is plenty.
		MaxRequestsInFlight: 2,
		Timeout:             30 * time.Second,
		Registry:            m.reg, // promhttp_metric_handler_errors_total
	})
}

// Serve listens on listen (host:port) and serves Handler at /metrics until
// ctx is done, then shuts down. listen "off" or "" returns nil at once.
func (m *Metrics) Serve(ctx context.Context, listen string) error {
	if listen == Off || listen == "" {
		return nil
	}
	l, err := Listen(listen)
	if err != nil {
		return err
	}
	return m.ServeListener(ctx, l)
}

// Listen opens the endpoint's TCP listener.
func Listen(listen string) (net.Listener, error) {
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %s: %w", listen, err)
	}
	return l, nil
}

// ServeListener serves Handler at /metrics on l until ctx is done; it
// closes l.
func (m *Metrics) ServeListener(ctx context.Context, l net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle(Path, m.Handler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "sluice metrics: %s\n", Path)
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(m.log.Handler(), slog.LevelWarn),
	}
	// A listening socket closed under the agent (ss -K) listens again.
	l = relisten.New(l, net.ListenConfig{}, func(err error) {
		m.log.Warn("metrics listener was closed under the agent (ss -K?): listening again", "listen", l.Addr().String(), "err", err)
	})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	m.log.Info("metrics listening", "listen", l.Addr().String())
	select {
	case err := <-done:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("metrics serve: %w", err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			_ = srv.Close()
		}
		<-done
		return nil
	}
}

// slogPrinter adapts a logger to promhttp's error log.
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) { p.log.Warn("metrics: " + fmt.Sprint(v...)) }

// ForgetBackend deletes every series that names addr in pool (agent and
// L7). Call it when a pool forgets an address, so DNS churn does not grow
// label sets without bound. Data path series need nothing: they follow
// the Topology at every scrape.
func (m *Metrics) ForgetBackend(pool string, addr netip.AddrPort) {
	m.Agent.ForgetBackend(pool, addr)
	m.L7.ForgetBackend(pool, addr)
}
