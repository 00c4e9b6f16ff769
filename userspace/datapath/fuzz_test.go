package datapath

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// FuzzXDP feeds mutated frames to the program through prog.Run, on a lab
// with services (nat TCP and UDP, snat TCP, one without backends) and open
// flows, and checks invariants on every output, whatever the input:
//
//   - the verdict is XDP_PASS, XDP_DROP, XDP_TX or XDP_REDIRECT (never
//     XDP_ABORTED);
//   - a frame that is neither to a VIP nor from a backend (nor an ICMP
//     error quoting such a packet) is passed unchanged;
//   - a frame the program changed has a valid IPv4 header checksum, and a
//     valid TCP/UDP/ICMP checksum wherever the input's was valid;
//   - a changed frame towards a client never carries a backend's (or the
//     snat source's) address as its source, nor, in an ICMP error, in the
//     quoted destination, where the VIP belongs (an ICMP error's own
//     source is the node that reported it, a backend host included).
//
// The seed corpus is every input of the prog.Run cases (xdpCases), plus
// ICMP errors, VLAN tags, fragments, snat flows and TCP flag soup; more
// seeds are committed in testdata/fuzz/FuzzXDP. `make test` runs it for a
// bounded time:
//
//	go test -run '^$' -fuzz '^FuzzXDP$' -fuzztime 30s ./userspace/datapath/
func FuzzXDP(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s.frame, s.fromBE)
	}
	l := newLab(f, testTableSize)
	l.populate(f)
	f.Fuzz(func(t *testing.T, frame []byte, fromBE bool) {
		if len(frame) < 14 || len(frame) > 1500 {
			return // prog.Run refuses frames shorter than an Ethernet header
		}
		ret, out, err := l.try(frame, l.ingress(fromBE))
		if err != nil {
			t.Fatalf("prog run: %v", err)
		}
		if err := checkOutput(frame, out, ret); err != nil {
			t.Fatalf("%v\n in %x\nout %x", err, frame, out)
		}
	})
}

// The fuzz lab's extra snat service.
var (
	vipSNAT  = netip.MustParseAddrPort("198.18.1.102:80")
	snatAddr = netip.MustParseAddr("198.18.2.1")
)

const svcSNAT = 5

// populate sets the baseline, a snat service on be2 and opens flows on
// every service, so mutated replies and ICMP errors can hit live state.
func (l *lab) populate(tb testing.TB) {
	l.reset(tb)
	mustSet(tb, l.r.SetService(ServiceKey{VIP: vipSNAT.Addr(), Port: vipSNAT.Port(), Proto: TCP}, Service{ID: svcSNAT, Mode: ModeSNAT, SNATAddr: snatAddr}))
	mustSet(tb, l.r.SetTable(svcSNAT, fill(l.r.TableSize(), 2)))
	for _, p := range []pkt{
		{src: client, dst: vip, proto: TCP, flags: fSYN, seq: 1000},
		{src: client, dst: vipUDP, proto: UDP, payload: []byte("query")},
		{src: client, dst: vipSNAT, proto: TCP, flags: fSYN, seq: 1000},
	} {
		l.run(tb, p.bytes(), l.clientIf)
	}
	l.populate6(tb)
}

type fuzzSeed struct {
	frame  []byte
	fromBE bool
}

func fuzzSeeds() []fuzzSeed {
	var seeds []fuzzSeed
	for _, c := range xdpCases() {
		for _, in := range append(c.before, c.in) {
			seeds = append(seeds, fuzzSeed{in.frame, in.fromBE})
		}
	}
	router := netip.MustParseAddr("198.18.0.254")
	vlan := func(b []byte) []byte {
		out := append([]byte(nil), b[:12]...)
		out = append(out, 0x81, 0x00, 0x00, 0x64)
		return append(out, b[12:]...)
	}
	syn := pkt{src: client, dst: vip, proto: TCP, flags: fSYN, seq: 1000}
	more := []fuzzSeed{
		{icmpError(router, vip.Addr(), 3, 4, vip, client, TCP), false},
		{icmpError(router, vipSNAT.Addr(), 11, 0, vipSNAT, client, TCP), false},
		{icmpError(be1.Addr(), client.Addr(), 3, 3, client, be1, TCP), true},
		{icmpError(beUDP.Addr(), client.Addr(), 3, 3, client, beUDP, UDP), true},
		{vlan(syn.bytes()), false},
		{pkt{src: client, dst: vip, proto: TCP, flags: fSYN, fragOff: 0x2000, payload: make([]byte, 40)}.bytes(), false},
		{pkt{src: client, dst: vipUDP, proto: UDP, fragOff: 0x0005, payload: make([]byte, 40)}.bytes(), false},
		{pkt{src: be1, dst: client, proto: TCP, flags: fACK, fragOff: 0x2000, payload: make([]byte, 40)}.bytes(), true},
		{pkt{src: client, dst: vipSNAT, proto: TCP, flags: fACK | fPSH, seq: 1001, ack: 1, payload: []byte("GET /")}.bytes(), false},
		{pkt{src: be2, dst: netip.AddrPortFrom(snatAddr, 20000), proto: TCP, flags: fSYN | fACK, ack: 1001}.bytes(), true},
		{pkt{src: client, dst: vip, proto: TCP, flags: 0xff, seq: 1, ack: 2, payload: []byte("x")}.bytes(), false},
		{pkt{src: client, dst: vip, proto: TCP, flags: fSYN | fFIN | fRST, options: []byte{0x44, 4, 5, 0}}.bytes(), false},
		{pkt{src: client, dst: vip, proto: TCP, flags: fSYN, pad: 18}.bytes(), false},
	}
	seeds = append(seeds, fuzzSeeds6()...)
	return append(seeds, more...)
}

// Addresses the invariants know.
var (
	vipAddrs     = []netip.Addr{vip.Addr(), vipUDP.Addr(), vipNone.Addr(), vipSNAT.Addr(), vip2.Addr()}
	backendAddrs = []netip.Addr{be1.Addr(), be2.Addr(), be3.Addr(), beUDP.Addr()}
)

func isOneOf(a netip.Addr, set []netip.Addr) bool {
	for _, x := range set {
		if a == x {
			return true
		}
	}
	return false
}

// ipv4 is what checkOutput reads of a frame: nil ip when the frame is not
// a well-formed IPv4 datagram (header inside the frame, lengths sane).
type ipv4 struct {
	ip       []byte // header and payload, up to the total length
	ihl      int
	src, dst netip.Addr
	proto    uint8
}

func readIPv4(frame []byte) ipv4 {
	if len(frame) < 34 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
		return ipv4{}
	}
	ip := frame[14:]
	ihl := int(ip[0]&0xf) * 4
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if ip[0]>>4 != 4 || ihl < 20 || tot < ihl || tot > len(ip) {
		return ipv4{}
	}
	return ipv4{ip: ip[:tot], ihl: ihl, proto: ip[9],
		src: netip.AddrFrom4([4]byte(ip[12:16])), dst: netip.AddrFrom4([4]byte(ip[16:20]))}
}

// headerOK and l4OK verify checksums; l4OK is false for what it cannot
// verify (fragments, truncated or inconsistent L4 headers).
func (p ipv4) headerOK() bool { return p.ip != nil && csumFold(csumAdd(0, p.ip[:p.ihl])) == 0 }

func (p ipv4) l4OK() bool {
	if p.ip == nil || binary.BigEndian.Uint16(p.ip[6:])&0x3fff != 0 {
		return false
	}
	l4 := p.ip[p.ihl:]
	switch p.proto {
	case 6:
		return len(l4) >= 20 && csumFold(csumAdd(pseudo(p.src, p.dst, TCP, len(l4)), l4)) == 0
	case 17:
		if len(l4) < 8 || int(binary.BigEndian.Uint16(l4[4:])) != len(l4) {
			return false
		}
		return binary.BigEndian.Uint16(l4[6:]) == 0 || csumFold(csumAdd(pseudo(p.src, p.dst, UDP, len(l4)), l4)) == 0
	case 1:
		return len(l4) >= 8 && csumFold(csumAdd(0, l4)) == 0
	}
	return false
}

// quotesOurs: an ICMP message quoting a packet to or from a VIP or a
// backend (a router on either side reports about a tracked flow with its
// own source address).
func (p ipv4) quotesOurs() bool {
	if p.proto != 1 || len(p.ip) < p.ihl+8+20 {
		return false
	}
	q := p.ip[p.ihl+8:]
	for _, a := range []netip.Addr{netip.AddrFrom4([4]byte(q[12:16])), netip.AddrFrom4([4]byte(q[16:20]))} {
		if isOneOf(a, vipAddrs) || isOneOf(a, backendAddrs) {
			return true
		}
	}
	return false
}

func checkOutput(in, out []byte, ret uint32) error {
	switch ret {
	case xdpPass, xdpDrop, xdpTX, xdpRedirect:
	default:
		return fmt.Errorf("verdict %d (%s)", ret, verdictName[ret])
	}
	if ret == xdpDrop {
		return nil
	}
	if isIPv6Frame(in) {
		return checkOutput6(in, out, ret)
	}
	pin := readIPv4(in)
	ours := pin.ip != nil && (isOneOf(pin.dst, vipAddrs) || isOneOf(pin.src, backendAddrs) || pin.quotesOurs())
	changed := !bytes.Equal(in, out)
	if !ours {
		if ret != xdpPass || changed {
			return fmt.Errorf("a frame for no VIP and from no backend: verdict %s, changed %v", verdictName[ret], changed)
		}
		return nil
	}
	if !changed {
		return nil
	}
	pout := readIPv4(out)
	if !pout.headerOK() {
		return fmt.Errorf("changed frame with a bad IPv4 header (or none)")
	}
	// An RST built from scratch (XDP_TX is also a forward out of the
	// interface the frame came in on).
	fresh := ret == xdpTX && pout.proto == 6 && len(pout.ip) >= pout.ihl+20 && pout.ip[pout.ihl+13]&fRST != 0 &&
		pout.src == pin.dst && pout.dst == pin.src
	if (fresh || pin.l4OK()) && !pout.l4OK() {
		return fmt.Errorf("%s checksum broken by the program (input's was valid: %v)", protoLabel(pout.proto), pin.l4OK())
	}
	if !isOneOf(pout.dst, backendAddrs) {
		// An ICMP error's outer source is the node that reports it (a
		// backend host may); where the VIP belongs is inside its quote.
		if pout.proto != 1 && (isOneOf(pout.src, backendAddrs) || pout.src == snatAddr) {
			return fmt.Errorf("towards client %v with source %v where the VIP belongs", pout.dst, pout.src)
		}
		if pout.proto == 1 && len(pout.ip) >= pout.ihl+8+20 {
			q := pout.ip[pout.ihl+8:]
			qdst := netip.AddrFrom4([4]byte(q[16:20]))
			if isOneOf(qdst, backendAddrs) || netip.AddrFrom4([4]byte(q[12:16])) == snatAddr {
				return fmt.Errorf("ICMP error towards client %v quotes %v where the VIP belongs", pout.dst, qdst)
			}
		}
	}
	return nil
}

func protoLabel(p uint8) string {
	return map[uint8]string{1: "ICMP", 6: "TCP", 17: "UDP"}[p]
}

// TestWriteFuzzSeeds writes the seeds of FuzzXDP into testdata/fuzz/FuzzXDP
// (the committed seed corpus, read by `go test` and `go test -fuzz`) when
// SLUICE_WRITE_FUZZ_SEEDS=1: run it after adding prog.Run cases. The
// in-code seeds (f.Add) always include every case's current input.
func TestWriteFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzXDP")
	write := os.Getenv("SLUICE_WRITE_FUZZ_SEEDS") == "1"
	if !write {
		t.Skip("SLUICE_WRITE_FUZZ_SEEDS=1 writes the committed seed corpus")
	}
	mustSet(t, os.MkdirAll(dir, 0o755))
	for _, s := range fuzzSeeds() {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nbool(%v)\n", s.frame, s.fromBE)
		sum := sha256.Sum256([]byte(body))
		name := filepath.Join(dir, "seed-"+hex.EncodeToString(sum[:8]))
		mustSet(t, os.WriteFile(name, []byte(body), 0o644))
	}
}
