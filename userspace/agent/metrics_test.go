package agent

import (
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/metrics"
)

// gather returns metric values by name and "k=v,..." labels.
func gather(t *testing.T, m *metrics.Metrics) map[string]map[string]float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := make(map[string]map[string]float64)
	for _, mf := range mfs {
		vals := make(map[string]float64)
		for _, mt := range mf.GetMetric() {
			var key string
			for i, l := range mt.GetLabel() {
				if i > 0 {
					key += ","
				}
				key += l.GetName() + "=" + l.GetValue()
			}
			vals[key] = value(mt)
		}
		out[mf.GetName()] = vals
	}
	return out
}

func value(m *dto.Metric) float64 {
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return m.GetGauge().GetValue()
}

// TestMetrics checks the agent's wiring into the metrics package: events
// counted, and the topology naming the data path counters.
func TestMetrics(t *testing.T) {
	dp := datapath.NewFake(tableSize)
	var m *metrics.Metrics
	h := newHarnessWith(t, dp, baseConfig, func(o *options) {
		m = metrics.New(metrics.Options{Version: "test", NoRuntimeCollectors: true})
		o.metrics = m
	})
	m.Registry().MustRegister(metrics.NewCollector(dp, h.a.topology(), 0))
	dp.SetServiceStats(1, datapath.ServiceStats{Packets: 10, Bytes: 1000, NewFlows: 3, RSTRemovedBackend: 2})
	dp.SetBackendStats(h.slotOf(be2), datapath.BackendStats{Packets: 7})
	h.addFlow(40000, h.slotOf(be1), false)
	h.addFlow(40001, h.slotOf(be2), true) // collected
	if err := h.a.Drain(h.ctx, "web", "198.18.2.11:80"); err != nil {
		t.Fatal(err)
	}
	dp.FailNext("SetBackend", errTest)
	if err := h.a.Drain(h.ctx, "web", "198.18.2.13:80"); err != nil {
		t.Fatal(err)
	}
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	h.write("nonsense: [")
	_ = h.a.Reload(h.ctx)

	got := gather(t, m)
	checks := []struct {
		name, labels string
		want         float64
	}{
		{"sluice_build_info", "version=test", 1},
		{"sluice_service_packets_total", "service=web-l4", 10},
		{"sluice_service_rsts_total", "reason=removed_backend,service=web-l4", 2},
		{"sluice_service_active_flows", "service=web-l4", 1},
		{"sluice_service_backends", "service=web-l4", 1},
		{"sluice_backend_state", "address=198.18.2.11:80,pool=web,state=draining", 1},
		{"sluice_backend_state", "address=198.18.2.11:80,pool=web,state=active", 0},
		{"sluice_backend_active_flows", "address=198.18.2.11:80,pool=web", 1},
		{"sluice_backend_packets_total", "address=198.18.2.12:80,pool=web", 7},
		{"sluice_backend_transitions_total", "cause=operator,from=active,pool=web,to=draining", 2},
		{"sluice_backend_transitions_total", "cause=config,from=absent,pool=web,to=active", 3},
		{"sluice_backend_transitions_total", "cause=no-flows,from=draining,pool=web,to=removed", 1},
		{"sluice_config_reloads_total", "result=refused", 1},
		{"sluice_conntrack_gc_deleted_total", "", 1},
	}
	for _, c := range checks {
		v, ok := got[c.name][c.labels]
		if !ok || v != c.want {
			t.Errorf("%s{%s} = %v (present %v), want %v\n%v", c.name, c.labels, v, ok, c.want, got[c.name])
		}
	}
	if len(got["sluice_map_errors_total"]) == 0 {
		t.Error("map error not counted")
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

// TestEjectionMetrics: an ejection decided by a pool's passive tracker (here
// from refused connects seen by the data path) is counted in
// sluice_l7_ejections_total.
func TestEjectionMetrics(t *testing.T) {
	dp := datapath.NewFake(tableSize)
	var m *metrics.Metrics
	h := newHarnessWith(t, dp, baseConfig, func(o *options) {
		m = metrics.New(metrics.Options{Version: "test", NoRuntimeCollectors: true})
		o.metrics = m
	})
	m.Registry().MustRegister(metrics.NewCollector(dp, h.a.topology(), 0))
	s2 := h.slotOf(be2)
	for _, n := range []uint64{100, 105} { // the first reading is the baseline
		h.refuse(s2, n)
		if err := h.tick(time.Second); err != nil {
			t.Fatal(err)
		}
	}
	var total float64
	for labels, v := range gather(t, m)["sluice_l7_ejections_total"] {
		if strings.Contains(labels, "198.18.2.12:80") {
			total += v
		}
	}
	if total != 1 {
		t.Fatalf("sluice_l7_ejections_total for be2 = %v, want 1", total)
	}
}
