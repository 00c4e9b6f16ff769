package datapath

import (
	"testing"

	"github.com/cilium/ebpf"
)

// memlockPerEntry is a map's memlock (memory_test.go) per entry.
func memlockPerEntry(tb testing.TB, m *ebpf.Map) float64 {
	tb.Helper()
	return float64(memlock(tb, m)) / float64(m.MaxEntries())
}

// TestMemoryPerFlow6: an IPv6 nat flow, confirmed through a whole
// handshake, is one conntrack6 entry of 168 bytes (docs/architecture.md,
// "IPv6": key 40, value 64, the kernel's 64; a small map adds a fraction
// of a byte of fixed overhead per entry). TestSNAT6 counts an snat flow's
// two entries.
func TestMemoryPerFlow6(t *testing.T) {
	l := newLab(t, testTableSize)
	for _, c := range xdpCases6() {
		if c.name != "v6: the backend's first answer after the handshake confirms the flow: one conntrack6 entry" {
			continue
		}
		l.prepare(t, c)
		if ret, _ := l.run(t, c.in.frame, l.ingress(c.in.fromBE)); ret != c.verdict {
			t.Fatalf("confirming reply: verdict %s", verdictName[ret])
		}
	}
	wantEntries6(t, l, 1, 0)
	per := memlockPerEntry(t, l.r.conntrack6)
	t.Logf("conntrack6: %.1f B per entry; an IPv6 nat flow takes 1 entry", per)
	if per >= 169 {
		t.Errorf("an IPv6 nat flow costs %.1f B, want at most 168", per)
	}
}
