package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAgent is an Agent with canned answers that records what it was asked.
type fakeAgent struct {
	mu        sync.Mutex
	status    Status
	flows     []Flow
	reloadErr error
	drained   map[string]bool // pool/address
	lastF     FlowFilter
	block     chan struct{}   // when set, Status waits on it or ctx
	nodeDrain []time.Duration // timeout, quiet of the last NodeDrain
	undrained bool
}

func newFakeAgent() *fakeAgent {
	deadline := time.Date(2026, 1, 2, 3, 4, 35, 0, time.UTC)
	return &fakeAgent{
		status: Status{
			Version:    "test",
			ConfigPath: "/etc/sluice/sluice.yaml",
			StartedAt:  time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
			Services: []Service{{Name: "web-l4", Listen: "198.18.1.100:80", Protocol: "tcp",
				Mode: "nat", Pool: "web", ID: 1, ActiveFlows: 3, Backends: 2, Packets: 100}},
			Pools: []Pool{{Name: "web", Backends: []Backend{
				{Address: "198.18.2.11:80", Source: "static", State: "active", Cause: "config", Weight: 1},
				{Address: "198.18.2.12:80", Source: "static", State: "draining", Cause: "operator",
					Weight: 1, DrainDeadline: &deadline},
			}}},
		},
		flows: []Flow{
			{Service: "web-l4", Client: "198.18.0.10:40000", VIP: "198.18.1.100:80", Backend: "198.18.2.11:80", Proto: "tcp", State: "established", Idle: "1s"},
			{Service: "web-l4", Client: "198.18.0.10:40001", VIP: "198.18.1.100:80", Backend: "198.18.2.12:80", Proto: "tcp", State: "established", Idle: "2s"},
		},
		drained: map[string]bool{},
	}
}

func (f *fakeAgent) Status(ctx context.Context) (Status, error) {
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
			return Status{}, ctx.Err()
		}
	}
	return f.status, nil
}

func (f *fakeAgent) Flows(_ context.Context, flt FlowFilter) ([]Flow, error) {
	f.mu.Lock()
	f.lastF = flt
	f.mu.Unlock()
	var out []Flow
	for _, fl := range f.flows {
		if flt.Service != "" && fl.Service != flt.Service {
			continue
		}
		if flt.Backend != "" && fl.Backend != flt.Backend {
			continue
		}
		out = append(out, fl)
	}
	return out, nil
}

func (f *fakeAgent) find(pool, address string) error {
	for _, p := range f.status.Pools {
		if p.Name != pool {
			continue
		}
		for _, b := range p.Backends {
			if b.Address == address {
				return nil
			}
		}
		return fmt.Errorf("pool %s: address %s: %w", pool, address, ErrUnknownAddress)
	}
	return fmt.Errorf("pool %q: %w", pool, ErrUnknownPool)
}

func (f *fakeAgent) Drain(_ context.Context, pool, address string) error {
	if err := f.find(pool, address); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.drained[pool+"/"+address] = true
	return nil
}

func (f *fakeAgent) Undrain(_ context.Context, pool, address string) error {
	if err := f.find(pool, address); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.drained, pool+"/"+address)
	return nil
}

func (f *fakeAgent) Reload(context.Context) error { return f.reloadErr }

func (f *fakeAgent) NodeDrain(_ context.Context, timeout, quiet time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodeDrain = []time.Duration{timeout, quiet}
	return nil
}

func (f *fakeAgent) NodeUndrain(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.undrained = true
	return nil
}

// serve starts a server for a on a socket in a temp dir and returns a
// client for it; the server stops when the test ends.
func serve(t *testing.T, a Agent, socketPath string) *Client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewServer(a, nil).Serve(ctx, socketPath) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Lstat(socketPath); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket %s left behind after shutdown (%v)", socketPath, err)
		}
	})
	waitSocket(t, socketPath, done)
	return NewClient(socketPath, WithTimeout(5*time.Second))
}

func waitSocket(t *testing.T, path string, done chan error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("Serve returned early: %v", err)
		default:
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("socket %s never came up", path)
}

func socketIn(t *testing.T) string {
	t.Helper()
	// Unix socket paths are limited to 107 bytes; t.TempDir can be long.
	dir, err := os.MkdirTemp("", "sluice-admin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "run", "admin.sock")
}

func TestRoundTrip(t *testing.T) {
	a := newFakeAgent()
	sock := socketIn(t)
	c := serve(t, a, sock)
	ctx := context.Background()

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if !reflect.DeepEqual(st, a.status) {
		t.Errorf("Status round trip:\n got %+v\nwant %+v", st, a.status)
	}

	flows, err := c.Flows(ctx, FlowFilter{Service: "web-l4", Backend: "198.18.2.12:80"})
	if err != nil {
		t.Fatalf("Flows: %v", err)
	}
	if len(flows) != 1 || flows[0].Client != "198.18.0.10:40001" {
		t.Errorf("Flows filtered = %+v", flows)
	}
	if a.lastF != (FlowFilter{Service: "web-l4", Backend: "198.18.2.12:80"}) {
		t.Errorf("agent saw filter %+v", a.lastF)
	}
	flows, err = c.Flows(ctx, FlowFilter{Service: "nope"})
	if err != nil || flows == nil || len(flows) != 0 {
		t.Errorf("Flows with no match = %#v, %v; want empty non-nil", flows, err)
	}

	if err := c.Drain(ctx, "web", "198.18.2.11:80"); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	if !a.drained["web/198.18.2.11:80"] {
		t.Error("agent did not see the drain")
	}
	if err := c.Undrain(ctx, "web", "198.18.2.11:80"); err != nil {
		t.Fatalf("Undrain: %v", err)
	}
	if a.drained["web/198.18.2.11:80"] {
		t.Error("agent did not see the undrain")
	}
	if err := c.Reload(ctx); err != nil {
		t.Fatalf("Reload: %v", err)
	}
}

func TestSocketMode(t *testing.T) {
	sock := socketIn(t)
	serve(t, newFakeAgent(), sock)
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		t.Errorf("%s is %v, not a socket", sock, fi.Mode())
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("socket mode %o, want 600", perm)
	}
	di, err := os.Stat(filepath.Dir(sock))
	if err != nil {
		t.Fatal(err)
	}
	if perm := di.Mode().Perm(); perm != 0o700 {
		t.Errorf("socket dir mode %o, want 700", perm)
	}
	// No temporary socket is left next to it.
	ents, _ := os.ReadDir(filepath.Dir(sock))
	if len(ents) != 1 {
		t.Errorf("socket dir holds %d entries, want 1: %v", len(ents), ents)
	}
}

// A socket file removed while the agent runs (rm, the directory cleaned
// away) is made again, with its mode, within keepInterval; the old
// socket's descriptor is closed; a file that replaced it is left alone.
func TestSocketRemovedIsMadeAgain(t *testing.T) {
	sock := socketIn(t)
	c := serve(t, newFakeAgent(), sock)
	ctx := context.Background()
	// Listening sockets bound under the socket's directory (bound under
	// their temporary name, then renamed: /proc/net/unix shows the first).
	listening := func() int {
		b, _ := os.ReadFile("/proc/net/unix")
		n := 0
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 8 && f[3] == "00010000" && strings.HasPrefix(f[7], filepath.Dir(sock)+"/") {
				n++
			}
		}
		return n
	}
	if n := listening(); n != 1 {
		t.Fatalf("%d listening sockets under %s, want 1", n, filepath.Dir(sock))
	}
	for i, remove := range []func() error{
		func() error { return os.Remove(sock) },
		func() error { return os.RemoveAll(filepath.Dir(sock)) },
	} {
		if err := remove(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(3 * keepInterval)
		for {
			// A new client: the old one's kept-alive connection outlives
			// the socket it came through.
			c = NewClient(sock, WithTimeout(5*time.Second))
			if _, err := c.Status(ctx); err == nil {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("removal %d: no answer on %s after %s: %v", i, sock, 3*keepInterval, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		fi, err := os.Lstat(sock)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("removal %d: socket %v, %v; want mode 600", i, fi, err)
		}
	}
	if n := listening(); n != 1 {
		t.Errorf("%d listening sockets under %s after two removals, want 1: the old ones were not closed", n, filepath.Dir(sock))
	}
	// Another file in its place (a newer agent's socket) is not replaced.
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * keepInterval)
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Type() == os.ModeSocket {
		t.Fatalf("a file in the socket's place was replaced (%v, %v)", fi, err)
	}
	// Serve's exit leaves that file: not ours.
	t.Cleanup(func() {
		if _, err := os.Lstat(sock); err != nil {
			t.Errorf("a file that was not the agent's socket was removed on exit: %v", err)
		}
		os.Remove(sock)
	})
}

func TestErrors(t *testing.T) {
	a := newFakeAgent()
	a.reloadErr = errors.New("sluice.yaml:12: pool \"web\": unknown key \"backend\"")
	c := serve(t, a, socketIn(t))
	ctx := context.Background()

	tests := []struct {
		name     string
		call     func() error
		sentinel error
		code     int
		contains string
	}{
		{"unknown pool", func() error { return c.Drain(ctx, "nope", "198.18.2.11:80") }, ErrUnknownPool, 404, `pool "nope"`},
		{"unknown address", func() error { return c.Undrain(ctx, "web", "198.18.2.99:80") }, ErrUnknownAddress, 404, "198.18.2.99:80"},
		{"bad address", func() error { return c.Drain(ctx, "web", "not-an-address") }, ErrBadRequest, 400, "not ip:port"},
		{"missing pool", func() error { return c.Drain(ctx, "", "198.18.2.11:80") }, ErrBadRequest, 400, "required"},
		{"bad backend filter", func() error { _, err := c.Flows(ctx, FlowFilter{Backend: "x:y"}); return err }, ErrBadRequest, 400, "backend filter"},
		{"reload refused", func() error { return c.Reload(ctx) }, ErrReloadRefused, 409, `sluice.yaml:12: pool "web": unknown key "backend"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if !errors.Is(err, tt.sentinel) {
				t.Fatalf("err = %v, want errors.Is %v", err, tt.sentinel)
			}
			var ae *APIError
			if !errors.As(err, &ae) || ae.StatusCode != tt.code {
				t.Errorf("err = %#v, want APIError with status %d", err, tt.code)
			}
			if !strings.Contains(err.Error(), tt.contains) {
				t.Errorf("err %q does not carry %q", err, tt.contains)
			}
		})
	}
}

func TestHTTPErrorsAreJSON(t *testing.T) {
	sock := socketIn(t)
	serve(t, newFakeAgent(), sock)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	tests := []struct {
		method, path, body string
		code               int
	}{
		{"POST", "/v1/status", "", 405},
		{"GET", "/v1/drain", "", 405},
		{"GET", "/v2/nothing", "", 404},
		{"POST", "/v1/drain", `{"pool":"web","address":"198.18.2.11:80","extra":1}`, 400},
		{"POST", "/v1/drain", `{"pool":"web"`, 400},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(tt.method, "http://sluice"+tt.path, strings.NewReader(tt.body))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tt.method, tt.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.code {
			t.Errorf("%s %s = %d, want %d", tt.method, tt.path, resp.StatusCode, tt.code)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" || !strings.Contains(string(b), `"error"`) {
			t.Errorf("%s %s: content-type %q body %q, want a JSON error", tt.method, tt.path, ct, b)
		}
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	sock := socketIn(t)
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	// A socket file nobody listens on, as a killed agent leaves behind.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("stale socket not there: %v", err)
	}
	c := serve(t, newFakeAgent(), sock)
	if _, err := c.Status(context.Background()); err != nil {
		t.Fatalf("Status after replacing stale socket: %v", err)
	}
}

func TestLiveSocketRefused(t *testing.T) {
	sock := socketIn(t)
	c := serve(t, newFakeAgent(), sock)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := NewServer(newFakeAgent(), nil).Serve(ctx, sock)
	if !errors.Is(err, ErrSocketInUse) {
		t.Fatalf("second Serve = %v, want ErrSocketInUse", err)
	}
	// The first server still answers.
	if _, err := c.Status(ctx); err != nil {
		t.Fatalf("first server broken by the second: %v", err)
	}
}

func TestNotASocketRefused(t *testing.T) {
	sock := socketIn(t)
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sock, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := NewServer(newFakeAgent(), nil).Serve(context.Background(), sock)
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Serve over a regular file = %v, want a refusal", err)
	}
	if b, _ := os.ReadFile(sock); string(b) != "precious" {
		t.Error("regular file was touched")
	}
}

func TestUnreachable(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "none.sock"), WithTimeout(time.Second))
	_, err := c.Status(context.Background())
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Status without agent = %v, want ErrUnreachable", err)
	}
}

func TestClientTimeout(t *testing.T) {
	a := newFakeAgent()
	a.block = make(chan struct{})
	defer close(a.block)
	sock := socketIn(t)
	serve(t, a, sock)
	c := NewClient(sock, WithTimeout(200*time.Millisecond))
	start := time.Now()
	_, err := c.Status(context.Background())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Status on a stuck agent = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("timeout took %v", d)
	}
}

func TestShutdownWhileRequestInFlight(t *testing.T) {
	// Serve ends with its context even while a handler is blocked: the
	// handler's context derives from Serve's.
	a := newFakeAgent()
	a.block = make(chan struct{})
	defer close(a.block)
	sock := socketIn(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewServer(a, nil).Serve(ctx, sock) }()
	waitSocket(t, sock, done)
	go func() { _, _ = NewClient(sock).Status(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(shutdownTimeout + 2*time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestPeerCheck(t *testing.T) {
	h := NewServer(newFakeAgent(), nil).peerCheck(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	self := os.Geteuid()
	other := 54321
	if self == other {
		other++
	}
	tests := []struct {
		name string
		p    *peer
		code int
	}{
		{"root", &peer{uid: 0, ok: true}, http.StatusNoContent},
		{"agent's own user", &peer{uid: self, ok: true}, http.StatusNoContent},
		{"another user", &peer{uid: other, ok: true}, http.StatusForbidden},
		{"credentials unknown", nil, http.StatusNoContent}, // the socket mode is the gate then
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodGet, "/v1/status", nil)
		if tt.p != nil {
			r = r.WithContext(context.WithValue(r.Context(), peerKey{}, *tt.p))
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tt.code {
			t.Errorf("%s: status %d, want %d", tt.name, w.Code, tt.code)
		}
	}
}

func TestPeerCredentialsOverSocket(t *testing.T) {
	// connContext must find the peer's uid on a real unix connection.
	sock := socketIn(t)
	os.MkdirAll(filepath.Dir(sock), 0o700)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := net.Dial("unix", sock)
		if err == nil {
			time.Sleep(100 * time.Millisecond)
			c.Close()
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p, ok := connContext(context.Background(), c).Value(peerKey{}).(peer)
	if !ok || !p.ok || p.uid != os.Geteuid() {
		t.Errorf("peer = %+v (%v), want uid %d", p, ok, os.Geteuid())
	}
}

func TestProbe(t *testing.T) {
	sock := socketIn(t)
	if err := Probe(sock); err != nil {
		t.Errorf("Probe on a missing socket = %v, want nil", err)
	}
	serve(t, newFakeAgent(), sock)
	if err := Probe(sock); !errors.Is(err, ErrSocketInUse) {
		t.Errorf("Probe on a live socket = %v, want ErrSocketInUse", err)
	}
	if _, err := os.Lstat(sock); err != nil {
		t.Errorf("Probe touched the live socket: %v", err)
	}
}

func TestNodeDrain(t *testing.T) {
	a := newFakeAgent()
	c := serve(t, a, filepath.Join(t.TempDir(), "admin.sock"))
	ctx := context.Background()
	if err := c.NodeDrain(ctx, time.Minute, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.NodeUndrain(ctx); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	got, undrained := a.nodeDrain, a.undrained
	a.mu.Unlock()
	if len(got) != 2 || got[0] != time.Minute || got[1] != 2*time.Second || !undrained {
		t.Fatalf("drain %v undrained %v", got, undrained)
	}
	// A hostile duration is refused before it reaches the agent.
	err := c.do(ctx, c.timeout, http.MethodPost, "/v1/node/drain", NodeDrainRequest{Timeout: "-5s"}, nil)
	if !errors.Is(err, ErrBadRequest) {
		t.Fatalf("negative timeout: %v", err)
	}
}

// TestServiceJSON: an http service's entry has no data-path counters (its
// traffic does not pass them; zeros would read as nothing served), an L4
// service's has them even at zero, and both read back as they were.
func TestServiceJSON(t *testing.T) {
	for _, tc := range []struct {
		svc          Service
		with, absent []string
	}{
		{
			Service{Name: "dns", Protocol: "udp", Pool: "p", Backends: 2},
			[]string{`"active_flows":0`, `"packets":0`, `"bytes":0`, `"new_flows":0`, `"rsts":0`, `"backends":2`},
			[]string{`"http"`},
		},
		{
			Service{Name: "web", Protocol: "http", Pool: "p", Backends: 3, HTTP: &HTTPCounts{Requests: 7, Status2xx: 7}},
			[]string{`"backends":3`, `"http":{"requests":7`, `"2xx":7`},
			[]string{`active_flows`, `packets`, `bytes`, `new_flows`, `rsts`},
		},
	} {
		b, err := json.Marshal(tc.svc)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range tc.with {
			if !strings.Contains(string(b), w) {
				t.Errorf("%s: %s missing from %s", tc.svc.Name, w, b)
			}
		}
		for _, a := range tc.absent {
			if strings.Contains(string(b), a) {
				t.Errorf("%s: %s in %s", tc.svc.Name, a, b)
			}
		}
		var back Service
		if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, tc.svc) {
			t.Errorf("%s: read back as %+v (%v)", tc.svc.Name, back, err)
		}
	}
}
