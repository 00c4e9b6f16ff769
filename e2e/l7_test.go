package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var httpURL = "http://" + httpVIP + "/"

// setFail makes backend be answer every request with status (0: healthy).
func (l *Lab) setFail(be string, status int) {
	l.t.Helper()
	l.MustRun(be, 5*time.Second, "curl", "-sf", "--max-time", "2", "-o", "/dev/null",
		fmt.Sprintf("http://127.0.0.1:80/control/fail?status=%d", status))
}

// TestL7Failover is the second field report, fixed: through the L7 stage a
// backend that answers 503 costs the client nothing (the GET is retried on
// another backend), it is ejected on its own (no status list to write, no
// request sacrificed per window), and it comes back once it is healthy.
func TestL7Failover(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	lab.AddLocalVIP(httpVIP)
	agent := lab.StartAgent(agentConfig{HTTP: true})
	waitFor(t, 10*time.Second, "the L7 listener", func() error {
		_, err := lab.Run("client", 3*time.Second, "curl", "-sf", "--max-time", "2", "-o", "/dev/null", httpURL)
		return err
	})

	r := lab.Load("--url", httpURL, "--mode", "keepalive", "--conns", "3", "--count", "90", "--duration", "20s")
	assertNoFailures(t, "through the L7 stage, all healthy", r)
	for _, be := range []string{"be1", "be2", "be3"} {
		if r.ByBackend[be] == 0 {
			t.Errorf("healthy: %s got no request through the L7 stage: %v", be, r.ByBackend)
		}
	}

	lab.setFail("be3", 503)
	r = lab.Load("--url", httpURL, "--mode", "keepalive", "--conns", "3", "--count", "150", "--duration", "30s")
	assertNoFailures(t, "GETs while be3 answers 503 (retried elsewhere)", r)
	if r.ByBackend["be3"] != 0 {
		t.Errorf("be3 answers 503 but the client got %d answers from it: %v", r.ByBackend["be3"], r.ByBackend)
	}
	if state, err := agent.BackendState(backendAddr["be3"]); err != nil {
		t.Fatal(err)
	} else if state != "ejected" {
		t.Errorf("be3 after answering 503s: state %q, want ejected", state)
	}

	// Healthy again: after its ejection time a trial request brings it back.
	lab.setFail("be3", 0)
	waitFor(t, 20*time.Second, "be3 back in rotation", func() error {
		r := lab.Load("--url", httpURL, "--mode", "newconn", "--count", "10", "--interval", "50ms", "--duration", "10s")
		if r.Failures != 0 {
			return fmt.Errorf("failures while be3 recovers: %v %v", r.Errors, r.Samples)
		}
		if r.ByBackend["be3"] == 0 {
			return fmt.Errorf("no answer from be3 yet: %v", r.ByBackend)
		}
		return nil
	})
	if state, err := agent.BackendState(backendAddr["be3"]); err != nil {
		t.Fatal(err)
	} else if state != "active" {
		t.Errorf("be3 healthy again: state %q, want active", state)
	}
}

// followMove reads the events of a one-connection keep-alive load: a few
// answers from `from`, then move() (the DNS record moves), then 20 answers
// from `to`. It fails the test on a failed request, a second connection,
// an answer from elsewhere once one came from `to`, or none from `to`
// within limit; it returns how long after move() the first answer from
// `to` came.
func followMove(t *testing.T, events <-chan string, from, to string, limit time.Duration, move func()) time.Duration {
	t.Helper()
	for n := 0; n < 5; {
		ev, err := nextEvent(events, 10*time.Second)
		if err != nil {
			t.Fatalf("before the move: %v", err)
		}
		switch {
		case ev.Event == "error":
			t.Fatalf("before the move: %s %s", ev.Kind, ev.Error)
		case ev.Event == "response" && ev.Backend != from:
			t.Fatalf("before the move: answer from %s, want %s", ev.Backend, from)
		case ev.Event == "response":
			n++
		}
	}
	changed := time.Now()
	move()
	var movedAt time.Time
	for after := 0; after < 20; {
		ev, err := nextEvent(events, 10*time.Second)
		if err != nil {
			t.Fatalf("after the move: %v", err)
		}
		switch ev.Event {
		case "error":
			t.Fatalf("after the move: request failed: %s %s", ev.Kind, ev.Error)
		case "connect":
			if ev.Conn > 1 {
				t.Errorf("the client's keep-alive connection was lost (connection %d)", ev.Conn)
			}
		case "response":
			switch {
			case ev.Backend == to:
				if movedAt.IsZero() {
					movedAt = ev.Time()
				}
				after++
			case !movedAt.IsZero():
				t.Fatalf("answer from %s after requests had moved to %s", ev.Backend, to)
			case time.Since(changed) > limit:
				t.Fatalf("still answered by %s %s after the record moved", ev.Backend, time.Since(changed).Round(time.Millisecond))
			}
		}
	}
	return movedAt.Sub(changed)
}

// TestL7DNSChange is the first field report at L7: a client keeps one
// keep-alive connection to the HTTP service while the pool's DNS name moves
// from be1 to be2. Requests follow the name within about a TTL, the client's
// connection and every request survive, and once a request has reached be2
// none goes to the old address again (no pooled connection keeps dialing it).
func TestL7DNSChange(t *testing.T) {
	parallel(t)
	l7DNSChange(t, nil)
}

// TestL7EventLoops is TestL7DNSChange looked at for the event loops the
// agent serves the HTTP/1 loop's connections from by default (docs/l7.md
// "Event loops"): the agent starts one group, whose loops hold their
// processors; a keep-alive client follows the DNS move without a failure
// on one connection (moved to a loop after its first request), and new
// connections per request are served too. Without GOGC in its
// environment the agent paces the garbage collector (docs/operations.md).
func TestL7EventLoops(t *testing.T) {
	lab, agent := l7DNSChange(t, []string{"GOGC="})
	if log := agent.proc.Log(); !strings.Contains(log, "l7 event loops") || !strings.Contains(log, "hold_procs=true") {
		t.Fatalf("the agent did not start its event loops (holding their processors):\n%s", log)
	}
	if log := agent.proc.Log(); !strings.Contains(log, "garbage collector paced") {
		t.Fatalf("the agent did not pace the garbage collector (no GOGC in its environment):\n%s", log)
	}
	if m, out := lab.scrape(); m["sluice_l7_event_loops"] < 1 || m["go_gc_gogc_percent"] <= 100 {
		t.Fatalf("sluice_l7_event_loops = %v, want the loops counted; go_gc_gogc_percent = %v, want the pacer's (> 100):\n%s",
			m["sluice_l7_event_loops"], m["go_gc_gogc_percent"], out)
	}
	for i := range 50 {
		if _, err := lab.Run("client", 3*time.Second, "curl", "-sf", "--max-time", "2", "-o", "/dev/null", "-H", "Connection: close", httpURL); err != nil {
			t.Fatalf("new connection %d: %v", i, err)
		}
	}
	// sluice status says so too.
	out, err := agent.CLI("status")
	if err != nil || !strings.Contains(out, "runtime: gomaxprocs ") || !strings.Contains(out, "gc paced (gogc ") || !strings.Contains(out, "http/1 event loops ") {
		t.Fatalf("sluice status: %v; want its runtime line with the pacing and the loops:\n%s", err, out)
	}
	// And it counts the service's requests: the keep-alive load's and
	// the 50 new connections', all answered 200.
	if !strings.Contains(out, "HTTP SERVICE") || !regexp.MustCompile(`(?m)^web-http +[0-9]+ `).MatchString(out) {
		t.Fatalf("sluice status: no HTTP SERVICE table with web-http's requests:\n%s", out)
	}
	st, err := agent.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Services {
		if s.Name != "web-http" {
			continue
		}
		c := s.HTTP
		if c == nil || c.Requests < 50 || c.Status2xx < 50 || c.Status4xx+c.Status5xx != 0 ||
			c.Requests != c.Status1xx+c.Status2xx+c.Status3xx+c.Status4xx+c.Status5xx+c.ClientGone {
			t.Fatalf("sluice status: web-http's requests %+v, want at least 50, all 2xx (or given up by the client), summing up", c)
		}
		t.Logf("sluice status: web-http %+v", *c)
		// The JSON has none of the data path's counters for it (zeros
		// there would read as nothing served).
		js, err := agent.CLI("status", "--json")
		if err != nil {
			t.Fatal(err)
		}
		var raw struct {
			Services []map[string]json.RawMessage `json:"services"`
		}
		if err := json.Unmarshal([]byte(js), &raw); err != nil {
			t.Fatalf("sluice status --json: %v\n%s", err, js)
		}
		for _, m := range raw.Services {
			if string(m["name"]) != `"web-http"` {
				continue
			}
			for _, k := range []string{"active_flows", "packets", "bytes", "new_flows", "rsts"} {
				if _, ok := m[k]; ok {
					t.Errorf("sluice status --json: web-http has %q: %s", k, js)
				}
			}
		}
		return
	}
	t.Fatalf("sluice status: no service web-http: %+v", st.Services)
}

// TestL7Goroutines is TestL7DNSChange with SLUICE_L7_EVENTLOOPS=0: a
// goroutine per connection, no event loops; and GOGC=100, which the agent
// leaves as the operator set it (no pacing).
func TestL7Goroutines(t *testing.T) {
	lab, agent := l7DNSChange(t, []string{"SLUICE_L7_EVENTLOOPS=0", "GOGC=100"})
	if log := agent.proc.Log(); strings.Contains(log, "l7 event loops") {
		t.Fatalf("SLUICE_L7_EVENTLOOPS=0: the agent started event loops:\n%s", log)
	}
	if log := agent.proc.Log(); strings.Contains(log, "garbage collector paced") {
		t.Fatalf("GOGC=100: the agent paced the garbage collector anyway:\n%s", log)
	}
	if m, out := lab.scrape(); m["sluice_l7_event_loops"] != 0 || m["go_gc_gogc_percent"] != 100 {
		t.Fatalf("SLUICE_L7_EVENTLOOPS=0, GOGC=100: sluice_l7_event_loops = %v (want 0), go_gc_gogc_percent = %v (want 100):\n%s",
			m["sluice_l7_event_loops"], m["go_gc_gogc_percent"], out)
	}
}

// l7DNSChange runs TestL7DNSChange with env added to the agent's.
func l7DNSChange(t *testing.T, env []string) (*Lab, *Agent) {
	lab := newLab(t)
	lab.StartBackends()
	lab.AddLocalVIP(httpVIP)
	dns := lab.StartDNS("backend.lab. 1 A 198.18.2.11\n")
	agent := lab.StartAgent(agentConfig{Env: env, HTTP: true, DNSName: "backend.lab", DrainTimeout: 10 * time.Second})
	agent.waitStates(t, 10*time.Second, map[string]string{backendAddr["be1"]: "active"})
	waitFor(t, 10*time.Second, "the L7 listener", func() error {
		_, err := lab.Run("client", 3*time.Second, "curl", "-sf", "--max-time", "2", "-o", "/dev/null", httpURL)
		return err
	})

	events := make(chan string, 4096)
	load := lab.StartLoad("keepalive", events, "--url", httpURL, "--mode", "keepalive",
		"--conns", "1", "--interval", "50ms", "--count", "600", "--duration", "30s",
		"--timeout", "3s", "--events")
	t.Cleanup(func() { load.Stop(3 * time.Second) })

	took := followMove(t, events, "be1", "be2", 5*time.Second, func() { dns.Set("backend.lab. 1 A 198.18.2.12\n") })
	t.Logf("requests moved to be2 %s after the DNS change", took.Round(time.Millisecond))
	stopOneConnection(t, load, "keep-alive load through the DNS change")
	return lab, agent
}

// stopOneConnection stops a one-connection keep-alive load and checks that
// no request failed and the client dialled once.
func stopOneConnection(t *testing.T, load *Proc, what string) {
	t.Helper()
	load.Stop(3 * time.Second)
	rep := parseReport(t, load.Output())
	assertNoFailures(t, what, rep)
	if rep.Dials != 1 {
		t.Errorf("%s: the client dialled %d times, want 1", what, rep.Dials)
	}
}

// TestL7DrainEndsLongResponses: the lifecycle's contract for the HTTP
// stage. A response streaming from a backend that is drained goes on
// while the address drains (status shows it: no flow, one request), and
// is cut when drain_timeout passes — as the data path resets a flow
// pinned to a removed backend — instead of holding the removed address
// for as long as the backend keeps sending.
func TestL7DrainEndsLongResponses(t *testing.T) {
	parallel(t)
	const drainTimeout = 5 * time.Second // room for a slow CLI before the status check
	lab := newLab(t)
	lab.StartBackends()
	lab.AddLocalVIP(httpVIP)
	accessLog := filepath.Join(lab.dir, "drain-access.log")
	agent := lab.StartAgent(agentConfig{HTTP: true, DrainTimeout: drainTimeout,
		Timeouts:  "{connect: 1s, read: 2s, total: 60s}",
		HTTPExtra: "    access_log: " + accessLog + "\n"})
	waitFor(t, 10*time.Second, "the L7 listener", func() error {
		_, err := lab.Run("client", 3*time.Second, "curl", "-sf", "--max-time", "2", "-o", "/dev/null", httpURL)
		return err
	})

	// 30 s of a line every 100 ms.
	stream := lab.Start("stream", "client", "curl", "-sN", "--max-time", "45", httpURL+"stream?seconds=30")
	var be string
	waitFor(t, 5*time.Second, "the stream's first line", func() error {
		first, _, ok := strings.Cut(string(stream.Output()), "\n")
		if !ok {
			return fmt.Errorf("nothing yet: %q", stream.Output())
		}
		be, _, _ = strings.Cut(first, " ")
		if _, known := backendAddr[be]; !known {
			return fmt.Errorf("first line %q names no backend", first)
		}
		return nil
	})
	addr := backendAddr[be]
	// Taken before the command: the drain happens while the CLI runs,
	// which on a loaded machine (or a -race build) takes a while to return.
	drained := time.Now()
	if out, err := agent.CLI("drain", "web", addr); err != nil {
		t.Fatalf("drain: %v", err)
	} else {
		t.Logf("sluice drain: %s", strings.TrimSpace(out))
	}

	// Draining: the stream goes on, and status says what the drain waits for.
	if bs, err := agent.poolBackends(); err != nil {
		t.Errorf("status while draining: %v", err)
	} else if b := bs[addr]; b.State != "draining" || b.ActiveFlows != 0 || b.Requests == nil || *b.Requests != 1 {
		t.Errorf("%s (%s) while its stream drains: state %q, %d flows, requests %v; want draining, 0 flows, 1 request",
			be, addr, b.State, b.ActiveFlows, b.Requests)
	}
	if !stream.Running() {
		t.Fatalf("the stream ended when its backend started draining:\n%s", stream.Log())
	}

	// drain_timeout passes: the address is removed and the stream cut.
	err := stream.Wait(drainTimeout + 5*time.Second)
	took := time.Since(drained)
	if stream.Running() {
		t.Fatalf("the stream from a removed backend still runs %s after the drain (drain_timeout %s)", took.Round(time.Millisecond), drainTimeout)
	}
	if err == nil {
		t.Errorf("the stream cut at drain_timeout ended like a complete response (curl exit 0)")
	}
	if took < drainTimeout-500*time.Millisecond {
		t.Errorf("the stream ended %s after the drain, before drain_timeout (%s)", took.Round(time.Millisecond), drainTimeout)
	}
	lines := strings.Count(string(stream.Output()), "\n")
	t.Logf("stream from %s cut %s after the drain (drain_timeout %s), %d lines received, curl: %v",
		be, took.Round(time.Millisecond), drainTimeout, lines, err)
	waitFor(t, 5*time.Second, addr+" removed at drain_timeout, nothing in flight to it", func() error {
		bs, err := agent.poolBackends()
		if err != nil {
			return err
		}
		if b := bs[addr]; b.State != "removed" || !strings.HasPrefix(b.Cause, "drain-timeout") || b.Requests == nil || *b.Requests != 0 {
			return fmt.Errorf("state %q cause %q requests %v", b.State, b.Cause, b.Requests)
		}
		return nil
	})
	waitFor(t, 5*time.Second, "the access log line of the cut stream", func() error {
		data, err := os.ReadFile(accessLog)
		if err != nil {
			return err
		}
		for l := range strings.SplitSeq(strings.TrimSpace(string(data)), "\n") {
			if strings.Contains(l, "/stream") {
				if !strings.Contains(l, "address removed") {
					return fmt.Errorf("the stream's line does not say the address was removed: %s", l)
				}
				return nil
			}
		}
		return fmt.Errorf("no line for the stream in %q", data)
	})
}

// TestL7AccessLogRemoved: an access log file removed while the agent
// writes it (an `rm` to free space, a rotation without reload) is opened
// anew at its path within seconds: the requests after it are logged there,
// and `sluice status` shows the warning.
func TestL7AccessLogRemoved(t *testing.T) {
	parallel(t)
	accessLog := filepath.Join(t.TempDir(), "access.log")
	lab, agent := startL7(t, agentConfig{HTTPExtra: "    access_log: " + accessLog + "\n"})
	logged := func(rid string) error {
		b, err := os.ReadFile(accessLog)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "rid="+rid) {
			return fmt.Errorf("not in the file")
		}
		return nil
	}
	rid := newRID("before")
	if r := lab.curl("GET", httpURL+"?rid="+rid); r.Code != 200 {
		t.Fatalf("request: %d", r.Code)
	}
	waitFor(t, 5*time.Second, "the request's line in the access log", func() error { return logged(rid) })
	if err := os.Remove(accessLog); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	waitFor(t, 10*time.Second, "the access log opened anew", func() error {
		_, err := os.Stat(accessLog)
		return err
	})
	t.Logf("access log opened anew %v after it was removed", time.Since(removed).Round(100*time.Millisecond))
	rid = newRID("after")
	if r := lab.curl("GET", httpURL+"?rid="+rid); r.Code != 200 {
		t.Fatalf("request: %d", r.Code)
	}
	waitFor(t, 5*time.Second, "the next request's line in the new access log", func() error { return logged(rid) })
	if out, err := agent.CLI("status"); err != nil || !strings.Contains(out, "access log file removed") {
		t.Errorf("sluice status does not show the removal (%v):\n%s", err, out)
	}
}
