package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"syscall"

	"github.com/sluicelb/sluice/l7/certs"
	"github.com/sluicelb/sluice/l7/upstream"
)

// prober runs one check; ctx carries the check's deadline.
type prober interface {
	probe(ctx context.Context, addr netip.AddrPort) (kind string, status int, err error)
}

func newProber(cfg Config) (prober, error) {
	if cfg.HTTP == nil {
		return tcpProber{}, nil
	}
	return newHTTPProber(*cfg.HTTP)
}

// clientTLS is an HTTPS check's TLS configuration: built as the proxy's
// upstream one is (l7/upstream.ClientTLS), so a check verifies what
// traffic verifies; the certificate is verified against VerifyName, which
// may differ from the SNI sent. HTTP/1.1 only.
func clientTLS(t TLS) (*tls.Config, error) {
	tc, err := upstream.ClientTLS(upstream.TLSOptions{
		CA: t.CA, InsecureSkipVerify: !t.Verify, ServerName: t.SNI, VerifyName: t.VerifyName,
		NextProtos: []string{"http/1.1"},
	})
	if err != nil {
		return nil, fmt.Errorf("health check %w", err)
	}
	return tc, nil
}

// tcpProber passes when a TCP connection is established; it is closed at
// once.
type tcpProber struct{}

func (tcpProber) probe(ctx context.Context, addr netip.AddrPort) (string, int, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return classify(ctx, err), 0, fmt.Errorf("connect %s: %w", addr, err)
	}
	_ = conn.Close()
	return KindPass, 0, nil
}

// httpProber sends a GET over a fresh connection per check: keep-alives
// are off, so the connection is closed after the response, and a check
// never rides on a connection an earlier one opened.
type httpProber struct {
	cfg HTTP

	mu      sync.Mutex
	client  *http.Client
	caStamp certs.Stamp // of cfg.TLS.CA when client was built ("" without one)
}

func newHTTPProber(cfg HTTP) (*httpProber, error) {
	p := &httpProber{cfg: cfg}
	if err := p.build(); err != nil {
		return nil, err
	}
	return p, nil
}

// build makes the prober's client, its CA file (if any) read now (its
// stamp taken first: a file changed while it is read is read again).
func (p *httpProber) build() error {
	var tc *tls.Config
	var stamp certs.Stamp
	if t := p.cfg.TLS; t != nil {
		if t.CA != "" {
			stamp, _ = certs.StampFiles(t.CA)
		}
		var err error
		if tc, err = clientTLS(*t); err != nil {
			return err
		}
	}
	p.client, p.caStamp = newProbeClient(tc), stamp
	return nil
}

// current is the client for a check: built again first when the CA file
// changed since (a rotated CA is trusted by the next check, as by the
// proxy's backend connections); a file that cannot be read now keeps the
// CAs read before.
func (p *httpProber) current() *http.Client {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t := p.cfg.TLS; t != nil && t.CA != "" {
		if st, err := certs.StampFiles(t.CA); err == nil && st != p.caStamp {
			_ = p.build() // on an error the client stays as it was
		}
	}
	return p.client
}

// newProbeClient is a checks' client: a fresh connection per check, tc
// for HTTPS (nil: plain HTTP).
func newProbeClient(tc *tls.Config) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:        tc,
		Proxy:                  nil, // never the environment's proxy
		DialContext:            (&net.Dialer{}).DialContext,
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
		ForceAttemptHTTP2:      false,
	}
	return &http.Client{
		Transport: tr,
		// A 3xx is a status to compare with the range, not a redirect to
		// follow.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func (p *httpProber) probe(ctx context.Context, addr netip.AddrPort) (string, int, error) {
	scheme := "http://"
	if p.cfg.TLS != nil {
		scheme = "https://"
	}
	target := scheme + addr.String() + p.cfg.Path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return KindRead, 0, fmt.Errorf("health check request %s: %w", target, err)
	}
	if p.cfg.Host != "" {
		req.Host = p.cfg.Host
	}
	req.Header.Set("User-Agent", "sluice-health-check")
	req.Close = true
	resp, err := p.current().Do(req)
	if err != nil {
		return classify(ctx, err), 0, fmt.Errorf("GET %s: %w", target, unwrapURL(err))
	}
	defer resp.Body.Close()
	// The response counts in full (up to MaxBody) within the deadline: a
	// backend that sends its headers and then hangs is not healthy.
	if _, err := io.CopyN(io.Discard, resp.Body, MaxBody); err != nil && !errors.Is(err, io.EOF) {
		return classify(ctx, err), resp.StatusCode, fmt.Errorf("GET %s: read body: %w", target, err)
	}
	if resp.StatusCode < p.cfg.ExpectLo || resp.StatusCode > p.cfg.ExpectHi {
		return KindStatus, resp.StatusCode, fmt.Errorf("GET %s: status %d, expected %d-%d", target, resp.StatusCode, p.cfg.ExpectLo, p.cfg.ExpectHi)
	}
	return KindPass, resp.StatusCode, nil
}

// unwrapURL drops *url.Error's quoting of the URL, which the message
// already has.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		return ue.Err
	}
	return err
}

// classify names a failed check's error.
func classify(ctx context.Context, err error) string {
	var ne net.Error
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded),
		errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return KindTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return KindRefused
	case upstream.LocalFailure(err):
		return KindLocal
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return KindConnect
	}
	var (
		ve *tls.CertificateVerificationError
		ae tls.AlertError
		he x509.HostnameError
		ue x509.UnknownAuthorityError
		ie x509.CertificateInvalidError
		re tls.RecordHeaderError
	)
	if errors.As(err, &ve) || errors.As(err, &ae) || errors.As(err, &he) || errors.As(err, &ue) ||
		errors.As(err, &ie) || errors.As(err, &re) ||
		// net/http turns a plain HTTP answer to the client hello into
		// this error, with no type of its own.
		strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return KindTLS
	}
	return KindRead
}
