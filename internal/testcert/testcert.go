// Package testcert writes self-signed certificates for tests: a listener's
// certificate and key, or a CA a client trusts.
package testcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Options say what a certificate is for.
type Options struct {
	// CommonName is its subject's common name (default: the first of
	// Names, else "test").
	CommonName string
	// Names are its DNS names (subjectAltName).
	Names []string
	// IPs are its IP addresses (subjectAltName).
	IPs []net.IP
	// NotAfter is when it expires (zero: an hour from now); it is valid
	// from an hour before now (or before NotAfter, when that is past).
	NotAfter time.Time
	// CA marks it a certificate authority (basic constraints).
	CA bool
}

// New makes a self-signed certificate (DER) and its key.
func New(t testing.TB, o Options) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cn := o.CommonName
	switch {
	case cn != "":
	case len(o.Names) > 0:
		cn = o.Names[0]
	default:
		cn = "test"
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = time.Now().Add(time.Hour)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	notBefore := time.Now().Add(-time.Hour)
	if o.NotAfter.Before(notBefore) {
		notBefore = o.NotAfter.Add(-time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     o.Names,
		IPAddresses:  o.IPs,
		NotBefore:    notBefore,
		NotAfter:     o.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if o.CA {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return der, k
}

// Write makes a certificate as New and writes it and its key as PEM files
// base+".crt" and base+".key" in dir.
func Write(t testing.TB, dir, base string, o Options) (certFile, keyFile string) {
	t.Helper()
	der, k := New(t, o)
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, base+".crt"), filepath.Join(dir, base+".key")
	WritePEM(t, certFile, der)
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// WritePEM writes the certificate der to path as PEM (a CA file).
func WritePEM(t testing.TB, path string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
