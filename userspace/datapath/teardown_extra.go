package datapath

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// PinPathHeld reports whether a process (an agent) holds the pin
// directory's lock (see Open). A missing directory is not held.
func PinPathHeld(dir string) (bool, error) {
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("open pin directory %s: %w", dir, err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return true, nil
		}
		return false, fmt.Errorf("probe the lock of %s: %w", dir, err)
	}
	// Ours for a moment: nobody held it. Closing the file releases it.
	return false, nil
}

// RemoveManagedNeighbours removes the managed neighbour entries
// (NTF_EXT_MANAGED) of the next hops towards the backends of the data
// path pinned under pinPath: the ones the agent adds for active backends
// (see ensureNeighbour). Call it before Teardown, which removes the map it
// reads. It returns how many it removed. Learned, static and permanent
// entries are left alone; so are managed entries of hops that are no
// backend's.
func RemoveManagedNeighbours(pinPath string) (int, error) {
	// Only the backends map is read, whose layout every release so far
	// shares: a teardown must work over another release's pins.
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinPath, "backends"), nil)
	if err != nil {
		return 0, fmt.Errorf("open pinned map backends: %w", err)
	}
	r := &Real{backends: m}
	defer r.Close()
	backends, err := r.Backends()
	if err != nil {
		return 0, err
	}
	type hop struct {
		link int
		ip   netip.Addr
	}
	hops := make(map[hop]bool)
	for _, b := range backends {
		if b.State == BackendFree || !b.Addr.Addr().IsValid() {
			continue
		}
		routes, err := netlink.RouteGet(net.IP(b.Addr.Addr().AsSlice()))
		if err != nil || len(routes) == 0 || routes[0].Type == unix.RTN_LOCAL {
			continue
		}
		h := hop{routes[0].LinkIndex, b.Addr.Addr()}
		if gw, ok := netip.AddrFromSlice(routes[0].Gw); ok {
			h.ip = gw.Unmap()
		}
		hops[h] = true
	}
	removed := 0
	var errs []error
	links := make(map[int]bool)
	for h := range hops {
		links[h.link] = true
	}
	for link := range links {
		var neighs []netlink.Neigh
		for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			ns, err := netlink.NeighList(link, family)
			if err != nil {
				errs = append(errs, fmt.Errorf("list neighbours of link %d: %w", link, err))
				continue
			}
			neighs = append(neighs, ns...)
		}
		for _, n := range neighs {
			ip, ok := netip.AddrFromSlice(n.IP)
			if !ok || n.FlagsExt&netlink.NTF_EXT_MANAGED == 0 || !hops[hop{link, ip.Unmap()}] {
				continue
			}
			if err := netlink.NeighDel(&n); err != nil {
				errs = append(errs, fmt.Errorf("remove managed neighbour %s: %w", ip, err))
				continue
			}
			removed++
		}
	}
	return removed, errors.Join(errs...)
}
