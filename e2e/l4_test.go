package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
)

var vipURL = "http://" + vip + "/"

// assertNoFailures fails the test when the report has any failed request.
func assertNoFailures(t *testing.T, what string, r Report) {
	t.Helper()
	if r.Failures != 0 || r.OK != r.Requests || r.Requests == 0 {
		t.Errorf("%s: %d requests, %d ok, %d failed: errors %v, samples %v",
			what, r.Requests, r.OK, r.Failures, r.Errors, r.Samples)
	}
}

// TestSpread: new connections to the VIP spread over be1..be3, none fails.
func TestSpread(t *testing.T) {
	lab := newLab(t)
	lab.StartBackends()
	lab.StartAgent(agentConfig{})

	const n = 300
	r := lab.Load("--url", vipURL, "--mode", "newconn", "--conns", "4",
		"--count", fmt.Sprint(n), "--duration", "60s")
	assertNoFailures(t, "300 new connections", r)
	for _, be := range []string{"be1", "be2", "be3"} {
		if got := r.ByBackend[be]; got < n*15/100 {
			t.Errorf("%s got %d of %d connections, want >= 15%%: %v", be, got, n, r.ByBackend)
		}
	}
	if len(r.ByBackend) != 3 {
		t.Errorf("answers came from %v, want exactly be1..be3", r.ByBackend)
	}
	t.Logf("spread over backends: %v, latency %v", r.ByBackend, r.LatencyMS)
}

// TestUDPSpread: new UDP flows (one socket each) to a UDP VIP spread over
// be1..be3 and every datagram is answered through the reverse NAT.
func TestUDPSpread(t *testing.T) {
	lab := newLab(t)
	lab.StartBackends()
	lab.StartAgent(agentConfig{UDP: true})

	const n = 300
	r := lab.Load("--url", "udp://"+vip+":53", "--mode", "udp", "--conns", "4",
		"--count", fmt.Sprint(n), "--duration", "60s", "--timeout", "1s")
	assertNoFailures(t, "300 UDP flows", r)
	for _, be := range []string{"be1", "be2", "be3"} {
		if got := r.ByBackend[be]; got < n*15/100 {
			t.Errorf("%s got %d of %d UDP flows, want >= 15%%: %v", be, got, n, r.ByBackend)
		}
	}
	t.Logf("UDP spread over backends: %v, latency %v", r.ByBackend, r.LatencyMS)

	// The TCP service next to it still works.
	r = lab.Load("--url", vipURL, "--mode", "newconn", "--count", "30", "--duration", "20s")
	assertNoFailures(t, "TCP next to UDP", r)
}

// TestDrain: a long-lived connection stays on its backend while that backend
// drains and new connections avoid it; after drain_timeout the pinned flow
// gets an RST (not a timeout) and a reconnect lands elsewhere.
func TestDrain(t *testing.T) {
	parallel(t)
	const drainTimeout = 3 * time.Second
	lab := newLab(t)
	lab.StartBackends()
	agent := lab.StartAgent(agentConfig{DrainTimeout: drainTimeout})

	// One keep-alive connection, a request every 100ms (so the client sends
	// a packet soon after the flow's backend is removed).
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
		switch ev.Event {
		case "response":
			pinned = ev.Backend
		case "error":
			t.Fatalf("long-lived connection failed before the drain: %s %s", ev.Kind, ev.Error)
		}
	}
	addr, ok := backendAddr[pinned]
	if !ok {
		t.Fatalf("long-lived connection answered by unknown backend %q", pinned)
	}
	t.Logf("long-lived connection pinned to %s (%s); draining it", pinned, addr)

	if out, err := agent.CLI("drain", "web", addr); err != nil {
		t.Fatalf("drain: %v", err)
	} else {
		t.Logf("sluice drain: %s", strings.TrimSpace(out))
	}
	drainedAt := time.Now()
	deadline := drainedAt.Add(drainTimeout)
	if bs, err := agent.poolBackends(); err != nil {
		t.Errorf("status after drain: %v", err)
	} else if b := bs[addr]; b.State != "draining" {
		t.Errorf("%s state after drain = %q, want draining", addr, b.State)
	} else if b.DrainDeadline == nil {
		t.Errorf("%s draining without a drain deadline in status", addr)
	} else {
		// The agent's own deadline: the CLI call may have taken a while.
		deadline = *b.DrainDeadline
	}

	// New connections avoid the draining backend.
	r := lab.Load("--url", vipURL, "--mode", "newconn", "--conns", "2", "--count", "60", "--duration", "20s")
	assertNoFailures(t, "new connections while draining", r)
	if r.ByBackend[pinned] != 0 {
		t.Errorf("draining %s still got %d of %d new connections: %v", pinned, r.ByBackend[pinned], r.OK, r.ByBackend)
	}

	// The pinned connection keeps working on its backend until the deadline,
	// then gets reset.
	var afterDrain int
	var resetAt time.Time
	for resetAt.IsZero() {
		ev, err := nextEvent(events, drainTimeout+10*time.Second)
		if err != nil {
			t.Fatalf("waiting for the pinned flow to end: %v (responses after drain: %d)", err, afterDrain)
		}
		switch ev.Event {
		case "response":
			if ev.Conn != 1 {
				t.Fatalf("unexpected new connection %d before the pinned one failed", ev.Conn)
			}
			if ev.Backend != pinned {
				t.Fatalf("pinned connection answered by %s, want %s", ev.Backend, pinned)
			}
			if ev.Time().After(drainedAt) {
				afterDrain++
			}
		case "error":
			if ev.Kind != "reset" {
				t.Fatalf("pinned connection ended with %q (%s), want a reset", ev.Kind, ev.Error)
			}
			resetAt = ev.Time()
		}
	}
	t.Logf("pinned flow reset %s after the drain (drain_timeout %s); %d responses while draining",
		resetAt.Sub(drainedAt).Round(time.Millisecond), drainTimeout, afterDrain)
	if afterDrain < 5 {
		t.Errorf("only %d responses on the pinned connection while draining, want it to keep working", afterDrain)
	}
	if early := deadline.Add(-500 * time.Millisecond); resetAt.Before(early) {
		t.Errorf("pinned flow reset %s before the drain deadline", deadline.Sub(resetAt))
	}
	if late := deadline.Add(1500 * time.Millisecond); resetAt.After(late) {
		t.Errorf("pinned flow reset %s after the drain deadline, want within ~1s", resetAt.Sub(deadline))
	}

	// The client reconnects at once, to another backend.
	for {
		ev, err := nextEvent(events, 5*time.Second)
		if err != nil {
			t.Fatalf("waiting for the reconnect: %v", err)
		}
		if ev.Event == "error" {
			t.Fatalf("reconnect failed: %s %s", ev.Kind, ev.Error)
		}
		if ev.Event == "response" {
			if ev.Conn != 2 {
				t.Fatalf("response on connection %d, want the reconnect (2)", ev.Conn)
			}
			if ev.Backend == pinned {
				t.Fatalf("reconnect landed on the removed backend %s", pinned)
			}
			t.Logf("reconnected to %s", ev.Backend)
			break
		}
	}
	long.Stop(3 * time.Second)
	rep := parseReport(t, long.Output())
	if rep.Failures != 1 || rep.Errors["reset"] != 1 {
		t.Errorf("long-lived load: want exactly one failure (the reset), got %d: %v %v", rep.Failures, rep.Errors, rep.Samples)
	}
	if st, err := agent.Status(); err != nil {
		t.Errorf("status after the drain deadline: %v", err)
	} else {
		for _, p := range st.Pools {
			for _, b := range p.Backends {
				if b.Address == addr {
					t.Logf("%s after the drain deadline: %s (%s)", addr, b.State, b.Cause)
				}
			}
		}
		for _, svc := range st.Services {
			t.Logf("service %s: %d RSTs counted", svc.Name, svc.RSTs)
		}
	}
	metrics, _ := lab.scrape()
	if got := metrics[`sluice_service_rsts_total{reason="removed_backend",service="web-l4"}`]; got < 1 {
		t.Errorf(`sluice_service_rsts_total{reason="removed_backend"} = %v, want >= 1`, got)
	}
}

// keepAliveConns is how many connections startKeepAlive keeps open.
const keepAliveConns = 8

// startKeepAlive starts keepAliveConns keep-alive connections to the VIP,
// a request on each every 20 ms for up to a minute, and lets them settle.
func startKeepAlive(t *testing.T, lab *Lab) *Proc {
	t.Helper()
	load := lab.StartLoad("keepalive", nil, "--url", vipURL, "--mode", "keepalive",
		"--conns", fmt.Sprint(keepAliveConns), "--interval", "20ms", "--count", "200000",
		"--duration", "60s", "--timeout", "2s")
	t.Cleanup(func() { load.Stop(3 * time.Second) })
	time.Sleep(time.Second)
	return load
}

// assertKeepAliveSurvived stops startKeepAlive's load and fails the test
// unless every request succeeded on the connections it first dialled
// (what, in its message, they had to survive).
func assertKeepAliveSurvived(t *testing.T, load *Proc, what string) Report {
	t.Helper()
	if !load.Running() {
		t.Fatalf("keep-alive load ended early:\n%s", load.Log())
	}
	load.Stop(5 * time.Second)
	rep := parseReport(t, load.Output())
	assertNoFailures(t, "keep-alive load across "+what, rep)
	if rep.Dials != keepAliveConns {
		t.Errorf("keep-alive load dialled %d connections, want %d (established ones must survive %s)", rep.Dials, keepAliveConns, what)
	}
	return rep
}

// TestAgentRestart: the data path keeps forwarding while the agent is
// stopped (SIGTERM) or killed (SIGKILL) and after it restarts and adopts the
// pinned state: no established connection breaks, no request fails.
func TestAgentRestart(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	agent := lab.StartAgent(agentConfig{})

	load := startKeepAlive(t, lab)

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Logf("stopping the agent with %s", sig)
		if err := agent.proc.Signal(sig); err != nil {
			t.Fatal(err)
		}
		err := agent.proc.Wait(10 * time.Second)
		if agent.proc.Running() {
			t.Fatalf("agent still running 10s after %s", sig)
		}
		if sig == syscall.SIGTERM && err != nil {
			t.Errorf("agent exit after SIGTERM: %v, want a clean exit", err)
		}
		// Agent down: new connections and the keep-alive ones still work.
		r := lab.Load("--url", vipURL, "--mode", "newconn", "--count", "50", "--duration", "20s")
		assertNoFailures(t, "new connections while the agent is down after "+sig.String(), r)
		if len(r.ByBackend) < 2 {
			t.Errorf("while the agent is down after %s new connections went only to %v", sig, r.ByBackend)
		}
		time.Sleep(2 * time.Second)

		agent.Start()
		r = lab.Load("--url", vipURL, "--mode", "newconn", "--count", "50", "--duration", "20s")
		assertNoFailures(t, "new connections after the restart following "+sig.String(), r)
		if len(r.ByBackend) < 2 {
			t.Errorf("after the restart following %s new connections went only to %v", sig, r.ByBackend)
		}
		time.Sleep(time.Second)
	}
	rep := assertKeepAliveSurvived(t, load, "two restarts")
	t.Logf("keep-alive load: %d requests, %d dials, by backend %v, latency %v", rep.Requests, rep.Dials, rep.ByBackend, rep.LatencyMS)

	// The restarted agent sees the flows it did not create.
	out, err := agent.CLI("conntrack", "--json")
	if err != nil {
		t.Errorf("conntrack after restart: %v", err)
	} else if !strings.Contains(out, vip) {
		t.Errorf("conntrack after restart lists no flow to %s:\n%s", vip, out)
	}
}

// TestPinnedMaps: the maps and links are pinned, and bpftool reads them with BTF.
func TestPinnedMaps(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	agent := lab.StartAgent(agentConfig{})
	r := lab.Load("--url", vipURL, "--mode", "keepalive", "--count", "5", "--duration", "10s")
	assertNoFailures(t, "traffic before reading the maps", r)

	for _, m := range []string{"services", "backends", "maglev_tables", "conntrack", "service_stats", "backend_stats", "global_stats"} {
		if _, err := os.Stat(filepath.Join(agent.PinPath, m)); err != nil {
			t.Errorf("map %s not pinned: %v", m, err)
		}
	}
	for _, ifname := range []string{"eth0", "eth1"} {
		if _, err := os.Stat(filepath.Join(agent.PinPath, "links", "xdp_"+ifname)); err != nil {
			t.Errorf("xdp link of %s not pinned: %v", ifname, err)
		}
	}

	// Native mode on both links (generic XDP would hide bugs).
	for _, ifname := range []string{"eth0", "eth1"} {
		out := lab.MustRun("lb", 5*time.Second, "ip", "-d", "link", "show", "dev", ifname)
		if !strings.Contains(out, "prog/xdp ") || strings.Contains(out, "xdpgeneric") {
			t.Errorf("lb %s: want a native XDP program attached:\n%s", ifname, out)
		}
	}

	out, err := bpftool("map", "show", "pinned", filepath.Join(agent.PinPath, "conntrack"))
	if err != nil {
		t.Fatalf("bpftool map show conntrack: %v", err)
	}
	if !strings.Contains(out, "lru_hash") || !strings.Contains(out, "btf_id") {
		t.Errorf("bpftool map show conntrack: want an lru_hash with BTF, got:\n%s", out)
	}

	for _, m := range []string{"services", "conntrack"} {
		out, err := bpftool("-j", "map", "dump", "pinned", filepath.Join(agent.PinPath, m))
		if err != nil {
			t.Fatalf("bpftool map dump %s: %v", m, err)
		}
		var entries []struct {
			Formatted *struct {
				Key   map[string]any `json:"key"`
				Value any            `json:"value"`
			} `json:"formatted"`
		}
		if err := json.Unmarshal([]byte(out), &entries); err != nil {
			t.Fatalf("bpftool map dump %s: not JSON: %v\n%s", m, err, out)
		}
		if len(entries) == 0 {
			t.Errorf("bpftool map dump %s: no entries", m)
			continue
		}
		f := entries[0].Formatted
		if f == nil || len(f.Key) == 0 || f.Value == nil {
			t.Errorf("bpftool map dump %s: entries without BTF field names:\n%s", m, out)
			continue
		}
		t.Logf("%s: %d entries, first key %v", m, len(entries), f.Key)
	}
	if out, err := bpftool("map", "dump", "pinned", filepath.Join(agent.PinPath, "services")); err == nil {
		if !strings.Contains(out, "vip") {
			t.Errorf("bpftool map dump services: no field names:\n%s", out)
		}
	}
}

func bpftool(args ...string) (string, error) {
	out, err := runCmd(30*time.Second, "bpftool", args...)
	if err != nil {
		return out, fmt.Errorf("bpftool %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

// TestNonVIPUntouched: traffic that is not to a service passes the data path
// unchanged: the client reaches the lb's own address and a backend directly.
func TestNonVIPUntouched(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	lab.Start("lb-http", "lb", env.backend, "--listen", "198.18.0.1:8080", "--name", "lb")
	lab.StartAgent(agentConfig{})
	waitFor(t, 5*time.Second, "lb's own HTTP server", func() error {
		_, err := lab.Run("lb", 2*time.Second, "curl", "-sf", "-o", "/dev/null", "--max-time", "1", "http://198.18.0.1:8080/healthz")
		return err
	})

	for _, tc := range []struct {
		url, want string
	}{
		{"http://198.18.0.1:8080/", "lb"}, // the lb's own address
		{"http://198.18.2.11:80/", "be1"}, // a backend, routed through the lb
		{"http://198.18.2.13:80/", "be3"},
	} {
		for _, mode := range []string{"keepalive", "newconn"} {
			r := lab.Load("--url", tc.url, "--mode", mode, "--count", "50", "--duration", "20s")
			assertNoFailures(t, mode+" to "+tc.url, r)
			if r.ByBackend[tc.want] != r.OK {
				t.Errorf("%s %s: answered by %v, want only %s", mode, tc.url, r.ByBackend, tc.want)
			}
		}
	}

	// A VIP port that is no service is not forwarded to a backend.
	r := lab.Load("--url", "http://"+vip+":81/", "--mode", "newconn", "--count", "3", "--duration", "10s", "--timeout", "1s")
	if r.OK != 0 {
		t.Errorf("%s:81 (no service) answered by %v, want no answer", vip, r.ByBackend)
	}
}

// TestNoBackendRST: a service whose every backend is drained answers a new
// connection with a TCP RST at once (the client sees "connection refused"),
// not with silence and a timeout.
func TestNoBackendRST(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	agent := lab.StartAgent(agentConfig{DrainTimeout: 2 * time.Second})
	r := lab.Load("--url", vipURL, "--mode", "newconn", "--count", "10", "--duration", "10s")
	assertNoFailures(t, "before draining", r)

	for _, be := range []string{"be1", "be2", "be3"} {
		if _, err := agent.CLI("drain", "web", backendAddr[be]); err != nil {
			t.Fatalf("drain %s: %v", be, err)
		}
	}
	r = lab.Load("--url", vipURL, "--mode", "newconn", "--count", "5", "--duration", "20s", "--timeout", "2s")
	if r.OK != 0 {
		t.Errorf("with every backend drained, %d of %d connections were answered by %v", r.OK, r.Requests, r.ByBackend)
	}
	if r.Errors["refused"] != r.Requests {
		t.Errorf("with every backend drained: errors %v, want every connection refused (RST), not timed out: %v", r.Errors, r.Samples)
	}
	metrics, _ := lab.scrape()
	if got := metrics[`sluice_service_rsts_total{reason="no_backend",service="web-l4"}`]; got < float64(r.Requests) {
		t.Errorf(`sluice_service_rsts_total{reason="no_backend"} = %v, want >= %d`, got, r.Requests)
	}

	if _, err := agent.CLI("undrain", "web", backendAddr["be2"]); err != nil {
		t.Fatalf("undrain be2: %v", err)
	}
	waitFor(t, 10*time.Second, "be2 active again", func() error {
		state, err := agent.BackendState(backendAddr["be2"])
		if err != nil {
			return err
		}
		if state != "active" {
			return fmt.Errorf("state %q", state)
		}
		return nil
	})
	r = lab.Load("--url", vipURL, "--mode", "newconn", "--count", "20", "--duration", "10s")
	assertNoFailures(t, "after undraining be2", r)
	if r.ByBackend["be2"] != r.OK {
		t.Errorf("after undraining only be2: answered by %v", r.ByBackend)
	}
}

// TestDrainPortReuse: a new connection that reuses a client port whose
// previous flow went to a now-draining backend picks again: a SYN never
// follows a closing conntrack entry to a backend that takes no new flows.
func TestDrainPortReuse(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	agent := lab.StartAgent(agentConfig{DrainTimeout: 30 * time.Second})
	// Ten client ports: every one of them is reused many times.
	lab.MustRun("client", 5*time.Second, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40009")

	// --await-close: the server closes first, so the client holds no TIME_WAIT
	// and reuses its ports at once.
	r := lab.Load("--url", vipURL, "--mode", "newconn", "--await-close", "--count", "40", "--duration", "20s")
	assertNoFailures(t, "before the drain", r)
	if r.ByBackend["be1"] == 0 {
		t.Fatalf("no connection from the ten ports went to be1 before the drain (%v): the test proves nothing", r.ByBackend)
	}
	if _, err := agent.CLI("drain", "web", backendAddr["be1"]); err != nil {
		t.Fatalf("drain be1: %v", err)
	}
	r = lab.Load("--url", vipURL, "--mode", "newconn", "--await-close", "--count", "60", "--duration", "20s")
	assertNoFailures(t, "reused ports after the drain", r)
	if r.ByBackend["be1"] != 0 {
		t.Errorf("draining be1 got %d of %d connections from reused client ports: %v", r.ByBackend["be1"], r.OK, r.ByBackend)
	}
}

// TestReload: `sluice reload` applies a new config without dropping a
// connection (a removed backend drains); an invalid file is refused and the
// running config stays.
func TestReload(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	agent := lab.StartAgent(agentConfig{})

	const conns = 6
	load := lab.StartLoad("keepalive", nil, "--url", vipURL, "--mode", "keepalive",
		"--conns", fmt.Sprint(conns), "--interval", "20ms", "--count", "100000",
		"--duration", "40s", "--timeout", "2s")
	t.Cleanup(func() { load.Stop(3 * time.Second) })
	time.Sleep(500 * time.Millisecond)

	// be3 leaves the config: it drains, new connections avoid it.
	agent.WriteConfig(agentConfig{Backends: []string{"be1", "be2"}})
	if _, err := agent.CLI("reload"); err != nil {
		t.Fatalf("reload of a valid config: %v", err)
	}
	if state, err := agent.BackendState(backendAddr["be3"]); err != nil {
		t.Fatalf("status after reload: %v", err)
	} else if state != "draining" && state != "removed" {
		t.Errorf("be3 after it left the config: state %q, want draining (or removed)", state)
	}
	r := lab.Load("--url", vipURL, "--mode", "newconn", "--count", "60", "--duration", "20s")
	assertNoFailures(t, "new connections after the reload", r)
	if r.ByBackend["be3"] != 0 {
		t.Errorf("be3 left the config but got %d new connections: %v", r.ByBackend["be3"], r.ByBackend)
	}

	// An invalid file is refused (non-zero exit) and changes nothing.
	agent.WriteRawConfig("interfaces: [eth0, eth1]\npools:\n  - name: web\n    bogus_key: 1\n")
	if out, err := agent.CLI("reload"); err == nil {
		t.Errorf("reload of an invalid config succeeded: %s", out)
	}
	r = lab.Load("--url", vipURL, "--mode", "newconn", "--count", "60", "--duration", "20s")
	assertNoFailures(t, "new connections after a refused reload", r)
	if r.ByBackend["be3"] != 0 || r.ByBackend["be1"] == 0 || r.ByBackend["be2"] == 0 {
		t.Errorf("after a refused reload, want be1 and be2 only: %v", r.ByBackend)
	}

	// SIGHUP does what reload does: be3 comes back.
	agent.WriteConfig(agentConfig{})
	if err := agent.proc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "be3 active after SIGHUP", func() error {
		state, err := agent.BackendState(backendAddr["be3"])
		if err != nil {
			return err
		}
		if state != "active" {
			return fmt.Errorf("state %q", state)
		}
		return nil
	})
	r = lab.Load("--url", vipURL, "--mode", "newconn", "--count", "90", "--duration", "20s")
	assertNoFailures(t, "new connections after SIGHUP", r)
	if r.ByBackend["be3"] == 0 {
		t.Errorf("be3 is back in the config but got no new connection: %v", r.ByBackend)
	}

	load.Stop(5 * time.Second)
	rep := parseReport(t, load.Output())
	assertNoFailures(t, "keep-alive load across three reloads", rep)
	if rep.Dials != conns {
		t.Errorf("keep-alive load dialled %d connections, want %d: a reload broke established ones", rep.Dials, conns)
	}
}

// TestMetrics: the Prometheus endpoint (and `sluice status --json`) count
// what was sent: packets, flows, an ejection by the L7 stage, a drain.
func TestMetrics(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	lab.AddLocalVIP(httpVIP)
	agent := lab.StartAgent(agentConfig{HTTP: true, DrainTimeout: 2 * time.Second})
	m0, _ := lab.scrape()
	const n = 30
	r := lab.Load("--url", vipURL, "--mode", "newconn", "--count", fmt.Sprint(n), "--duration", "20s")
	assertNoFailures(t, "traffic before the scrape", r)

	values, out := lab.scrape()
	delta := func(k string) float64 { return values[k] - m0[k] }
	if got := delta(`sluice_service_new_flows_total{service="web-l4"}`); got != n {
		t.Errorf(`sluice_service_new_flows_total{service="web-l4"} moved by %v, want %d`, got, n)
	}
	// A new connection with one request and answer is at least 8 packets
	// (handshake, request, answer, acks, FINs) counted in both directions.
	if got := delta(`sluice_service_packets_total{service="web-l4"}`); got < 8*n {
		t.Errorf(`sluice_service_packets_total{service="web-l4"} moved by %v for %d connections, want >= %d`, got, n, 8*n)
	}
	if got := delta(`sluice_service_bytes_total{service="web-l4"}`); got < 8*n*40 {
		t.Errorf(`sluice_service_bytes_total{service="web-l4"} moved by %v, want >= %d`, got, 8*n*40)
	}
	var perBackend, pktBackend float64
	for _, be := range []string{"be1", "be2", "be3"} {
		perBackend += delta(fmt.Sprintf(`sluice_backend_new_flows_total{address=%q,pool="web"}`, backendAddr[be]))
		pktBackend += delta(fmt.Sprintf(`sluice_backend_packets_total{address=%q,pool="web"}`, backendAddr[be]))
	}
	if perBackend != n {
		t.Errorf("sluice_backend_new_flows_total over be1..be3 moved by %v, want %d", perBackend, n)
	}
	if pktBackend != delta(`sluice_service_packets_total{service="web-l4"}`) {
		t.Errorf("sluice_backend_packets_total over be1..be3 moved by %v, the service's by %v", pktBackend, delta(`sluice_service_packets_total{service="web-l4"}`))
	}
	// The CLI's JSON says the same.
	if st, err := agent.Status(); err != nil {
		t.Error(err)
	} else {
		for _, svc := range st.Services {
			if svc.Name == "web-l4" && (svc.NewFlows != uint64(values[`sluice_service_new_flows_total{service="web-l4"}`]) || svc.NewFlows < n) {
				t.Errorf("status --json: web-l4 new_flows %d, metrics %v, sent %d", svc.NewFlows, values[`sluice_service_new_flows_total{service="web-l4"}`], n)
			}
		}
	}

	// An ejection by the L7 stage: be3 answers 503 (pool web: failures 2).
	lab.setFail("be3", 503)
	r = lab.Load("--url", httpURL, "--mode", "keepalive", "--count", "30", "--duration", "20s")
	assertNoFailures(t, "GETs while be3 answers 503", r)
	m1, _ := lab.scrape()
	be3 := backendAddr["be3"]
	if got := sumMetric(m1, "sluice_l7_ejections_total{", `address="`+be3+`"`); got != 1 {
		t.Errorf("sluice_l7_ejections_total for be3 = %v, want 1", got)
	}
	if got := sumMetric(m1, "sluice_backend_transitions_total{", `to="ejected"`, `pool="web"`); got != 1 {
		t.Errorf(`sluice_backend_transitions_total{to="ejected"} = %v, want 1`, got)
	}
	if got := m1[fmt.Sprintf(`sluice_backend_state{address=%q,pool="web",state="ejected"}`, be3)]; got != 1 {
		t.Errorf("sluice_backend_state of be3 ejected = %v, want 1", got)
	}
	if got := m1[`sluice_l7_requests_total{code="200",service="web-http"}`] - m0[`sluice_l7_requests_total{code="200",service="web-http"}`]; got < 30 {
		t.Errorf(`sluice_l7_requests_total{code="200"} moved by %v, want >= 30`, got)
	}
	if got := sumMetric(m1, "sluice_l7_retries_total{", `reason="503"`); got < 1 {
		t.Errorf(`sluice_l7_retries_total{reason="503"} = %v, want >= 1`, got)
	}

	// A drain: be1 drained by the operator, removed once its flows are gone.
	if _, err := agent.CLI("drain", "web", backendAddr["be1"]); err != nil {
		t.Fatal(err)
	}
	agent.waitStates(t, 10*time.Second, map[string]string{backendAddr["be1"]: "removed"})
	m2, out2 := lab.scrape()
	if got := sumMetric(m2, "sluice_backend_transitions_total{", `cause="operator"`, `to="draining"`); got != 1 {
		t.Errorf(`sluice_backend_transitions_total{cause="operator",to="draining"} = %v, want 1`, got)
	}
	if got := sumMetric(m2, "sluice_backend_transitions_total{", `from="draining"`, `to="removed"`); got != 1 {
		t.Errorf(`sluice_backend_transitions_total{from="draining",to="removed"} = %v, want 1`, got)
	}
	if got := m2[`sluice_backend_drain_duration_seconds_count{pool="web"}`]; got != 1 {
		t.Errorf(`sluice_backend_drain_duration_seconds_count{pool="web"} = %v, want 1`, got)
	}
	if t.Failed() {
		t.Logf("scrape:\n%s\nlast scrape:\n%s", out, out2)
	}
}

// scrape reads the agent's Prometheus endpoint (in the lb namespace) and
// returns every sample by its name and labels as printed, and the raw text.
func (l *Lab) scrape() (map[string]float64, string) {
	l.t.Helper()
	return l.scrapeHost("lb")
}

// scrapeHost reads the metrics of the agent in host (on 127.0.0.1:9464).
func (l *Lab) scrapeHost(host string) (map[string]float64, string) {
	l.t.Helper()
	out := l.MustRun(host, 10*time.Second, "curl", "-sf", "--max-time", "5", "http://127.0.0.1:9464/metrics")
	values := map[string]float64{}
	for _, line := range strings.Split(out, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[i+1:], &v); err == nil {
			values[line[:i]] = v
		}
	}
	return values, out
}

// TestSNAT: in snat mode the backends see sluice's address, not the
// client's, so they need no route back through sluice: here they have none.
func TestSNAT(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	// Backends without a route to the client network: only snat can work.
	for _, be := range []string{"be1", "be2", "be3"} {
		lab.MustRun(be, 5*time.Second, "ip", "route", "del", "198.18.0.0/15")
	}
	agent := lab.StartAgent(agentConfig{Mode: "snat"})

	// A short probe first, so a broken snat fails in seconds, with the
	// data path's view of why.
	r := lab.Load("--url", vipURL, "--mode", "newconn", "--count", "3", "--duration", "20s", "--timeout", "2s")
	if r.OK != r.Requests {
		stats, _ := bpftool("map", "dump", "pinned", filepath.Join(agent.PinPath, "global_stats"))
		neigh, _ := lab.Run("lb", 5*time.Second, "ip", "neigh", "show", "dev", "eth1")
		t.Fatalf("snat: %d of %d connections failed (%v). Seen on kernel 6.18: a first packet "+
			"to a backend whose neighbour is not resolved falls back to the kernel "+
			"(passed_no_neigh) with its source already rewritten to the lb's own address; "+
			"the kernel drops a packet with a local source as a martian (accept_local=0), "+
			"so the neighbour is never resolved.\nlb neighbours on eth1:\n%s\nglobal_stats:\n%s",
			r.Failures, r.Requests, r.Errors, neigh, stats)
	}

	const n = 150
	r = lab.Load("--url", vipURL, "--mode", "newconn", "--conns", "2", "--count", fmt.Sprint(n), "--duration", "60s")
	assertNoFailures(t, "new connections in snat mode", r)
	for _, be := range []string{"be1", "be2", "be3"} {
		if got := r.ByBackend[be]; got < n*15/100 {
			t.Errorf("%s got %d of %d connections, want >= 15%%: %v", be, got, n, r.ByBackend)
		}
	}
	r = lab.Load("--url", vipURL, "--mode", "keepalive", "--conns", "4", "--count", "200", "--duration", "30s")
	assertNoFailures(t, "keep-alive connections in snat mode", r)

	// The backend saw the lb's backend-side address as the peer.
	out := lab.MustRun("client", 10*time.Second, "curl", "-sf", "--max-time", "2", "-D", "-", "-o", "/dev/null", vipURL)
	var peer string
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "X-Client-Addr") {
			peer = strings.TrimSpace(v)
		}
	}
	if !strings.HasPrefix(peer, "198.18.2.1:") {
		t.Errorf("backend saw peer %q in snat mode, want 198.18.2.1:PORT (sluice's source)\n%s", peer, out)
	}
}

// TestConntrackCLI: `sluice conntrack` shows the live flows, filtered by
// backend, through the agent and (agent stopped) from the pinned maps.
func TestConntrackCLI(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	agent := lab.StartAgent(agentConfig{})

	const conns = 9
	load := lab.StartLoad("keepalive", nil, "--url", vipURL, "--mode", "keepalive",
		"--conns", fmt.Sprint(conns), "--interval", "100ms", "--count", "100000",
		"--duration", "30s", "--timeout", "2s")
	t.Cleanup(func() { load.Stop(3 * time.Second) })
	time.Sleep(time.Second)

	flows := func(args ...string) []admin.Flow {
		t.Helper()
		out, err := agent.CLI(append([]string{"conntrack", "--json"}, args...)...)
		if err != nil {
			t.Fatalf("conntrack %v: %v", args, err)
		}
		var fl []admin.Flow
		if err := json.Unmarshal([]byte(out), &fl); err != nil {
			t.Fatalf("conntrack %v: not a JSON flow list: %v\n%s", args, err, out)
		}
		return fl
	}
	established := func(fl []admin.Flow) map[string]int {
		by := map[string]int{}
		for _, f := range fl {
			if f.State == "established" && strings.HasPrefix(f.Client, "198.18.0.2:") && f.VIP == vip+":80" {
				by[f.Backend]++
			}
		}
		return by
	}

	all := established(flows())
	total := 0
	for _, n := range all {
		total += n
	}
	if total != conns {
		t.Errorf("conntrack lists %d established flows from the client (%v), want %d", total, all, conns)
	}
	for be, addr := range backendAddr {
		want := all[addr]
		got := established(flows("--backend", addr))
		if got[addr] != want || len(got) > 1 {
			t.Errorf("conntrack --backend %s (%s): %v, want only %d flows to it", addr, be, got, want)
		}
	}
	if got := established(flows("--service", "web-l4")); len(got) == 0 {
		t.Errorf("conntrack --service web-l4 lists no flow")
	}

	// Agent stopped: the CLI reads the pinned maps itself.
	agent.Kill()
	cmd := exec.Command(env.sluice, "conntrack", "--json", "-c", agent.Config)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("conntrack with the agent down: %v\n%s", err, stderr.String())
	}
	t.Logf("conntrack with the agent down says: %s", strings.TrimSpace(stderr.String()))
	var fl []admin.Flow
	if err := json.Unmarshal(out, &fl); err != nil {
		t.Fatalf("conntrack with the agent down: not a JSON flow list: %v\n%s", err, out)
	}
	down := established(fl)
	n := 0
	for _, c := range down {
		n += c
	}
	if n != conns {
		t.Errorf("conntrack from the pinned maps lists %d established flows (%v), want %d", n, down, conns)
	}
}

// TestReloadInPart (issue 10 item 11): a valid config the agent cannot
// apply in full (an http service on an address already taken, here the
// metrics endpoint's) is applied except for that part, and `sluice reload`
// says so with a non-zero exit; `sluice status` lists what did not apply
// until a reload applies everything.
func TestReloadInPart(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	agent := lab.StartAgent(agentConfig{})

	taken := "  - name: web-http2\n    listen: 127.0.0.1:9464\n    protocol: http\n    pool: web\n"
	agent.WriteConfig(agentConfig{Backends: []string{"be1", "be2"}, ExtraServices: taken})
	out, err := agent.CLI("reload")
	if err == nil || !strings.Contains(out, "reload applied in part") || !strings.Contains(out, "web-http2 not started") {
		t.Fatalf("reload with a taken listen address: err %v, output %q", err, out)
	}
	// The rest applied: be3 left the config.
	if state, err := agent.BackendState(backendAddr["be3"]); err != nil {
		t.Fatal(err)
	} else if state != "draining" && state != "removed" {
		t.Errorf("be3 after the partial reload: %q, want draining (the rest of the config applied)", state)
	}
	st, err := agent.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.NotApplied) != 1 || !strings.Contains(st.NotApplied[0], "web-http2") {
		t.Errorf("status not_applied = %q", st.NotApplied)
	}
	if text, _ := agent.CLI("status"); !strings.Contains(text, "NOT APPLIED") {
		t.Errorf("sluice status does not show what did not apply:\n%s", text)
	}

	agent.WriteConfig(agentConfig{Backends: []string{"be1", "be2"}})
	if out, err := agent.CLI("reload"); err != nil {
		t.Fatalf("reload of an applicable config: %v %s", err, out)
	}
	if st, err := agent.Status(); err != nil || len(st.NotApplied) != 0 {
		t.Errorf("status after a full reload: not_applied %q (%v)", st.NotApplied, err)
	}
}

// TestXDPReattached: the program detached from one of the lb's interfaces
// by another tool (bpftool link detach) is attached again by the agent
// within a tick or two, says so in its log, and VIP traffic flows again.
func TestXDPReattached(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	agent := lab.StartAgent(agentConfig{})
	r := lab.Load("--url", vipURL, "--mode", "keepalive", "--count", "3", "--duration", "3s")
	assertNoFailures(t, "traffic before the detach", r)

	if strings.Contains(agent.proc.Log(), "attached again") {
		t.Fatalf("the agent attached the program again before anything detached it:\n%s", agent.proc.Log())
	}
	pin := filepath.Join(agent.PinPath, "links", "xdp_eth0")
	if _, err := bpftool("link", "detach", "pinned", pin); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the agent attaching the program again", func() error {
		if !strings.Contains(agent.proc.Log(), "attached again") {
			return errors.New("no \"attached again\" in the agent's log")
		}
		out := lab.MustRun("lb", 5*time.Second, "ip", "-d", "link", "show", "dev", "eth0")
		if !strings.Contains(out, "prog/xdp ") {
			return fmt.Errorf("eth0 has no xdp program:\n%s", out)
		}
		return nil
	})
	r = lab.Load("--url", vipURL, "--mode", "keepalive", "--count", "3", "--duration", "3s")
	assertNoFailures(t, "traffic after the program was attached again", r)
}
