package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"syscall"
)

// prober runs one check; ctx carries the check's deadline.
type prober interface {
	probe(ctx context.Context, addr netip.AddrPort) (kind string, status int, err error)
}

func newProber(cfg Config) prober {
	if cfg.HTTP == nil {
		return tcpProber{}
	}
	return newHTTPProber(*cfg.HTTP)
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

func newHTTPProber(cfg HTTP) *httpProber {
	tr := &http.Transport{
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
	}
}

func (p *httpProber) probe(ctx context.Context, addr netip.AddrPort) (string, int, error) {
	target := "http://" + addr.String() + p.cfg.Path
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
	return KindRead
}
