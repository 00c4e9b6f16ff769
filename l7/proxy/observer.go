package proxy

import (
	"net/netip"
	"strconv"
	"time"

	"github.com/sluicelb/sluice/l7/accesslog"
	"github.com/sluicelb/sluice/l7/eject"
)

// Observer is told what the proxy does, for metrics. Its methods are called
// from request goroutines and must not block.
type Observer interface {
	// Request is called once per finished request with its tries.
	Request(rec *accesslog.Record)
	// Ejection is called for every ejection or trial recovery the proxy
	// asked the pool for, including refused ones (ev.Err set).
	Ejection(service string, ev eject.Event)
	// Panic is called when the service enters (on) or leaves panic mode:
	// too much of its pool is ejected, load is spread over every address.
	Panic(service string, on bool)
	// UpstreamClosed is called for every backend connection closed, with
	// the reason (upstream.Close*: draining, lifetime, idle, backend,
	// error, client, full, shutdown).
	UpstreamClosed(service string, addr netip.AddrPort, reason string)
	// Refused is called for every connection or request refused at a
	// limit (connections, requests, body, header_count,
	// upstream_connections).
	Refused(service, limit string)
}

// NopObserver ignores everything.
type NopObserver struct{}

var _ Observer = NopObserver{}

// Request implements Observer.
func (NopObserver) Request(*accesslog.Record) {}

// Ejection implements Observer.
func (NopObserver) Ejection(string, eject.Event) {}

// Panic implements Observer.
func (NopObserver) Panic(string, bool) {}

// UpstreamClosed implements Observer.
func (NopObserver) UpstreamClosed(string, netip.AddrPort, string) {}

// Refused implements Observer.
func (NopObserver) Refused(string, string) {}

// Metrics is the method set of userspace/metrics' *L7 that the proxy
// reports to; NewMetricsObserver adapts it to an Observer.
type Metrics interface {
	Request(service string, code int, took time.Duration, tries int)
	Retry(service, reason string)
	RetryRefused(service string)
	StaleResends(service string, n int)
	Ejection(pool string, addr netip.AddrPort, cause string)
	SetPanic(pool string, on bool)
	UpstreamClosed(pool, reason string)
	DNSWait(service, result string)
	Refused(service, limit string)
}

// NewMetricsObserver returns an Observer feeding m for a service of pool.
func NewMetricsObserver(m Metrics, pool string) Observer {
	return metricsObserver{m: m, pool: pool}
}

type metricsObserver struct {
	m    Metrics
	pool string
}

var _ Observer = metricsObserver{}

func (o metricsObserver) Request(rec *accesslog.Record) {
	code := rec.Status
	if code == statusClientClosed {
		code = 0 // nothing was sent
	}
	o.m.Request(rec.Service, code, rec.Duration, len(rec.Tries))
	for _, t := range rec.Tries {
		switch {
		case t.Retry && t.Outcome == "status":
			o.m.Retry(rec.Service, strconv.Itoa(t.Status))
		case t.Retry:
			o.m.Retry(rec.Service, t.Outcome)
		case t.BudgetRefused:
			o.m.RetryRefused(rec.Service)
		}
		if t.DNSWait != "" {
			o.m.DNSWait(rec.Service, t.DNSWait)
		}
		if t.Resent > 0 {
			o.m.StaleResends(rec.Service, t.Resent)
		}
	}
}

func (o metricsObserver) Ejection(_ string, ev eject.Event) {
	if ev.Err == nil && !ev.Recover {
		o.m.Ejection(o.pool, ev.Addr, ev.Kind)
	}
}

func (o metricsObserver) Panic(_ string, on bool) { o.m.SetPanic(o.pool, on) }

// PoolPanicObserver is an Observer that can tell panic mode apart per
// pool, for a service whose routes send to several (PoolPanic is then
// called instead of Panic).
type PoolPanicObserver interface {
	PoolPanic(service, pool string, on bool)
}

// PoolPanic sets the panic gauge of the pool that entered or left it.
func (o metricsObserver) PoolPanic(_, pool string, on bool) { o.m.SetPanic(pool, on) }

func (o metricsObserver) UpstreamClosed(_ string, _ netip.AddrPort, reason string) {
	o.m.UpstreamClosed(o.pool, reason)
}

func (o metricsObserver) Refused(service, limit string) { o.m.Refused(service, limit) }
