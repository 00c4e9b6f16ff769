package datapath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
)

// FuzzXDP's IPv6 half: the lab's IPv6 services get open flows too
// (populate6), IPv6 seeds join the corpus (fuzzSeeds6), and checkOutput6
// holds an IPv6 frame to the same invariants as checkOutput an IPv4 one
// (no header checksum to check; the TCP/UDP/ICMPv6 checksums cover the
// pseudo-header).

func (l *lab) populate6(tb testing.TB) {
	l.reset6(tb)
	for _, p := range []pkt6{
		{src: client6, dst: vip6, proto: TCP, flags: fSYN, seq: 1000},
		{src: client6, dst: vip6UDP, proto: UDP, payload: []byte("query")},
		{src: client6, dst: vip6SNAT, proto: TCP, flags: fSYN, seq: 1000},
	} {
		l.run(tb, p.bytes(), l.clientIf)
	}
}

func fuzzSeeds6() []fuzzSeed {
	return []fuzzSeed{
		{icmp6Error(router6, vip6.Addr(), 2, 0, 1280, vip6, client6, TCP), false},
		{icmp6Error(router6, vip6SNAT.Addr(), 3, 0, 0, vip6SNAT, client6, TCP), false},
		{icmp6Error(be6a.Addr(), client6.Addr(), 1, 4, 0, client6, be6a, TCP), true},
		{icmp6Error(be6UDP.Addr(), client6.Addr(), 1, 4, 0, client6, be6UDP, UDP), true},
		{pkt6{src: client6, dst: vip6, proto: TCP, flags: fSYN, exts: []ext6{hopByHop(), routing(0), destOptions(), fragment(0, false)}}.bytes(), false},
		{pkt6{src: client6, dst: vip6UDP, proto: UDP, payload: make([]byte, 40), exts: []ext6{fragment(3, true)}}.bytes(), false},
		{pkt6{src: be6a, dst: client6, proto: TCP, flags: fACK, payload: make([]byte, 40), exts: []ext6{fragment(0, true)}}.bytes(), true},
		{pkt6{src: client6, dst: vip6SNAT, proto: TCP, flags: fACK | fPSH, seq: 1001, ack: 1, payload: []byte("GET /")}.bytes(), false},
		{pkt6{src: be6b, dst: netip.AddrPortFrom(snat6, 20000), proto: TCP, flags: fSYN | fACK, ack: 1001}.bytes(), true},
		{pkt6{src: client6, dst: vip6, proto: TCP, flags: 0xff, seq: 1, ack: 2, payload: []byte("x")}.bytes(), false},
	}
}

// ipv6 is what checkOutput6 reads of a frame: nil ip when it is not a
// well-formed IPv6 packet.
type ipv6 struct {
	ip       []byte // header and payload, up to the payload length
	l4       []byte // the upper-layer header and payload (nil: not reached)
	nh       uint8
	src, dst netip.Addr
	frag     bool
}

func isIPv6Frame(b []byte) bool { return len(b) >= 14 && binary.BigEndian.Uint16(b[12:]) == 0x86dd }

func readIPv6(frame []byte) ipv6 {
	if len(frame) < 54 || !isIPv6Frame(frame) || frame[14]>>4 != 6 {
		return ipv6{}
	}
	ip := frame[14:]
	tot := 40 + int(binary.BigEndian.Uint16(ip[4:]))
	if tot > len(ip) {
		return ipv6{}
	}
	p := ipv6{ip: ip[:tot], src: netip.AddrFrom16([16]byte(ip[8:24])), dst: netip.AddrFrom16([16]byte(ip[24:40]))}
	nh, off := ip[6], 40
	for i := 0; i < 16; i++ {
		if nh != nhHop && nh != nhRouting && nh != nhDest && nh != nhFragment {
			break
		}
		if off+8 > tot {
			return p
		}
		next := ip[off]
		if nh == nhFragment {
			if binary.BigEndian.Uint16(ip[off+2:])&0xfff9 != 0 {
				p.frag = true
			}
			off += 8
		} else {
			off += (int(ip[off+1]) + 1) * 8
		}
		nh = next
	}
	if off > tot {
		return p
	}
	p.nh, p.l4 = nh, p.ip[off:]
	return p
}

func (p ipv6) l4OK() bool {
	if p.l4 == nil || p.frag {
		return false
	}
	switch p.nh {
	case 6:
		return len(p.l4) >= 20 && csumFold(csumAdd(pseudo6(p.src, p.dst, 6, len(p.l4)), p.l4)) == 0
	case 17:
		return len(p.l4) >= 8 && int(binary.BigEndian.Uint16(p.l4[4:])) == len(p.l4) &&
			csumFold(csumAdd(pseudo6(p.src, p.dst, 17, len(p.l4)), p.l4)) == 0
	case nhICMPv6:
		return len(p.l4) >= 8 && csumFold(csumAdd(pseudo6(p.src, p.dst, nhICMPv6, len(p.l4)), p.l4)) == 0
	}
	return false
}

// quoted returns an ICMPv6 error's quoted source and destination.
func (p ipv6) quoted() (src, dst netip.Addr, ok bool) {
	if p.nh != nhICMPv6 || len(p.l4) < 8+40 || p.l4[0] >= 128 {
		return src, dst, false
	}
	q := p.l4[8:]
	return netip.AddrFrom16([16]byte(q[8:24])), netip.AddrFrom16([16]byte(q[24:40])), true
}

var backend6Addrs = []netip.Addr{be6a.Addr(), be6b.Addr()}

func checkOutput6(in, out []byte, ret uint32) error {
	pin := readIPv6(in)
	ours := pin.ip != nil && (isOneOf(pin.dst, vip6Addrs) || isOneOf(pin.src, backend6Addrs))
	if qs, qd, ok := pin.quoted(); ok && (isOneOf(qs, vip6Addrs) || isOneOf(qd, vip6Addrs) || isOneOf(qs, backend6Addrs) || isOneOf(qd, backend6Addrs) || qd == snat6 || qs == snat6) {
		ours = true
	}
	changed := !bytes.Equal(in, out)
	if !ours {
		if ret != xdpPass || changed {
			return fmt.Errorf("an IPv6 frame for no VIP and from no backend: verdict %s, changed %v", verdictName[ret], changed)
		}
		return nil
	}
	if !changed {
		return nil
	}
	pout := readIPv6(out)
	if pout.ip == nil {
		return fmt.Errorf("changed frame is no well-formed IPv6 packet")
	}
	fresh := ret == xdpTX && pout.nh == 6 && len(pout.l4) >= 20 && pout.l4[13]&fRST != 0 && pout.src == pin.dst && pout.dst == pin.src
	// A Packet Too Big built from scratch goes back where the packet came
	// from; a translated one (checksum updated incrementally) goes on.
	ptb := ret == xdpTX && pout.nh == nhICMPv6 && len(pout.l4) > 0 && pout.l4[0] == 2 && pout.src == pin.dst && pout.dst == pin.src
	if (fresh || ptb || pin.l4OK()) && !pout.l4OK() {
		return fmt.Errorf("next header %d: checksum broken by the program (input's was valid: %v)", pout.nh, pin.l4OK())
	}
	if !isOneOf(pout.dst, backend6Addrs) {
		if pout.nh != nhICMPv6 && (isOneOf(pout.src, backend6Addrs) || pout.src == snat6) {
			return fmt.Errorf("towards client %v with source %v where the VIP belongs", pout.dst, pout.src)
		}
		if qs, qd, ok := pout.quoted(); ok && !ptb && (isOneOf(qd, backend6Addrs) || qs == snat6) {
			return fmt.Errorf("ICMPv6 error towards client %v quotes %v -> %v where the VIP belongs", pout.dst, qs, qd)
		}
	}
	return nil
}
