package decap

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/internal/testenv"
)

var (
	vip    = netip.MustParseAddr("198.18.1.100")
	other  = netip.MustParseAddr("198.18.1.200")
	node   = netip.MustParseAddr("198.18.2.1")
	be     = netip.MustParseAddr("198.18.2.11")
	client = netip.MustParseAddr("198.18.0.2")
)

func sum16(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// ipv4 is an option-less IPv4 header (checksummed) of protocol proto
// followed by payload.
func ipv4(src, dst netip.Addr, proto byte, fragOff uint16, payload []byte) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	binary.BigEndian.PutUint16(h[6:], fragOff)
	h[8] = 64
	h[9] = proto
	s, d := src.As4(), dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	binary.BigEndian.PutUint16(h[10:], sum16(h))
	return append(h, payload...)
}

func frame(l3 []byte) []byte {
	eth := []byte{2, 0, 0, 0, 2, 11, 2, 0, 0, 0, 2, 1, 0x08, 0x00}
	return append(eth, l3...)
}

// The client's packet: a TCP SYN to the VIP (the checksum is not the
// program's business: it never touches the inner packet).
func inner(dst netip.Addr) []byte {
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 80)
	tcp[12], tcp[13] = 5<<4, 0x02
	return ipv4(client, dst, 6, 0x4000, tcp)
}

// run runs the program on in and returns the verdict and the output frame,
// exactly as long as the program left it.
func run(p *ebpf.Program, in []byte) (uint32, []byte, error) {
	opts := &ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256)}
	ret, err := p.Run(opts)
	return ret, opts.DataOut, err
}

// Issue 13: the backend's decapsulation, through prog.Run: an IPIP packet
// to a VIP here loses its outer header and nothing else; anything else
// passes untouched and is counted.
func TestDecapProgram(t *testing.T) {
	testenv.RequireRoot(t, "BPF tests (CAP_BPF)")
	var objs bpf.DecapObjects
	if err := bpf.LoadDecapObjects(&objs, nil); err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	if err := setVIPs(objs.Vips, []netip.Addr{vip}); err != nil {
		t.Fatal(err)
	}
	encap := func(in []byte, fragOff uint16) []byte { return frame(ipv4(node, be, 4, fragOff, in)) }
	for _, c := range []struct {
		name string
		in   []byte
		want []byte // nil: unchanged
	}{
		{"IPIP to a VIP here: the outer header goes", encap(inner(vip), 0x4000), frame(inner(vip))},
		{"IPIP to another address: untouched", encap(inner(other), 0), nil},
		{"plain TCP to the VIP: untouched", frame(inner(vip)), nil},
		{"a fragment of an IPIP packet: untouched (never reassembled here)", encap(inner(vip), 0x2000), nil},
		{"IPIP with a truncated inner header: untouched", encap(inner(vip)[:12], 0), nil},
		{"ARP: untouched", append([]byte{2, 0, 0, 0, 2, 11, 2, 0, 0, 0, 2, 1, 0x08, 0x06}, make([]byte, 28)...), nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			ret, out, err := run(objs.SluiceDecap, c.in)
			if err != nil {
				t.Fatal(err)
			}
			if ret != 2 { // XDP_PASS
				t.Fatalf("verdict %d, want XDP_PASS", ret)
			}
			want := c.want
			if want == nil {
				want = c.in
			}
			if !bytes.Equal(out, want) {
				t.Errorf("output\n got %x\nwant %x", out, want)
			}
		})
	}
	got, err := readCounters(objs.DecapStats)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Counters{Decapsulated: 1, NotOurs: 2, UnknownVIP: 1, Malformed: 2}); got != want {
		t.Errorf("counters %+v, want %+v", got, want)
	}
}

// FuzzDecap: whatever the frame, the program passes it (never drops or
// aborts), and its output is the input or the input without exactly the
// 20 bytes after the Ethernet header (an outer header whose inner
// destination is the VIP).
func FuzzDecap(f *testing.F) {
	f.Add(frame(ipv4(node, be, 4, 0, inner(vip))))
	f.Add(frame(ipv4(node, be, 4, 0x2000, inner(vip))))
	f.Add(frame(inner(vip)))
	testenv.RequireRoot(f, "BPF tests (CAP_BPF)")
	var objs bpf.DecapObjects
	if err := bpf.LoadDecapObjects(&objs, nil); err != nil {
		f.Fatal(err)
	}
	defer objs.Close()
	if err := setVIPs(objs.Vips, []netip.Addr{vip}); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 || len(in) > 1600 {
			return
		}
		ret, out, err := run(objs.SluiceDecap, in)
		if err != nil {
			t.Fatal(err)
		}
		if ret != 2 {
			t.Fatalf("verdict %d\n in %x", ret, in)
		}
		if bytes.Equal(out, in) {
			return
		}
		stripped := append(append([]byte(nil), in[:14]...), in[34:]...)
		if len(in) < 34 || !bytes.Equal(out, stripped) || netip.AddrFrom4([4]byte(in[34+16:34+20])) != vip {
			t.Fatalf("output is neither the input nor the input decapsulated to the VIP\n in %x\nout %x", in, out)
		}
	})
}
