package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/maglev"
	"github.com/sluicelb/sluice/userspace/metrics"
	"github.com/sluicelb/sluice/userspace/pool"
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
	// mapErrorLogEvery rate-limits the warning of a failing map operation.
	mapErrorLogEvery = 30 * time.Second
	// maxGCPerTick bounds the expired flows deleted per tick.
	maxGCPerTick = 50000
	// reverseGCEvery is how often orphaned reverse conntrack entries are
	// collected (they hold snat ports until then).
	reverseGCEvery = 10 * time.Second
)

// reverseCollector is implemented by data paths that can remove reverse
// conntrack entries whose forward entry is gone (datapath.Real).
type reverseCollector interface {
	GCReverse() (int, error)
}

// poolState is a pool the agent runs: configured, or dropped from the
// config and draining out, or found in the data path under an unknown id.
type poolState struct {
	p          *pool.Pool
	id         uint32
	configured bool
	cfg        config.Pool
}

// service is an L4 service in the data path (ours or adopted).
type service struct {
	key        datapath.ServiceKey
	id         uint32
	name       string
	pool       string
	value      datapath.Service
	configured bool // in the running config; false: to be deleted
	written    bool // value is in the data path
	// tableKnown: we wrote the table; tableSlots are its slots and
	// fingerprint identifies the backends it was built from. An adopted
	// service's table is unknown until rewritten, so it may hold any slot.
	tableKnown  bool
	tableSlots  map[uint32]bool
	fingerprint string
}

// options are the agent's seams for tests and later hooks.
type options struct {
	log        *slog.Logger
	version    string
	configPath string
	load       func(path string) (*config.Config, error)
	observe    pool.Observer
	now        func() time.Time
	// metrics receives transitions, reloads, map errors and GC counts.
	metrics *metrics.Metrics
	// dns follows backend names (nil: names are not resolved).
	dns dnsWatcher
	// routeSrc returns the host's source address towards a backend (the
	// snat source of services that name none); nil or an invalid result:
	// unknown.
	routeSrc func(netip.Addr) netip.Addr
}

// agent is the reconciler: it owns the pools, mirrors them into the data
// path and serves the admin API. All fields below mu are guarded by it.
type agent struct {
	log         *slog.Logger
	version     string
	configPath  string
	load        func(path string) (*config.Config, error)
	now         func() time.Time
	routeSrc    func(netip.Addr) netip.Addr
	startedAt   time.Time
	transitions *observer        // the pools' observer
	metrics     *metrics.Metrics // may be nil
	dns         dnsWatcher       // nil: backend names are not resolved
	// runCtx bounds the goroutines of the DNS watcher and the L7 stage:
	// the agent's lifetime, not a request's.
	runCtx context.Context
	// l7 runs the http services (nil: not served, as in most tests).
	l7 *l7Stage
	// health runs the pools' active health checks (guarded by mu).
	health *healthStage
	// reloadMu serializes reloads: apply, then the watcher and L7 syncs,
	// which run without mu.
	reloadMu sync.Mutex

	mu       sync.Mutex
	dp       datapath.Map
	cfg      *config.Config
	pools    map[string]*poolState
	services map[datapath.ServiceKey]*service
	slots    *slots
	ids      *ids

	// Flow counts of the last tick (non-expired flows whose slot gen matches).
	flowsBySlot map[uint32]int
	flowsBySvc  map[uint32]int
	flowsAt     time.Time // when they were counted
	// synStuck counts flows per slot whose SYN has gone unanswered for
	// synStuckAfter: connects failing right now.
	synStuck map[uint32]int
	// refusals are the ConnectRefused counters of active slots at the
	// last tick.
	refusals map[uint32]refusalMark
	// failures are the connect failures seen since the last tick, per
	// slot; stuckSeen the stuck flows already counted in them.
	failures  map[uint32]connectFailures
	stuckSeen map[flowID]bool
	// trackers are the pools' passive ejection trackers.
	trackers *trackers

	flowsTotal int // forward entries at the last count, expired ones too

	// dnsUses maps each backend name (normalized) to the pools using it.
	dnsUses map[string][]dnsUse

	errLogged     map[string]time.Time // last warning per failing map operation
	mapErrors     uint64               // map operations that failed
	gcDeleted     uint64               // expired flows deleted
	lastReverseGC time.Time            // when orphaned reverse entries were last collected
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
	return &agent{
		log:         o.log,
		version:     o.version,
		configPath:  o.configPath,
		load:        o.load,
		now:         o.now,
		routeSrc:    o.routeSrc,
		dns:         o.dns,
		runCtx:      context.Background(),
		dnsUses:     make(map[string][]dnsUse),
		refusals:    make(map[uint32]refusalMark),
		health:      newHealthStage(),
		errLogged:   make(map[string]time.Time),
		failures:    make(map[uint32]connectFailures),
		stuckSeen:   make(map[flowID]bool),
		trackers:    newTrackers(o.log.With("component", "eject"), ejectionMetrics(o.metrics)),
		transitions: newObserver(o.metrics, o.observe),
		metrics:     o.metrics,
		dp:          dp,
		pools:       make(map[string]*poolState),
		services:    make(map[datapath.ServiceKey]*service),
		slots:       newSlots(datapath.MaxBackends, reuseDelay),
		ids:         newIDs(datapath.MaxServices, reuseDelay),
		flowsBySlot: make(map[uint32]int),
		flowsBySvc:  make(map[uint32]int),
	}
}

// start adopts what the data path holds, applies cfg and programs the maps.
// Only failing to read the maps is an error: writes are retried by tick.
func (a *agent) start(now time.Time, cfg *config.Config) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.startedAt = now
	if err := a.adopt(now, cfg); err != nil {
		return err
	}
	a.apply(now, cfg)
	a.countFlows(now)
	if err := a.reconcile(now); err != nil {
		a.log.Warn("some map writes failed at start, retrying every tick", "err", err)
	}
	return nil
}

// adopt reads services and backend slots left by a previous agent, keeps
// their ids, slots and generations, and seeds the pools with their states.
func (a *agent) adopt(now time.Time, cfg *config.Config) error {
	svcs, err := a.dp.Services()
	if err != nil {
		return fmt.Errorf("read services from the data path: %w", err)
	}
	bes, err := a.dp.Backends()
	if err != nil {
		return fmt.Errorf("read backends from the data path: %w", err)
	}
	for k, s := range svcs {
		a.services[k] = &service{key: k, id: s.ID, value: s, written: true}
		a.ids.take(s.ID)
	}
	byID := make(map[uint32]string, len(cfg.Pools))
	for _, p := range cfg.Pools {
		byID[datapath.PoolID(p.Name)] = p.Name
	}
	nums := make([]uint32, 0, len(bes))
	for n := range bes {
		nums = append(nums, n)
	}
	slices.Sort(nums)
	for _, n := range nums {
		b := bes[n]
		if !a.slots.adopt(now, n, b) {
			if b.State != datapath.BackendRemoved && b.State != datapath.BackendFree {
				a.log.Warn("duplicate backend slot, removing it", "slot", n, "address", b.Addr.String())
			}
			continue
		}
		name, ok := byID[b.PoolID]
		if !ok {
			name = fmt.Sprintf("unconfigured-%08x", b.PoolID)
		}
		ps := a.poolFor(name, b.PoolID, cfg.Pool(name))
		st := poolStateOf(b.State)
		ps.p.Adopt(now, b.Addr, st, 1, now.Add(ps.cfg.Ejection.BaseTime.D()))
		ps.p.SetSlot(b.Addr, n)
	}
	if len(svcs) > 0 || len(bes) > 0 {
		a.log.Info("adopted data path state", "services", len(svcs), "backend_slots", len(bes))
	}
	return nil
}

// poolFor returns the pool called name, creating it with slot id id (from
// c when it is configured, with defaults when not: a pool found in the
// data path under an id no configured name has).
func (a *agent) poolFor(name string, id uint32, c *config.Pool) *poolState {
	if ps, ok := a.pools[name]; ok {
		return ps
	}
	var pc config.Pool
	if c != nil {
		pc = *c
	} else {
		pc = config.Pool{Name: name, DrainTimeout: config.Duration(30 * time.Second)}
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

func poolConfig(c config.Pool) pool.Config {
	return pool.Config{
		DrainTimeout:      c.DrainTimeout.D(),
		MaxEjectedPercent: c.Ejection.MaxEjectedPercent,
		RemovedGrace:      removedGrace,
	}
}

// apply makes cfg the running config: pools get their static addresses
// (sources they no longer have drain), services are added, updated or
// marked for deletion. The data path is written by reconcile.
func (a *agent) apply(now time.Time, cfg *config.Config) {
	a.cfg = cfg
	a.dnsUses = dnsUsesOf(cfg)
	// Routes may have changed: refresh the source towards every backend.
	for _, sl := range a.slots.bySlot {
		if sl.live {
			if src := a.sourceFor(sl.key.addr.Addr()); src.IsValid() {
				sl.src = src
			}
		}
	}
	for _, ps := range a.pools {
		ps.configured = false
	}
	for _, pc := range cfg.Pools {
		ps := a.poolFor(pc.Name, datapath.PoolID(pc.Name), &pc)
		ps.configured = true
		ps.cfg = pc
		ps.p.SetConfig(poolConfig(pc))
		sources := []string{pool.SourceStatic}
		var static []pool.Desired
		for _, b := range pc.Backends {
			if b.IsName() {
				sources = append(sources, b.Name)
				continue
			}
			static = append(static, pool.Desired{Addr: b.AddrPort, Weight: b.Weight, Info: "config line " + strconv.Itoa(b.Line)})
		}
		ps.p.Expect(now, sources)
		ps.p.SetSource(now, pool.SourceStatic, static)
	}
	for name, ps := range a.pools {
		if !ps.configured {
			ps.p.Expect(now, nil)
			ps.p.SetSource(now, pool.SourceStatic, nil)
			a.log.Debug("pool not configured, draining its addresses", "pool", name)
		}
	}

	for _, s := range a.services {
		s.configured = false
	}
	for _, sc := range cfg.L4Services() {
		key := serviceKey(sc)
		val := datapath.Service{Mode: datapath.ModeNAT}
		if sc.Mode == config.ModeSNAT {
			val.Mode = datapath.ModeSNAT
			if sc.SNATSource != "" {
				if ip, err := netip.ParseAddr(sc.SNATSource); err == nil {
					val.SNATAddr = ip
				}
			}
		}
		s, ok := a.services[key]
		if !ok {
			id, err := a.ids.alloc(now)
			if err != nil {
				a.log.Error("cannot add service", "service", sc.Name, "err", err)
				continue
			}
			s = &service{key: key, id: id}
			a.services[key] = s
		}
		val.ID = s.id
		if s.value != val {
			s.value = val
			s.written = false
		}
		if s.pool != sc.Pool {
			s.fingerprint = "" // rebuild the table from the new pool
		}
		s.name, s.pool, s.configured = sc.Name, sc.Pool, true
	}
	a.syncTrackers()
	a.syncHealth(now)
}

// sourceFor is the host's source address towards ip (invalid: unknown).
func (a *agent) sourceFor(ip netip.Addr) netip.Addr {
	if a.routeSrc == nil {
		return netip.Addr{}
	}
	return a.routeSrc(ip)
}

func serviceKey(sc config.Service) datapath.ServiceKey {
	proto := datapath.TCP
	if sc.Protocol == config.ProtocolUDP {
		proto = datapath.UDP
	}
	return datapath.ServiceKey{VIP: sc.ListenAddr.Addr(), Port: sc.ListenAddr.Port(), Proto: proto}
}

func poolStateOf(s datapath.BackendState) pool.State {
	switch s {
	case datapath.BackendActive:
		return pool.Active
	case datapath.BackendDraining:
		return pool.Draining
	case datapath.BackendEjected:
		return pool.Ejected
	}
	return pool.Removed
}

func slotStateOf(s pool.State) datapath.BackendState {
	switch s {
	case pool.Active:
		return datapath.BackendActive
	case pool.Draining:
		return datapath.BackendDraining
	case pool.Ejected:
		return datapath.BackendEjected
	}
	return datapath.BackendRemoved
}

// mapError logs and counts a failed map operation (op: the datapath.Map
// method); reconcile retries it.
func (a *agent) mapError(op string, err error, msg string, args ...any) {
	a.mapErrors++
	if a.metrics != nil {
		a.metrics.Agent.MapError(op)
	}
	// A failure that repeats every tick is logged as a warning once per
	// mapErrorLogEvery per operation, at debug level in between; the
	// metric counts every one.
	now := a.now()
	args = append(args, "op", op, "err", err)
	if last, ok := a.errLogged[op]; ok && now.Sub(last) < mapErrorLogEvery {
		a.log.Debug(msg, args...)
		return
	}
	a.errLogged[op] = now
	a.log.Warn(msg, args...)
}

// reconcile writes the pools' states into the data path, in the order
// that never sends a new flow to a backend that is not active:
//  1. slots becoming active are written before any table uses them;
//  2. services and their Maglev tables (built over active addresses whose
//     slot is confirmed active) are written, and dropped services deleted;
//  3. slots leaving active are written only once no table can hold them.
//
// A failed write is logged, counted and retried on the next call; it
// returns the errors joined.
func (a *agent) reconcile(now time.Time) error {
	var errs []error

	// Bind slots to addresses and decide what each slot should hold.
	wanted := make(map[uint32]bool)
	for _, ps := range a.pools {
		for _, b := range ps.p.Backends() {
			k := slotKey{ps.id, b.Addr}
			n, sl, ok := a.slots.lookup(k)
			if !ok {
				if b.State == pool.Removed {
					continue // never reached the data path, or already retired
				}
				var err error
				n, sl, err = a.slots.alloc(now, k, a.sourceFor(b.Addr.Addr()))
				if err != nil {
					errs = append(errs, fmt.Errorf("pool %s: address %s: allocate a backend slot: %w", ps.p.Name(), b.Addr, err))
					a.log.Error("no backend slot free", "pool", ps.p.Name(), "address", b.Addr.String())
					continue
				}
			}
			sl.want = slotStateOf(b.State)
			wanted[n] = true
			if b.Slot != n {
				ps.p.SetSlot(b.Addr, n)
			}
		}
	}
	// Live slots no pool entry wants any more (a forgotten address, a pool
	// gone) are removed.
	for n, sl := range a.slots.bySlot {
		if sl.live && !wanted[n] {
			sl.want = datapath.BackendRemoved
		}
	}

	// 1. Slots becoming active.
	for _, n := range a.sortedSlots() {
		sl := a.slots.bySlot[n]
		if sl.want != datapath.BackendActive || sl.synced() {
			continue
		}
		if err := a.writeSlot(now, n, sl); err != nil {
			errs = append(errs, err)
		}
	}

	// 2. Services and tables.
	for _, s := range a.sortedServices() {
		if !s.configured {
			if err := a.dp.DeleteService(s.key, s.id); err != nil {
				a.mapError("DeleteService", err, "delete service failed", "service_id", s.id)
				errs = append(errs, fmt.Errorf("delete service %d: %w", s.id, err))
				continue
			}
			a.log.Info("service deleted", "service_id", s.id, "vip", s.key.VIP.String(), "port", s.key.Port)
			delete(a.services, s.key)
			a.ids.free(now, s.id)
			continue
		}
		if !s.written {
			if err := a.dp.SetService(s.key, s.value); err != nil {
				a.mapError("SetService", err, "write service failed", "service", s.name)
				errs = append(errs, fmt.Errorf("write service %s: %w", s.name, err))
				continue
			}
			s.written = true
			a.log.Info("service programmed", "service", s.name, "id", s.id,
				"listen", netip.AddrPortFrom(s.key.VIP, s.key.Port).String(), "pool", s.pool)
		}
		if err := a.writeTable(s); err != nil {
			errs = append(errs, err)
		}
	}

	// 3. Slots leaving active, once no table can send new flows to them.
	for _, n := range a.sortedSlots() {
		sl := a.slots.bySlot[n]
		if sl.want == datapath.BackendActive || sl.synced() {
			continue
		}
		if sl.want == datapath.BackendRemoved && !sl.writtenOK {
			a.slots.retire(now, n) // never reached the data path
			continue
		}
		if by := a.tableHolding(n); by != "" {
			a.log.Debug("slot state deferred until its table is rewritten", "slot", n, "table_of", by)
			continue
		}
		if err := a.writeSlot(now, n, sl); err != nil {
			errs = append(errs, err)
			continue
		}
		if sl.want == datapath.BackendRemoved {
			a.slots.retire(now, n)
		}
	}
	return errors.Join(errs...)
}

func (a *agent) writeSlot(now time.Time, n uint32, sl *slot) error {
	b := sl.desired()
	if err := a.dp.SetBackend(n, b); err != nil {
		a.mapError("SetBackend", err, "write backend slot failed", "slot", n, "address", b.Addr.String(), "state", b.State)
		return fmt.Errorf("write backend slot %d (%s %s): %w", n, b.Addr, b.State, err)
	}
	sl.written, sl.writtenOK = b, true
	a.log.Debug("backend slot written", "slot", n, "address", b.Addr.String(), "gen", b.Gen, "state", b.State)
	return nil
}

// writeTable rebuilds a service's Maglev table over its pool's active
// addresses whose slot is active in the data path, when that set changed.
func (a *agent) writeTable(s *service) error {
	var bs []maglev.Backend
	if ps, ok := a.pools[s.pool]; ok {
		for _, b := range ps.p.Active() {
			n, sl, ok := a.slots.lookup(slotKey{ps.id, b.Addr})
			if !ok || !sl.synced() || sl.want != datapath.BackendActive {
				continue
			}
			bs = append(bs, maglev.Backend{ID: n, Key: b.Addr.String(), Weight: max(b.Weight, 1)})
		}
	}
	fp := fingerprint(bs)
	if s.tableKnown && fp == s.fingerprint {
		return nil
	}
	table, err := maglev.Build(bs, a.dp.TableSize())
	if err != nil {
		a.mapError("SetTable", err, "build maglev table failed", "service", s.name)
		return fmt.Errorf("build table of service %s: %w", s.name, err)
	}
	if err := a.dp.SetTable(s.id, table); err != nil {
		a.mapError("SetTable", err, "write maglev table failed", "service", s.name)
		return fmt.Errorf("write table of service %s: %w", s.name, err)
	}
	s.tableKnown = true
	s.fingerprint = fp
	s.tableSlots = make(map[uint32]bool, len(bs))
	for _, b := range bs {
		s.tableSlots[b.ID] = true
	}
	a.log.Info("maglev table written", "service", s.name, "backends", len(bs))
	return nil
}

// fingerprint identifies a table's input; maglev.Build is deterministic.
func fingerprint(bs []maglev.Backend) string {
	parts := make([]string, len(bs))
	for i, b := range bs {
		parts[i] = fmt.Sprintf("%d=%s*%d", b.ID, b.Key, b.Weight)
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// tableHolding names a service whose table may still send new flows to
// slot n ("" when none).
func (a *agent) tableHolding(n uint32) string {
	for _, s := range a.services {
		if !s.tableKnown || s.tableSlots[n] {
			if s.name != "" {
				return s.name
			}
			return "id " + strconv.FormatUint(uint64(s.id), 10)
		}
	}
	return ""
}

func (a *agent) sortedSlots() []uint32 {
	out := make([]uint32, 0, len(a.slots.bySlot))
	for n := range a.slots.bySlot {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func (a *agent) sortedServices() []*service {
	out := make([]*service, 0, len(a.services))
	for _, s := range a.services {
		out = append(out, s)
	}
	slices.SortFunc(out, func(x, y *service) int { return int(x.id) - int(y.id) })
	return out
}

// countFlows counts live flows per backend slot and service, deletes
// expired entries, and reports whether the counts are complete.
func (a *agent) countFlows(now time.Time) bool {
	bySlot := make(map[uint32]int)
	bySvc := make(map[uint32]int)
	stuck := make(map[uint32]int)
	stuckSeen := make(map[flowID]bool)
	var expired []datapath.Flow
	total := 0
	err := a.dp.Flows(func(f datapath.Flow) bool {
		total++
		if f.Expired {
			if len(expired) < maxGCPerTick {
				expired = append(expired, f)
			}
			return true
		}
		bySvc[f.ServiceID]++
		if sl, ok := a.slots.bySlot[f.BackendSlot]; ok && sl.gen == f.BackendGen {
			bySlot[f.BackendSlot]++
			if f.State == datapath.FlowSynSent && f.Idle >= synStuckAfter {
				stuck[f.BackendSlot]++
				id := flowID{f.Client, f.VIP, f.Proto}
				stuckSeen[id] = true
				if !a.stuckSeen[id] {
					cf := a.failures[f.BackendSlot]
					cf.unanswered++
					a.failures[f.BackendSlot] = cf
				}
			}
		}
		return true
	})
	if err != nil {
		a.mapError("Flows", err, "reading conntrack failed")
		return false
	}
	a.flowsBySlot, a.flowsBySvc, a.flowsAt, a.flowsTotal, a.synStuck = bySlot, bySvc, now, total, stuck
	a.stuckSeen = stuckSeen
	deleted := 0
	for _, f := range expired {
		if err := a.dp.DeleteFlow(f); err != nil {
			a.mapError("DeleteFlow", err, "deleting an expired flow failed", "client", f.Client.String(), "vip", f.VIP.String())
			break
		}
		deleted++
	}
	a.gcDeleted += uint64(deleted)
	if a.metrics != nil && deleted > 0 {
		a.metrics.Agent.ConntrackGCDeleted(deleted)
	}
	return true
}

// tick is the once-a-second step: count flows, collect expired ones, let
// the pools move on (drains end, ejections expire), write the changes.
func (a *agent) tick(now time.Time) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	known := a.countFlows(now)
	if known {
		a.readRefusals()
	}
	a.collectReverse(now)
	for name, ps := range a.pools {
		var flows map[netip.AddrPort]int
		if known {
			flows = make(map[netip.AddrPort]int)
			for _, b := range ps.p.Backends() {
				if n, _, ok := a.slots.lookup(slotKey{ps.id, b.Addr}); ok {
					flows[b.Addr] = a.flowsBySlot[n]
				}
				// Requests the L7 stage has in flight count as flows: a
				// draining address serving them is not removed yet.
				if a.l7 != nil {
					flows[b.Addr] += a.l7.busy(ps.p, b.Addr)
				}
			}
		}
		before := ps.p.Backends()
		if known {
			a.refreshFailing(now, name, ps, before)
		}
		ps.p.Tick(now, flows)
		for _, b := range before {
			if _, ok := ps.p.Backend(b.Addr); !ok {
				a.transitions.forget(name, b.Addr)
			}
		}
		if !ps.configured && ps.p.Empty() {
			delete(a.pools, name)
			a.log.Info("pool forgotten", "pool", name)
		}
	}
	a.healthTargets(now)
	a.reportFailures(now)
	clear(a.failures)
	return a.reconcile(now)
}

// nextDeadline is the earliest drain deadline or ejection end of any pool
// (zero when none), so the loop can act on it without waiting for a tick.
func (a *agent) nextDeadline() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	var next time.Time
	for _, ps := range a.pools {
		if t := ps.p.NextDeadline(); !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	return next
}

// collectReverse removes orphaned reverse conntrack entries every
// reverseGCEvery, when the data path can.
func (a *agent) collectReverse(now time.Time) {
	rc, ok := a.dp.(reverseCollector)
	if !ok || now.Sub(a.lastReverseGC) < reverseGCEvery {
		return
	}
	a.lastReverseGC = now
	n, err := rc.GCReverse()
	if err != nil {
		a.mapError("GCReverse", err, "collecting orphaned reverse conntrack entries failed")
		return
	}
	if n > 0 {
		a.gcDeleted += uint64(n)
		if a.metrics != nil {
			a.metrics.Agent.ConntrackGCDeleted(n)
		}
		a.log.Debug("orphaned reverse conntrack entries removed", "count", n)
	}
}

// syncL7 makes the L7 stage serve the running config's http services. It
// must be called without mu (servers start and stop).
func (a *agent) syncL7() {
	if a.l7 == nil {
		return
	}
	a.mu.Lock()
	cfg := a.cfg
	pools := make(map[string]*pool.Pool, len(a.pools))
	for name, ps := range a.pools {
		if ps.configured {
			pools[name] = ps.p
		}
	}
	ctx := a.runCtx
	a.mu.Unlock()
	if cfg != nil {
		a.l7.sync(ctx, cfg, pools)
	}
}
