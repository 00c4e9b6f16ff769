package datapath

import (
	"encoding/binary"
	"reflect"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
)

// BenchmarkXDP times the program per packet with prog.Run (BPF_PROG_TEST_RUN)
// on the cases of xdpCases that name a benchmark row, prepared exactly as
// TestXDP prepares them, and in the same loop the program as it was before
// issue 10 (testdata/baseline, see baseline_test.go) on the same frames,
// and an empty XDP_PASS program. The programs rewrite packets in place, so
// each run is a single repeat over a fresh copy of the input. Today's
// program and the baseline take turns at running first in an iteration
// (the first pays for a colder start), XDP_PASS runs last. Reported:
// net-ns/pkt, today's program minus XDP_PASS (what sluice adds to a
// packet); base-net-ns/pkt, the same for the baseline; and their ratio.
//
// A case with a frame generator (a new flow each time) gets one row per
// fill level of the table new flows go to (today the half-open table, in
// the baseline conntrack), each starting from freshly created maps (a new
// lab, a new baseline): "empty", "half" (half its entries already taken)
// and "full" (every insert evicts). -count N re-runs every row on maps
// created again.
//
//	go test -run '^$' -bench XDP -benchtime 200000x -count 3 ./userspace/datapath/
func BenchmarkXDP(b *testing.B) {
	const tableSize, conntrackMax = 16381, 262144 // the defaults; half-open 65536
	l := newLabSized(b, tableSize, conntrackMax)
	var pass bpf.XDPPassObjects
	if err := bpf.LoadXDPPassObjects(&pass, nil); err != nil {
		b.Fatal(err)
	}
	defer pass.Close()

	for _, c := range append(xdpCases(), dsrCases()...) {
		if c.bench == "" {
			continue
		}
		if c.next == nil {
			b.Run(c.bench, func(b *testing.B) {
				l.prepare(b, c)
				base := loadBaseline(b, tableSize, conntrackMax)
				l.prepareBaseline(b, base, c)
				in := c.in.frame
				l.time(b, pass.XdpPass, base, c.verdict, func(int) []byte { return in })
			})
			continue
		}
		for _, f := range []struct {
			name string
			fill float64
		}{{"empty", 0}, {"half", 0.5}, {"full", 1}} {
			b.Run(c.bench+"/"+f.name, func(b *testing.B) {
				// A lab of its own, like the baseline's fresh maps: an
				// LRU map whose entries were deleted is not an empty
				// one (its free elements are scattered in memory).
				l := newLabSized(b, tableSize, conntrackMax)
				l.prepare(b, c)
				if isIPv6Frame(c.in.frame) {
					l.fillTable6(b, l.r.halfopen6, f.fill)
				} else {
					l.fillHalfOpen(b, f.fill)
				}
				base := loadBaseline(b, tableSize, conntrackMax)
				l.prepareBaseline(b, base, c)
				l.fillTable(b, base.coll.Maps["conntrack"], f.fill)
				l.time(b, pass.XdpPass, base, c.verdict, c.next)
			})
		}
	}
}

// prepareBaseline runs c's preparation frames through the baseline.
func (l *lab) prepareBaseline(tb testing.TB, base *baseline, c xdpCase) {
	tb.Helper()
	for _, in := range c.before {
		l.exec(func() { _, _, _ = base.prog.Benchmark(in.frame, 1, nil) })
	}
}

// time runs frames from next through the program, the baseline and the
// empty one, checking today's verdicts, and reports the kernel-measured
// costs.
func (l *lab) time(b *testing.B, pass *ebpf.Program, base *baseline, verdict uint32, next func(int) []byte) {
	var sluiceNs, baseNs, passNs time.Duration
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
		var d1, d2, d3 time.Duration
		var err error
		// The program that runs first in an iteration pays for what
		// the hop to the namespace's thread left cold (10-15 ns on an
		// established packet, docs/benchmarks.md): today's program and
		// the baseline take turns at it, XDP_PASS always comes last.
		first, second := l.r.prog, base.prog
		if i%2 == 1 {
			first, second = second, first
		}
		l.exec(func() {
			var r1, r2 uint32
			var t1, t2 time.Duration
			r1, t1, err = first.Benchmark(in, 1, nil)
			if err == nil {
				r2, t2, err = second.Benchmark(in, 1, nil)
			}
			if err == nil {
				_, d3, err = pass.Benchmark(in, 1, nil)
			}
			ret, d1, d2 = r1, t1, t2
			if i%2 == 1 {
				ret, d1, d2 = r2, t2, t1
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		if ret != verdict {
			b.Fatalf("verdict %s, want %s", verdictName[ret], verdictName[verdict])
		}
		sluiceNs += d1
		baseNs += d2
		passNs += d3
	}
	n := float64(b.N)
	net, baseNet := float64(sluiceNs-passNs)/n, float64(baseNs-passNs)/n
	b.ReportMetric(float64(sluiceNs)/n, "ns/pkt")
	b.ReportMetric(float64(passNs)/n, "pass-ns/pkt")
	b.ReportMetric(net, "net-ns/pkt")
	b.ReportMetric(baseNet, "base-net-ns/pkt")
	if baseNet > 0 {
		b.ReportMetric(net/baseNet, "ratio")
	}
}

// fillTable inserts frac × max_entries live flows of clients in
// 198.19.0.0/16 that no benchmark frame uses into m (conntrack or the
// half-open table), as established forward entries to backend slot 1.
func (l *lab) fillTable(tb testing.TB, m *ebpf.Map, frac float64) {
	tb.Helper()
	n := int(frac * float64(m.MaxEntries()))
	const chunk = 4096
	keys := make([]bpf.SluiceCtKey, 0, chunk)
	// Raw values of the map's own size: the baseline's entries are
	// larger (they carried the next hop) and start with the same fields.
	vsize := int(m.ValueSize())
	valType := reflect.ArrayOf(vsize, reflect.TypeFor[byte]())
	vals := reflect.MakeSlice(reflect.SliceOf(valType), 0, chunk)
	now := monotonicNow()
	flush := func() {
		if len(keys) == 0 {
			return
		}
		if _, err := m.BatchUpdate(keys, vals.Interface(), nil); err != nil {
			tb.Fatalf("fill conntrack: %v", err)
		}
		keys, vals = keys[:0], vals.Slice(0, 0)
	}
	for i := 0; i < n; i++ {
		k, v := fillFlow(i, now)
		raw, err := binary.Append(nil, binary.LittleEndian, v)
		if err != nil || len(raw) > vsize {
			tb.Fatalf("fill conntrack: value of %d bytes for a map of %d (%v)", len(raw), vsize, err)
		}
		rv := reflect.New(valType).Elem()
		reflect.Copy(rv, reflect.ValueOf(raw))
		keys, vals = append(keys, k), reflect.Append(vals, rv)
		if len(keys) == chunk {
			flush()
		}
	}
	flush()
}

// fillFlow is the i-th flow the fill functions put in a table: a live
// established flow of a client in 198.19.0.0/16 that no benchmark frame
// uses, to backend slot 1.
func fillFlow(i int, now uint64) (bpf.SluiceCtKey, bpf.SluiceCtValue) {
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
	return k, v
}
