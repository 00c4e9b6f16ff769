package agent

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/pool"
)

// lab DNS: answers backend.lab with the addresses the test sets, TTL 1s,
// on a loopback UDP port.
type labDNS struct {
	mu    sync.Mutex
	addrs []netip.Addr
}

func (d *labDNS) set(addrs ...netip.Addr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.addrs = addrs
}

func (d *labDNS) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	if len(q.Question) == 1 && q.Question[0].Name == "backend.lab." && q.Question[0].Qtype == dns.TypeA {
		d.mu.Lock()
		for _, a := range d.addrs {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: "backend.lab.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1},
				A:   net.IP(a.AsSlice()),
			})
		}
		d.mu.Unlock()
	}
	_ = w.WriteMsg(m)
}

func startLabDNS(t *testing.T, d *labDNS) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: d}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ActivateAndServe()
	}()
	<-started
	t.Cleanup(func() {
		_ = srv.Shutdown()
		<-done
	})
	return pc.LocalAddr().String()
}

// TestDNSWiringWithARealResolver runs the agent's watcher against a DNS
// server on loopback: the answer moves and the pool follows within the TTL.
func TestDNSWiringWithARealResolver(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for DNS TTLs")
	}
	d := &labDNS{}
	d.set(dns1.Addr())
	server := startLabDNS(t, d)

	text := strings.Replace(dnsConfig, "interfaces: [veth0]\n",
		"interfaces: [veth0]\ndns: {servers: ["+server+"], min_ttl: 200ms}\n", 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// changed is kicked by every transition: waits follow the events, not
	// a polling interval.
	changed := make(chan struct{}, 1)
	h := newHarnessWith(t, nil, text, func(o *options) {
		cfg, err := config.Load(o.configPath)
		if err != nil {
			t.Fatal(err)
		}
		// The agent's clock follows the real one here: the watcher's does.
		o.now, o.ctx = time.Now, ctx
		o.dns = newDNSWatcher(cfg.DNS, slog.New(slog.DiscardHandler))
		o.observe = func(pool.Transition) {
			select {
			case changed <- struct{}{}:
			default:
			}
		}
	})
	defer func() {
		cancel()
		h.a.dns.wait()
	}()
	h.a.syncDNS()

	waitState := func(addr netip.AddrPort, want pool.State) {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			h.a.mu.Lock()
			b, ok := h.a.pools["web"].p.Backend(addr)
			h.a.mu.Unlock()
			if ok && b.State == want {
				return
			}
			select {
			case <-changed:
			case <-timeout:
				t.Fatalf("%s: state %v (known %v), want %v", addr, b.State, ok, want)
			}
		}
	}
	waitState(dns1, pool.Active)
	n1 := h.slotOf(dns1)
	if b := h.dp.Backend(n1); b.State != datapath.BackendActive {
		t.Fatalf("slot = %+v", b)
	}

	switched := time.Now()
	d.set(dns2.Addr())
	waitState(dns2, pool.Active)
	waitState(dns1, pool.Draining)
	if took := time.Since(switched); took > 2*time.Second {
		t.Errorf("followed the new answer after %s, want within TTL + 1s", took)
	}
	for _, n := range h.tableSlots(1) {
		if n == n1 {
			t.Fatal("old address still in the table")
		}
	}
	st, err := h.a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range st.Pools[0].Backends {
		if b.Address == dns2.String() && (b.Source != "backend.lab" || b.TTLLeft == "") {
			t.Fatalf("status of the DNS address = %+v", b)
		}
	}
}
