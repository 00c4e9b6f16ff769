package datapath

import (
	"net/netip"
	"testing"

	"github.com/sluicelb/sluice/bpf"
)

// TestSNAT6: an IPv6 snat service rewrites the source to a sluice address
// and a port of the range (two clients with the same port get different
// ports), the backend's replies to that address and port go back to the
// client from the VIP, the flow is listed once (its reverse entry is not a
// flow), and DeleteFlow and GCReverse leave no entry behind. Checksums are
// verified by parse6, written from RFC 8200.
func TestSNAT6(t *testing.T) {
	l := newLab(t, testTableSize)
	l.reset(t)
	l.reset6(t)
	r := l.r
	c1 := netip.MustParseAddrPort("[2001:2::2]:41000")
	c2 := netip.MustParseAddrPort("[2001:2::3]:41000")
	var ports []netip.AddrPort
	for _, c := range []netip.AddrPort{c1, c2} {
		ret, out := l.run(t, pkt6{src: c, dst: vip6SNAT, proto: TCP, flags: fSYN, seq: 1}.bytes(), l.clientIf)
		if ret != xdpRedirect {
			t.Fatalf("SYN from %v: verdict %s", c, verdictName[ret])
		}
		p, err := parse6(out)
		if err != nil {
			t.Fatal(err)
		}
		if p.dst != be6b || p.src.Addr() != snat6 {
			t.Fatalf("SYN from %v went %v -> %v, want %v -> %v", c, p.src, p.dst, snat6, be6b)
		}
		if p.src.Port() < 20000 || p.src.Port() > 32767 {
			t.Errorf("snat port %d outside 20000-32767", p.src.Port())
		}
		ports = append(ports, p.src)
	}
	if ports[0] == ports[1] {
		t.Fatalf("two clients share the snat source %v", ports[0])
	}
	for i, c := range []netip.AddrPort{c1, c2} {
		ret, out := l.run(t, pkt6{src: be6b, dst: ports[i], proto: TCP, flags: fSYN | fACK, seq: 9, ack: 2}.bytes(), l.backendIf)
		if ret != xdpRedirect && ret != xdpPass { // c2 has no neighbour entry: the kernel forwards
			t.Fatalf("reply: verdict %s", verdictName[ret])
		}
		p, err := parse6(out)
		if err != nil {
			t.Fatal(err)
		}
		if p.src != vip6SNAT || p.dst != c {
			t.Errorf("reply %v -> %v, want %v -> %v", p.src, p.dst, vip6SNAT, c)
		}
		// The client's ACK, then the backend's data: confirmed.
		l.run(t, pkt6{src: c, dst: vip6SNAT, proto: TCP, flags: fACK, seq: 2, ack: 10}.bytes(), l.clientIf)
		if ret, _ := l.run(t, pkt6{src: be6b, dst: ports[i], proto: TCP, flags: fACK | fPSH, seq: 10, ack: 2, payload: []byte("hi")}.bytes(), l.backendIf); ret != xdpRedirect && ret != xdpPass {
			t.Fatalf("data reply: verdict %s", verdictName[ret])
		}
	}
	c, h := flowsIn(t, l)
	if len(c) != 2 || len(h) != 0 {
		t.Fatalf("flows: confirmed %+v half-open %+v, want 2 confirmed", c, h)
	}
	for _, f := range c {
		if f.SNAT.Addr() != snat6 || f.Backend != be6b || f.VIP != vip6SNAT || f.State != FlowEstablished || f.ServiceID != svcSNAT6 {
			t.Errorf("flow %+v", f)
		}
	}
	wantEntries6(t, l, 4, 0) // two forward, two reverse entries
	mustSet(t, r.DeleteFlow(c[0]))
	wantEntries6(t, l, 2, 0)
	// A reverse entry whose forward entry is gone is collected.
	fk := flowKey6(c[1])
	mustSet(t, r.conntrack6.Delete(fk))
	n, err := r.GCReverse()
	mustSet(t, err)
	if n != 1 {
		t.Errorf("GCReverse removed %d entries, want 1", n)
	}
	wantEntries6(t, l, 0, 0)
}

// TestBackendsBothFamilies: a slot written with an IPv6 backend and then
// reused by an IPv4 one (and back) reads back as what was written last,
// and Services lists both families.
func TestBackendsBothFamilies(t *testing.T) {
	l := newLab(t, testTableSize)
	l.reset(t)
	l.reset6(t)
	r := l.r
	for _, b := range []Backend{
		{Addr: be6a, Gen: 3, State: BackendActive, PoolID: 7, Src: snat6},
		{Addr: be1, Gen: 4, State: BackendDraining, PoolID: 7},
		{Addr: be6b, Gen: 5, State: BackendFree, PoolID: 7},
		{Addr: be6b, Gen: 6, State: BackendEjected, PoolID: 8},
	} {
		mustSet(t, r.SetBackend(20, b))
		all, err := r.Backends()
		mustSet(t, err)
		got := all[20]
		want := b
		if b.State == BackendFree {
			want.Addr = netip.AddrPort{}
			want.Src = netip.Addr{}
			got.Addr, got.Src = netip.AddrPort{}, netip.Addr{}
		}
		if got != want {
			t.Errorf("slot 20 reads %+v after writing %+v", got, b)
		}
	}
	svcs, err := r.Services()
	mustSet(t, err)
	if svcs[keyTCP6].ID != svcTCP6 || svcs[keySNAT6].SNATAddr != snat6 || svcs[keyTCP].ID != svcTCP {
		t.Errorf("services %+v", svcs)
	}
}

// TestNATHint6Cleanup: a nat flow records its VIP in nat_hint6 for the
// backend's endpoint; when no slot holds the endpoint any more, the hint
// goes (the map stays bounded by the slots).
func TestNATHint6Cleanup(t *testing.T) {
	l := newLab(t, testTableSize)
	l.reset(t)
	l.reset6(t)
	if ret, _ := l.run(t, pkt6{src: client6, dst: vip6, proto: TCP, flags: fSYN}.bytes(), l.clientIf); ret != xdpRedirect {
		t.Fatalf("SYN: verdict %s", verdictName[ret])
	}
	hints := func() int {
		n := 0
		var k bpf.SluiceEndpoint6
		var v bpf.SluiceNatHint6Value
		it := l.r.natHint6.Iterate()
		for it.Next(&k, &v) {
			n++
			if addrFrom6(k.Addr) != be6a.Addr() || portFromBE16(k.Port) != be6a.Port() || addrFrom6(v.Vip) != vip6.Addr() || v.Shared != 0 {
				t.Errorf("hint %+v -> %+v", k, v)
			}
		}
		mustSet(t, it.Err())
		return n
	}
	if n := hints(); n != 1 {
		t.Fatalf("%d hints after a nat flow, want 1", n)
	}
	mustSet(t, l.r.SetBackend(slotBE6a, Backend{Addr: be6a, Gen: 1, State: BackendRemoved}))
	if n := hints(); n != 1 {
		t.Fatalf("%d hints while a removed slot holds the endpoint, want 1", n)
	}
	mustSet(t, l.r.SetBackend(slotBE6a, Backend{Gen: 1}))
	if n := hints(); n != 0 {
		t.Fatalf("%d hints after the slot was freed, want 0", n)
	}
}
