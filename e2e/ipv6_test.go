package e2e

import (
	"strings"
	"testing"
	"time"
)

// The L7 stage on IPv6 (issue 12): listeners on IPv6 addresses, IPv6
// backends, AAAA answers followed, dual-stack pools, health checks over
// IPv6. The lab's IPv6 addresses mirror its IPv4 ones (docs/lab.md).

// url6 is web6-http's URL; vipURL6 web6-l4's (agentConfig.L4v6).
var (
	url6    = "http://[" + httpVIP6 + "]/"
	vipURL6 = "http://[" + vip6 + "]/"
)

// client6 is the client's IPv6 address, as the backends see it.
const client6 = "2001:2::2"

// startL7v6 starts the backends and the agent with c (HTTP6 set) and waits
// for the IPv6 listener.
func startL7v6(t *testing.T, lab *Lab, c agentConfig) *Agent {
	t.Helper()
	lab.AddLocalVIP(httpVIP6)
	c.HTTP6 = true
	agent := lab.StartAgent(c)
	waitFor(t, 10*time.Second, "the IPv6 L7 listener", func() error {
		_, err := lab.Run("client", 3*time.Second, "curl", "-g", "-sf", "--max-time", "2", "-o", "/dev/null", url6)
		return err
	})
	return agent
}

// TestL7IPv6: an http service on an IPv6 listener over IPv6 backends:
// requests spread over the three, none fails; the backend reads the
// client's IPv6 address in X-Forwarded-For, X-Real-IP and Forwarded
// (quoted, bracketed); the access log and status show IPv6 addresses.
func TestL7IPv6(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	agent := startL7v6(t, lab, agentConfig{Backends: []string{"be1v6", "be2v6", "be3v6"}})

	rep := lab.Load("--url", url6, "--mode", "newconn", "--count", "90", "--duration", "20s", "--timeout", "3s")
	assertNoFailures(t, "new connections to the IPv6 listener", rep)
	for _, be := range []string{"be1", "be2", "be3"} {
		if rep.ByBackend[be] == 0 {
			t.Errorf("%s got no request: %v", be, rep.ByBackend)
		}
	}

	rid := newRID("v6")
	if r := lab.curl("GET", url6+"?rid="+rid, "-g", "-H", "X-Forwarded-For: 2001:db8::7"); r.Code != 200 {
		t.Fatalf("request: %d %s", r.Code, r.Body)
	}
	for _, want := range []string{
		"X-Forwarded-For: 2001:db8::7, " + client6 + "\r\n",
		"X-Real-IP: " + client6 + "\r\n",
		`Forwarded: for="[` + client6 + `]";proto=http;host="[` + httpVIP6 + `]"` + "\r\n",
	} {
		seen := 0
		for _, be := range []string{"be1", "be2", "be3"} {
			seen += lab.rawSeen(be, want)
		}
		if seen == 0 {
			t.Errorf("no backend read %q", want)
		}
	}
	al := agent.accessFor(t, rid)
	if !strings.HasPrefix(al.Client, "["+client6+"]:") || al.Service != "web6-http" || len(al.Try) != 1 ||
		!strings.HasPrefix(al.Try[0].Backend, "[2001:2:0:2::1") {
		t.Errorf("access log line %+v", al)
	}
	st := agent.waitStates(t, 5*time.Second, map[string]string{
		backendAddr["be1v6"]: "active", backendAddr["be2v6"]: "active", backendAddr["be3v6"]: "active"})
	t.Logf("status: %d addresses in pool web", len(st))
	if _, scrape := lab.scrape(); !strings.Contains(scrape, `address="[2001:2:0:2::11]:80"`) {
		t.Errorf("metrics name no IPv6 backend address")
	}
}

// TestL7IPv6DNSMove is field report 1 over IPv6: the pool is a DNS name
// answering AAAA (TTL 1 s), asked of a resolver over IPv6; when the AAAA
// record moves, one client keep-alive connection through the IPv6 listener
// follows within TTL + 1 s, no request fails, none goes back to the old
// address.
func TestL7IPv6DNSMove(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	dns := lab.StartDNS("backend.lab. 1 AAAA 2001:2:0:2::11\n")
	dns.ListenAlso("[2001:2:0:2::53]:53")
	agent := startL7v6(t, lab, agentConfig{DNSName: "backend.lab", DrainTimeout: 10 * time.Second,
		DNSServers: `"[2001:2:0:2::53]:53"`})
	agent.waitStates(t, 10*time.Second, map[string]string{backendAddr["be1v6"]: "active"})

	events := make(chan string, 4096)
	load := lab.StartLoad("keepalive6", events, "--url", url6, "--mode", "keepalive",
		"--conns", "1", "--interval", "50ms", "--count", "600", "--duration", "30s",
		"--timeout", "3s", "--events")
	t.Cleanup(func() { load.Stop(3 * time.Second) })
	// The bound is TTL + 1 s; the next request after it (50 ms load) may
	// come a little later on a loaded machine.
	const ttl = time.Second
	took := followMove(t, events, "be1", "be2", ttl+time.Second+500*time.Millisecond,
		func() { dns.Set("backend.lab. 1 AAAA 2001:2:0:2::12\n") })
	t.Logf("requests moved to be2 %s after the AAAA record moved", took.Round(time.Millisecond))
	if took > ttl+time.Second {
		t.Errorf("moved %s after the change, want within TTL + 1 s", took.Round(time.Millisecond))
	}
	stopOneConnection(t, load, "keep-alive load through the AAAA move")
	got := agent.waitStates(t, 15*time.Second, map[string]string{backendAddr["be2v6"]: "active"})
	if s := got[backendAddr["be1v6"]].State; s == "active" {
		t.Errorf("old address %s is still active", backendAddr["be1v6"])
	}
}

// TestDualStackPool: one pool of IPv4 and IPv6 addresses (be1 on IPv4, be2
// on IPv6, be3 on both) serves an IPv4 and an IPv6 http service at once,
// and the IPv4 L4 service: each sends only to its own family's addresses.
func TestDualStackPool(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	lab.AddLocalVIP(httpVIP)
	startL7v6(t, lab, agentConfig{HTTP: true, Backends: []string{"be1", "be3", "be2v6", "be3v6"}})
	waitFor(t, 10*time.Second, "the IPv4 L7 listener", func() error {
		_, err := lab.Run("client", 3*time.Second, "curl", "-sf", "--max-time", "2", "-o", "/dev/null", httpURL)
		return err
	})

	load4 := lab.StartLoad("load4", nil, "--url", httpURL, "--mode", "newconn", "--count", "120", "--duration", "30s", "--timeout", "3s")
	rep6 := lab.Load("--url", url6, "--mode", "newconn", "--count", "120", "--duration", "30s", "--timeout", "3s")
	if err := load4.Wait(40 * time.Second); err != nil {
		t.Fatalf("IPv4 load: %v\n%s", err, load4.Log())
	}
	rep4 := parseReport(t, load4.Output())
	l4 := lab.Load("--url", vipURL, "--mode", "newconn", "--count", "60", "--duration", "30s", "--timeout", "3s")
	for _, c := range []struct {
		what       string
		rep        Report
		want, none []string
	}{
		{"IPv4 http service", rep4, []string{"be1", "be3"}, []string{"be2"}},
		{"IPv6 http service", rep6, []string{"be2", "be3"}, []string{"be1"}},
		{"IPv4 L4 service", l4, []string{"be1", "be3"}, []string{"be2"}},
	} {
		assertNoFailures(t, c.what, c.rep)
		for _, be := range c.want {
			if c.rep.ByBackend[be] == 0 {
				t.Errorf("%s: %s got nothing: %v", c.what, be, c.rep.ByBackend)
			}
		}
		for _, be := range c.none {
			if c.rep.ByBackend[be] != 0 {
				t.Errorf("%s: %s (not of its family) got %d: %v", c.what, be, c.rep.ByBackend[be], c.rep.ByBackend)
			}
		}
	}
}

// TestHealthCheckIPv6: active health checks over IPv6 eject a failing IPv6
// backend (the IPv6 service stops sending to it, no request fails) and
// bring it back after rise good checks.
func TestHealthCheckIPv6(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	agent := startL7v6(t, lab, agentConfig{Health: true, Ejection: noEjection, Backends: []string{"be1v6", "be2v6", "be3v6"}})
	all := map[string]string{backendAddr["be1v6"]: "active", backendAddr["be2v6"]: "active", backendAddr["be3v6"]: "active"}
	agent.waitStates(t, 10*time.Second, all)

	lab.setFail("be2", 500)
	got := agent.waitStates(t, 5*time.Second, map[string]string{backendAddr["be2v6"]: "ejected"})
	t.Logf("be2 failing its checks over IPv6: %s (%s)", got[backendAddr["be2v6"]].State, got[backendAddr["be2v6"]].Cause)
	rep := lab.Load("--url", url6, "--mode", "newconn", "--count", "60", "--duration", "20s", "--timeout", "3s")
	assertNoFailures(t, "while be2 is ejected", rep)
	if rep.ByBackend["be2"] != 0 {
		t.Errorf("be2 fails its health checks but got %d requests: %v", rep.ByBackend["be2"], rep.ByBackend)
	}

	lab.setFail("be2", 0)
	agent.waitStates(t, 10*time.Second, all)
	rep = lab.Load("--url", url6, "--mode", "newconn", "--count", "90", "--duration", "20s", "--timeout", "3s")
	assertNoFailures(t, "after be2 recovered", rep)
	if rep.ByBackend["be2"] == 0 {
		t.Errorf("be2 passes its checks again but gets no request: %v", rep.ByBackend)
	}
}
