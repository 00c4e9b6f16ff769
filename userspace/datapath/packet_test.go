package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Crafting and checking packets for the prog.Run tests. The checksum code
// here is written independently of the C helpers on purpose: a bug in the
// data path's incremental updates must not be mirrored by the test.

var (
	macClient = [6]byte{0x02, 0, 0, 0, 0, 0x02}
	macLB     = [6]byte{0x02, 0, 0, 0, 0, 0x01}
)

type pkt struct {
	src, dst   netip.AddrPort
	proto      Proto
	flags      uint8 // TCP flags
	seq, ack   uint32
	payload    []byte
	ttl        uint8
	options    []byte // IPv4 options (multiple of 4 bytes)
	fragOff    uint16 // raw frag_off field (host order)
	noUDPCsum  bool
	etherType  uint16
	truncateTo int // cut the frame to this many bytes (0 = no cut)
	pad        int // bytes of Ethernet padding after the IPv4 datagram
}

const (
	fFIN = 0x01
	fSYN = 0x02
	fRST = 0x04
	fPSH = 0x08
	fACK = 0x10
)

func csumAdd(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func csumFold(sum uint32) uint16 {
	for sum > 0xffff {
		sum = (sum & 0xffff) + (sum >> 16)
	}
	return ^uint16(sum)
}

func pseudo(src, dst netip.Addr, proto Proto, l4len int) uint32 {
	s, d := src.As4(), dst.As4()
	sum := csumAdd(0, s[:])
	sum = csumAdd(sum, d[:])
	return sum + uint32(proto) + uint32(l4len)
}

func (p pkt) bytes() []byte {
	et := p.etherType
	if et == 0 {
		et = 0x0800
	}
	b := make([]byte, 14)
	copy(b[0:6], macLB[:])
	copy(b[6:12], macClient[:])
	binary.BigEndian.PutUint16(b[12:], et)
	if et != 0x0800 {
		return append(b, make([]byte, 28)...)
	}
	var l4 []byte
	if p.proto == UDP {
		l4 = make([]byte, 8)
		binary.BigEndian.PutUint16(l4[0:], p.src.Port())
		binary.BigEndian.PutUint16(l4[2:], p.dst.Port())
		binary.BigEndian.PutUint16(l4[4:], uint16(8+len(p.payload)))
		l4 = append(l4, p.payload...)
		if !p.noUDPCsum {
			c := csumFold(csumAdd(pseudo(p.src.Addr(), p.dst.Addr(), UDP, len(l4)), l4))
			if c == 0 {
				c = 0xffff
			}
			binary.BigEndian.PutUint16(l4[6:], c)
		}
	} else {
		l4 = make([]byte, 20)
		binary.BigEndian.PutUint16(l4[0:], p.src.Port())
		binary.BigEndian.PutUint16(l4[2:], p.dst.Port())
		binary.BigEndian.PutUint32(l4[4:], p.seq)
		binary.BigEndian.PutUint32(l4[8:], p.ack)
		l4[12] = 5 << 4
		l4[13] = p.flags
		binary.BigEndian.PutUint16(l4[14:], 64240)
		l4 = append(l4, p.payload...)
		binary.BigEndian.PutUint16(l4[16:], csumFold(csumAdd(pseudo(p.src.Addr(), p.dst.Addr(), TCP, len(l4)), l4)))
	}
	ihl := 20 + len(p.options)
	ip := make([]byte, 20, ihl)
	ip = append(ip, p.options...)
	ip[0] = 0x40 | byte(ihl/4)
	binary.BigEndian.PutUint16(ip[2:], uint16(ihl+len(l4)))
	binary.BigEndian.PutUint16(ip[4:], 0x1234)
	binary.BigEndian.PutUint16(ip[6:], p.fragOff) // 0x4000: DF
	ttl := p.ttl
	if ttl == 0 {
		ttl = 64
	}
	ip[8] = ttl
	ip[9] = byte(p.proto)
	s, d := p.src.Addr().As4(), p.dst.Addr().As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], csumFold(csumAdd(0, ip)))
	b = append(b, ip...)
	b = append(b, l4...)
	b = append(b, make([]byte, p.pad)...)
	if p.truncateTo > 0 && p.truncateTo < len(b) {
		b = b[:p.truncateTo]
	}
	return b
}

// parsed is what the independent parser read from an output frame.
type parsed struct {
	dstMAC, srcMAC [6]byte
	src, dst       netip.AddrPort
	proto          Proto
	ttl            uint8
	flags          uint8
	seq, ack       uint32
	payloadLen     int
	udpCsum        uint16
	frameLen       int
}

// parse reads an IPv4 TCP/UDP frame and verifies the IPv4 header checksum
// and the TCP/UDP checksum over the pseudo-header and the whole segment.
func parse(b []byte) (parsed, error) {
	var p parsed
	p.frameLen = len(b)
	if len(b) < 34 {
		return p, fmt.Errorf("frame of %d bytes too short", len(b))
	}
	copy(p.dstMAC[:], b[0:6])
	copy(p.srcMAC[:], b[6:12])
	ip := b[14:]
	ihl := int(ip[0]&0xf) * 4
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if tot > len(ip) || ihl < 20 || tot < ihl {
		return p, fmt.Errorf("bad ip lengths ihl=%d tot=%d have=%d", ihl, tot, len(ip))
	}
	if c := csumFold(csumAdd(0, ip[:ihl])); c != 0 {
		return p, fmt.Errorf("bad ipv4 header checksum (residue %#x)", c)
	}
	p.ttl = ip[8]
	p.proto = Proto(ip[9])
	src := netip.AddrFrom4([4]byte(ip[12:16]))
	dst := netip.AddrFrom4([4]byte(ip[16:20]))
	l4 := ip[ihl:tot]
	switch p.proto {
	case TCP:
		if len(l4) < 20 {
			return p, fmt.Errorf("short tcp header")
		}
		if c := csumFold(csumAdd(pseudo(src, dst, TCP, len(l4)), l4)); c != 0 {
			return p, fmt.Errorf("bad tcp checksum (residue %#x)", c)
		}
		p.seq = binary.BigEndian.Uint32(l4[4:])
		p.ack = binary.BigEndian.Uint32(l4[8:])
		p.flags = l4[13]
		p.payloadLen = len(l4) - int(l4[12]>>4)*4
	case UDP:
		p.udpCsum = binary.BigEndian.Uint16(l4[6:])
		if p.udpCsum != 0 {
			if c := csumFold(csumAdd(pseudo(src, dst, UDP, len(l4)), l4)); c != 0 {
				return p, fmt.Errorf("bad udp checksum (residue %#x)", c)
			}
		}
		p.payloadLen = len(l4) - 8
	default:
		return p, fmt.Errorf("protocol %d", p.proto)
	}
	p.src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(l4[0:]))
	p.dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(l4[2:]))
	return p, nil
}
