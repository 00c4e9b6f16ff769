// Command icmperr is the e2e suite's ICMP error tool (TestICMPFragNeeded).
//
//	icmperr flow --src 198.18.0.2:41000 --dst 198.18.1.100:53
//	    sends one UDP datagram from a fixed source address and port and
//	    prints the reply (the test backend answers with its name);
//	icmperr fragneeded --src 198.18.0.2 --to 198.18.1.100 --quote-src 198.18.1.100:53 --quote-dst 198.18.0.2:41000 --mtu 1200
//	    sends, over a raw socket, an ICMP "fragmentation needed" (type 3
//	    code 4) with that next-hop MTU to --to, quoting the IPv4 and UDP
//	    headers of a datagram quote-src -> quote-dst, as a router would;
//	icmperr watch --local 198.18.2.11 --timeout 5s
//	    prints "ready", then one JSON line per ICMP destination-unreachable
//	    message addressed to --local (a raw socket bound to it only sees
//	    those), with its quoted addresses and checksum verdicts; exits after
//	    the first one, or after the timeout.
//
// It only talks to the addresses it is given; the suite runs it inside the
// lab's namespaces.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: icmperr flow|fragneeded|watch [flags]"))
	}
	var err error
	switch os.Args[1] {
	case "flow":
		err = flow(os.Args[2:])
	case "fragneeded":
		err = fragNeeded(os.Args[2:])
	case "watch":
		err = watch(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "icmperr:", err)
	os.Exit(1)
}

func flow(args []string) error {
	fs := flag.NewFlagSet("flow", flag.ExitOnError)
	src := fs.String("src", "", "local address:port to send from")
	dst := fs.String("dst", "", "address:port to send to")
	timeout := fs.Duration("timeout", 2*time.Second, "how long to wait for the reply")
	_ = fs.Parse(args)
	laddr, err := net.ResolveUDPAddr("udp4", *src)
	if err != nil {
		return fmt.Errorf("--src: %w", err)
	}
	raddr, err := net.ResolveUDPAddr("udp4", *dst)
	if err != nil {
		return fmt.Errorf("--dst: %w", err)
	}
	c, err := net.DialUDP("udp4", laddr, raddr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte("icmperr\n")); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(*timeout))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("reply from %s: %w", raddr, err)
	}
	fmt.Println(strings.TrimSpace(string(buf[:n])))
	return nil
}

func fragNeeded(args []string) error {
	fs := flag.NewFlagSet("fragneeded", flag.ExitOnError)
	src := fs.String("src", "", "local address the raw socket sends from")
	to := fs.String("to", "", "destination of the ICMP error")
	qsrc := fs.String("quote-src", "", "source address:port of the quoted UDP datagram")
	qdst := fs.String("quote-dst", "", "destination address:port of the quoted UDP datagram")
	mtu := fs.Int("mtu", 1200, "next-hop MTU")
	_ = fs.Parse(args)
	qs, err := netip.ParseAddrPort(*qsrc)
	if err != nil || !qs.Addr().Is4() {
		return fmt.Errorf("--quote-src %q: want IPv4 address:port", *qsrc)
	}
	qd, err := netip.ParseAddrPort(*qdst)
	if err != nil || !qd.Addr().Is4() {
		return fmt.Errorf("--quote-dst %q: want IPv4 address:port", *qdst)
	}
	msg := buildFragNeeded(qs, qd, uint16(*mtu))
	c, err := net.ListenPacket("ip4:icmp", *src)
	if err != nil {
		return err
	}
	defer c.Close()
	dst, err := net.ResolveIPAddr("ip4", *to)
	if err != nil {
		return fmt.Errorf("--to: %w", err)
	}
	if _, err := c.WriteTo(msg, dst); err != nil {
		return fmt.Errorf("send to %s: %w", dst, err)
	}
	return nil
}

// buildFragNeeded is the ICMP message (no outer IP header): type 3 code 4,
// next-hop MTU, the quoted IPv4 header (checksummed) and 8 UDP bytes of a
// datagram larger than mtu.
func buildFragNeeded(qs, qd netip.AddrPort, mtu uint16) []byte {
	const quotedLen = 1400 // the datagram that did not fit
	q := make([]byte, 28)
	q[0] = 0x45
	binary.BigEndian.PutUint16(q[2:], quotedLen)
	binary.BigEndian.PutUint16(q[4:], 0x1234) // id
	binary.BigEndian.PutUint16(q[6:], 0x4000) // DF
	q[8] = 63                                 // TTL
	q[9] = 17                                 // UDP
	s, d := qs.Addr().As4(), qd.Addr().As4()
	copy(q[12:], s[:])
	copy(q[16:], d[:])
	binary.BigEndian.PutUint16(q[10:], checksum(q[:20]))
	binary.BigEndian.PutUint16(q[20:], qs.Port())
	binary.BigEndian.PutUint16(q[22:], qd.Port())
	binary.BigEndian.PutUint16(q[24:], quotedLen-20)
	binary.BigEndian.PutUint16(q[26:], 0) // UDP checksum: not computed

	m := make([]byte, 8, 8+len(q))
	m[0], m[1] = 3, 4
	binary.BigEndian.PutUint16(m[6:], mtu)
	m = append(m, q...)
	binary.BigEndian.PutUint16(m[2:], checksum(m))
	return m
}

// checksum is the Internet checksum (RFC 1071) of b.
func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// Seen is one ICMP destination-unreachable message watch received.
type Seen struct {
	From       string `json:"from"`  // outer source
	Local      string `json:"local"` // the address watched (outer destination)
	Type       int    `json:"type"`
	Code       int    `json:"code"`
	MTU        int    `json:"mtu"`
	QuotedSrc  string `json:"quoted_src"`
	QuotedDst  string `json:"quoted_dst"`
	QuotedProt int    `json:"quoted_proto"`
	ICMPCsumOK bool   `json:"icmp_csum_ok"`
	QIPCsumOK  bool   `json:"quoted_ip_csum_ok"`
}

func watch(args []string) error {
	fs := flag.NewFlagSet("watch", flag.ExitOnError)
	local := fs.String("local", "", "local address to watch (the raw socket is bound to it)")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this long")
	_ = fs.Parse(args)
	c, err := net.ListenPacket("ip4:icmp", *local)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Println("ready")
	deadline := time.Now().Add(*timeout)
	_ = c.SetReadDeadline(deadline)
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil // nothing (more) arrived: the caller judges
			}
			return err
		}
		m := buf[:n]
		if n < 8+28 || m[0] != 3 {
			continue // not a destination unreachable quoting IPv4 + 8 bytes
		}
		q := m[8:]
		ihl := int(q[0]&0x0f) * 4
		if q[0]>>4 != 4 || ihl < 20 || len(q) < ihl+4 {
			continue
		}
		qs := netip.AddrPortFrom(netip.AddrFrom4([4]byte(q[12:16])), binary.BigEndian.Uint16(q[ihl:]))
		qd := netip.AddrPortFrom(netip.AddrFrom4([4]byte(q[16:20])), binary.BigEndian.Uint16(q[ihl+2:]))
		out, _ := json.Marshal(Seen{
			From:       from.String(),
			Local:      *local,
			Type:       int(m[0]),
			Code:       int(m[1]),
			MTU:        int(binary.BigEndian.Uint16(m[6:])),
			QuotedSrc:  qs.String(),
			QuotedDst:  qd.String(),
			QuotedProt: int(q[9]),
			ICMPCsumOK: checksum(m) == 0,
			QIPCsumOK:  checksum(q[:ihl]) == 0,
		})
		fmt.Println(string(out))
		return nil
	}
}
