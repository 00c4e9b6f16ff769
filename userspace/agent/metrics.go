package agent

import (
	"net/netip"

	"github.com/sluicelb/sluice/userspace/metrics"
	"github.com/sluicelb/sluice/userspace/pool"
)

// topology names the data path's ids for the metrics collector, which
// calls it at scrape time from its own goroutine.
type topology struct{ a *agent }

var _ metrics.Topology = topology{}

// topology returns the agent's metrics.Topology.
func (a *agent) topology() metrics.Topology { return topology{a} }

// Services implements metrics.Topology: every configured service, L4 ones
// with their data path id.
func (t topology) Services() []metrics.ServiceRef {
	a := t.a
	a.mu.Lock()
	cfg := a.cfg
	a.mu.Unlock()
	if cfg == nil {
		return nil
	}
	out := make([]metrics.ServiceRef, 0, len(cfg.Services))
	for _, sc := range cfg.Services {
		ref := metrics.ServiceRef{Name: sc.Name}
		if sc.IsL4() {
			if s, ok := a.rec.serviceOf(serviceKey(sc)); ok && s.written {
				ref.ID = s.id
				ref.Backends = s.backends
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
	pools := make(map[string]*poolState, len(a.pools))
	for name, ps := range a.pools {
		pools[name] = ps
	}
	a.mu.Unlock()
	live := a.rec.liveSlots()
	var out []metrics.BackendRef
	for name, ps := range pools {
		for _, b := range ps.p.Backends() {
			ref := metrics.BackendRef{Pool: name, Address: b.Addr.String(), State: b.State.String()}
			if b.State == pool.Draining {
				ref.DrainDeadline = b.DrainDeadline
			}
			if sg, ok := live[slotKey{ps.id, b.Addr}]; ok {
				ref.Slot, ref.Gen = sg.slot, sg.gen
			}
			out = append(out, ref)
		}
	}
	return out
}

// FlowCounts implements metrics.Topology with the flow watcher's last
// counts, so a scrape does not walk the conntrack map again.
func (t topology) FlowCounts() (metrics.FlowCounts, bool) {
	a := t.a
	fc := a.flows.last()
	if fc.at.IsZero() {
		return metrics.FlowCounts{}, false
	}
	live := a.rec.liveSlots()
	c := metrics.FlowCounts{
		ByService: make(map[uint32]int, len(fc.bySvc)),
		BySlot:    make(map[uint32]int, len(live)),
		Total:     fc.total,
	}
	for k, v := range fc.bySvc {
		c.ByService[k] = v
	}
	for _, sg := range live {
		if n := fc.bySlot[sg]; n > 0 {
			c.BySlot[sg.slot] = n
		}
	}
	return c, true
}

// observer is every pool's observer: it feeds the metrics and the extra
// observer, and kicks the loop so changes made outside the agent's own
// calls (an ejection by the L7 stage) reach the data path at once.
type observer struct {
	metrics  *metrics.Metrics // may be nil
	next     pool.Observer    // may be nil
	onChange func()           // the saved state is out of date; may be nil
	kick     chan struct{}
}

func newObserver(m *metrics.Metrics, next pool.Observer, onChange func()) *observer {
	return &observer{metrics: m, next: next, onChange: onChange, kick: make(chan struct{}, 1)}
}

func (o *observer) observe(t pool.Transition) {
	if o.onChange != nil {
		o.onChange()
	}
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
