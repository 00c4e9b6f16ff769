package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// With upstream TLS and host: keep, the TLS server name comes from the
// config (upstream.server_name, else the pool's DNS name, else the
// address), never from the client's Host: clients sending Host:
// attacker.invalid get answers and eject nothing.
func TestUpstreamServerNameNotFromClient(t *testing.T) {
	var sni, host atomic.Value
	be := newTLSBackend(t, func(w http.ResponseWriter, r *http.Request) {
		sni.Store(r.TLS.ServerName)
		host.Store(r.Host)
		w.Write([]byte("ok"))
	})
	certPEM, err := os.ReadFile(filepath.Join(tlsBackendDir(t, be), "backend.test.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)
	hostile := func(h *harness) int {
		req, _ := http.NewRequest("GET", h.url+"/", nil)
		req.Host = "attacker.invalid"
		resp, err := h.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}

	t.Run("upstream.server_name verifies", func(t *testing.T) {
		p := newPool(t, nil, be)
		h := start(t, p, func(o *Options) {
			o.Upstream.TLS = &tls.Config{RootCAs: roots, ServerName: "backend.test"}
			ej := testEjection()
			ej.Failures = 2
			o.Ejection = ej
		})
		for range 4 {
			if code := hostile(h); code != 200 {
				t.Fatalf("Host: attacker.invalid: %d, want 200 (the name verified is the configured one)", code)
			}
		}
		if sni.Load() != "backend.test" {
			t.Errorf("backend saw SNI %v, want backend.test", sni.Load())
		}
		if b, _ := p.Backend(be); b.State.String() != "active" {
			t.Errorf("backend %s after requests with a hostile Host", b.State)
		}
	})
	t.Run("no server_name: the address, not the Host", func(t *testing.T) {
		p := newPool(t, nil, be)
		h := start(t, p, func(o *Options) { o.Upstream.TLS = &tls.Config{InsecureSkipVerify: true} })
		code := hostile(h)
		if code != 200 || sni.Load() != "" || host.Load() != "attacker.invalid" {
			t.Errorf("status %d, backend saw SNI %q Host %q; want no SNI (an IP address) and the client's Host passed on",
				code, sni.Load(), host.Load())
		}
	})
}
