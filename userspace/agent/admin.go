package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	rtmetrics "runtime/metrics"
	"slices"
	"strings"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/metrics"
	"github.com/sluicelb/sluice/userspace/pool"
)

var _ admin.Agent = (*agent)(nil)

// maxFlowsListed bounds one Flows answer.
const maxFlowsListed = 100000

// statusFlowsMaxAge is how old flow counts may be in a Status answer.
const statusFlowsMaxAge = 250 * time.Millisecond

// Status implements admin.Agent. It holds the agent's lock only to copy
// the config and the set of pools: flow counts come from the flow watcher
// (which walks the conntrack map under its own lock when they are older
// than statusFlowsMaxAge), slots and ids from the reconciler, counters
// from the data path.
func (a *agent) Status(ctx context.Context) (admin.Status, error) {
	now := a.now()
	a.mu.Lock()
	st := admin.Status{Version: a.version, ConfigPath: a.configPath, StartedAt: a.startedAt,
		NotApplied: slices.Clone(a.notApplied)}
	cfg := a.cfg
	pools := make(map[string]*poolState, len(a.pools))
	for name, ps := range a.pools {
		pools[name] = ps
	}
	a.mu.Unlock()
	st.Node = a.nodeStatus(cfg)
	st.Runtime = a.runtimeStatus()
	st.Log = a.logStatus()
	if lr, ok := a.rec.dp.(interface{ LayoutReset() []string }); ok {
		st.LayoutReset = lr.LayoutReset()
	}
	for _, at := range a.rec.dp.Attachments() {
		st.Interfaces = append(st.Interfaces, admin.Interface{Name: at.Interface, Mode: at.Mode, Fallback: at.Fallback})
	}
	if cfg != nil {
		// A configured interface the program is not attached to (lost:
		// the tick attaches it again when it can).
		for _, name := range cfg.Interfaces {
			if !slices.ContainsFunc(st.Interfaces, func(i admin.Interface) bool { return i.Name == name }) {
				st.Interfaces = append(st.Interfaces, admin.Interface{Name: name, Mode: admin.ModeDetached})
			}
		}
	}
	if cfg == nil {
		return st, nil
	}
	st.Warnings = cfg.WarningLines()
	// Counts a few hundred milliseconds old are fine; older ones (right
	// after a drain, say) are refreshed.
	counts, _ := a.flows.current(now, statusFlowsMaxAge)
	dp := a.rec.dp
	var httpCounts map[string]metrics.ServiceCounts
	if a.metrics != nil {
		httpCounts = a.metrics.L7.ServiceCounts()
	}
	for _, sc := range cfg.Services {
		out := admin.Service{Name: sc.Name, Listen: sc.Listen, Protocol: sc.Protocol, Pool: sc.Pool}
		if sc.IsL4() {
			out.Mode = sc.Mode
			if s, ok := a.rec.serviceOf(serviceKey(sc)); ok {
				out.ID = s.id
				out.ActiveFlows = counts.bySvc[s.id]
				out.Backends = s.backends
				if s.written {
					ss, err := dp.ServiceStats(s.id)
					if err != nil {
						a.errs.report("ServiceStats", err, "reading service stats failed", "service", sc.Name)
					}
					out.Packets, out.Bytes, out.NewFlows = ss.Packets, ss.Bytes, ss.NewFlows
					out.RSTs = ss.RSTNoBackend + ss.RSTRemovedBackend
				}
			}
		} else {
			if ps, ok := pools[sc.Pool]; ok {
				out.Backends = len(ps.p.Active())
			}
			out.Routes = routeStatus(sc, pools)
			if a.l7 != nil {
				out.Certificates = a.l7.certificates(sc.Name)
			}
			if httpCounts != nil {
				out.HTTP = httpStatus(httpCounts[sc.Name])
			}
		}
		st.Services = append(st.Services, out)
	}
	names := make([]string, 0, len(pools))
	for name := range pools {
		names = append(names, name)
	}
	slices.Sort(names)
	live := a.rec.liveSlots()
	for _, name := range names {
		ps := pools[name]
		ap := admin.Pool{Name: name, Backends: []admin.Backend{}}
		for _, b := range ps.p.Backends() {
			ab := admin.Backend{
				Address: b.Addr.String(),
				Source:  b.Source,
				State:   b.State.String(),
				Cause:   b.Cause,
				Since:   b.Since,
				Weight:  b.Weight,
				TTLLeft: a.dns.ttlLeft(now, b.Source),
			}
			if b.Held && b.State != pool.Draining {
				ab.Cause += ", held by operator"
			}
			if b.State == pool.Draining {
				d := b.DrainDeadline
				ab.DrainDeadline = &d
			}
			if b.State == pool.Ejected && !b.EjectedUntil.IsZero() {
				u := b.EjectedUntil
				ab.EjectedUntil = &u
			}
			if sg, ok := live[slotKey{ps.id, b.Addr}]; ok {
				ab.Slot = sg.slot
				ab.ActiveFlows = counts.bySlot[sg]
				bs, err := dp.BackendStats(sg.slot)
				if err != nil {
					a.errs.report("BackendStats", err, "reading backend stats failed", "slot", sg.slot)
				}
				ab.Packets, ab.Bytes, ab.NewFlows = bs.Packets, bs.Bytes, bs.NewFlows
			}
			if a.l7 != nil {
				// The http services' requests to it: what a drain of an
				// address only they use waits for (drainingFlows).
				if n, served := a.l7.inFlight(ps.p, b.Addr); served {
					ab.Requests = &n
				}
			}
			ap.Backends = append(ap.Backends, ab)
		}
		ap.NotServed = a.admit.notServed(name)
		st.Pools = append(st.Pools, ap)
	}
	return st, nil
}

// httpStatus is an http service's request counts for status.
func httpStatus(c metrics.ServiceCounts) *admin.HTTPCounts {
	return &admin.HTTPCounts{
		Requests: c.Requests, Status1xx: c.ByClass[0], Status2xx: c.ByClass[1], Status3xx: c.ByClass[2],
		Status4xx: c.ByClass[3], Status5xx: c.ByClass[4], ClientGone: c.ClientGone,
		Retries: c.Retries, Refused: c.Refused,
	}
}

// Flows implements admin.Agent. The conntrack walk holds no lock of the
// agent's: it reads the map while the agent goes on.
func (a *agent) Flows(ctx context.Context, f admin.FlowFilter) ([]admin.Flow, error) {
	names := a.rec.serviceNames()
	var svcID uint32
	if f.Service != "" {
		for id, name := range names {
			if name == f.Service {
				svcID = id
			}
		}
		if svcID == 0 {
			return nil, fmt.Errorf("no L4 service %q: %w", f.Service, admin.ErrBadRequest)
		}
	}
	match, err := backendMatcher(f.Backend)
	if err != nil {
		return nil, err
	}
	out := []admin.Flow{}
	err = a.rec.dp.Flows(func(fl datapath.Flow) bool {
		if ctx.Err() != nil {
			return false
		}
		if svcID != 0 && fl.ServiceID != svcID {
			return true
		}
		if !match(fl.Backend) {
			return true
		}
		out = append(out, admin.Flow{
			Service: names[fl.ServiceID],
			Client:  fl.Client.String(),
			VIP:     fl.VIP.String(),
			Backend: fl.Backend.String(),
			Proto:   fl.Proto.String(),
			State:   fl.State.String(),
			Idle:    fl.Idle.Round(time.Millisecond).String(),
			Expired: fl.Expired,
		})
		return len(out) < maxFlowsListed
	})
	if err != nil {
		a.errs.report("Flows", err, "reading conntrack failed")
		return nil, fmt.Errorf("read conntrack: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// backendMatcher parses a backend filter: "", an ip or an ip:port.
func backendMatcher(s string) (func(netip.AddrPort) bool, error) {
	if s == "" {
		return func(netip.AddrPort) bool { return true }, nil
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return func(b netip.AddrPort) bool { return b == ap }, nil
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		return func(b netip.AddrPort) bool { return b.Addr() == ip }, nil
	}
	return nil, fmt.Errorf("backend %q is neither an ip nor an ip:port: %w", s, admin.ErrBadRequest)
}

// Drain implements admin.Agent.
func (a *agent) Drain(ctx context.Context, poolName, address string) error {
	return a.operate(poolName, address, "drain", (*pool.Pool).Drain)
}

// Undrain implements admin.Agent.
func (a *agent) Undrain(ctx context.Context, poolName, address string) error {
	return a.operate(poolName, address, "undrain", (*pool.Pool).Undrain)
}

func (a *agent) operate(poolName, address, verb string, op func(*pool.Pool, time.Time, netip.AddrPort) error) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	ps, ok := a.pools[poolName]
	if !ok || !ps.configured {
		return fmt.Errorf("%s %s: pool %q: %w", verb, address, poolName, admin.ErrUnknownPool)
	}
	addr, err := a.resolveAddress(ps, address)
	if err != nil {
		return fmt.Errorf("%s: pool %s: %w", verb, poolName, err)
	}
	if err := op(ps.p, now, addr); err != nil {
		if errors.Is(err, pool.ErrUnknownAddress) {
			return fmt.Errorf("%w: %w", admin.ErrUnknownAddress, err)
		}
		return err
	}
	a.log.Info("operator request", "verb", verb, "pool", poolName, "address", addr.String())
	// Apply at once rather than on the next tick; failed writes are retried.
	_ = a.reconcileLocked(now)
	// An operator's decision survives a restart from now on.
	a.state.markDirty()
	a.saveState()
	return nil
}

// resolveAddress takes "ip:port", or an "ip" that names exactly one
// address of the pool.
func (a *agent) resolveAddress(ps *poolState, s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q is neither an ip nor an ip:port: %w", s, admin.ErrBadRequest)
	}
	var found []netip.AddrPort
	for _, b := range ps.p.Backends() {
		if b.Addr.Addr() == ip {
			found = append(found, b.Addr)
		}
	}
	switch len(found) {
	case 0:
		return netip.AddrPort{}, fmt.Errorf("address %s: %w", s, admin.ErrUnknownAddress)
	case 1:
		return found[0], nil
	}
	list := make([]string, len(found))
	for i, f := range found {
		list[i] = f.String()
	}
	return netip.AddrPort{}, fmt.Errorf("address %s is ambiguous (%s), give ip:port: %w", s, strings.Join(list, ", "), admin.ErrBadRequest)
}

// Reload implements admin.Agent: the file is read and validated first; an
// invalid one is refused and the running config stays.
func (a *agent) Reload(ctx context.Context) error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	cfg, err := a.load(a.configPath)
	if a.metrics != nil {
		a.metrics.Agent.ConfigReload(err == nil)
	}
	if err != nil {
		a.log.Error("reload refused, the running config stays", "config", a.configPath, "err", err)
		if a.l7 != nil {
			// The access log files are reopened all the same: a
			// rotation (move, then reload) must not leave the agent
			// writing to the moved file because of an unrelated edit.
			a.l7.reopenAccessLogs()
		}
		return fmt.Errorf("%w: %w", admin.ErrReloadRefused, err)
	}
	logWarnings(a.log, cfg)
	warnJournal(a.log, cfg, a.stdoutJournal)
	warnFileLimit(a.log, cfg, openFileLimit())
	a.mu.Lock()
	restartOnly := a.restartOnly(cfg)
	now := a.now()
	applyProblems := append(restartOnly, a.apply(now, cfg)...)
	recErr := a.reconcileLocked(now)
	if recErr != nil {
		a.log.Warn("reload applied, some map writes failed and will be retried", "err", recErr)
	}
	a.mu.Unlock()
	a.syncDNS()
	problems := notApplied(applyProblems, recErr, a.syncL7())
	a.setNotApplied(problems)
	a.notifySystemd(a.systemdStatus())
	if len(problems) > 0 {
		a.log.Error("config reloaded in part", "config", a.configPath, "not_applied", problems)
		return fmt.Errorf("%w: %s", admin.ErrReloadPartial, strings.Join(problems, "; "))
	}
	a.log.Info("config reloaded", "config", a.configPath, "services", len(cfg.Services), "pools", len(cfg.Pools))
	return nil
}

// restartOnly lists the settings of next that a reload cannot apply:
// those that differ from the ones the agent started with (interfaces,
// datapath, dns, admin socket, metrics listen address). Each is logged
// and reported as not applied until a restart or until the file says
// again what is running. Called with mu held.
func (a *agent) restartOnly(next *config.Config) []string {
	cur := a.boot
	if cur == nil {
		return nil
	}
	var out []string
	if !slices.Equal(cur.DNS.Servers, next.DNS.Servers) || cur.DNS.MinTTL != next.DNS.MinTTL ||
		cur.DNS.MaxTTL != next.DNS.MaxTTL || cur.DNS.NXDomainHold != next.DNS.NXDomainHold ||
		cur.DNS.Timeout != next.DNS.Timeout || cur.DNS.OnFailure != next.DNS.OnFailure {
		out = append(out, "dns settings changed: they take effect on restart")
	}
	if !slices.Equal(cur.Interfaces, next.Interfaces) {
		out = append(out, "interfaces changed: they take effect on restart")
	}
	if cur.Datapath != next.Datapath {
		out = append(out, "datapath settings changed: they take effect on restart")
	}
	if cur.Admin != next.Admin {
		out = append(out, fmt.Sprintf("admin socket changed to %s: it takes effect on restart (the agent answers on %s)", next.Admin.Socket, cur.Admin.Socket))
	}
	if bgpRoutes(cur.BGP) != bgpRoutes(next.BGP) {
		out = append(out, "bgp section added or removed, or its table or protocol changed: it takes effect on restart")
	}
	if cur.Metrics != next.Metrics {
		out = append(out, fmt.Sprintf("metrics listen address changed to %s: it takes effect on restart (the agent serves %s)", next.Metrics.Listen, cur.Metrics.Listen))
	}
	for _, msg := range out {
		a.log.Warn(msg)
	}
	return out
}

// SetSource feeds a pool source other than the config (a DNS name's
// current answer, from the DNS watcher) and applies it at once.
func (a *agent) SetSource(poolName, source string, addrs []pool.Desired) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	ps, ok := a.pools[poolName]
	if !ok || !ps.configured {
		return fmt.Errorf("set source %s: pool %q: %w", source, poolName, admin.ErrUnknownPool)
	}
	now := a.now()
	ps.p.SetSource(now, source, addrs)
	return a.reconcileLocked(now)
}

// runtimeStatus is the Go runtime's part of the status.
func (a *agent) runtimeStatus() *admin.Runtime {
	samples := []rtmetrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/heap/live:bytes"}}
	rtmetrics.Read(samples)
	rt := &admin.Runtime{GOMAXPROCS: runtime.GOMAXPROCS(0)}
	if v := samples[0].Value; v.Kind() == rtmetrics.KindUint64 {
		rt.GOGC = int(v.Uint64())
	}
	if v := samples[1].Value; v.Kind() == rtmetrics.KindUint64 {
		rt.HeapLiveBytes = v.Uint64()
	}
	if a.l7 != nil {
		rt.GCPaced = a.l7.paced()
		st := a.l7.loopStats()
		rt.EventLoops, rt.LoopConnections, rt.LoopSockets = st.Loops, int(st.Tasks), st.Conns
	}
	return rt
}

// recentLogEntries is how many of the last warnings and errors Status
// shows.
const recentLogEntries = 20

// logStatus is the agent's recent warnings and errors (nil: not kept).
func (a *agent) logStatus() *admin.Log {
	if a.recentLog == nil {
		return nil
	}
	w, e := a.recentLog.Counts()
	out := &admin.Log{Warnings: w, Errors: e}
	for _, en := range a.recentLog.Entries() {
		out.Recent = append(out.Recent, admin.LogEntry{Time: en.Time, Level: en.Level.String(), Text: en.Text})
	}
	return out
}
