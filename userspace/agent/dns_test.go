package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/defaults"
	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/discovery"
	"github.com/sluicelb/sluice/userspace/metrics"
	"github.com/sluicelb/sluice/userspace/pool"
)

const dnsConfig = `interfaces: [veth0]
pools:
  - name: web
    drain_timeout: 30s
    backends:
      - address: 198.18.2.11:80
      - name: backend.lab
        port: 8080
        weight: 2
services:
  - name: web-l4
    listen: 198.18.1.100:80
    protocol: tcp
    pool: web
`

var (
	dns1 = netip.MustParseAddrPort("198.18.2.21:8080")
	dns2 = netip.MustParseAddrPort("198.18.2.22:8080")
)

// fakeWatcher is a dnsWatcher whose answers the test sets.
type fakeWatcher struct {
	mu        sync.Mutex
	synced    [][]string
	status    map[string]discovery.Update
	refreshed []string
}

func (w *fakeWatcher) Refresh(name string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.refreshed = append(w.refreshed, name)
	return true
}

func (w *fakeWatcher) Sync(_ context.Context, names []string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.synced = append(w.synced, slices.Clone(names))
	return nil
}

func (w *fakeWatcher) Status(name string) (discovery.Update, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fq, _ := discovery.Normalize(name)
	u, ok := w.status[fq]
	return u, ok
}

func (w *fakeWatcher) Wait() {}

// use is the options.dns that builds w.
func (w *fakeWatcher) use(o *options) {
	o.dns = func(_, _ func(discovery.Update)) (dnsWatcher, error) { return w, nil }
}

func (w *fakeWatcher) lastSync() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.synced) == 0 {
		return nil
	}
	return w.synced[len(w.synced)-1]
}

func answer(now time.Time, addrs ...netip.AddrPort) discovery.Update {
	u := discovery.Update{Name: "backend.lab.", Published: true, Reason: discovery.ReasonAnswer,
		Expires: now.Add(30 * time.Second), At: now}
	for _, a := range addrs {
		u.Addrs = append(u.Addrs, discovery.Addr{Addr: a.Addr(), Answer: discovery.AnswerRef{Seq: 1, TTL: 30 * time.Second}})
	}
	return u
}

func newDNSHarness(t *testing.T, dp *datapath.Fake, w *fakeWatcher) *harness {
	t.Helper()
	h := newHarnessWith(t, dp, dnsConfig, w.use)
	h.a.syncDNS()
	return h
}

func TestDNSNamesFeedPools(t *testing.T) {
	w := &fakeWatcher{status: map[string]discovery.Update{}}
	h := newDNSHarness(t, nil, w)
	if got := w.lastSync(); !slices.Equal(got, []string{"backend.lab."}) {
		t.Fatalf("synced %v", got)
	}
	// Before the first answer only the fixed address serves.
	if got := h.tableSlots(1); len(got) != 1 {
		t.Fatalf("table before any answer = %v", got)
	}

	h.a.onDNSUpdate(answer(h.now, dns1, dns2))
	b := h.state(dns1)
	if b.State != pool.Active || b.Source != "backend.lab" || b.Cause != "dns:backend.lab" || b.Weight != 2 {
		t.Fatalf("dns1 = %+v", b)
	}
	if !strings.Contains(b.Info, "198.18.2.21") {
		t.Fatalf("info = %q", b.Info)
	}
	if got := h.tableSlots(1); len(got) != 3 {
		t.Fatalf("table = %v", got)
	}

	// The answer moves: dns1 drains (no new flows), its flow goes on.
	s1 := h.slotOf(dns1)
	h.addFlow(40000, s1, false)
	h.a.onDNSUpdate(answer(h.now, dns2))
	if b := h.state(dns1); b.State != pool.Draining || b.Cause != "dns:backend.lab" {
		t.Fatalf("dns1 = %+v", b)
	}
	if slices.Contains(h.tableSlots(1), s1) {
		t.Fatal("draining address still in the table")
	}
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if b := h.dp.Backend(s1); b.State != datapath.BackendDraining {
		t.Fatalf("slot = %+v", b)
	}
	// ... and comes back: active again, same slot.
	h.a.onDNSUpdate(answer(h.now, dns1, dns2))
	if b := h.state(dns1); b.State != pool.Active || h.slotOf(dns1) != s1 {
		t.Fatalf("dns1 = %+v", b)
	}

	// Status shows the TTL left.
	w.status["backend.lab."] = answer(h.now, dns1, dns2)
	st, err := h.a.Status(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, ab := range st.Pools[0].Backends {
		if ab.Source == "backend.lab" && ab.TTLLeft != "30s" {
			t.Fatalf("backend %+v: ttl left %q", ab, ab.TTLLeft)
		}
	}

	// The name leaves the config: no longer watched, its addresses drain.
	h.write(strings.Replace(dnsConfig, "      - name: backend.lab\n        port: 8080\n        weight: 2\n", "", 1))
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	if got := w.lastSync(); len(got) != 0 {
		t.Fatalf("synced %v after the name was dropped", got)
	}
	if b := h.state(dns2); b.State != pool.Draining || b.Cause != "dns:backend.lab" {
		t.Fatalf("dns2 = %+v", b)
	}
}

func TestDNSAdoptedAddressesWaitForTheName(t *testing.T) {
	dp := datapath.NewFake(tableSize)
	web := datapath.PoolID("web")
	_ = dp.SetService(webKey, datapath.Service{ID: 1})
	_ = dp.SetBackend(1, datapath.Backend{Addr: be1, Gen: 1, State: datapath.BackendActive, PoolID: web})
	_ = dp.SetBackend(2, datapath.Backend{Addr: dns1, Gen: 1, State: datapath.BackendActive, PoolID: web})
	w := &fakeWatcher{status: map[string]discovery.Update{
		// A failure before the first answer: not published, not applied.
		"backend.lab.": {Name: "backend.lab.", Reason: discovery.ReasonFailure},
	}}
	h := newDNSHarness(t, dp, w)
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if b := h.state(dns1); b.State != pool.Active {
		t.Fatalf("adopted DNS address drained before its name resolved: %+v", b)
	}
	if got := h.tableSlots(1); !slices.Equal(got, []uint32{1, 2}) {
		t.Fatalf("table = %v", got)
	}
	// The first answer no longer lists it: now it drains.
	h.a.onDNSUpdate(answer(h.now, dns2))
	if b := h.state(dns1); b.State != pool.Draining {
		t.Fatalf("dns1 = %+v", b)
	}
}

func TestDNSSyncAppliesTheLatestAnswer(t *testing.T) {
	w := &fakeWatcher{status: map[string]discovery.Update{}}
	h := newDNSHarness(t, nil, w)
	// The name was already watched and answered (another pool used it):
	// a sync gives its answer to the pool at once.
	w.status["backend.lab."] = answer(h.now, dns1)
	h.a.syncDNS()
	if b := h.state(dns1); b.State != pool.Active {
		t.Fatalf("dns1 = %+v", b)
	}
}

func TestFailingConnectsRefreshTheName(t *testing.T) {
	w := &fakeWatcher{status: map[string]discovery.Update{}}
	h := newDNSHarness(t, nil, w)
	h.a.onDNSUpdate(answer(h.now, dns1))
	s1 := h.slotOf(dns1)
	stuck := func(port uint16, idle time.Duration) {
		f := h.addFlow(port, s1, false)
		f.State, f.Idle = datapath.FlowSynSent, idle
		h.dp.AddFlow(f)
	}
	stuck(40000, 2*time.Second)
	stuck(40001, 100*time.Millisecond) // just sent: not failing yet
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if len(w.refreshed) != 0 {
		t.Fatalf("refreshed after one failing connect: %v", w.refreshed)
	}
	stuck(40002, time.Second)
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(w.refreshed, []string{"backend.lab"}) {
		t.Fatalf("refreshed = %v", w.refreshed)
	}
	// Fixed addresses have no name to refresh.
	f := h.addFlow(40003, h.slotOf(be1), false)
	f.State, f.Idle = datapath.FlowSynSent, 5*time.Second
	h.dp.AddFlow(f)
	f.Client = netip.MustParseAddrPort("198.18.0.2:40004")
	h.dp.AddFlow(f)
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if len(w.refreshed) != 2 || w.refreshed[1] != "backend.lab" {
		t.Fatalf("refreshed = %v", w.refreshed)
	}
}

func TestRefusedConnectsRefreshTheName(t *testing.T) {
	w := &fakeWatcher{status: map[string]discovery.Update{}}
	h := newDNSHarness(t, nil, w)
	h.a.onDNSUpdate(answer(h.now, dns1))
	s1 := h.slotOf(dns1)
	h.refuse(s1, 40) // history
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	h.refuse(s1, 41)
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if len(w.refreshed) != 0 {
		t.Fatalf("refreshed after one refusal: %v", w.refreshed)
	}
	h.refuse(s1, 44)
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(w.refreshed, []string{"backend.lab"}) {
		t.Fatalf("refreshed = %v", w.refreshed)
	}
}

func TestDNSNameWithTwoPorts(t *testing.T) {
	w := &fakeWatcher{status: map[string]discovery.Update{}}
	text := strings.Replace(dnsConfig, "        weight: 2\n", "        weight: 2\n      - name: backend.lab\n        port: 9090\n", 1)
	h := newHarnessWith(t, nil, text, w.use)
	h.a.syncDNS()
	h.a.onDNSUpdate(answer(h.now, dns1))
	for _, a := range []netip.AddrPort{dns1, netip.AddrPortFrom(dns1.Addr(), 9090)} {
		if b := h.state(a); b.State != pool.Active {
			t.Fatalf("%s = %+v", a, b)
		}
	}
}

// TestDNSAAAAServed: the AAAA answers of a backend name are backends of
// the pool like its A answers, with a data-path slot each; the IPv4 L4
// service's table takes only the IPv4 ones.
func TestDNSAAAAServed(t *testing.T) {
	v6 := netip.AddrPortFrom(netip.MustParseAddr("2001:2:0:2::21"), dns1.Port())
	u := answer(time.Now(), dns1, v6)
	w := &fakeWatcher{status: map[string]discovery.Update{"backend.lab.": u}}
	h := newDNSHarness(t, nil, w)
	h.a.onDNSUpdate(u)
	for _, a := range []netip.AddrPort{dns1, v6} {
		if b := h.state(a); b.State != pool.Active || b.Weight != 2 {
			t.Fatalf("%s = %+v", a, b)
		}
	}
	if _, _, ok := h.a.rec.slotOf(datapath.PoolID("web"), v6); !ok {
		t.Fatalf("%s got no data-path slot", v6)
	}
	if got := h.tableSlots(1); len(got) != 2 || !slices.Contains(got, h.slotOf(dns1)) {
		t.Fatalf("table = %v, want the two IPv4 addresses", got)
	}
	st, err := h.a.Status(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Pools {
		if p.Name != "web" {
			continue
		}
		if len(p.NotServed) != 0 {
			t.Fatalf("not served = %+v", p.NotServed)
		}
		if !slices.ContainsFunc(p.Backends, func(b admin.Backend) bool { return b.Address == v6.String() && b.State == "active" }) {
			t.Fatalf("%s not active in status: %+v", v6, p.Backends)
		}
		return
	}
	t.Fatal("pool web missing from status")
}

// An answer that says again what the last one said changes nothing
// downstream; a changed one writes only its own pool's slot and the table
// of the service that uses that pool.
func TestDNSAnswerTouchesOnlyWhatChanged(t *testing.T) {
	text := `interfaces: [veth0]
pools:
  - name: web
    backends:
      - name: backend.lab
        port: 8080
  - name: api
    backends:
      - name: api.lab
        port: 8080
services:
  - name: web-l4
    listen: 198.18.1.100:80
    protocol: tcp
    pool: web
  - name: api-l4
    listen: 198.18.1.101:80
    protocol: tcp
    pool: api
`
	w := &fakeWatcher{status: map[string]discovery.Update{}}
	h := newHarnessWith(t, nil, text, w.use)
	h.a.syncDNS()
	api := answer(h.now, netip.MustParseAddrPort("198.18.2.31:8080"))
	api.Name = "api.lab."
	h.a.onDNSUpdate(api)
	h.a.onDNSUpdate(answer(h.now, dns1))
	apiID := h.serviceID(datapath.ServiceKey{VIP: netip.MustParseAddr("198.18.1.101"), Port: 80, Proto: datapath.TCP})
	webID := h.serviceID(webKey)

	h.dp.ResetOps()
	h.now = h.now.Add(5 * time.Second)
	again := answer(h.now, dns1)
	again.Seq = 2
	h.a.onDNSUpdate(again)
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if ops := h.dp.Ops(); len(ops) != 0 {
		t.Fatalf("unchanged answer wrote %v", ops)
	}
	if b := h.state(dns1); !strings.Contains(b.Info, "ttl 30s") || !b.Since.Equal(h.now.Add(-6*time.Second)) {
		t.Fatalf("dns1 after the same answer = %+v", b)
	}

	h.a.onDNSUpdate(answer(h.now, dns1, dns2))
	var got []string
	for _, o := range h.dp.Ops() {
		got = append(got, o.String())
	}
	s2 := h.slotOf(dns2)
	want := []string{
		fmt.Sprintf("SetBackend(%d %s gen=1 active)", s2, dns2),
		fmt.Sprintf("SetTable(%d len=%d)", webID, tableSize),
	}
	if !slices.Equal(got, want) {
		t.Fatalf("changed answer wrote %v, want %v (api's service %d untouched)", got, want, apiID)
	}
}

// A DNS answer is filtered before it reaches the pool: forbidden
// addresses never become backends (nor table entries), status lists them
// with the reason, and the metric counts each once.
func TestDNSAnswersFiltered(t *testing.T) {
	w := &fakeWatcher{status: map[string]discovery.Update{}}
	var m *metrics.Metrics
	h := newHarnessWith(t, nil, dnsConfig, func(o *options) {
		w.use(o)
		m = metrics.New(metrics.Options{Version: "test", NoRuntimeCollectors: true})
		o.metrics = m
		o.hostAddrs = func() []netip.Addr {
			return []netip.Addr{netip.MustParseAddr("198.18.2.1"), netip.MustParseAddr("2001:2:0:2::1")}
		}
	})
	h.a.syncDNS()
	port := func(ip string) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(ip), 8080) }
	bad := []netip.AddrPort{port("127.0.0.1"), port("169.254.169.254"), port("0.0.0.0"),
		port("198.18.1.100"), port("198.18.2.1"), port("224.0.0.1")}
	// AAAA answers go through the same filter.
	good6 := port("2001:2:0:2::21")
	bad6 := map[netip.AddrPort]string{
		port("::1"): "refused (loopback)", port("fe80::1"): "refused (link-local)", port("::"): "refused (unspecified)",
		port("::ffff:127.0.0.1"): "refused (v4-mapped)", port("::ffff:198.18.2.22"): "refused (v4-mapped)",
		port("64:ff9b::a9fe:a9fe"): "refused (v4-embedded)", port("ff02::1"): "refused (multicast)",
		port("2001:2:0:2::1"): "refused (own-address): an address of this host",
	}
	all := append([]netip.AddrPort{dns1, good6}, bad...)
	for ap := range bad6 {
		all = append(all, ap)
	}
	u := answer(h.now, all...)
	h.a.onDNSUpdate(u)
	h.a.onDNSUpdate(u) // the same answer again: counted once

	for _, ap := range bad {
		if _, ok := h.a.pools["web"].p.Backend(ap); ok {
			t.Errorf("%s reached the pool", ap)
		}
	}
	for ap := range bad6 {
		if _, ok := h.a.pools["web"].p.Backend(ap); ok {
			t.Errorf("%s reached the pool", ap)
		}
	}
	if b := h.state(dns1); b.State != pool.Active {
		t.Fatalf("dns1 = %+v", b)
	}
	if b := h.state(good6); b.State != pool.Active {
		t.Fatalf("%s = %+v", good6, b)
	}
	if got := len(h.tableSlots(1)); got != 2 {
		t.Fatalf("table has %d backends, want be1 and dns1", got)
	}
	st, err := h.a.Status(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]string{}
	for _, n := range st.Pools[0].NotServed {
		reasons[n.Address] = n.Reason
	}
	for ap, want := range map[netip.AddrPort]string{
		bad[0]: "refused (loopback)", bad[1]: "refused (link-local)", bad[2]: "refused (unspecified)",
		bad[3]: `refused (own-address): our own address: listen address of service "web-l4"`,
		bad[4]: "refused (own-address): an address of this host", bad[5]: "refused (multicast)",
	} {
		if !strings.HasPrefix(reasons[ap.String()], want) {
			t.Errorf("status for %s: %q, want %q...", ap, reasons[ap.String()], want)
		}
	}
	for ap, want := range bad6 {
		if !strings.HasPrefix(reasons[ap.String()], want) {
			t.Errorf("status for %s: %q, want %q...", ap, reasons[ap.String()], want)
		}
	}
	got := gather(t, m)["sluice_backend_addresses_refused_total"]
	for labels, n := range map[string]float64{
		"pool=web,reason=loopback,source=backend.lab":    2,
		"pool=web,reason=own-address,source=backend.lab": 3,
		"pool=web,reason=link-local,source=backend.lab":  2,
		"pool=web,reason=v4-mapped,source=backend.lab":   2,
		"pool=web,reason=v4-embedded,source=backend.lab": 1,
	} {
		if got[labels] != n {
			t.Errorf("%s = %v, want %v (all: %v)", labels, got[labels], n, got)
		}
	}

	// The answer drops them: status forgets them.
	h.a.onDNSUpdate(answer(h.now, dns1))
	if st, _ := h.a.Status(h.ctx); len(st.Pools[0].NotServed) != 0 {
		t.Fatalf("not served after a clean answer: %+v", st.Pools[0].NotServed)
	}
	// The name leaves the config: its series go.
	h.write(strings.Replace(dnsConfig, "      - name: backend.lab\n        port: 8080\n        weight: 2\n", "", 1))
	h.a.onDNSUpdate(u)
	m.Agent.DNSLookup("backend.lab.", "")
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sluice_backend_addresses_refused_total", "sluice_dns_lookups_total"} {
		if got := gather(t, m)[name]; len(got) != 0 {
			t.Errorf("%s: series of a name no longer configured: %v", name, got)
		}
	}
}

// A fixed address that is one of the host's is refused at run time (the
// config check cannot know the host it will run on).
func TestStaticHostAddressRefused(t *testing.T) {
	h := newHarnessWith(t, nil, baseConfig, func(o *options) {
		o.hostAddrs = func() []netip.Addr { return []netip.Addr{be3.Addr()} }
	})
	if _, ok := h.a.pools["web"].p.Backend(be3); ok {
		t.Fatal("a host address reached the pool")
	}
	st, err := h.a.Status(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ns := st.Pools[0].NotServed; len(ns) != 1 || ns[0].Address != be3.String() || ns[0].Source != pool.SourceStatic {
		t.Fatalf("not served = %+v", ns)
	}
}

// An address the host gains while the agent runs (DHCP, keepalived, an
// operator) stops being a backend within hostCheckEvery: a DNS answer's
// and a fixed one alike leave their pool (drained) and are listed as
// refused; the host losing it again brings them back.
func TestHostAddressGainedLater(t *testing.T) {
	w := &fakeWatcher{status: map[string]discovery.Update{}}
	var host atomic.Pointer[[]netip.Addr]
	host.Store(&[]netip.Addr{})
	h := newHarnessWith(t, nil, dnsConfig, func(o *options) {
		w.use(o)
		o.hostAddrs = func() []netip.Addr { return *host.Load() }
	})
	h.a.syncDNS()
	u := answer(h.now, dns1, dns2)
	w.mu.Lock()
	w.status["backend.lab."] = u
	w.mu.Unlock()
	h.a.onDNSUpdate(u)
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	for _, ap := range []netip.AddrPort{be1, dns1, dns2} {
		if b := h.state(ap); b.State != pool.Active {
			t.Fatalf("%s = %+v, want active", ap, b)
		}
	}
	host.Store(&[]netip.Addr{dns2.Addr(), be1.Addr()})
	if err := h.tick(hostCheckEvery); err != nil {
		t.Fatal(err)
	}
	for _, ap := range []netip.AddrPort{be1, dns2} {
		// No flows: drained at once.
		if b := h.state(ap); b.State != pool.Draining && b.State != pool.Removed {
			t.Errorf("%s, now an address of this host: %+v, want draining or removed", ap, b)
		}
	}
	if b := h.state(dns1); b.State != pool.Active {
		t.Errorf("dns1 = %+v, want active", b)
	}
	st, err := h.a.Status(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	refused := map[string]string{}
	for _, n := range st.Pools[0].NotServed {
		refused[n.Address] = n.Reason
	}
	for _, ap := range []netip.AddrPort{be1, dns2} {
		if !strings.HasPrefix(refused[ap.String()], "refused (own-address): an address of this host") {
			t.Errorf("status for %s: %q", ap, refused[ap.String()])
		}
	}
	host.Store(&[]netip.Addr{})
	if err := h.tick(hostCheckEvery); err != nil {
		t.Fatal(err)
	}
	for _, ap := range []netip.AddrPort{be1, dns1, dns2} {
		if b := h.state(ap); b.State != pool.Active {
			t.Errorf("%s after the host lost the address = %+v, want active", ap, b)
		}
	}
}

// Issue 10 item 10: a name answering 4000 addresses adds at most
// MaxAddressesPerName to its pool; the rest are listed and counted.
func TestDNSAnswerCapped(t *testing.T) {
	w := &fakeWatcher{status: map[string]discovery.Update{}}
	var m *metrics.Metrics
	h := newHarnessWith(t, nil, dnsConfig, func(o *options) {
		w.use(o)
		m = metrics.New(metrics.Options{Version: "test", NoRuntimeCollectors: true})
		o.metrics = m
	})
	h.a.syncDNS()
	var addrs []netip.AddrPort
	for i := range 4000 {
		addrs = append(addrs, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(1 + i%250)}), 8080))
	}
	h.a.onDNSUpdate(answer(h.now, addrs...))
	if got := len(h.a.pools["web"].p.Active()); got != 1+defaults.MaxAddressesPerName {
		t.Fatalf("%d active addresses, want be1 + %d", got, defaults.MaxAddressesPerName)
	}
	if _, ok := h.a.pools["web"].p.Backend(addrs[defaults.MaxAddressesPerName-1]); !ok {
		t.Fatal("the first addresses by address are not the ones served")
	}
	st, err := h.a.Status(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(st.Pools[0].NotServed); n != 4000-defaults.MaxAddressesPerName {
		t.Fatalf("%d not served, want %d", n, 4000-defaults.MaxAddressesPerName)
	}
	if r := st.Pools[0].NotServed[0].Reason; !strings.HasPrefix(r, "refused (over-limit): the name answered 4000") {
		t.Fatalf("reason %q", r)
	}
	if got := gather(t, m)["sluice_backend_addresses_refused_total"]["pool=web,reason=over-limit,source=backend.lab"]; got != 4000-defaults.MaxAddressesPerName {
		t.Fatalf("over-limit count = %v", got)
	}
}
