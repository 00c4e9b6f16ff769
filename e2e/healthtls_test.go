package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestL7HTTPSHealthCheck (issue 16): a pool of TLS backends checked over
// HTTPS (server_name and a private CA, the upstream's keys): a backend whose
// check fails is ejected (cause health:status), traffic avoids it, and it is
// restored once its checks pass again.
// The check's timeout is generous: on a loaded 2-CPU machine a TLS
// handshake can take hundreds of milliseconds, and a check that times out
// ejects with cause health:timeout, not the health:status asserted here.
func TestL7HTTPSHealthCheck(t *testing.T) {
	parallel(t)
	cert, key := writeTestCert(t, t.TempDir(), "backend.lab")
	pool := fmt.Sprintf(`  - name: tlsweb
    backends:
      - address: 198.18.2.11:8443
      - address: 198.18.2.12:8443
      - address: 198.18.2.13:8443
    health_check:
      http: {path: /healthz, tls: true, server_name: backend.lab, ca: %s}
      interval: 1s
      timeout: 900ms
      rise: 2
      fall: 2
`, cert)
	svc := tlsService(cert, "")
	lab, agent := startL7(t, agentConfig{ExtraPools: pool, ExtraServices: svc})
	for _, be := range []string{"be1", "be2", "be3"} {
		startTLSBackend(t, lab, be, cert, key)
	}
	states := func() (map[string]string, error) {
		st, err := agent.Status()
		if err != nil {
			return nil, err
		}
		m := map[string]string{}
		for _, p := range st.Pools {
			if p.Name == "tlsweb" {
				for _, b := range p.Backends {
					m[b.Address] = b.State + " " + b.Cause
				}
			}
		}
		return m, nil
	}
	waitState := func(addr, want string) {
		t.Helper()
		waitFor(t, 15*time.Second, addr+" "+want, func() error {
			m, err := states()
			if err != nil {
				return err
			}
			if !strings.HasPrefix(m[addr], want) {
				return fmt.Errorf("%s is %q", addr, m[addr])
			}
			return nil
		})
	}
	// The HTTPS checks pass once the TLS listeners are up.
	for _, a := range []string{"198.18.2.11:8443", "198.18.2.12:8443", "198.18.2.13:8443"} {
		waitState(a, "active")
	}
	url := "http://" + httpVIP + ":81/"
	r := lab.Load("--url", url, "--mode", "keepalive", "--conns", "1", "--count", "30", "--duration", "3s")
	if r.Failures != 0 || r.ByBackend["be3"] == 0 {
		t.Fatalf("through TLS to the backends: %d failures %v, by backend %v", r.Failures, r.Errors, r.ByBackend)
	}

	// be3's checks fail (its /healthz answers 503): ejected by the HTTPS check.
	lab.MustRun("be3", 5*time.Second, "curl", "-sf", "--max-time", "2", "-o", "/dev/null",
		"http://127.0.0.1:8080/control/fail?status=503")
	waitState("198.18.2.13:8443", "ejected health:status")
	r = lab.Load("--url", url, "--mode", "keepalive", "--conns", "1", "--count", "30", "--duration", "3s")
	if r.Failures != 0 || r.ByBackend["be3"] != 0 {
		t.Errorf("be3 ejected by its check: %d failures %v, by backend %v; want none from be3", r.Failures, r.Errors, r.ByBackend)
	}

	// Healthy again: `rise` passing HTTPS checks restore it.
	lab.MustRun("be3", 5*time.Second, "curl", "-sf", "--max-time", "2", "-o", "/dev/null",
		"http://127.0.0.1:8080/control/fail?status=0")
	waitState("198.18.2.13:8443", "active health:passed")
	// The agent logs the config's warnings at start: the suite's config
	// has a tcp service and leaves tcp_established at its default.
	if log := agent.proc.Log(); !strings.Contains(log, `msg="config warning"`) || !strings.Contains(log, "tcp_established") {
		t.Errorf("the agent did not log the tcp_established warning at start")
	}
}
