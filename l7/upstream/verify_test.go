package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/testcert"
)

// A backend whose certificate is for backend.internal, reached with SNI
// api.example: verified as backend.internal it passes; verified as its
// SNI (the default) or as another name it fails; a forged certificate
// for the right name fails too.
func TestVerifyName(t *testing.T) {
	serve := func(name string) (string, *x509.Certificate) {
		der, k := testcert.New(t, testcert.Options{Names: []string{name}})
		leaf, _ := x509.ParseCertificate(der)
		l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: k}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() { c.(*tls.Conn).Handshake(); c.Close() }()
			}
		}()
		return l.Addr().String(), leaf
	}
	addr, leaf := serve("backend.internal")
	forged, _ := serve("backend.internal") // same name, not the trusted key
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	base := &tls.Config{RootCAs: roots, ServerName: "api.example"}
	dial := func(cfg *tls.Config, a string) error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", a, cfg)
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(base, addr); err == nil {
		t.Error("verified as the SNI api.example: no error")
	}
	ok, err := VerifyName(base, "backend.internal")
	if err != nil {
		t.Fatal(err)
	}
	if err := dial(ok, addr); err != nil {
		t.Errorf("verified as backend.internal: %v", err)
	}
	if err := dial(ok, forged); err == nil || !strings.Contains(err.Error(), "verified as backend.internal") {
		t.Errorf("forged certificate: %v", err)
	}
	other, _ := VerifyName(base, "other.internal")
	if err := dial(other, addr); err == nil {
		t.Error("verified as other.internal: no error")
	}
	if base.InsecureSkipVerify || base.VerifyConnection != nil {
		t.Error("VerifyName changed its argument")
	}
	if _, err := VerifyName(&tls.Config{InsecureSkipVerify: true}, "x"); err == nil {
		t.Error("VerifyName with verification off: no error")
	}
}

// ClientTLS: the CA file is loaded (a file without a certificate is an
// error), verify_name makes the handshake verify that name, and it is
// refused with verification off.
func TestClientTLS(t *testing.T) {
	dir := t.TempDir()
	empty := dir + "/empty.pem"
	if err := os.WriteFile(empty, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ClientTLS(TLSOptions{CA: empty}); err == nil || !strings.Contains(err.Error(), "ca: ") || !strings.Contains(err.Error(), "no PEM certificate found") {
		t.Errorf("CA without a certificate: %v", err)
	}
	if _, err := ClientTLS(TLSOptions{CA: dir + "/missing.pem"}); err == nil || !strings.Contains(err.Error(), "read CA file") {
		t.Errorf("missing CA file: %v", err)
	}
	if _, err := ClientTLS(TLSOptions{InsecureSkipVerify: true, VerifyName: "a.example"}); err == nil {
		t.Error("verify_name with verification off accepted")
	}
	tc, err := ClientTLS(TLSOptions{ServerName: "sni.example", NextProtos: []string{"http/1.1"}})
	if err != nil || tc.MinVersion != tls.VersionTLS12 || tc.ServerName != "sni.example" || tc.InsecureSkipVerify || tc.VerifyConnection != nil || tc.NextProtos[0] != "http/1.1" {
		t.Errorf("plain: %+v, %v", tc, err)
	}
	tc, err = ClientTLS(TLSOptions{VerifyName: "backend.internal"})
	if err != nil || !tc.InsecureSkipVerify || tc.VerifyConnection == nil {
		t.Errorf("verify_name: the handshake's check must be replaced by VerifyConnection: %+v, %v", tc, err)
	}
}
