package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
)

// clientFlows maps each established client flow to the VIP (client
// ip:port -> backend), from `sluice conntrack --json`.
func (a *Agent) clientFlows(t *testing.T, vipPort string) map[string]string {
	t.Helper()
	out, err := a.CLI("conntrack", "--json")
	if err != nil {
		t.Fatalf("conntrack: %v", err)
	}
	var fl []admin.Flow
	if err := json.Unmarshal([]byte(out), &fl); err != nil {
		t.Fatalf("conntrack: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, f := range fl {
		if f.State == "established" && f.VIP == vipPort && strings.HasPrefix(f.Client, "198.18.0.2:") {
			m[f.Client] = f.Backend
		}
	}
	return m
}

// assertSameBackends checks every flow of before that is still in after
// kept its backend, and that keep-alive flows are still there.
func assertSameBackends(t *testing.T, what string, before, after map[string]string, want int) {
	t.Helper()
	kept := 0
	for c, be := range before {
		if got, ok := after[c]; ok {
			kept++
			if got != be {
				t.Errorf("%s: flow %s moved from %s to %s", what, c, be, got)
			}
		}
	}
	if kept < want {
		t.Errorf("%s: %d of the %d flows seen before are still established, want >= %d (before %v, after %v)", what, kept, len(before), want, before, after)
	}
}

// buildUpgrade builds a second sluice binary with another version string.
func buildUpgrade(t *testing.T, version string) string {
	t.Helper()
	goBin := "go"
	if _, err := exec.LookPath("go"); err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	out := filepath.Join(t.TempDir(), "sluice-next")
	args := []string{"build", "-o", out, "-ldflags", "-X main.version=" + version}
	if os.Getenv("E2E_RACE") == "1" {
		args = append(args, "-race")
	}
	cmd := exec.Command(goBin, append(args, "./cmd/sluice")...)
	cmd.Dir = env.repoRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build the upgrade: %v\n%s", err, b)
	}
	return out
}

// TestBinaryUpgrade: the agent is replaced by another build under
// continuous load (SIGTERM the old, start the new from the same pinned
// state): no request fails, no established connection breaks or changes
// backend, and the new version is what runs.
func TestBinaryUpgrade(t *testing.T) {
	const next = "e2e-upgrade-next"
	lab := newLab(t)
	bin := buildUpgrade(t, next)
	lab.StartBackends()
	agent := lab.StartAgent(agentConfig{})
	if st, err := agent.Status(); err != nil || st.Version == next {
		t.Fatalf("before the upgrade: version %q (%v)", st.Version, err)
	}

	const conns = 6
	keep := lab.StartLoad("keepalive", nil, "--url", vipURL, "--mode", "keepalive",
		"--conns", fmt.Sprint(conns), "--interval", "20ms", "--count", "100000", "--duration", "40s", "--timeout", "2s")
	t.Cleanup(func() { keep.Stop(3 * time.Second) })
	fresh := lab.StartLoad("newconn", nil, "--url", vipURL, "--mode", "newconn",
		"--conns", "2", "--interval", "20ms", "--count", "100000", "--duration", "40s", "--timeout", "2s")
	t.Cleanup(func() { fresh.Stop(3 * time.Second) })
	time.Sleep(time.Second)
	before := agent.clientFlows(t, vip+":80")

	if err := agent.proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := agent.proc.Wait(10 * time.Second); err != nil {
		t.Fatalf("old agent after SIGTERM: %v", err)
	}
	agent.Binary = bin
	agent.Start()
	time.Sleep(time.Second)
	after := agent.clientFlows(t, vip+":80")
	assertSameBackends(t, "after the upgrade", before, after, conns)

	st, err := agent.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != next {
		t.Errorf("status after the upgrade: version %q, want %q", st.Version, next)
	}
	if m, _ := lab.scrape(); m[fmt.Sprintf(`sluice_build_info{version=%q}`, next)] != 1 {
		t.Errorf("sluice_build_info{version=%q} is not 1 after the upgrade", next)
	}
	if out, err := exec.Command(bin, "version").CombinedOutput(); err != nil || !strings.Contains(string(out), next) {
		t.Errorf("sluice version of the new build: %q (%v)", out, err)
	}

	time.Sleep(time.Second)
	keep.Stop(5 * time.Second)
	fresh.Stop(5 * time.Second)
	kr, fr := parseReport(t, keep.Output()), parseReport(t, fresh.Output())
	assertNoFailures(t, "keep-alive load across the upgrade", kr)
	assertNoFailures(t, "new connections across the upgrade", fr)
	if kr.Dials != conns {
		t.Errorf("keep-alive load dialled %d connections, want %d", kr.Dials, conns)
	}
	if len(fr.ByBackend) != 3 {
		t.Errorf("new connections across the upgrade went to %v, want be1..be3", fr.ByBackend)
	}
}

// altPool is pool alt with the given backends (port 80).
func altPool(bes ...string) string {
	var b strings.Builder
	b.WriteString("  - name: alt\n    drain_timeout: 2s\n    backends:\n")
	for _, be := range bes {
		fmt.Fprintf(&b, "      - address: %s\n", backendAddr[be])
	}
	return b.String()
}

func l4Service(name string, port int, pool string) string {
	return fmt.Sprintf("  - name: %s\n    listen: %s:%d\n    protocol: tcp\n    mode: nat\n    pool: %s\n", name, vip, port, pool)
}

// TestReloadServices: one reload adds a service, removes another and
// changes a pool's backends under load; the flows of the unrelated service
// are untouched and no request fails. A broken file is then refused with
// its line number, and traffic goes on as before.
func TestReloadServices(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	first := agentConfig{ExtraPools: altPool("be1", "be2"), ExtraServices: l4Service("gone-l4", 81, "alt")}
	agent := lab.StartAgent(first)
	r := lab.Load("--url", "http://"+vip+":81/", "--mode", "newconn", "--count", "20", "--duration", "10s")
	assertNoFailures(t, "gone-l4 before the reload", r)

	const conns = 6
	keep := lab.StartLoad("keepalive", nil, "--url", vipURL, "--mode", "keepalive",
		"--conns", fmt.Sprint(conns), "--interval", "20ms", "--count", "100000", "--duration", "40s", "--timeout", "2s")
	t.Cleanup(func() { keep.Stop(3 * time.Second) })
	fresh := lab.StartLoad("newconn", nil, "--url", vipURL, "--mode", "newconn",
		"--conns", "2", "--interval", "20ms", "--count", "100000", "--duration", "40s", "--timeout", "2s")
	t.Cleanup(func() { fresh.Stop(3 * time.Second) })
	time.Sleep(time.Second)
	before := agent.clientFlows(t, vip+":80")

	second := agentConfig{ExtraPools: altPool("be3"), ExtraServices: l4Service("new-l4", 82, "alt")}
	agent.WriteConfig(second)
	if _, err := agent.CLI("reload"); err != nil {
		t.Fatalf("reload: %v", err)
	}
	r = lab.Load("--url", "http://"+vip+":82/", "--mode", "newconn", "--count", "30", "--duration", "10s")
	assertNoFailures(t, "new-l4 after the reload", r)
	if r.ByBackend["be3"] != r.OK {
		t.Errorf("new-l4 (pool alt, now be3 only) answered by %v", r.ByBackend)
	}
	r = lab.Load("--url", "http://"+vip+":81/", "--mode", "newconn", "--count", "3", "--duration", "10s", "--timeout", "1s")
	if r.OK != 0 {
		t.Errorf("gone-l4 was removed but answered %d of %d: %v", r.OK, r.Requests, r.ByBackend)
	}
	st, err := agent.Status()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range st.Services {
		names = append(names, s.Name)
	}
	if strings.Join(names, ",") != "web-l4,new-l4" && strings.Join(names, ",") != "new-l4,web-l4" {
		t.Errorf("services after the reload: %v, want web-l4 and new-l4", names)
	}

	// A broken file: refused with its line, nothing changes.
	good, _ := os.ReadFile(agent.Config)
	broken := strings.Replace(string(good), "    pool: alt\n", "    pool: alt\n    bogus_key: 1\n", 1)
	line := strings.Count(broken[:strings.Index(broken, "bogus_key")], "\n") + 1
	agent.WriteRawConfig(broken)
	if out, err := agent.CLI("reload"); err == nil {
		t.Errorf("reload of a broken config succeeded: %s", out)
	} else if !strings.Contains(err.Error(), fmt.Sprintf("sluice.yaml:%d:", line)) {
		t.Errorf("refused reload does not name line %d: %v", line, err)
	}
	r = lab.Load("--url", "http://"+vip+":82/", "--mode", "newconn", "--count", "20", "--duration", "10s")
	assertNoFailures(t, "new-l4 after a refused reload", r)
	if m, _ := lab.scrape(); m[`sluice_config_reloads_total{result="refused"}`] != 1 || m[`sluice_config_reloads_total{result="ok"}`] != 1 {
		t.Errorf("sluice_config_reloads_total: want ok 1, refused 1")
	}

	after := agent.clientFlows(t, vip+":80")
	assertSameBackends(t, "web-l4 flows across the reloads", before, after, conns)
	keep.Stop(5 * time.Second)
	fresh.Stop(5 * time.Second)
	kr, fr := parseReport(t, keep.Output()), parseReport(t, fresh.Output())
	assertNoFailures(t, "keep-alive load on web-l4 across the reloads", kr)
	assertNoFailures(t, "new connections to web-l4 across the reloads", fr)
	if kr.Dials != conns {
		t.Errorf("keep-alive load dialled %d connections, want %d", kr.Dials, conns)
	}
}

// TestTeardownRefusesAndCleansNeighbours (issue 10 item 13): teardown
// refuses while an agent holds the pins even when asked on another socket
// (nothing answers there), and once the agent is stopped it removes the
// managed neighbour entries the agent added for its backends' next hops.
func TestTeardownRefusesAndCleansNeighbours(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	agent := lab.StartAgent(agentConfig{})
	agent.waitStates(t, 10*time.Second, map[string]string{backendAddr["be1"]: "active"})
	managed := func() string {
		out := lab.MustRun("lb", 5*time.Second, "ip", "neigh", "show")
		var lines []string
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "managed") {
				lines = append(lines, l)
			}
		}
		return strings.Join(lines, "\n")
	}
	waitFor(t, 10*time.Second, "managed neighbour entries for the backends", func() error {
		if managed() == "" {
			return fmt.Errorf("none yet:\n%s", lab.MustRun("lb", 5*time.Second, "ip", "neigh", "show"))
		}
		return nil
	})

	other := filepath.Join(t.TempDir(), "nobody.sock")
	out, err := lab.Run("lb", 30*time.Second, env.sluice, "teardown", "--socket", other, "--pin-path", agent.PinPath)
	if err == nil || !strings.Contains(out, "an agent holds the pins") {
		t.Fatalf("teardown while the agent runs (asked on another socket): err %v, output %q", err, out)
	}
	if _, err := os.Stat(agent.PinPath); err != nil {
		t.Fatalf("pins gone after a refused teardown: %v", err)
	}

	agent.Kill()
	if out, err := lab.Run("lb", 30*time.Second, env.sluice, "teardown", "--socket", other, "--pin-path", agent.PinPath); err != nil {
		t.Fatalf("teardown with the agent stopped: %v %s", err, out)
	}
	if m := managed(); m != "" {
		t.Errorf("managed neighbour entries left after teardown:\n%s", m)
	}
}

// TestRestartKeepsDecisions (issue 10 item 14): an operator drain of a
// DNS-derived address, and its drain deadline, are the same after the
// agent restarts (kill -9) while the name still answers the address: it
// gets no new connection before or after the restart.
func TestRestartKeepsDecisions(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	lab.StartDNS("backend.lab. 1 A 198.18.2.11\nbackend.lab. 1 A 198.18.2.12\n")
	agent := lab.StartAgent(agentConfig{DNSName: "backend.lab", DrainTimeout: 2 * time.Minute})
	agent.waitStates(t, 10*time.Second, map[string]string{backendAddr["be1"]: "active", backendAddr["be2"]: "active"})

	// A connection on be2 keeps its drain going.
	events := make(chan string, 4096)
	long := lab.StartLoad("long", events, "--url", vipURL, "--mode", "keepalive",
		"--conns", "8", "--interval", "200ms", "--count", "1000", "--duration", "60s", "--timeout", "3s")
	t.Cleanup(func() { long.Stop(3 * time.Second) })
	waitFor(t, 10*time.Second, "a flow on be2", func() error {
		bs, err := agent.poolBackends()
		if err != nil {
			return err
		}
		if bs[backendAddr["be2"]].ActiveFlows == 0 {
			return fmt.Errorf("no flow on be2 yet")
		}
		return nil
	})
	if out, err := agent.CLI("drain", "web", backendAddr["be2"]); err != nil {
		t.Fatalf("drain: %v %s", err, out)
	}
	before := agent.waitStates(t, 5*time.Second, map[string]string{backendAddr["be2"]: "draining"})[backendAddr["be2"]]

	agent.Kill()
	agent.Start()
	after := agent.waitStates(t, 10*time.Second, map[string]string{backendAddr["be1"]: "active", backendAddr["be2"]: "draining"})[backendAddr["be2"]]
	// Let the name answer again (TTL 1s): the drain must hold.
	time.Sleep(2500 * time.Millisecond)
	after = agent.waitStates(t, 5*time.Second, map[string]string{backendAddr["be2"]: "draining"})[backendAddr["be2"]]
	if before.DrainDeadline == nil || after.DrainDeadline == nil || !after.DrainDeadline.Equal(*before.DrainDeadline) {
		t.Errorf("drain deadline %v before the restart, %v after: want the same", before.DrainDeadline, after.DrainDeadline)
	}
	if !strings.Contains(after.Cause, "operator") {
		t.Errorf("be2's cause after the restart = %q, want the operator's drain", after.Cause)
	}
	r := lab.Load("--url", vipURL, "--mode", "newconn", "--count", "40", "--duration", "20s")
	assertNoFailures(t, "new connections after the restart", r)
	if r.ByBackend["be2"] != 0 {
		t.Errorf("be2 is drained by the operator but got %d new connections after the restart: %v", r.ByBackend["be2"], r.ByBackend)
	}
}

// agentWrapper writes a bash script that runs lines, then execs the
// suite's sluice with its arguments (the agent's process is the script's),
// for StartAgentBinary.
func agentWrapper(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sluice-wrapper")
	script := "#!/bin/bash\n" + strings.Join(lines, "\n") + "\nexec " + env.sluice + " \"$@\"\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// An agent whose stdout and stderr are a pipe whose reader went away (a
// log shipper that died, `sluice agent | tee` with tee gone) keeps
// serving: Go would end the process at its next log or access log line
// with SIGPIPE. The wrapper points both at a pipe to `head -c 0`, which
// exits at once, and execs the agent (its process is the agent's).
func TestAgentOutlivesLogReader(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	lab.AddLocalVIP(httpVIP)
	wrapper := agentWrapper(t, "exec > >(exec head -c 0) 2>&1", "sleep 0.2 # head has exited: every write fails from here")
	agent := lab.StartAgentBinary(agentConfig{HTTP: true, Ejection: noEjection}, wrapper)
	get := func(i int) {
		t.Helper()
		if out, err := lab.Run("client", 5*time.Second, "curl", "-sf", "--max-time", "2", "-o", "/dev/null", httpURL); err != nil {
			t.Fatalf("request %d: %v %s", i, err, out)
		}
	}
	waitFor(t, 10*time.Second, "the L7 listener", func() error {
		_, err := lab.Run("client", 3*time.Second, "curl", "-sf", "--max-time", "2", "-o", "/dev/null", httpURL)
		return err
	})
	for i := range 20 {
		get(i)
	}
	// The access log is written within a second; the agent logs on
	// reload too.
	time.Sleep(1500 * time.Millisecond)
	if out, err := agent.CLI("reload"); err != nil {
		t.Fatalf("reload: %v %s", err, out)
	}
	if !agent.proc.Running() {
		t.Fatalf("the agent exited: %v", agent.proc.Wait(time.Second))
	}
	for i := range 5 {
		get(100 + i)
	}
}

// Under systemd (Type=notify, WatchdogSec) the agent reports READY=1 once
// its admin socket answers, feeds the watchdog from its control loop at
// half the interval systemd gives, and reports STOPPING=1 on SIGTERM. The
// test stands in for systemd's notification socket.
func TestAgentNotifiesSystemd(t *testing.T) {
	lab := newLab(t)
	lab.StartBackends()
	sock := filepath.Join(t.TempDir(), "notify.sock")
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	type msg struct {
		text string
		at   time.Time
	}
	msgs := make(chan msg, 1000)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := nl.Read(buf)
			if err != nil {
				return
			}
			msgs <- msg{string(buf[:n]), time.Now()}
		}
	}()
	// With an http service under load: its event loops are checked for
	// the watchdog too (every 250ms, stuck after 333ms of nothing run).
	lab.AddLocalVIP(httpVIP)
	agent := lab.StartAgent(agentConfig{HTTP: true, Env: []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=1000000"}})
	load := lab.StartLoad("load", nil, "--url", httpURL, "--mode", "keepalive", "--conns", "8", "--count", "1000000", "--duration", "3s", "--timeout", "2s")
	defer load.Stop(5 * time.Second)
	var ready time.Time
	pings := 0
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		select {
		case m := <-msgs:
			switch {
			case strings.HasPrefix(m.text, "READY=1\nSTATUS=serving "):
				ready = m.at
			case m.text == "WATCHDOG=1":
				if ready.IsZero() {
					t.Errorf("a watchdog ping before READY=1")
				}
				pings++
			default:
				t.Errorf("unexpected message %q", m.text)
			}
		case <-time.After(100 * time.Millisecond):
		}
	}
	if ready.IsZero() {
		t.Fatal("no READY=1")
	}
	// 3 s at one ping per 500 ms, less the start.
	if pings < 4 {
		t.Errorf("%d watchdog pings, want one every 500ms", pings)
	}
	if log := agent.proc.Log(); strings.Contains(log, "an l7 event loop runs nothing") {
		t.Errorf("an event loop taken for stuck under load:\n%s", log)
	}
	if out, err := agent.CLI("status"); err != nil {
		t.Fatalf("status after READY=1: %v %s", err, out)
	}
	_ = agent.proc.Signal(syscall.SIGTERM)
	for end := time.After(10 * time.Second); ; {
		select {
		case m := <-msgs:
			if m.text == "STOPPING=1" {
				return
			}
		case <-end:
			t.Fatal("no STOPPING=1 after SIGTERM")
		}
	}
}

// An agent whose stdout is the systemd journal (JOURNAL_STREAM names it,
// as systemd sets it; here the wrapper names the agent's real stdout) warns
// of each http service whose access log goes there: journald drops a
// unit's lines past its rate limit, the agent's own with them.
func TestAgentWarnsAccessLogToJournal(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	lab.AddLocalVIP(httpVIP)
	wrapper := agentWrapper(t, "export JOURNAL_STREAM=$(stat -L -c '%d:%i' /proc/$$/fd/1)")
	agent := lab.StartAgentBinary(agentConfig{HTTP: true}, wrapper)
	log := agent.proc.Log()
	if !strings.Contains(log, "access log to the systemd journal") || !strings.Contains(log, "services=[web-http]") {
		t.Errorf("no warning of the access log to the journal in the agent's log:\n%s", log)
	}
}

// An access log whose destination refuses writes (a full disk: /dev/full)
// loses lines; the agent says so at once — a warning naming the
// destination and the error, sluice_l7_access_log_lost_total counting the
// lines — instead of only at the next reload, and serves on.
func TestAccessLogWriteErrorsVisible(t *testing.T) {
	parallel(t)
	lab, agent := startL7(t, agentConfig{HTTPExtra: "    access_log: /dev/full\n"})
	for i := range 5 {
		if r := lab.curl("GET", httpURL); r.Code != 200 {
			t.Fatalf("request %d: %d", i, r.Code)
		}
	}
	waitFor(t, 5*time.Second, "the lost lines counted", func() error {
		_, scrape := lab.scrape()
		for _, l := range strings.Split(scrape, "\n") {
			if v, ok := strings.CutPrefix(l, `sluice_l7_access_log_lost_total{access_log="/dev/full"} `); ok {
				if n, _ := strconv.Atoi(v); n >= 5 {
					return nil
				}
				return fmt.Errorf("%s", l)
			}
		}
		return fmt.Errorf("no sluice_l7_access_log_lost_total series")
	})
	if log := agent.proc.Log(); !strings.Contains(log, "access log lines lost") || !strings.Contains(log, "no space left on device") {
		t.Errorf("no warning of the lost lines in the agent's log:\n%s", log)
	}
}

// Pins removed while the agent runs (rm -r of the pin directory, a
// cleanup of /sys/fs/bpf) are pinned again within a tick, so the next
// agent adopts the program's link and the maps: a restart afterwards
// breaks no established connection. Without it the restart found nothing
// to adopt: the program detached with the old agent, every flow's state
// gone.
func TestPinsRemovedWhileRunning(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	agent := lab.StartAgent(agentConfig{})
	load := startKeepAlive(t, lab)

	if out, err := lab.Run("lb", 5*time.Second, "rm", "-rf", agent.PinPath); err != nil {
		t.Fatalf("rm -rf %s: %v %s", agent.PinPath, err, out)
	}
	waitFor(t, 5*time.Second, "the pins made again", func() error {
		for _, p := range []string{"conntrack", "services", "links/xdp_eth0", "links/xdp_eth1"} {
			if _, err := os.Stat(filepath.Join(agent.PinPath, p)); err != nil {
				return err
			}
		}
		return nil
	})
	if log := agent.proc.Log(); !strings.Contains(log, "pinned again") {
		t.Errorf("the agent did not say it pinned again:\n%s", log)
	}

	agent.Kill()
	agent.Start()
	if log := agent.proc.Log(); !strings.Contains(log, "adopted pinned xdp link") {
		t.Errorf("the restarted agent did not adopt the pinned link:\n%s", log)
	}
	time.Sleep(time.Second)
	assertKeepAliveSurvived(t, load, "the pins' removal and a restart")
}

// `ss -K` with a filter that takes in the agent's listening sockets (an
// operator killing the connections of a port: `ss -K sport = :80`) closes
// them in the kernel: every accept fails from then on and clients are
// refused, though the agent still holds the sockets. The agent listens
// on them again: the http service and the metrics endpoint keep
// answering, and the agent says what happened.
func TestListenersSurviveSocketDestroy(t *testing.T) {
	parallel(t)
	// Go listens with MPTCP where the kernel offers it, and SOCK_DESTROY
	// cannot close MPTCP listeners: this namespace gets plain TCP ones,
	// as on a kernel without MPTCP or with it turned off.
	lab, agent := startL7After(t, agentConfig{}, func(lab *Lab) {
		if _, err := lab.Run("lb", 5*time.Second, "sysctl", "-qw", "net.mptcp.enabled=0"); err != nil {
			t.Logf("net.mptcp.enabled not set (%v): plain TCP listeners already", err)
		}
	})
	out := lab.MustRun("lb", 10*time.Second, "ss", "-K", "-t", "-n", "state", "listening", "(", "sport", "=", ":80", "or", "sport", "=", ":9464", ")")
	if !strings.Contains(out, httpVIP+":80") || !strings.Contains(out, "127.0.0.1:9464") {
		t.Fatalf("ss -K did not close both listeners (the kernel needs CONFIG_INET_DIAG_DESTROY):\n%s", out)
	}
	for i := range 5 {
		if r := lab.curl("GET", httpURL); r.Code != 200 {
			t.Fatalf("request %d after ss -K: status %d, curl exit %d", i, r.Code, r.Exit)
		}
	}
	if _, scrape := lab.scrape(); !strings.Contains(scrape, "sluice_l7_requests_total") {
		t.Error("the metrics endpoint answers without the L7 series after ss -K")
	}
	waitFor(t, 5*time.Second, "the agent's warnings", func() error {
		log := agent.proc.Log()
		for _, want := range []string{"http listener was closed under the agent", "metrics listener was closed under the agent"} {
			if !strings.Contains(log, want) {
				return fmt.Errorf("no %q in the agent's log", want)
			}
		}
		return nil
	})
}

// The admin socket removed while the agent runs (rm, a cleanup of its
// directory) is made again within a second or two: `sluice status` and
// `systemctl reload` reach the agent without a restart.
func TestAdminSocketRemovedWhileRunning(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	agent := lab.StartAgent(agentConfig{})
	const warns = `sluice_log_messages_total{level="warn"}`
	m0, _ := lab.scrape()
	if err := os.Remove(agent.Socket); err != nil {
		t.Fatal(err)
	}
	if _, err := agent.CLI("status"); err == nil {
		t.Fatal("sluice status answered with the socket removed")
	}
	waitFor(t, 5*time.Second, "the admin socket made again", func() error {
		_, err := agent.CLI("status")
		return err
	})
	if fi, err := os.Lstat(agent.Socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket made again: %v, %v; want mode 600", fi, err)
	}
	if log := agent.proc.Log(); !strings.Contains(log, "admin socket removed while the agent ran: listening on a new one") {
		t.Errorf("no warning of the removed socket in the agent's log:\n%s", log)
	}
	// sluice status lists the warning among the agent's recent ones.
	out, err := agent.CLI("status")
	if err != nil || !strings.Contains(out, "RECENT WARNINGS AND ERRORS (") ||
		!strings.Contains(out, `WARN  msg="admin socket removed while the agent ran: listening on a new one"`) {
		t.Errorf("sluice status (%v) does not list the warning:\n%s", err, out)
	}
	if m, _ := lab.scrape(); m[warns]-m0[warns] != 1 {
		t.Errorf("%s went from %v to %v, want one more", warns, m0[warns], m[warns])
	}
	if _, err := agent.CLI("reload"); err != nil {
		t.Errorf("sluice reload through the new socket: %v", err)
	}
}
