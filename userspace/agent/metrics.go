package agent

import (
	"net/netip"

	"github.com/sluicelb/sluice/userspace/metrics"
	"github.com/sluicelb/sluice/userspace/pool"
)

// topology names the data path's ids for the metrics collector, which
// calls it at scrape time from its own goroutine.
type topology struct{ a *agent }

var (
	_ metrics.Topology    = topology{}
	_ metrics.FlowCounter = topology{}
)

// Services implements metrics.Topology: every configured service, L4 ones
// with their data path id.
func (t topology) Services() []metrics.ServiceRef {
	a := t.a
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cfg == nil {
		return nil
	}
	out := make([]metrics.ServiceRef, 0, len(a.cfg.Services))
	for _, sc := range a.cfg.Services {
		ref := metrics.ServiceRef{Name: sc.Name}
		if sc.IsL4() {
			if s, ok := a.services[serviceKey(sc)]; ok && s.written {
				ref.ID = s.id
				ref.Backends = len(s.tableSlots)
			}
		}
		out = append(out, ref)
	}
	return out
}

// Backends implements metrics.Topology: every address of every pool.
func (t topology) Backends() []metrics.BackendRef {
	a := t.a
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []metrics.BackendRef
	for name, ps := range a.pools {
		for _, b := range ps.p.Backends() {
			ref := metrics.BackendRef{Pool: name, Address: b.Addr.String(), State: b.State.String()}
			if b.State == pool.Draining {
				ref.DrainDeadline = b.DrainDeadline
			}
			if n, sl, ok := a.slots.lookup(slotKey{ps.id, b.Addr}); ok {
				ref.Slot, ref.Gen = n, sl.gen
			}
			out = append(out, ref)
		}
	}
	return out
}

// FlowCounts implements metrics.FlowCounter with the last tick's counts,
// so a scrape does not walk the conntrack map again.
func (t topology) FlowCounts() (metrics.FlowCounts, bool) {
	a := t.a
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.flowsAt.IsZero() {
		return metrics.FlowCounts{}, false
	}
	c := metrics.FlowCounts{
		ByService: make(map[uint32]int, len(a.flowsBySvc)),
		BySlot:    make(map[uint32]int, len(a.flowsBySlot)),
		Total:     a.flowsTotal,
	}
	for k, v := range a.flowsBySvc {
		c.ByService[k] = v
	}
	for k, v := range a.flowsBySlot {
		c.BySlot[k] = v
	}
	return c, true
}

// observer is every pool's observer: it feeds the metrics and the extra
// observer, and kicks the loop so changes made outside the agent's own
// calls (an ejection by the L7 stage) reach the data path at once.
type observer struct {
	metrics *metrics.Metrics // may be nil
	next    pool.Observer    // may be nil
	kick    chan struct{}
}

func newObserver(m *metrics.Metrics, next pool.Observer) *observer {
	return &observer{metrics: m, next: next, kick: make(chan struct{}, 1)}
}

func (o *observer) observe(t pool.Transition) {
	if o.metrics != nil {
		o.metrics.Agent.Transition(t)
	}
	if o.next != nil {
		o.next(t)
	}
	select {
	case o.kick <- struct{}{}:
	default:
	}
}

// forget drops the metric series of an address its pool forgot.
func (o *observer) forget(poolName string, addr netip.AddrPort) {
	if o.metrics != nil {
		o.metrics.ForgetBackend(poolName, addr)
	}
}
