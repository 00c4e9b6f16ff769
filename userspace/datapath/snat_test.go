package datapath

import (
	"net/netip"
	"testing"

	"github.com/sluicelb/sluice/bpf"
)

// TestSNAT: a snat service rewrites the source to a sluice address and a
// port from the configured range, two clients with the same source port get
// different ports, and replies are translated back to VIP -> client.
func TestSNAT(t *testing.T) {
	const size = 251
	l := newLab(t, size)
	r := l.r
	vipS := netip.MustParseAddrPort("198.18.1.102:80")
	src := netip.MustParseAddr("198.18.2.1")
	mustSet(t, r.SetService(ServiceKey{VIP: vipS.Addr(), Port: vipS.Port(), Proto: TCP}, Service{ID: 5, Mode: ModeSNAT, SNATAddr: src}))
	mustSet(t, r.SetBackend(1, Backend{Addr: be1, Gen: 1, State: BackendActive}))
	mustSet(t, r.SetTable(5, fill(size, 1)))

	c1 := netip.MustParseAddrPort("198.18.0.2:41000")
	c2 := netip.MustParseAddrPort("198.18.0.3:41000") // same port, other client
	var ports []netip.AddrPort
	for _, c := range []netip.AddrPort{c1, c2} {
		ret, out := l.run(t, pkt{src: c, dst: vipS, proto: TCP, flags: fSYN, seq: 1}.bytes(), l.clientIf)
		if ret != xdpRedirect {
			t.Fatalf("SYN from %v: verdict %s", c, verdictName[ret])
		}
		p, err := parse(trimFrame(out))
		if err != nil {
			t.Fatal(err)
		}
		if p.dst != be1 || p.src.Addr() != src {
			t.Fatalf("SYN from %v went %v -> %v, want %v -> %v", c, p.src, p.dst, src, be1)
		}
		if p.src.Port() < 20000 || p.src.Port() > 32767 {
			t.Errorf("snat port %d outside 20000-32767", p.src.Port())
		}
		ports = append(ports, p.src)
	}
	if ports[0] == ports[1] {
		t.Fatalf("two clients share the snat source %v", ports[0])
	}

	// The backend answers the SNAT address; the client sees the VIP.
	for i, c := range []netip.AddrPort{c1, c2} {
		ret, out := l.run(t, pkt{src: be1, dst: ports[i], proto: TCP, flags: fSYN | fACK, seq: 9, ack: 2}.bytes(), l.backendIf)
		if ret != xdpRedirect && ret != xdpPass {
			t.Fatalf("reply: verdict %s", verdictName[ret])
		}
		p, err := parse(trimFrame(out))
		if err != nil {
			t.Fatal(err)
		}
		if p.src != vipS || p.dst != c {
			t.Errorf("reply %v -> %v, want %v -> %v", p.src, p.dst, vipS, c)
		}
	}

	// An snat flow's reverse entry LRU evicted is re-created by the
	// client's next packet, and the next reply is translated again.
	rk := bpf.SluiceCtKey{Saddr: be32(be1.Addr()), Sport: be16(be1.Port()), Daddr: be32(ports[0].Addr()), Dport: be16(ports[0].Port()), Proto: uint8(TCP)}
	mustSet(t, r.snatRevHO.Delete(rk))
	if ret, _ := l.run(t, pkt{src: c1, dst: vipS, proto: TCP, flags: fACK, seq: 2, ack: 10}.bytes(), l.clientIf); ret != xdpRedirect {
		t.Fatalf("the client's ACK: verdict %s", verdictName[ret])
	}
	ret, out := l.run(t, pkt{src: be1, dst: ports[0], proto: TCP, flags: fACK | fPSH, seq: 10, ack: 2, payload: []byte("x")}.bytes(), l.backendIf)
	if p, err := parse(trimFrame(out)); err != nil || (ret != xdpRedirect && ret != xdpPass) || p.src != vipS || p.dst != c1 {
		t.Errorf("reply after the reverse entry was evicted: verdict %s, %v -> %v (%v)", verdictName[ret], p.src, p.dst, err)
	}
	if g, err := r.GlobalStats(); err != nil || g.ReverseRecreated != 1 {
		t.Errorf("reverse entries re-created: %d (%v), want 1", g.ReverseRecreated, err)
	}
	var rv bpf.SluiceCtKey
	if err := r.snatRev.Lookup(rk, &rv); err != nil {
		t.Errorf("the confirmed flow's reverse entry is not in snat_rev: %v", err)
	}

	var flows []Flow
	mustSet(t, r.Flows(func(f Flow) bool { flows = append(flows, f); return true }))
	if len(flows) != 2 || !flows[0].SNAT.IsValid() {
		t.Errorf("flows %+v", flows)
	}
	// Deleting a flow removes its reverse entry too: the port is free again.
	mustSet(t, r.DeleteFlow(flows[0]))
	n, err := r.GCReverse()
	if err != nil || n != 0 {
		t.Errorf("GCReverse after DeleteFlow removed %d (%v), want 0 orphans", n, err)
	}
}
