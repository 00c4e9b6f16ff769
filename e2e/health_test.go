package e2e

import (
	"testing"
	"time"
)

// TestHealthCheck: active health checks take a failing backend out of the
// L4 data path (no live request is sacrificed to learn it) and bring it
// back after `rise` good checks.
func TestHealthCheck(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	agent := lab.StartAgent(agentConfig{Health: true})
	all := map[string]string{backendAddr["be1"]: "active", backendAddr["be2"]: "active", backendAddr["be3"]: "active"}
	agent.waitStates(t, 10*time.Second, all)

	lab.setFail("be3", 500)
	got := agent.waitStates(t, 5*time.Second, map[string]string{backendAddr["be3"]: "ejected"})
	t.Logf("be3 failing its checks: %s (%s)", got[backendAddr["be3"]].State, got[backendAddr["be3"]].Cause)

	r := lab.Load("--url", vipURL, "--mode", "newconn", "--count", "60", "--duration", "20s")
	if r.ByBackend["be3"] != 0 {
		t.Errorf("be3 fails its health checks but got %d new connections: %v", r.ByBackend["be3"], r.ByBackend)
	}
	if r.ByBackend["be1"]+r.ByBackend["be2"] != r.Requests {
		t.Errorf("while be3 is out, every connection should reach be1 or be2: %v, errors %v", r.ByBackend, r.Errors)
	}

	lab.setFail("be3", 0)
	agent.waitStates(t, 10*time.Second, all)
	r = lab.Load("--url", vipURL, "--mode", "newconn", "--count", "90", "--duration", "20s")
	assertNoFailures(t, "after be3 recovered", r)
	if r.ByBackend["be3"] == 0 {
		t.Errorf("be3 passes its checks again but gets no new connection: %v", r.ByBackend)
	}
}
