// Package certs is the certificate set of a TLS listener with many
// sites: a default certificate and more chosen by the client's SNI among
// their DNS names, and the 421 rule for a request that reached a
// connection with another host's certificate.
package certs

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strings"

	"github.com/sluicelb/sluice/l7/route"
)

// Set is the certificates of a TLS listener: the default one, and
// more chosen by the client's SNI among the DNS names of their
// certificates (exact names first, then a wildcard covering one label, as
// certificate verification does). Handshakes read the set through an
// atomic pointer, so a reload swaps it without touching open connections.
type Set struct {
	def   *tls.Certificate
	exact map[string]*tls.Certificate
	wild  map[string]*tls.Certificate // "example.com" for *.example.com
}

// Files are a listener's certificate files (PEM): the default
// certificate and key, and those chosen by SNI. No two of SNI may cover
// the same name.
type Files struct {
	Cert, Key string
	SNI       []Pair
}

// Pair is one certificate (chain) and its key.
type Pair struct{ Cert, Key string }

// Load reads a listener's certificate files.
func Load(f Files) (*Set, error) {
	def, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("load certificate %s: %w", f.Cert, err)
	}
	cs := &Set{def: &def}
	for _, cf := range f.SNI {
		c, err := tls.LoadX509KeyPair(cf.Cert, cf.Key)
		if err != nil {
			return nil, fmt.Errorf("load certificate %s: %w", cf.Cert, err)
		}
		names, err := CertNames(&c)
		if err != nil {
			return nil, fmt.Errorf("certificate %s: %w", cf.Cert, err)
		}
		if cs.exact == nil {
			cs.exact, cs.wild = make(map[string]*tls.Certificate), make(map[string]*tls.Certificate)
		}
		for _, n := range names {
			m, key := cs.exact, n
			if rest, ok := strings.CutPrefix(n, "*."); ok {
				m, key = cs.wild, rest
			}
			if other, dup := m[key]; dup && other != &c {
				return nil, fmt.Errorf("certificate %s: name %s is covered by another certificate of the listener too", cf.Cert, n)
			}
			m[key] = &c
		}
	}
	return cs, nil
}

// CertNames are the DNS names a certificate covers (its SAN), in lower
// case; an error when it has none (a certificate chosen by SNI must say
// for which names).
func CertNames(c *tls.Certificate) ([]string, error) {
	leaf := c.Leaf
	if leaf == nil {
		if len(c.Certificate) == 0 {
			return nil, fmt.Errorf("no certificate in the file")
		}
		var err error
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parse: %w", err)
		}
	}
	if len(leaf.DNSNames) == 0 {
		return nil, fmt.Errorf("no DNS name (subjectAltName): it cannot be chosen by SNI")
	}
	out := make([]string, 0, len(leaf.DNSNames))
	for _, n := range leaf.DNSNames {
		out = append(out, strings.ToLower(strings.TrimSuffix(n, ".")))
	}
	return out, nil
}

// Pick is the certificate for a server name (SNI, or a request's host).
func (cs *Set) Pick(name string) *tls.Certificate {
	if cs.exact == nil {
		return cs.def
	}
	name = route.NormalizeHost(name)
	if c := cs.exact[name]; c != nil {
		return c
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if c := cs.wild[name[i+1:]]; c != nil {
			return c
		}
	}
	return cs.def
}

// Misdirected reports whether a request for host on a connection whose
// client asked for sni (TLS) must get 421 Misdirected Request: the
// listener would have presented another certificate for host. A client
// that reuses a connection for another host its certificate happens to
// cover (HTTP/2 connection coalescing, RFC 9113 9.1.1) is sent to open a
// connection of its own, with the certificate, and so the site, meant
// for that host. With one certificate nothing is misdirected.
func (cs *Set) Misdirected(sni, host string) bool {
	return cs.exact != nil && cs.Pick(sni) != cs.Pick(host)
}
