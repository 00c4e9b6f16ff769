package datapath

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
)

// The IPv6 prog.Run cases (issue 12): the IPv4 table's kinds (new flow,
// established, reply, non-VIP, removed backend, empty service, fragments,
// hostile headers, MTU, ICMP errors) plus extension headers and the nat
// layout of IPv6 (one entry per flow, replies found through nat_hint6).
// Every expected frame is built from scratch by packet6_test.go. They run
// in TestXDP, BenchmarkXDP and FuzzXDP's seeds with the IPv4 ones; each
// starts from the IPv4 and the IPv6 baselines (reset6).

func fromClient6(p pkt6) input  { return input{frame: p.bytes()} }
func fromBackend6(p pkt6) input { return input{frame: p.bytes(), fromBE: true} }

func clientPort6(port uint16) netip.AddrPort { return netip.AddrPortFrom(client6.Addr(), port) }

// newClient6 is an IPv6 client address and port never seen before.
func newClient6(i int) netip.AddrPort {
	a := client6.Addr().As16()
	a[13], a[14], a[15] = byte(i>>16), byte(i>>8), byte(i)|1
	return netip.AddrPortFrom(netip.AddrFrom16(a), uint16(i)|1)
}

func withService6(k ServiceKey, s Service, slots ...uint32) func(tb testing.TB, l *lab) {
	return func(tb testing.TB, l *lab) {
		mustSet(tb, l.r.SetService(k, s))
		mustSet(tb, l.r.SetTable(s.ID, fill(l.r.TableSize(), slots...)))
	}
}

func xdpCases6() []xdpCase {
	syn := pkt6{src: client6, dst: vip6, proto: TCP, flags: fSYN, seq: 1000}
	synAck := pkt6{src: be6a, dst: client6, proto: TCP, flags: fSYN | fACK, seq: 5000, ack: 1001}
	ack := pkt6{src: client6, dst: vip6, proto: TCP, flags: fACK, seq: 1001, ack: 5001}
	request := pkt6{src: client6, dst: vip6, proto: TCP, flags: fACK | fPSH, seq: 1001, ack: 5001, payload: []byte("GET / HTTP/1.1\r\n\r\n")}
	response := pkt6{src: be6a, dst: client6, proto: TCP, flags: fACK | fPSH, seq: 5001, ack: 1019, payload: []byte("HTTP/1.1 200 OK\r\n\r\n")}
	query := pkt6{src: client6, dst: vip6UDP, proto: UDP, payload: []byte("query")}
	answer := pkt6{src: be6UDP, dst: client6, proto: UDP, payload: []byte("answer")}
	opened := []input{then(fromClient6(syn), xdpRedirect)}
	handshake := []input{
		then(fromClient6(syn), xdpRedirect), then(fromBackend6(synAck), xdpRedirect),
		then(fromClient6(ack), xdpRedirect), then(fromClient6(request), xdpRedirect),
	}
	confirmed := append(append([]input(nil), handshake...), then(fromBackend6(response), xdpRedirect))
	big := make([]byte, 1300)
	toDrop := func(s ServiceStats) bool { return s.Fragments == 1 }
	synWith := func(exts ...ext6) pkt6 { p := syn; p.exts = exts; return p }

	cases := []xdpCase{
		{name: "v6: non-VIP TCP passes untouched", bench: "non-vip-v6",
			in:      fromClient6(pkt6{src: client6, dst: netip.AddrPortFrom(lbClient6, 22), proto: TCP, flags: fACK, payload: make([]byte, 64)}),
			verdict: xdpPass},
		{name: "v6: VIP on another port passes untouched",
			in: fromClient6(pkt6{src: client6, dst: netip.AddrPortFrom(vip6.Addr(), 81), proto: TCP, flags: fSYN}), verdict: xdpPass},
		{name: "v6: new flow SYN is NATed to the backend, one half-open entry", bench: "new-flow-syn-v6",
			in: fromClient6(syn), verdict: xdpRedirect, want: toBackend6(be6a, macBE1),
			after: func(tb testing.TB, l *lab) {
				wantService(svcTCP6, func(s ServiceStats) bool { return s.NewFlows == 1 && s.Packets == 1 })(tb, l)
				wantFlows(0, 1, FlowSynSent)(tb, l)
				wantEntries6(tb, l, 0, 1)
			},
			next: func(i int) []byte { return pkt6{src: newClient6(i), dst: vip6, proto: TCP, flags: fSYN}.bytes() }},
		{name: "v6: the backend's SYN-ACK is reverse-NATed to the VIP (no reverse entry: the hint names the VIP)", before: opened,
			in: fromBackend6(synAck), verdict: xdpRedirect, want: toClient6(vip6, client6),
			after: func(tb testing.TB, l *lab) {
				wantGlobal(func(g GlobalStats) bool { return g.RepliesTranslated == 1 })(tb, l)
				wantFlows(0, 1, FlowSynRecv)(tb, l)
			}},
		{name: "v6: the backend's first answer after the handshake confirms the flow: one conntrack6 entry",
			before: handshake, in: fromBackend6(response), verdict: xdpRedirect, want: toClient6(vip6, client6),
			after: func(tb testing.TB, l *lab) {
				wantFlows(1, 0, FlowEstablished)(tb, l)
				wantEntries6(tb, l, 1, 0)
				wantGlobal(func(g GlobalStats) bool { return g.FlowsConfirmed == 1 })(tb, l)
			}},
		{name: "v6: a confirmed flow keeps its backend when the table changes", bench: "established-v6",
			before: confirmed, setup: withService6(keyTCP6, Service{ID: svcTCP6}, slotBE6b),
			in: fromClient6(request), verdict: xdpRedirect, want: toBackend6(be6a, macBE1)},
		{name: "v6: a confirmed flow's replies are translated", bench: "reply-v6",
			before: confirmed, in: fromBackend6(response), verdict: xdpRedirect, want: toClient6(vip6, client6)},
		{name: "v6: a new flow follows the new table", setup: withService6(keyTCP6, Service{ID: svcTCP6}, slotBE6b),
			in: fromClient6(syn), verdict: xdpRedirect, want: toBackend6(be6b, macBE2)},
		{name: "v6: draining backend keeps its flow", before: opened,
			setup: setBackend(slotBE6a, Backend{Addr: be6a, Gen: 1, State: BackendDraining}),
			in:    fromClient6(request), verdict: xdpRedirect, want: toBackend6(be6a, macBE1)},
		{name: "v6: removed backend: the pinned flow gets an IPv6 RST", before: confirmed,
			setup: setBackend(slotBE6a, Backend{Addr: be6a, Gen: 1, State: BackendRemoved}),
			in:    fromClient6(request), verdict: xdpTX, want: wantRST6,
			after: wantService(svcTCP6, func(s ServiceStats) bool { return s.RSTRemovedBackend == 1 })},
		{name: "v6: a slot reused by an IPv4 backend: the pinned flow gets an RST", before: opened,
			setup: setBackend(slotBE6a, Backend{Addr: be1, Gen: 2, State: BackendActive}),
			in:    fromClient6(request), verdict: xdpTX, want: wantRST6},
		{name: "v6: a service without backends answers a SYN with an RST",
			in:      fromClient6(pkt6{src: client6, dst: vip6None, proto: TCP, flags: fSYN, seq: 77, payload: []byte("x")}),
			verdict: xdpTX, want: wantRST6,
			after: wantService(svcNone6, func(s ServiceStats) bool { return s.RSTNoBackend == 1 })},
		{name: "v6: an RST to a service without backends is dropped, never answered",
			in: fromClient6(pkt6{src: client6, dst: vip6None, proto: TCP, flags: fRST}), verdict: xdpDrop},
		{name: "v6: UDP query is NATed", in: fromClient6(query), verdict: xdpRedirect, want: toBackend6(be6UDP, macBE1)},
		{name: "v6: UDP answer is translated and confirms the flow",
			before: []input{then(fromClient6(query), xdpRedirect)},
			in:     fromBackend6(answer), verdict: xdpRedirect, want: toClient6(vip6UDP, client6),
			after: wantFlows(1, 0, FlowUDP)},
		{name: "v6: removed backend: a UDP flow's datagrams are dropped",
			before: []input{then(fromClient6(query), xdpRedirect)},
			setup:  setBackend(slotBE6UDP, Backend{Addr: be6UDP, Gen: 1, State: BackendRemoved}),
			in:     fromClient6(query), verdict: xdpDrop,
			after: wantService(svcUDP6, func(s ServiceStats) bool { return s.DropRemovedBackend == 1 })},
		{name: "v6: a SYN-ACK from a backend for no flow is dropped, never leaked",
			in: fromBackend6(synAck), verdict: xdpDrop,
			after: wantGlobal(func(g GlobalStats) bool { return g.SYNACKNoFlowDrops == 1 })},
		{name: "v6: a backend's packet for no flow passes untouched",
			in: fromBackend6(response), verdict: xdpPass},

		// Two nat VIPs sharing a backend endpoint (nat_hint6 shared).
		{name: "v6: a reply of the VIP the hint does not name is found by trying each nat service",
			pre: withService6(keyB6, Service{ID: svcB6}, slotBE6a),
			before: []input{
				then(fromClient6(syn), xdpRedirect),
				then(fromClient6(pkt6{src: clientPort6(40001), dst: vip6B, proto: TCP, flags: fSYN}), xdpRedirect),
			},
			in: fromBackend6(synAck), verdict: xdpRedirect, want: toClient6(vip6, client6)},
		{name: "v6: the same client port to a second VIP on the same backend is refused while the first flow lives",
			pre:    withService6(keyB6, Service{ID: svcB6}, slotBE6a),
			before: opened,
			in:     fromClient6(pkt6{src: client6, dst: vip6B, proto: TCP, flags: fSYN, seq: 9}), verdict: xdpTX, want: wantRST6,
			after: wantService(svcB6, func(s ServiceStats) bool { return s.RSTNATConflict == 1 })},
		{name: "v6: ...and allowed once the first flow is closing",
			pre:    withService6(keyB6, Service{ID: svcB6}, slotBE6a),
			before: []input{then(fromClient6(syn), xdpRedirect), then(fromClient6(pkt6{src: client6, dst: vip6, proto: TCP, flags: fRST, seq: 1001}), xdpRedirect)},
			in:     fromClient6(pkt6{src: client6, dst: vip6B, proto: TCP, flags: fSYN, seq: 9}), verdict: xdpRedirect, want: toBackend6(be6a, macBE1)},

		// Extension headers.
		{name: "v6: a SYN with hop-by-hop and destination options headers is NATed",
			in: fromClient6(synWith(hopByHop(), destOptions())), verdict: xdpRedirect, want: toBackend6(be6a, macBE1)},
		{name: "v6: a routing header without segments left is walked through",
			in: fromClient6(synWith(routing(0))), verdict: xdpRedirect, want: toBackend6(be6a, macBE1)},
		{name: "v6: a routing header with segments left passes untouched (the destination is not the final one)",
			in: fromClient6(synWith(routing(1))), verdict: xdpPass},
		{name: "v6: an atomic fragment (offset 0, no more fragments) is NATed",
			in: fromClient6(synWith(fragment(0, false))), verdict: xdpRedirect, want: toBackend6(be6a, macBE1)},
		{name: "v6: a first fragment to a VIP is dropped and counted",
			in: fromClient6(synWith(fragment(0, true))), verdict: xdpDrop,
			after: func(tb testing.TB, l *lab) { wantService(svcTCP6, toDrop)(tb, l); noFlows(tb, l) }},
		{name: "v6: a later fragment to a VIP is dropped and counted on the VIP's lowest service id",
			in: fromClient6(pkt6{src: client6, dst: vip6UDP, proto: UDP, payload: []byte("rest"), exts: []ext6{fragment(20, false)}}), verdict: xdpDrop,
			after: wantService(svcTCP6, toDrop)},
		{name: "v6: a reply fragment from a backend is dropped, never passed un-translated", before: opened,
			in: fromBackend6(pkt6{src: be6a, dst: client6, proto: TCP, flags: fACK, payload: make([]byte, 32), exts: []ext6{fragment(0, true)}}), verdict: xdpDrop,
			after: wantGlobal(func(g GlobalStats) bool { return g.BackendFragments == 1 && g.RepliesTranslated == 0 })},
		{name: "v6: a fragment neither to a VIP nor from a backend passes untouched",
			in: fromClient6(pkt6{src: client6, dst: netip.AddrPortFrom(lbClient6, 22), proto: TCP, flags: fACK, exts: []ext6{fragment(0, true)}}), verdict: xdpPass},
		{name: "v6: more extension headers than the walk takes pass untouched, counted malformed",
			in: fromClient6(synWith(destOptions(), destOptions(), destOptions(), destOptions(), destOptions(), destOptions(), destOptions())), verdict: xdpPass,
			after: func(tb testing.TB, l *lab) {
				wantGlobal(func(g GlobalStats) bool { return g.Malformed == 1 })(tb, l)
				noFlows(tb, l)
			}},
		{name: "v6: a hop-by-hop header after another one is malformed and passes untouched",
			in: fromClient6(synWith(destOptions(), hopByHop())), verdict: xdpPass,
			after: wantGlobal(func(g GlobalStats) bool { return g.Malformed == 1 })},
		{name: "v6: an RST is not built for a segment with extension headers: dropped",
			in: fromClient6(pkt6{src: client6, dst: vip6None, proto: TCP, flags: fSYN, exts: []ext6{destOptions()}}), verdict: xdpDrop},

		// Hostile headers.
		{name: "v6: a truncated IPv6 header passes untouched", in: fromClient6(pkt6{src: client6, dst: vip6, proto: TCP, flags: fSYN, truncateTo: 40}), verdict: xdpPass},
		{name: "v6: a payload length past the frame passes untouched", in: fromClient6(pkt6{src: client6, dst: vip6, proto: TCP, flags: fSYN, truncateTo: 14 + 40 + 19}), verdict: xdpPass},
		{name: "v6: a UDP datagram without a checksum (not allowed over IPv6) passes untouched",
			in: fromClient6(pkt6{src: client6, dst: vip6UDP, proto: UDP, payload: []byte("q"), zeroCsum: true}), verdict: xdpPass,
			after: func(tb testing.TB, l *lab) {
				wantGlobal(func(g GlobalStats) bool { return g.Malformed == 1 })(tb, l)
				noFlows(tb, l)
			}},
		{name: "v6: a multicast source is never a peer: passes untouched",
			in: fromClient6(pkt6{src: netip.MustParseAddrPort("[ff02::1]:40000"), dst: vip6, proto: TCP, flags: fSYN}), verdict: xdpPass},
		{name: "v6: hop limit 1 to a VIP passes untouched for the kernel's Time Exceeded",
			in: fromClient6(pkt6{src: client6, dst: vip6, proto: TCP, flags: fSYN, hopLimit: 1}), verdict: xdpPass,
			after: func(tb testing.TB, l *lab) {
				wantGlobal(func(g GlobalStats) bool { return g.PassedTTLExceeded == 1 })(tb, l)
				noFlows(tb, l)
			}},

		// MTU: IPv6 routers never fragment; the sender gets a Packet Too Big.
		{name: "v6: a packet too big for the backend's link is answered with a Packet Too Big quoting it as sent",
			setup:   withMTU(backendSide, 1280),
			in:      fromClient6(pkt6{src: client6, dst: vip6, proto: TCP, flags: fACK | fPSH, seq: 1, ack: 1, payload: big}),
			verdict: xdpTX, want: func(_ *lab, in []byte) []byte { return ptbFor6(in, 1280) },
			after: wantGlobal(func(g GlobalStats) bool { return g.FragNeededSent == 1 })},
		{name: "v6: a reply too big for the client's link gets the backend a Packet Too Big", before: opened,
			setup:   thenNextHopsExpire6(withMTU(clientSide, 1280)),
			in:      fromBackend6(pkt6{src: be6a, dst: client6, proto: TCP, flags: fACK | fPSH, seq: 5001, ack: 1001, payload: big}),
			verdict: xdpTX, want: func(_ *lab, in []byte) []byte { return ptbFor6(in, 1280) }},

		// ICMPv6 errors about tracked flows.
		{name: "v6: a Packet Too Big about a reply (VIP -> client) reaches the backend, quoting what it sent", before: opened,
			in:      input{frame: icmp6Error(router6, vip6.Addr(), 2, 0, 1400, vip6, client6, TCP)},
			verdict: xdpRedirect,
			want: func(l *lab, _ []byte) []byte {
				return forwarded6(icmp6Error(router6, be6a.Addr(), 2, 0, 1400, be6a, client6, TCP), hop{dmac: macBE1, smac: [6]byte(l.backendIf.HardwareAddr)})
			},
			after: wantGlobal(func(g GlobalStats) bool { return g.ICMPTranslated == 1 })},
		{name: "v6: a port unreachable from a backend about a client's packet reaches the client quoting the VIP", before: opened,
			in:      input{frame: icmp6Error(be6a.Addr(), client6.Addr(), 1, 4, 0, client6, be6a, TCP), fromBE: true},
			verdict: xdpRedirect,
			want: func(l *lab, _ []byte) []byte {
				return forwarded6(icmp6Error(be6a.Addr(), client6.Addr(), 1, 4, 0, client6, vip6, TCP), hop{dmac: macClient, smac: [6]byte(l.clientIf.HardwareAddr)})
			}},
		{name: "v6: an ICMPv6 error about no flow passes untouched",
			in: input{frame: icmp6Error(router6, vip6.Addr(), 2, 0, 1400, vip6, client6, TCP)}, verdict: xdpPass},
		{name: "v6: an echo request to a VIP passes untouched",
			in: input{frame: icmp6Frame(client6.Addr(), vip6.Addr(), 128, 0, 0x10001, []byte("ping"))}, verdict: xdpPass},
	}
	for i := range cases {
		pre := cases[i].pre
		cases[i].pre = func(tb testing.TB, l *lab) {
			l.reset6(tb)
			if pre != nil {
				pre(tb, l)
			}
		}
	}
	return cases
}

// thenNextHopsExpire6 is thenNextHopsExpire for the IPv6 next-hop caches.
func thenNextHopsExpire6(setup func(tb testing.TB, l *lab)) func(tb testing.TB, l *lab) {
	return func(tb testing.TB, l *lab) {
		setup(tb, l)
		l.reset6hops(tb)
		l.forgetReplyHops6(tb)
	}
}

func (l *lab) reset6hops(tb testing.TB) {
	tb.Helper()
	ncpu, err := ebpf.PossibleCPU()
	mustSet(tb, err)
	for i := uint32(8); i < 16; i++ {
		mustSet(tb, l.r.backendHops6.Put(i, make([]bpf.SluiceBackendHop6, ncpu)))
	}
}

// wantEntries6 checks how many entries conntrack6 and halfopen6 hold: a
// nat flow is one entry (docs/architecture.md).
func wantEntries6(tb testing.TB, l *lab, conntrack, halfOpen int) {
	tb.Helper()
	count := func(m *ebpf.Map) int {
		n := 0
		mustSet(tb, eachIn(m, "test", func(*bpf.SluiceCt6Key, *bpf.SluiceCt6Value) bool { n++; return true }))
		return n
	}
	if c, h := count(l.r.conntrack6), count(l.r.halfopen6); c != conntrack || h != halfOpen {
		tb.Errorf("conntrack6 holds %d entries, halfopen6 %d; want %d and %d", c, h, conntrack, halfOpen)
	}
}
