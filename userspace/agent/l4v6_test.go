package agent

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/sluicelb/sluice/userspace/datapath"
)

// TestL4DualStack: a dual-stack pool behind an IPv4 and an IPv6 tcp
// service: every address gets a data-path slot, each service's Maglev
// table holds only the slots of its own family, and both services are in
// the data path under their VIPs.
func TestL4DualStack(t *testing.T) {
	const cfg = `interfaces: [veth0]
pools:
  - name: web
    backends:
      - address: 198.18.2.11:80
      - address: "[2001:2:0:2::11]:80"
      - address: "[2001:2:0:2::12]:80"
services:
  - name: web-l4
    listen: 198.18.1.100:80
    protocol: tcp
    pool: web
  - name: web6-l4
    listen: "[2001:2:0:1::100]:80"
    protocol: tcp
    mode: snat
    pool: web
`
	h := newHarness(t, nil, cfg)
	v4 := netip.MustParseAddrPort("198.18.2.11:80")
	v6a := netip.MustParseAddrPort("[2001:2:0:2::11]:80")
	v6b := netip.MustParseAddrPort("[2001:2:0:2::12]:80")
	svcs, err := h.dp.Services()
	if err != nil {
		t.Fatal(err)
	}
	k4 := datapath.ServiceKey{VIP: netip.MustParseAddr("198.18.1.100"), Port: 80, Proto: datapath.TCP}
	k6 := datapath.ServiceKey{VIP: netip.MustParseAddr("2001:2:0:1::100"), Port: 80, Proto: datapath.TCP}
	s4, ok4 := svcs[k4]
	s6, ok6 := svcs[k6]
	if !ok4 || !ok6 || s6.Mode != datapath.ModeSNAT || s4.ID == s6.ID {
		t.Fatalf("services %+v", svcs)
	}
	want6 := []uint32{h.slotOf(v6a), h.slotOf(v6b)}
	slices.Sort(want6)
	if got := h.tableSlots(s4.ID); !slices.Equal(got, []uint32{h.slotOf(v4)}) {
		t.Errorf("IPv4 service's table = %v, want the IPv4 address's slot %d", got, h.slotOf(v4))
	}
	if got := h.tableSlots(s6.ID); !slices.Equal(got, want6) {
		t.Errorf("IPv6 service's table = %v, want the IPv6 addresses' slots %v", got, want6)
	}
	if b := h.dp.Backend(h.slotOf(v6a)); b.Addr != v6a || b.State != datapath.BackendActive {
		t.Errorf("slot of %s holds %+v", v6a, b)
	}
}
