package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeListenerCert writes a self-signed certificate for name expiring at
// notAfter, and its key, into dir.
func writeListenerCert(t *testing.T, dir, name string, notAfter time.Time) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: notAfter.Add(-90 * 24 * time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// check warns of a listener certificate that has expired or expires
// within 14 days (with its line, counted for --strict), and not of one
// that has longer.
func TestCheckCertificateExpiry(t *testing.T) {
	h := newHarness(t, true)
	dir := t.TempDir()
	now := time.Now()
	okCert, okKey := writeListenerCert(t, dir, "ok.test", now.Add(60*24*time.Hour))
	soonCert, soonKey := writeListenerCert(t, dir, "soon.test", now.Add(5*24*time.Hour+time.Hour))
	oldCert, oldKey := writeListenerCert(t, dir, "old.test", now.Add(-time.Hour))
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
