package datapath

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/sluicelb/sluice/internal/testenv"
)

const (
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

var verdictName = map[uint32]string{0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}

// xdpMd mirrors the kernel's struct xdp_md (the program's context).
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

var (
	client  = netip.MustParseAddrPort("198.18.0.2:40000")
	vip     = netip.MustParseAddrPort("198.18.1.100:80")
	vipUDP  = netip.MustParseAddrPort("198.18.1.100:53")
	vipNone = netip.MustParseAddrPort("198.18.1.101:80")
	be1     = netip.MustParseAddrPort("198.18.2.11:80")
	be2     = netip.MustParseAddrPort("198.18.2.12:80")
	be3     = netip.MustParseAddrPort("198.18.2.13:80") // no neighbour entry
	beUDP   = netip.MustParseAddrPort("198.18.2.11:53")
	macBE1  = [6]byte{0x02, 0, 0, 0, 0x02, 0x0b}
	macBE2  = [6]byte{0x02, 0, 0, 0, 0x02, 0x0c}
)

// lab is a network namespace holding the two sides of a load balancer
// (veth "tc" towards the client, "tb" towards the backends) with static
// neighbours, so bpf_fib_lookup succeeds inside prog.Run.
type lab struct {
	clientIf, backendIf *net.Interface
	r                   *Real
	work                chan func()
}

func requireRoot(tb testing.TB) {
	tb.Helper()
	testenv.RequireRoot(tb, "BPF tests (CAP_BPF, CAP_NET_ADMIN)")
}

// newLab starts a goroutine locked to a thread that lives in a fresh
// network namespace; every netlink call and every prog.Run of the test goes
// through it (subtests run on other goroutines, hence other threads and
// namespaces). The program is loaded with its maps pinned in a temporary
// directory. Everything is undone by tb.Cleanup.
func newLab(tb testing.TB, tableSize uint32) *lab {
	return newLabSized(tb, tableSize, testConntrackMax)
}

// testConntrackMax keeps the tests' tables small (a flood fills the
// half-open table, conntrack_max/4, in a few thousand frames).
const testConntrackMax = 16384

// newLabSized is newLab with a conntrack size.
func newLabSized(tb testing.TB, tableSize, conntrackMax uint32) *lab {
	tb.Helper()
	requireRoot(tb)
	l := &lab{work: make(chan func())}
	ready := make(chan error)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the namespace
		orig, err := netns.Get()
		if err != nil {
			ready <- err
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			ready <- err
			return
		}
		defer ns.Close()
		ready <- nil
		for fn := range l.work {
			fn()
		}
		close(done)
	}()
	if err := <-ready; err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { close(l.work); <-done })

	var setupErr error
	l.exec(func() { setupErr = l.setup() })
	if setupErr != nil {
		tb.Fatal(setupErr)
	}
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("sluice-test-%d", os.Getpid()))
	sweepDeadLabs()
	_ = Teardown(pin)
	r, err := Open(Options{PinPath: pin, MaglevTableSize: tableSize, ConntrackMax: conntrackMax, NoNeighbours: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		r.Close()
		if err := Teardown(pin); err != nil {
			tb.Errorf("teardown: %v", err)
		}
	})
	l.r = r
	return l
}

// exec runs fn on the lab's namespace thread.
func (l *lab) exec(fn func()) {
	ch := make(chan struct{})
	l.work <- func() { fn(); close(ch) }
	<-ch
}

func (l *lab) setup() error {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0); err != nil {
		return fmt.Errorf("enable forwarding: %w", err)
	}
	mk := func(name, peer, cidr string, neigh []netip.Addr, macs [][6]byte) (*net.Interface, error) {
		la := netlink.NewLinkAttrs()
		la.Name = name
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: peer}); err != nil {
			return nil, fmt.Errorf("add veth %s: %w", name, err)
		}
		link, err := netlink.LinkByName(name)
		if err != nil {
			return nil, err
		}
		peerLink, err := netlink.LinkByName(peer)
		if err != nil {
			return nil, err
		}
		addr, _ := netlink.ParseAddr(cidr)
		if err := netlink.AddrAdd(link, addr); err != nil {
			return nil, fmt.Errorf("add address: %w", err)
		}
		for _, x := range []netlink.Link{link, peerLink} {
			if err := netlink.LinkSetUp(x); err != nil {
				return nil, fmt.Errorf("link up: %w", err)
			}
		}
		for i, ip := range neigh {
			n := &netlink.Neigh{LinkIndex: link.Attrs().Index, State: netlink.NUD_PERMANENT, IP: net.IP(ip.AsSlice()), HardwareAddr: net.HardwareAddr(macs[i][:])}
			if err := netlink.NeighAdd(n); err != nil {
				return nil, fmt.Errorf("add neighbour: %w", err)
			}
		}
		return net.InterfaceByName(name)
	}
	var err error
	l.clientIf, err = mk("tc", "tcp0", "198.18.0.1/24", []netip.Addr{client.Addr()}, [][6]byte{macClient})
	if err != nil {
		return err
	}
	l.backendIf, err = mk("tb", "tbp0", "198.18.2.1/24", []netip.Addr{be1.Addr(), be2.Addr()}, [][6]byte{macBE1, macBE2})
	if err != nil {
		return err
	}
	return l.setup6()
}

func (l *lab) run(tb testing.TB, in []byte, ingress *net.Interface) (uint32, []byte) {
	tb.Helper()
	ret, out, err := l.try(in, ingress)
	if err != nil {
		tb.Fatalf("prog run: %v", err)
	}
	return ret, out
}

// try runs one frame through the program and returns the verdict and the
// output frame, exactly as long as the program left it.
func (l *lab) try(in []byte, ingress *net.Interface) (uint32, []byte, error) {
	opts := &ebpf.RunOptions{
		Data:    in,
		DataOut: make([]byte, len(in)+256),
		Context: xdpMd{DataEnd: uint32(len(in)), IngressIfindex: uint32(ingress.Index)},
	}
	var ret uint32
	var err error
	l.exec(func() { ret, err = l.r.prog.Run(opts) })
	return ret, opts.DataOut, err
}

// fill sets every table entry to slot.
func fill(size uint32, slots ...uint32) []uint32 {
	t := make([]uint32, size)
	for i := range t {
		t[i] = slots[i%len(slots)]
	}
	return t
}

func mustSet(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestXDP runs every case of xdpCases on its own: the maps are reset to
// the baseline before each one, so a case fails alone and never because of
// the one before it.
func TestXDP(t *testing.T) {
	l := newLab(t, testTableSize)
	for _, c := range append(xdpCases(), dsrCases()...) {
		t.Run(c.name, func(t *testing.T) {
			l.prepare(t, c)
			ret, out := l.run(t, c.in.frame, l.ingress(c.in.fromBE))
			if ret != c.verdict {
				t.Fatalf("verdict %s, want %s", verdictName[ret], verdictName[c.verdict])
			}
			if c.verdict != xdpDrop {
				want := c.in.frame
				if c.want != nil {
					want = c.want(l, c.in.frame)
				}
				if !bytes.Equal(out, want) {
					t.Errorf("output frame differs from the expected one:\n got %x\nwant %x", out, want)
				}
			}
			if c.after != nil {
				c.after(t, l)
			}
		})
	}
}

// trimFrame cuts the output buffer to the IPv4 total length (14 bytes of
// Ethernet header plus the IPv4 header's total length).
func trimFrame(b []byte) []byte {
	if len(b) < 18 {
		return b
	}
	n := 14 + (int(b[16])<<8 | int(b[17]))
	if n > len(b) || n < 14 {
		return b
	}
	return b[:n]
}

// TestOpenLocks: a second Open of the same pin path is refused while the
// first holds it, and allowed once it is closed.
func TestOpenLocks(t *testing.T) {
	requireRoot(t)
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("sluice-locktest-%d", os.Getpid()))
	t.Cleanup(func() { _ = Teardown(pin) })
	r1, err := Open(Options{PinPath: pin, MaglevTableSize: 251})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Options{PinPath: pin, MaglevTableSize: 251}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	r1.Close()
	r2, err := Open(Options{PinPath: pin, MaglevTableSize: 251})
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	r2.Close()
}
