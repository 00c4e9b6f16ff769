package announce

import (
	"net"
	"net/netip"
	"runtime"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/internal/testenv"
)

// inNetns runs fn on a thread in a fresh network namespace.
func inNetns(t *testing.T, fn func()) {
	t.Helper()
	testenv.RequireRoot(t, "network namespaces")
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the namespace
		ns, err := netns.New()
		if err != nil {
			t.Error(err)
			return
		}
		defer ns.Close()
		fn()
	}()
	<-done
}

// The kernel side: routes of our table and protocol are listed, added and
// deleted idempotently; a route of another protocol in the same table, or
// of ours in another table, is never touched.
func TestNetlinkRoutes(t *testing.T) {
	inNetns(t, func() {
		r := Netlink{Table: 4153, Protocol: 201}
		other := &netlink.Route{Dst: &net.IPNet{IP: net.IPv4(198, 18, 1, 200), Mask: net.CIDRMask(32, 32)},
			Table: 4153, Protocol: 12, Type: unix.RTN_BLACKHOLE}
		if err := netlink.RouteAdd(other); err != nil {
			t.Error(err)
			return
		}
		elsewhere := Netlink{Table: 4154, Protocol: 201}
		for _, step := range []func() error{
			func() error { return r.Add(vipA) },
			func() error { return r.Add(vipA) }, // idempotent
			func() error { return r.Add(vipB) },
			func() error { return elsewhere.Add(vipB) },
			func() error { return r.Delete(vipB) },
			func() error { return r.Delete(vipB) }, // idempotent
		} {
			if err := step(); err != nil {
				t.Error(err)
				return
			}
		}
		got, err := r.List()
		if err != nil || !slices.Equal(got, []netip.Addr{vipA}) {
			t.Errorf("List: %v %v", got, err)
		}
		if n, err := WithdrawAll(r); err != nil || n != 1 {
			t.Errorf("WithdrawAll: %d %v", n, err)
		}
		if got, _ := r.List(); len(got) != 0 {
			t.Errorf("after WithdrawAll: %v", got)
		}
		if got, _ := elsewhere.List(); len(got) != 1 {
			t.Errorf("another table lost its route: %v", got)
		}
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: 4153}, netlink.RT_FILTER_TABLE)
		if err != nil || len(routes) != 1 || routes[0].Protocol != 12 {
			t.Errorf("the other protocol's route: %v %v", routes, err)
		}
	})
}
