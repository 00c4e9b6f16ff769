package agent

import (
	"github.com/sluicelb/sluice/l7/eject"
	"github.com/sluicelb/sluice/l7/retry"
	l7service "github.com/sluicelb/sluice/l7/service"
	"github.com/sluicelb/sluice/userspace/config"
)

// The l7 packages own their option types (l7 never imports config); these
// build them from the config keys, as health.FromConfig does for checks.

// ejectionConfig is a pool's ejection block for l7/eject.
func ejectionConfig(e config.Ejection) eject.Config {
	return eject.Config{
		Failures: e.Failures, Window: e.Window.D(), BaseTime: e.BaseTime.D(),
		MaxTime: e.MaxTime.D(), MaxEjectedPercent: e.MaxEjectedPercent,
		On: e.On,
	}
}

// proxyService is an http service's settings for l7/proxy.
func proxyService(svc config.Service) l7service.Config {
	s := l7service.Config{Name: svc.Name, Listen: svc.Listen, Pool: svc.Pool, Host: svc.Host, Upgrades: svc.Upgrades}
	// Validated by config.Parse; a list that does not parse trusts nobody.
	s.TrustedProxies, _ = l7service.ParseTrustedProxies(svc.TrustedProxies)
	if t := svc.Timeouts; t != nil {
		s.Timeouts = l7service.Timeouts{Connect: t.Connect.D(), Send: t.Send.D(), Read: t.Read.D(), Total: t.Total.D()}
	}
	if u := svc.Upstream; u != nil && u.TLS {
		s.SNI = u.ServerName
	}
	s.Retry = retryConfig(svc.Retry)
	s.Headers = svc.Headers.L7()
	s.RequestID = svc.RequestID.L7()
	for _, r := range svc.Routes {
		rt := l7service.Route{Match: r.Spec(), Pool: r.Pool, SNI: r.ServerName, Retry: retryConfig(r.Retry), MaxBodyBytes: r.MaxBodyBytes,
			MaxRequests: r.MaxRequests, TunnelIdleTimeout: r.TunnelIdleTimeout.D()}
		if r.Host != "" {
			rt.Host = r.Host
		}
		if r.Headers != nil {
			h := r.Headers.L7()
			rt.Headers = &h
		}
		if t := r.Timeouts; t != nil {
			rt.Timeouts = l7service.Timeouts{Connect: t.Connect.D(), Send: t.Send.D(), Read: t.Read.D(), Total: t.Total.D()}
		}
		s.Routes = append(s.Routes, rt)
	}
	return s
}

// retryConfig is a retry block for l7/retry (nil: nil).
func retryConfig(r *config.Retry) *retry.Config {
	if r == nil {
		return nil
	}
	return &retry.Config{
		Attempts: r.Attempts, On: r.On, Methods: r.Methods,
		IdempotencyHeader: r.IdempotencyHeader, NonIdempotent: r.NonIdempotent,
		BudgetPercent: r.BudgetPercent,
		BackoffBase:   r.Backoff.Base.D(), BackoffMax: r.Backoff.Max.D(),
		BufferBytes: r.BufferBytes,
	}
}
