package datapath

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestRSTRateLimit: spoofed SYNs to a service without backends get at most
// a second's worth of RSTs per CPU (datapath.rst_rate, 1000 by default)
// plus what the elapsed time refills; the rest are dropped and counted.
func TestRSTRateLimit(t *testing.T) {
	l := newLab(t, testTableSize)
	l.reset(t)
	var affinityErr error
	l.exec(func() {
		// One CPU: the budget is per CPU.
		var set unix.CPUSet
		set.Set(0)
		affinityErr = unix.SchedSetaffinity(0, &set)
	})
	mustSet(t, affinityErr)

	const n = 2500
	start := time.Now()
	tx, dropped := 0, 0
	for i := 0; i < n; i++ {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 3, byte(i)}), uint16(1024+i))
		ret, _ := l.run(t, pkt{src: src, dst: vipNone, proto: TCP, flags: fSYN, seq: uint32(i)}.bytes(), l.clientIf)
		switch ret {
		case xdpTX:
			tx++
		case xdpDrop:
			dropped++
		default:
			t.Fatalf("SYN %d: verdict %s", i, verdictName[ret])
		}
	}
	elapsed := time.Since(start)
	// The burst, plus one RST per millisecond elapsed, plus the coarse
	// clock's tick of slack.
	limit := DefaultRSTRate + int(elapsed/time.Millisecond) + 10
	if tx > limit || dropped == 0 {
		t.Errorf("%d RSTs sent, %d dropped in %v; want at most %d sent", tx, dropped, elapsed, limit)
	}
	if tx < DefaultRSTRate {
		t.Errorf("only %d RSTs sent, want at least the burst of %d", tx, DefaultRSTRate)
	}
	g, err := l.r.GlobalStats()
	mustSet(t, err)
	if g.RSTRateLimited != uint64(dropped) || g.RSTSent != uint64(tx) {
		t.Errorf("counters: rst_sent %d, rst_rate_limited %d; want %d, %d", g.RSTSent, g.RSTRateLimited, tx, dropped)
	}
	s, err := l.r.ServiceStats(svcNone)
	mustSet(t, err)
	if s.RSTNoBackend != uint64(tx) {
		t.Errorf("rst no_backend %d, want %d (only RSTs sent)", s.RSTNoBackend, tx)
	}
}
