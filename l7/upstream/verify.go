package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// TLSOptions are the TLS settings of connections to backends: an http
// service's upstream block and an HTTPS health check take the same keys
// (ca, insecure_skip_verify, server_name, verify_name), and both build
// their tls.Config with ClientTLS, so a check verifies exactly as the
// proxy does.
type TLSOptions struct {
	// CA is a PEM file of the CAs to trust instead of the system's.
	CA string
	// InsecureSkipVerify accepts any certificate.
	InsecureSkipVerify bool
	// ServerName is the SNI sent (and verified unless VerifyName says
	// another name); "" leaves it to the caller (the proxy sets it per
	// connection).
	ServerName string
	// VerifyName is the name the certificate must carry when it is not
	// the server name (see VerifyName).
	VerifyName string
	// NextProtos are offered in ALPN.
	NextProtos []string
}

// ClientTLS builds the tls.Config of o: TLS 1.2 or later, the CAs of
// o.CA, and verification against o.VerifyName when set.
func ClientTLS(o TLSOptions) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.ServerName, NextProtos: o.NextProtos,
		InsecureSkipVerify: o.InsecureSkipVerify}
	if o.CA != "" {
		roots, err := LoadCAs(o.CA)
		if err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		tc.RootCAs = roots
	}
	if o.VerifyName == "" {
		return tc, nil
	}
	return VerifyName(tc, o.VerifyName)
}

// LoadCAs reads a PEM file of CA certificates into a pool.
func LoadCAs(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate found", file)
	}
	return pool, nil
}

// VerifyName returns cfg verifying the backends' certificates against
// name instead of the server name sent as SNI (nginx proxy_ssl_name sets
// both; Envoy's sni and match_subject_alt_names are apart): the chain is
// verified against cfg.RootCAs (nil: the system's) as the handshake would,
// then the leaf against name. cfg is not changed. Only for a cfg that
// verifies (InsecureSkipVerify false): it is an error otherwise.
func VerifyName(cfg *tls.Config, name string) (*tls.Config, error) {
	if cfg.InsecureSkipVerify {
		return nil, errors.New("verify_name with verification off")
	}
	if name == "" {
		return nil, errors.New("verify_name is empty")
	}
	c := cfg.Clone()
	roots := cfg.RootCAs
	// The handshake's own verification is replaced by VerifyConnection,
	// which does the same with another name: never skipped.
	c.InsecureSkipVerify = true
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the backend sent no certificate")
		}
		inter := x509.NewCertPool()
		for _, ic := range cs.PeerCertificates[1:] {
			inter.AddCert(ic)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
			DNSName: name, Roots: roots, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if err != nil {
			return fmt.Errorf("backend certificate (verified as %s): %w", name, err)
		}
		return nil
	}
	return c, nil
}
