package datapath

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
)

// BenchmarkXDP times the program per packet with prog.Run (BPF_PROG_TEST_RUN)
// for the packets of the prog.Run tests. The program rewrites packets in
// place, so each run is a single repeat over a fresh copy of the input, and
// an empty XDP_PASS program is timed the same way in the same loop: the
// reported ns/pkt is the kernel-measured difference, i.e. what sluice adds.
//
//	make bench   (or: go test -run '^$' -bench XDP ./userspace/datapath/)
func BenchmarkXDP(b *testing.B) {
	const size = 16381
	l := newLab(b, size)
	r := l.r
	mustNoErr(b, r.SetService(ServiceKey{VIP: vip.Addr(), Port: vip.Port(), Proto: TCP}, Service{ID: 1}))
	mustNoErr(b, r.SetBackend(1, Backend{Addr: be1, Gen: 1, State: BackendActive}))
	mustNoErr(b, r.SetBackend(2, Backend{Addr: be2, Gen: 1, State: BackendActive}))
	mustNoErr(b, r.SetTable(1, fill(size, 1, 2)))

	var pass bpf.XDPPassObjects
	if err := bpf.LoadXDPPassObjects(&pass, nil); err != nil {
		b.Fatal(err)
	}
	defer pass.Close()

	established := pkt{src: client, dst: vip, proto: TCP, flags: fACK | fPSH, seq: 1, ack: 1, payload: make([]byte, 64)}.bytes()
	// Open the established flow once.
	l.run(b, pkt{src: client, dst: vip, proto: TCP, flags: fSYN}.bytes(), l.clientIf)

	cases := []struct {
		name string
		next func(i int) []byte
	}{
		{"non-vip", func(int) []byte {
			return pkt{src: client, dst: netip.MustParseAddrPort("198.18.0.1:22"), proto: TCP, flags: fACK, payload: make([]byte, 64)}.bytes()
		}},
		{"established", func(int) []byte { return established }},
		{"new-flow-syn", func(i int) []byte {
			// A client address and port never seen before, every time.
			a := netip.AddrFrom4([4]byte{198, 18, 0, byte(3 + i>>16%200)})
			return pkt{src: netip.AddrPortFrom(a, uint16(i)), dst: vip, proto: TCP, flags: fSYN}.bytes()
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var sluiceNs, passNs time.Duration
			inputs := make([][]byte, 0, 1024)
			for i := 0; b.Loop(); i++ {
				if len(inputs) == 0 {
					b.StopTimer()
					for j := 0; j < 1024; j++ {
						inputs = append(inputs, c.next(i+j))
					}
					b.StartTimer()
				}
				in := inputs[len(inputs)-1]
				inputs = inputs[:len(inputs)-1]
				var d1, d2 time.Duration
				var err error
				l.exec(func() {
					_, d1, err = r.prog.Benchmark(in, 1, nil)
					if err == nil {
						_, d2, err = pass.XdpPass.Benchmark(in, 1, nil)
					}
				})
				if err != nil {
					b.Fatal(err)
				}
				sluiceNs += d1
				passNs += d2
			}
			n := float64(b.N)
			b.ReportMetric(float64(sluiceNs)/n, "ns/pkt")
			b.ReportMetric(float64(passNs)/n, "pass-ns/pkt")
			b.ReportMetric(float64(sluiceNs-passNs)/n, "net-ns/pkt")
		})
	}
	_ = ebpf.XDP
}

func mustNoErr(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}
