package agent

import (
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/sluicelb/sluice/l7/proxy"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/pool"
)

// An http service sees only its own family's addresses of a dual-stack
// pool, and the pool's DNS wait and transitions still reach it.
func TestFamilyView(t *testing.T) {
	p := pool.New("web", pool.Config{DrainTimeout: time.Second}, slog.New(slog.DiscardHandler), nil)
	v4 := netip.MustParseAddrPort("198.18.2.11:80")
	v6 := netip.MustParseAddrPort("[2001:2:0:2::11]:80")
	p.SetSource(time.Now(), pool.SourceStatic, []pool.Desired{{Addr: v4}, {Addr: v6}})
	for _, c := range []struct {
		listen string
		want   netip.AddrPort
	}{
		{"198.18.1.101:80", v4},
		{"0.0.0.0:80", v4},
		{"[2001:2::100]:80", v6},
		{"[::]:80", v6},
	} {
		svc := config.Service{Name: "s", Listen: c.listen} // ListenAddr unset: parsed from Listen
		view := familyView(svc, p)
		got := view.Backends()
		if len(got) != 1 || got[0].Addr != c.want {
			t.Errorf("%s: backends %v, want %s", c.listen, got, c.want)
		}
		if _, ok := view.(proxy.DNSWaiter); !ok {
			t.Errorf("%s: the view hides the pool's DNS wait", c.listen)
		}
		if _, ok := view.(interface{ Subscribe(pool.Observer) func() }); !ok {
			t.Errorf("%s: the view hides the pool's transitions", c.listen)
		}
	}
	if all := p.Backends(); !slices.ContainsFunc(all, func(b pool.Backend) bool { return b.Addr == v6 }) || len(all) != 2 {
		t.Errorf("the pool itself lost an address: %v", all)
	}
}
