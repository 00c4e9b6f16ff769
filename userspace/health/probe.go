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
	"os"
	"strings"
	"syscall"
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

// clientTLS is an HTTPS check's TLS configuration. The chain is verified
// against VerifyName, which may differ from the SNI sent (nginx's
// proxy_ssl_name sets both; here they are apart, like an upstream's).
func clientTLS(t TLS) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.SNI, NextProtos: []string{"http/1.1"}}
	if !t.Verify {
		tc.InsecureSkipVerify = true
		return tc, nil
	}
	var roots *x509.CertPool
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("health check ca: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("health check ca %s: no PEM certificate found", t.CA)
		}
	}
	name := t.VerifyName
	if name == "" {
		name = t.SNI
	}
	// The standard verification checks ServerName; ours checks name, so
	// it is switched off and done here, in full, for every handshake.
	tc.InsecureSkipVerify = true
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("tls: backend sent no certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter})
		return err
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
	cfg    HTTP
	client *http.Client
}

func newHTTPProber(cfg HTTP) (*httpProber, error) {
	var tc *tls.Config
	if cfg.TLS != nil {
		var err error
		if tc, err = clientTLS(*cfg.TLS); err != nil {
			return nil, err
		}
	}
	tr := &http.Transport{
		TLSClientConfig:        tc,
		Proxy:                  nil, // never the environment's proxy
		DialContext:            (&net.Dialer{}).DialContext,
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
		ForceAttemptHTTP2:      false,
	}
	return &httpProber{
		cfg: cfg,
		client: &http.Client{
			Transport: tr,
			// A 3xx is a status to compare with the range, not a
			// redirect to follow.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
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
	resp, err := p.client.Do(req)
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
