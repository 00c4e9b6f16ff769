package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/syncbuf"
	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/pool"
)

// tableSize is a small prime so tests stay fast.
const tableSize = 251

var (
	be1 = netip.MustParseAddrPort("198.18.2.11:80")
	be2 = netip.MustParseAddrPort("198.18.2.12:80")
	be3 = netip.MustParseAddrPort("198.18.2.13:80")
	be4 = netip.MustParseAddrPort("198.18.2.14:80")
	vip = netip.MustParseAddrPort("198.18.1.100:80")

	webKey = datapath.ServiceKey{VIP: vip.Addr(), Port: 80, Proto: datapath.TCP}
)

const baseConfig = `interfaces: [veth0]
pools:
  - name: web
    drain_timeout: 30s
    backends:
      - address: 198.18.2.11:80
      - address: 198.18.2.12:80
      - address: 198.18.2.13:80
services:
  - name: web-l4
    listen: 198.18.1.100:80
    protocol: tcp
    pool: web
`

// harness is an agent on a Fake with a clock the test moves.
type harness struct {
	t    *testing.T
	dp   *datapath.Fake
	a    *agent
	path string
	now  time.Time
	ctx  context.Context
}

var errTest = errors.New("injected map failure")

func newHarness(t *testing.T, dp *datapath.Fake, cfgText string) *harness {
	t.Helper()
	return newHarnessWith(t, dp, cfgText, nil)
}

// newHarnessWith is newHarness with a hook that completes the agent's
// options before it is built.
func newHarnessWith(t *testing.T, dp *datapath.Fake, cfgText string, setup func(*options)) *harness {
	t.Helper()
	if dp == nil {
		dp = datapath.NewFake(tableSize)
	}
	h := &harness{t: t, dp: dp, path: filepath.Join(t.TempDir(), "sluice.yaml"),
		now: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC), ctx: context.Background()}
	h.write(cfgText)
	o := options{configPath: h.path, version: "test", now: func() time.Time { return h.now }}
	if setup != nil {
		setup(&o)
	}
	h.a = newAgent(dp, o)
	cfg, err := config.Load(h.path)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	if err := h.a.start(h.now, cfg); err != nil {
		t.Fatalf("start: %v", err)
	}
	return h
}

func (h *harness) write(text string) {
	h.t.Helper()
	if err := os.WriteFile(h.path, []byte(text), 0o600); err != nil {
		h.t.Fatal(err)
	}
}

// tick advances the clock and runs one tick.
func (h *harness) tick(d time.Duration) error {
	h.now = h.now.Add(d)
	return h.a.tick(h.now)
}

// slotOf is the slot bound to an address of pool web.
func (h *harness) slotOf(addr netip.AddrPort) uint32 {
	h.t.Helper()
	n, _, ok := h.a.rec.slotOf(datapath.PoolID("web"), addr)
	if !ok {
		h.t.Fatalf("%s has no slot", addr)
	}
	return n
}

func (h *harness) state(addr netip.AddrPort) pool.Backend {
	h.t.Helper()
	b, ok := h.a.pools["web"].p.Backend(addr)
	if !ok {
		h.t.Fatalf("%s not in pool web", addr)
	}
	return b
}

// tableSlots is the set of slots in a service's table in the Fake.
func (h *harness) tableSlots(id uint32) []uint32 {
	var out []uint32
	for _, n := range h.dp.Table(id) {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// addFlow pins a flow from client port cport to a backend slot.
func (h *harness) addFlow(cport uint16, slot uint32, expired bool) datapath.Flow {
	b := h.dp.Backend(slot)
	f := datapath.Flow{
		Client:      netip.AddrPortFrom(netip.MustParseAddr("198.18.0.2"), cport),
		VIP:         vip,
		Proto:       datapath.TCP,
		ServiceID:   h.serviceID(webKey),
		BackendSlot: slot,
		BackendGen:  b.Gen,
		Backend:     b.Addr,
		State:       datapath.FlowEstablished,
		Expired:     expired,
	}
	h.dp.AddFlow(f)
	return f
}

// refuse is what the data path does when the backend of slot answers a
// SYN with an RST: its ConnectRefused counter becomes n and the flow stays
// in conntrack, closing.
func (h *harness) refuse(slot uint32, n uint64) {
	h.t.Helper()
	h.dp.SetBackendStats(slot, datapath.BackendStats{ConnectRefused: n})
	f := h.addFlow(50000+uint16(slot), slot, false)
	f.State = datapath.FlowClosing
	h.dp.AddFlow(f)
}

// serviceID is the id of the service on key.
func (h *harness) serviceID(key datapath.ServiceKey) uint32 {
	h.t.Helper()
	s, ok := h.a.rec.serviceOf(key)
	if !ok {
		h.t.Fatalf("no service on %v", key)
	}
	return s.id
}

// opIndex is the index of the first op whose String has prefix, or -1.
func opIndex(ops []datapath.Op, prefix string) int {
	for i, o := range ops {
		if strings.HasPrefix(o.String(), prefix) {
			return i
		}
	}
	return -1
}

func TestStartProgramsServiceSlotsThenTable(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	svcs, _ := h.dp.Services()
	if s, ok := svcs[webKey]; !ok || s.ID != 1 || s.Mode != datapath.ModeNAT {
		t.Fatalf("services = %+v", svcs)
	}
	for i, be := range []netip.AddrPort{be1, be2, be3} {
		b := h.dp.Backend(uint32(i + 1))
		if b.Addr != be || b.Gen != 1 || b.State != datapath.BackendActive || b.PoolID != datapath.PoolID("web") {
			t.Fatalf("slot %d = %+v", i+1, b)
		}
	}
	if got := h.tableSlots(1); !slices.Equal(got, []uint32{1, 2, 3}) {
		t.Fatalf("table slots = %v", got)
	}
	ops := h.dp.Ops()
	last := -1
	for i, o := range ops {
		if o.Name == "SetBackend" {
			last = i
		}
	}
	if tbl := opIndex(ops, "SetTable(1"); tbl < last {
		t.Fatalf("table written before its slots: %v", ops)
	}
	// Nothing changed: a tick writes nothing.
	h.dp.ResetOps()
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if ops := h.dp.Ops(); len(ops) != 0 {
		t.Fatalf("idle tick wrote %v", ops)
	}
}

func TestWeightsShapeTheTable(t *testing.T) {
	h := newHarness(t, nil, strings.Replace(baseConfig, "- address: 198.18.2.12:80", "- address: 198.18.2.12:80\n        weight: 2", 1))
	count := map[uint32]int{}
	for _, n := range h.dp.Table(1) {
		count[n]++
	}
	if !(count[2] > count[1]*3/2 && count[2] > count[3]*3/2) {
		t.Fatalf("weight 2 not reflected: %v", count)
	}
}

func TestAdoptionKeepsIDsSlotsGens(t *testing.T) {
	dp := datapath.NewFake(tableSize)
	web := datapath.PoolID("web")
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(dp.SetService(webKey, datapath.Service{ID: 7, PoolID: web}))
	must(dp.SetBackend(5, datapath.Backend{Addr: be1, Gen: 3, State: datapath.BackendActive, PoolID: web}))
	must(dp.SetBackend(9, datapath.Backend{Addr: be2, Gen: 1, State: datapath.BackendActive, PoolID: web}))
	must(dp.SetBackend(12, datapath.Backend{Addr: be3, Gen: 2, State: datapath.BackendActive, PoolID: web}))
	// An address no longer configured, with a flow, and one of a pool that is gone.
	must(dp.SetBackend(20, datapath.Backend{Addr: be4, Gen: 4, State: datapath.BackendActive, PoolID: web}))
	must(dp.SetBackend(30, datapath.Backend{Addr: be4, Gen: 1, State: datapath.BackendActive, PoolID: datapath.PoolID("old")}))
	// A removed slot: reusable only after the delay.
	must(dp.SetBackend(1, datapath.Backend{Addr: be4, Gen: 6, State: datapath.BackendRemoved, PoolID: web}))
	flow := datapath.Flow{Client: netip.MustParseAddrPort("198.18.0.2:40000"), VIP: vip, Proto: datapath.TCP,
		ServiceID: 7, BackendSlot: 20, BackendGen: 4, Backend: be4, State: datapath.FlowEstablished}
	dp.AddFlow(flow)
	dp.ResetOps()

	h := newHarness(t, dp, baseConfig)
	ops := h.dp.Ops()
	if i := opIndex(ops, "SetService"); i >= 0 {
		t.Fatalf("adopted service rewritten: %v", ops)
	}
	for _, n := range []uint32{5, 9, 12} {
		if i := opIndex(ops, fmt.Sprintf("SetBackend(%d ", n)); i >= 0 {
			t.Fatalf("adopted slot %d rewritten: %v", n, ops)
		}
	}
	if got := h.tableSlots(7); !slices.Equal(got, []uint32{5, 9, 12}) {
		t.Fatalf("table of service 7 = %v", got)
	}
	if b := dp.Backend(5); b.Gen != 3 || b.State != datapath.BackendActive {
		t.Fatalf("slot 5 = %+v", b)
	}
	// The unconfigured address drains (table first), its flow untouched.
	tbl := opIndex(ops, "SetTable(7")
	drain := opIndex(ops, "SetBackend(20 198.18.2.14:80 gen=4 draining)")
	if tbl < 0 || drain < 0 || drain < tbl {
		t.Fatalf("want table then draining slot 20: %v", ops)
	}
	if opIndex(ops, "DeleteFlow") >= 0 || dp.FlowCount() != 1 {
		t.Fatalf("conntrack disturbed: %v", ops)
	}
	if b := dp.Backend(30); b.State != datapath.BackendDraining {
		t.Fatalf("slot of gone pool = %+v", b)
	}
	if b := h.state(be4); b.State != pool.Draining || b.Cause != pool.CauseConfig {
		t.Fatalf("be4 = %+v", b)
	}

	// With its flow alive it keeps draining; the gone pool has none: removed.
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if b := dp.Backend(20); b.State != datapath.BackendDraining {
		t.Fatalf("slot 20 = %+v", b)
	}
	if b := dp.Backend(30); b.State != datapath.BackendRemoved {
		t.Fatalf("slot 30 = %+v", b)
	}
	// The flow ends (expires, collected): removed.
	flow.Expired = true
	dp.AddFlow(flow)
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if b := dp.Backend(20); b.State != datapath.BackendRemoved || b.Gen != 4 {
		t.Fatalf("slot 20 = %+v", b)
	}
	if dp.FlowCount() != 0 {
		t.Fatal("expired flow not collected")
	}

	// A new service gets the lowest free id, not 7; a new address the
	// lowest free slot, not the removed slot 1 (still resting).
	h.write(baseConfig + `  - name: dns-udp
    listen: 198.18.1.100:53
    protocol: udp
    pool: web
`)
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	svcs, _ := dp.Services()
	if s := svcs[datapath.ServiceKey{VIP: vip.Addr(), Port: 53, Proto: datapath.UDP}]; s.ID != 1 {
		t.Fatalf("new service id = %d, want 1", s.ID)
	}
}

func TestAdoptedDrainingIsKeptAsOperatorDrain(t *testing.T) {
	dp := datapath.NewFake(tableSize)
	web := datapath.PoolID("web")
	_ = dp.SetService(webKey, datapath.Service{ID: 1})
	_ = dp.SetBackend(1, datapath.Backend{Addr: be1, Gen: 1, State: datapath.BackendDraining, PoolID: web})
	_ = dp.SetBackend(2, datapath.Backend{Addr: be2, Gen: 1, State: datapath.BackendActive, PoolID: web})
	_ = dp.SetBackend(3, datapath.Backend{Addr: be3, Gen: 1, State: datapath.BackendActive, PoolID: web})
	dp.AddFlow(datapath.Flow{Client: netip.MustParseAddrPort("198.18.0.2:40000"), VIP: vip, Proto: datapath.TCP,
		ServiceID: 1, BackendSlot: 1, BackendGen: 1, Backend: be1, State: datapath.FlowEstablished})
	h := newHarness(t, dp, baseConfig)
	if got := h.tableSlots(1); !slices.Equal(got, []uint32{2, 3}) {
		t.Fatalf("table = %v", got)
	}
	if b := h.state(be1); b.State != pool.Draining || !b.Held {
		t.Fatalf("be1 = %+v", b)
	}
	if err := h.a.Undrain(h.ctx, "web", "198.18.2.11:80"); err != nil {
		t.Fatal(err)
	}
	if got := h.tableSlots(1); !slices.Equal(got, []uint32{1, 2, 3}) {
		t.Fatalf("table after undrain = %v", got)
	}
}

func TestDrainKeepsFlowsThenRemovesOnNoFlows(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	s1 := h.slotOf(be1)
	f := h.addFlow(40000, s1, false)
	h.dp.ResetOps()

	if err := h.a.Drain(h.ctx, "web", "198.18.2.11:80"); err != nil {
		t.Fatal(err)
	}
	if got := h.tableSlots(1); slices.Contains(got, s1) || len(got) != 2 {
		t.Fatalf("table after drain = %v", got)
	}
	ops := h.dp.Ops()
	tbl, st := opIndex(ops, "SetTable(1"), opIndex(ops, fmt.Sprintf("SetBackend(%d 198.18.2.11:80 gen=1 draining)", s1))
	if tbl < 0 || st < 0 || st < tbl {
		t.Fatalf("want table before slot state: %v", ops)
	}
	if h.dp.FlowCount() != 1 {
		t.Fatal("flow disturbed")
	}
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if b := h.state(be1); b.State != pool.Draining || b.Cause != pool.CauseOperator {
		t.Fatalf("be1 = %+v", b)
	}
	st0, err := h.a.Status(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	ab := st0.Pools[0].Backends[0]
	if ab.State != "draining" || ab.ActiveFlows != 1 || ab.DrainDeadline == nil || ab.Slot != s1 {
		t.Fatalf("status backend = %+v", ab)
	}
	if st0.Services[0].ActiveFlows != 1 || st0.Services[0].Backends != 2 || st0.Services[0].ID != 1 {
		t.Fatalf("status service = %+v", st0.Services[0])
	}

	// The client closes: the flow expires and is collected; no flows left.
	f.Expired = true
	h.dp.AddFlow(f)
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if b := h.state(be1); b.State != pool.Removed || b.Cause != pool.CauseNoFlows {
		t.Fatalf("be1 = %+v", b)
	}
	if b := h.dp.Backend(s1); b.State != datapath.BackendRemoved {
		t.Fatalf("slot = %+v", b)
	}
	// Held by the operator: not forgotten, and undrain brings it back on a new slot.
	if err := h.tick(3 * time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := h.a.Undrain(h.ctx, "web", "198.18.2.11"); err != nil {
		t.Fatal(err)
	}
	n := h.slotOf(be1)
	if b := h.dp.Backend(n); b.State != datapath.BackendActive || b.Addr != be1 {
		t.Fatalf("slot %d after undrain = %+v", n, b)
	}
	if !slices.Contains(h.tableSlots(1), n) {
		t.Fatalf("table after undrain = %v", h.tableSlots(1))
	}
}

func TestDrainTimeoutRemovesWithFlows(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	s1 := h.slotOf(be1)
	h.addFlow(40000, s1, false)
	if err := h.a.Drain(h.ctx, "web", "198.18.2.11:80"); err != nil {
		t.Fatal(err)
	}
	for range 29 {
		if err := h.tick(time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if b := h.state(be1); b.State != pool.Draining {
		t.Fatalf("be1 before deadline = %+v", b)
	}
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if b := h.state(be1); b.State != pool.Removed || b.Cause != pool.CauseDrainTimeout {
		t.Fatalf("be1 = %+v", b)
	}
	if b := h.dp.Backend(s1); b.State != datapath.BackendRemoved {
		t.Fatalf("slot = %+v", b)
	}
	// The pinned flow stays: the data path answers it with an RST.
	if h.dp.FlowCount() != 1 {
		t.Fatal("pinned flow deleted")
	}
}

func TestEmptyPoolGivesEmptyTable(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	for _, a := range []string{"198.18.2.11:80", "198.18.2.12:80", "198.18.2.13:80"} {
		if err := h.a.Drain(h.ctx, "web", a); err != nil {
			t.Fatal(err)
		}
	}
	if got := h.dp.Table(1); got != nil {
		t.Fatalf("table = %d entries, want none", len(got))
	}
	ops := h.dp.Ops()
	if i := opIndex(ops, "SetTable(1 len=0)"); i < 0 {
		t.Fatalf("no empty table written: %v", ops)
	}
	svcs, _ := h.dp.Services()
	if _, ok := svcs[webKey]; !ok {
		t.Fatal("service deleted instead of emptied")
	}
}

func TestReloadAddsAndRemovesServicesAndAddresses(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	h.dp.ResetOps()
	h.write(`interfaces: [veth0]
pools:
  - name: web
    drain_timeout: 30s
    backends:
      - address: 198.18.2.11:80
      - address: 198.18.2.12:80
      - address: 198.18.2.14:80
services:
  - name: web-l4
    listen: 198.18.1.100:80
    protocol: tcp
    pool: web
  - name: web-alt
    listen: 198.18.1.101:8080
    protocol: tcp
    mode: snat
    snat_source: 198.18.2.1
    pool: web
`)
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	ops := h.dp.Ops()
	// The new address's slot is written active before any table uses it.
	s4 := h.slotOf(be4)
	add := opIndex(ops, fmt.Sprintf("SetBackend(%d 198.18.2.14:80 gen=1 active)", s4))
	tbl := opIndex(ops, "SetTable(1")
	if add < 0 || tbl < 0 || add > tbl {
		t.Fatalf("want new slot before table: %v", ops)
	}
	// The dropped address drains after the table no longer holds it.
	s3 := h.slotOf(be3)
	drain := opIndex(ops, fmt.Sprintf("SetBackend(%d 198.18.2.13:80 gen=1 draining)", s3))
	if drain < tbl {
		t.Fatalf("want table before draining slot: %v", ops)
	}
	alt := datapath.ServiceKey{VIP: netip.MustParseAddr("198.18.1.101"), Port: 8080, Proto: datapath.TCP}
	svcs, _ := h.dp.Services()
	s, ok := svcs[alt]
	if !ok || s.ID != 2 || s.Mode != datapath.ModeSNAT || s.SNATAddr != netip.MustParseAddr("198.18.2.1") {
		t.Fatalf("new service = %+v", svcs)
	}
	if got := h.tableSlots(2); !slices.Equal(got, h.tableSlots(1)) || len(got) != 3 {
		t.Fatalf("tables: %v vs %v", got, h.tableSlots(1))
	}
	if opIndex(ops, "SetService(1") >= 0 {
		t.Fatalf("unchanged service rewritten: %v", ops)
	}

	// Now remove web-l4.
	h.dp.ResetOps()
	h.write(strings.Replace(baseConfig, "198.18.1.100:80", "198.18.1.101:8080", 1))
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	svcs, _ = h.dp.Services()
	if _, ok := svcs[webKey]; ok || len(svcs) != 1 {
		t.Fatalf("services after removal = %+v", svcs)
	}
	if opIndex(h.dp.Ops(), "DeleteService(1)") < 0 {
		t.Fatalf("ops = %v", h.dp.Ops())
	}
	// Mode changed from snat back to nat: rewritten.
	if svcs[alt].Mode != datapath.ModeNAT {
		t.Fatalf("alt = %+v", svcs[alt])
	}
}

func TestInvalidReloadRefused(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	h.dp.ResetOps()
	h.write(baseConfig + "bogus_key: 1\n")
	err := h.a.Reload(h.ctx)
	if !errors.Is(err, admin.ErrReloadRefused) {
		t.Fatalf("err = %v, want ErrReloadRefused", err)
	}
	var ve *config.ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) == 0 || ve.Problems[0].Line != 14 {
		t.Fatalf("err = %v, want a validation error at line 14", err)
	}
	if ops := h.dp.Ops(); len(ops) != 0 {
		t.Fatalf("refused reload wrote %v", ops)
	}
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if got := h.tableSlots(1); len(got) != 3 {
		t.Fatalf("old config not running: %v", got)
	}
}

func TestMapErrorsAreRetriedInOrder(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	s1 := h.slotOf(be1)
	h.addFlow(40000, s1, false) // keeps it draining
	h.dp.ResetOps()
	boom := errors.New("boom")
	h.dp.FailNext("SetTable", boom)
	if err := h.a.Drain(h.ctx, "web", "198.18.2.11:80"); err != nil {
		t.Fatalf("drain: %v", err)
	}
	// The table write failed: the slot must stay active (the old table
	// still sends new flows to it).
	if b := h.dp.Backend(s1); b.State != datapath.BackendActive {
		t.Fatalf("slot state written before its table: %+v", b)
	}
	if h.a.errs.total != 1 {
		t.Fatalf("mapErrors = %d", h.a.errs.total)
	}
	h.dp.FailNext("SetBackend", boom)
	err := h.tick(time.Second)
	if !errors.Is(err, boom) {
		t.Fatalf("tick err = %v", err)
	}
	if got := h.tableSlots(1); slices.Contains(got, s1) {
		t.Fatalf("table not retried: %v", got)
	}
	if b := h.dp.Backend(s1); b.State != datapath.BackendActive {
		t.Fatalf("slot = %+v", b)
	}
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if b := h.dp.Backend(s1); b.State != datapath.BackendDraining {
		t.Fatalf("slot write not retried: %+v", b)
	}
	if h.a.errs.total != 2 {
		t.Fatalf("mapErrors = %d", h.a.errs.total)
	}
}

func TestNewSlotFailureKeepsItOutOfTheTable(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	h.dp.ResetOps()
	h.dp.FailNext("SetBackend", errors.New("boom"))
	h.write(strings.Replace(baseConfig, "      - address: 198.18.2.13:80\n", "      - address: 198.18.2.13:80\n      - address: 198.18.2.14:80\n", 1))
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	s4 := h.slotOf(be4)
	if slices.Contains(h.tableSlots(1), s4) {
		t.Fatal("table uses a slot that was never written")
	}
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(h.tableSlots(1), s4) {
		t.Fatalf("table = %v", h.tableSlots(1))
	}
}

func TestFlowsReadErrorOnlyAppliesDeadlines(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	if err := h.a.Drain(h.ctx, "web", "198.18.2.11:80"); err != nil {
		t.Fatal(err)
	}
	h.dp.FailNext("Flows", errors.New("boom"))
	_ = h.tick(time.Second)
	if b := h.state(be1); b.State != pool.Draining {
		t.Fatalf("removed without knowing its flows: %+v", b)
	}
}

func TestSlotReuseAfterDelayBumpsGen(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	s3 := h.slotOf(be3)
	// Drop be3; it drains and is removed at once (no flows).
	h.write(strings.Replace(baseConfig, "      - address: 198.18.2.13:80\n", "", 1))
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if b := h.dp.Backend(s3); b.State != datapath.BackendRemoved {
		t.Fatalf("slot %d = %+v", s3, b)
	}
	// A new address soon after: not the resting slot.
	h.write(strings.Replace(baseConfig, "198.18.2.13:80", "198.18.2.14:80", 1))
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	if n := h.slotOf(be4); n == s3 {
		t.Fatalf("removed slot reused at once")
	}
	// After the delay (and be3 forgotten), the slot is reused with gen 2.
	for range 3 {
		if err := h.tick(time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := h.a.pools["web"].p.Backend(be3); ok {
		t.Fatal("removed address not forgotten")
	}
	h.write(strings.Replace(baseConfig, "198.18.2.13:80", "198.18.2.14:80\n      - address: 198.18.2.13:80", 1))
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	if n := h.slotOf(be3); n != s3 {
		t.Fatalf("slot = %d, want reused %d", n, s3)
	}
	if b := h.dp.Backend(s3); b.Gen != 2 || b.State != datapath.BackendActive || b.Addr != be3 {
		t.Fatalf("reused slot = %+v", b)
	}
}

func TestDrainErrors(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	tests := []struct {
		pool, addr string
		want       error
	}{
		{"nope", "198.18.2.11:80", admin.ErrUnknownPool},
		{"web", "198.18.2.99:80", admin.ErrUnknownAddress},
		{"web", "198.18.2.99", admin.ErrUnknownAddress},
		{"web", "not-an-address", admin.ErrBadRequest},
	}
	for _, tc := range tests {
		if err := h.a.Drain(h.ctx, tc.pool, tc.addr); !errors.Is(err, tc.want) {
			t.Errorf("Drain(%s, %s) = %v, want %v", tc.pool, tc.addr, err, tc.want)
		}
		if err := h.a.Undrain(h.ctx, tc.pool, tc.addr); !errors.Is(err, tc.want) {
			t.Errorf("Undrain(%s, %s) = %v, want %v", tc.pool, tc.addr, err, tc.want)
		}
	}
}

func TestFlowsFilter(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	h.addFlow(40000, h.slotOf(be1), false)
	h.addFlow(40001, h.slotOf(be2), false)
	h.addFlow(40002, h.slotOf(be2), true)
	tests := []struct {
		f    admin.FlowFilter
		want int
		err  error
	}{
		{admin.FlowFilter{}, 3, nil},
		{admin.FlowFilter{Service: "web-l4"}, 3, nil},
		{admin.FlowFilter{Backend: "198.18.2.12"}, 2, nil},
		{admin.FlowFilter{Backend: "198.18.2.11:80"}, 1, nil},
		{admin.FlowFilter{Backend: "198.18.2.11:81"}, 0, nil},
		{admin.FlowFilter{Service: "nope"}, 0, admin.ErrBadRequest},
		{admin.FlowFilter{Backend: "x"}, 0, admin.ErrBadRequest},
	}
	for _, tc := range tests {
		got, err := h.a.Flows(h.ctx, tc.f)
		if !errors.Is(err, tc.err) || len(got) != tc.want {
			t.Errorf("Flows(%+v) = %d flows, %v; want %d, %v", tc.f, len(got), err, tc.want, tc.err)
		}
	}
	got, _ := h.a.Flows(h.ctx, admin.FlowFilter{Backend: "198.18.2.11:80"})
	if f := got[0]; f.Service != "web-l4" || f.Proto != "tcp" || f.State != "established" || f.Client != "198.18.0.2:40000" {
		t.Fatalf("flow = %+v", f)
	}
}

func TestPoolSourceHook(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	if err := h.a.SetSource("web", "backend.lab", []pool.Desired{{Addr: be4, Weight: 1}}); err != nil {
		t.Fatal(err)
	}
	if got := h.tableSlots(1); len(got) != 4 {
		t.Fatalf("table = %v", got)
	}
	if b := h.state(be4); b.Source != "backend.lab" || b.Cause != "dns:backend.lab" {
		t.Fatalf("be4 = %+v", b)
	}
	if err := h.a.SetSource("nope", "x", nil); !errors.Is(err, admin.ErrUnknownPool) {
		t.Fatalf("err = %v", err)
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

func TestReverseGCEveryTenSeconds(t *testing.T) {
	calls := 0
	gc := func() (int, error) {
		calls++
		return 2, nil
	}
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	a := newAgent(datapath.NewFake(tableSize), options{now: func() time.Time { return now }, reverseGC: gc})
	path := filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(path, []byte(baseConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.start(now, cfg); err != nil {
		t.Fatal(err)
	}
	for range 25 {
		now = now.Add(time.Second)
		if err := a.tick(now); err != nil {
			t.Fatal(err)
		}
	}
	if a.flows.gcDeleted != 6 || calls != 3 {
		t.Fatalf("GCReverse calls = %d, deleted = %d; want 3 calls in 25s", calls, a.flows.gcDeleted)
	}
}

// Issue 16: a reload logs the config's warnings (what `sluice check`
// prints), one line each, and is applied.
func TestReloadLogsWarnings(t *testing.T) {
	var buf syncbuf.Buffer
	h := newHarnessWith(t, nil, baseConfig, func(o *options) {
		o.log = slog.New(slog.NewTextHandler(&buf, nil))
	})
	h.write(baseConfig + "  - name: plain\n    listen: 198.18.1.100:81\n    pool: web\n")
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if n := strings.Count(buf.String(), `msg="config warning"`); n != 1 || !strings.Contains(buf.String(), "tcp_established") {
		t.Errorf("reload logged %d config warnings, want the tcp_established one:\n%s", n, buf.String())
	}
}
