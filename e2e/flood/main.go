// Command flood is the e2e suite's SYN flood tool (TestSYNFlood).
//
//	flood syn --to 198.18.1.100:80 --from 198.19.0.0/16 --count 50000 --duration 20s
//	    sends, over a raw socket, TCP SYNs to --to from spoofed sources of
//	    --from (every address and port distinct), as fast as it can, until
//	    --count were sent or --duration passed; prints {"sent":N,"ms":T};
//	flood watch --iface eth0 --net 198.18.2.0/24 --port 80 [--dst 198.18.0.2] --duration 30s
//	    prints "ready", then counts the IPv4 TCP packets arriving on --iface
//	    (to --dst only, when given) whose source is in --net with source port
//	    --port (a backend's address where the VIP belongs), until SIGTERM or
//	    --duration; prints
//	    {"leaked":N,"seen":M}.
//
// Spoofed sources are refused outside 198.18.0.0/15, and the tool only runs
// inside the lab's namespaces.
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
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: flood syn|watch [flags]"))
	}
	var err error
	switch os.Args[1] {
	case "syn":
		err = synFlood(os.Args[2:])
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
	fmt.Fprintln(os.Stderr, "flood:", err)
	os.Exit(1)
}

var labRange = netip.MustParsePrefix("198.18.0.0/15")

func synFlood(args []string) error {
	fs := flag.NewFlagSet("syn", flag.ExitOnError)
	to := fs.String("to", "", "VIP:port to flood")
	from := fs.String("from", "198.19.0.0/16", "spoofed source prefix (inside 198.18.0.0/15)")
	count := fs.Int("count", 10000, "SYNs to send at most")
	duration := fs.Duration("duration", 10*time.Second, "send for at most this long")
	rate := fs.Int("rate", 0, "SYNs a second at most (0: as fast as the socket takes them)")
	_ = fs.Parse(args)
	dst, err := netip.ParseAddrPort(*to)
	if err != nil || !dst.Addr().Is4() {
		return fmt.Errorf("--to %q: want an IPv4 address:port", *to)
	}
	src, err := netip.ParsePrefix(*from)
	if err != nil || !src.Addr().Is4() || !labRange.Contains(src.Addr()) || src.Bits() < labRange.Bits() {
		return fmt.Errorf("--from %q: want a prefix inside %v", *from, labRange)
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer syscall.Close(fd)
	sa := &syscall.SockaddrInet4{Addr: dst.Addr().As4()}
	base := binary.BigEndian.Uint32(src.Masked().Addr().AsSlice())
	hosts := uint32(1) << (32 - src.Bits())
	start := time.Now()
	sent := 0
	pkt := make([]byte, 40)
	for sent < *count && time.Since(start) < *duration {
		if *rate > 0 && sent%64 == 0 {
			// Paced in bursts of 64: the n-th SYN leaves no earlier
			// than n/rate after the start.
			if ahead := time.Duration(sent)*time.Second/time.Duration(*rate) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
		i := uint32(sent)
		var s [4]byte
		binary.BigEndian.PutUint32(s[:], base+1+i%(hosts-2))
		sport := uint16(1024 + (i/(hosts-2))%60000)
		buildSYN(pkt, s, dst.Addr().As4(), sport, dst.Port(), i)
		if err := syscall.Sendto(fd, pkt, 0, sa); err != nil {
			if errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.EAGAIN) {
				time.Sleep(time.Millisecond)
				continue
			}
			return fmt.Errorf("send: %w", err)
		}
		sent++
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]int64{"sent": int64(sent), "ms": time.Since(start).Milliseconds()})
}

// buildSYN writes an IPv4 header and a TCP SYN into b (40 bytes).
func buildSYN(b []byte, src, dst [4]byte, sport, dport uint16, seq uint32) {
	clear(b)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], 40)
	b[8] = 64
	b[9] = syscall.IPPROTO_TCP
	copy(b[12:16], src[:])
	copy(b[16:20], dst[:])
	binary.BigEndian.PutUint16(b[10:], csum(0, b[:20]))
	t := b[20:]
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	binary.BigEndian.PutUint32(t[4:], seq*2654435761)
	t[12] = 5 << 4
	t[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(t[14:], 64240)
	var ph [12]byte
	copy(ph[0:4], src[:])
	copy(ph[4:8], dst[:])
	ph[9] = syscall.IPPROTO_TCP
	binary.BigEndian.PutUint16(ph[10:], 20)
	binary.BigEndian.PutUint16(t[16:], csum(sum(0, ph[:]), t))
}

func sum(s uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func csum(s uint32, b []byte) uint16 {
	s = sum(s, b)
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func watch(args []string) error {
	fs := flag.NewFlagSet("watch", flag.ExitOnError)
	iface := fs.String("iface", "eth0", "interface to watch")
	network := fs.String("net", "", "source prefix that must not appear (the backends')")
	port := fs.Int("port", 80, "source port that must not appear with it")
	dstOnly := fs.String("dst", "", "count only packets to this address (default: any)")
	duration := fs.Duration("duration", 30*time.Second, "watch at most this long")
	_ = fs.Parse(args)
	bad, err := netip.ParsePrefix(*network)
	if err != nil {
		return fmt.Errorf("--net: %w", err)
	}
	var dst netip.Addr
	if *dstOnly != "" {
		if dst, err = netip.ParseAddr(*dstOnly); err != nil {
			return fmt.Errorf("--dst: %w", err)
		}
	}
	ifi, err := net.InterfaceByName(*iface)
	if err != nil {
		return err
	}
	const ethPIP = 0x0800
	proto := int(ethPIP>>8 | (ethPIP&0xff)<<8) // htons
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_DGRAM, proto)
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index}); err != nil {
		return fmt.Errorf("bind %s: %w", *iface, err)
	}
	tv := syscall.NsecToTimeval(int64(200 * time.Millisecond))
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	fmt.Println("ready")
	deadline := time.Now().Add(*duration)
	buf := make([]byte, 2048)
	leaked, seen := 0, 0
	for time.Now().Before(deadline) {
		select {
		case <-stop:
			deadline = time.Now()
			continue
		default:
		}
		n, _, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil {
			continue // timeout: look at the clock and the signal again
		}
		p := buf[:n]
		if n < 24 || p[0]>>4 != 4 || p[9] != syscall.IPPROTO_TCP {
			continue
		}
		ihl := int(p[0]&0xf) * 4
		if n < ihl+4 {
			continue
		}
		if dst.IsValid() && netip.AddrFrom4([4]byte(p[16:20])) != dst {
			continue
		}
		seen++
		src := netip.AddrFrom4([4]byte(p[12:16]))
		if bad.Contains(src) && int(binary.BigEndian.Uint16(p[ihl:])) == *port {
			leaked++
		}
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]int{"leaked": leaked, "seen": seen})
}
