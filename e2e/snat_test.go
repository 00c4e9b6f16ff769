package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestSNATSamePort: in snat mode two clients using the same source port
// towards the same backend get distinct translated ports, so both
// connections work side by side; the backends have no route back to the
// clients at all.
func TestSNATSamePort(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	for _, be := range []string{"be1", "be2", "be3"} {
		lab.MustRun(be, 5*time.Second, "ip", "route", "del", "198.18.0.0/15")
	}
	// A second client address on the client's link.
	lab.MustRun("client", 5*time.Second, "ip", "addr", "add", "198.18.0.3/24", "dev", "eth0")
	// One backend: both connections must land on it.
	lab.StartAgent(agentConfig{Mode: "snat", Backends: []string{"be1"}})
	r := lab.Load("--url", vipURL, "--mode", "newconn", "--count", "3", "--duration", "20s", "--timeout", "2s")
	assertNoFailures(t, "snat probe", r)

	dir := t.TempDir()
	script := fmt.Sprintf(`for src in 198.18.0.2 198.18.0.3; do
  curl -s --max-time 8 --interface $src --local-port 41234 -D %[1]s/$src.h -o %[1]s/$src.b %[2]sstream?seconds=2 &
done
wait`, dir, vipURL)
	lab.MustRun("client", 15*time.Second, "bash", "-c", script)
	peers := map[string]bool{}
	for _, src := range []string{"198.18.0.2", "198.18.0.3"} {
		h, _ := lab.Run("client", 5*time.Second, "cat", dir+"/"+src+".h")
		b, _ := lab.Run("client", 5*time.Second, "cat", dir+"/"+src+".b")
		lines := strings.Count(b, "be1 ")
		if lines < 19 {
			t.Errorf("client %s:41234: %d of ~20 stream lines from be1, want the whole stream:\n%s%s", src, lines, h, b)
		}
		for _, line := range strings.Split(h, "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "X-Client-Addr") {
				peers[strings.TrimSpace(v)] = true
			}
		}
	}
	if len(peers) != 2 {
		t.Errorf("be1 saw peers %v for two clients with the same source port, want two distinct translated addresses", peers)
	}
	for p := range peers {
		if !strings.HasPrefix(p, "198.18.2.1:") {
			t.Errorf("be1 saw peer %s, want sluice's snat source 198.18.2.1", p)
		}
	}
	m, _ := lab.scrape()
	if f := m[`sluice_service_snat_failures_total{service="web-l4"}`]; f != 0 {
		t.Errorf("snat port allocation failures: %v", f)
	}
}
