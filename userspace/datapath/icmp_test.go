package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
)

// icmpError builds an Ethernet frame holding an ICMP error from src to dst
// that quotes an IPv4 packet quotedSrc -> quotedDst of protocol proto (its
// IPv4 header and first 8 L4 bytes, as routers do).
func icmpError(src, dst netip.Addr, typ, code uint8, quotedSrc, quotedDst netip.AddrPort, proto Proto) []byte {
	quote := make([]byte, 28)
	quote[0] = 0x45
	binary.BigEndian.PutUint16(quote[2:], 1500)
	quote[8] = 63
	quote[9] = byte(proto)
	qs, qd := quotedSrc.Addr().As4(), quotedDst.Addr().As4()
	copy(quote[12:], qs[:])
	copy(quote[16:], qd[:])
	binary.BigEndian.PutUint16(quote[10:], csumFold(csumAdd(0, quote[:20])))
	binary.BigEndian.PutUint16(quote[20:], quotedSrc.Port())
	binary.BigEndian.PutUint16(quote[22:], quotedDst.Port())
	binary.BigEndian.PutUint32(quote[24:], 0xabcdef01)

	icmp := make([]byte, 8, 8+len(quote))
	icmp[0], icmp[1] = typ, code
	binary.BigEndian.PutUint16(icmp[6:], 1400) // next-hop MTU for "fragmentation needed"
	icmp = append(icmp, quote...)
	binary.BigEndian.PutUint16(icmp[2:], csumFold(csumAdd(0, icmp)))

	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmp)))
	ip[8] = 64
	ip[9] = 1
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], csumFold(csumAdd(0, ip)))

	b := make([]byte, 14, 14+20+len(icmp))
	copy(b[0:6], macLB[:])
	copy(b[6:12], macClient[:])
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	b = append(b, ip...)
	return append(b, icmp...)
}

type parsedICMP struct {
	dst                  netip.Addr
	quotedSrc, quotedDst netip.AddrPort
	typ, code            uint8
}

// parseICMP verifies the outer IPv4, ICMP and quoted IPv4 checksums.
func parseICMP(b []byte) (parsedICMP, error) {
	var p parsedICMP
	if len(b) < 14+20+8+28 {
		return p, fmt.Errorf("short frame %d", len(b))
	}
	ip := b[14:]
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if c := csumFold(csumAdd(0, ip[:20])); c != 0 {
		return p, fmt.Errorf("bad outer ip checksum")
	}
	icmp := ip[20:tot]
	if c := csumFold(csumAdd(0, icmp)); c != 0 {
		return p, fmt.Errorf("bad icmp checksum (residue %#x)", c)
	}
	q := icmp[8:]
	if c := csumFold(csumAdd(0, q[:20])); c != 0 {
		return p, fmt.Errorf("bad quoted ip checksum")
	}
	p.dst = netip.AddrFrom4([4]byte(ip[16:20]))
	p.typ, p.code = icmp[0], icmp[1]
	p.quotedSrc = netip.AddrPortFrom(netip.AddrFrom4([4]byte(q[12:16])), binary.BigEndian.Uint16(q[20:]))
	p.quotedDst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(q[16:20])), binary.BigEndian.Uint16(q[22:]))
	return p, nil
}

// TestICMPErrors: an error about a reply sent as the VIP reaches the
// backend, quoting what the backend sent; an error about a packet sent to a
// backend reaches the client, quoting what the client sent; errors about
// other traffic are left to the kernel.
func TestICMPErrors(t *testing.T) {
	const size = 251
	l := newLab(t, size)
	r := l.r
	mustSet(t, r.SetService(ServiceKey{VIP: vip.Addr(), Port: vip.Port(), Proto: TCP}, Service{ID: 1}))
	mustSet(t, r.SetService(ServiceKey{VIP: vipUDP.Addr(), Port: vipUDP.Port(), Proto: UDP}, Service{ID: 2}))
	mustSet(t, r.SetBackend(1, Backend{Addr: be1, Gen: 1, State: BackendActive}))
	mustSet(t, r.SetBackend(3, Backend{Addr: beUDP, Gen: 1, State: BackendActive}))
	mustSet(t, r.SetTable(1, fill(size, 1)))
	mustSet(t, r.SetTable(2, fill(size, 3)))

	// Open a TCP flow and a UDP flow.
	if ret, _ := l.run(t, pkt{src: client, dst: vip, proto: TCP, flags: fSYN}.bytes(), l.clientIf); ret != xdpRedirect {
		t.Fatalf("SYN: %s", verdictName[ret])
	}
	if ret, _ := l.run(t, pkt{src: client, dst: vipUDP, proto: UDP, payload: []byte("q")}.bytes(), l.clientIf); ret != xdpRedirect {
		t.Fatalf("UDP: %s", verdictName[ret])
	}
	router := netip.MustParseAddr("198.18.0.254")

	// A router on the client side cannot forward a large reply: it tells
	// the reply's source, the VIP. The backend must hear it, about its own
	// packet be1:80 -> client.
	in := icmpError(router, vip.Addr(), 3, 4, vip, client, TCP)
	ret, out := l.run(t, in, l.clientIf)
	if ret != xdpRedirect {
		t.Fatalf("frag-needed to the VIP: verdict %s, want XDP_REDIRECT", verdictName[ret])
	}
	p, err := parseICMP(out[:len(in)])
	if err != nil {
		t.Fatal(err)
	}
	if p.dst != be1.Addr() || p.quotedSrc != be1 || p.quotedDst != client || p.typ != 3 || p.code != 4 {
		t.Errorf("frag-needed forwarded as %+v, want to %v quoting %v -> %v", p, be1.Addr(), be1, client)
	}

	// The backend's host answers a datagram with port unreachable, to the
	// client: the client must see it about client -> VIP.
	in = icmpError(beUDP.Addr(), client.Addr(), 3, 3, client, beUDP, UDP)
	ret, out = l.run(t, in, l.backendIf)
	if ret != xdpRedirect {
		t.Fatalf("port unreachable from the backend: verdict %s", verdictName[ret])
	}
	if p, err = parseICMP(out[:len(in)]); err != nil {
		t.Fatal(err)
	}
	if p.dst != client.Addr() || p.quotedSrc != client || p.quotedDst != vipUDP {
		t.Errorf("port unreachable forwarded as %+v, want to %v quoting %v -> %v", p, client.Addr(), client, vipUDP)
	}

	// Not about a flow of ours: untouched.
	stranger := netip.MustParseAddrPort("198.18.0.9:1234")
	in = icmpError(router, vip.Addr(), 3, 4, vip, stranger, TCP)
	ret, out = l.run(t, in, l.clientIf)
	if ret != xdpPass || string(out[:len(in)]) != string(in) {
		t.Errorf("error about an unknown flow: verdict %s, changed %v", verdictName[ret], string(out[:len(in)]) != string(in))
	}
	g, err := r.GlobalStats()
	if err != nil {
		t.Fatal(err)
	}
	if g.ICMPTranslated != 2 {
		t.Errorf("icmp translated %d, want 2", g.ICMPTranslated)
	}
}
