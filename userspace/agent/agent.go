package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicelb/sluice/userspace/announce"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/discovery"
	"github.com/sluicelb/sluice/userspace/logring"
	"github.com/sluicelb/sluice/userspace/logthrottle"
	"github.com/sluicelb/sluice/userspace/metrics"
	"github.com/sluicelb/sluice/userspace/pool"
	"github.com/sluicelb/sluice/userspace/sdnotify"
)

const (
	// removedGrace is how long a removed address stays in status.
	removedGrace = pool.DefaultRemovedGrace
	// reuseDelay is how long a removed slot or a deleted service id rests
	// before it is reused: longer than removedGrace, so status never shows
	// two addresses on one slot.
	reuseDelay = 2 * removedGrace
	// synStuckAfter is how long a SYN may go unanswered before its flow
	// counts as a failing connect.
	synStuckAfter = 500 * time.Millisecond
	// refreshAfterStuck is how many failing connects to a DNS-derived
	// address make the agent re-resolve its name at once while the pool
	// has other working addresses (without them, the first one does).
	refreshAfterStuck = 2
	// unansweredPerScan caps the unanswered SYNs one address can be
	// charged per flow scan (one a second): a flood of spoofed SYNs
	// (which never complete) can add at most this much to the address's
	// connect failures however many it sends, while a backend that really
	// stopped answering keeps failing the new SYNs of every scan.
	unansweredPerScan = 1
	// mapErrorLogEvery rate-limits the warning of a failing map operation.
	mapErrorLogEvery = 30 * time.Second
	// maxGCPerTick bounds the expired flows deleted per tick.
	maxGCPerTick = 50000
	// reverseGCEvery is how often orphaned reverse conntrack entries are
	// collected (they hold snat ports until then).
	reverseGCEvery = 10 * time.Second
)

// options are everything newAgent builds the agent from, in one pass.
type options struct {
	log        *slog.Logger
	version    string
	configPath string
	load       func(path string) (*config.Config, error)
	observe    pool.Observer
	now        func() time.Time
	// ctx bounds the goroutines the agent starts (DNS watcher, health
	// checks, L7 servers): the agent's lifetime, not a request's. nil:
	// context.Background.
	ctx context.Context
	// metrics receives transitions, reloads, map errors and GC counts
	// (nil: none).
	metrics *metrics.Metrics
	// dns builds the watcher of backend names, which reports published
	// answers to onUpdate and every lookup's outcome to observe (nil:
	// names are not resolved).
	dns func(onUpdate, observe func(discovery.Update)) (dnsWatcher, error)
	// l7 runs the http services (false: not served, as in most tests);
	// accessLogOut is where `access_log: stdout` goes.
	l7           bool
	accessLogOut io.Writer
	// l7NetHTTP1 is proxy.Options.NetHTTP1 for every http service.
	l7NetHTTP1 bool
	// l7EventLoops is proxy.Options.EventLoops for every http service.
	l7EventLoops bool
	// gcHeadroom is the L7 stage's (gcpace; 0: no pacing).
	gcHeadroom uint64
	// routeSrc returns the host's source address towards a backend (the
	// snat source of services that name none); nil or an invalid result:
	// unknown.
	routeSrc func(netip.Addr) netip.Addr
	// reverseGC removes orphaned reverse conntrack entries
	// (datapath.Real.GCReverse); nil: not collected.
	reverseGC func() (int, error)
	// hostAddrs lists the host's own addresses, which no backend may
	// have (nil: none known).
	hostAddrs func() []netip.Addr
	// stateFile is where operator drains, drain deadlines and ejections
	// are kept across restarts ("": not kept; Run uses StateFile).
	stateFile string
	// announce announces the VIPs (nil: the config has no bgp section).
	announce *announce.Announcer
	// notify tells systemd when the agent is ready, that its loop turns
	// (watchdog) and when it stops (nil: not run by systemd).
	notify *sdnotify.Notifier
	// stdoutJournal: stdout is the systemd journal (see warnJournal).
	stdoutJournal bool
	// l7Ping checks the L7 stage's event loops (nil: the stage's own,
	// l7Stage.ping).
	l7Ping func(timeout time.Duration) error
	// recentLog holds the last warnings and errors logged (nil: none
	// kept), shown by Status.
	recentLog *logring.Ring
}

// poolState is a pool the agent runs: configured, or dropped from the
// config and draining out, or found in the data path under an unknown id.
type poolState struct {
	p          *pool.Pool
	id         uint32
	configured bool
	cfg        config.Pool
}

// agent wires the owners together; it owns only the running config and
// the set of pools (guarded by mu). Each owner has its own lock:
//   - rec, the reconciler: service ids, backend slots, Maglev tables and
//     the data-path handle; called with mu held (lock order mu -> rec).
//   - flows, the flow watcher: flow counts, conntrack GC, connect
//     failures; never called with mu held for its conntrack walk.
//   - dns, health, trackers, l7: the adapters of discovery, health
//     checks, passive ejection and the L7 stage.
//
// The pools themselves (userspace/pool) are safe for concurrent use.
type agent struct {
	log         *slog.Logger
	version     string
	configPath  string
	load        func(path string) (*config.Config, error)
	now         func() time.Time
	ctx         context.Context
	metrics     *metrics.Metrics // may be nil
	transitions *observer        // the pools' observer
	errs        *mapErrors
	rec         *reconciler
	flows       *flowWatcher
	dns         *dnsAdapter
	admit       *admission
	state       *stateStore
	trackers    *trackers
	health      *healthStage
	l7          *l7Stage // nil: http services not served
	// ann announces the VIPs over BGP (nil: no bgp section at start). It
	// has its own lock; the agent calls it with mu held (lock order mu ->
	// ann), after each reconcile.
	ann *announce.Announcer
	// notify is systemd's (nil: none).
	notify *sdnotify.Notifier
	// l7Ping checks the L7 stage's event loops (nil: nothing to check);
	// l7Stuck is when a check last failed, unix nanoseconds (0: the last
	// one passed).
	l7Ping  func(timeout time.Duration) error
	l7Stuck atomic.Int64
	// pinWarn spaces the warnings of pins that cannot be pinned again.
	pinWarn *logthrottle.Warning
	// stdoutJournal: stdout is the systemd journal (see warnJournal).
	stdoutJournal bool
	// recentLog holds the last warnings and errors (nil: none kept).
	recentLog *logring.Ring
	// reloadMu serializes reloads: apply, then the watcher and L7 syncs,
	// which run without mu.
	reloadMu sync.Mutex
	// hostChecked is when tick last read the host's addresses (tick's
	// own: not under mu).
	hostChecked time.Time

	mu        sync.Mutex
	startedAt time.Time
	cfg       *config.Config
	boot      *config.Config // the config at start: restart-only settings in effect
	pools     map[string]*poolState
	// notApplied is what the last start or reload could not apply.
	notApplied []string
}

func newAgent(dp datapath.Map, o options) *agent {
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	if o.load == nil {
		o.load = config.Load
	}
	if o.now == nil {
		o.now = time.Now
	}
	if o.ctx == nil {
		o.ctx = context.Background()
	}
	var (
		mapErrorCount func(string)
		gcCount       func(int)
		refusedCount  func(pool, source, reason string)
		forgetSource  func(pool, source string)
		forgetName    func(name string)
	)
	if o.metrics != nil {
		mapErrorCount = o.metrics.Agent.MapError
		gcCount = o.metrics.Agent.ConntrackGCDeleted
		refusedCount = o.metrics.Agent.AddressRefused
		forgetSource = o.metrics.Agent.ForgetSource
		forgetName = o.metrics.Agent.ForgetDNSName
	}
	errs := newMapErrors(o.log, o.now, mapErrorCount)
	state := &stateStore{path: o.stateFile, log: o.log}
	a := &agent{
		log:           o.log,
		version:       o.version,
		configPath:    o.configPath,
		load:          o.load,
		now:           o.now,
		ctx:           o.ctx,
		metrics:       o.metrics,
		transitions:   newObserver(o.metrics, o.observe, state.markDirty),
		state:         state,
		errs:          errs,
		rec:           newReconciler(dp, o.log, errs, o.routeSrc),
		flows:         newFlowWatcher(dp, o.log, errs, o.reverseGC, gcCount),
		admit:         newAdmission(o.hostAddrs, refusedCount, forgetSource),
		trackers:      newTrackers(o.log.With("component", "eject"), ejectionMetrics(o.metrics)),
		health:        newHealthStage(o.ctx, o.log, o.metrics, o.now),
		pools:         make(map[string]*poolState),
		ann:           o.announce,
		notify:        o.notify,
		pinWarn:       logthrottle.New(o.log, 10*time.Second),
		stdoutJournal: o.stdoutJournal,
		recentLog:     o.recentLog,
	}
	a.dns = newDNSAdapter(o.log, forgetName)
	if o.dns != nil {
		w, err := o.dns(a.onDNSUpdate, a.observeDNS)
		if err != nil {
			// Without a resolver, names are not followed; fixed
			// addresses work.
			o.log.Error("backend names will not be resolved", "err", err)
		} else {
			a.dns.w = w
		}
	}
	if o.l7 {
		a.l7 = newL7Stage(o.log.With("component", "l7"), o.accessLogOut, o.metrics, a.trackers)
		a.l7.netHTTP1 = o.l7NetHTTP1
		a.l7.eventLoops = o.l7EventLoops
		a.l7.gcHeadroom = o.gcHeadroom
		a.l7Ping = a.l7.ping
	}
	if o.l7Ping != nil {
		a.l7Ping = o.l7Ping
	}
	return a
}

// start adopts what the data path holds, applies cfg and programs the maps.
// Only failing to read the maps is an error: writes are retried by tick.
func (a *agent) start(now time.Time, cfg *config.Config) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.startedAt = now
	a.boot = cfg
	if err := a.adopt(now, cfg); err != nil {
		return err
	}
	a.restore(now, cfg)
	problems := a.apply(now, cfg)
	err := a.reconcileLocked(now)
	if err != nil {
		a.log.Warn("some map writes failed at start, retrying every tick", "err", err)
	}
	a.notApplied = notApplied(problems, err, nil)
	return nil
}

// adopt seeds the pools with the backend slots a previous agent left.
// Called with mu held.
func (a *agent) adopt(now time.Time, cfg *config.Config) error {
	found, services, err := a.rec.adopt(now)
	if err != nil {
		return err
	}
	byID := make(map[uint32]string, len(cfg.Pools))
	for _, p := range cfg.Pools {
		byID[datapath.PoolID(p.Name)] = p.Name
	}
	for _, s := range found {
		name, ok := byID[s.b.PoolID]
		if !ok {
			name = fmt.Sprintf("unconfigured-%08x", s.b.PoolID)
		}
		ps := a.poolFor(name, s.b.PoolID, cfg.Pool(name))
		ps.p.Adopt(now, s.b.Addr, poolStateOf(s.b.State), 1, now.Add(ps.cfg.Ejection.BaseTime.D()))
	}
	if services > 0 || len(found) > 0 {
		a.log.Info("adopted data path state", "services", services, "backend_slots", len(found))
	}
	return nil
}

// restore puts back what a previous agent saved (operator holds, drain
// deadlines, ejection ends) on top of what adopt found in the slots,
// before the sources report. Called with mu held.
func (a *agent) restore(now time.Time, cfg *config.Config) {
	n := 0
	for name, saved := range a.state.load() {
		ps, ok := a.pools[name]
		if !ok {
			c := cfg.Pool(name)
			if c == nil {
				continue // neither configured nor in the data path
			}
			ps = a.poolFor(name, datapath.PoolID(name), c)
		}
		for addr, s := range saved {
			ps.p.Restore(now, addr, s)
			n++
		}
	}
	if n > 0 {
		a.log.Info("restored saved backend states", "file", a.state.path, "addresses", n)
	}
}

// saveState writes the saved states when something changed. Called with
// mu held.
func (a *agent) saveState() {
	pools := make(map[string]*pool.Pool, len(a.pools))
	for name, ps := range a.pools {
		pools[name] = ps.p
	}
	if err := a.state.save(pools); err != nil {
		a.errs.report("SaveState", err, "saving backend states failed; retried on the next tick", "file", a.state.path)
	}
}

// poolFor returns the pool called name, creating it with slot id id (from
// c when it is configured, with defaults when not: a pool found in the
// data path under an id no configured name has). Called with mu held.
func (a *agent) poolFor(name string, id uint32, c *config.Pool) *poolState {
	if ps, ok := a.pools[name]; ok {
		return ps
	}
	var pc config.Pool
	if c != nil {
		pc = *c
	} else {
		pc = config.Pool{Name: name, DrainTimeout: config.Duration(config.DefaultDrainTimeout)}
	}
	ps := &poolState{
		p:   pool.New(name, poolConfig(pc), a.log, a.transitions.observe),
		id:  id,
		cfg: pc,
	}
	ps.p.SetRefresher(a.refreshName)
	a.pools[name] = ps
	return ps
}

// admitStatic gives ps the fixed addresses of pc that pass its filter.
// Called with mu held.
func (a *agent) admitStatic(now time.Time, ps *poolState, pc config.Pool) bool {
	var static []pool.Desired
	for _, b := range pc.Backends {
		if !b.IsName() {
			static = append(static, pool.Desired{Addr: b.AddrPort, Weight: b.Weight, Info: "config line " + strconv.Itoa(b.Line)})
		}
	}
	return ps.p.SetSource(now, pool.SourceStatic, a.admit.admit(pc.Name, pool.SourceStatic, static))
}

// hostCheckEvery is how often the host's addresses are read again.
const hostCheckEvery = 5 * time.Second

// followHostAddresses reads the host's addresses again (every
// hostCheckEvery) and, when they changed, admits every pool's addresses
// again: one that is now an address of this host leaves its pool (it
// drains) and is listed as refused. Called by tick without mu.
func (a *agent) followHostAddresses(now time.Time) {
	if now.Sub(a.hostChecked) < hostCheckEvery {
		return
	}
	// A reload in progress builds the filters itself (with the addresses
	// of then); the next tick looks again.
	if !a.reloadMu.TryLock() {
		return
	}
	defer a.reloadMu.Unlock()
	a.hostChecked = now
	if !a.admit.hostChanged() {
		return
	}
	var sets []dnsSet
	for _, fq := range a.dns.names() {
		if u, ok := a.dns.published(fq); ok {
			sets = append(sets, a.dns.sets(u)...)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	changed := a.applyDNS(now, sets)
	for _, ps := range a.pools {
		if ps.configured && a.admitStatic(now, ps, ps.cfg) {
			changed = true
		}
	}
	a.log.Info("host addresses changed: every pool's addresses checked against them again", "pools_changed", changed)
}

func poolConfig(c config.Pool) pool.Config {
	return pool.Config{
		DrainTimeout:      c.DrainTimeout.D(),
		MaxEjectedPercent: c.Ejection.MaxEjectedPercent,
		RemovedGrace:      removedGrace,
	}
}

// apply makes cfg the running config: pools get their static addresses
// (sources they no longer have drain), the reconciler its services, the
// adapters their settings. The data path is written by reconcile. It
// returns what could not apply (no service id left, a health check that
// did not start). Called with mu held.
func (a *agent) apply(now time.Time, cfg *config.Config) []string {
	a.cfg = cfg
	a.admit.setConfig(cfg)
	a.dns.setConfig(cfg)
	for _, ps := range a.pools {
		ps.configured = false
	}
	for _, pc := range cfg.Pools {
		ps := a.poolFor(pc.Name, datapath.PoolID(pc.Name), &pc)
		ps.configured = true
		ps.cfg = pc
		ps.p.SetConfig(poolConfig(pc))
		sources := []string{pool.SourceStatic}
		for _, b := range pc.Backends {
			if b.IsName() {
				sources = append(sources, b.Name)
			}
		}
		ps.p.Expect(now, sources)
		a.admitStatic(now, ps, pc)
	}
	for name, ps := range a.pools {
		if !ps.configured {
			ps.p.Expect(now, nil)
			ps.p.SetSource(now, pool.SourceStatic, nil)
			a.log.Debug("pool not configured, draining its addresses", "pool", name)
		}
	}

	var want []wantService
	for _, sc := range cfg.L4Services() {
		val := datapath.Service{Mode: datapath.ModeNAT, PoolID: datapath.PoolID(sc.Pool)}
		if sc.Mode == config.ModeDSR {
			val.Mode = datapath.ModeDSR
		}
		if sc.Mode == config.ModeSNAT {
			val.Mode = datapath.ModeSNAT
			if sc.SNATSource != "" {
				if ip, err := netip.ParseAddr(sc.SNATSource); err == nil {
					val.SNATAddr = ip
				}
			}
		}
		want = append(want, wantService{key: serviceKey(sc), name: sc.Name, pool: sc.Pool, value: val})
	}
	problems := a.rec.setServices(now, want)
	a.syncTrackers()
	return append(problems, a.health.sync(now, cfg, a.configuredPools())...)
}

// configuredPools are the pools of the running config. Called with mu held.
func (a *agent) configuredPools() map[string]*pool.Pool {
	out := make(map[string]*pool.Pool, len(a.pools))
	for name, ps := range a.pools {
		if ps.configured {
			out[name] = ps.p
		}
	}
	return out
}

func serviceKey(sc config.Service) datapath.ServiceKey {
	proto := datapath.TCP
	if sc.Protocol == config.ProtocolUDP {
		proto = datapath.UDP
	}
	return serviceKeyOf(sc.ListenAddr, proto)
}

// reconcileLocked has the reconciler mirror every pool, then the
// announcer follow what the tables now serve: a VIP is withdrawn in the
// pass that empties its last table and announced only after one is
// written. Called with mu held.
func (a *agent) reconcileLocked(now time.Time) error {
	refs := make([]poolRef, 0, len(a.pools))
	for name, ps := range a.pools {
		refs = append(refs, poolRef{name: name, id: ps.id, p: ps.p})
	}
	err := a.rec.reconcile(now, refs)
	a.announceLocked(now)
	return err
}

// reconcileNow writes pending pool changes to the data path.
func (a *agent) reconcileNow() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.reconcileLocked(a.now()); err != nil {
		a.log.Debug("reconcile finished with errors, retrying on the next tick", "err", err)
	}
}

// tick is the once-a-second step. The flow watcher walks the conntrack
// map (without the agent's lock); then the pools move on with its counts
// (drains end, ejections expire), its connect failures go to passive
// ejection and DNS, the health checks get their targets, and what changed
// is written. A pool in which nothing happened costs a lookup.
func (a *agent) tick(now time.Time) error {
	a.followHostAddresses(now)
	counts, failures, known := a.flows.scan(now, a.rec.activeSlots(), a.rec.answersUnseen())
	if a.ann != nil {
		// BIRD's sessions, for status and metrics: I/O, without mu.
		ctx, cancel := context.WithTimeout(a.ctx, birdQueryTimeout)
		a.ann.RefreshSessions(ctx)
		cancel()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for name, ps := range a.pools {
		var flows pool.FlowCounts
		if known {
			flows = a.drainingFlows(ps, counts)
		}
		for _, addr := range ps.p.Tick(now, flows) {
			a.transitions.forget(name, addr)
		}
		if !ps.configured && ps.p.Empty() {
			delete(a.pools, name)
			a.rec.invalidate()
			a.log.Info("pool forgotten", "pool", name)
		}
	}
	a.keepAttached()
	a.connectFailures(now, failures)
	a.health.targets(now)
	a.observeDrain(now, counts, known)
	err := a.reconcileLocked(now)
	a.saveState()
	return err
}

// keepAttached has the data path check its attachments and attach the
// program again where it was lost, and says so: a node whose program was
// detached forwards nothing through its VIPs, and withdraws them from BGP
// until it is attached again (announceLocked reads Attachments). Called
// with mu held.
func (a *agent) keepAttached() {
	k, ok := a.rec.dp.(datapath.Keeper)
	if !ok {
		return
	}
	for _, c := range k.KeepAttached() {
		if c.Err != nil {
			a.log.Error("xdp program lost on an interface and not attached again: its traffic is not balanced, VIPs withdrawn; retrying every tick",
				"interface", c.Interface, "lost", c.Lost, "err", c.Err)
			continue
		}
		a.log.Warn("xdp program lost on an interface, attached again", "interface", c.Interface, "lost", c.Lost)
	}
	// Pins removed under the pin path while the agent runs (a `rm -r`, a
	// cleanup of /sys/fs/bpf) would leave the next agent nothing to
	// adopt: pinned again here.
	switch again, err := k.KeepPinned(); {
	case err != nil:
		a.pinWarn.Note("", 1, "pins removed under the pin path and not pinned again: a restart of the agent would detach the program and lose every flow's state; retrying every tick",
			"pinned_again", again, "err", err)
	case len(again) > 0:
		a.log.Warn("pins removed under the pin path while the agent ran: pinned again", "pinned_again", again)
	}
}

// drainingFlows counts the flows of ps's draining addresses: those pinned
// to the address's slot (current generation), plus the requests the L7
// stage has in flight to it (a draining address serving them is not
// removed yet). Called with mu held, before ps.p.Tick.
func (a *agent) drainingFlows(ps *poolState, counts flowCounts) pool.FlowCounts {
	draining := ps.p.Draining()
	if len(draining) == 0 {
		return func(netip.AddrPort) (int, bool) { return 0, false }
	}
	m := make(map[netip.AddrPort]int, len(draining))
	for _, addr := range draining {
		n := 0
		if slot, gen, ok := a.rec.slotOf(ps.id, addr); ok {
			n = counts.bySlot[slotGen{slot, gen}]
		}
		if a.l7 != nil {
			n += a.l7.busy(ps.p, addr)
		}
		m[addr] = n
	}
	return func(addr netip.AddrPort) (int, bool) {
		n, ok := m[addr]
		return n, ok
	}
}

// nextDeadline is the earliest drain deadline or ejection end of any pool
// (zero when none), so the loop can act on it without waiting for a tick.
func (a *agent) nextDeadline() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	var next time.Time
	if a.ann != nil {
		next = a.ann.NextDeadline()
	}
	for _, ps := range a.pools {
		if t := ps.p.NextDeadline(); !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	return next
}

// syncL7 makes the L7 stage serve the running config's http services and
// returns what did not apply. It must be called without mu (servers start
// and stop).
func (a *agent) syncL7() []string {
	if a.l7 == nil {
		return nil
	}
	a.mu.Lock()
	cfg := a.cfg
	pools := a.configuredPools()
	a.mu.Unlock()
	if cfg == nil {
		return nil
	}
	return a.l7.sync(a.ctx, cfg, pools)
}

// notApplied lists what of the running config the last start or reload
// could not apply: services without an id, addresses without a backend
// slot, http services that did not start or update, health checks that
// did not start. Map writes that failed are not in it: they are retried.
func notApplied(apply []string, reconcileErr error, l7 []string) []string {
	out := slices.Clone(apply)
	var errs []error
	if j, ok := reconcileErr.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else if reconcileErr != nil {
		errs = []error{reconcileErr}
	}
	for _, err := range errs {
		if errors.Is(err, errExhausted) {
			out = append(out, err.Error())
		}
	}
	return append(out, l7...)
}

// setNotApplied records what the last start or reload did not apply.
func (a *agent) setNotApplied(problems []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.notApplied = problems
}
