package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// The listener presents the certificate of the client's SNI (exact, then
// wildcard, else the default); a request for a host whose certificate is
// another one gets 421 on that connection; a reload swaps the set
// without touching open connections.
func TestSNICertificates(t *testing.T) {
	be := newBackend(t, status(200))
	p := newPool(t, nil, be.addr)
	dir := t.TempDir()
	defCert, defKey := writeCert(t, dir, "default.test")
	aCert, aKey := writeCert(t, dir, "a.test")
	wCert, wKey := writeCert(t, dir, "*.w.test")
	h := start(t, p, func(o *Options) {
		o.TLS = &TLSFiles{Cert: defCert, Key: defKey, SNI: []CertFiles{{Cert: aCert, Key: aKey}, {Cert: wCert, Key: wKey}}}
	})
	addr := strings.TrimPrefix(h.url, "http://")
	served := func(sni string) string {
		c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("handshake with SNI %q: %v", sni, err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].DNSNames[0]
	}
	for sni, want := range map[string]string{
		"a.test": "a.test", "A.TEST": "a.test", "x.w.test": "*.w.test", "y.x.w.test": "default.test",
		"w.test": "default.test", "other.test": "default.test", "": "default.test",
	} {
		if got := served(sni); got != want {
			t.Errorf("SNI %q: certificate for %s, want %s", sni, got, want)
		}
	}

	// One connection (SNI a.test), requests for several hosts.
	var conns int
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{ServerName: "a.test", InsecureSkipVerify: true},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			conns++
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	get := func(host string) int {
		req, _ := http.NewRequest("GET", "https://"+addr+"/", nil)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Errorf("%s: %s, want HTTP/2", host, resp.Proto)
		}
		return resp.StatusCode
	}
	for host, want := range map[string]int{
		"a.test": 200, "a.test:443": 200,
		"x.w.test":     http.StatusMisdirectedRequest, // coalesced onto a.test's connection
		"default.test": http.StatusMisdirectedRequest,
		"other.test":   http.StatusMisdirectedRequest, // the default certificate's host
	} {
		if got := get(host); got != want {
			t.Errorf("host %s on a.test's connection: %d, want %d", host, got, want)
		}
	}
	if conns != 1 {
		t.Errorf("%d connections, want 1 (HTTP/2)", conns)
	}
	if got := get("x.w.test"); got != http.StatusMisdirectedRequest {
		t.Fatalf("x.w.test: %d", got)
	}
	if l := h.access.last(t); l.Status != http.StatusMisdirectedRequest || !strings.Contains(l.Error, "misdirected") {
		t.Errorf("access log: %+v", l)
	}

	// Reload: a.test now has the default certificate; the open connection
	// goes on, new handshakes see the new set.
	if err := h.srv.SetCertificates(TLSFiles{Cert: defCert, Key: defKey, SNI: []CertFiles{{Cert: wCert, Key: wKey}}}); err != nil {
		t.Fatal(err)
	}
	if got := served("a.test"); got != "default.test" {
		t.Errorf("after reload, SNI a.test: %s", got)
	}
	if got := get("other.test"); got != 200 {
		t.Errorf("after reload, other.test on the old connection: %d, want 200 (same certificate now)", got)
	}
	// Two certificates claiming the same name: refused, the old set stays.
	if err := h.srv.SetCertificates(TLSFiles{Cert: defCert, Key: defKey, SNI: []CertFiles{{Cert: aCert, Key: aKey}, {Cert: aCert, Key: aKey}}}); err == nil {
		t.Error("two certificates for a.test: no error")
	}
	if got := served("x.w.test"); got != "*.w.test" {
		t.Errorf("after a refused reload, SNI x.w.test: %s", got)
	}
}

// Renewed certificate files are picked up by RefreshCertificates without
// a reload: new handshakes get the new certificate, open connections keep
// theirs. Files that cannot be loaded (a key from another pair, a file
// removed) keep the certificate served, and a later check tries again.
func TestRefreshCertificates(t *testing.T) {
	be := newBackend(t, status(200))
	dir := t.TempDir()
	certFile, keyFile := writeCert(t, dir, "renew.test")
	h := start(t, newPool(t, nil, be.addr), func(o *Options) { o.TLS = &TLSFiles{Cert: certFile, Key: keyFile} })
	addr := strings.TrimPrefix(h.url, "http://")
	served := func() []byte {
		t.Helper()
		c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "renew.test", InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Raw
	}
	refresh := func(wantLoaded, wantErr bool) {
		t.Helper()
		loaded, err := h.srv.RefreshCertificates()
		if loaded != wantLoaded || (err != nil) != wantErr {
			t.Fatalf("RefreshCertificates: loaded %v, error %v; want loaded %v, an error %v", loaded, err, wantLoaded, wantErr)
		}
	}
	first := served()
	refresh(false, false) // nothing changed
	notAfter := h.srv.Certificates()[0].NotAfter

	// Renewed in place: a new key and certificate, a later expiry.
	time.Sleep(10 * time.Millisecond)
	certFile2, keyFile2 := writeCert(t, t.TempDir(), "renew.test")
	copyFile(t, certFile2, certFile)
	copyFile(t, keyFile2, keyFile)
	refresh(true, false)
	second := served()
	if bytes.Equal(first, second) {
		t.Fatal("the renewed certificate is not served")
	}
	if info := h.srv.Certificates(); len(info) != 1 || info[0].File != certFile || info[0].NotAfter.Before(notAfter) || info[0].Names[0] != "renew.test" {
		t.Errorf("Certificates() = %+v, want the renewed one", info)
	}
	refresh(false, false)

	// Half written: the certificate of another key.
	certFile3, _ := writeCert(t, t.TempDir(), "renew.test")
	copyFile(t, certFile3, certFile)
	refresh(false, true)
	if !bytes.Equal(served(), second) {
		t.Error("a certificate that does not match its key replaced the one served")
	}
	// Removed.
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	refresh(false, true)
	if !bytes.Equal(served(), second) {
		t.Error("a removed key file replaced the certificate served")
	}
	// Put right: loaded.
	copyFile(t, certFile2, certFile)
	copyFile(t, keyFile2, keyFile)
	refresh(true, false)
	if !bytes.Equal(served(), second) {
		t.Error("the certificate put back is not served")
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
