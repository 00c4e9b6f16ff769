package health

import (
	"context"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/testcert"
	"github.com/sluicelb/sluice/userspace/config"
)

// tlsBackend is an HTTPS server (httptest's certificate: example.com,
// 127.0.0.1) that records the SNI of each handshake; ca is its
// certificate as a PEM file.
type tlsBackend struct {
	addr netip.AddrPort
	ca   string
	mu   sync.Mutex
	snis []string
}

func newTLSBackend(t *testing.T) *tlsBackend {
	t.Helper()
	b := &tlsBackend{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.snis = append(b.snis, r.TLS.ServerName)
		b.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point
	srv.StartTLS()
	t.Cleanup(srv.Close)
	b.addr = netip.MustParseAddrPort(srv.Listener.Addr().String())
	b.ca = filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(b.ca, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *tlsBackend) lastSNI() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.snis) == 0 {
		return ""
	}
	return b.snis[len(b.snis)-1]
}

// Issue 16: health checks over TLS, with the SNI and the verified name
// apart (an upstream's names), failures of the handshake as kind tls.
func TestHTTPSProbe(t *testing.T) {
	tb := newTLSBackend(t)
	plain := newBackend(t)
	tests := []struct {
		name    string
		tls     *TLS
		addr    netip.AddrPort
		kind    string
		sni     string // seen by the backend on a pass
		errText string
	}{
		{name: "verified against the sni", tls: &TLS{SNI: "example.com", CA: tb.ca, Verify: true}, addr: tb.addr, kind: KindPass, sni: "example.com"},
		{name: "sni and verify_name apart", tls: &TLS{SNI: "internal-api.lab", VerifyName: "example.com", CA: tb.ca, Verify: true}, addr: tb.addr, kind: KindPass, sni: "internal-api.lab"},
		{name: "wrong name", tls: &TLS{SNI: "other.example", CA: tb.ca, Verify: true}, addr: tb.addr, kind: KindTLS, errText: "other.example"},
		{name: "unknown CA", tls: &TLS{SNI: "example.com", Verify: true}, addr: tb.addr, kind: KindTLS, errText: "unknown authority"},
		{name: "verify false", tls: &TLS{SNI: "anything.lab"}, addr: tb.addr, kind: KindPass, sni: "anything.lab"},
		{name: "https to a plain backend", tls: &TLS{SNI: "example.com", CA: tb.ca, Verify: true}, addr: plain.addr, kind: KindTLS},
		{name: "plain http to a tls backend", addr: tb.addr, kind: KindStatus},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := httpConfig(2 * time.Second)
			h := *cfg.HTTP
			h.TLS = tt.tls
			cfg.HTTP = &h
			c := newChecker(t, context.Background(), cfg, nil, Options{})
			r := c.Probe(context.Background(), tt.addr)
			if r.Kind != tt.kind {
				t.Fatalf("kind %q (status %d, err %v), want %q", r.Kind, r.Status, r.Err, tt.kind)
			}
			if tt.errText != "" && (r.Err == nil || !strings.Contains(r.Err.Error(), tt.errText)) {
				t.Errorf("err %v, want it to mention %q", r.Err, tt.errText)
			}
			if tt.sni != "" && tb.lastSNI() != tt.sni {
				t.Errorf("backend saw SNI %q, want %q", tb.lastSNI(), tt.sni)
			}
		})
	}
}

func TestHTTPSFromConfig(t *testing.T) {
	hc := &config.HealthCheck{
		HTTP:     &config.HTTPCheck{Path: "/", Expect: "200", TLS: true, ServerName: "a.lab", VerifyName: "b.lab", CA: "/x.pem"},
		Interval: config.Duration(time.Second), Timeout: config.Duration(time.Second / 2), Rise: 1, Fall: 1,
	}
	c, err := FromConfig(hc)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := *c.HTTP.TLS, (TLS{SNI: "a.lab", VerifyName: "b.lab", CA: "/x.pem", Verify: true}); got != want {
		t.Errorf("tls %+v, want %+v", got, want)
	}
	hc.HTTP.InsecureSkipVerify = true
	if c, _ = FromConfig(hc); c.HTTP.TLS.Verify {
		t.Error("insecure_skip_verify not carried")
	}
	// Verification without a name cannot work: refused.
	hc.HTTP.InsecureSkipVerify, hc.HTTP.ServerName, hc.HTTP.VerifyName = false, "", ""
	if _, err := FromConfig(hc); err == nil {
		t.Error("verified HTTPS check without a name accepted")
	}
	// A CA file that does not exist fails the checker, not each check.
	hc.HTTP.ServerName = "a.lab"
	c, _ = FromConfig(hc)
	if _, err := New(context.Background(), c, func(netip.AddrPort, bool, string) {}, Options{}); err == nil || !strings.Contains(err.Error(), "ca") {
		t.Errorf("New with a missing CA file: %v", err)
	}
}

// A CA file rewritten (a rotated CA) is read again by the next check; one
// that cannot be read then keeps the CAs read before.
func TestHTTPSProbeCARotated(t *testing.T) {
	tb := newTLSBackend(t)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	// Another certificate than the one tb presents (every httptest server
	// has the same).
	der, _ := testcert.New(t, testcert.Options{CommonName: "other CA", CA: true})
	other := struct{ ca string }{filepath.Join(t.TempDir(), "other.pem")}
	testcert.WritePEM(t, other.ca, der)
	copyCA := func(from string) {
		t.Helper()
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(ca, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	copyCA(other.ca)
	cfg := httpConfig(2 * time.Second)
	h := *cfg.HTTP
	h.TLS = &TLS{SNI: "example.com", CA: ca, Verify: true}
	cfg.HTTP = &h
	c := newChecker(t, context.Background(), cfg, nil, Options{})
	if r := c.Probe(context.Background(), tb.addr); r.Kind != KindTLS {
		t.Fatalf("with a CA that did not sign the backend: kind %q (%v), want %q", r.Kind, r.Err, KindTLS)
	}
	copyCA(tb.ca)
	if r := c.Probe(context.Background(), tb.addr); r.Kind != KindPass {
		t.Fatalf("after the CA file was rewritten: kind %q (%v), want %q", r.Kind, r.Err, KindPass)
	}
	if err := os.WriteFile(ca, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := c.Probe(context.Background(), tb.addr); r.Kind != KindPass {
		t.Errorf("after the CA file was broken: kind %q (%v), want the CAs read before (%q)", r.Kind, r.Err, KindPass)
	}
}
