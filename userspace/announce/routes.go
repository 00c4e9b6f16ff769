package announce

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Routes is the routing table the VIP routes live in: what the node's BGP
// daemon exports. Implementations are idempotent: adding a route that is
// there or deleting one that is not is no error.
type Routes interface {
	// List returns the VIPs that have a route of ours.
	List() ([]netip.Addr, error)
	// Add installs the route of vip.
	Add(vip netip.Addr) error
	// Delete removes the route of vip.
	Delete(vip netip.Addr) error
}

// Netlink is Routes in a kernel routing table: one blackhole /32 per VIP,
// in Table, marked with Protocol. The table is one no ip rule looks at, so
// the routes change nothing in the node's own forwarding (the XDP program
// takes the VIP's packets before any route is looked at); they exist to be
// exported. They belong to the kernel, not to the agent: they outlive it,
// so an agent that dies or restarts withdraws nothing.
type Netlink struct {
	Table    int
	Protocol int
}

var _ Routes = Netlink{}

func (n Netlink) route(vip netip.Addr) *netlink.Route {
	return &netlink.Route{
		Dst:      &net.IPNet{IP: net.IP(vip.AsSlice()), Mask: net.CIDRMask(32, 32)},
		Table:    n.Table,
		Protocol: netlink.RouteProtocol(n.Protocol),
		Type:     unix.RTN_BLACKHOLE,
		Family:   netlink.FAMILY_V4,
	}
}

// List implements Routes: the /32 routes of Table with Protocol.
func (n Netlink) List() ([]netip.Addr, error) {
	filter := &netlink.Route{Table: n.Table, Protocol: netlink.RouteProtocol(n.Protocol)}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, fmt.Errorf("list routes of table %d: %w", n.Table, err)
	}
	var out []netip.Addr
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		if ones, bits := r.Dst.Mask.Size(); ones != 32 || bits != 32 {
			continue
		}
		if ip, ok := netip.AddrFromSlice(r.Dst.IP.To4()); ok {
			out = append(out, ip)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// Add implements Routes.
func (n Netlink) Add(vip netip.Addr) error {
	if err := netlink.RouteReplace(n.route(vip)); err != nil {
		return fmt.Errorf("add route %s/32 to table %d: %w", vip, n.Table, err)
	}
	return nil
}

// Delete implements Routes.
func (n Netlink) Delete(vip netip.Addr) error {
	err := netlink.RouteDel(n.route(vip))
	if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete route %s/32 from table %d: %w", vip, n.Table, err)
	}
	return nil
}

// Fake is Routes in memory, for tests; FailNext makes the next call fail.
type Fake struct {
	mu     sync.Mutex
	routes map[netip.Addr]bool
	fail   error
	calls  int
}

var _ Routes = (*Fake)(nil)

// NewFake returns a Fake holding vips.
func NewFake(vips ...netip.Addr) *Fake {
	f := &Fake{routes: make(map[netip.Addr]bool)}
	for _, v := range vips {
		f.routes[v] = true
	}
	return f
}

// FailNext makes the next call return err.
func (f *Fake) FailNext(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

// Changes counts the Add and Delete calls that changed the table.
func (f *Fake) Changes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *Fake) takeFail() error {
	err := f.fail
	f.fail = nil
	return err
}

// List implements Routes.
func (f *Fake) List() ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.takeFail(); err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(f.routes))
	for v := range f.routes {
		out = append(out, v)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// Add implements Routes.
func (f *Fake) Add(vip netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.takeFail(); err != nil {
		return err
	}
	if !f.routes[vip] {
		f.calls++
	}
	f.routes[vip] = true
	return nil
}

// Delete implements Routes.
func (f *Fake) Delete(vip netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.takeFail(); err != nil {
		return err
	}
	if f.routes[vip] {
		f.calls++
	}
	delete(f.routes, vip)
	return nil
}

// WithdrawAll deletes every route of r and returns how many there were
// (`sluice teardown`: the data path is going away).
func WithdrawAll(r Routes) (int, error) {
	vips, err := r.List()
	if err != nil {
		return 0, err
	}
	var errs []error
	for _, v := range vips {
		if err := r.Delete(v); err != nil {
			errs = append(errs, err)
		}
	}
	return len(vips), errors.Join(errs...)
}
