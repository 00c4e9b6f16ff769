package agent

import (
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/announce"
	"github.com/sluicelb/sluice/userspace/datapath"
)

const bgpSection = `bgp:
  local_asn: 64512
  router_id: 198.18.4.11
  peers: [{address: 198.18.4.1, asn: 64500}]
`

// announced runs a harness with an announcer on routes and returns it.
func newAnnounceHarness(t *testing.T, dp *datapath.Fake, routes *announce.Fake, cfg, stateDir string) *harness {
	t.Helper()
	if dp == nil {
		dp = datapath.NewFake(tableSize)
		dp.SetAttachments([]datapath.Attachment{{Interface: "veth0", Mode: "native"}})
	}
	return newHarnessWith(t, dp, cfg, func(o *options) {
		o.announce = announce.New(announce.Options{Routes: routes, StateFile: filepath.Join(stateDir, "node.json")})
	})
}

func vipRoutes(t *testing.T, f *announce.Fake) []string {
	t.Helper()
	l, err := f.List()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(l))
	for i, v := range l {
		out[i] = v.String()
	}
	return out
}

// Issue 13: a VIP is announced only while its service has a usable
// backend and the data path is attached; an agent restart (kill -9
// included) changes no route.
func TestAnnounceFollowsTables(t *testing.T) {
	routes := announce.NewFake()
	dir := t.TempDir()
	h := newAnnounceHarness(t, nil, routes, baseConfig+bgpSection, dir)
	if got := vipRoutes(t, routes); !slices.Equal(got, []string{"198.18.1.100"}) {
		t.Fatalf("routes after start: %v", got)
	}
	st, err := h.a.Status(context.Background())
	if err != nil || st.Node == nil || len(st.Node.VIPs) != 1 || !st.Node.VIPs[0].Announced || st.Node.State != "serving" {
		t.Fatalf("status: %v %+v", err, st.Node)
	}

	// A restarted agent on the same data path and routes changes nothing.
	before := routes.Changes()
	newAnnounceHarness(t, h.dp, routes, baseConfig+bgpSection, dir)
	if routes.Changes() != before {
		t.Fatalf("restart changed %d routes", routes.Changes()-before)
	}

	// Every backend of the pool gone: withdrawn in the same pass that
	// empties the table.
	h.write(strings.Replace(strings.Replace(strings.Replace(baseConfig+bgpSection,
		"      - address: 198.18.2.11:80\n", "", 1),
		"      - address: 198.18.2.12:80\n", "", 1),
		"      - address: 198.18.2.13:80\n", "      - address: 198.18.2.14:80\n", 1))
	if err := h.a.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := vipRoutes(t, routes); len(got) != 1 {
		t.Fatalf("one backend left, routes %v", got)
	}
	for _, addr := range []string{"198.18.2.14"} {
		if err := h.a.Drain(context.Background(), "web", addr); err != nil {
			t.Fatal(err)
		}
	}
	if got := vipRoutes(t, routes); len(got) != 0 {
		t.Fatalf("no usable backend: routes %v", got)
	}
	st, _ = h.a.Status(context.Background())
	if st.Node.VIPs[0].Reason != announce.ReasonNoBackend {
		t.Fatalf("reason %q", st.Node.VIPs[0].Reason)
	}
	if err := h.a.Undrain(context.Background(), "web", "198.18.2.14"); err != nil {
		t.Fatal(err)
	}
	if got := vipRoutes(t, routes); len(got) != 1 {
		t.Fatalf("undrained: routes %v", got)
	}

	// The program detached from an interface: withdrawn.
	h.dp.SetAttachments(nil)
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if got := vipRoutes(t, routes); len(got) != 0 {
		t.Fatalf("detached: routes %v", got)
	}
}

func TestNodeDrainWithdrawsThenDone(t *testing.T) {
	routes := announce.NewFake()
	h := newAnnounceHarness(t, nil, routes, baseConfig+bgpSection, t.TempDir())
	// A flow that keeps getting packets until the router moved it.
	slot := h.slotOf(be1)
	flow := datapath.Flow{Client: netip.MustParseAddrPort("198.18.0.2:40000"), VIP: vip, Proto: datapath.TCP, ServiceID: 1,
		BackendSlot: slot, BackendGen: h.dp.Backend(slot).Gen, Backend: be1, State: datapath.FlowEstablished}
	h.dp.AddFlow(flow)
	if err := h.a.NodeDrain(context.Background(), time.Minute, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := vipRoutes(t, routes); len(got) != 0 {
		t.Fatalf("draining: routes %v", got)
	}
	if err := h.tick(4 * time.Second); err != nil {
		t.Fatal(err)
	}
	if st, _ := h.a.Status(context.Background()); st.Node.State != "draining" {
		t.Fatalf("a flow with a packet just now, yet %s", st.Node.State)
	}
	// The flow's packets stopped (the router sends them elsewhere).
	flow.Idle = 4 * time.Second
	h.dp.AddFlow(flow)
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	st, _ := h.a.Status(context.Background())
	if st.Node.State != "drained" || st.Node.Drain == nil || st.Node.Drain.Cause != "quiet" {
		t.Fatalf("node %+v", st.Node)
	}
	if err := h.a.NodeUndrain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := vipRoutes(t, routes); len(got) != 1 {
		t.Fatalf("undrained: routes %v", got)
	}
	// Without a bgp section there is nothing to drain.
	plain := newHarness(t, nil, baseConfig)
	if err := plain.a.NodeDrain(context.Background(), 0, 0); err == nil {
		t.Fatal("node drain without bgp accepted")
	}
}
