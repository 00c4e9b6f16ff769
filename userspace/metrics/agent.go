package metrics

import (
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicelb/sluice/userspace/discovery"
	"github.com/sluicelb/sluice/userspace/pool"
)

// DNS failure kinds counted by Agent.DNSLookup: discovery's failure kinds
// plus the two negative answers. Any other kind is counted as "other".
var dnsKinds = map[string]bool{
	"timeout": true, "servfail": true, "refused": true, "garbage": true, "network": true,
	"nxdomain": true, "empty": true,
}

// Reload results.
const (
	ReloadOK      = "ok"
	ReloadRefused = "refused"
)

// Agent holds the agent's own metrics. Its methods are safe for
// concurrent use.
type Agent struct {
	transitions   *prometheus.CounterVec
	drains        *prometheus.HistogramVec
	dnsLookups    *prometheus.CounterVec
	dnsFailures   *prometheus.CounterVec
	reloads       *prometheus.CounterVec
	mapErrors     *prometheus.CounterVec
	gcDeleted     prometheus.Counter
	healthChecks  *prometheus.CounterVec
	healthSeconds *prometheus.HistogramVec
	refused       *prometheus.CounterVec

	mu            sync.Mutex
	drainingSince map[poolAddr]time.Time // addresses that entered draining, for drain durations
}

type poolAddr struct {
	pool string
	addr netip.AddrPort
}

func newAgent() *Agent {
	a := &Agent{
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_backend_transitions_total",
			Help: "Backend state transitions by pool, from and to state, and cause.",
		}, []string{"pool", "from", "to", "cause"}),
		drains: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_backend_drain_duration_seconds",
			Help:    "Time addresses spent draining before they were removed.",
			Buckets: []float64{0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600},
		}, []string{"pool"}),
		dnsLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_dns_lookups_total",
			Help: "DNS lookups of a backend name.",
		}, []string{"name"}),
		dnsFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_dns_failures_total",
			Help: "DNS lookups of a backend name that gave no address, by kind (timeout, servfail, refused, garbage, network, nxdomain, empty).",
		}, []string{"name", "kind"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_config_reloads_total",
			Help: "Config reloads by result (ok, refused).",
		}, []string{"result"}),
		mapErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_map_errors_total",
			Help: "BPF map updates by the agent that failed, by operation (retried on the next tick).",
		}, []string{"op"}),
		gcDeleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_conntrack_gc_deleted_total",
			Help: "Expired conntrack entries deleted by the agent.",
		}),
		healthChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_health_checks_total",
			Help: "Active health checks of an address by result (pass, or the failure: timeout, refused, connect, status, read).",
		}, []string{"pool", "address", "result"}),
		healthSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_health_check_duration_seconds",
			Help:    "Duration of active health checks, passed or failed.",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}, []string{"pool"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_backend_addresses_refused_total",
			Help: "Addresses a source (a DNS name, or static for the config) gave a pool that the address filter refused, by reason (own-address, denied, not-allowed, unspecified, this-network, loopback, link-local, multicast, reserved); counted when the source starts giving the address.",
		}, []string{"pool", "source", "reason"}),
		drainingSince: make(map[poolAddr]time.Time),
	}
	a.reloads.WithLabelValues(ReloadOK)
	a.reloads.WithLabelValues(ReloadRefused)
	return a
}

// Describe implements prometheus.Collector.
func (a *Agent) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range a.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (a *Agent) Collect(ch chan<- prometheus.Metric) {
	for _, c := range a.collectors() {
		c.Collect(ch)
	}
}

func (a *Agent) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		a.transitions, a.drains, a.dnsLookups, a.dnsFailures, a.reloads,
		a.mapErrors, a.gcDeleted, a.healthChecks, a.healthSeconds, a.refused,
	}
}

// Transition counts one backend transition and, when an address goes from
// draining to removed, observes how long it drained. Its signature is
// pool.Observer's, so it can be (part of) a pool's observer. Addresses
// adopted as draining at start have no known start and are not observed.
func (a *Agent) Transition(t pool.Transition) {
	cause := t.Cause
	if cause == "" {
		cause = "unknown"
	}
	a.transitions.WithLabelValues(t.Pool, t.From.String(), t.To.String(), cause).Inc()

	k := poolAddr{t.Pool, t.Addr}
	a.mu.Lock()
	defer a.mu.Unlock()
	if t.From == pool.Draining {
		since, ok := a.drainingSince[k]
		delete(a.drainingSince, k)
		if ok && t.To == pool.Removed && !t.At.Before(since) {
			a.drains.WithLabelValues(t.Pool).Observe(t.At.Sub(since).Seconds())
		}
	}
	if t.To == pool.Draining && t.Cause != pool.CauseAdopted {
		a.drainingSince[k] = t.At
	}
}

// DNSLookup counts one lookup of name; failure is "" for a lookup that
// returned addresses, else its kind (see sluice_dns_failures_total).
func (a *Agent) DNSLookup(name, failure string) {
	a.dnsLookups.WithLabelValues(name).Inc()
	if failure == "" {
		return
	}
	if !dnsKinds[failure] {
		failure = "other"
	}
	a.dnsFailures.WithLabelValues(name, failure).Inc()
}

// DNSUpdate counts the lookup behind a discovery Update (the watcher's
// OnUpdate): failures by their kind, NXDOMAIN as "nxdomain", a NOERROR
// answer without addresses as "empty". The expiry of a hold is not a
// lookup and is not counted.
func (a *Agent) DNSUpdate(u discovery.Update) {
	switch {
	case u.Reason == discovery.ReasonHoldExpired:
		return
	case u.Reason == discovery.ReasonFailure:
		a.DNSLookup(u.Name, string(u.Failure))
	case u.Rcode == dns.RcodeNameError:
		a.DNSLookup(u.Name, "nxdomain")
	case u.Reason == discovery.ReasonHold || u.Reason == discovery.ReasonNegative || len(u.Addrs) == 0:
		a.DNSLookup(u.Name, "empty")
	default:
		a.DNSLookup(u.Name, "")
	}
}

// ConfigReload counts a reload: ok true when applied, false when refused.
func (a *Agent) ConfigReload(ok bool) {
	if ok {
		a.reloads.WithLabelValues(ReloadOK).Inc()
		return
	}
	a.reloads.WithLabelValues(ReloadRefused).Inc()
}

// MapError counts a failed map update; op is the operation's name
// (set_service, delete_service, set_backend, set_table, delete_flow, ...).
func (a *Agent) MapError(op string) {
	a.mapErrors.WithLabelValues(op).Inc()
}

// ConntrackGCDeleted counts expired conntrack entries the agent deleted.
func (a *Agent) ConntrackGCDeleted(n int) {
	if n > 0 {
		a.gcDeleted.Add(float64(n))
	}
}

// HealthCheck counts one active health check of an address of a pool:
// result is "pass" or the failure's kind (health.Result.Kind).
func (a *Agent) HealthCheck(pool string, addr netip.AddrPort, result string, took time.Duration) {
	a.healthChecks.WithLabelValues(pool, addr.String(), result).Inc()
	a.healthSeconds.WithLabelValues(pool).Observe(took.Seconds())
}

// ForgetBackend deletes the agent's series that name addr in pool (health
// checks). Metrics.ForgetBackend also deletes the L7 ones.
func (a *Agent) ForgetBackend(pool string, addr netip.AddrPort) {
	a.healthChecks.DeletePartialMatch(prometheus.Labels{"pool": pool, "address": addr.String()})
	a.mu.Lock()
	delete(a.drainingSince, poolAddr{pool, addr})
	a.mu.Unlock()
}

// AddressRefused counts an address the filter refused for a pool source.
func (a *Agent) AddressRefused(pool, source, reason string) {
	a.refused.WithLabelValues(pool, source, reason).Inc()
}

// ForgetSource deletes the series of a pool source (a DNS name as the
// config spells it) the pool no longer has.
func (a *Agent) ForgetSource(pool, source string) {
	a.refused.DeletePartialMatch(prometheus.Labels{"pool": pool, "source": source})
}

// ForgetDNSName deletes the series of a name no pool uses any more.
func (a *Agent) ForgetDNSName(name string) {
	a.dnsLookups.DeleteLabelValues(name)
	a.dnsFailures.DeletePartialMatch(prometheus.Labels{"name": name})
}

// statusCode is the label value of an HTTP status: the code, or "other"
// outside 100..599.
func statusCode(code int) string {
	if code < 100 || code > 599 {
		return "other"
	}
	return strconv.Itoa(code)
}
