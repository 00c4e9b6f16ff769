package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/testcert"
)

// check warns of a listener certificate that has expired or expires
// within 14 days (with its line, counted for --strict), and not of one
// that has longer.
func TestCheckCertificateExpiry(t *testing.T) {
	h := newHarness(t, true)
	dir := t.TempDir()
	now := time.Now()
	okCert, okKey := testcert.Write(t, dir, "ok", testcert.Options{Names: []string{"ok.test"}, NotAfter: now.Add(60 * 24 * time.Hour)})
	soonCert, soonKey := testcert.Write(t, dir, "soon", testcert.Options{Names: []string{"soon.test"}, NotAfter: now.Add(5*24*time.Hour + time.Hour)})
	oldCert, oldKey := testcert.Write(t, dir, "old", testcert.Options{Names: []string{"old.test"}, NotAfter: now.Add(-time.Hour)})
	cfg := filepath.Join(dir, "sluice.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`interfaces: [veth0]
datapath: {conntrack_timeouts: {tcp_established: 2h}}
pools:
  - name: web
    backends:
      - address: 198.18.2.11:80
services:
  - name: ok
    listen: 198.18.1.100:443
    protocol: http
    pool: web
    tls: {cert: %s, key: %s}
  - name: front
    listen: 198.18.1.101:443
    protocol: http
    pool: web
    tls:
      cert: %s
      key: %s
      certificates:
        - {cert: %s, key: %s}
`, okCert, okKey, soonCert, soonKey, oldCert, oldKey)), 0o600)

	code, out, stderr := h.run("check", "-c", cfg)
	if code != exitOK || !strings.Contains(out, "2 warnings") {
		t.Errorf("check: exit %d stdout %q", code, out)
	}
	want := []string{
		cfg + ":13: services[1].tls: warning: certificate " + soonCert + " expires ",
		", in 5d: renew it",
		cfg + ":13: services[1].tls: warning: certificate " + oldCert + " expired ",
		"clients refuse the handshake",
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("check: stderr lacks %q:\n%s", w, stderr)
		}
	}
	if strings.Contains(stderr, okCert) {
		t.Errorf("check warned of a certificate 60 days from its end:\n%s", stderr)
	}
	if code, _, _ := h.run("check", "--strict", "-c", cfg); code != exitFailure {
		t.Errorf("check --strict with expiring certificates: exit %d, want %d", code, exitFailure)
	}
}
