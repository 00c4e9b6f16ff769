package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ensureNeighbour makes the kernel keep the next hop towards addr resolved:
// a "managed" neighbour entry (NTF_EXT_MANAGED, kernel 5.16+) is re-probed
// by the kernel itself and stays REACHABLE. Without it the first packets of
// a flow find no neighbour (bpf_fib_lookup NO_NEIGH) and go through the
// kernel, and in snat mode the kernel drops them outright: their source is
// one of its own addresses. Entries that already exist (learned, static or
// managed) are left alone.
func ensureNeighbour(addr netip.Addr) error {
	routes, err := netlink.RouteGet(net.IP(addr.AsSlice()))
	if err != nil {
		return fmt.Errorf("route to %v: %w", addr, err)
	}
	if len(routes) == 0 {
		return fmt.Errorf("route to %v: none", addr)
	}
	rt := routes[0]
	if rt.Type == unix.RTN_LOCAL {
		return nil
	}
	hop := addr
	if rt.Gw != nil {
		if gw, ok := netip.AddrFromSlice(rt.Gw); ok {
			hop = gw.Unmap()
		}
	}
	family := netlink.FAMILY_V4
	if !hop.Is4() {
		family = netlink.FAMILY_V6
	}
	existing, err := netlink.NeighList(rt.LinkIndex, family)
	if err != nil {
		return fmt.Errorf("list neighbours: %w", err)
	}
	for _, n := range existing {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || ip.Unmap() != hop {
			continue
		}
		// A managed, static or currently valid entry is left alone.
		valid := netlink.NUD_PERMANENT | netlink.NUD_NOARP | netlink.NUD_REACHABLE |
			netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE
		if n.FlagsExt&netlink.NTF_EXT_MANAGED != 0 || n.State&valid != 0 {
			return nil
		}
	}
	n := &netlink.Neigh{
		LinkIndex: rt.LinkIndex,
		Family:    family,
		IP:        net.IP(hop.AsSlice()),
		State:     netlink.NUD_NONE,
		FlagsExt:  netlink.NTF_EXT_MANAGED,
	}
	if err := netlink.NeighSet(n); err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("managed neighbour for %v (kernel too old?): %w", hop, err)
		}
		return fmt.Errorf("managed neighbour for %v: %w", hop, err)
	}
	return nil
}
