package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluicelb/sluice/userspace/pool"
)

// transitionKey labels a counted backend transition.
type transitionKey struct {
	pool, from, to, cause string
}

// transitionCounter counts pool transitions; it is the pools' observer, so
// it has its own lock (pools may call it from other goroutines).
type transitionCounter struct {
	mu     sync.Mutex
	counts map[transitionKey]uint64
	next   pool.Observer // an extra observer, may be nil
	kick   chan struct{} // signalled on every transition
}

func newTransitionCounter(next pool.Observer) *transitionCounter {
	return &transitionCounter{counts: make(map[transitionKey]uint64), next: next, kick: make(chan struct{}, 1)}
}

func (c *transitionCounter) observe(t pool.Transition) {
	c.mu.Lock()
	c.counts[transitionKey{t.Pool, t.From.String(), t.To.String(), causeLabel(t.Cause)}]++
	c.mu.Unlock()
	if c.next != nil {
		c.next(t)
	}
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// causeLabel bounds the cause label's values: "dns:<name>" is one value per
// name, which is bounded by the config.
func causeLabel(cause string) string {
	if cause == "" {
		return "unknown"
	}
	return cause
}

func (c *transitionCounter) snapshot() map[transitionKey]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[transitionKey]uint64, len(c.counts))
	for k, v := range c.counts {
		out[k] = v
	}
	return out
}

// collector exports the agent's state and the data path counters, read at
// scrape time. It counts its own failures to read the maps.
type collector struct {
	a *agent

	build, reloads, mapErrors, gcDeleted, scrapeErrors *prometheus.Desc
	svcPackets, svcBytes, svcNewFlows, svcRSTs         *prometheus.Desc
	svcDrops, svcFlows, svcBackends                    *prometheus.Desc
	svcFragments, svcSNATFailures                      *prometheus.Desc
	beState, beFlows, bePackets, beBytes, beNewFlows   *prometheus.Desc
	beDrainDeadline, transitions, ejectRefused         *prometheus.Desc
	passed, replies, ctUpdateFailures, rstSent         *prometheus.Desc

	mu       sync.Mutex
	scrapeNo uint64 // failed map reads during scrapes
}

func newCollector(a *agent) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("sluice_"+name, help, labels, nil)
	}
	return &collector{
		a:                a,
		build:            d("build_info", "The running agent's version.", "version"),
		reloads:          d("config_reloads_total", "Config reloads by result (ok, refused).", "result"),
		mapErrors:        d("map_errors_total", "BPF map operations that failed (retried on the next tick)."),
		gcDeleted:        d("conntrack_gc_deleted_total", "Expired conntrack entries deleted by the agent."),
		scrapeErrors:     d("scrape_errors_total", "Map reads that failed while collecting metrics."),
		svcPackets:       d("service_packets_total", "Packets of a service's flows, both directions.", "service"),
		svcBytes:         d("service_bytes_total", "Bytes of a service's flows, both directions.", "service"),
		svcNewFlows:      d("service_new_flows_total", "Flows a service's Maglev table placed.", "service"),
		svcRSTs:          d("service_rsts_total", "TCP RSTs the data path answered with, by reason.", "service", "reason"),
		svcDrops:         d("service_udp_drops_total", "UDP packets dropped, by reason.", "service", "reason"),
		svcFlows:         d("service_active_flows", "Live conntrack flows of a service at the last tick.", "service"),
		svcBackends:      d("service_backends", "Backends in a service's Maglev table.", "service"),
		beState:          d("backend_state", "1 for the state an address of a pool is in.", "pool", "address", "state"),
		beFlows:          d("backend_active_flows", "Live flows pinned to an address at the last tick.", "pool", "address"),
		bePackets:        d("backend_packets_total", "Packets forwarded to or from an address.", "pool", "address"),
		beBytes:          d("backend_bytes_total", "Bytes forwarded to or from an address.", "pool", "address"),
		beNewFlows:       d("backend_new_flows_total", "New flows sent to an address.", "pool", "address"),
		beDrainDeadline:  d("backend_drain_deadline_seconds", "Unix time a draining address is removed at the latest.", "pool", "address"),
		transitions:      d("backend_transitions_total", "Backend state transitions.", "pool", "from", "to", "cause"),
		ejectRefused:     d("ejections_refused_total", "Ejections refused because max_ejected_percent of the pool is out.", "pool"),
		svcFragments:     d("service_fragments_total", "Fragments to a service's VIP, passed to the kernel.", "service"),
		svcSNATFailures:  d("service_snat_failures_total", "New snat flows refused for want of a free source port.", "service"),
		passed:           d("passed_packets_total", "Packets handed to the kernel, by reason.", "reason"),
		replies:          d("replies_translated_total", "Backend replies reverse-NATed."),
		ctUpdateFailures: d("conntrack_update_failures_total", "Conntrack map updates that failed in the data path."),
		rstSent:          d("rst_sent_total", "TCP RSTs sent by the data path."),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.build, c.reloads, c.mapErrors, c.gcDeleted, c.scrapeErrors,
		c.svcPackets, c.svcBytes, c.svcNewFlows, c.svcRSTs, c.svcDrops, c.svcFlows, c.svcBackends,
		c.svcFragments, c.svcSNATFailures,
		c.beState, c.beFlows, c.bePackets, c.beBytes, c.beNewFlows, c.beDrainDeadline, c.transitions, c.ejectRefused,
		c.passed, c.replies, c.ctUpdateFailures, c.rstSent,
	} {
		ch <- d
	}
}

var backendStates = []pool.State{pool.Active, pool.Draining, pool.Ejected, pool.Removed}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	var failed uint64

	a := c.a
	a.mu.Lock()
	gauge(c.build, 1, a.version)
	counter(c.reloads, a.reloadsOK, "ok")
	counter(c.reloads, a.reloadsRefused, "refused")
	counter(c.mapErrors, a.mapErrors)
	counter(c.gcDeleted, a.gcDeleted)
	for _, s := range a.sortedServices() {
		if !s.configured || !s.written {
			continue
		}
		name := s.name
		gauge(c.svcFlows, float64(a.flowsBySvc[s.id]), name)
		gauge(c.svcBackends, float64(len(s.tableSlots)), name)
		st, err := a.dp.ServiceStats(s.id)
		if err != nil {
			failed++
			continue
		}
		counter(c.svcPackets, st.Packets, name)
		counter(c.svcBytes, st.Bytes, name)
		counter(c.svcNewFlows, st.NewFlows, name)
		counter(c.svcRSTs, st.RSTNoBackend, name, "no_backend")
		counter(c.svcRSTs, st.RSTRemovedBackend, name, "removed_backend")
		counter(c.svcDrops, st.DropNoBackend, name, "no_backend")
		counter(c.svcDrops, st.DropRemovedBackend, name, "removed_backend")
		counter(c.svcFragments, st.Fragments, name)
		counter(c.svcSNATFailures, st.SNATFailures, name)
	}
	for name, ps := range a.pools {
		counter(c.ejectRefused, ps.p.EjectionsRefused(), name)
		for _, b := range ps.p.Backends() {
			addr := b.Addr.String()
			for _, st := range backendStates {
				v := 0.0
				if b.State == st {
					v = 1
				}
				gauge(c.beState, v, name, addr, st.String())
			}
			if b.State == pool.Draining {
				gauge(c.beDrainDeadline, float64(b.DrainDeadline.UnixMilli())/1e3, name, addr)
			}
			n, _, ok := a.slots.lookup(slotKey{ps.id, b.Addr})
			if !ok {
				continue
			}
			gauge(c.beFlows, float64(a.flowsBySlot[n]), name, addr)
			bs, err := a.dp.BackendStats(n)
			if err != nil {
				failed++
				continue
			}
			counter(c.bePackets, bs.Packets, name, addr)
			counter(c.beBytes, bs.Bytes, name, addr)
			counter(c.beNewFlows, bs.NewFlows, name, addr)
		}
	}
	g, gErr := a.dp.GlobalStats()
	a.mu.Unlock()

	if gErr != nil {
		failed++
	} else {
		counter(c.passed, g.PassedNotOurs, "not_ours")
		counter(c.passed, g.PassedNoNeigh, "no_neighbour")
		counter(c.passed, g.FIBFailures, "fib_failure")
		counter(c.passed, g.Malformed, "malformed")
		counter(c.replies, g.RepliesTranslated)
		counter(c.ctUpdateFailures, g.CTUpdateFailures)
		counter(c.rstSent, g.RSTSent)
	}
	for k, v := range a.transitions.snapshot() {
		counter(c.transitions, v, k.pool, k.from, k.to, k.cause)
	}
	c.mu.Lock()
	c.scrapeNo += failed
	counter(c.scrapeErrors, c.scrapeNo)
	c.mu.Unlock()
}

// serveMetrics serves /metrics on listen until ctx ends. A failure to
// listen is logged and the agent goes on without metrics: forwarding
// matters more than the endpoint.
func (a *agent) serveMetrics(ctx context.Context, listen string) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(a))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogPrinter{a}}))
	l, err := net.Listen("tcp", listen)
	if err != nil {
		a.log.Error("metrics endpoint not served", "listen", listen, "err", fmt.Errorf("listen: %w", err))
		return
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	a.log.Info("metrics listening", "listen", l.Addr().String())
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("metrics endpoint stopped", "err", err)
		}
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = srv.Shutdown(sctx)
		cancel()
		<-done
	}
}

// slogPrinter adapts the agent's logger to promhttp's error log.
type slogPrinter struct{ a *agent }

func (p slogPrinter) Println(v ...any) { p.a.log.Warn("metrics: " + fmt.Sprint(v...)) }
