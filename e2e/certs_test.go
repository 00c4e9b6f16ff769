package e2e

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestL7CertificateRenewed: an https service whose certificate expires in
// five days is warned of (the agent's log and `sluice status`) and
// exported (sluice_l7_certificate_expiry_timestamp_seconds); renewed
// files, renamed into place as certbot and cert-manager do, are served to
// new handshakes within seconds, without `sluice reload`; a renewal that
// leaves a certificate of another key keeps the one served, with a
// warning.
func TestL7CertificateRenewed(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	soon := time.Now().Add(5 * 24 * time.Hour).Truncate(time.Second)
	cert, key := writeTestCertUntil(t, dir, "old.lab", soon)
	lab := newLab(t)
	lab.StartBackends()
	lab.AddLocalVIP(httpVIP)
	agent := lab.StartAgent(agentConfig{ExtraServices: h2Services(cert, key)})
	subjectRE := regexp.MustCompile(`subject: CN=([a-z.]+)`)
	served := func() string {
		out, _ := lab.Run("client", 5*time.Second, "curl", "-skv", "--max-time", "3", "-o", "/dev/null", "https://"+httpVIP+"/")
		if m := subjectRE.FindStringSubmatch(out); m != nil {
			return m[1]
		}
		return "(no handshake)"
	}
	waitFor(t, 10*time.Second, "the https listener", func() error {
		if got := served(); got != "old.lab" {
			return fmt.Errorf("served %s", got)
		}
		return nil
	})
	metric := fmt.Sprintf(`sluice_l7_certificate_expiry_timestamp_seconds{certificate=%q,service="web-tls"}`, cert)
	check := func(when string, want time.Time, names string) {
		t.Helper()
		if values, _ := lab.scrape(); values[metric] != float64(want.Unix()) {
			t.Errorf("%s: %s = %v, want %d", when, metric, values[metric], want.Unix())
		}
		st, err := agent.Status()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st.Services {
			if s.Name != "web-tls" {
				continue
			}
			if len(s.Certificates) != 1 || s.Certificates[0].File != cert || !s.Certificates[0].NotAfter.Equal(want) ||
				strings.Join(s.Certificates[0].Names, ",") != names {
				t.Errorf("%s: status lists the certificates %+v, want %s expiring %v for %s", when, s.Certificates, cert, want, names)
			}
		}
	}
	check("at start", soon, "old.lab")
	out, err := agent.CLI("status")
	if err != nil || !strings.Contains(out, "RENEW") || !strings.Contains(out, "certificate of an https service expires soon") {
		t.Errorf("sluice status does not show the certificate to renew (%v):\n%s", err, out)
	}

	// Renewed: new files written next to the old ones, then renamed over
	// them (the key first).
	later := time.Now().Add(90 * 24 * time.Hour).Truncate(time.Second)
	c2, k2 := writeTestCertUntil(t, t.TempDir(), "new.lab", later)
	for from, to := range map[string]string{k2: key + ".new", c2: cert + ".new"} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(key+".new", key); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(cert+".new", cert); err != nil {
		t.Fatal(err)
	}
	renewed := time.Now()
	waitFor(t, 15*time.Second, "the renewed certificate served", func() error {
		if got := served(); got != "new.lab" {
			return fmt.Errorf("served %s", got)
		}
		return nil
	})
	t.Logf("the renewed certificate served %v after the files were replaced", time.Since(renewed).Round(100*time.Millisecond))
	check("renewed", later, "new.lab")
	if log := agent.proc.Log(); !strings.Contains(log, "certificate files changed: loaded again") {
		t.Error("the agent did not log the certificate loaded again")
	}

	// A renewal gone wrong: a certificate of another key.
	c3, _ := writeTestCertUntil(t, t.TempDir(), "broken.lab", later)
	b, err := os.ReadFile(c3)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cert+".new", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(cert+".new", cert); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the warning of files that cannot be loaded", func() error {
		if !strings.Contains(agent.proc.Log(), "certificate files of an https service changed and cannot be loaded") {
			return fmt.Errorf("not logged yet")
		}
		return nil
	})
	if got := served(); got != "new.lab" {
		t.Errorf("after a broken renewal %s is served, want new.lab (the last one loaded)", got)
	}
	check("after a broken renewal", later, "new.lab")
}
