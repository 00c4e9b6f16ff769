package datapath

import (
	"net/netip"
	"testing"

	"github.com/sluicelb/sluice/userspace/maglev"
)

// Issue 13, consistency across nodes: behind ECMP a flow's packets can
// reach a node that never saw its SYN (another node died or left, the
// router rehashed). That node has no state for it; the packet must go to
// the backend the first node chose, through Maglev, and never be reset.
// Here the first node is the program with the SYN's state, the second the
// same program after every map of flows was emptied (a node with the same
// config and tables, and no state). Two real nodes hash a flow alike: the
// hash seed is a constant every agent loads (Open sets 0x5eed1ce).
func TestStatelessNodeSendsMidFlowPacketToSameBackend(t *testing.T) {
	l := newLab(t, 251)
	l.reset(t)
	// The table of a three-backend pool, as every node's agent builds it.
	table, err := maglev.Build([]maglev.Backend{
		{ID: 1, Key: be1.String(), Weight: 1}, {ID: 2, Key: be2.String(), Weight: 1}, {ID: 4, Key: be3.String(), Weight: 1},
	}, l.r.TableSize())
	if err != nil {
		t.Fatal(err)
	}
	install := func() { mustSet(t, l.r.SetTable(svcTCP, table)) }
	install()
	dstOf := func(out []byte) netip.AddrPort {
		ip := netip.AddrFrom4([4]byte(out[30:34]))
		return netip.AddrPortFrom(ip, uint16(out[36])<<8|uint16(out[37]))
	}
	const clients = 64
	first := make([]netip.AddrPort, clients)
	for i := range clients {
		c := newClient(i)
		ret, out := l.run(t, pkt{src: c, dst: vip, proto: TCP, flags: fSYN, seq: 1000}.bytes(), l.clientIf)
		if ret != xdpRedirect && ret != xdpPass {
			t.Fatalf("client %d SYN: verdict %s", i, verdictName[ret])
		}
		first[i] = dstOf(out)
	}
	// The second node: no flow state at all.
	l.reset(t)
	install()
	seen := map[netip.AddrPort]int{}
	for i := range clients {
		c := newClient(i)
		ack := pkt{src: c, dst: vip, proto: TCP, flags: fACK | fPSH, seq: 1001, ack: 5001, payload: []byte("GET / HTTP/1.1\r\n\r\n")}
		ret, out := l.run(t, ack.bytes(), l.clientIf)
		if ret == xdpTX || ret == xdpDrop {
			t.Fatalf("client %d: a mid-flow packet on a node without its state got %s (a reset or a drop)", i, verdictName[ret])
		}
		if got := dstOf(out); got != first[i] {
			t.Fatalf("client %d: the stateless node sent it to %s, the first node to %s", i, got, first[i])
		}
		seen[first[i]]++
	}
	if len(seen) < 3 {
		t.Fatalf("64 clients over 3 backends used only %v: the test proves nothing", seen)
	}
	wantGlobal(func(g GlobalStats) bool { return g.RSTSent == 0 })(t, l)
}
