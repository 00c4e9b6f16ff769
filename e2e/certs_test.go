package e2e

import (
	"fmt"
	"os"
	"path/filepath"
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

// tlsService is the http service "tls-http" on httpVIP:81, to pool
// tlsweb over TLS (server name backend.lab, verified with the CA file
// ca), with extra (YAML lines of its mapping, indented by four) after.
func tlsService(ca, extra string) string {
	return fmt.Sprintf(`  - name: tls-http
    listen: %s:81
    protocol: http
    pool: tlsweb
    upstream: {tls: true, server_name: backend.lab, ca: %s}
`, httpVIP, ca) + extra
}

// startTLSBackend starts a test backend in host be (be1…be3) serving
// HTTPS on :8443 (and HTTP on :8080) with cert and key, and waits for it.
func startTLSBackend(t *testing.T, lab *Lab, be, cert, key string) *Proc {
	t.Helper()
	p := lab.Start(be+"-tls", be, env.backend, "--listen", ":8080", "--tls-listen", ":8443",
		"--tls-cert", cert, "--tls-key", key, "--name", be)
	waitFor(t, 5*time.Second, be+"'s TLS listener", func() error {
		_, err := lab.Run(be, 2*time.Second, "curl", "-sfk", "-o", "/dev/null", "--max-time", "1", "https://127.0.0.1:8443/healthz")
		return err
	})
	return p
}

// TestL7UpstreamCARotated: the CA file an http service verifies its TLS
// backends with (upstream.ca) is read again when it changes, without a
// reload: the new CA added to the bundle, then the backend moved to a
// certificate of the new CA, and no request fails.
func TestL7UpstreamCARotated(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	for _, d := range []string{"a", "b"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	certA, keyA := writeTestCertUntil(t, filepath.Join(dir, "a"), "backend.lab", time.Now().Add(24*time.Hour))
	certB, keyB := writeTestCertUntil(t, filepath.Join(dir, "b"), "backend.lab", time.Now().Add(48*time.Hour))
	ca := filepath.Join(dir, "ca.pem")
	bundle := func(files ...string) {
		t.Helper()
		var all []byte
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, b...)
		}
		if err := os.WriteFile(ca+".new", all, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(ca+".new", ca); err != nil {
			t.Fatal(err)
		}
	}
	bundle(certA)
	pool := `  - name: tlsweb
    backends:
      - address: 198.18.2.11:8443
`
	svc := tlsService(ca, "")
	lab, agent := startL7(t, agentConfig{ExtraPools: pool, ExtraServices: svc})
	be := startTLSBackend(t, lab, "be1", certA, keyA)
	url := fmt.Sprintf("http://%s:81/", httpVIP)
	if r := lab.curl("GET", url); r.Code != 200 {
		t.Fatalf("through the TLS upstream: %d, want 200", r.Code)
	}

	// The new CA joins the bundle: read again within seconds.
	bundle(certA, certB)
	waitFor(t, 15*time.Second, "the CA file read again", func() error {
		if !strings.Contains(agent.proc.Log(), "upstream CA file changed: read again") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	// The backend moves to a certificate of the new CA.
	be.Stop(3 * time.Second)
	startTLSBackend(t, lab, "be1", certB, keyB)
	for i := range 5 {
		if r := lab.curl("GET", url); r.Code != 200 {
			t.Errorf("request %d after the backend moved to the new CA: %d, want 200", i, r.Code)
		}
	}
	// The old CA leaves the bundle: still served.
	bundle(certB)
	waitFor(t, 15*time.Second, "the CA file read again", func() error {
		if n := strings.Count(agent.proc.Log(), "upstream CA file changed: read again"); n < 2 {
			return fmt.Errorf("read again %d times", n)
		}
		return nil
	})
	for i := range 3 {
		if r := lab.curl("GET", url+"?after=1"); r.Code != 200 {
			t.Errorf("request %d with the new CA alone: %d, want 200", i, r.Code)
		}
	}
}
