package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
)

// poolBackends is pool web's addresses by ip:port, from `sluice status --json`.
func (a *Agent) poolBackends() (map[string]admin.Backend, error) {
	st, err := a.Status()
	if err != nil {
		return nil, err
	}
	m := map[string]admin.Backend{}
	for _, p := range st.Pools {
		if p.Name != "web" {
			continue
		}
		for _, b := range p.Backends {
			m[b.Address] = b
		}
	}
	return m, nil
}

// waitStates waits until every address in want has its state in pool web.
func (a *Agent) waitStates(t *testing.T, timeout time.Duration, want map[string]string) map[string]admin.Backend {
	t.Helper()
	var got map[string]admin.Backend
	waitFor(t, timeout, fmt.Sprintf("pool web states %v", want), func() error {
		var err error
		got, err = a.poolBackends()
		if err != nil {
			return err
		}
		for addr, state := range want {
			if got[addr].State != state {
				return fmt.Errorf("%s is %q (cause %q), want %q", addr, got[addr].State, got[addr].Cause, state)
			}
		}
		return nil
	})
	return got
}

// TestDNSChange is the first field report, fixed: the pool is a DNS name;
// when its answer changes, new connections go to the new addresses within
// about one TTL, connections on the old addresses go on until drain_timeout
// and are then reset (not left to time out), no restart or reload involved.
func TestDNSChange(t *testing.T) {
	parallel(t)
	const drainTimeout = 4 * time.Second
	lab := newLab(t)
	lab.StartBackends()
	dns := lab.StartDNS("backend.lab. 1 A 198.18.2.11\nbackend.lab. 1 A 198.18.2.12\n")
	agent := lab.StartAgent(agentConfig{DNSName: "backend.lab", DrainTimeout: drainTimeout})

	agent.waitStates(t, 10*time.Second, map[string]string{
		backendAddr["be1"]: "active",
		backendAddr["be2"]: "active",
	})
	r := lab.Load("--url", vipURL, "--mode", "newconn", "--count", "60", "--duration", "20s")
	assertNoFailures(t, "new connections before the DNS change", r)
	if r.ByBackend["be3"] != 0 || r.ByBackend["be1"] == 0 || r.ByBackend["be2"] == 0 {
		t.Errorf("before the change, want be1 and be2 (the DNS answer): %v", r.ByBackend)
	}

	// A connection opened before the change.
	events := make(chan string, 4096)
	long := lab.StartLoad("long", events, "--url", vipURL, "--mode", "keepalive",
		"--conns", "1", "--interval", "100ms", "--count", "400", "--duration", "40s",
		"--timeout", "3s", "--events")
	t.Cleanup(func() { long.Stop(3 * time.Second) })
	var pinned string
	for pinned == "" {
		ev, err := nextEvent(events, 10*time.Second)
		if err != nil {
			t.Fatalf("long-lived connection: %v\n%s", err, long.Log())
		}
		if ev.Event == "error" {
			t.Fatalf("long-lived connection failed before the change: %s %s", ev.Kind, ev.Error)
		}
		if ev.Event == "response" {
			pinned = ev.Backend
		}
	}
	t.Logf("long-lived connection on %s; DNS now answers be3 only", pinned)

	// The name moves (the ALB's addresses changed).
	changed := time.Now()
	dns.Set("backend.lab. 1 A 198.18.2.13\n")
	got := agent.waitStates(t, 10*time.Second, map[string]string{
		backendAddr["be3"]:  "active",
		backendAddr[pinned]: "draining",
	})
	followed := time.Since(changed)
	t.Logf("agent followed the change in %s", followed.Round(time.Millisecond))
	// The record's TTL is 1s: new connections must follow within TTL + 1s
	// (plus the status poll's own latency).
	if followed > 2*time.Second+500*time.Millisecond {
		t.Errorf("the agent took %s to follow a 1s TTL, want within TTL + 1s", followed)
	}
	deadline := time.Now().Add(drainTimeout)
	if d := got[backendAddr[pinned]].DrainDeadline; d != nil {
		deadline = *d
	} else {
		t.Errorf("%s draining without a drain deadline in status", backendAddr[pinned])
	}

	r = lab.Load("--url", vipURL, "--mode", "newconn", "--count", "60", "--duration", "20s")
	assertNoFailures(t, "new connections after the DNS change", r)
	if r.ByBackend["be3"] != r.OK {
		t.Errorf("after the change, want every new connection on be3: %v", r.ByBackend)
	}

	// The old connection keeps its backend, then is reset at the deadline.
	var resetAt time.Time
	for resetAt.IsZero() {
		ev, err := nextEvent(events, drainTimeout+10*time.Second)
		if err != nil {
			t.Fatalf("waiting for the old connection to end: %v", err)
		}
		switch ev.Event {
		case "response":
			if ev.Backend != pinned || ev.Conn != 1 {
				t.Fatalf("old connection: response from %s on connection %d, want %s on 1", ev.Backend, ev.Conn, pinned)
			}
		case "error":
			if ev.Kind != "reset" {
				t.Fatalf("old connection ended with %q (%s), want a reset", ev.Kind, ev.Error)
			}
			resetAt = ev.Time()
		}
	}
	t.Logf("old connection reset %s after the drain deadline", resetAt.Sub(deadline).Round(time.Millisecond))
	if resetAt.Before(deadline.Add(-500*time.Millisecond)) || resetAt.After(deadline.Add(1500*time.Millisecond)) {
		t.Errorf("old connection reset at %s, drain deadline %s: want within ~1s of it",
			resetAt.Format(time.StampMilli), deadline.Format(time.StampMilli))
	}
	for {
		ev, err := nextEvent(events, 5*time.Second)
		if err != nil {
			t.Fatalf("waiting for the reconnect: %v", err)
		}
		if ev.Event == "error" {
			t.Fatalf("reconnect failed: %s %s", ev.Kind, ev.Error)
		}
		if ev.Event == "response" {
			if ev.Backend != "be3" {
				t.Errorf("reconnect went to %s, want be3 (the current answer)", ev.Backend)
			}
			// The client's next request comes after its 100ms interval.
			if d := ev.Time().Sub(resetAt); d > time.Second+200*time.Millisecond {
				t.Errorf("the reconnect succeeded %s after the reset, want within 1s", d)
			}
			break
		}
	}

	// After its drain the old address is removed from the data path.
	agent.waitStates(t, 5*time.Second, map[string]string{backendAddr[pinned]: "removed"})

	// The status says where the addresses came from.
	st, err := agent.poolBackends()
	if err != nil {
		t.Fatal(err)
	}
	if src := st[backendAddr["be3"]].Source; !strings.Contains(src, "backend.lab") {
		t.Errorf("be3 source = %q, want the DNS name", src)
	}
}

// TestDNSForbiddenAnswers (issue 10 item 9): a name that answers one real
// backend plus loopback, the metadata address, 0.0.0.0, the L4 VIP, the
// HTTP service's own address and the lb's own address gets only the real
// backend into its pool: every new L4 connection and every HTTP request
// reaches be1, none fails, and status lists the others as refused.
func TestDNSForbiddenAnswers(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	lab.AddLocalVIP(httpVIP)
	forbidden := []string{"127.0.0.1", "169.254.169.254", "0.0.0.0", vip, httpVIP, "198.18.2.1"}
	zone := "backend.lab. 1 A 198.18.2.11\n"
	for _, ip := range forbidden {
		zone += "backend.lab. 1 A " + ip + "\n"
	}
	lab.StartDNS(zone)
	agent := lab.StartAgent(agentConfig{DNSName: "backend.lab", HTTP: true})
	agent.waitStates(t, 10*time.Second, map[string]string{backendAddr["be1"]: "active"})

	var st admin.Status
	waitFor(t, 10*time.Second, "every forbidden answer listed as refused", func() error {
		var err error
		if st, err = agent.Status(); err != nil {
			return err
		}
		refused := map[string]string{}
		for _, p := range st.Pools {
			for _, n := range p.NotServed {
				refused[n.Address] = n.Reason
			}
		}
		for _, ip := range forbidden {
			if r := refused[ip+":80"]; !strings.HasPrefix(r, "refused (") {
				return fmt.Errorf("%s:80 not listed as refused (%q); not served: %v", ip, r, refused)
			}
		}
		return nil
	})
	if bs, err := agent.poolBackends(); err != nil {
		t.Fatal(err)
	} else if len(bs) != 1 {
		t.Fatalf("pool web has %d addresses, want be1 only: %v", len(bs), bs)
	}

	r := lab.Load("--url", vipURL, "--mode", "newconn", "--count", "40", "--duration", "20s")
	assertNoFailures(t, "L4 new connections", r)
	if r.ByBackend["be1"] != r.OK {
		t.Errorf("L4: want every connection on be1: %v", r.ByBackend)
	}
	waitFor(t, 10*time.Second, "the L7 listener", func() error {
		_, err := lab.Run("client", 3*time.Second, "curl", "-sf", "--max-time", "2", "-o", "/dev/null", httpURL)
		return err
	})
	r = lab.Load("--url", httpURL, "--mode", "newconn", "--count", "40", "--duration", "20s")
	assertNoFailures(t, "HTTP requests", r)
	if r.ByBackend["be1"] != r.OK {
		t.Errorf("HTTP: want every request answered by be1: %v", r.ByBackend)
	}
}

// With no dns.servers, the agent asks the name servers of resolv.conf and
// follows a change of them (DHCP, a VPN, an operator moving to a new
// resolver): the old server going silent must not freeze the pools on
// their last answer. The agent runs in a mount namespace of its own with a
// lab resolv.conf bound over /etc/resolv.conf; the old server is stopped
// once the file names the new one, which answers another address.
func TestDNSFollowsResolvConf(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	old := lab.StartDNS("backend.lab. 1 A 198.18.2.11\n")
	lab.MustRun("dns", 5*time.Second, "ip", "addr", "add", "198.18.2.54/24", "dev", "eth0")
	records := filepath.Join(t.TempDir(), "new.zone")
	if err := os.WriteFile(records, []byte("backend.lab. 1 A 198.18.2.12\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	lab.Start("dns-new", "dns", env.dnsserver, "--listen", "198.18.2.54:53", "--records", records)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 198.18.2.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wrapper := agentWrapper(t,
		`[ -z "$SLUICE_E2E_MNTNS" ] && SLUICE_E2E_MNTNS=1 exec unshare -m --propagation private "$0" "$@"`,
		"mount --bind "+resolv+" /etc/resolv.conf || exit 1")
	agent := lab.StartAgentBinary(agentConfig{DNSName: "backend.lab", DNSServers: " "}, wrapper)
	agent.waitStates(t, 10*time.Second, map[string]string{backendAddr["be1"]: "active"})

	// The file is rewritten in place (a bind mount follows the file, not
	// its name), then the old server stops answering.
	if err := os.WriteFile(resolv, []byte("nameserver 198.18.2.54\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old.proc.Stop(3 * time.Second)
	// be1 drains (and, without flows, is removed at once).
	waitFor(t, 15*time.Second, "the new server's answer", func() error {
		be2, err := agent.BackendState(backendAddr["be2"])
		if err != nil {
			return err
		}
		be1, _ := agent.BackendState(backendAddr["be1"])
		if be2 != "active" || be1 == "active" {
			return fmt.Errorf("be1 %q, be2 %q; want be2 active, be1 no longer", be1, be2)
		}
		return nil
	})
	if log := agent.proc.Log(); !strings.Contains(log, "dns servers changed in resolv.conf") {
		t.Errorf("no word of the new servers in the agent's log:\n%s", log)
	}
}

// An address the host gains while the agent runs (DHCP, keepalived, an
// operator) is no longer a backend within seconds: a DNS name answering
// it had it admitted before; now it leaves the pool and status lists it
// as refused, as it would have been from the start.
func TestHostAddressGainedWhileRunning(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	lab.StartDNS("backend.lab. 1 A 198.18.2.11\nbackend.lab. 1 A 198.18.2.12\n")
	agent := lab.StartAgent(agentConfig{DNSName: "backend.lab"})
	agent.waitStates(t, 10*time.Second, map[string]string{
		backendAddr["be1"]: "active",
		backendAddr["be2"]: "active",
	})
	lab.MustRun("lb", 5*time.Second, "ip", "addr", "add", "198.18.2.12/32", "dev", "lo")
	waitFor(t, 10*time.Second, "198.18.2.12 refused as an address of this host", func() error {
		st, err := agent.Status()
		if err != nil {
			return err
		}
		for _, p := range st.Pools {
			for _, n := range p.NotServed {
				if n.Address == backendAddr["be2"] && strings.Contains(n.Reason, "an address of this host") {
					return nil
				}
			}
		}
		return fmt.Errorf("not listed as refused yet")
	})
	if st, err := agent.BackendState(backendAddr["be2"]); err == nil && st == "active" {
		t.Errorf("%s, an address of this host, is still an active backend", backendAddr["be2"])
	}
}
