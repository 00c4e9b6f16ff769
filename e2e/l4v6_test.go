package e2e

import (
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The IPv6 data path through the real binary (issue 12): service web6-l4
// at [vip6]:80 on pool web's IPv6 addresses, in the lab's 2001:2::/48.

// v6Backends are be1..be3's IPv6 addresses (pool web holds only those: the
// IPv4 service web-l4 next to web6-l4 has an empty table).
var v6Backends = []string{"be1v6", "be2v6", "be3v6"}

// TestL4IPv6: new connections to an IPv6 VIP spread over IPv6 backends
// with none failing; a keep-alive connection stays on its backend while
// that backend drains and new connections avoid it; `sluice conntrack`
// lists the IPv6 flows; a kill -9 of the agent breaks no connection and the
// restarted agent adopts the IPv6 state.
func TestL4IPv6(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	agent := lab.StartAgent(agentConfig{Backends: v6Backends, L4v6: true, DrainTimeout: 30 * time.Second})
	agent.waitStates(t, 10*time.Second, map[string]string{
		backendAddr["be1v6"]: "active", backendAddr["be2v6"]: "active", backendAddr["be3v6"]: "active"})

	const n = 150
	r := lab.Load("--url", vipURL6, "--mode", "newconn", "--conns", "3", "--count", fmt.Sprint(n), "--duration", "60s", "--timeout", "3s")
	assertNoFailures(t, "new connections to the IPv6 VIP", r)
	for _, be := range []string{"be1", "be2", "be3"} {
		if got := r.ByBackend[be]; got < n*15/100 {
			t.Errorf("%s got %d of %d connections, want >= 15%%: %v", be, got, n, r.ByBackend)
		}
	}
	t.Logf("IPv6 spread over backends: %v, latency %v", r.ByBackend, r.LatencyMS)

	// A keep-alive connection, pinned to one backend.
	events := make(chan string, 4096)
	long := lab.StartLoad("long6", events, "--url", vipURL6, "--mode", "keepalive",
		"--conns", "1", "--interval", "50ms", "--count", "100000", "--duration", "60s",
		"--timeout", "3s", "--events")
	t.Cleanup(func() { long.Stop(3 * time.Second) })
	pinned := ""
	for pinned == "" {
		ev, err := nextEvent(events, 10*time.Second)
		if err != nil {
			t.Fatalf("keep-alive connection over IPv6: %v\n%s", err, long.Log())
		}
		switch ev.Event {
		case "response":
			pinned = ev.Backend
		case "error":
			t.Fatalf("keep-alive connection failed: %s %s", ev.Kind, ev.Error)
		}
	}
	addr := backendAddr[pinned+"v6"]
	if out, err := agent.CLI("conntrack", "--json"); err != nil {
		t.Errorf("conntrack: %v", err)
	} else if !strings.Contains(out, vip6) || !strings.Contains(out, addr) {
		t.Errorf("conntrack lists no flow to [%s] on %s:\n%s", vip6, addr, out)
	}

	// Drain the pinned backend: new connections avoid it, the pinned one
	// keeps working on it.
	if _, err := agent.CLI("drain", "web", addr); err != nil {
		t.Fatalf("drain %s: %v", addr, err)
	}
	r = lab.Load("--url", vipURL6, "--mode", "newconn", "--conns", "2", "--count", "40", "--duration", "20s", "--timeout", "3s")
	assertNoFailures(t, "new IPv6 connections while draining", r)
	if r.ByBackend[pinned] != 0 {
		t.Errorf("draining %s still got %d new connections: %v", pinned, r.ByBackend[pinned], r.ByBackend)
	}

	// kill -9 and restart: the pinned connection goes on through both.
	if err := agent.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = agent.proc.Wait(10 * time.Second)
	r = lab.Load("--url", vipURL6, "--mode", "newconn", "--count", "30", "--duration", "20s", "--timeout", "3s")
	assertNoFailures(t, "new IPv6 connections while the agent is down", r)
	agent.Start()
	agent.waitStates(t, 10*time.Second, map[string]string{addr: "draining"})
	r = lab.Load("--url", vipURL6, "--mode", "newconn", "--count", "30", "--duration", "20s", "--timeout", "3s")
	assertNoFailures(t, "new IPv6 connections after the restart", r)

	responses := 0
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		ev, err := nextEvent(events, 5*time.Second)
		if err != nil {
			t.Fatalf("pinned connection after the restart: %v", err)
		}
		switch ev.Event {
		case "response":
			if ev.Conn != 1 || ev.Backend != pinned {
				t.Fatalf("connection %d answered by %s, want connection 1 on %s", ev.Conn, ev.Backend, pinned)
			}
			responses++
		case "error":
			t.Fatalf("pinned connection failed: %s %s", ev.Kind, ev.Error)
		}
	}
	long.Stop(3 * time.Second)
	rep := parseReport(t, long.Output())
	assertNoFailures(t, "keep-alive IPv6 connection through a drain and a kill -9", rep)
	if rep.Dials != 1 {
		t.Errorf("keep-alive load dialled %d connections, want 1", rep.Dials)
	}
	t.Logf("pinned connection on %s: %d requests, %d in the last 2 s", pinned, rep.Requests, responses)
}

// TestL4IPv6SNAT: an IPv6 snat service reaches backends that have no route
// back to the clients; the backend sees the lb's IPv6 address as the peer.
func TestL4IPv6SNAT(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	for _, be := range []string{"be1", "be2", "be3"} {
		lab.MustRun(be, 5*time.Second, "ip", "-6", "route", "del", "2001:2::/48")
	}
	agent := lab.StartAgent(agentConfig{Backends: v6Backends, L4v6: true, Mode: "snat"})
	agent.waitStates(t, 10*time.Second, map[string]string{backendAddr["be1v6"]: "active"})

	const n = 90
	r := lab.Load("--url", vipURL6, "--mode", "newconn", "--conns", "2", "--count", fmt.Sprint(n), "--duration", "60s", "--timeout", "3s")
	assertNoFailures(t, "new IPv6 connections in snat mode", r)
	if len(r.ByBackend) != 3 {
		t.Errorf("snat connections went to %v, want be1..be3", r.ByBackend)
	}
	out := lab.MustRun("client", 10*time.Second, "curl", "-g", "-sf", "--max-time", "2", "-D", "-", "-o", "/dev/null", vipURL6)
	var peer string
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "X-Client-Addr") {
			peer = strings.TrimSpace(v)
		}
	}
	if !strings.HasPrefix(peer, "[2001:2:0:2::1]:") {
		t.Errorf("backend saw peer %q in snat mode, want [2001:2:0:2::1]:PORT (sluice's source)\n%s", peer, out)
	}
}

// TestL4IPv6DNSMove is field report 1 on the IPv6 data path: pool web is a
// DNS name answering AAAA (TTL 1 s, asked over IPv6); when the record
// moves, new connections to the IPv6 VIP follow within TTL + 1 s, none
// fails, none goes back to the old address.
func TestL4IPv6DNSMove(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	dns := lab.StartDNS("backend.lab. 1 AAAA 2001:2:0:2::11\n")
	dns.ListenAlso("[2001:2:0:2::53]:53")
	agent := lab.StartAgent(agentConfig{DNSName: "backend.lab", L4v6: true, DrainTimeout: 10 * time.Second,
		DNSServers: `"[2001:2:0:2::53]:53"`})
	agent.waitStates(t, 10*time.Second, map[string]string{backendAddr["be1v6"]: "active"})

	events := make(chan string, 4096)
	load := lab.StartLoad("newconn6", events, "--url", vipURL6, "--mode", "newconn",
		"--conns", "1", "--interval", "50ms", "--count", "400", "--duration", "30s",
		"--timeout", "3s", "--events")
	t.Cleanup(func() { load.Stop(3 * time.Second) })
	for n := 0; n < 5; {
		ev, err := nextEvent(events, 10*time.Second)
		if err != nil {
			t.Fatalf("before the move: %v", err)
		}
		switch {
		case ev.Event == "error":
			t.Fatalf("before the move: %s %s", ev.Kind, ev.Error)
		case ev.Event == "response" && ev.Backend != "be1":
			t.Fatalf("before the move: answer from %s, want be1", ev.Backend)
		case ev.Event == "response":
			n++
		}
	}
	const ttl = time.Second
	changed := time.Now()
	dns.Set("backend.lab. 1 AAAA 2001:2:0:2::12\n")
	var movedAt time.Time
	for after := 0; after < 20; {
		ev, err := nextEvent(events, 10*time.Second)
		if err != nil {
			t.Fatalf("after the move: %v", err)
		}
		switch ev.Event {
		case "error":
			t.Fatalf("after the move: a connection failed: %s %s", ev.Kind, ev.Error)
		case "response":
			switch {
			case ev.Backend == "be2":
				if movedAt.IsZero() {
					movedAt = ev.Time()
				}
				after++
			case !movedAt.IsZero():
				t.Fatalf("answer from %s after new connections had moved to be2", ev.Backend)
			case time.Since(changed) > ttl+time.Second+500*time.Millisecond:
				t.Fatalf("new connections still reach %s %s after the record moved", ev.Backend, time.Since(changed).Round(time.Millisecond))
			}
		}
	}
	took := movedAt.Sub(changed)
	t.Logf("new connections moved to be2 %s after the AAAA record moved", took.Round(time.Millisecond))
	if took > ttl+time.Second {
		t.Errorf("moved %s after the change, want within TTL + 1 s", took.Round(time.Millisecond))
	}
	load.Stop(3 * time.Second)
	rep := parseReport(t, load.Output())
	assertNoFailures(t, "new IPv6 connections through the AAAA move", rep)
}

// TestL4DualStack: one pool of IPv4 and IPv6 addresses (be1 on IPv4, be2
// on IPv6, be3 on both) behind an IPv4 and an IPv6 tcp VIP at once: each
// VIP sends only to its own family's addresses, none fails.
func TestL4DualStack(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	lab.StartAgent(agentConfig{Backends: []string{"be1", "be2v6", "be3", "be3v6"}, L4v6: true})

	for _, c := range []struct {
		url  string
		want []string
	}{{vipURL, []string{"be1", "be3"}}, {vipURL6, []string{"be2", "be3"}}} {
		r := lab.Load("--url", c.url, "--mode", "newconn", "--conns", "2", "--count", "60", "--duration", "30s", "--timeout", "3s")
		assertNoFailures(t, "new connections to "+c.url, r)
		for be, n := range r.ByBackend {
			if n > 0 && !slices.Contains(c.want, be) {
				t.Errorf("%s: %d connections went to %s, want only %v: %v", c.url, n, be, c.want, r.ByBackend)
			}
		}
		for _, be := range c.want {
			if r.ByBackend[be] == 0 {
				t.Errorf("%s: no connection reached %s: %v", c.url, be, r.ByBackend)
			}
		}
	}
}
