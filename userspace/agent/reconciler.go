package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/maglev"
	"github.com/sluicelb/sluice/userspace/pool"
)

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

// wantService is an L4 service of the running config, as the reconciler
// needs it.
type wantService struct {
	key   datapath.ServiceKey
	name  string
	pool  string
	value datapath.Service // ID is the reconciler's to set
}

// poolRef is a pool the reconciler mirrors: its name (services name their
// pool), its data-path id (slots carry it) and its state machine.
type poolRef struct {
	name string
	id   uint32
	p    *pool.Pool
}

// adoptedSlot is a backend slot found in the data path at start and bound
// to its address: the agent seeds the slot's pool with it.
type adoptedSlot struct {
	slot uint32
	b    datapath.Backend
}

// reconciler owns what the agent has put in the data path: service ids,
// backend slots and their generations, the Maglev tables, and the handle
// on the maps. It mirrors the pools' states into the maps in a safe order
// (see reconcile), and does only the work a change asks for: a pool whose
// Version did not move since the last complete pass is not looked at, and
// a table is rebuilt only when its input changed. Its fields are guarded
// by its own mu.
type reconciler struct {
	log      *slog.Logger
	dp       datapath.Map
	errs     *mapErrors
	routeSrc func(netip.Addr) netip.Addr // nil or an invalid result: unknown

	mu       sync.Mutex
	services map[datapath.ServiceKey]*service
	slots    *slots
	ids      *ids
	// seen is each pool's Version at the last pass that left it in sync;
	// a pool not in it (or with another version) is looked at again.
	seen map[uint32]uint64
	// clean: the last pass wrote everything it wanted (no error, nothing
	// deferred) and no service changed since. Otherwise the next pass
	// looks at every pool and slot again.
	clean bool
}

func newReconciler(dp datapath.Map, log *slog.Logger, errs *mapErrors, routeSrc func(netip.Addr) netip.Addr) *reconciler {
	return &reconciler{
		log:      log,
		dp:       dp,
		errs:     errs,
		routeSrc: routeSrc,
		services: make(map[datapath.ServiceKey]*service),
		slots:    newSlots(datapath.MaxBackends, reuseDelay),
		ids:      newIDs(datapath.MaxServices, reuseDelay),
		seen:     make(map[uint32]uint64),
	}
}

// adopt reads services and backend slots left by a previous agent, keeps
// their ids, slots and generations, and returns the slots bound to an
// address, in slot order, for the agent to seed its pools with.
func (r *reconciler) adopt(now time.Time) ([]adoptedSlot, int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	svcs, err := r.dp.Services()
	if err != nil {
		return nil, 0, fmt.Errorf("read services from the data path: %w", err)
	}
	bes, err := r.dp.Backends()
	if err != nil {
		return nil, 0, fmt.Errorf("read backends from the data path: %w", err)
	}
	for k, s := range svcs {
		r.services[k] = &service{key: k, id: s.ID, value: s, written: true}
		r.ids.take(s.ID)
	}
	nums := make([]uint32, 0, len(bes))
	for n := range bes {
		nums = append(nums, n)
	}
	slices.Sort(nums)
	var out []adoptedSlot
	for _, n := range nums {
		b := bes[n]
		if !r.slots.adopt(now, n, b) {
			if b.State != datapath.BackendRemoved && b.State != datapath.BackendFree {
				r.log.Warn("duplicate backend slot, removing it", "slot", n, "address", b.Addr.String())
			}
			continue
		}
		out = append(out, adoptedSlot{slot: n, b: b})
	}
	r.clean = false
	return out, len(svcs), nil
}

// setServices makes want the L4 services of the running config: new ones
// get an id, changed ones are rewritten, the others are deleted by the
// next reconcile. It also refreshes the host's source address towards
// every backend (routes may have changed with the config). It returns the
// services that got no id.
func (r *reconciler) setServices(now time.Time, want []wantService) (problems []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clean = false
	for _, sl := range r.slots.bySlot {
		if sl.live {
			if src := r.sourceFor(sl.key.addr.Addr()); src.IsValid() {
				sl.src = src
			}
		}
	}
	for _, s := range r.services {
		s.configured = false
	}
	for _, w := range want {
		s, ok := r.services[w.key]
		if !ok {
			id, err := r.ids.alloc(now)
			if err != nil {
				r.log.Error("cannot add service", "service", w.name, "err", err)
				problems = append(problems, fmt.Sprintf("service %s: no service id free: %v", w.name, err))
				continue
			}
			s = &service{key: w.key, id: id}
			r.services[w.key] = s
		}
		val := w.value
		val.ID = s.id
		if s.value != val {
			s.value = val
			s.written = false
		}
		if s.pool != w.pool {
			s.fingerprint = "" // rebuild the table from the new pool
		}
		s.name, s.pool, s.configured = w.name, w.pool, true
	}
	return problems
}

// sourceFor is the host's source address towards ip (invalid: unknown).
func (r *reconciler) sourceFor(ip netip.Addr) netip.Addr {
	if r.routeSrc == nil {
		return netip.Addr{}
	}
	return r.routeSrc(ip)
}

// reconcile writes the pools' states into the data path, in the order
// that never sends a new flow to a backend that is not active:
//  1. slots becoming active are written before any table uses them;
//  2. services and their Maglev tables (built over active addresses whose
//     slot is confirmed active) are written, and dropped services deleted;
//  3. slots leaving active are written only once no table can hold them.
//
// pools are every pool the agent runs. Only those whose Version moved
// since they were last in sync are looked at, with the services that use
// them, unless the last pass left something undone (then all are). A
// failed write is logged, counted and retried on the next call; it
// returns the errors joined.
func (r *reconciler) reconcile(now time.Time, pools []poolRef) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	full := !r.clean
	var errs []error
	deferred := false

	// The pools to look at, and their versions as read before their
	// states: a change made meanwhile moves the version again.
	dirty := make(map[string]poolRef)
	versions := make(map[uint32]uint64)
	for _, pr := range pools {
		v := pr.p.Version()
		if !full {
			if seen, ok := r.seen[pr.id]; ok && seen == v {
				continue
			}
		}
		dirty[pr.name] = pr
		versions[pr.id] = v
	}
	if !full && len(dirty) == 0 {
		return nil
	}

	// Bind slots to addresses and decide what each slot should hold.
	touched := make(map[uint32]bool)
	wanted := make(map[uint32]bool)
	for _, pr := range dirty {
		for _, b := range pr.p.Backends() {
			k := slotKey{pr.id, b.Addr}
			n, sl, ok := r.slots.lookup(k)
			if !ok {
				if b.State == pool.Removed {
					continue // never reached the data path, or already retired
				}
				var err error
				n, sl, err = r.slots.alloc(now, k, r.sourceFor(b.Addr.Addr()))
				if err != nil {
					errs = append(errs, fmt.Errorf("pool %s: address %s: allocate a backend slot: %w", pr.name, b.Addr, err))
					r.log.Error("no backend slot free", "pool", pr.name, "address", b.Addr.String())
					continue
				}
			}
			sl.want = slotStateOf(b.State)
			wanted[n] = true
			touched[n] = true
		}
	}
	// Live slots no pool entry wants any more (a forgotten address, a pool
	// gone) are removed. Outside a full pass only the dirty pools' slots
	// can have lost their address.
	dirtyIDs := make(map[uint32]bool, len(dirty))
	for _, pr := range dirty {
		dirtyIDs[pr.id] = true
	}
	for n, sl := range r.slots.bySlot {
		if full && !sl.synced() {
			touched[n] = true
		}
		if sl.live && !wanted[n] && (full || dirtyIDs[sl.key.pool]) {
			sl.want = datapath.BackendRemoved
			touched[n] = true
		}
	}
	order := make([]uint32, 0, len(touched))
	for n := range touched {
		order = append(order, n)
	}
	slices.Sort(order)

	// 1. Slots becoming active.
	for _, n := range order {
		sl := r.slots.bySlot[n]
		if sl.want != datapath.BackendActive || sl.synced() {
			continue
		}
		if err := r.writeSlot(n, sl); err != nil {
			errs = append(errs, err)
		}
	}

	// 2. Services and tables: every one in a full pass, else those of the
	// dirty pools.
	byName := make(map[string]poolRef, len(pools))
	for _, pr := range pools {
		byName[pr.name] = pr
	}
	for _, s := range r.sortedServices() {
		if !full {
			if _, ok := dirty[s.pool]; !ok && s.configured && s.written && s.tableKnown {
				continue
			}
		}
		if !s.configured {
			if err := r.dp.DeleteService(s.key, s.id); err != nil {
				r.errs.report("DeleteService", err, "delete service failed", "service_id", s.id)
				errs = append(errs, fmt.Errorf("delete service %d: %w", s.id, err))
				continue
			}
			r.log.Info("service deleted", "service_id", s.id, "vip", s.key.VIP.String(), "port", s.key.Port)
			delete(r.services, s.key)
			r.ids.free(now, s.id)
			continue
		}
		if !s.written {
			if err := r.dp.SetService(s.key, s.value); err != nil {
				r.errs.report("SetService", err, "write service failed", "service", s.name)
				errs = append(errs, fmt.Errorf("write service %s: %w", s.name, err))
				continue
			}
			s.written = true
			r.log.Info("service programmed", "service", s.name, "id", s.id,
				"listen", netip.AddrPortFrom(s.key.VIP, s.key.Port).String(), "pool", s.pool)
		}
		pr, ok := byName[s.pool]
		if err := r.writeTable(s, pr, ok); err != nil {
			errs = append(errs, err)
		}
	}

	// 3. Slots leaving active, once no table can send new flows to them.
	for _, n := range order {
		sl := r.slots.bySlot[n]
		if sl.want == datapath.BackendActive || sl.synced() {
			continue
		}
		if sl.want == datapath.BackendRemoved && !sl.writtenOK {
			r.slots.retire(now, n) // never reached the data path
			continue
		}
		if by := r.tableHolding(n); by != "" {
			r.log.Debug("slot state deferred until its table is rewritten", "slot", n, "table_of", by)
			deferred = true
			continue
		}
		if err := r.writeSlot(n, sl); err != nil {
			errs = append(errs, err)
			continue
		}
		if sl.want == datapath.BackendRemoved {
			r.slots.retire(now, n)
		}
	}

	r.clean = len(errs) == 0 && !deferred
	if full {
		clear(r.seen)
	}
	if r.clean {
		for id, v := range versions {
			r.seen[id] = v
		}
	}
	return errors.Join(errs...)
}

func (r *reconciler) writeSlot(n uint32, sl *slot) error {
	b := sl.desired()
	if err := r.dp.SetBackend(n, b); err != nil {
		r.errs.report("SetBackend", err, "write backend slot failed", "slot", n, "address", b.Addr.String(), "state", b.State)
		return fmt.Errorf("write backend slot %d (%s %s): %w", n, b.Addr, b.State, err)
	}
	sl.written, sl.writtenOK = b, true
	r.log.Debug("backend slot written", "slot", n, "address", b.Addr.String(), "gen", b.Gen, "state", b.State)
	return nil
}

// writeTable rebuilds a service's Maglev table over its pool's active
// addresses whose slot is active in the data path, when that set changed.
// ok false: the service's pool is not running (an empty table).
func (r *reconciler) writeTable(s *service, pr poolRef, ok bool) error {
	var bs []maglev.Backend
	if ok {
		for _, b := range pr.p.Active() {
			if b.Addr.Addr().Is4() != s.key.VIP.Is4() {
				continue // a service sends to the backends of its own family
			}
			n, sl, ok := r.slots.lookup(slotKey{pr.id, b.Addr})
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
	table, err := maglev.Build(bs, r.dp.TableSize())
	if err != nil {
		r.errs.report("SetTable", err, "build maglev table failed", "service", s.name)
		return fmt.Errorf("build table of service %s: %w", s.name, err)
	}
	if err := r.dp.SetTable(s.id, table); err != nil {
		r.errs.report("SetTable", err, "write maglev table failed", "service", s.name)
		return fmt.Errorf("write table of service %s: %w", s.name, err)
	}
	s.tableKnown = true
	s.fingerprint = fp
	s.tableSlots = make(map[uint32]bool, len(bs))
	for _, b := range bs {
		s.tableSlots[b.ID] = true
	}
	r.log.Info("maglev table written", "service", s.name, "backends", len(bs))
	return nil
}

// fingerprint identifies a table's input; maglev.Build is deterministic.
func fingerprint(bs []maglev.Backend) string {
	parts := make([]string, len(bs))
	for i, b := range bs {
		parts[i] = strconv.FormatUint(uint64(b.ID), 10) + "=" + b.Key + "*" + strconv.FormatUint(uint64(b.Weight), 10)
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// tableHolding names a service whose table may still send new flows to
// slot n ("" when none).
func (r *reconciler) tableHolding(n uint32) string {
	for _, s := range r.services {
		if !s.tableKnown || s.tableSlots[n] {
			if s.name != "" {
				return s.name
			}
			return "id " + strconv.FormatUint(uint64(s.id), 10)
		}
	}
	return ""
}

func (r *reconciler) sortedServices() []*service {
	out := make([]*service, 0, len(r.services))
	for _, s := range r.services {
		out = append(out, s)
	}
	slices.SortFunc(out, func(x, y *service) int { return int(x.id) - int(y.id) })
	return out
}

// slotOf is the live slot bound to addr of pool id, with its generation.
func (r *reconciler) slotOf(poolID uint32, addr netip.AddrPort) (n, gen uint32, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, sl, ok := r.slots.lookup(slotKey{poolID, addr})
	if !ok {
		return 0, 0, false
	}
	return n, sl.gen, true
}

// slotView is a read-only snapshot of the live slots, for callers that
// look many addresses up at once without holding the reconciler's lock.
type slotView map[slotKey]slotGen

// liveSlots returns every live slot by its address.
func (r *reconciler) liveSlots() slotView {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(slotView, len(r.slots.byKey))
	for k, n := range r.slots.byKey {
		out[k] = slotGen{slot: n, gen: r.slots.bySlot[n].gen}
	}
	return out
}

// activeSlots are the live slots the data path holds as active: the ones
// whose refused connects are worth reading.
func (r *reconciler) activeSlots() []slotGen {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []slotGen
	for n, sl := range r.slots.bySlot {
		if sl.live && sl.want == datapath.BackendActive {
			out = append(out, slotGen{slot: n, gen: sl.gen})
		}
	}
	return out
}

// owner is the address a slot incarnation is bound to, if it still is
// and the data path should hold it active.
func (r *reconciler) owner(sg slotGen) (poolID uint32, addr netip.AddrPort, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sl, ok := r.slots.bySlot[sg.slot]
	if !ok || !sl.live || sl.gen != sg.gen || sl.want != datapath.BackendActive {
		return 0, netip.AddrPort{}, false
	}
	return sl.key.pool, sl.key.addr, true
}

// invalidate makes the next pass look at every pool and slot (the set of
// pools changed).
func (r *reconciler) invalidate() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clean = false
}

// serviceInfo is what status and metrics show of an L4 service.
type serviceInfo struct {
	id       uint32
	name     string
	written  bool
	backends int // slots in its table
}

// serviceOf is the L4 service on key.
func (r *reconciler) serviceOf(key datapath.ServiceKey) (serviceInfo, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.services[key]
	if !ok {
		return serviceInfo{}, false
	}
	return serviceInfo{id: s.id, name: s.name, written: s.written, backends: len(s.tableSlots)}, true
}

// serviceNames maps every service id to its name.
func (r *reconciler) serviceNames() map[uint32]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[uint32]string, len(r.services))
	for _, s := range r.services {
		out[s.id] = s.name
	}
	return out
}

// answersUnseen returns the ids of the services whose backends answer
// their clients without passing this node (mode dsr), so the flow watcher
// does not take their SYNs left in syn-sent for unanswered ones.
func (r *reconciler) answersUnseen() map[uint32]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out map[uint32]bool
	for _, s := range r.services {
		if s.value.Mode == datapath.ModeDSR {
			if out == nil {
				out = make(map[uint32]bool)
			}
			out[s.id] = true
		}
	}
	return out
}

func serviceKeyOf(vip netip.AddrPort, proto datapath.Proto) datapath.ServiceKey {
	return datapath.ServiceKey{VIP: vip.Addr(), Port: vip.Port(), Proto: proto}
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

// mapErrors logs and counts failed map operations for every owner that
// writes or reads the maps. Safe for concurrent use.
type mapErrors struct {
	log   *slog.Logger
	now   func() time.Time
	count func(op string) // the metric; nil: none

	mu     sync.Mutex
	logged map[string]time.Time // last warning per failing operation
	total  uint64
}

func newMapErrors(log *slog.Logger, now func() time.Time, count func(op string)) *mapErrors {
	return &mapErrors{log: log, now: now, count: count, logged: make(map[string]time.Time)}
}

// report logs and counts a failed map operation (op: the datapath.Map
// method); its owner retries it. A failure that repeats every tick is
// logged as a warning once per mapErrorLogEvery per operation, at debug
// level in between; the metric counts every one.
func (m *mapErrors) report(op string, err error, msg string, args ...any) {
	if m.count != nil {
		m.count(op)
	}
	now := m.now()
	args = append(args, "op", op, "err", err)
	m.mu.Lock()
	m.total++
	last, ok := m.logged[op]
	quiet := ok && now.Sub(last) < mapErrorLogEvery
	if !quiet {
		m.logged[op] = now
	}
	m.mu.Unlock()
	if quiet {
		m.log.Debug(msg, args...)
		return
	}
	m.log.Warn(msg, args...)
}
