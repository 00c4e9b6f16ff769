package datapath

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"sync"
)

// Fake is an in-memory Map for tests that cannot load BPF. It checks its
// arguments the way the real maps do (slot and id ranges, table sizes),
// records every call in an op log, and can be told to fail the next call of
// a given operation.
type Fake struct {
	mu        sync.Mutex
	tableSize uint32
	services  map[ServiceKey]Service
	backends  map[uint32]Backend
	tables    map[uint32][]uint32
	flows     map[flowKey]Flow
	svcStats  map[uint32]ServiceStats
	beStats   map[uint32]BackendStats
	global    GlobalStats
	attached  []Attachment
	ops       []Op
	setTables int
	failures  map[string][]error
}

type flowKey struct {
	client netip.AddrPort
	vip    netip.AddrPort
	proto  Proto
}

// Op is one recorded call on a Fake.
type Op struct {
	Name      string // method name: "SetService", "SetTable", ...
	Key       ServiceKey
	ServiceID uint32
	Slot      uint32
	Backend   Backend  // SetBackend
	Table     []uint32 // SetTable (a copy)
	Err       error    // the error the call returned
}

// String renders an op compactly, e.g. "SetBackend(3 198.18.2.1:80 gen=1 active)".
func (o Op) String() string {
	var s string
	switch o.Name {
	case "SetService":
		s = fmt.Sprintf("SetService(%d %s:%d/%d)", o.ServiceID, o.Key.VIP, o.Key.Port, o.Key.Proto)
	case "DeleteService":
		s = fmt.Sprintf("DeleteService(%d)", o.ServiceID)
	case "SetBackend":
		s = fmt.Sprintf("SetBackend(%d %s gen=%d %s)", o.Slot, o.Backend.Addr, o.Backend.Gen, o.Backend.State)
	case "SetTable":
		s = fmt.Sprintf("SetTable(%d len=%d)", o.ServiceID, len(o.Table))
	default:
		s = o.Name + "()"
	}
	if o.Err != nil {
		s += " err=" + o.Err.Error()
	}
	return s
}

var _ Map = (*Fake)(nil)

// Attachments returns what SetAttachments set.
func (f *Fake) Attachments() []Attachment {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.attached)
}

// SetAttachments sets what Attachments returns.
func (f *Fake) SetAttachments(a []Attachment) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attached = slices.Clone(a)
}

// NewFake returns an empty Fake whose Maglev tables have tableSize entries.
func NewFake(tableSize uint32) *Fake {
	return &Fake{
		tableSize: tableSize,
		services:  make(map[ServiceKey]Service),
		backends:  make(map[uint32]Backend),
		tables:    make(map[uint32][]uint32),
		flows:     make(map[flowKey]Flow),
		svcStats:  make(map[uint32]ServiceStats),
		beStats:   make(map[uint32]BackendStats),
		failures:  make(map[string][]error),
	}
}

// FailNext makes the next call of op (a Map method name such as "SetTable")
// return err without changing anything. Calls queue up: FailNext twice fails
// the next two calls.
func (f *Fake) FailNext(op string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures[op] = append(f.failures[op], err)
}

// fail pops a queued failure for op. Called with mu held.
func (f *Fake) fail(op string) error {
	q := f.failures[op]
	if len(q) == 0 {
		return nil
	}
	f.failures[op] = q[1:]
	return q[0]
}

func (f *Fake) record(o Op) {
	f.ops = append(f.ops, o)
}

// Ops returns a copy of the op log of mutating calls (SetService,
// DeleteService, SetBackend, SetTable, DeleteFlow), failed ones included.
func (f *Fake) Ops() []Op {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ops)
}

// ResetOps clears the op log and the SetTable counter.
func (f *Fake) ResetOps() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = nil
	f.setTables = 0
}

// SetTableCalls is the number of successful SetTable calls since NewFake or ResetOps.
func (f *Fake) SetTableCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.setTables
}

// Table returns a copy of a service's current Maglev table (nil when empty).
func (f *Fake) Table(serviceID uint32) []uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.tables[serviceID])
}

// Backend returns one slot (State BackendFree when unused).
func (f *Fake) Backend(slot uint32) Backend {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.backends[slot]
}

// AddFlow adds or replaces a forward conntrack entry.
func (f *Fake) AddFlow(fl Flow) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flows[flowKey{fl.Client, fl.VIP, fl.Proto}] = fl
}

// FlowCount is the number of conntrack entries, expired ones included.
func (f *Fake) FlowCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.flows)
}

// SetServiceStats sets the counters ServiceStats returns for id.
func (f *Fake) SetServiceStats(id uint32, s ServiceStats) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.svcStats[id] = s
}

// SetBackendStats sets the counters BackendStats returns for slot.
func (f *Fake) SetBackendStats(slot uint32, s BackendStats) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.beStats[slot] = s
}

// Services implements Map.
func (f *Fake) Services() (map[ServiceKey]Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("Services"); err != nil {
		return nil, err
	}
	out := make(map[ServiceKey]Service, len(f.services))
	for k, v := range f.services {
		out[k] = v
	}
	return out, nil
}

// SetService implements Map.
func (f *Fake) SetService(k ServiceKey, s Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.fail("SetService")
	if err == nil && (s.ID == 0 || s.ID >= MaxServices) {
		err = fmt.Errorf("set service %s:%d: id %d: %w", k.VIP, k.Port, s.ID, ErrOutOfRange)
	}
	if err == nil {
		f.services[k] = s
	}
	f.record(Op{Name: "SetService", Key: k, ServiceID: s.ID, Err: err})
	return err
}

// DeleteService implements Map.
func (f *Fake) DeleteService(k ServiceKey, id uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.fail("DeleteService")
	if err == nil {
		delete(f.services, k)
		delete(f.tables, id)
	}
	f.record(Op{Name: "DeleteService", Key: k, ServiceID: id, Err: err})
	return err
}

// Backends implements Map.
func (f *Fake) Backends() (map[uint32]Backend, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("Backends"); err != nil {
		return nil, err
	}
	out := make(map[uint32]Backend, len(f.backends))
	for k, v := range f.backends {
		if v.State != BackendFree {
			out[k] = v
		}
	}
	return out, nil
}

// SetBackend implements Map.
func (f *Fake) SetBackend(slot uint32, b Backend) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.fail("SetBackend")
	if err == nil && (slot == 0 || slot >= MaxBackends) {
		err = fmt.Errorf("set backend: slot %d: %w", slot, ErrOutOfRange)
	}
	if err == nil {
		f.backends[slot] = b
	}
	f.record(Op{Name: "SetBackend", Slot: slot, Backend: b, Err: err})
	return err
}

// SetTable implements Map.
func (f *Fake) SetTable(serviceID uint32, table []uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.fail("SetTable")
	if err == nil && (serviceID == 0 || serviceID >= MaxServices) {
		err = fmt.Errorf("set table: service id %d: %w", serviceID, ErrOutOfRange)
	}
	if err == nil && len(table) != 0 && uint32(len(table)) != f.tableSize {
		err = fmt.Errorf("set table of service %d: %d entries, want %d", serviceID, len(table), f.tableSize)
	}
	if err == nil {
		for i, slot := range table {
			if slot == 0 || slot >= MaxBackends {
				err = fmt.Errorf("set table of service %d: entry %d: slot %d: %w", serviceID, i, slot, ErrOutOfRange)
				break
			}
		}
	}
	if err == nil {
		if len(table) == 0 {
			delete(f.tables, serviceID)
		} else {
			f.tables[serviceID] = slices.Clone(table)
		}
		f.setTables++
	}
	f.record(Op{Name: "SetTable", ServiceID: serviceID, Table: slices.Clone(table), Err: err})
	return err
}

// TableSize implements Map.
func (f *Fake) TableSize() uint32 { return f.tableSize }

// Flows implements Map. Flows are visited in a stable order (client, VIP).
func (f *Fake) Flows(fn func(Flow) bool) error {
	f.mu.Lock()
	if err := f.fail("Flows"); err != nil {
		f.mu.Unlock()
		return err
	}
	flows := make([]Flow, 0, len(f.flows))
	for _, fl := range f.flows {
		flows = append(flows, fl)
	}
	f.mu.Unlock()
	slices.SortFunc(flows, func(a, b Flow) int {
		if c := a.Client.Compare(b.Client); c != 0 {
			return c
		}
		if c := a.VIP.Compare(b.VIP); c != 0 {
			return c
		}
		return cmp.Compare(a.Proto, b.Proto)
	})
	for _, fl := range flows {
		if !fn(fl) {
			break
		}
	}
	return nil
}

// DeleteFlow implements Map.
func (f *Fake) DeleteFlow(fl Flow) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.fail("DeleteFlow")
	if err == nil {
		delete(f.flows, flowKey{fl.Client, fl.VIP, fl.Proto})
	}
	f.record(Op{Name: "DeleteFlow", ServiceID: fl.ServiceID, Slot: fl.BackendSlot, Err: err})
	return err
}

// ServiceStats implements Map.
func (f *Fake) ServiceStats(id uint32) (ServiceStats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("ServiceStats"); err != nil {
		return ServiceStats{}, err
	}
	return f.svcStats[id], nil
}

// BackendStats implements Map.
func (f *Fake) BackendStats(slot uint32) (BackendStats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("BackendStats"); err != nil {
		return BackendStats{}, err
	}
	return f.beStats[slot], nil
}

// GlobalStats implements Map.
func (f *Fake) GlobalStats() (GlobalStats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("GlobalStats"); err != nil {
		return GlobalStats{}, err
	}
	return f.global, nil
}
