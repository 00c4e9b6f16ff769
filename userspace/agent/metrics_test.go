package agent

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/sluicelb/sluice/userspace/datapath"
)

// gather returns metric values by name and "k=v,..." labels.
func gather(t *testing.T, a *agent) map[string]map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(newCollector(a))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := make(map[string]map[string]float64)
	for _, mf := range mfs {
		m := make(map[string]float64)
		for _, mt := range mf.GetMetric() {
			var key string
			for i, l := range mt.GetLabel() {
				if i > 0 {
					key += ","
				}
				key += l.GetName() + "=" + l.GetValue()
			}
			m[key] = value(mt)
		}
		out[mf.GetName()] = m
	}
	return out
}

func value(m *dto.Metric) float64 {
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return m.GetGauge().GetValue()
}

func TestMetrics(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	h.dp.SetServiceStats(1, datapath.ServiceStats{Packets: 10, Bytes: 1000, NewFlows: 3, RSTRemovedBackend: 2})
	h.dp.SetBackendStats(h.slotOf(be2), datapath.BackendStats{Packets: 7})
	h.addFlow(40000, h.slotOf(be1), false)
	if err := h.a.Drain(h.ctx, "web", "198.18.2.11:80"); err != nil {
		t.Fatal(err)
	}
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	h.write("nonsense: [")
	_ = h.a.Reload(h.ctx)

	m := gather(t, h.a)
	checks := []struct {
		name, labels string
		want         float64
	}{
		{"sluice_build_info", "version=test", 1},
		{"sluice_service_packets_total", "service=web-l4", 10},
		{"sluice_service_rsts_total", "reason=removed_backend,service=web-l4", 2},
		{"sluice_service_active_flows", "service=web-l4", 1},
		{"sluice_service_backends", "service=web-l4", 2},
		{"sluice_backend_state", "address=198.18.2.11:80,pool=web,state=draining", 1},
		{"sluice_backend_state", "address=198.18.2.11:80,pool=web,state=active", 0},
		{"sluice_backend_active_flows", "address=198.18.2.11:80,pool=web", 1},
		{"sluice_backend_packets_total", "address=198.18.2.12:80,pool=web", 7},
		{"sluice_backend_transitions_total", "cause=operator,from=active,pool=web,to=draining", 1},
		{"sluice_backend_transitions_total", "cause=config,from=absent,pool=web,to=active", 3},
		{"sluice_config_reloads_total", "result=refused", 1},
		{"sluice_map_errors_total", "", 0},
		{"sluice_ejections_refused_total", "pool=web", 0},
	}
	for _, c := range checks {
		got, ok := m[c.name][c.labels]
		if !ok || got != c.want {
			t.Errorf("%s{%s} = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	if _, ok := m["sluice_backend_drain_deadline_seconds"]["address=198.18.2.11:80,pool=web"]; !ok {
		t.Error("no drain deadline for the draining address")
	}
}

func TestRouteSourceInSlots(t *testing.T) {
	h := newHarness(t, nil, baseConfig) // no route source: slots without one
	src := netip.MustParseAddr("198.18.2.1")
	withSrc := options{routeSrc: func(netip.Addr) netip.Addr { return src }}

	// A restarted agent that knows the source rewrites the adopted slots
	// with it, keeping their gen and state.
	h.dp.ResetOps()
	if err := newAgent(h.dp, withSrc).start(h.now, h.a.cfg); err != nil {
		t.Fatal(err)
	}
	for n := uint32(1); n <= 3; n++ {
		if b := h.dp.Backend(n); b.Src != src || b.Gen != 1 || b.State != datapath.BackendActive {
			t.Fatalf("slot %d = %+v", n, b)
		}
	}
	// Restarting again with the same source writes no slot.
	h.dp.ResetOps()
	if err := newAgent(h.dp, withSrc).start(h.now, h.a.cfg); err != nil {
		t.Fatal(err)
	}
	if i := opIndex(h.dp.Ops(), "SetBackend"); i >= 0 {
		t.Fatalf("restart rewrote slots: %v", h.dp.Ops())
	}
}

func TestTransitionKick(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	select {
	case <-h.a.transitions.kick:
	default:
		t.Fatal("no kick after transitions")
	}
	// An ejection made by another stage directly on the pool is applied by
	// reconcileNow without waiting for a tick.
	p := h.a.pools["web"].p
	if err := p.Eject(h.now, be2, h.now.Add(time.Minute), "ejection"); err != nil {
		t.Fatal(err)
	}
	<-h.a.transitions.kick
	h.a.reconcileNow()
	if b := h.dp.Backend(h.slotOf(be2)); b.State != datapath.BackendEjected {
		t.Fatalf("slot = %+v", b)
	}
	for _, n := range h.tableSlots(1) {
		if n == h.slotOf(be2) {
			t.Fatal("ejected backend still in the table")
		}
	}
}
