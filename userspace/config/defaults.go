package config

import (
	"fmt"
	"time"

	"github.com/sluicelb/sluice/internal/defaults"
	"github.com/sluicelb/sluice/l7/eject"
	"github.com/sluicelb/sluice/l7/retry"
	"github.com/sluicelb/sluice/l7/service"
	"github.com/sluicelb/sluice/l7/upstream"
)

// Values of Service.Protocol.
const (
	ProtocolTCP  = "tcp"  // XDP data path
	ProtocolUDP  = "udp"  // XDP data path
	ProtocolHTTP = "http" // L7 stage
)

// Values of Service.Mode.
const (
	ModeNAT  = "nat"
	ModeSNAT = "snat"
	ModeDSR  = "dsr" // direct server return: IPIP to the backend, `sluice decap` there
)

// Values of Datapath.XDPMode.
const (
	XDPModeAuto    = "auto"
	XDPModeNative  = "native"
	XDPModeGeneric = "generic"
)

// HostKeep is Service.Host's value that passes the client's Host header on.
const HostKeep = service.HostKeep

// MetricsOff is Metrics.Listen's value that disables the endpoint.
const MetricsOff = "off"

// Values of Service.AccessLog besides a file path.
const (
	AccessLogStdout = "stdout"
	AccessLogOff    = "off"
)

// Defaults applied by Parse to keys the file leaves out.
const (
	DefaultAdminSocket     = defaults.AdminSocket
	DefaultMetricsListen   = defaults.MetricsListen
	DefaultPinPath         = defaults.PinPath
	DefaultMaglevTableSize = defaults.MaglevTableSize
	DefaultConntrackMax    = defaults.ConntrackMax
	DefaultDNSPort         = defaults.DNSPort
	DefaultDrainTimeout    = defaults.DrainTimeout
	DefaultRSTRate         = defaults.RSTRate
)

// defaulter sets a value only where the file did not.
type defaulter struct{ lines map[string]int }

func (d defaulter) set(path string) bool { _, ok := d.lines[path]; return ok }

func (d defaulter) str(path string, p *string, v string) {
	if !d.set(path) {
		*p = v
	}
}

func (d defaulter) dur(path string, p *Duration, v time.Duration) {
	if !d.set(path) {
		*p = Duration(v)
	}
}

func (d defaulter) int(path string, p *int, v int) {
	if !d.set(path) {
		*p = v
	}
}

func (d defaulter) u32(path string, p *uint32, v uint32) {
	if !d.set(path) {
		*p = v
	}
}

// applyDefaults fills every key the file leaves out (lines holds the paths
// it sets).
func applyDefaults(c *Config, lines map[string]int) {
	d := defaulter{lines}
	d.str("admin.socket", &c.Admin.Socket, DefaultAdminSocket)
	d.str("metrics.listen", &c.Metrics.Listen, DefaultMetricsListen)

	d.dur("dns.min_ttl", &c.DNS.MinTTL, time.Second)
	d.dur("dns.max_ttl", &c.DNS.MaxTTL, 5*time.Minute)
	d.str("dns.on_failure", &c.DNS.OnFailure, "keep")
	d.dur("dns.nxdomain_hold", &c.DNS.NXDomainHold, 30*time.Second)
	d.dur("dns.timeout", &c.DNS.Timeout, 2*time.Second)

	d.bgp(c.BGP)
	d.str("datapath.xdp_mode", &c.Datapath.XDPMode, XDPModeAuto)
	d.str("datapath.pin_path", &c.Datapath.PinPath, DefaultPinPath)
	d.u32("datapath.maglev_table_size", &c.Datapath.MaglevTableSize, DefaultMaglevTableSize)
	d.u32("datapath.conntrack_max", &c.Datapath.ConntrackMax, DefaultConntrackMax)
	d.u32("datapath.rst_rate", &c.Datapath.RSTRate, DefaultRSTRate)
	d.dur("datapath.conntrack_timeouts.tcp_syn", &c.Datapath.Timeouts.TCPSyn, 60*time.Second)
	d.dur("datapath.conntrack_timeouts.tcp_established", &c.Datapath.Timeouts.TCPEstablished, time.Hour)
	d.dur("datapath.conntrack_timeouts.tcp_closing", &c.Datapath.Timeouts.TCPClosing, 10*time.Second)
	d.dur("datapath.conntrack_timeouts.udp", &c.Datapath.Timeouts.UDP, 60*time.Second)

	for i := range c.Pools {
		p := &c.Pools[i]
		pp := fmt.Sprintf("pools[%d]", i)
		d.dur(pp+".drain_timeout", &p.DrainTimeout, DefaultDrainTimeout)
		for j := range p.Backends {
			d.u32(fmt.Sprintf("%s.backends[%d].weight", pp, j), &p.Backends[j].Weight, 1)
		}
		e := &p.Ejection
		// The L7 packages own their defaults (l7/eject, l7/retry,
		// l7/service, l7/upstream): the file's keys are filled from them.
		d.int(pp+".ejection.failures", &e.Failures, eject.DefaultFailures)
		d.dur(pp+".ejection.window", &e.Window, eject.DefaultWindow)
		d.dur(pp+".ejection.base_time", &e.BaseTime, eject.DefaultBaseTime)
		d.dur(pp+".ejection.max_time", &e.MaxTime, eject.DefaultMaxTime)
		d.int(pp+".ejection.max_ejected_percent", &e.MaxEjectedPercent, eject.DefaultMaxEjectedPercent)
		if !d.set(pp + ".ejection.on") {
			e.On = eject.DefaultOn()
		}
		if hc := p.HealthCheck; hc != nil {
			hp := pp + ".health_check"
			d.dur(hp+".interval", &hc.Interval, 2*time.Second)
			d.dur(hp+".timeout", &hc.Timeout, time.Second)
			d.int(hp+".rise", &hc.Rise, 2)
			d.int(hp+".fall", &hc.Fall, 3)
			if hc.HTTP != nil {
				d.str(hp+".http.path", &hc.HTTP.Path, "/")
				d.str(hp+".http.expect", &hc.HTTP.Expect, "200-399")
			}
		}
	}

	for i := range c.Services {
		s := &c.Services[i]
		sp := fmt.Sprintf("services[%d]", i)
		d.str(sp+".protocol", &s.Protocol, ProtocolTCP)
		if s.IsL4() {
			d.str(sp+".mode", &s.Mode, ModeNAT)
		}
		if s.Protocol != ProtocolHTTP {
			continue
		}
		d.str(sp+".host", &s.Host, HostKeep)
		if s.Timeouts == nil {
			s.Timeouts = &Timeouts{}
		}
		t := s.Timeouts
		d.dur(sp+".timeouts.connect", &t.Connect, service.DefaultConnect)
		d.dur(sp+".timeouts.send", &t.Send, service.DefaultSend)
		d.dur(sp+".timeouts.read", &t.Read, service.DefaultRead)
		d.dur(sp+".timeouts.total", &t.Total, service.DefaultTotal)
		if s.Retry == nil {
			s.Retry = &Retry{}
		}
		d.retry(sp+".retry", s.Retry)
		// A route's retry block replaces the service's whole, with the
		// same defaults; its timeouts and host left out are the
		// service's (the agent fills them in).
		for j := range s.Routes {
			if r := s.Routes[j].Retry; r != nil {
				d.retry(fmt.Sprintf("%s.routes[%d].retry", sp, j), r)
			}
		}
		d.str(sp+".access_log", &s.AccessLog, AccessLogStdout)
		if !d.set(sp + ".upgrades") {
			s.Upgrades = service.DefaultUpgrades()
		}
		if s.Client == nil {
			s.Client = &ClientLimits{}
		}
		cp := sp + ".client"
		d.dur(cp+".header_timeout", &s.Client.HeaderTimeout, service.DefaultHeaderTimeout)
		d.dur(cp+".idle_timeout", &s.Client.IdleTimeout, service.DefaultIdleTimeout)
		d.int(cp+".max_header_bytes", &s.Client.MaxHeaderBytes, service.DefaultMaxHeaderBytes)
		d.dur(cp+".tunnel_idle_timeout", &s.Client.TunnelIdleTimeout, service.DefaultTunnelIdle)
		d.int(cp+".max_connections", &s.Client.MaxConnections, service.DefaultMaxConnections)
		d.int(cp+".max_requests", &s.Client.MaxRequests, service.DefaultMaxRequests)
		d.int(cp+".max_connections_per_ip", &s.Client.MaxConnectionsPerIP,
			service.PerIPDefault(s.Client.MaxConnections, service.PerIPConnectionFloor))
		d.int(cp+".max_requests_per_ip", &s.Client.MaxRequestsPerIP,
			service.PerIPDefault(s.Client.MaxRequests, service.PerIPRequestFloor))
		if !d.set(cp + ".max_body_bytes") {
			s.Client.MaxBodyBytes = service.DefaultMaxBodyBytes
		}
		d.dur(cp+".body_timeout", &s.Client.BodyTimeout, service.DefaultBodyTimeout)
		if !d.set(cp + ".body_min_rate") {
			s.Client.BodyMinRate = service.DefaultBodyMinRate
		}
		d.int(cp+".max_header_count", &s.Client.MaxHeaderCount, service.DefaultMaxHeaderCount)
		d.int(cp+".h2_max_streams", &s.Client.H2MaxStreams, service.DefaultH2MaxStreams)
		d.int(cp+".h2_stream_window", &s.Client.H2StreamWindow, service.DefaultH2StreamWindow)
		d.int(cp+".h2_connection_window", &s.Client.H2ConnWindow, service.DefaultH2ConnWindow)
		d.int(cp+".h2_max_reset_streams", &s.Client.H2MaxResetStreams, service.DefaultH2MaxResetStreams)
		d.str(cp+".underscore_headers", &s.Client.UnderscoreHeaders, service.UnderscoreDrop)
		if s.Upstream == nil {
			s.Upstream = &Upstream{}
		}
		up := sp + ".upstream"
		d.int(up+".max_idle", &s.Upstream.MaxIdle, upstream.DefaultMaxIdlePerAddr)
		d.dur(up+".idle_timeout", &s.Upstream.IdleTimeout, upstream.DefaultIdleTimeout)
		d.dur(up+".max_lifetime", &s.Upstream.MaxLifetime, upstream.DefaultMaxLifetime)
		d.int(up+".max_connections", &s.Upstream.MaxConnections, upstream.DefaultMaxConnsPerAddr)
		d.int(up+".max_header_bytes", &s.Upstream.MaxHeaderBytes, upstream.DefaultMaxHeaderBytes)
		d.int(up+".max_header_count", &s.Upstream.MaxHeaderCount, upstream.DefaultMaxHeaderCount)
		if s.Upstream.Protocol == "" {
			s.Upstream.Protocol = UpstreamHTTP1
		}
		if s.Upstream.Protocol != UpstreamHTTP1 {
			d.int(up+".max_streams", &s.Upstream.MaxStreams, upstream.DefaultH2MaxStreamsPerConn)
		}
	}
}

// retry fills the defaults of the retry block at rp.
func (d defaulter) retry(rp string, r *Retry) {
	d.int(rp+".attempts", &r.Attempts, retry.DefaultAttempts)
	if !d.set(rp + ".on") {
		r.On = retry.DefaultOn()
	}
	if !d.set(rp + ".methods") {
		r.Methods = retry.DefaultMethods()
	}
	d.int(rp+".budget_percent", &r.BudgetPercent, retry.DefaultBudgetPercent)
	d.dur(rp+".backoff.base", &r.Backoff.Base, retry.DefaultBackoffBase)
	d.dur(rp+".backoff.max", &r.Backoff.Max, retry.DefaultBackoffMax)
	if !d.set(rp + ".buffer_bytes") {
		r.BufferBytes = retry.DefaultBufferBytes
	}
}
