package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

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
