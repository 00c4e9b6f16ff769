package datapath

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
)

// BenchmarkXDP times the program per packet with prog.Run (BPF_PROG_TEST_RUN)
// on the cases of xdpCases that name a benchmark row, prepared exactly as
// TestXDP prepares them. The program rewrites packets in place, so each run
// is a single repeat over a fresh copy of the input, and an empty XDP_PASS
// program is timed the same way in the same loop: the reported net-ns/pkt
// is the kernel-measured difference, i.e. what sluice adds.
//
// A case with a frame generator (a new flow each time) gets one row per
// fill level of the table new flows go to (the half-open table), each
// starting from freshly reset maps: "empty", "half" (half its entries
// already taken) and "full" (every insert evicts). -count N re-runs every
// row on maps reset again.
//
//	go test -run '^$' -bench XDP -benchtime 200000x -count 3 ./userspace/datapath/
func BenchmarkXDP(b *testing.B) {
	l := newLabSized(b, 16381, 262144) // the defaults: conntrack 262144, half-open 65536
	var pass bpf.XDPPassObjects
	if err := bpf.LoadXDPPassObjects(&pass, nil); err != nil {
		b.Fatal(err)
	}
	defer pass.Close()

	for _, c := range xdpCases() {
		if c.bench == "" {
			continue
		}
		if c.next == nil {
			b.Run(c.bench, func(b *testing.B) {
				l.prepare(b, c)
				in := c.in.frame
				l.time(b, pass.XdpPass, c.verdict, func(int) []byte { return in })
			})
			continue
		}
		for _, f := range []struct {
			name string
			fill float64
		}{{"empty", 0}, {"half", 0.5}, {"full", 1}} {
			b.Run(c.bench+"/"+f.name, func(b *testing.B) {
				l.prepare(b, c)
				l.fillTable(b, l.r.halfopen, f.fill)
				l.time(b, pass.XdpPass, c.verdict, c.next)
			})
		}
	}
}

// time runs frames from next through the program and the empty one,
// checking every verdict, and reports the kernel-measured costs.
func (l *lab) time(b *testing.B, pass *ebpf.Program, verdict uint32, next func(int) []byte) {
	var sluiceNs, passNs time.Duration
	inputs := make([][]byte, 0, 1024)
	for i := 0; b.Loop(); i++ {
		if len(inputs) == 0 {
			b.StopTimer()
			for j := 0; j < 1024; j++ {
				inputs = append(inputs, next(i+j))
			}
			b.StartTimer()
		}
		in := inputs[len(inputs)-1]
		inputs = inputs[:len(inputs)-1]
		var ret uint32
		var d1, d2 time.Duration
		var err error
		l.exec(func() {
			ret, d1, err = l.r.prog.Benchmark(in, 1, nil)
			if err == nil {
				_, d2, err = pass.Benchmark(in, 1, nil)
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		if ret != verdict {
			b.Fatalf("verdict %s, want %s", verdictName[ret], verdictName[verdict])
		}
		sluiceNs += d1
		passNs += d2
	}
	n := float64(b.N)
	b.ReportMetric(float64(sluiceNs)/n, "ns/pkt")
	b.ReportMetric(float64(passNs)/n, "pass-ns/pkt")
	b.ReportMetric(float64(sluiceNs-passNs)/n, "net-ns/pkt")
}

// fillTable inserts frac × max_entries live flows of clients in
// 198.19.0.0/16 that no benchmark frame uses into m (conntrack or the
// half-open table), as established forward entries to backend slot 1.
func (l *lab) fillTable(tb testing.TB, m *ebpf.Map, frac float64) {
	tb.Helper()
	n := int(frac * float64(m.MaxEntries()))
	const chunk = 4096
	keys := make([]bpf.SluiceCtKey, 0, chunk)
	vals := make([]bpf.SluiceCtValue, 0, chunk)
	now := monotonicNow()
	flush := func() {
		if len(keys) == 0 {
			return
		}
		if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
			tb.Fatalf("fill conntrack: %v", err)
		}
		keys, vals = keys[:0], vals[:0]
	}
	for i := 0; i < n; i++ {
		k := bpf.SluiceCtKey{
			Saddr: be32(netipFrom4(198, 19, byte(i>>8), byte(i))),
			Daddr: be32(vip.Addr()),
			Sport: be16(uint16(1024 + i>>16)),
			Dport: be16(vip.Port()),
			Proto: uint8(TCP),
		}
		v := bpf.SluiceCtValue{
			LastSeen: now, ServiceId: svcTCP, BackendId: 1, BackendGen: 1,
			DaddrNew: be32(be1.Addr()), DportNew: be16(be1.Port()), State: uint8(FlowEstablished),
		}
		keys, vals = append(keys, k), append(vals, v)
		if len(keys) == chunk {
			flush()
		}
	}
	flush()
}
