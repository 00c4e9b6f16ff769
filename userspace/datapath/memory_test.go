package datapath

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// memlock is the kernel's own accounting of a map's memory: the memlock
// line of its fdinfo, which is what bpftool prints as bytes_memlock (the
// map's map_mem_usage: the elements with their per-element header, the
// bucket array, the key and value rounded up to 8 bytes).
func memlock(tb testing.TB, m *ebpf.Map) uint64 {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/self/fdinfo/%d", m.FD()))
	mustSet(tb, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "memlock:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			mustSet(tb, err)
			return n
		}
	}
	tb.Fatalf("no memlock line in the fdinfo of %v", m)
	return 0
}

// entries counts the entries of a hash map.
func entries(tb testing.TB, m *ebpf.Map) int {
	tb.Helper()
	var k, v []byte
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	mustSet(tb, it.Err())
	return n
}

// TestMemoryPerFlow: issue 10 item 3. A confirmed flow's map memory,
// measured from the real maps (each map's bytes_memlock divided by its
// entries, times the entries the flow takes after a real handshake through
// the program), is at most 128 B for a nat flow (so 1M flows fit in
// 128 MiB) and at most 224 B for an snat flow, whose replies need a key
// of their own (docs/architecture.md, "Memory per flow").
func TestMemoryPerFlow(t *testing.T) {
	l := newLab(t, testTableSize)
	l.reset(t)
	r := l.r
	// The half-open table is an array of fixed size (its memory does not
	// grow with flows, and a confirmed flow leaves it): logged, not
	// counted per flow.
	t.Logf("halfopen: %d slots of %d B: %d B in all", r.halfopen.MaxEntries(), r.halfopen.ValueSize(), memlock(t, r.halfopen))
	flowMaps := map[string]*ebpf.Map{"conntrack": r.conntrack, "snat_rev": r.snatRev, "snat_rev_ho": r.snatRevHO}
	perEntry := map[string]float64{}
	for name, m := range flowMaps {
		perEntry[name] = float64(memlock(t, m)) / float64(m.MaxEntries())
		t.Logf("%s: %d entries, key %d B, value %d B: %.1f B per entry", name, m.MaxEntries(), m.KeySize(), m.ValueSize(), perEntry[name])
	}
	// perFlow is the memory the flows opened since the last call take,
	// divided by how many there are.
	perFlow := func(flows int) float64 {
		var b float64
		for name, m := range flowMaps {
			b += float64(entries(t, m)) * perEntry[name]
		}
		return b / float64(flows)
	}
	handshake := func(c, to, back netip.AddrPort, fromBackend netip.AddrPort) {
		t.Helper()
		steps := []struct {
			p       pkt
			backend bool
		}{
			{pkt{src: c, dst: to, proto: TCP, flags: fSYN, seq: 1000}, false},
			{pkt{src: fromBackend, dst: back, proto: TCP, flags: fSYN | fACK, seq: 5000, ack: 1001}, true},
			{pkt{src: c, dst: to, proto: TCP, flags: fACK, seq: 1001, ack: 5001}, false},
			{pkt{src: fromBackend, dst: back, proto: TCP, flags: fACK | fPSH, seq: 5001, ack: 1001, payload: []byte("hello")}, true},
		}
		for i, s := range steps {
			in := l.clientIf
			if s.backend {
				in = l.backendIf
			}
			if ret, _ := l.run(t, s.p.bytes(), in); ret != xdpRedirect {
				t.Fatalf("handshake step %d: verdict %s", i, verdictName[ret])
			}
		}
	}

	const n = 16
	for i := 0; i < n; i++ {
		c := netip.AddrPortFrom(client.Addr(), uint16(41000+i))
		handshake(c, vip, c, be1)
	}
	check(t, l, "nat", n, perFlow, 128)

	// snat: the same, through an snat service; its flows' replies come to
	// the snat address and port.
	l.reset(t)
	vipS := netip.MustParseAddrPort("198.18.1.102:80")
	src := netip.MustParseAddr("198.18.2.1")
	mustSet(t, r.SetService(ServiceKey{VIP: vipS.Addr(), Port: vipS.Port(), Proto: TCP}, Service{ID: 5, Mode: ModeSNAT, SNATAddr: src, PoolID: PoolID("web")}))
	mustSet(t, r.SetTable(5, fill(r.TableSize(), 1)))
	for i := 0; i < n; i++ {
		c := netip.AddrPortFrom(client.Addr(), uint16(41000+i))
		ret, out := l.run(t, pkt{src: c, dst: vipS, proto: TCP, flags: fSYN, seq: 1000}.bytes(), l.clientIf)
		if ret != xdpRedirect {
			t.Fatalf("snat SYN: verdict %s", verdictName[ret])
		}
		p, err := parse(trimFrame(out))
		mustSet(t, err)
		for j, s := range []struct {
			p       pkt
			backend bool
		}{
			{pkt{src: be1, dst: p.src, proto: TCP, flags: fSYN | fACK, seq: 5000, ack: 1001}, true},
			{pkt{src: c, dst: vipS, proto: TCP, flags: fACK, seq: 1001, ack: 5001}, false},
			{pkt{src: be1, dst: p.src, proto: TCP, flags: fACK | fPSH, seq: 5001, ack: 1001, payload: []byte("hello")}, true},
		} {
			in := l.clientIf
			if s.backend {
				in = l.backendIf
			}
			if ret, _ := l.run(t, s.p.bytes(), in); ret != xdpRedirect && ret != xdpPass {
				t.Fatalf("snat handshake step %d: verdict %s", j, verdictName[ret])
			}
		}
	}
	check(t, l, "snat", n, perFlow, 224)
}

// check: the n flows opened are all confirmed, and take at most limit
// bytes each (perFlow).
func check(t *testing.T, l *lab, mode string, n int, perFlow func(int) float64, limit float64) {
	t.Helper()
	c, h := flowsIn(t, l)
	if len(c) != n || len(h) != 0 {
		t.Fatalf("%s: %d confirmed and %d half-open flows, want %d confirmed", mode, len(c), len(h), n)
	}
	b := perFlow(n)
	t.Logf("%s: %.1f B per confirmed flow", mode, b)
	if b > limit {
		t.Errorf("a %s flow takes %.1f B of map memory, want at most %.0f", mode, b, limit)
	}
}
