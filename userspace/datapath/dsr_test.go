package datapath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/sluicelb/sluice/bpf"
)

// nodeSrc is the lab's address towards the backends: the outer source of
// the encapsulated packets (a slot's Src, written by the agent).
var nodeSrc = netip.MustParseAddr("198.18.2.1")

// ipip is in (an option-less IPv4 frame) inside an outer IPv4 header from
// src to dst, built from scratch: TOS and ID copied, DF copied, TTL 64 (63
// when forwarded: h set), protocol 4, its checksum computed here. The
// client's packet is not changed by a single byte.
func ipip(in []byte, src, dst netip.Addr, h *hop) []byte {
	inner := in[14:]
	tot := int(binary.BigEndian.Uint16(inner[2:]))
	b := make([]byte, 14+20+tot)
	copy(b[0:12], in[0:12])
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	o := b[14:34]
	o[0] = 0x45
	o[1] = inner[1]
	binary.BigEndian.PutUint16(o[2:], uint16(20+tot))
	copy(o[4:6], inner[4:6])
	binary.BigEndian.PutUint16(o[6:], binary.BigEndian.Uint16(inner[6:])&0x4000)
	o[8] = 64
	o[9] = 4
	s, d := src.As4(), dst.As4()
	copy(o[12:16], s[:])
	copy(o[16:20], d[:])
	if h != nil {
		copy(b[0:6], h.dmac[:])
		copy(b[6:12], h.smac[:])
		o[8]--
	}
	binary.BigEndian.PutUint16(o[10:], csumFold(csumAdd(0, o)))
	copy(b[34:], inner[:tot])
	return b
}

func toBackendIPIP(be netip.Addr, mac [6]byte) func(l *lab, in []byte) []byte {
	return func(l *lab, in []byte) []byte {
		return ipip(in, nodeSrc, be, &hop{dmac: mac, smac: [6]byte(l.backendIf.HardwareAddr)})
	}
}

// dsrService makes the baseline tcp service a dsr one, its backends with
// the node's source address.
func dsrService(tb testing.TB, l *lab) {
	mustSet(tb, l.r.SetService(keyTCP, Service{ID: svcTCP, Mode: ModeDSR}))
	for slot, b := range baselineBackends() {
		b.Src = nodeSrc
		mustSet(tb, l.r.SetBackend(slot, b))
	}
}

// Issue 13: the DSR encapsulation, run by TestXDP (and timed by
// BenchmarkXDP) with the other cases. Every output frame is compared byte
// for byte with one built from scratch (outer header and its checksum; the
// client's packet unchanged, its TTL and checksums included).
func dsrCases() []xdpCase {
	syn := pkt{src: client, dst: vip, proto: TCP, flags: fSYN, seq: 1000, fragOff: 0x4000}
	ack := pkt{src: client, dst: vip, proto: TCP, flags: fACK | fPSH, seq: 1001, ack: 5001, payload: []byte("GET / HTTP/1.1\r\n\r\n"), fragOff: 0x4000}
	big := pkt{src: client, dst: vip, proto: TCP, flags: fACK, seq: 1001, ack: 5001, payload: make([]byte, 1500-40), fragOff: 0x4000}
	bigNoDF := big
	bigNoDF.fragOff = 0
	return []xdpCase{
		{name: "dsr: a SYN is encapsulated to the Maglev backend, outer header from the node, the client's packet untouched",
			pre: dsrService, in: fromClient(syn), verdict: xdpRedirect, want: toBackendIPIP(be1.Addr(), macBE1),
			after: wantFlows(0, 1, FlowSynSent), bench: "dsr-new-flow-syn",
			next: func(i int) []byte {
				return pkt{src: newClient(i), dst: vip, proto: TCP, flags: fSYN, fragOff: 0x4000}.bytes()
			}},
		{name: "dsr: the flow's next packets follow it, the client's ACK confirms it (no SYN-ACK passes a node), and no reverse entry is made (replies never come back)",
			pre: dsrService, before: []input{then(fromClient(syn), xdpRedirect)}, setup: setTable(2),
			in: fromClient(ack), verdict: xdpRedirect, want: toBackendIPIP(be1.Addr(), macBE1),
			after: func(tb testing.TB, l *lab) {
				c, h := flowsIn(tb, l)
				if len(c) != 1 || len(h) != 0 || c[0].State != FlowEstablished {
					tb.Errorf("flows: confirmed %+v, half-open %+v", c, h)
				}
				rk := bpf.SluiceCtKey{Saddr: be32(be1.Addr()), Sport: be16(be1.Port()), Daddr: be32(client.Addr()), Dport: be16(client.Port()), Proto: uint8(TCP)}
				var rv bpf.SluiceCtValue
				_, ho, err := l.r.halfOpenLookup(&rk)
				mustSet(tb, err)
				if ho || l.r.conntrack.Lookup(rk, &rv) == nil {
					tb.Errorf("a dsr flow has a reverse entry")
				}
			}, bench: "dsr-established"},
		{name: "dsr: a mid-flow packet without state goes where Maglev says, encapsulated, never reset",
			pre: dsrService, in: fromClient(ack), verdict: xdpRedirect, want: toBackendIPIP(be1.Addr(), macBE1)},
		{name: "dsr: a UDP datagram is encapsulated too",
			pre: func(tb testing.TB, l *lab) {
				mustSet(tb, l.r.SetService(keyUDP, Service{ID: svcUDP, Mode: ModeDSR}))
				dsrService(tb, l)
			},
			in:      fromClient(pkt{src: client, dst: vipUDP, proto: UDP, payload: []byte("q")}),
			verdict: xdpRedirect, want: toBackendIPIP(beUDP.Addr(), macBE1)},
		{name: "dsr: a packet that fits 1500 but not once encapsulated, DF set: fragmentation needed with MTU 1480, quoting it",
			pre: dsrService, in: fromClient(big), verdict: xdpTX,
			want:  func(_ *lab, in []byte) []byte { return fragNeededFor(in, 1480) },
			after: wantGlobal(func(g GlobalStats) bool { return g.FragNeededSent == 1 })},
		{name: "dsr: the same once the next hop's MTU is cached",
			pre: dsrService, before: []input{then(fromClient(syn), xdpRedirect)}, in: fromClient(big), verdict: xdpTX,
			want: func(_ *lab, in []byte) []byte { return fragNeededFor(in, 1480) }},
		{name: "dsr: with a path that carries the overhead (MTU 1520) it is encapsulated",
			pre: func(tb testing.TB, l *lab) { dsrService(tb, l); l.setMTU(tb, l.backendIf, 1520) },
			in:  fromClient(big), verdict: xdpRedirect, want: toBackendIPIP(be1.Addr(), macBE1)},
		{name: "dsr: too big without DF goes to the kernel encapsulated, for it to fragment",
			pre: dsrService, in: fromClient(bigNoDF), verdict: xdpPass,
			want: func(_ *lab, in []byte) []byte { return ipip(in, nodeSrc, be1.Addr(), nil) }},
		{name: "dsr: no source address towards the backend known: dropped, never sent with a wrong one",
			pre: func(tb testing.TB, l *lab) { mustSet(tb, l.r.SetService(keyTCP, Service{ID: svcTCP, Mode: ModeDSR})) },
			in:  fromClient(syn), verdict: xdpDrop},
		{name: "dsr: an empty table answers a SYN with a RST, as in the other modes",
			pre: func(tb testing.TB, l *lab) { dsrService(tb, l); mustSet(tb, l.r.SetTable(svcTCP, nil)) },
			in:  fromClient(syn), verdict: xdpTX, want: wantRST},
	}
}

// FuzzDSR feeds mutated frames to a lab whose tcp service is in mode dsr
// and checks, whatever the input: the verdict is a real one; a frame sent
// on (redirect) or handed to the kernel changed is the input's IPv4 packet,
// byte for byte, inside an outer header from the node to a backend with a
// valid checksum and the right length; an XDP_TX is a RST or an ICMP error
// (checked by the nat fuzz's rules); anything else is unchanged.
func FuzzDSR(f *testing.F) {
	for _, c := range dsrCases() {
		f.Add(c.in.frame)
	}
	l := newLab(f, testTableSize)
	l.reset(f)
	dsrService(f, l)
	backends := map[netip.Addr]bool{be1.Addr(): true, be2.Addr(): true, be3.Addr(): true, beUDP.Addr(): true}
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > 1500 {
			return
		}
		ret, out, err := l.try(frame, l.clientIf)
		if err != nil {
			t.Fatalf("prog run: %v", err)
		}
		switch ret {
		case xdpDrop, xdpTX:
			return
		case xdpPass, xdpRedirect:
		default:
			t.Fatalf("verdict %d", ret)
		}
		if len(out) >= 34 && out[23] == 4 && len(frame) >= 34 && frame[23] != 4 {
			o := out[14:34]
			if csumFold(csumAdd(0, o)) != 0 {
				t.Fatalf("outer header checksum wrong\n in %x\nout %x", frame, out)
			}
			dst := netip.AddrFrom4([4]byte(o[16:20]))
			if !backends[dst] || netip.AddrFrom4([4]byte(o[12:16])) != nodeSrc {
				t.Fatalf("encapsulated from %s to %s\n in %x\nout %x", netip.AddrFrom4([4]byte(o[12:16])), dst, frame, out)
			}
			inner := int(binary.BigEndian.Uint16(frame[16:18]))
			if int(binary.BigEndian.Uint16(o[2:4])) != inner+20 || len(out) < 34+inner || len(frame) < 14+inner ||
				!bytes.Equal(out[34:34+inner], frame[14:14+inner]) {
				t.Fatalf("the client's packet changed inside the tunnel\n in %x\nout %x", frame, out)
			}
			return
		}
		if ret == xdpPass && !bytes.Equal(out, frame) && !bytes.Equal(trimFrame(out), trimFrame(frame)) {
			// Passed changed but not encapsulated: only the rewrite of
			// another mode may do that, and this lab has none for tcp.
			if len(frame) > 23 && frame[23] == 6 {
				t.Fatalf("a tcp frame passed changed without encapsulation\n in %x\nout %x", frame, out)
			}
		}
	})
}
