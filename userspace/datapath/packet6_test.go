package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Crafting and checking IPv6 frames for the prog.Run tests, written from
// the RFCs (8200: header, extension headers, the upper-layer checksum's
// pseudo-header; 4443: ICMPv6; 9293: RST), independently of the C helpers,
// as packet_test.go is for IPv4.

// ext6 is an extension header: its type (the next-header value that names
// it) and its bytes (a multiple of 8; the first byte, the next header, is
// filled in by pkt6.bytes).
type ext6 struct {
	typ  uint8
	body []byte
}

const (
	nhHop      = 0
	nhRouting  = 43
	nhFragment = 44
	nhICMPv6   = 58
	nhDest     = 60
)

// Extension headers of the cases: options headers holding one PadN option,
// a routing header (type 0 without addresses), fragment headers.
func hopByHop() ext6    { return ext6{nhHop, []byte{0, 0, 1, 4, 0, 0, 0, 0}} }
func destOptions() ext6 { return ext6{nhDest, []byte{0, 0, 1, 4, 0, 0, 0, 0}} }
func routing(segmentsLeft uint8) ext6 {
	return ext6{nhRouting, []byte{0, 0, 0, segmentsLeft, 0, 0, 0, 0}}
}

// fragment is a fragment header of offset off (8-byte units) and the M flag.
func fragment(off uint16, more bool) ext6 {
	b := make([]byte, 8)
	v := off << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(b[2:], v)
	binary.BigEndian.PutUint32(b[4:], 0x5eed)
	return ext6{nhFragment, b}
}

type pkt6 struct {
	src, dst   netip.AddrPort
	proto      Proto
	flags      uint8
	seq, ack   uint32
	payload    []byte
	hopLimit   uint8 // 0: 64
	exts       []ext6
	zeroCsum   bool // UDP without a checksum (not allowed over IPv6)
	truncateTo int
}

// pseudo6 is the one's complement sum of the IPv6 pseudo-header (RFC 8200
// 8.1): source, destination, 32-bit upper-layer length, 24 zero bits and
// the next header.
func pseudo6(src, dst netip.Addr, nh uint8, l4len int) uint32 {
	s, d := src.As16(), dst.As16()
	sum := csumAdd(0, s[:])
	sum = csumAdd(sum, d[:])
	var tail [8]byte
	binary.BigEndian.PutUint32(tail[0:], uint32(l4len))
	tail[7] = nh
	return csumAdd(sum, tail[:])
}

func (p pkt6) l4() []byte {
	var l4 []byte
	if p.proto == UDP {
		l4 = make([]byte, 8)
		binary.BigEndian.PutUint16(l4[0:], p.src.Port())
		binary.BigEndian.PutUint16(l4[2:], p.dst.Port())
		binary.BigEndian.PutUint16(l4[4:], uint16(8+len(p.payload)))
		l4 = append(l4, p.payload...)
		if !p.zeroCsum {
			c := csumFold(csumAdd(pseudo6(p.src.Addr(), p.dst.Addr(), 17, len(l4)), l4))
			if c == 0 {
				c = 0xffff
			}
			binary.BigEndian.PutUint16(l4[6:], c)
		}
		return l4
	}
	l4 = make([]byte, 20)
	binary.BigEndian.PutUint16(l4[0:], p.src.Port())
	binary.BigEndian.PutUint16(l4[2:], p.dst.Port())
	binary.BigEndian.PutUint32(l4[4:], p.seq)
	binary.BigEndian.PutUint32(l4[8:], p.ack)
	l4[12] = 5 << 4
	l4[13] = p.flags
	binary.BigEndian.PutUint16(l4[14:], 64800)
	l4 = append(l4, p.payload...)
	binary.BigEndian.PutUint16(l4[16:], csumFold(csumAdd(pseudo6(p.src.Addr(), p.dst.Addr(), 6, len(l4)), l4)))
	return l4
}

func (p pkt6) bytes() []byte {
	return frame6(p.src.Addr(), p.dst.Addr(), uint8(p.proto), p.hopLimit, p.exts, p.l4(), p.truncateTo)
}

// frame6 is an Ethernet frame holding an IPv6 packet of the upper-layer
// protocol nh with the payload l4 after the extension headers exts.
func frame6(src, dst netip.Addr, nh, hopLimit uint8, exts []ext6, l4 []byte, truncateTo int) []byte {
	b := make([]byte, 14, 14+40+len(l4))
	copy(b[0:6], macLB[:])
	copy(b[6:12], macClient[:])
	binary.BigEndian.PutUint16(b[12:], 0x86dd)
	var hdrs []byte
	for i, e := range exts {
		h := append([]byte(nil), e.body...)
		h[0] = nh
		if i+1 < len(exts) {
			h[0] = exts[i+1].typ
		}
		hdrs = append(hdrs, h...)
	}
	first := nh
	if len(exts) > 0 {
		first = exts[0].typ
	}
	ip := make([]byte, 40)
	binary.BigEndian.PutUint32(ip[0:], 6<<28|0x12345) // version, traffic class 0, a flow label
	binary.BigEndian.PutUint16(ip[4:], uint16(len(hdrs)+len(l4)))
	ip[6] = first
	if hopLimit == 0 {
		hopLimit = 64
	}
	ip[7] = hopLimit
	s, d := src.As16(), dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	b = append(b, ip...)
	b = append(b, hdrs...)
	b = append(b, l4...)
	if truncateTo > 0 && truncateTo < len(b) {
		b = b[:truncateTo]
	}
	return b
}

// upper6 walks an IPv6 packet's extension headers (hop-by-hop, routing,
// destination options, fragment) and returns the upper-layer protocol and
// the offset of its header from the IPv6 header.
func upper6(ip []byte) (nh uint8, off int, err error) {
	nh, off = ip[6], 40
	for {
		switch nh {
		case nhHop, nhRouting, nhDest:
			if len(ip) < off+8 {
				return 0, 0, fmt.Errorf("short extension header")
			}
			nh, off = ip[off], off+(int(ip[off+1])+1)*8
		case nhFragment:
			if len(ip) < off+8 {
				return 0, 0, fmt.Errorf("short fragment header")
			}
			nh, off = ip[off], off+8
		default:
			return nh, off, nil
		}
	}
}

// parse6 reads an IPv6 TCP/UDP frame and verifies the TCP/UDP checksum
// over the pseudo-header and the whole segment (IPv6 has no header
// checksum).
func parse6(b []byte) (parsed, error) {
	var p parsed
	p.frameLen = len(b)
	if len(b) < 54 || binary.BigEndian.Uint16(b[12:]) != 0x86dd {
		return p, fmt.Errorf("not an IPv6 frame")
	}
	copy(p.dstMAC[:], b[0:6])
	copy(p.srcMAC[:], b[6:12])
	ip := b[14:]
	if ip[0]>>4 != 6 {
		return p, fmt.Errorf("version %d", ip[0]>>4)
	}
	tot := 40 + int(binary.BigEndian.Uint16(ip[4:]))
	if tot > len(ip) {
		return p, fmt.Errorf("payload length %d past the frame", tot-40)
	}
	ip = ip[:tot]
	p.ttl = ip[7]
	src := netip.AddrFrom16([16]byte(ip[8:24]))
	dst := netip.AddrFrom16([16]byte(ip[24:40]))
	nh, off, err := upper6(ip)
	if err != nil {
		return p, err
	}
	l4 := ip[off:]
	p.proto = Proto(nh)
	switch p.proto {
	case TCP:
		if len(l4) < 20 {
			return p, fmt.Errorf("short tcp header")
		}
		if c := csumFold(csumAdd(pseudo6(src, dst, 6, len(l4)), l4)); c != 0 {
			return p, fmt.Errorf("bad tcp checksum (residue %#x)", c)
		}
		p.seq = binary.BigEndian.Uint32(l4[4:])
		p.ack = binary.BigEndian.Uint32(l4[8:])
		p.flags = l4[13]
		p.payloadLen = len(l4) - int(l4[12]>>4)*4
	case UDP:
		if len(l4) < 8 {
			return p, fmt.Errorf("short udp header")
		}
		p.udpCsum = binary.BigEndian.Uint16(l4[6:])
		if c := csumFold(csumAdd(pseudo6(src, dst, 17, len(l4)), l4)); p.udpCsum == 0 || c != 0 {
			return p, fmt.Errorf("bad udp checksum %#x (residue %#x)", p.udpCsum, c)
		}
		p.payloadLen = len(l4) - 8
	default:
		return p, fmt.Errorf("protocol %d", p.proto)
	}
	p.src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(l4[0:]))
	p.dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(l4[2:]))
	return p, nil
}

// rewritten6 is in with its source and/or destination (zero: kept)
// replaced, the TCP/UDP checksum recomputed in full and, when forwarded
// (h != nil), the hop limit decremented and the Ethernet addresses set.
func rewritten6(in []byte, src, dst netip.AddrPort, h *hop) []byte {
	b := append([]byte(nil), in...)
	ip := b[14:]
	ip = ip[:40+int(binary.BigEndian.Uint16(ip[4:]))]
	nh, off, err := upper6(ip)
	if err != nil {
		panic(err)
	}
	l4 := ip[off:]
	if src.IsValid() {
		a := src.Addr().As16()
		copy(ip[8:24], a[:])
		binary.BigEndian.PutUint16(l4[0:], src.Port())
	}
	if dst.IsValid() {
		a := dst.Addr().As16()
		copy(ip[24:40], a[:])
		binary.BigEndian.PutUint16(l4[2:], dst.Port())
	}
	if h != nil {
		copy(b[0:6], h.dmac[:])
		copy(b[6:12], h.smac[:])
		ip[7]--
	}
	s := netip.AddrFrom16([16]byte(ip[8:24]))
	d := netip.AddrFrom16([16]byte(ip[24:40]))
	at := 16
	if nh == 17 {
		at = 6
	}
	l4[at], l4[at+1] = 0, 0
	c := csumFold(csumAdd(pseudo6(s, d, nh, len(l4)), l4))
	if nh == 17 && c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[at:], c)
	return b
}

func toBackend6(to netip.AddrPort, mac [6]byte) func(l *lab, in []byte) []byte {
	return func(l *lab, in []byte) []byte {
		return rewritten6(in, netip.AddrPort{}, to, &hop{dmac: mac, smac: [6]byte(l.backendIf.HardwareAddr)})
	}
}

func toClient6(from, to netip.AddrPort) func(l *lab, in []byte) []byte {
	return func(l *lab, in []byte) []byte {
		return rewritten6(in, from, to, &hop{dmac: macClient, smac: [6]byte(l.clientIf.HardwareAddr)})
	}
}

// forwarded6 is in (any IPv6 packet) forwarded unchanged but for the next
// hop: Ethernet addresses and hop limit.
func forwarded6(in []byte, h hop) []byte {
	b := append([]byte(nil), in...)
	copy(b[0:6], h.dmac[:])
	copy(b[6:12], h.smac[:])
	b[14+7]--
	return b
}

// rstFor6 is the RST that answers the IPv6 TCP segment in (no extension
// headers), sent back where it came from (RFC 9293 3.10.7.1: seq from the
// segment's ACK if it had one, else seq 0 and an ACK of all it carried).
func rstFor6(in []byte) []byte {
	ip := in[14:]
	tot := 40 + int(binary.BigEndian.Uint16(ip[4:]))
	tcp := ip[40:tot]
	flags := tcp[13]
	b := make([]byte, 14+40+20)
	copy(b[0:6], in[6:12])
	copy(b[6:12], in[0:6])
	binary.BigEndian.PutUint16(b[12:], 0x86dd)
	o := b[14:54]
	o[0] = 0x60
	binary.BigEndian.PutUint16(o[4:], 20)
	o[6] = 6
	o[7] = 64
	copy(o[8:24], ip[24:40])
	copy(o[24:40], ip[8:24])
	t := b[54:]
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
	src, dst := netip.AddrFrom16([16]byte(o[8:24])), netip.AddrFrom16([16]byte(o[24:40]))
	binary.BigEndian.PutUint16(t[16:], csumFold(csumAdd(pseudo6(src, dst, 6, 20), t)))
	return b
}

func wantRST6(_ *lab, in []byte) []byte { return rstFor6(in) }

// icmp6Frame is an ICMPv6 message of type typ and code from src to dst
// whose 4-byte field after the checksum is data and whose body quote
// follows it (RFC 4443 2.1), checksummed over the pseudo-header.
func icmp6Frame(src, dst netip.Addr, typ, code uint8, data uint32, quote []byte) []byte {
	m := make([]byte, 8, 8+len(quote))
	m[0], m[1] = typ, code
	binary.BigEndian.PutUint32(m[4:], data)
	m = append(m, quote...)
	binary.BigEndian.PutUint16(m[2:], csumFold(csumAdd(pseudo6(src, dst, nhICMPv6, len(m)), m)))
	return frame6(src, dst, nhICMPv6, 255, nil, m, 0)
}

// quote6 is what a router quotes of an IPv6 TCP/UDP packet
// quotedSrc -> quotedDst: its IPv6 header and first 8 L4 bytes.
func quote6(quotedSrc, quotedDst netip.AddrPort, proto Proto) []byte {
	q := make([]byte, 48)
	binary.BigEndian.PutUint32(q[0:], 6<<28)
	binary.BigEndian.PutUint16(q[4:], 1400)
	q[6] = byte(proto)
	q[7] = 63
	s, d := quotedSrc.Addr().As16(), quotedDst.Addr().As16()
	copy(q[8:], s[:])
	copy(q[24:], d[:])
	binary.BigEndian.PutUint16(q[40:], quotedSrc.Port())
	binary.BigEndian.PutUint16(q[42:], quotedDst.Port())
	binary.BigEndian.PutUint32(q[44:], 0xabcdef01)
	return q
}

// icmp6Error is an ICMPv6 error from src to dst about a packet
// quotedSrc -> quotedDst (data: the MTU of a Packet Too Big).
func icmp6Error(src, dst netip.Addr, typ, code uint8, data uint32, quotedSrc, quotedDst netip.AddrPort, proto Proto) []byte {
	return icmp6Frame(src, dst, typ, code, data, quote6(quotedSrc, quotedDst, proto))
}

// ptbFor6 is the Packet Too Big (type 2) with the MTU mtu that answers in
// (an IPv6 packet without extension headers), sent back to its source from
// its destination, quoting its IPv6 header and first 8 L4 bytes as they
// arrived.
func ptbFor6(in []byte, mtu uint32) []byte {
	ip := in[14:]
	src := netip.AddrFrom16([16]byte(ip[24:40]))
	dst := netip.AddrFrom16([16]byte(ip[8:24]))
	b := icmp6Frame(src, dst, 2, 0, mtu, ip[:48])
	copy(b[0:6], in[6:12])
	copy(b[6:12], in[0:6])
	b[14+0], b[14+1], b[14+2], b[14+3] = 0x60, 0, 0, 0
	return b
}

// parseICMP6 verifies the ICMPv6 checksum of an IPv6 frame holding an
// ICMPv6 error and returns what it says.
func parseICMP6(b []byte) (parsedICMP, error) {
	var p parsedICMP
	if len(b) < 14+40+8+44 || binary.BigEndian.Uint16(b[12:]) != 0x86dd {
		return p, fmt.Errorf("frame of %d bytes is no ICMPv6 error", len(b))
	}
	ip := b[14:]
	ip = ip[:40+int(binary.BigEndian.Uint16(ip[4:]))]
	if ip[6] != nhICMPv6 {
		return p, fmt.Errorf("next header %d", ip[6])
	}
	src := netip.AddrFrom16([16]byte(ip[8:24]))
	p.dst = netip.AddrFrom16([16]byte(ip[24:40]))
	m := ip[40:]
	if c := csumFold(csumAdd(pseudo6(src, p.dst, nhICMPv6, len(m)), m)); c != 0 {
		return p, fmt.Errorf("bad icmpv6 checksum (residue %#x)", c)
	}
	p.typ, p.code = m[0], m[1]
	q := m[8:]
	p.quotedSrc = netip.AddrPortFrom(netip.AddrFrom16([16]byte(q[8:24])), binary.BigEndian.Uint16(q[40:]))
	p.quotedDst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(q[24:40])), binary.BigEndian.Uint16(q[42:]))
	return p, nil
}
