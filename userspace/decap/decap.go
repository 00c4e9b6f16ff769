// Package decap is the backend side of direct server return (mode dsr):
// it loads bpf/decap.c, which strips the outer IPv4 header a sluice node
// put around a client's packet, attaches it (XDP) to the backend's
// interfaces, and does the host setup a DSR backend needs. `sluice decap`
// is its command line.
//
// Everything lives under one bpffs directory (PinPath): the vips map, the
// counters and one pinned XDP link per interface, so the program keeps
// running after the command exits, a second `sluice decap attach` updates
// the VIPs in place, and `sluice decap detach` removes it all.
//
// The setup (Setup): each VIP on the loopback device (/32), so the kernel
// accepts the decapsulated packets and the backend's answers leave from
// the VIP; arp_ignore=1 and arp_announce=2, so the backend never answers
// or uses the VIP in ARP (the router must keep sending the VIP to the
// sluice nodes); rp_filter=2 (loose) on the interfaces, since the clients'
// packets arrive from a node, not from the backend's route to them.
package decap

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/userspace/datapath"
)

// DefaultPinPath is where `sluice decap` pins its program, maps and links.
const DefaultPinPath = "/sys/fs/bpf/sluice-decap"

// Options configure Attach.
type Options struct {
	// Interfaces receive the encapsulated packets (at least one).
	Interfaces []string
	// VIPs are the addresses of the dsr services this backend serves.
	VIPs []netip.Addr
	// PinPath is the bpffs directory (default DefaultPinPath).
	PinPath string
	// XDPMode is auto (native, generic as a fallback), native or generic.
	XDPMode string
}

// Counters are the program's counters summed over CPUs.
type Counters struct {
	Decapsulated, NotOurs, UnknownVIP, Malformed uint64
}

// Status is what is attached under a pin path.
type Status struct {
	// Interfaces have a pinned link; Lost says, for those whose link no
	// longer runs the program there, why (datapath.XDPLinkLost).
	Interfaces []string
	Lost       map[string]string
	VIPs       []netip.Addr
	Counters   Counters
}

func pinPath(p string) string {
	if p == "" {
		return DefaultPinPath
	}
	return p
}

func linkPin(dir, ifname string) string { return filepath.Join(dir, "link_"+ifname) }

// Attach loads the program (or adopts the pinned one), makes the vips map
// hold exactly o.VIPs and attaches the program to every interface of o
// that has no link yet. Interfaces attached before and not in o stay.
func Attach(o Options) (err error) {
	if len(o.Interfaces) == 0 || len(o.VIPs) == 0 {
		return errors.New("decap: at least one interface and one VIP are needed")
	}
	for _, v := range o.VIPs {
		if !v.Is4() {
			return fmt.Errorf("decap: VIP %s: only IPv4 is encapsulated", v)
		}
	}
	dir := pinPath(o.PinPath)
	objs, err := load(dir)
	if err != nil {
		return err
	}
	defer objs.Close()
	if err := setVIPs(objs.Vips, o.VIPs); err != nil {
		return err
	}
	for _, name := range o.Interfaces {
		if _, err := attach(objs.SluiceDecap, dir, name, o.XDPMode); err != nil {
			return err
		}
	}
	return nil
}

// load loads the program on the maps pinned under dir (those of an
// earlier attach: the program attached then reads them, so new VIPs must
// go there), and pins the maps it made.
func load(dir string) (*bpf.DecapObjects, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("decap: pin directory: %w", err)
	}
	repl := map[string]*ebpf.Map{}
	for _, name := range []string{"vips", "decap_stats"} {
		if m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil); err == nil {
			repl[name] = m
			defer m.Close()
		}
	}
	var objs bpf.DecapObjects
	if err := bpf.LoadDecapObjects(&objs, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("decap: load program: %+v", ve)
		}
		return nil, fmt.Errorf("decap: load program: %w", err)
	}
	if err := pinMaps(&objs, dir); err != nil {
		objs.Close()
		return nil, err
	}
	return &objs, nil
}

// pinMaps pins the maps by name, unless they are pinned already.
func pinMaps(objs *bpf.DecapObjects, dir string) error {
	for name, m := range map[string]*ebpf.Map{"vips": objs.Vips, "decap_stats": objs.DecapStats} {
		p := filepath.Join(dir, name)
		if pinned, err := ebpf.LoadPinnedMap(p, nil); err == nil {
			pinned.Close()
			continue
		}
		if err := m.Pin(p); err != nil {
			return fmt.Errorf("decap: pin map %s: %w", name, err)
		}
	}
	return nil
}

func setVIPs(m *ebpf.Map, vips []netip.Addr) error {
	want := make(map[[4]byte]bool, len(vips))
	for _, v := range vips {
		want[v.As4()] = true
	}
	var k [4]byte
	var val uint8
	var stale [][4]byte
	it := m.Iterate()
	for it.Next(&k, &val) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("decap: read vips: %w", err)
	}
	for _, s := range stale {
		if err := m.Delete(s); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("decap: delete vip: %w", err)
		}
	}
	for v := range want {
		if err := m.Put(v, uint8(1)); err != nil {
			return fmt.Errorf("decap: add vip %s: %w", netip.AddrFrom4(v), err)
		}
	}
	return nil
}

// attach attaches prog to interface name and pins the link, unless a
// pinned link runs a program there already. It says why it attached
// ("" when the pinned link was alive): the pinned link found lost (see
// datapath.XDPLinkLost), or none pinned.
func attach(prog *ebpf.Program, dir, name, mode string) (why string, err error) {
	pin := linkPin(dir, name)
	why = "no link pinned"
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		why = datapath.XDPLinkLost(l, name)
		if why == "" {
			// Attached: the pinned program reads the same maps.
			l.Close()
			return "", nil
		}
		// A dead link (its interface gone or made again, or detached by
		// another tool): its pin goes, a new link takes its place.
		_ = l.Unpin()
		l.Close()
	}
	_ = os.Remove(pin)
	iface, err := net.InterfaceByName(name)
	if err != nil {
		return why, fmt.Errorf("decap: interface %s: %w", name, err)
	}
	l, _, err := datapath.AttachXDP(prog, iface.Index, mode, nil)
	if err != nil {
		return why, fmt.Errorf("decap: attach to %s: %w", name, err)
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return why, fmt.Errorf("decap: pin link of %s: %w", name, err)
	}
	return why, nil
}

// Detach removes the links (the program leaves the interfaces) and the
// maps under the pin path. Nothing pinned is no error.
func Detach(path string) error {
	dir := pinPath(path)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("decap: %w", err)
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), "link_") {
			if l, err := link.LoadPinnedLink(p, nil); err == nil {
				errs = append(errs, l.Unpin())
				l.Close()
				continue
			}
		}
		errs = append(errs, os.Remove(p))
	}
	errs = append(errs, os.Remove(dir))
	return errors.Join(errs...)
}

// Read returns what is attached under the pin path.
func Read(path string) (Status, error) {
	dir := pinPath(path)
	var st Status
	entries, err := os.ReadDir(dir)
	if err != nil {
		return st, fmt.Errorf("decap: nothing attached under %s: %w", dir, err)
	}
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), "link_")
		if !ok {
			continue
		}
		st.Interfaces = append(st.Interfaces, name)
		why := "the link's pin cannot be opened"
		if l, err := link.LoadPinnedLink(filepath.Join(dir, e.Name()), nil); err == nil {
			why = datapath.XDPLinkLost(l, name)
			l.Close()
		}
		if why != "" {
			if st.Lost == nil {
				st.Lost = map[string]string{}
			}
			st.Lost[name] = why
		}
	}
	vips, err := ebpf.LoadPinnedMap(filepath.Join(dir, "vips"), nil)
	if err != nil {
		return st, fmt.Errorf("decap: vips map: %w", err)
	}
	defer vips.Close()
	var k [4]byte
	var v uint8
	it := vips.Iterate()
	for it.Next(&k, &v) {
		st.VIPs = append(st.VIPs, netip.AddrFrom4(k))
	}
	if err := it.Err(); err != nil {
		return st, fmt.Errorf("decap: read vips: %w", err)
	}
	slices.SortFunc(st.VIPs, netip.Addr.Compare)
	stats, err := ebpf.LoadPinnedMap(filepath.Join(dir, "decap_stats"), nil)
	if err != nil {
		return st, fmt.Errorf("decap: counters: %w", err)
	}
	defer stats.Close()
	st.Counters, err = readCounters(stats)
	return st, err
}

func readCounters(m *ebpf.Map) (Counters, error) {
	var per []bpf.DecapDecapCounters
	if err := m.Lookup(uint32(0), &per); err != nil {
		return Counters{}, fmt.Errorf("decap: read counters: %w", err)
	}
	var c Counters
	for _, p := range per {
		c.Decapsulated += p.Decapsulated
		c.NotOurs += p.NotOurs
		c.UnknownVIP += p.UnknownVip
		c.Malformed += p.Malformed
	}
	return c, nil
}

// Setup does the host side of a DSR backend: every VIP on the loopback
// device, arp_ignore=1 and arp_announce=2 (all and each interface), and
// loose rp_filter (2) on all and each interface. It is idempotent.
func Setup(interfaces []string, vips []netip.Addr) error {
	if _, err := vipsOnLo(vips); err != nil {
		return err
	}
	for _, dev := range append([]string{"all"}, interfaces...) {
		for key, val := range map[string]string{"arp_ignore": "1", "arp_announce": "2", "rp_filter": "2"} {
			p := filepath.Join("/proc/sys/net/ipv4/conf", dev, key)
			if err := os.WriteFile(p, []byte(val), 0o644); err != nil {
				return fmt.Errorf("decap setup: %s=%s: %w", p, val, err)
			}
		}
	}
	return nil
}

// vipsOnLo puts every VIP missing from the loopback device on it (/32)
// and returns those it added.
func vipsOnLo(vips []netip.Addr) (added []netip.Addr, err error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("decap setup: loopback: %w", err)
	}
	have, err := netlink.AddrList(lo, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("decap setup: addresses of lo: %w", err)
	}
	for _, v := range vips {
		if slices.ContainsFunc(have, func(a netlink.Addr) bool {
			ip, ok := netip.AddrFromSlice(a.IP)
			ones, _ := a.Mask.Size()
			return ok && ip.Unmap() == v && ones == 32
		}) {
			continue
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(v.AsSlice()), Mask: net.CIDRMask(32, 32)}}
		if err := netlink.AddrReplace(lo, a); err != nil {
			return added, fmt.Errorf("decap setup: add %s to lo: %w", v, err)
		}
		added = append(added, v)
	}
	return added, nil
}
