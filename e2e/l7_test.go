package e2e

import (
	"fmt"
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

// TestL7DNSChange is the first field report at L7: a client keeps one
// keep-alive connection to the HTTP service while the pool's DNS name moves
// from be1 to be2. Requests follow the name within about a TTL, the client's
// connection and every request survive, and once a request has reached be2
// none goes to the old address again (no pooled connection keeps dialing it).
func TestL7DNSChange(t *testing.T) {
	lab := newLab(t)
	lab.StartBackends()
	lab.AddLocalVIP(httpVIP)
	dns := lab.StartDNS("backend.lab. 1 A 198.18.2.11\n")
	agent := lab.StartAgent(agentConfig{HTTP: true, DNSName: "backend.lab", DrainTimeout: 10 * time.Second})
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

	// A few answers from be1 first.
	for n := 0; n < 5; {
		ev, err := nextEvent(events, 10*time.Second)
		if err != nil {
			t.Fatalf("before the change: %v", err)
		}
		switch ev.Event {
		case "error":
			t.Fatalf("before the change: %s %s", ev.Kind, ev.Error)
		case "response":
			if ev.Backend != "be1" {
				t.Fatalf("before the change: answer from %s, want be1", ev.Backend)
			}
			n++
		}
	}

	changed := time.Now()
	dns.Set("backend.lab. 1 A 198.18.2.12\n")
	var movedAt time.Time
	after := 0
	for after < 20 {
		ev, err := nextEvent(events, 10*time.Second)
		if err != nil {
			t.Fatalf("after the change: %v", err)
		}
		switch ev.Event {
		case "error":
			t.Fatalf("after the change: request failed: %s %s", ev.Kind, ev.Error)
		case "connect":
			if ev.Conn > 1 {
				t.Errorf("the client's keep-alive connection was lost (connection %d)", ev.Conn)
			}
		case "response":
			switch {
			case ev.Backend == "be2" && movedAt.IsZero():
				movedAt = ev.Time()
				after++
			case ev.Backend == "be2":
				after++
			case !movedAt.IsZero():
				t.Fatalf("answer from %s after requests had moved to be2", ev.Backend)
			case time.Since(changed) > 5*time.Second:
				t.Fatalf("still answered by %s %s after the DNS change (TTL 1s)", ev.Backend, time.Since(changed).Round(time.Millisecond))
			}
		}
	}
	t.Logf("requests moved to be2 %s after the DNS change", movedAt.Sub(changed).Round(time.Millisecond))
	load.Stop(3 * time.Second)
	rep := parseReport(t, load.Output())
	assertNoFailures(t, "keep-alive load through the DNS change", rep)
	if rep.Dials != 1 {
		t.Errorf("the client dialled %d times, want 1", rep.Dials)
	}
}
