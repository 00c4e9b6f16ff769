package datapath

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/sluicelb/sluice/bpf"
)

// The prog.Run fixtures, after Katran's: every case is a name, the state
// it needs (frames run before it and map changes), one input frame, the
// verdict and the whole expected output frame, computed from scratch by
// the helpers below (never by the C code's logic). TestXDP runs each case
// alone on the baseline maps; BenchmarkXDP times the cases that name a
// benchmark row; FuzzXDP seeds its corpus with every input.

// testTableSize is the Maglev table size of the test lab (small: tables
// are rewritten by many cases).
const testTableSize = 251

// input is one frame and the side it arrives on.
type input struct {
	frame   []byte
	fromBE  bool   // arrives on the backend-side interface
	verdict uint32 // for frames in xdpCase.before: the verdict they must get
}

func fromClient(p pkt) input  { return input{frame: p.bytes()} }
func fromBackend(p pkt) input { return input{frame: p.bytes(), fromBE: true} }

// then is a preparation frame with the verdict it must get.
func then(in input, verdict uint32) input { in.verdict = verdict; return in }

type xdpCase struct {
	name   string
	pre    func(tb testing.TB, l *lab) // map changes before the frames of before
	before []input                     // run first, in order, each must get its verdict
	setup  func(tb testing.TB, l *lab) // map changes, after before
	in     input
	// verdict and want: the program's answer. want returns the expected
	// output frame; nil means "the input, unchanged" (not checked for
	// XDP_DROP).
	verdict uint32
	want    func(l *lab, in []byte) []byte
	// after checks counters and maps once the frame went through.
	after func(tb testing.TB, l *lab)
	// bench names the BenchmarkXDP row that times this case; next, when
	// set, gives the benchmark a fresh frame for iteration i (a new flow
	// each time).
	bench string
	next  func(i int) []byte
}

// Baseline services and backends every case starts from.
var (
	keyTCP  = ServiceKey{VIP: vip.Addr(), Port: vip.Port(), Proto: TCP}
	keyUDP  = ServiceKey{VIP: vipUDP.Addr(), Port: vipUDP.Port(), Proto: UDP}
	keyNone = ServiceKey{VIP: vipNone.Addr(), Port: vipNone.Port(), Proto: TCP}
)

const (
	svcTCP  = 1 // vip, table of be1
	svcUDP  = 2 // vipUDP, table of beUDP
	svcNone = 3 // vipNone, no table
)

func baselineBackends() map[uint32]Backend {
	return map[uint32]Backend{
		1: {Addr: be1, Gen: 1, State: BackendActive, PoolID: PoolID("web")},
		2: {Addr: be2, Gen: 1, State: BackendActive, PoolID: PoolID("web")},
		3: {Addr: beUDP, Gen: 1, State: BackendActive, PoolID: PoolID("dns")},
		4: {Addr: be3, Gen: 1, State: BackendActive, PoolID: PoolID("web")}, // no neighbour entry
	}
}

// reset puts the maps back to the baseline: no flows, zero counters, the
// baseline services, backends and tables.
func (l *lab) reset(tb testing.TB) {
	tb.Helper()
	r := l.r
	clearHalfOpen(tb, r)
	for _, m := range []*ebpf.Map{r.conntrack, r.snatRev, r.snatRevHO, r.directSYNs} {
		var keys []bpf.SluiceCtKey
		var k bpf.SluiceCtKey
		var v []byte
		it := m.Iterate()
		for it.Next(&k, &v) {
			keys = append(keys, k)
		}
		mustSet(tb, it.Err())
		for _, k := range keys {
			_ = m.Delete(k)
		}
	}
	svcs, err := r.Services()
	mustSet(tb, err)
	for k, s := range svcs {
		mustSet(tb, r.DeleteService(k, s.ID))
	}
	for id := uint32(1); id < 8; id++ {
		mustSet(tb, r.SetTable(id, nil))
	}
	bes, err := r.Backends()
	mustSet(tb, err)
	for slot := range bes {
		mustSet(tb, r.SetBackend(slot, Backend{}))
	}
	ncpu, err := ebpf.PossibleCPU()
	mustSet(tb, err)
	for i := uint32(0); i < 8; i++ {
		mustSet(tb, r.svcStats.Put(i, make([]bpf.SluiceSvcCounters, ncpu)))
		mustSet(tb, r.backendStats.Put(i, make([]bpf.SluiceBackendCounters, ncpu)))
	}
	mustSet(tb, r.globalStats.Put(uint32(0), make([]bpf.SluiceGlobalCounters, ncpu)))
	l.forgetBackendHops(tb)

	l.setMTU(tb, l.clientIf, 1500)
	l.setMTU(tb, l.backendIf, 1500)
	mustSet(tb, r.SetService(keyTCP, Service{ID: svcTCP, PoolID: PoolID("web")}))
	mustSet(tb, r.SetService(keyUDP, Service{ID: svcUDP, PoolID: PoolID("dns")}))
	mustSet(tb, r.SetService(keyNone, Service{ID: svcNone, PoolID: PoolID("none")}))
	for slot, b := range baselineBackends() {
		mustSet(tb, r.SetBackend(slot, b))
	}
	mustSet(tb, r.SetTable(svcTCP, fill(r.TableSize(), 1)))
	mustSet(tb, r.SetTable(svcUDP, fill(r.TableSize(), 3)))
}

// prepare resets the maps and brings them to the state c needs.
func (l *lab) prepare(tb testing.TB, c xdpCase) {
	tb.Helper()
	l.reset(tb)
	if c.pre != nil {
		c.pre(tb, l)
	}
	for i, in := range c.before {
		if ret, _ := l.run(tb, in.frame, l.ingress(in.fromBE)); ret != in.verdict {
			tb.Fatalf("preparation frame %d: verdict %s, want %s", i, verdictName[ret], verdictName[in.verdict])
		}
	}
	if c.setup != nil {
		c.setup(tb, l)
	}
}

func (l *lab) ingress(fromBE bool) *net.Interface {
	if fromBE {
		return l.backendIf
	}
	return l.clientIf
}

// setMTU sets an interface's MTU in the lab's namespace.
func (l *lab) setMTU(tb testing.TB, ifc *net.Interface, mtu int) {
	tb.Helper()
	var err error
	l.exec(func() {
		var link netlink.Link
		if link, err = netlink.LinkByIndex(ifc.Index); err == nil {
			err = netlink.LinkSetMTU(link, mtu)
		}
	})
	mustSet(tb, err)
}

func withMTU(ifc func(l *lab) *net.Interface, mtu int) func(tb testing.TB, l *lab) {
	return func(tb testing.TB, l *lab) { l.setMTU(tb, ifc(l), mtu) }
}

// thenNextHopsExpire is setup followed by the end of every cached next
// hop's lifetime (nexthop cache, 1 s): what an MTU change waits for.
func thenNextHopsExpire(setup func(tb testing.TB, l *lab)) func(tb testing.TB, l *lab) {
	return func(tb testing.TB, l *lab) {
		setup(tb, l)
		l.forgetBackendHops(tb)
		l.forgetReplyHops(tb)
	}
}

// forgetReplyHops empties the per-client next-hop cache of replies.
func (l *lab) forgetReplyHops(tb testing.TB) {
	tb.Helper()
	ncpu, err := ebpf.PossibleCPU()
	mustSet(tb, err)
	zero := make([]bpf.SluiceBackendHop, ncpu)
	for i := uint32(0); i < l.r.replyHops.MaxEntries(); i++ {
		mustSet(tb, l.r.replyHops.Put(i, zero))
	}
}

// forgetBackendHops empties the per-backend next-hop cache.
func (l *lab) forgetBackendHops(tb testing.TB) {
	tb.Helper()
	ncpu, err := ebpf.PossibleCPU()
	mustSet(tb, err)
	for slot := uint32(0); slot < 8; slot++ {
		mustSet(tb, l.r.backendHops.Put(slot, make([]bpf.SluiceBackendHop, ncpu)))
	}
}

func backendSide(l *lab) *net.Interface { return l.backendIf }
func clientSide(l *lab) *net.Interface  { return l.clientIf }

// fragNeededFor is the ICMP "fragmentation needed" that answers in (an
// option-less IPv4 packet) with the next-hop MTU mtu, sent back to its
// source from its destination, quoting its IPv4 header and first 8 L4
// bytes as they arrived.
func fragNeededFor(in []byte, mtu uint16) []byte {
	b := make([]byte, 14+20+8+28)
	copy(b[0:6], in[6:12])
	copy(b[6:12], in[0:6])
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0] = 0x45
	ip[1] = 0xc0
	binary.BigEndian.PutUint16(ip[2:], 56)
	ip[8] = 64
	ip[9] = 1
	copy(ip[12:16], in[14+16:14+20])
	copy(ip[16:20], in[14+12:14+16])
	binary.BigEndian.PutUint16(ip[10:], csumFold(csumAdd(0, ip)))
	icmp := b[34:]
	icmp[0], icmp[1] = 3, 4
	binary.BigEndian.PutUint16(icmp[6:], mtu)
	copy(icmp[8:], in[14:14+28])
	binary.BigEndian.PutUint16(icmp[2:], csumFold(csumAdd(0, icmp)))
	return b
}

func setTable(slots ...uint32) func(tb testing.TB, l *lab) {
	return func(tb testing.TB, l *lab) { mustSet(tb, l.r.SetTable(svcTCP, fill(l.r.TableSize(), slots...))) }
}

func setBackend(slot uint32, b Backend) func(tb testing.TB, l *lab) {
	return func(tb testing.TB, l *lab) { mustSet(tb, l.r.SetBackend(slot, b)) }
}

// Expected frames.

// toBackend is in DNATed to `to` and forwarded on the backend side.
func toBackend(to netip.AddrPort, mac [6]byte) func(l *lab, in []byte) []byte {
	return func(l *lab, in []byte) []byte {
		return rewritten(in, netip.AddrPort{}, to, &hop{dmac: mac, smac: [6]byte(l.backendIf.HardwareAddr)})
	}
}

// toClient is a reply translated to come from `from` (the VIP) and sent to
// `to` on the client side.
func toClient(from, to netip.AddrPort) func(l *lab, in []byte) []byte {
	return func(l *lab, in []byte) []byte {
		return rewritten(in, from, to, &hop{dmac: macClient, smac: [6]byte(l.clientIf.HardwareAddr)})
	}
}

// toKernel is in DNATed to `to` and handed to the kernel (no next hop):
// Ethernet header and TTL untouched.
func toKernel(to netip.AddrPort) func(l *lab, in []byte) []byte {
	return func(l *lab, in []byte) []byte { return rewritten(in, netip.AddrPort{}, to, nil) }
}

// rstFor is the RST that answers the TCP segment in, sent back where it
// came from (RFC 793: seq from the segment's ACK if it had one, else seq 0
// and an ACK of everything it carried).
func rstFor(in []byte) []byte {
	ip := in[14:]
	ihl := int(ip[0]&0xf) * 4
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	tcp := ip[ihl:tot]
	flags := tcp[13]
	b := make([]byte, 54)
	copy(b[0:6], in[6:12])
	copy(b[6:12], in[0:6])
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	o := b[14:34]
	o[0] = 0x45
	binary.BigEndian.PutUint16(o[2:], 40)
	binary.BigEndian.PutUint16(o[6:], 0x4000)
	o[8] = 64
	o[9] = 6
	copy(o[12:16], ip[16:20])
	copy(o[16:20], ip[12:16])
	binary.BigEndian.PutUint16(o[10:], csumFold(csumAdd(0, o)))
	t := b[34:54]
	copy(t[0:2], tcp[2:4])
	copy(t[2:4], tcp[0:2])
	t[12] = 5 << 4
	if flags&fACK != 0 {
		copy(t[4:8], tcp[8:12])
		t[13] = fRST
	} else {
		ack := binary.BigEndian.Uint32(tcp[4:]) + uint32(len(tcp)-int(tcp[12]>>4)*4)
		if flags&fSYN != 0 {
			ack++
		}
		if flags&fFIN != 0 {
			ack++
		}
		binary.BigEndian.PutUint32(t[8:], ack)
		t[13] = fRST | fACK
	}
	src, dst := netip.AddrFrom4([4]byte(o[12:16])), netip.AddrFrom4([4]byte(o[16:20]))
	binary.BigEndian.PutUint16(t[16:], csumFold(csumAdd(pseudo(src, dst, TCP, 20), t)))
	return b
}

func wantRST(_ *lab, in []byte) []byte { return rstFor(in) }

// hop is the Ethernet rewrite of a forwarded frame.
type hop struct{ dmac, smac [6]byte }

// rewritten is in with its source and/or destination (zero: kept)
// replaced, the IPv4 and L4 checksums recomputed in full (a UDP datagram
// without checksum keeps 0) and, when forwarded (h != nil), the TTL
// decremented and the Ethernet addresses set.
func rewritten(in []byte, src, dst netip.AddrPort, h *hop) []byte {
	b := append([]byte(nil), in...)
	ip := b[14:]
	ihl := int(ip[0]&0xf) * 4
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	l4 := ip[ihl:tot]
	if src.IsValid() {
		a := src.Addr().As4()
		copy(ip[12:16], a[:])
		binary.BigEndian.PutUint16(l4[0:], src.Port())
	}
	if dst.IsValid() {
		a := dst.Addr().As4()
		copy(ip[16:20], a[:])
		binary.BigEndian.PutUint16(l4[2:], dst.Port())
	}
	if h != nil {
		copy(b[0:6], h.dmac[:])
		copy(b[6:12], h.smac[:])
		ip[8]--
	}
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], csumFold(csumAdd(0, ip[:ihl])))
	s := netip.AddrFrom4([4]byte(ip[12:16]))
	d := netip.AddrFrom4([4]byte(ip[16:20]))
	switch Proto(ip[9]) {
	case TCP:
		l4[16], l4[17] = 0, 0
		binary.BigEndian.PutUint16(l4[16:], csumFold(csumAdd(pseudo(s, d, TCP, len(l4)), l4)))
	case UDP:
		if binary.BigEndian.Uint16(l4[6:]) != 0 {
			l4[6], l4[7] = 0, 0
			c := csumFold(csumAdd(pseudo(s, d, UDP, len(l4)), l4))
			if c == 0 {
				c = 0xffff
			}
			binary.BigEndian.PutUint16(l4[6:], c)
		}
	}
	return b
}

// Counter checks.

func wantService(id uint32, check func(s ServiceStats) bool) func(tb testing.TB, l *lab) {
	return func(tb testing.TB, l *lab) {
		tb.Helper()
		s, err := l.r.ServiceStats(id)
		mustSet(tb, err)
		if !check(s) {
			tb.Errorf("service %d counters %+v", id, s)
		}
	}
}

func wantGlobal(check func(g GlobalStats) bool) func(tb testing.TB, l *lab) {
	return func(tb testing.TB, l *lab) {
		tb.Helper()
		g, err := l.r.GlobalStats()
		mustSet(tb, err)
		if !check(g) {
			tb.Errorf("global counters %+v", g)
		}
	}
}

func clientPort(p uint16) netip.AddrPort { return netip.AddrPortFrom(client.Addr(), p) }

// newClient is a client address and port never seen before, for frame i.
func newClient(i int) netip.AddrPort {
	a := netip.AddrFrom4([4]byte{198, 18, 0, byte(3 + (i>>16)%200)})
	return netip.AddrPortFrom(a, uint16(i)|1)
}

func xdpCases() []xdpCase {
	syn := pkt{src: client, dst: vip, proto: TCP, flags: fSYN, seq: 1000}
	synAck := pkt{src: be1, dst: client, proto: TCP, flags: fSYN | fACK, seq: 5000, ack: 1001}
	data := pkt{src: client, dst: vip, proto: TCP, flags: fACK | fPSH, seq: 1001, ack: 5001, payload: []byte("GET / HTTP/1.1\r\n\r\n")}
	fin := pkt{src: client, dst: vip, proto: TCP, flags: fFIN | fACK, seq: 1001, ack: 5001}
	query := pkt{src: client, dst: vipUDP, proto: UDP, payload: []byte("query")}
	opened := []input{then(fromClient(syn), xdpRedirect)}

	cases := []xdpCase{
		{name: "non-IP frame passes untouched", in: fromClient(pkt{etherType: 0x0806}), verdict: xdpPass},
		{name: "non-VIP TCP passes untouched", bench: "non-vip",
			in:      fromClient(pkt{src: client, dst: netip.MustParseAddrPort("198.18.0.1:22"), proto: TCP, flags: fACK, payload: make([]byte, 64)}),
			verdict: xdpPass},
		{name: "VIP on another port passes untouched", in: fromClient(pkt{src: client, dst: netip.MustParseAddrPort("198.18.1.100:81"), proto: TCP, flags: fSYN}), verdict: xdpPass},
		{name: "truncated IPv4 header passes untouched", in: fromClient(pkt{src: client, dst: vip, proto: TCP, flags: fSYN, truncateTo: 30}), verdict: xdpPass},
		{name: "truncated TCP header to VIP passes untouched", in: fromClient(pkt{src: client, dst: vip, proto: TCP, flags: fSYN, truncateTo: 40}), verdict: xdpPass},
		{name: "a first fragment to a VIP is dropped and counted",
			in: fromClient(pkt{src: client, dst: vip, proto: TCP, flags: fSYN, fragOff: 0x2000}), verdict: xdpDrop,
			after: func(tb testing.TB, l *lab) {
				wantService(svcTCP, func(s ServiceStats) bool { return s.Fragments == 1 })(tb, l)
				noFlows(tb, l)
			}},
		{name: "a later fragment to a VIP (no ports) is dropped and counted on the VIP's lowest service id",
			in: fromClient(pkt{src: client, dst: vipUDP, proto: UDP, fragOff: 0x0010, payload: []byte("rest of it")}), verdict: xdpDrop,
			after: wantService(svcTCP, func(s ServiceStats) bool { return s.Fragments == 1 })},
		{name: "a fragment to a VIP on another port is still the VIP's",
			in: fromClient(pkt{src: client, dst: netip.AddrPortFrom(vip.Addr(), 8080), proto: TCP, flags: fACK, fragOff: 0x2000}), verdict: xdpDrop,
			after: wantService(svcTCP, func(s ServiceStats) bool { return s.Fragments == 1 })},
		{name: "a reply fragment from a backend is dropped, never passed un-translated", before: opened,
			in: fromBackend(pkt{src: be1, dst: client, proto: TCP, flags: fACK, fragOff: 0x2000, payload: make([]byte, 32)}), verdict: xdpDrop,
			after: wantGlobal(func(g GlobalStats) bool { return g.BackendFragments == 1 && g.RepliesTranslated == 0 })},
		{name: "a later reply fragment from a backend is dropped", before: opened,
			in: fromBackend(pkt{src: be1, dst: client, proto: UDP, fragOff: 0x0020, payload: make([]byte, 32)}), verdict: xdpDrop,
			after: wantGlobal(func(g GlobalStats) bool { return g.BackendFragments == 1 })},
		{name: "a fragment neither to a VIP nor from a backend passes untouched",
			in: fromClient(pkt{src: client, dst: netip.MustParseAddrPort("198.18.0.1:22"), proto: TCP, flags: fACK, fragOff: 0x2000}), verdict: xdpPass,
			after: wantService(svcTCP, func(s ServiceStats) bool { return s.Fragments == 0 })},
		{name: "a freed slot's address is no backend's any more",
			setup: setBackend(2, Backend{}),
			in:    fromBackend(pkt{src: be2, dst: client, proto: TCP, flags: fACK, fragOff: 0x2000}), verdict: xdpPass},
		{name: "an address two slots hold stays a backend's while one does",
			setup: setBackend(3, Backend{}), // beUDP, the same address as be1
			in:    fromBackend(pkt{src: be1, dst: client, proto: UDP, fragOff: 0x0020}), verdict: xdpDrop},
		{name: "a deleted service's address is no VIP any more",
			setup: func(tb testing.TB, l *lab) { mustSet(tb, l.r.DeleteService(keyNone, svcNone)) },
			in:    fromClient(pkt{src: client, dst: vipNone, proto: TCP, flags: fACK, fragOff: 0x2000}), verdict: xdpPass},

		{name: "new flow SYN is NATed to the backend", bench: "new-flow-syn",
			in: fromClient(syn), verdict: xdpRedirect, want: toBackend(be1, macBE1),
			after: wantService(svcTCP, func(s ServiceStats) bool { return s.NewFlows == 1 && s.Packets == 1 }),
			next: func(i int) []byte {
				return pkt{src: newClient(i), dst: vip, proto: TCP, flags: fSYN}.bytes()
			}},
		{name: "reply SYN-ACK is reverse-NATed to the VIP", before: opened,
			in: fromBackend(synAck), verdict: xdpRedirect, want: toClient(vip, client),
			after: wantGlobal(func(g GlobalStats) bool { return g.RepliesTranslated == 1 })},
		{name: "established flow keeps its backend when the table changes",
			before: opened, setup: setTable(2),
			in: fromClient(data), verdict: xdpRedirect, want: toBackend(be1, macBE1)},
		{name: "a new flow follows the new table", setup: setTable(2),
			in: fromClient(syn), verdict: xdpRedirect, want: toBackend(be2, macBE2)},
		{name: "draining backend keeps its flow", before: opened,
			setup: setBackend(1, Backend{Addr: be1, Gen: 1, State: BackendDraining}),
			in:    fromClient(data), verdict: xdpRedirect, want: toBackend(be1, macBE1)},
		{name: "ejected backend keeps its flow", before: opened,
			setup: setBackend(1, Backend{Addr: be1, Gen: 1, State: BackendEjected}),
			in:    fromClient(data), verdict: xdpRedirect, want: toBackend(be1, macBE1)},
		{name: "removed backend: the pinned flow gets an RST", before: opened,
			setup: setBackend(1, Backend{Addr: be1, Gen: 1, State: BackendRemoved}),
			in:    fromClient(data), verdict: xdpTX, want: wantRST,
			after: wantService(svcTCP, func(s ServiceStats) bool { return s.RSTRemovedBackend == 1 })},
		{name: "reused slot (generation bumped): the pinned flow gets an RST", before: opened,
			setup: setBackend(1, Backend{Addr: be1, Gen: 2, State: BackendActive}),
			in:    fromClient(data), verdict: xdpTX, want: wantRST},
		{name: "removed backend: a UDP flow's datagrams are dropped",
			before: []input{then(fromClient(query), xdpRedirect)},
			setup:  setBackend(3, Backend{Addr: beUDP, Gen: 1, State: BackendRemoved}),
			in:     fromClient(query), verdict: xdpDrop,
			after: wantService(svcUDP, func(s ServiceStats) bool { return s.DropRemovedBackend == 1 })},
		{name: "SYN on a flow to a removed backend picks again", before: opened,
			setup: func(tb testing.TB, l *lab) {
				setBackend(1, Backend{Addr: be1, Gen: 1, State: BackendRemoved})(tb, l)
				setTable(2)(tb, l)
			},
			in: fromClient(syn), verdict: xdpRedirect, want: toBackend(be2, macBE2)},
		{name: "SYN on a flow to a draining backend picks again", before: opened,
			setup: func(tb testing.TB, l *lab) {
				setBackend(1, Backend{Addr: be1, Gen: 1, State: BackendDraining})(tb, l)
				setTable(2)(tb, l)
			},
			in: fromClient(syn), verdict: xdpRedirect, want: toBackend(be2, macBE2)},
		{name: "a retransmitted SYN keeps its backend", before: opened, setup: setTable(2),
			in: fromClient(syn), verdict: xdpRedirect, want: toBackend(be1, macBE1)},
		{name: "FIN is forwarded on the flow", before: opened,
			in: fromClient(fin), verdict: xdpRedirect, want: toBackend(be1, macBE1)},
		{name: "SYN on a closed flow follows the current table",
			before: []input{then(fromClient(syn), xdpRedirect), then(fromClient(fin), xdpRedirect)},
			setup:  setTable(2),
			in:     fromClient(syn), verdict: xdpRedirect, want: toBackend(be2, macBE2)},
		{name: "service without backends answers a SYN with RST+ACK",
			in: fromClient(pkt{src: client, dst: vipNone, proto: TCP, flags: fSYN, seq: 41}), verdict: xdpTX, want: wantRST,
			after: wantService(svcNone, func(s ServiceStats) bool { return s.RSTNoBackend == 1 })},
		{name: "an RST to an empty service is dropped, never answered",
			in: fromClient(pkt{src: client, dst: vipNone, proto: TCP, flags: fRST, seq: 41}), verdict: xdpDrop},
		{name: "IP options: the L4 header is found after them",
			in: fromClient(pkt{src: client, dst: vip, proto: TCP, flags: fSYN, seq: 9, options: []byte{1, 1, 1, 0}}), verdict: xdpRedirect, want: toBackend(be1, macBE1)},
		{name: "UDP new flow is NATed, checksum updated",
			in: fromClient(query), verdict: xdpRedirect, want: toBackend(beUDP, macBE1)},
		{name: "UDP without checksum keeps checksum 0",
			in: fromClient(pkt{src: client, dst: vipUDP, proto: UDP, payload: []byte("q"), noUDPCsum: true}), verdict: xdpRedirect, want: toBackend(beUDP, macBE1)},
		{name: "UDP reply is reverse-NATed", before: []input{then(fromClient(query), xdpRedirect)},
			in: fromBackend(pkt{src: beUDP, dst: client, proto: UDP, payload: []byte("answer")}), verdict: xdpRedirect, want: toClient(vipUDP, client)},
		{name: "UDP to an empty table is dropped", setup: func(tb testing.TB, l *lab) { mustSet(tb, l.r.SetTable(svcUDP, nil)) },
			in: fromClient(query), verdict: xdpDrop,
			after: wantService(svcUDP, func(s ServiceStats) bool { return s.DropNoBackend == 1 })},
		{name: "a SYN refused by the backend is counted as a connect failure", before: opened,
			in: fromBackend(pkt{src: be1, dst: client, proto: TCP, flags: fRST | fACK, ack: 1001}), verdict: xdpRedirect, want: toClient(vip, client),
			after: func(tb testing.TB, l *lab) {
				bs, err := l.r.BackendStats(1)
				if err != nil || bs.ConnectRefused != 1 {
					tb.Errorf("connect refused %d (%v), want 1", bs.ConnectRefused, err)
				}
			}},
		{name: "a reply from a backend's service port matching no flow is translated from backend_ports: its endpoint serves one nat service",
			in: fromBackend(pkt{src: be1, dst: client, proto: TCP, flags: fACK | fPSH, seq: 5001, ack: 1001, payload: []byte("x")}), verdict: xdpRedirect,
			want:  toClient(vip, client),
			after: wantGlobal(func(g GlobalStats) bool { return g.RepliesWithoutFlow == 1 && g.RepliesTranslated == 0 })},
		{name: "a packet matching no flow from an endpoint of two nat services is the backend's own traffic: untouched",
			pre: addVIP2, in: fromBackend(pkt{src: be1, dst: client, proto: TCP, flags: fACK | fPSH, seq: 5001, ack: 1001, payload: []byte("x")}), verdict: xdpPass,
			after: wantGlobal(func(g GlobalStats) bool { return g.PassedNotOurs == 1 && g.RepliesWithoutFlow == 0 })},
		{name: "a backend's SYN-ACK for a flow sluice forgot entirely, from an endpoint of two nat services, is dropped, never passed with the backend's address",
			pre: addVIP2, in: fromBackend(synAck), verdict: xdpDrop,
			after: wantGlobal(func(g GlobalStats) bool { return g.SYNACKNoFlowDrops == 1 })},
		{name: "a client connecting to a backend directly (no VIP) gets its SYN-ACK untouched",
			before: []input{then(fromClient(pkt{src: client, dst: be1, proto: TCP, flags: fSYN, seq: 1000}), xdpPass)},
			in:     fromBackend(synAck), verdict: xdpPass},
		{name: "a backend's own traffic from another port passes untouched",
			in: fromBackend(pkt{src: netip.AddrPortFrom(be1.Addr(), 43210), dst: client, proto: TCP, flags: fSYN}), verdict: xdpPass},
		{name: "unknown neighbour: rewritten, handed to the kernel, TTL left to it", setup: setTable(4),
			in: fromClient(syn), verdict: xdpPass, want: toKernel(be3)},
		{name: "the flow is listed with its backend", before: opened,
			in: fromClient(data), verdict: xdpRedirect, want: toBackend(be1, macBE1),
			after: func(tb testing.TB, l *lab) {
				var flows []Flow
				mustSet(tb, l.r.Flows(func(f Flow) bool { flows = append(flows, f); return true }))
				if len(flows) != 1 || flows[0].Client != client || flows[0].VIP != vip || flows[0].Backend != be1 ||
					flows[0].BackendSlot != 1 || flows[0].BackendGen != 1 || flows[0].State != FlowEstablished {
					tb.Errorf("flows %+v", flows)
				}
			}},
		{name: "Ethernet padding past the total length is carried, never rewritten",
			in: fromClient(pkt{src: client, dst: vip, proto: TCP, flags: fSYN, seq: 3, pad: 6}), verdict: xdpRedirect, want: toBackend(be1, macBE1)},
		{name: "the RST's ACK counts the payload of the total length, not the frame's padding",
			in:      fromClient(pkt{src: client, dst: vipNone, proto: TCP, flags: fPSH, seq: 100, payload: []byte("abc"), pad: 7}),
			verdict: xdpTX, want: wantRST},
	}
	cases = append(cases, hostileCases()...)
	cases = append(cases, floodCases()...)
	cases = append(cases, mtuCases()...)
	cases = append(cases, xdpCases6()...)
	return cases
}

// mtuCases: issue 10 item 6. A packet larger than the next hop's MTU is
// never redirected (the device would drop it silently): with DF set the
// sender gets an ICMP "fragmentation needed" quoting what it sent; without,
// the kernel fragments the rewritten packet.
func mtuCases() []xdpCase {
	big := make([]byte, 1400)
	bigSyn := pkt{src: client, dst: vip, proto: TCP, flags: fSYN, seq: 1000}
	bigData := pkt{src: client, dst: vip, proto: TCP, flags: fACK | fPSH, seq: 1001, ack: 5001, payload: big, fragOff: 0x4000}
	bigReply := pkt{src: be1, dst: client, proto: TCP, flags: fACK | fPSH, seq: 5001, ack: 1001, payload: big, fragOff: 0x4000}
	opened := []input{then(fromClient(bigSyn), xdpRedirect)}
	frag := func(mtu uint16) func(l *lab, in []byte) []byte {
		return func(l *lab, in []byte) []byte { return fragNeededFor(in, mtu) }
	}
	return []xdpCase{
		{name: "a DF packet too big for the backend side gets fragmentation-needed, quoting client to VIP",
			before: opened, setup: thenNextHopsExpire(withMTU(backendSide, 1280)),
			in: fromClient(bigData), verdict: xdpTX, want: frag(1280),
			after: wantGlobal(func(g GlobalStats) bool { return g.FragNeededSent == 1 })},
		{name: "a new flow's DF packet too big gets fragmentation-needed too", setup: withMTU(backendSide, 1280),
			in: fromClient(bigData), verdict: xdpTX, want: frag(1280)},
		{name: "a packet without DF too big for the next hop is rewritten and left to the kernel to fragment",
			before: opened, setup: thenNextHopsExpire(withMTU(backendSide, 1280)),
			in:      fromClient(pkt{src: client, dst: vip, proto: TCP, flags: fACK | fPSH, seq: 1001, ack: 5001, payload: big}),
			verdict: xdpPass, want: toKernel(be1),
			after: wantGlobal(func(g GlobalStats) bool { return g.PassedTooBig == 1 })},
		{name: "the MTU is kept with the cached next hop: a confirmed flow's cached path checks it",
			before: []input{then(fromClient(bigSyn), xdpRedirect), then(fromClient(bigData), xdpRedirect)},
			setup: func(tb testing.TB, l *lab) {
				// What the FIB said, as the cache would hold it after an
				// MTU change it learned (the next hop itself unchanged).
				thenNextHopsExpire(withMTU(backendSide, 1280))(tb, l)
				if ret, _ := l.run(tb, bigSyn.bytes(), l.clientIf); ret != xdpRedirect {
					tb.Fatalf("a small packet after the change: %s", verdictName[ret])
				}
			},
			in: fromClient(bigData), verdict: xdpTX, want: frag(1280)},
		{name: "a reply too big for the client side: the backend gets fragmentation-needed quoting its own packet",
			before: []input{then(fromClient(bigSyn), xdpRedirect)}, setup: withMTU(clientSide, 1280),
			in: fromBackend(bigReply), verdict: xdpTX, want: frag(1280)},
		{name: "a packet that fits the MTU goes through", before: opened, setup: thenNextHopsExpire(withMTU(backendSide, 1480)),
			in: fromClient(bigData), verdict: xdpRedirect, want: toBackend(be1, macBE1)},
	}
}

// flowsIn lists the forward entries, split by table.
func flowsIn(tb testing.TB, l *lab) (confirmed, halfOpen []Flow) {
	tb.Helper()
	mustSet(tb, l.r.Flows(func(f Flow) bool {
		if f.HalfOpen {
			halfOpen = append(halfOpen, f)
		} else {
			confirmed = append(confirmed, f)
		}
		return true
	}))
	return confirmed, halfOpen
}

func wantFlows(nConfirmed, nHalfOpen int, state FlowState) func(tb testing.TB, l *lab) {
	return func(tb testing.TB, l *lab) {
		tb.Helper()
		c, h := flowsIn(tb, l)
		all := append(append([]Flow(nil), c...), h...)
		if len(c) != nConfirmed || len(h) != nHalfOpen || (len(all) > 0 && all[0].State != state) {
			tb.Errorf("confirmed %+v\nhalf-open %+v\nwant %d confirmed, %d half-open, state %v", c, h, nConfirmed, nHalfOpen, state)
		}
	}
}

// floodCases: issue 10 item 1. New flows wait in the half-open table until
// the backend confirms them, so floods of spoofed SYNs or ACKs cannot evict
// confirmed flows, a handshake the client abandons is not the backend's
// failure, and a reply is translated or dropped, never leaked.
func floodCases() []xdpCase {
	syn := pkt{src: client, dst: vip, proto: TCP, flags: fSYN, seq: 1000}
	synAck := pkt{src: be1, dst: client, proto: TCP, flags: fSYN | fACK, seq: 5000, ack: 1001}
	ack := pkt{src: client, dst: vip, proto: TCP, flags: fACK, seq: 1001, ack: 5001}
	request := pkt{src: client, dst: vip, proto: TCP, flags: fACK | fPSH, seq: 1001, ack: 5001, payload: []byte("GET / HTTP/1.1\r\n\r\n")}
	response := pkt{src: be1, dst: client, proto: TCP, flags: fACK | fPSH, seq: 5001, ack: 1019, payload: []byte("HTTP/1.1 200 OK\r\n\r\n")}
	handshake := []input{
		then(fromClient(syn), xdpRedirect), then(fromBackend(synAck), xdpRedirect),
		then(fromClient(ack), xdpRedirect), then(fromClient(request), xdpRedirect),
	}
	confirmedFlow := append(append([]input(nil), handshake...), then(fromBackend(response), xdpRedirect))
	// deleteFlowEntry evicts the flow's one entry, as LRU would (or as
	// on a node that never saw the client's packets).
	deleteFlowEntry := func(halfOpen bool) func(tb testing.TB, l *lab) {
		return func(tb testing.TB, l *lab) {
			fk := bpf.SluiceCtKey{Saddr: be32(client.Addr()), Sport: be16(client.Port()), Daddr: be32(vip.Addr()), Dport: be16(vip.Port()), Proto: uint8(TCP)}
			if halfOpen {
				mustSet(tb, l.r.halfOpenDelete(&fk))
				return
			}
			mustSet(tb, l.r.conntrack.Delete(fk))
		}
	}
	return []xdpCase{
		{name: "new flows start from the backend's cached next hop; a slot reused for another address does not inherit it",
			before: []input{then(fromClient(syn), xdpRedirect)},
			setup:  setBackend(1, Backend{Addr: be2, Gen: 2, State: BackendActive}),
			in:     fromClient(pkt{src: clientPort(40001), dst: vip, proto: TCP, flags: fSYN}), verdict: xdpRedirect, want: toBackend(be2, macBE2)},
		{name: "a SYN is tracked half-open, not in conntrack",
			in: fromClient(syn), verdict: xdpRedirect, want: toBackend(be1, macBE1), after: wantFlows(0, 1, FlowSynSent)},
		{name: "the backend's SYN-ACK marks the flow syn-recv: a handshake the client abandons is no connect failure",
			before: []input{then(fromClient(syn), xdpRedirect)},
			in:     fromBackend(synAck), verdict: xdpRedirect, want: toClient(vip, client), after: wantFlows(0, 1, FlowSynRecv)},
		{name: "the client's ACK alone does not confirm a flow",
			before: handshake[:2], in: fromClient(ack), verdict: xdpRedirect, want: toBackend(be1, macBE1),
			after: wantFlows(0, 1, FlowEstablished)},
		{name: "the backend's first answer after the handshake confirms the flow into conntrack",
			before: handshake, in: fromBackend(response), verdict: xdpRedirect, want: toClient(vip, client),
			after: func(tb testing.TB, l *lab) {
				wantFlows(1, 0, FlowEstablished)(tb, l)
				wantGlobal(func(g GlobalStats) bool { return g.FlowsConfirmed == 1 })(tb, l)
			}},
		{name: "a confirmed flow keeps working on its backend", bench: "established", before: confirmedFlow, setup: setTable(2),
			in: fromClient(request), verdict: xdpRedirect, want: toBackend(be1, macBE1)},
		{name: "a non-SYN packet of an unknown flow never creates a conntrack entry",
			in: fromClient(ack), verdict: xdpRedirect, want: toBackend(be1, macBE1), after: wantFlows(0, 1, FlowEstablished)},
		{name: "a backend's RST to a blind ACK does not confirm it",
			before: []input{then(fromClient(ack), xdpRedirect)},
			in:     fromBackend(pkt{src: be1, dst: client, proto: TCP, flags: fRST, seq: 5001}), verdict: xdpRedirect, want: toClient(vip, client),
			after: wantFlows(0, 1, FlowClosing)},
		{name: "a reply whose flow entry was evicted is still translated, from backend_ports",
			before: confirmedFlow, setup: deleteFlowEntry(false),
			in: fromBackend(response), verdict: xdpRedirect, want: toClient(vip, client),
			after: wantGlobal(func(g GlobalStats) bool { return g.RepliesWithoutFlow == 1 })},
		{name: "a half-open flow's SYN-ACK whose entry was evicted is still translated",
			before: []input{then(fromClient(syn), xdpRedirect)}, setup: deleteFlowEntry(true),
			in: fromBackend(synAck), verdict: xdpRedirect, want: toClient(vip, client)},
		{name: "nat: a closed flow's client port to a second VIP sharing the backend works, and its replies carry the second VIP",
			pre: addVIP2,
			before: append(append([]input(nil), confirmedFlow...),
				then(fromClient(pkt{src: client, dst: vip, proto: TCP, flags: fFIN | fACK, seq: 1019, ack: 5020}), xdpRedirect),
				then(fromClient(pkt{src: client, dst: vip2, proto: TCP, flags: fSYN, seq: 9000}), xdpRedirect)),
			in: fromBackend(synAck), verdict: xdpRedirect, want: toClient(vip2, client)},
		{name: "a reused client port after a confirmed flow closed follows the current table, packet after packet",
			before: append(append([]input(nil), confirmedFlow...),
				then(fromClient(pkt{src: client, dst: vip, proto: TCP, flags: fFIN | fACK, seq: 1019, ack: 5020}), xdpRedirect)),
			setup: func(tb testing.TB, l *lab) {
				setTable(2)(tb, l)
				if ret, out := l.run(tb, syn.bytes(), l.clientIf); ret != xdpRedirect || !bytes.Equal(out, toBackend(be2, macBE2)(l, syn.bytes())) {
					tb.Fatalf("the new SYN: verdict %s, not to be2", verdictName[ret])
				}
			},
			in: fromClient(ack), verdict: xdpRedirect, want: toBackend(be2, macBE2)},
		{name: "a backend's answer to the host's own connection (L7 proxy, health check) passes",
			in: fromBackend(pkt{src: be1, dst: netip.MustParseAddrPort("198.18.2.1:45000"), proto: TCP, flags: fSYN | fACK}), verdict: xdpPass,
			after: wantGlobal(func(g GlobalStats) bool { return g.PassedNotOurs == 1 })},
		{name: "a UDP flow is confirmed by the backend's answer",
			before: []input{then(fromClient(pkt{src: client, dst: vipUDP, proto: UDP, payload: []byte("q")}), xdpRedirect)},
			in:     fromBackend(pkt{src: beUDP, dst: client, proto: UDP, payload: []byte("a")}), verdict: xdpRedirect, want: toClient(vipUDP, client),
			after: wantFlows(1, 0, FlowUDP)},
		{name: "a SYN flood filling the half-open table many times over evicts no confirmed flow",
			before: confirmedFlow,
			setup: func(tb testing.TB, l *lab) {
				setTable(2)(tb, l) // a re-pick would land on be2: the flow must keep be1
				n := 4 * int(l.r.halfopen.MaxEntries())
				for i := 0; i < n; i++ {
					src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), uint16(1024+i%50000))
					if ret, _ := l.run(tb, pkt{src: src, dst: vip, proto: TCP, flags: fSYN}.bytes(), l.clientIf); ret != xdpRedirect {
						tb.Fatalf("flood SYN %d: verdict %s", i, verdictName[ret])
					}
				}
			},
			in: fromClient(request), verdict: xdpRedirect, want: toBackend(be1, macBE1),
			after: func(tb testing.TB, l *lab) {
				c, h := flowsIn(tb, l)
				if len(c) != 1 || c[0].Client != client || c[0].Backend != be1 {
					tb.Errorf("confirmed flows after the flood: %+v", c)
				}
				if uint32(len(h)) > l.r.halfopen.MaxEntries() {
					tb.Errorf("%d half-open flows in a table of %d entries", len(h), l.r.halfopen.MaxEntries())
				}
				// And its replies still leave as the VIP.
				ret, out := l.run(tb, response.bytes(), l.backendIf)
				if want := toClient(vip, client)(l, response.bytes()); ret != xdpRedirect || !bytes.Equal(out, want) {
					tb.Errorf("reply after the flood: verdict %s", verdictName[ret])
				}
			}},
	}
}

// hostileCases are the frames fuzzing found taken at face value (issue 10,
// item 8): each must leave the program untouched, untracked and counted.
func hostileCases() []xdpCase {
	syn := pkt{src: client, dst: vip, proto: TCP, flags: fSYN, seq: 1000}
	untouched := func(name string, in input, counter func(g GlobalStats) bool) xdpCase {
		return xdpCase{name: name, in: in, verdict: xdpPass, after: func(tb testing.TB, l *lab) {
			tb.Helper()
			wantGlobal(counter)(tb, l)
			noFlows(tb, l)
		}}
	}
	malformed := func(g GlobalStats) bool { return g.Malformed == 1 }
	ipField := func(p pkt, fixCsum bool, f func(ip []byte)) input {
		b := p.bytes()
		ip := b[14:]
		f(ip)
		if fixCsum {
			ip[10], ip[11] = 0, 0
			binary.BigEndian.PutUint16(ip[10:], csumFold(csumAdd(0, ip[:int(ip[0]&0xf)*4])))
		}
		return input{frame: b}
	}
	totLen := func(n uint16) func(ip []byte) {
		return func(ip []byte) { binary.BigEndian.PutUint16(ip[2:], n) }
	}
	udp := pkt{src: client, dst: vipUDP, proto: UDP, payload: []byte("query")}
	udpLen := func(n uint16) func(ip []byte) {
		return func(ip []byte) { binary.BigEndian.PutUint16(ip[20+4:], n) }
	}
	router := netip.MustParseAddr("198.18.0.254")
	icmpCut := icmpError(router, vip.Addr(), 3, 4, vip, client, TCP)
	// The outer total length ends inside the quoted ports.
	binary.BigEndian.PutUint16(icmpCut[14+2:], 20+8+20+2)
	icmpCut[14+10], icmpCut[14+11] = 0, 0
	binary.BigEndian.PutUint16(icmpCut[14+10:], csumFold(csumAdd(0, icmpCut[14:34])))

	return []xdpCase{
		untouched("a total length past the frame", ipField(syn, true, totLen(60)), malformed),
		untouched("total length 0", ipField(syn, true, totLen(0)), malformed),
		untouched("total length 20: no TCP header inside", ipField(syn, true, totLen(20)), malformed),
		untouched("total length 30: half a TCP header inside", ipField(syn, true, totLen(30)), malformed),
		untouched("IHL 4", ipField(syn, true, func(ip []byte) { ip[0] = 0x44 }), malformed),
		untouched("IHL past the total length", ipField(syn, false, func(ip []byte) { ip[0] = 0x4f }), malformed),
		untouched("TCP data offset 0", ipField(syn, false, func(ip []byte) { ip[20+12] = 0 }), malformed),
		untouched("TCP data offset 4", ipField(syn, false, func(ip []byte) { ip[20+12] = 4 << 4 }), malformed),
		untouched("TCP data offset past the total length", ipField(syn, false, func(ip []byte) { ip[20+12] = 15 << 4 }), malformed),
		untouched("UDP length 7", ipField(udp, false, udpLen(7)), malformed),
		untouched("UDP length past the datagram", ipField(udp, false, udpLen(200)), malformed),
		untouched("a wrong IPv4 header checksum", ipField(syn, false, func(ip []byte) { ip[10] ^= 0x40 }), malformed),
		untouched("a wrong IPv4 header checksum in the options", ipField(pkt{src: client, dst: vip, proto: TCP, flags: fSYN, options: []byte{1, 1, 1, 0}}, false, func(ip []byte) { ip[21] = 7 }), malformed),
		untouched("source port 0", fromClient(pkt{src: netip.AddrPortFrom(client.Addr(), 0), dst: vip, proto: TCP, flags: fSYN}), malformed),
		untouched("source address 0.0.0.0", fromClient(pkt{src: netip.MustParseAddrPort("0.0.0.0:40000"), dst: vip, proto: TCP, flags: fSYN}), malformed),
		untouched("UDP from port 0", fromClient(pkt{src: netip.AddrPortFrom(client.Addr(), 0), dst: vipUDP, proto: UDP, payload: []byte("q")}), malformed),
		untouched("a TTL 1 SYN is passed before any rewrite or tracking",
			fromClient(pkt{src: client, dst: vip, proto: TCP, flags: fSYN, ttl: 1}),
			func(g GlobalStats) bool { return g.PassedTTLExceeded == 1 }),
		{name: "a TTL 1 reply is passed untouched", before: []input{then(fromClient(syn), xdpRedirect)},
			in:      fromBackend(pkt{src: be1, dst: client, proto: TCP, flags: fSYN | fACK, seq: 5000, ack: 1001, ttl: 1}),
			verdict: xdpPass, after: wantGlobal(func(g GlobalStats) bool { return g.PassedTTLExceeded == 1 && g.RepliesTranslated == 0 })},
		{name: "an ICMP quote past the outer total length is left alone",
			before: []input{then(fromClient(syn), xdpRedirect)}, in: input{frame: icmpCut}, verdict: xdpPass,
			after: wantGlobal(func(g GlobalStats) bool { return g.ICMPTranslated == 0 })},
		{name: "nat: the same client port to a second VIP sharing the backend is refused",
			before: []input{then(fromClient(syn), xdpRedirect)}, setup: addVIP2,
			in: fromClient(pkt{src: client, dst: vip2, proto: TCP, flags: fSYN, seq: 7}), verdict: xdpTX, want: wantRST,
			after: wantService(svcVIP2, func(s ServiceStats) bool { return s.RSTNATConflict == 1 && s.NewFlows == 0 })},
		{name: "nat: the first flow's replies keep their VIP",
			before: []input{then(fromClient(syn), xdpRedirect), then(fromClient(pkt{src: client, dst: vip2, proto: TCP, flags: fSYN, seq: 7}), xdpTX)},
			pre:    addVIP2, in: fromBackend(pkt{src: be1, dst: client, proto: TCP, flags: fSYN | fACK, seq: 5000, ack: 1001}),
			verdict: xdpRedirect, want: toClient(vip, client)},
		{name: "nat: a second VIP sharing the backend from another port works", before: []input{then(fromClient(syn), xdpRedirect)}, setup: addVIP2,
			in: fromClient(pkt{src: clientPort(40001), dst: vip2, proto: TCP, flags: fSYN, seq: 7}), verdict: xdpRedirect, want: toBackend(be1, macBE1)},
		{name: "nat: the same client port to a second VIP after the first flow is gone works",
			before: []input{then(fromClient(syn), xdpRedirect)},
			setup: func(tb testing.TB, l *lab) {
				addVIP2(tb, l)
				var flows []Flow
				mustSet(tb, l.r.Flows(func(f Flow) bool { flows = append(flows, f); return true }))
				for _, f := range flows {
					mustSet(tb, l.r.halfOpenDelete(&bpf.SluiceCtKey{Saddr: be32(f.Client.Addr()), Daddr: be32(f.VIP.Addr()),
						Sport: be16(f.Client.Port()), Dport: be16(f.VIP.Port()), Proto: uint8(f.Proto)}))
				}
			},
			in: fromClient(pkt{src: client, dst: vip2, proto: TCP, flags: fSYN, seq: 7}), verdict: xdpRedirect, want: toBackend(be1, macBE1)},
	}
}

// A second nat VIP whose table holds be1 too.
var vip2 = netip.MustParseAddrPort("198.18.1.104:80")

const svcVIP2 = 4

func addVIP2(tb testing.TB, l *lab) {
	mustSet(tb, l.r.SetService(ServiceKey{VIP: vip2.Addr(), Port: vip2.Port(), Proto: TCP}, Service{ID: svcVIP2, PoolID: PoolID("web")}))
	mustSet(tb, l.r.SetTable(svcVIP2, fill(l.r.TableSize(), 1)))
}

func noFlows(tb testing.TB, l *lab) {
	tb.Helper()
	n := 0
	mustSet(tb, l.r.eachCT(monotonicNow(), func(*bpf.SluiceCtKey, *bpf.SluiceCtValue, bool) bool { n++; return true }))
	if n != 0 {
		tb.Errorf("%d conntrack entries, want none", n)
	}
}

func netipFrom4(a, b, c, d byte) netip.Addr { return netip.AddrFrom4([4]byte{a, b, c, d}) }
