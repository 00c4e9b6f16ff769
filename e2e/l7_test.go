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
