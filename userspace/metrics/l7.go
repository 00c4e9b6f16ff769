package metrics

import (
	"maps"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// L7 holds the L7 stage's metrics. Its methods are safe for concurrent
// use. The l7 packages need not import this one: they can declare the
// methods they call as an interface of their own, which *L7 satisfies.
type L7 struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	tries         *prometheus.HistogramVec
	retries       *prometheus.CounterVec
	retryRefused  *prometheus.CounterVec
	staleResends  *prometheus.CounterVec
	ejections     *prometheus.CounterVec
	panicMode     *prometheus.GaugeVec
	upstreamConns *prometheus.CounterVec
	dnsWaits      *prometheus.CounterVec
	refused       *prometheus.CounterVec
	accessLogLost *prometheus.CounterVec
	certExpiry    *prometheus.GaugeVec

	// The event loops' gauges read loopStats at scrape time (nil: no
	// loops running).
	loopStats                   atomic.Pointer[func() LoopStats]
	loops, loopTasks, loopConns prometheus.GaugeFunc

	// reqChildren caches the series Request updates per (service, code),
	// saving three label look-ups (a hash and a lock each) per request:
	// a map never changed once published (a new entry publishes a copy),
	// so a request reads it without a lock and with the map's own hash
	// of the key (a sync.Map hashes it through an interface). An entry
	// is valid while gen is the one it was made under: a Forget deletes
	// series, then bumps gen.
	reqChildren atomic.Pointer[map[reqKey]*reqSeries]
	reqMu       sync.Mutex // publishing a copy of reqChildren
	gen         atomic.Uint64
}

type reqKey struct {
	service string
	code    int
}

type reqSeries struct {
	gen      uint64
	requests prometheus.Counter
	duration prometheus.Observer
	tries    prometheus.Observer
}

// LoopStats is what the event loops' gauges show.
type LoopStats struct {
	Loops int
	Tasks int64 // client connections the loops serve now
	Conns int   // sockets registered with the loops (clients and backends)
}

func newL7() *L7 {
	l := newL7Vecs()
	stat := func(f func(LoopStats) float64) func() float64 {
		return func() float64 {
			if p := l.loopStats.Load(); p != nil {
				return f((*p)())
			}
			return 0
		}
	}
	l.loops = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sluice_l7_event_loops",
		Help: "Event loops serving the HTTP/1 connection loop (0: a goroutine per connection).",
	}, stat(func(s LoopStats) float64 { return float64(s.Loops) }))
	l.loopTasks = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sluice_l7_event_loop_tasks",
		Help: "Client connections served by the event loops now (kept-alive ones, from their second request).",
	}, stat(func(s LoopStats) float64 { return float64(s.Tasks) }))
	l.loopConns = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sluice_l7_event_loop_sockets",
		Help: "Sockets registered with the event loops: their clients' and their pooled backend connections.",
	}, stat(func(s LoopStats) float64 { return float64(s.Conns) }))
	return l
}

// SetLoopStats makes the event loops' gauges read f (nil: zero).
func (l *L7) SetLoopStats(f func() LoopStats) {
	if f == nil {
		l.loopStats.Store(nil)
		return
	}
	l.loopStats.Store(&f)
}

func newL7Vecs() *L7 {
	return &L7{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_l7_requests_total",
			Help: "Requests answered by the L7 stage, by service and status code sent to the client (none: the client went away first).",
		}, []string{"service", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_l7_request_duration_seconds",
			Help:    "Time from a request's arrival to the end of its response, over every try.",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 90},
		}, []string{"service"}),
		tries: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_l7_request_tries",
			Help:    "Tries (first attempt plus retries) per request.",
			Buckets: prometheus.LinearBuckets(1, 1, 10),
		}, []string{"service"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_l7_retries_total",
			Help: "Retries by service and the condition that caused them (connect-failure, reset, timeout, or a status).",
		}, []string{"service", "reason"}),
		retryRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_l7_retries_budget_refused_total",
			Help: "Retries the policy allowed but the retry budget refused.",
		}, []string{"service"}),
		staleResends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_l7_upstream_stale_resends_total",
			Help: "Requests sent again on another backend connection because the pooled one taken had been closed by the backend while idle (before any response byte).",
		}, []string{"service"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_l7_ejections_total",
			Help: "Addresses ejected by the L7 stage's passive checks, by pool, address and cause.",
		}, []string{"pool", "address", "cause"}),
		panicMode: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_l7_panic_mode",
			Help: "1 while too many of a pool's addresses are ejected and load is spread over all of them.",
		}, []string{"pool"}),
		upstreamConns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_l7_upstream_connections_closed_total",
			Help: "Upstream connections closed by the L7 stage, by pool and reason (draining, lifetime, idle, backend, error, client, full, shutdown, upgrade, removed).",
		}, []string{"pool", "reason"}),
		dnsWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_l7_dns_waits_total",
			Help: "Requests that found no usable address and waited for their pool's next DNS answer, by service and result (new-address, no-new-address, deadline, client-closed).",
		}, []string{"service", "result"}),
		accessLogLost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_l7_access_log_lost_total",
			Help: "Access log lines lost because their destination refused the write (a full disk, a pipe whose reader went away), by access_log destination.",
		}, []string{"access_log"}),
		certExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_l7_certificate_expiry_timestamp_seconds",
			Help: "When each certificate an https service serves expires (its notAfter, Unix time), by service and certificate file.",
		}, []string{"service", "certificate"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_l7_refused_total",
			Help: "Connections, requests and access log lines the L7 stage refused or dropped at a limit, by service and limit (connections, requests, body, header_count, upstream_connections, access_log).",
		}, []string{"service", "limit"}),
	}
}

// Describe implements prometheus.Collector.
func (l *L7) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range l.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (l *L7) Collect(ch chan<- prometheus.Metric) {
	for _, c := range l.collectors() {
		c.Collect(ch)
	}
}

func (l *L7) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		l.requests, l.duration, l.tries, l.retries, l.retryRefused, l.staleResends,
		l.ejections, l.panicMode, l.upstreamConns, l.dnsWaits, l.refused, l.accessLogLost, l.certExpiry,
		l.loops, l.loopTasks, l.loopConns,
	}
}

// Request records one finished request of service: the status sent to the
// client (0 when none was), its duration over every try, and the number of
// tries (at least 1; 0 when no backend was tried).
func (l *L7) Request(service string, code int, took time.Duration, tries int) {
	rs := l.series(service, code)
	rs.requests.Inc()
	rs.duration.Observe(took.Seconds())
	rs.tries.Observe(float64(tries))
}

// series returns the cached series of service's requests answered code.
func (l *L7) series(service string, code int) *reqSeries {
	k := reqKey{service, code}
	gen := l.gen.Load()
	if m := l.reqChildren.Load(); m != nil {
		if rs := (*m)[k]; rs != nil && rs.gen == gen {
			return rs
		}
	}
	c := "none"
	if code != 0 {
		c = statusCode(code)
	}
	rs := &reqSeries{
		gen:      gen,
		requests: l.requests.WithLabelValues(service, c),
		duration: l.duration.WithLabelValues(service),
		tries:    l.tries.WithLabelValues(service),
	}
	if code == 0 || code >= 100 && code <= 599 {
		// Bounded: the codes statusCode keeps apart ("other" is not
		// cached: the codes it folds are many).
		l.reqMu.Lock()
		var m map[reqKey]*reqSeries
		if old := l.reqChildren.Load(); old != nil {
			m = maps.Clone(*old)
		} else {
			m = map[reqKey]*reqSeries{}
		}
		m[k] = rs
		l.reqChildren.Store(&m)
		l.reqMu.Unlock()
	}
	return rs
}

// forgotten invalidates the cached series after a Forget deleted some
// (after: a series made between the deletion and this is not kept).
func (l *L7) forgotten() {
	l.gen.Add(1)
	l.reqMu.Lock()
	l.reqChildren.Store(nil)
	l.reqMu.Unlock()
}

// Retry counts one retry of a request of service; reason is the retry
// condition that matched (a name from retry.on: connect-failure, reset,
// timeout, or a status such as 503).
func (l *L7) Retry(service, reason string) {
	l.retries.WithLabelValues(service, reason).Inc()
}

// RetryRefused counts a retry the budget refused.
func (l *L7) RetryRefused(service string) {
	l.retryRefused.WithLabelValues(service).Inc()
}

// StaleResends counts n sends of a request of service again on another
// backend connection, the pooled one taken having been closed by the
// backend while idle.
func (l *L7) StaleResends(service string, n int) {
	l.staleResends.WithLabelValues(service).Add(float64(n))
}

// Ejection counts an ejection of addr from pool by passive checks; cause
// is a short bounded reason (e.g. "status", "connect-failure", "timeout").
func (l *L7) Ejection(pool string, addr netip.AddrPort, cause string) {
	l.ejections.WithLabelValues(pool, addr.String(), cause).Inc()
}

// SetPanic sets pool's panic mode gauge.
func (l *L7) SetPanic(pool string, on bool) {
	v := 0.0
	if on {
		v = 1
	}
	l.panicMode.WithLabelValues(pool).Set(v)
}

// SetCertificates makes service's certificate expiry series those of
// expiry (certificate file to its notAfter): a file no longer served
// loses its series.
func (l *L7) SetCertificates(service string, expiry map[string]time.Time) {
	l.certExpiry.DeletePartialMatch(prometheus.Labels{"service": service})
	for file, at := range expiry {
		l.certExpiry.WithLabelValues(service, file).Set(float64(at.Unix()))
	}
}

// UpstreamClosed counts a pooled upstream connection closed for reason
// (draining, lifetime, idle, error).
func (l *L7) UpstreamClosed(pool, reason string) {
	l.upstreamConns.WithLabelValues(pool, reason).Inc()
}

// DNSWait counts a request of service that waited for its pool's next DNS
// answer; result is how the wait ended (new-address, no-new-address,
// deadline, client-closed).
func (l *L7) DNSWait(service, result string) {
	l.dnsWaits.WithLabelValues(service, result).Inc()
}

// Refused counts one connection, request or log line of service refused
// (or dropped) at limit, a short bounded name.
func (l *L7) Refused(service, limit string) {
	l.refused.WithLabelValues(service, limit).Inc()
}

// AccessLogLost counts lines an access log destination (its access_log
// value) refused to take.
func (l *L7) AccessLogLost(dest string, lines int) {
	l.accessLogLost.WithLabelValues(dest).Add(float64(lines))
}

// ServiceCounts is what an http service's requests came to, from the
// series above (so since the service's series were made: the agent's
// start, or the reload that added the service).
type ServiceCounts struct {
	// Requests is every request answered, or given up when its client
	// went away first (ClientGone); ByClass[i] the ones answered with an
	// (i+1)xx status (101 to an upgrade, 2xx … 5xx).
	Requests   uint64
	ByClass    [5]uint64
	ClientGone uint64
	Retries    uint64
	// Refused is the connections and requests refused at a limit (the
	// access log's dropped lines are not requests refused).
	Refused uint64
}

// ServiceCounts sums each service's request, retry and refusal series
// (for sluice status: not on the request path), one pass over each.
func (l *L7) ServiceCounts() map[string]ServiceCounts {
	cs := make(map[string]*ServiceCounts)
	of := func(labels map[string]string) *ServiceCounts {
		c := cs[labels["service"]]
		if c == nil {
			c = &ServiceCounts{}
			cs[labels["service"]] = c
		}
		return c
	}
	eachSeries(l.requests, func(labels map[string]string, v uint64) {
		c := of(labels)
		c.Requests += v
		if labels["code"] == "none" {
			c.ClientGone += v
		} else if code, err := strconv.Atoi(labels["code"]); err == nil && code >= 100 && code < 600 {
			c.ByClass[code/100-1] += v
		}
	})
	eachSeries(l.retries, func(labels map[string]string, v uint64) { of(labels).Retries += v })
	eachSeries(l.refused, func(labels map[string]string, v uint64) {
		if labels["limit"] != LimitAccessLog {
			of(labels).Refused += v
		}
	})
	out := make(map[string]ServiceCounts, len(cs))
	for name, c := range cs {
		out[name] = *c
	}
	return out
}

// LimitAccessLog is the limit of sluice_l7_refused_total's series that
// counts access log lines dropped (the writer behind), not requests.
const LimitAccessLog = "access_log"

// eachSeries calls f with the labels and value of each of vec's counters.
func eachSeries(vec *prometheus.CounterVec, f func(labels map[string]string, v uint64)) {
	ch := make(chan prometheus.Metric, 16)
	go func() {
		vec.Collect(ch)
		close(ch)
	}()
	for m := range ch {
		var pb dto.Metric
		if m.Write(&pb) != nil {
			continue
		}
		labels := make(map[string]string, len(pb.GetLabel()))
		for _, lp := range pb.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		f(labels, uint64(pb.GetCounter().GetValue()))
	}
}

// ForgetBackend deletes the series that name addr in pool.
func (l *L7) ForgetBackend(pool string, addr netip.AddrPort) {
	l.ejections.DeletePartialMatch(prometheus.Labels{"pool": pool, "address": addr.String()})
}

// ForgetPool deletes the series of a pool no longer configured.
func (l *L7) ForgetPool(pool string) {
	match := prometheus.Labels{"pool": pool}
	l.ejections.DeletePartialMatch(match)
	l.panicMode.DeletePartialMatch(match)
	l.upstreamConns.DeletePartialMatch(match)
	l.forgotten()
}

// ForgetService deletes the series of a service no longer configured.
func (l *L7) ForgetService(service string) {
	match := prometheus.Labels{"service": service}
	l.requests.DeletePartialMatch(match)
	l.duration.DeletePartialMatch(match)
	l.tries.DeletePartialMatch(match)
	l.retries.DeletePartialMatch(match)
	l.retryRefused.DeletePartialMatch(match)
	l.staleResends.DeletePartialMatch(match)
	l.dnsWaits.DeletePartialMatch(match)
	l.refused.DeletePartialMatch(match)
	l.certExpiry.DeletePartialMatch(match)
	l.forgotten()
}
