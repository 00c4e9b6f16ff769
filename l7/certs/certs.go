// Package certs is the certificate set of a TLS listener with many
// sites: a default certificate and more chosen by the client's SNI among
// their DNS names, and the 421 rule for a request that reached a
// connection with another host's certificate.
package certs

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

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

	files Files
	stamp Stamp  // of files, taken before they were read
	info  []Info // the default certificate first, then SNI's in order
}

// Info is what a loaded certificate says of itself: its file, the names
// it covers and when it expires.
type Info struct {
	File     string
	Names    []string // subjectAltName DNS names, else the subject's common name
	NotAfter time.Time
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
	// The stamp first: files replaced while they are read give a Set
	// whose stamp differs from the next one taken, so Changed sees them.
	stamp, err := StampOf(f)
	if err != nil {
		return nil, err
	}
	def, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("load certificate %s: %w", f.Cert, err)
	}
	cs := &Set{def: &def, files: f, stamp: stamp}
	if err := cs.addInfo(f.Cert, &def); err != nil {
		return nil, err
	}
	for _, cf := range f.SNI {
		c, err := tls.LoadX509KeyPair(cf.Cert, cf.Key)
		if err != nil {
			return nil, fmt.Errorf("load certificate %s: %w", cf.Cert, err)
		}
		names, err := CertNames(&c)
		if err != nil {
			return nil, fmt.Errorf("certificate %s: %w", cf.Cert, err)
		}
		if err := cs.addInfo(cf.Cert, &c); err != nil {
			return nil, err
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

// addInfo records what the certificate of file says of itself.
func (cs *Set) addInfo(file string, c *tls.Certificate) error {
	leaf, err := leafOf(c)
	if err != nil {
		return fmt.Errorf("certificate %s: %w", file, err)
	}
	names := leaf.DNSNames
	if len(names) == 0 && leaf.Subject.CommonName != "" {
		names = []string{leaf.Subject.CommonName}
	}
	cs.info = append(cs.info, Info{File: file, Names: names, NotAfter: leaf.NotAfter})
	return nil
}

// leafOf is c's leaf certificate, parsed when the key pair did not keep it.
func leafOf(c *tls.Certificate) (*x509.Certificate, error) {
	if c.Leaf != nil {
		return c.Leaf, nil
	}
	if len(c.Certificate) == 0 {
		return nil, fmt.Errorf("no certificate in the file")
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	return leaf, nil
}

// RenewWithin is how close to its expiry a certificate is reported as one
// to renew (the agent's daily warning, `sluice status`, `sluice check`):
// automated renewals run 30 days before (Let's Encrypt) or at two thirds
// of the lifetime (cert-manager), so a certificate this close to its end
// is one whose renewal failed.
const RenewWithin = 14 * 24 * time.Hour

// Info is each loaded certificate: the default one first, then those
// chosen by SNI, in the order of the files.
func (cs *Set) Info() []Info { return cs.info }

// Files are the files the set was loaded from.
func (cs *Set) Files() Files { return cs.files }

// Changed reports whether the set's files are no longer those it was
// loaded from (rewritten, replaced, or a symbolic link pointed
// elsewhere, as certbot and Kubernetes secret volumes renew them); an
// error when one cannot be looked at (removed, say).
func (cs *Set) Changed() (bool, error) {
	st, err := StampOf(cs.files)
	if err != nil {
		return false, err
	}
	return st != cs.stamp, nil
}

// Stamp identifies the contents of a set of files without reading them:
// each file's device, inode, size, modification and change times (after
// symbolic links).
type Stamp string

// StampOf is the Stamp of f's files.
func StampOf(f Files) (Stamp, error) {
	paths := make([]string, 0, 2+2*len(f.SNI))
	for _, p := range append([]Pair{{f.Cert, f.Key}}, f.SNI...) {
		paths = append(paths, p.Cert, p.Key)
	}
	return StampFiles(paths...)
}

// StampFiles is the Stamp of the files at paths (a CA file, say).
func StampFiles(paths ...string) (Stamp, error) {
	var b strings.Builder
	for _, path := range paths {
		fi, err := os.Stat(path)
		if err != nil {
			return "", fmt.Errorf("certificate file: %w", err)
		}
		fmt.Fprintf(&b, "%s %d %d;", path, fi.Size(), fi.ModTime().UnixNano())
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			fmt.Fprintf(&b, "%d %d %d.%d;", st.Dev, st.Ino, st.Ctim.Sec, st.Ctim.Nsec)
		}
	}
	return Stamp(b.String()), nil
}

// CertNames are the DNS names a certificate covers (its SAN), in lower
// case; an error when it has none (a certificate chosen by SNI must say
// for which names).
func CertNames(c *tls.Certificate) ([]string, error) {
	leaf, err := leafOf(c)
	if err != nil {
		return nil, err
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
