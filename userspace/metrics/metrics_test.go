package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/discovery"
	"github.com/sluicelb/sluice/userspace/pool"
)

// fakeStats is a data path whose reads can be made to fail.
type fakeStats struct {
	mu       sync.Mutex
	svc      map[uint32]datapath.ServiceStats
	be       map[uint32]datapath.BackendStats
	global   datapath.GlobalStats
	flows    []datapath.Flow
	fail     map[string]bool // op name -> fail every call
	flowWalk int             // Flows calls
}

var errRead = errors.New("read failed")

func (f *fakeStats) Attachments() []datapath.Attachment {
	return []datapath.Attachment{{Interface: "eth0", Mode: "native"}, {Interface: "eth1", Mode: "generic", Fallback: true}}
}

func (f *fakeStats) failing(op string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fail[op]
}

func (f *fakeStats) ServiceStats(id uint32) (datapath.ServiceStats, error) {
	if f.failing("ServiceStats") {
		return datapath.ServiceStats{}, errRead
	}
	return f.svc[id], nil
}

func (f *fakeStats) BackendStats(slot uint32) (datapath.BackendStats, error) {
	if f.failing("BackendStats") {
		return datapath.BackendStats{}, errRead
	}
	return f.be[slot], nil
}

func (f *fakeStats) GlobalStats() (datapath.GlobalStats, error) {
	if f.failing("GlobalStats") {
		return datapath.GlobalStats{}, errRead
	}
	return f.global, nil
}

func (f *fakeStats) Flows(fn func(datapath.Flow) bool) error {
	f.mu.Lock()
	f.flowWalk++
	f.mu.Unlock()
	if f.failing("Flows") {
		return errRead
	}
	for _, fl := range f.flows {
		if !fn(fl) {
			break
		}
	}
	return nil
}

type fakeTopology struct {
	services []ServiceRef
	backends []BackendRef
}

func (t fakeTopology) Services() []ServiceRef { return t.services }
func (t fakeTopology) Backends() []BackendRef { return t.backends }

// FlowCounts: the fake counts nothing, the collector walks the map.
func (t fakeTopology) FlowCounts() (FlowCounts, bool) { return FlowCounts{}, false }

// countingTopology also counts flows itself.
type countingTopology struct {
	fakeTopology
	counts FlowCounts
}

func (t countingTopology) FlowCounts() (FlowCounts, bool) { return t.counts, true }

var drainDeadline = time.Unix(1700000000, 500_000_000)

func newFixture() (*fakeStats, fakeTopology) {
	dp := &fakeStats{
		svc: map[uint32]datapath.ServiceStats{
			1: {Packets: 10, Bytes: 1000, NewFlows: 3, RSTNoBackend: 1, RSTRemovedBackend: 2,
				DropNoBackend: 3, DropRemovedBackend: 4, Fragments: 5, SNATFailures: 6},
		},
		be: map[uint32]datapath.BackendStats{
			7: {Packets: 20, Bytes: 2000, NewFlows: 2},
			8: {Packets: 1, Bytes: 60, NewFlows: 1},
		},
		global: datapath.GlobalStats{PassedNotOurs: 100, PassedNoNeigh: 2, FIBFailures: 3, Malformed: 4,
			RepliesTranslated: 50, CTUpdateFailures: 1, RSTSent: 9},
		flows: []datapath.Flow{
			{ServiceID: 1, BackendSlot: 7, BackendGen: 2},
			{ServiceID: 1, BackendSlot: 7, BackendGen: 2},
			{ServiceID: 1, BackendSlot: 7, BackendGen: 1},                // older generation: a removed address
			{ServiceID: 1, BackendSlot: 8, BackendGen: 1, Expired: true}, // expired: not live
			{ServiceID: 1, BackendSlot: 8, BackendGen: 1},
		},
		fail: map[string]bool{},
	}
	topo := fakeTopology{
		services: []ServiceRef{
			{Name: "web-l4", ID: 1, Backends: 2},
			{Name: "web-http"},                   // L7: no data path id
			{Name: "web-l4", ID: 1, Backends: 2}, // duplicate: ignored
		},
		backends: []BackendRef{
			{Pool: "web", Address: "198.18.2.11:80", Slot: 7, Gen: 2, State: "active"},
			{Pool: "web", Address: "198.18.2.12:80", Slot: 8, Gen: 1, State: "draining", DrainDeadline: drainDeadline},
			{Pool: "api", Address: "198.18.2.13:80", State: "ejected"},                 // no slot
			{Pool: "web", Address: "198.18.2.11:80", Slot: 7, Gen: 2, State: "active"}, // duplicate
		},
	}
	return dp, topo
}

// family is one gathered metric family, by "k=v,..." labels (sorted by name).
type family struct {
	typ    dto.MetricType
	values map[string]float64 // counter/gauge value, histogram sample count
	sums   map[string]float64 // histogram sample sum
}

func gather(t *testing.T, g prometheus.Gatherer) map[string]family {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := make(map[string]family)
	for _, mf := range mfs {
		f := family{typ: mf.GetType(), values: map[string]float64{}, sums: map[string]float64{}}
		for _, m := range mf.GetMetric() {
			var parts []string
			for _, l := range m.GetLabel() {
				parts = append(parts, l.GetName()+"="+l.GetValue())
			}
			key := strings.Join(parts, ",")
			switch {
			case m.GetCounter() != nil:
				f.values[key] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				f.values[key] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				f.values[key] = float64(m.GetHistogram().GetSampleCount())
				f.sums[key] = m.GetHistogram().GetSampleSum()
			}
		}
		out[mf.GetName()] = f
	}
	return out
}

type want struct {
	name, labels string
	value        float64
}

func check(t *testing.T, got map[string]family, wants []want) {
	t.Helper()
	for _, w := range wants {
		v, ok := got[w.name].values[w.labels]
		if !ok {
			t.Errorf("%s{%s} missing; have %v", w.name, w.labels, keys(got[w.name].values))
			continue
		}
		if v != w.value {
			t.Errorf("%s{%s} = %v, want %v", w.name, w.labels, v, w.value)
		}
	}
}

func keys(m map[string]float64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// pedantic registers every part of m on a pedantic registry, which checks
// that what is collected matches what is described.
func pedantic(t *testing.T, m *Metrics) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.Agent, m.L7)
	if m.dp != nil {
		reg.MustRegister(m.dp)
	}
	return reg
}

func TestDataPathCollector(t *testing.T) {
	dp, topo := newFixture()
	m := New(Options{DataPath: dp, Topology: topo, ConntrackCapacity: 262144, NoRuntimeCollectors: true})
	got := gather(t, pedantic(t, m))

	check(t, got, []want{
		{"sluice_service_packets_total", "service=web-l4", 10},
		{"sluice_service_bytes_total", "service=web-l4", 1000},
		{"sluice_service_new_flows_total", "service=web-l4", 3},
		{"sluice_service_rsts_total", "reason=no_backend,service=web-l4", 1},
		{"sluice_service_rsts_total", "reason=removed_backend,service=web-l4", 2},
		{"sluice_service_udp_drops_total", "reason=no_backend,service=web-l4", 3},
		{"sluice_service_udp_drops_total", "reason=removed_backend,service=web-l4", 4},
		{"sluice_service_fragments_total", "service=web-l4", 5},
		{"sluice_service_snat_failures_total", "service=web-l4", 6},
		{"sluice_service_active_flows", "service=web-l4", 4},
		{"sluice_service_backends", "service=web-l4", 2},

		{"sluice_backend_state", "address=198.18.2.11:80,pool=web,state=active", 1},
		{"sluice_backend_state", "address=198.18.2.11:80,pool=web,state=draining", 0},
		{"sluice_backend_state", "address=198.18.2.12:80,pool=web,state=draining", 1},
		{"sluice_backend_state", "address=198.18.2.13:80,pool=api,state=ejected", 1},
		{"sluice_backend_state", "address=198.18.2.13:80,pool=api,state=removed", 0},
		{"sluice_backend_drain_deadline_seconds", "address=198.18.2.12:80,pool=web", 1700000000.5},
		{"sluice_backend_packets_total", "address=198.18.2.11:80,pool=web", 20},
		{"sluice_backend_bytes_total", "address=198.18.2.11:80,pool=web", 2000},
		{"sluice_backend_new_flows_total", "address=198.18.2.12:80,pool=web", 1},
		{"sluice_backend_active_flows", "address=198.18.2.11:80,pool=web", 2}, // not the older generation's
		{"sluice_backend_active_flows", "address=198.18.2.12:80,pool=web", 1}, // not the expired one

		{"sluice_conntrack_flows", "", 5},
		{"sluice_conntrack_capacity", "", 262144},
		{"sluice_passed_packets_total", "reason=not_ours", 100},
		{"sluice_passed_packets_total", "reason=no_neighbour", 2},
		{"sluice_passed_packets_total", "reason=fib_failure", 3},
		{"sluice_passed_packets_total", "reason=malformed", 4},
		{"sluice_replies_translated_total", "", 50},
		{"sluice_conntrack_update_failures_total", "", 1},
		{"sluice_rst_sent_total", "", 9},
		{"sluice_datapath_scrape_errors_total", "", 0},
		{"sluice_config_reloads_total", "result=ok", 0},
		{"sluice_config_reloads_total", "result=refused", 0},
	})

	absent := []struct{ name, labels string }{
		{"sluice_service_packets_total", "service=web-http"},
		{"sluice_service_active_flows", "service=web-http"},
		{"sluice_backend_packets_total", "address=198.18.2.13:80,pool=api"},
		{"sluice_backend_active_flows", "address=198.18.2.13:80,pool=api"},
		{"sluice_backend_drain_deadline_seconds", "address=198.18.2.11:80,pool=web"},
	}
	for _, a := range absent {
		if _, ok := got[a.name].values[a.labels]; ok {
			t.Errorf("%s{%s} present, want absent", a.name, a.labels)
		}
	}
	if n := len(got["sluice_backend_state"].values); n != 12 {
		t.Errorf("sluice_backend_state has %d series, want 12 (3 addresses x 4 states)", n)
	}
	if dp.flowWalk != 1 {
		t.Errorf("%d flow walks in one scrape, want 1", dp.flowWalk)
	}
}

func TestScrapeErrors(t *testing.T) {
	tests := []struct {
		name      string
		fail      []string
		perScrape float64
		missing   []string // metric names with no series
		present   []string // still exported
	}{
		{"none", nil, 0, nil, []string{"sluice_service_active_flows", "sluice_backend_packets_total"}},
		{"flows", []string{"Flows"}, 1,
			[]string{"sluice_service_active_flows", "sluice_backend_active_flows", "sluice_conntrack_flows"},
			[]string{"sluice_service_packets_total", "sluice_backend_packets_total", "sluice_rst_sent_total", "sluice_conntrack_capacity"}},
		{"service stats", []string{"ServiceStats"}, 1,
			[]string{"sluice_service_packets_total", "sluice_service_rsts_total"},
			[]string{"sluice_service_active_flows", "sluice_backend_packets_total"}},
		{"backend stats", []string{"BackendStats"}, 2, // two backends with slots
			[]string{"sluice_backend_packets_total"},
			[]string{"sluice_backend_state", "sluice_backend_active_flows"}},
		{"global", []string{"GlobalStats"}, 1,
			[]string{"sluice_passed_packets_total", "sluice_rst_sent_total"},
			[]string{"sluice_service_packets_total"}},
		{"everything", []string{"Flows", "ServiceStats", "BackendStats", "GlobalStats"}, 5,
			[]string{"sluice_service_packets_total", "sluice_backend_packets_total", "sluice_conntrack_flows"},
			[]string{"sluice_backend_state", "sluice_service_backends"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dp, topo := newFixture()
			for _, op := range tt.fail {
				dp.fail[op] = true
			}
			m := New(Options{DataPath: dp, Topology: topo, ConntrackCapacity: 1024, NoRuntimeCollectors: true})
			reg := pedantic(t, m)
			for scrape := 1; scrape <= 2; scrape++ {
				got := gather(t, reg)
				check(t, got, []want{{"sluice_datapath_scrape_errors_total", "", tt.perScrape * float64(scrape)}})
				for _, name := range tt.missing {
					if n := len(got[name].values); n != 0 {
						t.Errorf("scrape %d: %s has %d series, want none", scrape, name, n)
					}
				}
				for _, name := range tt.present {
					if len(got[name].values) == 0 {
						t.Errorf("scrape %d: %s missing", scrape, name)
					}
				}
			}
		})
	}
}

func TestFlowCounterSkipsWalk(t *testing.T) {
	dp, topo := newFixture()
	ct := countingTopology{fakeTopology: topo, counts: FlowCounts{
		ByService: map[uint32]int{1: 42},
		BySlot:    map[uint32]int{7: 40, 8: 2},
		Total:     50,
	}}
	m := New(Options{DataPath: dp, Topology: ct, NoRuntimeCollectors: true})
	got := gather(t, pedantic(t, m))
	check(t, got, []want{
		{"sluice_service_active_flows", "service=web-l4", 42},
		{"sluice_backend_active_flows", "address=198.18.2.11:80,pool=web", 40},
		{"sluice_conntrack_flows", "", 50},
	})
	if dp.flowWalk != 0 {
		t.Errorf("walked the conntrack map %d times although the topology counts flows", dp.flowWalk)
	}
	if _, ok := got["sluice_conntrack_capacity"]; ok {
		t.Error("capacity exported although none was given")
	}
}

func TestRealFakeSatisfiesStats(t *testing.T) {
	f := datapath.NewFake(251)
	f.SetServiceStats(3, datapath.ServiceStats{Packets: 5})
	f.AddFlow(datapath.Flow{
		Client: netip.MustParseAddrPort("198.18.0.2:40000"), VIP: netip.MustParseAddrPort("198.18.1.100:80"),
		Proto: datapath.TCP, ServiceID: 3, BackendSlot: 1, BackendGen: 1,
	})
	m := New(Options{DataPath: f, Topology: fakeTopology{
		services: []ServiceRef{{Name: "s", ID: 3}},
		backends: []BackendRef{{Pool: "p", Address: "198.18.2.11:80", Slot: 1, Gen: 1, State: "active"}},
	}, NoRuntimeCollectors: true})
	check(t, gather(t, pedantic(t, m)), []want{
		{"sluice_service_packets_total", "service=s", 5},
		{"sluice_service_active_flows", "service=s", 1},
		{"sluice_backend_active_flows", "address=198.18.2.11:80,pool=p", 1},
	})
}

func TestNoDataPath(t *testing.T) {
	m := New(Options{Version: "v1.2.3"})
	got := gather(t, m.Registry())
	check(t, got, []want{{"sluice_build_info", "version=v1.2.3", 1}})
	for name := range got {
		if strings.HasPrefix(name, "sluice_service_") || strings.HasPrefix(name, "sluice_datapath_") {
			t.Errorf("%s exported without a data path", name)
		}
	}
	if _, ok := got["go_goroutines"]; !ok {
		t.Error("no Go runtime metrics")
	}
	if _, ok := got["process_open_fds"]; !ok {
		t.Error("no process metrics")
	}
}

// The agent's warning and error counts, read at scrape time.
func TestLogCounts(t *testing.T) {
	w, e := uint64(3), uint64(1)
	m := New(Options{Version: "v", NoRuntimeCollectors: true, LogCounts: func() (uint64, uint64) { return w, e }})
	check(t, gather(t, m.Registry()), []want{
		{"sluice_log_messages_total", "level=warn", 3},
		{"sluice_log_messages_total", "level=error", 1},
	})
	w = 5
	check(t, gather(t, m.Registry()), []want{{"sluice_log_messages_total", "level=warn", 5}})
}

var (
	a1 = netip.MustParseAddrPort("198.18.2.11:80")
	a2 = netip.MustParseAddrPort("198.18.2.12:80")
)

func TestAgentTransitionsAndDrains(t *testing.T) {
	m := New(Options{NoRuntimeCollectors: true})
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	for _, tr := range []pool.Transition{
		{Pool: "web", Addr: a1, From: pool.Absent, To: pool.Active, Cause: pool.CauseConfig, At: at(0)},
		{Pool: "web", Addr: a1, From: pool.Active, To: pool.Draining, Cause: "dns:backend.lab", At: at(1)},
		{Pool: "web", Addr: a1, From: pool.Draining, To: pool.Removed, Cause: pool.CauseNoFlows, At: at(13)},
		// Drained, then returned by DNS: no drain duration.
		{Pool: "web", Addr: a2, From: pool.Active, To: pool.Draining, Cause: pool.CauseOperator, At: at(2)},
		{Pool: "web", Addr: a2, From: pool.Draining, To: pool.Active, Cause: pool.CauseOperator, At: at(3)},
		// Adopted as draining: start unknown, not observed.
		{Pool: "api", Addr: a2, From: pool.Absent, To: pool.Draining, Cause: pool.CauseAdopted, At: at(0)},
		{Pool: "api", Addr: a2, From: pool.Draining, To: pool.Removed, Cause: pool.CauseDrainTimeout, At: at(30)},
		{Pool: "api", Addr: a1, From: pool.Active, To: pool.Ejected, Cause: "", At: at(4)},
	} {
		m.Agent.Transition(tr)
	}
	got := gather(t, pedantic(t, m))
	check(t, got, []want{
		{"sluice_backend_transitions_total", "cause=config,from=absent,pool=web,to=active", 1},
		{"sluice_backend_transitions_total", "cause=dns:backend.lab,from=active,pool=web,to=draining", 1},
		{"sluice_backend_transitions_total", "cause=no-flows,from=draining,pool=web,to=removed", 1},
		{"sluice_backend_transitions_total", "cause=operator,from=active,pool=web,to=draining", 1},
		{"sluice_backend_transitions_total", "cause=unknown,from=active,pool=api,to=ejected", 1},
		{"sluice_backend_drain_duration_seconds", "pool=web", 1},
	})
	if s := got["sluice_backend_drain_duration_seconds"].sums["pool=web"]; s != 12 {
		t.Errorf("drain duration sum = %v, want 12", s)
	}
	if _, ok := got["sluice_backend_drain_duration_seconds"].values["pool=api"]; ok {
		t.Error("drain duration observed for an adopted address")
	}
	if n := len(m.Agent.drainingSince); n != 0 {
		t.Errorf("%d addresses still remembered as draining", n)
	}
}

func TestAgentCounters(t *testing.T) {
	m := New(Options{NoRuntimeCollectors: true})
	a := m.Agent
	for _, u := range []discovery.Update{
		{Name: "backend.lab", Reason: discovery.ReasonAnswer, Addrs: []discovery.Addr{{Addr: a1.Addr()}}},
		{Name: "backend.lab", Reason: discovery.ReasonFailure, Failure: discovery.FailServfail, Rcode: -1},
		{Name: "backend.lab", Reason: discovery.ReasonFailure, Failure: discovery.FailTimeout, Rcode: -1},
		{Name: "backend.lab", Reason: discovery.ReasonHold, Rcode: 3},
		{Name: "backend.lab", Reason: discovery.ReasonHold, Rcode: 0},
		{Name: "backend.lab", Reason: discovery.ReasonHoldExpired},
		{Name: "other.lab", Reason: discovery.ReasonNegative, Rcode: 3},
	} {
		a.DNSUpdate(u)
	}
	a.DNSLookup("other.lab", "weird")
	a.ConfigReload(true)
	a.ConfigReload(false)
	a.ConfigReload(false)
	a.MapError("set_table")
	a.ConntrackGCDeleted(3)
	a.ConntrackGCDeleted(0)
	a.HealthCheck("web", a1, "pass", 2*time.Millisecond)
	a.HealthCheck("web", a1, "timeout", time.Second)
	a.HealthCheck("web", a2, "pass", time.Millisecond)

	got := gather(t, pedantic(t, m))
	check(t, got, []want{
		{"sluice_dns_lookups_total", "name=backend.lab", 5},
		{"sluice_dns_lookups_total", "name=other.lab", 2},
		{"sluice_dns_failures_total", "kind=servfail,name=backend.lab", 1},
		{"sluice_dns_failures_total", "kind=timeout,name=backend.lab", 1},
		{"sluice_dns_failures_total", "kind=nxdomain,name=backend.lab", 1},
		{"sluice_dns_failures_total", "kind=empty,name=backend.lab", 1},
		{"sluice_dns_failures_total", "kind=nxdomain,name=other.lab", 1},
		{"sluice_dns_failures_total", "kind=other,name=other.lab", 1},
		{"sluice_config_reloads_total", "result=ok", 1},
		{"sluice_config_reloads_total", "result=refused", 2},
		{"sluice_map_errors_total", "op=set_table", 1},
		{"sluice_conntrack_gc_deleted_total", "", 3},
		{"sluice_health_checks_total", "address=198.18.2.11:80,pool=web,result=pass", 1},
		{"sluice_health_checks_total", "address=198.18.2.11:80,pool=web,result=timeout", 1},
		{"sluice_health_check_duration_seconds", "pool=web", 3},
	})

	m.ForgetBackend("web", a1)
	a.ForgetDNSName("other.lab")
	got = gather(t, pedantic(t, m))
	for k := range got["sluice_health_checks_total"].values {
		if strings.Contains(k, "198.18.2.11:80") {
			t.Errorf("health series %q kept after ForgetBackend", k)
		}
	}
	check(t, got, []want{{"sluice_health_checks_total", "address=198.18.2.12:80,pool=web,result=pass", 1}})
	for _, name := range []string{"sluice_dns_lookups_total", "sluice_dns_failures_total"} {
		for k := range got[name].values {
			if strings.Contains(k, "other.lab") {
				t.Errorf("%s{%s} kept after ForgetDNSName", name, k)
			}
		}
	}
}

func TestL7(t *testing.T) {
	m := New(Options{NoRuntimeCollectors: true})
	l := m.L7
	l.Request("web-http", 200, 20*time.Millisecond, 1)
	l.Request("web-http", 200, 30*time.Millisecond, 2)
	l.Request("web-http", 504, 3*time.Second, 3)
	l.Request("web-http", 0, time.Millisecond, 1)
	l.Request("web-http", 999, time.Millisecond, 1)
	l.Retry("web-http", "503")
	l.Retry("web-http", "connect-failure")
	l.Retry("web-http", "connect-failure")
	l.RetryRefused("web-http")
	l.StaleResends("web-http", 2)
	l.Ejection("web", a1, "status")
	l.Ejection("web", a2, "connect-failure")
	l.SetPanic("web", true)
	l.SetPanic("api", false)
	l.UpstreamClosed("web", "draining")
	l.DNSWait("web-http", "new-address")

	got := gather(t, pedantic(t, m))
	check(t, got, []want{
		{"sluice_l7_requests_total", "code=200,service=web-http", 2},
		{"sluice_l7_requests_total", "code=504,service=web-http", 1},
		{"sluice_l7_requests_total", "code=none,service=web-http", 1},
		{"sluice_l7_requests_total", "code=other,service=web-http", 1},
		{"sluice_l7_request_duration_seconds", "service=web-http", 5},
		{"sluice_l7_request_tries", "service=web-http", 5},
		{"sluice_l7_retries_total", "reason=503,service=web-http", 1},
		{"sluice_l7_retries_total", "reason=connect-failure,service=web-http", 2},
		{"sluice_l7_retries_budget_refused_total", "service=web-http", 1},
		{"sluice_l7_upstream_stale_resends_total", "service=web-http", 2},
		{"sluice_l7_ejections_total", "address=198.18.2.11:80,cause=status,pool=web", 1},
		{"sluice_l7_panic_mode", "pool=web", 1},
		{"sluice_l7_panic_mode", "pool=api", 0},
		{"sluice_l7_upstream_connections_closed_total", "pool=web,reason=draining", 1},
		{"sluice_l7_dns_waits_total", "result=new-address,service=web-http", 1},
	})
	if s := got["sluice_l7_request_tries"].sums["service=web-http"]; s != 8 {
		t.Errorf("tries sum = %v, want 8", s)
	}

	m.ForgetBackend("web", a1)
	l.ForgetPool("api")
	l.ForgetService("web-http")
	got = gather(t, pedantic(t, m))
	check(t, got, []want{
		{"sluice_l7_ejections_total", "address=198.18.2.12:80,cause=connect-failure,pool=web", 1},
		{"sluice_l7_panic_mode", "pool=web", 1},
	})
	if _, ok := got["sluice_l7_ejections_total"].values["address=198.18.2.11:80,cause=status,pool=web"]; ok {
		t.Error("ejection series kept after ForgetBackend")
	}
	if _, ok := got["sluice_l7_panic_mode"].values["pool=api"]; ok {
		t.Error("panic series kept after ForgetPool")
	}
	for _, name := range []string{"sluice_l7_requests_total", "sluice_l7_retries_total", "sluice_l7_request_tries", "sluice_l7_upstream_stale_resends_total"} {
		if n := len(got[name].values); n != 0 {
			t.Errorf("%s has %d series after ForgetService", name, n)
		}
	}
	// The series cached per (service, code) are made afresh after a
	// Forget, not counted in the deleted ones.
	l.Request("web-http", 200, time.Millisecond, 1)
	got = gather(t, pedantic(t, m))
	check(t, got, []want{
		{"sluice_l7_requests_total", "code=200,service=web-http", 1},
		{"sluice_l7_request_duration_seconds", "service=web-http", 1},
		{"sluice_l7_request_tries", "service=web-http", 1},
	})
}

// populated returns Metrics with every metric family holding a series.
func populated(t *testing.T) *Metrics {
	t.Helper()
	dp, topo := newFixture()
	m := New(Options{Version: "test", DataPath: dp, Topology: topo, ConntrackCapacity: 1024,
		LogCounts: func() (uint64, uint64) { return 2, 0 }})
	m.Agent.Transition(pool.Transition{Pool: "web", Addr: a1, From: pool.Active, To: pool.Draining, Cause: "operator", At: time.Unix(1, 0)})
	m.Agent.Transition(pool.Transition{Pool: "web", Addr: a1, From: pool.Draining, To: pool.Removed, Cause: "no-flows", At: time.Unix(5, 0)})
	m.Agent.DNSLookup("backend.lab", "servfail")
	m.Agent.MapError("set_backend")
	m.Agent.ConntrackGCDeleted(1)
	m.Agent.HealthCheck("web", a1, "pass", time.Millisecond)
	m.Agent.AddressRefused("web", "backend.lab", "loopback")
	m.L7.Request("web-http", 200, time.Millisecond, 1)
	m.L7.Retry("web-http", "reset")
	m.L7.RetryRefused("web-http")
	m.L7.StaleResends("web-http", 1)
	m.L7.Ejection("web", a1, "status")
	m.L7.SetPanic("web", false)
	m.L7.UpstreamClosed("web", "lifetime")
	m.L7.DNSWait("web-http", "new-address")
	m.L7.Refused("web-http", "requests")
	m.L7.AccessLogLost("stdout", 1)
	m.L7.SetCertificates("web-http", map[string]time.Time{"/etc/sluice/web.crt": time.Unix(1800000000, 0)})
	m.Announce.VIPAnnounced(netip.MustParseAddr("198.18.1.100"), true)
	m.Announce.RouteChange("announce")
	m.Announce.RouteError()
	m.Announce.NodeState("serving")
	m.Announce.SessionUp("sluice_peer1", true)
	return m
}

// TestL7ServiceCounts: sluice status's counts of an http service are the
// sums of its series, by status class; other services' series and the
// access log's dropped lines are not counted.
func TestL7ServiceCounts(t *testing.T) {
	l := New(Options{NoRuntimeCollectors: true}).L7
	for _, code := range []int{101, 200, 200, 204, 302, 404, 503, 504, 0, 999} {
		l.Request("web-http", code, time.Millisecond, 1)
	}
	l.Request("api-http", 200, time.Millisecond, 1)
	l.Retry("web-http", "503")
	l.Retry("web-http", "connect-failure")
	l.Retry("api-http", "reset")
	l.Refused("web-http", "connections")
	l.Refused("web-http", "body")
	l.Refused("web-http", LimitAccessLog)
	got := l.ServiceCounts()
	want := map[string]ServiceCounts{
		"web-http": {Requests: 10, ByClass: [5]uint64{1, 3, 1, 1, 2}, ClientGone: 1, Retries: 2, Refused: 2},
		"api-http": {Requests: 1, ByClass: [5]uint64{0, 1}, Retries: 1},
	}
	if !maps.Equal(got, want) {
		t.Errorf("ServiceCounts() = %+v, want %+v", got, want)
	}
	l.ForgetService("web-http")
	if got, ok := l.ServiceCounts()["web-http"]; ok {
		t.Errorf("ServiceCounts after ForgetService has web-http: %+v", got)
	}
}

func TestLint(t *testing.T) {
	m := populated(t)
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatalf("lint: %v", err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "sluice_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
	for _, mf := range mfs {
		name := mf.GetName()
		if !strings.HasPrefix(name, "sluice_") {
			continue
		}
		if mf.GetType() == dto.MetricType_COUNTER && !strings.HasSuffix(name, "_total") {
			t.Errorf("counter %s does not end in _total", name)
		}
		if strings.HasSuffix(name, "_total") && mf.GetType() != dto.MetricType_COUNTER {
			t.Errorf("%s ends in _total but is a %v", name, mf.GetType())
		}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "client" || strings.HasPrefix(l.GetName(), "client_") {
					t.Errorf("%s has a client label", name)
				}
			}
		}
	}
}

// TestDocsListEveryMetric keeps docs/metrics.md in step with the code.
func TestDocsListEveryMetric(t *testing.T) {
	doc, err := readDoc()
	if err != nil {
		t.Skipf("docs/metrics.md: %v", err)
	}
	mfs, err := populated(t).Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := make(map[string]bool)
	for _, mf := range mfs {
		name := mf.GetName()
		exported[name] = true
		if strings.HasPrefix(name, "sluice_") && !strings.Contains(doc, "| `"+name+"` |") {
			t.Errorf("docs/metrics.md has no table row for %s", name)
		}
	}
	// And every row is a metric that exists.
	for _, line := range strings.Split(doc, "\n") {
		name, ok := strings.CutPrefix(line, "| `")
		if !ok {
			continue
		}
		name, _, _ = strings.Cut(name, "`")
		if !exported[name] {
			t.Errorf("docs/metrics.md documents %s, which is not exported", name)
		}
	}
}

func TestHandler(t *testing.T) {
	m := populated(t)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	for i := 0; i < 2; i++ { // twice: counters and scrape state survive a scrape
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
		p := expfmt.NewTextParser(model.UTF8Validation)
		mfs, err := p.TextToMetricFamilies(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("parse scrape: %v", err)
		}
		for _, name := range []string{
			"sluice_build_info", "sluice_service_packets_total", "sluice_backend_state",
			"sluice_datapath_scrape_errors_total", "sluice_backend_transitions_total",
			"sluice_l7_requests_total", "go_goroutines", "promhttp_metric_handler_errors_total",
		} {
			if _, ok := mfs[name]; !ok {
				t.Errorf("scrape %d: %s missing", i, name)
			}
		}
		if v := mfs["sluice_service_packets_total"].GetMetric()[0].GetCounter().GetValue(); v != 10 {
			t.Errorf("sluice_service_packets_total = %v over HTTP, want 10", v)
		}
	}
}

func TestServe(t *testing.T) {
	tests := []struct {
		name   string
		listen string
	}{
		{"off", Off},
		{"empty", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() { done <- New(Options{}).Serve(context.Background(), tt.listen) }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Serve(%q) = %v", tt.listen, err)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("Serve(%q) did not return", tt.listen)
			}
		})
	}

	t.Run("bad address", func(t *testing.T) {
		err := New(Options{}).Serve(context.Background(), "127.0.0.1:notaport")
		if err == nil || !strings.Contains(err.Error(), "metrics listen") {
			t.Fatalf("Serve = %v, want a listen error", err)
		}
	})

	t.Run("serves until ctx ends", func(t *testing.T) {
		l, err := Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		m := New(Options{Version: "x"})
		go func() { done <- m.ServeListener(ctx, l) }()

		base := "http://" + l.Addr().String()
		body := get(t, base+Path, http.StatusOK)
		if !strings.Contains(body, `sluice_build_info{version="x"} 1`) {
			t.Errorf("scrape lacks build info:\n%.500s", body)
		}
		get(t, base+"/", http.StatusOK)
		get(t, base+"/nope", http.StatusNotFound)

		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("ServeListener = %v after cancel", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("ServeListener did not return after cancel")
		}
		if c, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
			c.Close()
			t.Error("still listening after cancel")
		}
	})
}

func readDoc() (string, error) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "metrics.md"))
	return string(b), err
}

func get(t *testing.T, url string, status int) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != status {
		t.Fatalf("GET %s: status %d, want %d", url, resp.StatusCode, status)
	}
	return string(b)
}

func ExampleMetrics_Handler() {
	m := New(Options{Version: "v0.1.0", NoRuntimeCollectors: true})
	m.Agent.ConfigReload(true)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "sluice_config_reloads_total") || strings.HasPrefix(line, "sluice_build_info") {
			fmt.Println(line)
		}
	}
	// Output:
	// sluice_build_info{version="v0.1.0"} 1
	// sluice_config_reloads_total{result="ok"} 1
	// sluice_config_reloads_total{result="refused"} 0
}

// A service's certificate series follow its files: a file no longer
// served loses its series, a forgotten service all of them.
func TestCertificateExpirySeries(t *testing.T) {
	m := New(Options{NoRuntimeCollectors: true})
	get := func() map[string]float64 {
		out := map[string]float64{}
		mfs, err := m.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "sluice_l7_certificate_expiry_timestamp_seconds" {
				continue
			}
			for _, x := range mf.GetMetric() {
				var l []string
				for _, lp := range x.GetLabel() {
					l = append(l, lp.GetValue())
				}
				out[strings.Join(l, " ")] = x.GetGauge().GetValue()
			}
		}
		return out
	}
	m.L7.SetCertificates("a", map[string]time.Time{"/c/a.crt": time.Unix(100, 0), "/c/b.crt": time.Unix(200, 0)})
	m.L7.SetCertificates("b", map[string]time.Time{"/c/a.crt": time.Unix(300, 0)})
	m.L7.SetCertificates("a", map[string]time.Time{"/c/b.crt": time.Unix(400, 0)})
	if got, want := get(), map[string]float64{"/c/b.crt a": 400, "/c/a.crt b": 300}; !maps.Equal(got, want) {
		t.Errorf("series %v, want %v", got, want)
	}
	m.L7.ForgetService("b")
	m.L7.SetCertificates("a", nil)
	if got := get(); len(got) != 0 {
		t.Errorf("series %v after the services' certificates went, want none", got)
	}
}
