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
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			tb.Fatal("BPF tests need root, and CI runs as root")
		}
		tb.Skip("BPF tests need root (CAP_BPF, CAP_NET_ADMIN): skipped")
	}
}

// newLab starts a goroutine locked to a thread that lives in a fresh
// network namespace; every netlink call and every prog.Run of the test goes
// through it (subtests run on other goroutines, hence other threads and
// namespaces). The program is loaded with its maps pinned in a temporary
// directory. Everything is undone by tb.Cleanup.
func newLab(tb testing.TB, tableSize uint32) *lab {
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
	_ = Teardown(pin)
	r, err := Open(Options{PinPath: pin, MaglevTableSize: tableSize, NoNeighbours: true})
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
	return err
}

func (l *lab) run(tb testing.TB, in []byte, ingress *net.Interface) (uint32, []byte) {
	tb.Helper()
	out := make([]byte, len(in)+256)
	ctx := xdpMd{DataEnd: uint32(len(in)), IngressIfindex: uint32(ingress.Index)}
	var ret uint32
	var err error
	l.exec(func() { ret, err = l.r.prog.Run(&ebpf.RunOptions{Data: in, DataOut: out, Context: ctx}) })
	if err != nil {
		tb.Fatalf("prog run: %v", err)
	}
	return ret, out
}

// fill sets every table entry to slot.
func fill(size uint32, slots ...uint32) []uint32 {
	t := make([]uint32, size)
	for i := range t {
		t[i] = slots[i%len(slots)]
	}
	return t
}

// step is one packet through the program after an optional change to the
// maps, with the verdict and output packet it must produce.
type step struct {
	name    string
	setup   func(t *testing.T, l *lab)
	in      pkt
	fromBE  bool // arrives on the backend-side interface
	verdict uint32
	// check inspects the parsed output; nil with verdict PASS means "unchanged".
	check func(t *testing.T, in []byte, out parsed, raw []byte)
}

func mustSet(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestXDPProgram(t *testing.T) {
	const size = 251
	l := newLab(t, size)
	r := l.r
	mustSet(t, r.SetService(ServiceKey{VIP: vip.Addr(), Port: vip.Port(), Proto: TCP}, Service{ID: 1}))
	mustSet(t, r.SetService(ServiceKey{VIP: vipUDP.Addr(), Port: vipUDP.Port(), Proto: UDP}, Service{ID: 2}))
	mustSet(t, r.SetService(ServiceKey{VIP: vipNone.Addr(), Port: vipNone.Port(), Proto: TCP}, Service{ID: 3}))
	mustSet(t, r.SetBackend(1, Backend{Addr: be1, Gen: 1, State: BackendActive, PoolID: PoolID("web")}))
	mustSet(t, r.SetBackend(2, Backend{Addr: be2, Gen: 1, State: BackendActive, PoolID: PoolID("web")}))
	mustSet(t, r.SetBackend(3, Backend{Addr: beUDP, Gen: 1, State: BackendActive, PoolID: PoolID("dns")}))
	mustSet(t, r.SetBackend(4, Backend{Addr: be3, Gen: 1, State: BackendActive, PoolID: PoolID("web")}))
	mustSet(t, r.SetTable(1, fill(size, 1)))
	mustSet(t, r.SetTable(2, fill(size, 3)))

	client2 := netip.AddrPortFrom(client.Addr(), 40001)
	client3 := netip.AddrPortFrom(client.Addr(), 40002)
	expectDNAT := func(to netip.AddrPort, mac [6]byte) func(t *testing.T, in []byte, out parsed, raw []byte) {
		return func(t *testing.T, in []byte, out parsed, raw []byte) {
			orig, _ := parse(in)
			if out.dst != to {
				t.Errorf("destination %v, want %v", out.dst, to)
			}
			if out.src != orig.src {
				t.Errorf("source %v changed (want %v): nat mode keeps the client address", out.src, orig.src)
			}
			if out.ttl != orig.ttl-1 {
				t.Errorf("ttl %d, want %d", out.ttl, orig.ttl-1)
			}
			if out.dstMAC != mac {
				t.Errorf("dst mac %x, want %x", out.dstMAC, mac)
			}
			if out.seq != orig.seq || out.ack != orig.ack || out.flags != orig.flags || out.payloadLen != orig.payloadLen {
				t.Errorf("tcp fields changed: %+v -> %+v", orig, out)
			}
			// The whole frame, byte for byte, against a rewrite done here
			// from scratch (full checksums, not incremental ones).
			want := natExpected(in, to, mac, [6]byte(l.backendIf.HardwareAddr))
			if got := raw[:len(want)]; !bytes.Equal(got, want) {
				t.Errorf("output frame differs from the expected rewrite:\n got %x\nwant %x", got, want)
			}
		}
	}
	expectRST := func(wantSeq, wantAck uint32, wantFlags uint8) func(t *testing.T, in []byte, out parsed, raw []byte) {
		return func(t *testing.T, in []byte, out parsed, raw []byte) {
			orig, _ := parse(in)
			if out.src != orig.dst || out.dst != orig.src {
				t.Errorf("rst %v -> %v, want %v -> %v", out.src, out.dst, orig.dst, orig.src)
			}
			if out.flags != wantFlags || out.seq != wantSeq || out.ack != wantAck {
				t.Errorf("rst flags %#x seq %d ack %d, want %#x %d %d", out.flags, out.seq, out.ack, wantFlags, wantSeq, wantAck)
			}
			if out.frameLen != 54 || out.payloadLen != 0 {
				t.Errorf("rst frame %d bytes, payload %d", out.frameLen, out.payloadLen)
			}
			if out.dstMAC != macClient {
				t.Errorf("rst dst mac %x, want the sender's %x", out.dstMAC, macClient)
			}
		}
	}

	steps := []step{
		{name: "non-IP frame passes untouched", in: pkt{etherType: 0x0806}, verdict: xdpPass},
		{name: "non-VIP TCP passes untouched", in: pkt{src: client, dst: netip.MustParseAddrPort("198.18.0.1:22"), proto: TCP, flags: fSYN}, verdict: xdpPass},
		{name: "VIP on another port passes untouched", in: pkt{src: client, dst: netip.MustParseAddrPort("198.18.1.100:81"), proto: TCP, flags: fSYN}, verdict: xdpPass},
		{name: "truncated IPv4 header passes untouched", in: pkt{src: client, dst: vip, proto: TCP, flags: fSYN, truncateTo: 30}, verdict: xdpPass},
		{name: "truncated TCP header to VIP passes untouched", in: pkt{src: client, dst: vip, proto: TCP, flags: fSYN, truncateTo: 40}, verdict: xdpPass},
		{name: "fragment to VIP passes untouched", in: pkt{src: client, dst: vip, proto: TCP, flags: fSYN, fragOff: 0x2000}, verdict: xdpPass},
		{name: "non-first fragment to VIP passes untouched", in: pkt{src: client, dst: vip, proto: TCP, flags: fSYN, fragOff: 0x0010}, verdict: xdpPass},
		{name: "new flow SYN is NATed to the backend", in: pkt{src: client, dst: vip, proto: TCP, flags: fSYN, seq: 1000}, verdict: xdpRedirect, check: expectDNAT(be1, macBE1)},
		{name: "reply SYN-ACK is reverse-NATed to the VIP", fromBE: true, in: pkt{src: be1, dst: client, proto: TCP, flags: fSYN | fACK, seq: 5000, ack: 1001}, verdict: xdpRedirect,
			check: func(t *testing.T, in []byte, out parsed, raw []byte) {
				if out.src != vip || out.dst != client {
					t.Errorf("reply %v -> %v, want %v -> %v", out.src, out.dst, vip, client)
				}
				if out.dstMAC != macClient {
					t.Errorf("dst mac %x", out.dstMAC)
				}
			}},
		{name: "established flow keeps its backend when the table changes",
			setup: func(t *testing.T, l *lab) { mustSet(t, l.r.SetTable(1, fill(size, 2))) },
			in:    pkt{src: client, dst: vip, proto: TCP, flags: fACK | fPSH, seq: 1001, ack: 5001, payload: []byte("GET / HTTP/1.1\r\n\r\n")}, verdict: xdpRedirect, check: expectDNAT(be1, macBE1)},
		{name: "a new flow follows the new table", in: pkt{src: client2, dst: vip, proto: TCP, flags: fSYN, seq: 7}, verdict: xdpRedirect, check: expectDNAT(be2, macBE2)},
		{name: "draining backend keeps its flow",
			setup: func(t *testing.T, l *lab) {
				mustSet(t, l.r.SetBackend(1, Backend{Addr: be1, Gen: 1, State: BackendDraining, PoolID: PoolID("web")}))
			},
			in: pkt{src: client, dst: vip, proto: TCP, flags: fACK, seq: 1019, ack: 5001}, verdict: xdpRedirect, check: expectDNAT(be1, macBE1)},
		{name: "removed backend: the pinned flow gets an RST",
			setup: func(t *testing.T, l *lab) {
				mustSet(t, l.r.SetBackend(1, Backend{Addr: be1, Gen: 1, State: BackendRemoved, PoolID: PoolID("web")}))
			},
			in: pkt{src: client, dst: vip, proto: TCP, flags: fACK | fPSH, seq: 1019, ack: 5001, payload: []byte("more")}, verdict: xdpTX, check: expectRST(5001, 0, fRST)},
		{name: "reused slot (generation bumped): the pinned flow gets an RST",
			setup: func(t *testing.T, l *lab) {
				mustSet(t, l.r.SetBackend(2, Backend{Addr: be2, Gen: 2, State: BackendActive, PoolID: PoolID("web")}))
			},
			in: pkt{src: client2, dst: vip, proto: TCP, flags: fACK, seq: 8, ack: 99}, verdict: xdpTX, check: expectRST(99, 0, fRST)},
		{name: "SYN on a flow to a removed backend picks again",
			in: pkt{src: client, dst: vip, proto: TCP, flags: fSYN, seq: 3000}, verdict: xdpRedirect, check: expectDNAT(be2, macBE2)},
		{name: "SYN on a closing flow picks again",
			setup: func(t *testing.T, l *lab) {
				mustSet(t, l.r.SetTable(1, fill(size, 2)))
			},
			in: pkt{src: client3, dst: vip, proto: TCP, flags: fSYN, seq: 1}, verdict: xdpRedirect, check: expectDNAT(be2, macBE2)},
		{name: "FIN closes it", in: pkt{src: client3, dst: vip, proto: TCP, flags: fFIN | fACK, seq: 2, ack: 1}, verdict: xdpRedirect, check: expectDNAT(be2, macBE2)},
		{name: "a reused port after close lands on the current table",
			setup: func(t *testing.T, l *lab) {
				mustSet(t, l.r.SetBackend(1, Backend{Addr: be1, Gen: 2, State: BackendActive, PoolID: PoolID("web")}))
				mustSet(t, l.r.SetTable(1, fill(size, 1)))
			},
			in: pkt{src: client3, dst: vip, proto: TCP, flags: fSYN, seq: 50}, verdict: xdpRedirect, check: expectDNAT(be1, macBE1)},
		{name: "service without backends answers a SYN with RST+ACK",
			in: pkt{src: client, dst: vipNone, proto: TCP, flags: fSYN, seq: 41}, verdict: xdpTX, check: expectRST(0, 42, fRST|fACK)},
		{name: "an RST to an empty service is dropped, never answered",
			in: pkt{src: client, dst: vipNone, proto: TCP, flags: fRST, seq: 41}, verdict: xdpDrop},
		{name: "IP options: the L4 header is found after them",
			in: pkt{src: netip.AddrPortFrom(client.Addr(), 40100), dst: vip, proto: TCP, flags: fSYN, seq: 9, options: []byte{1, 1, 1, 0}}, verdict: xdpRedirect, check: expectDNAT(be1, macBE1)},
		{name: "UDP new flow is NATed, checksum updated",
			in: pkt{src: client, dst: vipUDP, proto: UDP, payload: []byte("query")}, verdict: xdpRedirect, check: expectDNAT(beUDP, macBE1)},
		{name: "UDP without checksum keeps checksum 0",
			in: pkt{src: netip.AddrPortFrom(client.Addr(), 40200), dst: vipUDP, proto: UDP, payload: []byte("q"), noUDPCsum: true}, verdict: xdpRedirect,
			check: func(t *testing.T, in []byte, out parsed, raw []byte) {
				if out.udpCsum != 0 || out.dst != beUDP {
					t.Errorf("udp csum %#x dst %v", out.udpCsum, out.dst)
				}
			}},
		{name: "UDP reply is reverse-NATed", fromBE: true,
			in: pkt{src: beUDP, dst: client, proto: UDP, payload: []byte("answer")}, verdict: xdpRedirect,
			check: func(t *testing.T, in []byte, out parsed, raw []byte) {
				if out.src != vipUDP || out.dst != client {
					t.Errorf("reply %v -> %v", out.src, out.dst)
				}
			}},
		{name: "a SYN refused by the backend is counted as a connect failure",
			in: pkt{src: netip.AddrPortFrom(client.Addr(), 40500), dst: vip, proto: TCP, flags: fSYN, seq: 77}, verdict: xdpRedirect, check: expectDNAT(be1, macBE1)},
		{name: "the backend's RST goes back to the client", fromBE: true,
			in: pkt{src: be1, dst: netip.AddrPortFrom(client.Addr(), 40500), proto: TCP, flags: fRST | fACK, ack: 78}, verdict: xdpRedirect,
			check: func(t *testing.T, in []byte, out parsed, raw []byte) {
				if out.src != vip || out.flags != fRST|fACK {
					t.Errorf("rst from %v flags %#x", out.src, out.flags)
				}
				bs, err := l.r.BackendStats(1)
				if err != nil || bs.ConnectRefused != 1 {
					t.Errorf("connect refused %d (%v), want 1", bs.ConnectRefused, err)
				}
			}},
		{name: "unknown neighbour: rewritten, handed to the kernel, TTL left to it",
			setup: func(t *testing.T, l *lab) { mustSet(t, l.r.SetTable(1, fill(size, 4))) },
			in:    pkt{src: netip.AddrPortFrom(client.Addr(), 40300), dst: vip, proto: TCP, flags: fSYN}, verdict: xdpPass,
			check: func(t *testing.T, in []byte, out parsed, raw []byte) {
				if out.dst != be3 || out.ttl != 64 {
					t.Errorf("dst %v ttl %d, want %v 64", out.dst, out.ttl, be3)
				}
			}},
		{name: "TTL 1 is not forwarded by us", in: pkt{src: netip.AddrPortFrom(client.Addr(), 40400), dst: vip, proto: TCP, flags: fSYN, ttl: 1}, verdict: xdpPass,
			check: func(t *testing.T, in []byte, out parsed, raw []byte) {
				if out.ttl != 1 {
					t.Errorf("ttl %d", out.ttl)
				}
			}},
	}
	for _, s := range steps {
		ok := t.Run(s.name, func(t *testing.T) {
			if s.setup != nil {
				s.setup(t, l)
			}
			in := s.in.bytes()
			ingress := l.clientIf
			if s.fromBE {
				ingress = l.backendIf
			}
			ret, out := l.run(t, in, ingress)
			if ret != s.verdict {
				t.Fatalf("verdict %s, want %s", verdictName[ret], verdictName[s.verdict])
			}
			if s.verdict == xdpDrop {
				return
			}
			if s.check == nil {
				if !bytes.Equal(out[:len(in)], in) {
					t.Fatalf("packet changed:\n in %x\nout %x", in, out[:len(in)])
				}
				return
			}
			p, err := parse(trimFrame(out))
			if err != nil {
				t.Fatalf("output packet: %v\n%x", err, out)
			}
			s.check(t, in, p, out)
		})
		if !ok {
			break // later steps build on earlier ones
		}
	}

	// Counters moved with the traffic.
	gs, _ := r.GlobalStats()
	t.Logf("global %+v", gs)
	ss, err := r.ServiceStats(1)
	if err != nil {
		t.Fatal(err)
	}
	if ss.NewFlows < 5 || ss.RSTRemovedBackend != 2 || ss.Packets < 10 {
		t.Errorf("service stats %+v", ss)
	}
	s3, _ := r.ServiceStats(3)
	if s3.RSTNoBackend != 1 {
		t.Errorf("no-backend RSTs %d, want 1", s3.RSTNoBackend)
	}
	var flows []Flow
	if err := r.Flows(func(f Flow) bool { flows = append(flows, f); return true }); err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, f := range flows {
		if f.Client == client2 && f.Backend == be2 && f.BackendSlot == 2 && f.BackendGen == 1 {
			found = true
		}
	}
	if !found {
		t.Errorf("flow %v -> %v not listed: %+v", client2, be2, flows)
	}
}

// trimFrame cuts the output buffer to the IPv4 total length.
func trimFrame(b []byte) []byte {
	if len(b) < 18 {
		return b
	}
	n := 14 + int(b[16])<<8 | int(b[17])
	if n > len(b) || n < 14 {
		return b
	}
	return b[:14+int(uint16(b[16])<<8|uint16(b[17]))]
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
