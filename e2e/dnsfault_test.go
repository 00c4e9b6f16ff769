package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

const twoBackends = "backend.lab. 1 A 198.18.2.11\nbackend.lab. 1 A 198.18.2.12\n"

// assertServesBe1Be2 runs new connections for about d and checks none fails,
// they go to be1 and be2 only, and both stay active (nothing drains).
func assertServesBe1Be2(t *testing.T, lab *Lab, agent *Agent, what string, d time.Duration) {
	t.Helper()
	r := lab.Load("--url", vipURL, "--mode", "newconn", "--interval", "50ms",
		"--count", fmt.Sprint(int(d/(50*time.Millisecond))), "--duration", (2*d + 5*time.Second).String(), "--timeout", "2s")
	assertNoFailures(t, what, r)
	if r.ByBackend["be1"] == 0 || r.ByBackend["be2"] == 0 || r.ByBackend["be3"] != 0 {
		t.Errorf("%s: answered by %v, want be1 and be2 (the last good answer)", what, r.ByBackend)
	}
	st, err := agent.poolBackends()
	if err != nil {
		t.Fatal(err)
	}
	for _, be := range []string{"be1", "be2"} {
		if b := st[backendAddr[be]]; b.State != "active" {
			t.Errorf("%s: %s is %q (%s), want active", what, be, b.State, b.Cause)
		}
	}
}

// dnsFailures is sluice_dns_failures_total of kind, summed over names.
func (l *Lab) dnsFailures(kind string) float64 {
	m, _ := l.scrape()
	return sumMetric(m, "sluice_dns_failures_total{", `kind="`+kind+`"`)
}

// TestDNSFaults: backend.lab answers be1+be2; then the DNS server answers
// SERVFAIL, then garbage, then is stopped. Each fault is seen by the agent
// (counted by kind) and traffic keeps flowing to the last good addresses;
// nothing drains.
func TestDNSFaults(t *testing.T) {
	parallel(t)
	lab := newLab(t)
	lab.StartBackends()
	dns := lab.StartDNS(twoBackends)
	agent := lab.StartAgent(agentConfig{DNSName: "backend.lab", DrainTimeout: 2 * time.Second})
	agent.waitStates(t, 10*time.Second, map[string]string{backendAddr["be1"]: "active", backendAddr["be2"]: "active"})
	assertServesBe1Be2(t, lab, agent, "before any fault", time.Second)

	for _, mode := range []string{"servfail", "garbage"} {
		before := lab.dnsFailures(mode)
		dns.Set(twoBackends + "backend.lab. mode " + mode + "\n")
		// Lookups back off after failures: wait until this fault was seen.
		waitFor(t, 20*time.Second, "a lookup answered "+mode, func() error {
			if lab.dnsFailures(mode) <= before {
				return fmt.Errorf("sluice_dns_failures_total{kind=%q} did not move", mode)
			}
			return nil
		})
		assertServesBe1Be2(t, lab, agent, "DNS answering "+mode, 2*time.Second)
	}

	// The server stops: queries get nothing back.
	m0, _ := lab.scrape()
	lab.proc("dns").Stop(3 * time.Second)
	waitFor(t, 30*time.Second, "a lookup failing with the server stopped", func() error {
		m, _ := lab.scrape()
		if sumMetric(m, "sluice_dns_failures_total{") <= sumMetric(m0, "sluice_dns_failures_total{") {
			return fmt.Errorf("no lookup failure counted yet")
		}
		return nil
	})
	assertServesBe1Be2(t, lab, agent, "DNS server stopped", 3*time.Second)
	m, _ := lab.scrape()
	for k, v := range m {
		if strings.HasPrefix(k, "sluice_dns_failures_total{") {
			t.Logf("%s %v", k, v)
		}
	}
}

// TestDNSNXDomainHold: NXDOMAIN is an answer, not a fault, but a name that
// vanishes for a moment must not empty the pool: traffic keeps flowing to
// the last good addresses for dns.nxdomain_hold, then they drain.
func TestDNSNXDomainHold(t *testing.T) {
	parallel(t)
	const hold = 3 * time.Second
	lab := newLab(t)
	lab.StartBackends()
	dns := lab.StartDNS(twoBackends)
	agent := lab.StartAgent(agentConfig{DNSName: "backend.lab", DrainTimeout: 2 * time.Second, NXDomainHold: hold})
	agent.waitStates(t, 10*time.Second, map[string]string{backendAddr["be1"]: "active", backendAddr["be2"]: "active"})

	before := lab.dnsFailures("nxdomain")
	dns.Set("backend.lab. mode nxdomain\n")
	var first time.Time
	waitFor(t, 10*time.Second, "a lookup answered NXDOMAIN", func() error {
		if lab.dnsFailures("nxdomain") <= before {
			return fmt.Errorf("sluice_dns_failures_total{kind=\"nxdomain\"} did not move")
		}
		first = time.Now()
		return nil
	})
	// Within the hold: traffic as before.
	assertServesBe1Be2(t, lab, agent, "NXDOMAIN within nxdomain_hold", hold-time.Second)

	var drainedAt time.Time
	waitFor(t, hold+5*time.Second, "be1 and be2 draining after the hold", func() error {
		st, err := agent.poolBackends()
		if err != nil {
			return err
		}
		for _, be := range []string{"be1", "be2"} {
			if s := st[backendAddr[be]].State; s == "active" {
				return fmt.Errorf("%s still %s", be, s)
			}
		}
		drainedAt = time.Now()
		return nil
	})
	// first is when the metric was seen to move: the NXDOMAIN came before.
	held := drainedAt.Sub(first)
	t.Logf("addresses drained %s after the first NXDOMAIN was seen (hold %s)", held.Round(time.Millisecond), hold)
	if held < hold-time.Second-200*time.Millisecond {
		t.Errorf("addresses drained %s after the first NXDOMAIN, before nxdomain_hold (%s)", held, hold)
	}
	if held > hold+3*time.Second {
		t.Errorf("addresses drained %s after the first NXDOMAIN, long after nxdomain_hold (%s)", held, hold)
	}

	// The name is back: so are its addresses.
	dns.Set(twoBackends)
	agent.waitStates(t, 20*time.Second, map[string]string{backendAddr["be1"]: "active", backendAddr["be2"]: "active"})
	assertServesBe1Be2(t, lab, agent, "name answering again", time.Second)
}
