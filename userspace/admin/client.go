package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Default client timeouts, per call.
const (
	DefaultTimeout       = 10 * time.Second
	DefaultReloadTimeout = 60 * time.Second // a reload may resolve names and rebuild tables
)

const maxResponseBytes = 256 << 20 // a full conntrack listing can be large

// Client talks to the agent's admin API. It implements Agent, so code that
// needs "an agent" can be given either.
type Client struct {
	socketPath    string
	timeout       time.Duration
	reloadTimeout time.Duration
	hc            *http.Client
}

var _ Agent = (*Client)(nil)

// ClientOption configures a Client.
type ClientOption func(*Client)

// WithTimeout bounds every call but Reload (default DefaultTimeout).
func WithTimeout(d time.Duration) ClientOption {
	return func(c *Client) { c.timeout = d }
}

// WithReloadTimeout bounds Reload (default DefaultReloadTimeout).
func WithReloadTimeout(d time.Duration) ClientOption {
	return func(c *Client) { c.reloadTimeout = d }
}

// NewClient returns a client for the agent listening on socketPath.
func NewClient(socketPath string, opts ...ClientOption) *Client {
	c := &Client{socketPath: socketPath, timeout: DefaultTimeout, reloadTimeout: DefaultReloadTimeout}
	for _, o := range opts {
		o(c)
	}
	var d net.Dialer
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConns:    1,
		IdleConnTimeout: 10 * time.Second,
	}
	c.hc = &http.Client{Transport: tr}
	return c
}

// SocketPath is the socket the client dials.
func (c *Client) SocketPath() string { return c.socketPath }

// Status returns the agent's whole picture.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, c.timeout, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

// Flows lists the conntrack flows matching f.
func (c *Client) Flows(ctx context.Context, f FlowFilter) ([]Flow, error) {
	q := url.Values{}
	if f.Service != "" {
		q.Set("service", f.Service)
	}
	if f.Backend != "" {
		q.Set("backend", f.Backend)
	}
	path := "/v1/flows"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var flows []Flow
	if err := c.do(ctx, c.timeout, http.MethodGet, path, nil, &flows); err != nil {
		return nil, err
	}
	return flows, nil
}

// Drain moves address of pool to draining.
func (c *Client) Drain(ctx context.Context, pool, address string) error {
	return c.do(ctx, c.timeout, http.MethodPost, "/v1/drain", AddressRequest{Pool: pool, Address: address}, nil)
}

// Undrain undoes Drain.
func (c *Client) Undrain(ctx context.Context, pool, address string) error {
	return c.do(ctx, c.timeout, http.MethodPost, "/v1/undrain", AddressRequest{Pool: pool, Address: address}, nil)
}

// Reload makes the agent re-read its config file. A refused config comes
// back as an error matching ErrReloadRefused, carrying the agent's reason.
func (c *Client) Reload(ctx context.Context) error {
	return c.do(ctx, c.reloadTimeout, http.MethodPost, "/v1/reload", struct{}{}, nil)
}

// NodeDrain withdraws the node's VIPs and starts its drain (0: defaults).
func (c *Client) NodeDrain(ctx context.Context, timeout, quiet time.Duration) error {
	req := NodeDrainRequest{}
	if timeout > 0 {
		req.Timeout = timeout.String()
	}
	if quiet > 0 {
		req.Quiet = quiet.String()
	}
	return c.do(ctx, c.timeout, http.MethodPost, "/v1/node/drain", req, nil)
}

// NodeUndrain ends a node drain.
func (c *Client) NodeUndrain(ctx context.Context) error {
	return c.do(ctx, c.timeout, http.MethodPost, "/v1/node/undrain", struct{}{}, nil)
}

func (c *Client) do(ctx context.Context, timeout time.Duration, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encoding %s request: %w", path, err)
		}
		body = bytes.NewReader(b)
	}
	// The host is ignored: the transport always dials the socket.
	req, err := http.NewRequestWithContext(ctx, method, "http://sluice"+path, body)
	if err != nil {
		return fmt.Errorf("building %s request: %w", path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.transportError(ctx, timeout, err)
	}
	defer resp.Body.Close()

	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("reading admin response from %s: %w", c.socketPath, err)
	}
	if resp.StatusCode/100 != 2 {
		var er ErrorResponse
		if err := json.Unmarshal(data, &er); err != nil || er.Error == "" {
			return &APIError{StatusCode: resp.StatusCode, Kind: KindInternal,
				Message: fmt.Sprintf("admin API: %s: %s", resp.Status, strings.TrimSpace(string(data)))}
		}
		return &APIError{StatusCode: resp.StatusCode, Kind: er.Kind, Message: er.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decoding admin response of %s: %w", path, err)
	}
	return nil
}

func (c *Client) transportError(ctx context.Context, timeout time.Duration, err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return fmt.Errorf("%w at %s: %w", ErrUnreachable, c.socketPath, op.Err)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("admin API at %s: no answer within %s: %w", c.socketPath, timeout, context.DeadlineExceeded)
	}
	return fmt.Errorf("admin API at %s: %w", c.socketPath, err)
}
