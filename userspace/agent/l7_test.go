package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/testcert"
	"github.com/sluicelb/sluice/l7/accesslog"
	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/metrics"
	"github.com/sluicelb/sluice/userspace/pool"
)

// freePort returns a loopback address nothing listens on right now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func l7Config(listen, backend string) string {
	return fmt.Sprintf(`interfaces: [veth0]
pools:
  - name: web
    drain_timeout: 30s
    addresses: {allow: [127.0.0.1/32]}   # the test servers listen on loopback
    backends:
      - address: %s
services:
  - name: web-http
    listen: %s
    protocol: http
    pool: web
`, backend, listen)
}

func get(url string) (int, string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// TestL7Services runs http services from the config on loopback: they
// proxy to the pool, follow drains, move on reload and stop when removed.
func TestL7Services(t *testing.T) {
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "be1")
	}))
	defer be.Close()
	backend := strings.TrimPrefix(be.URL, "http://")
	listen := freePort(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dp := datapath.NewFake(tableSize)
	var m *metrics.Metrics
	h := newHarnessWith(t, dp, l7Config(listen, backend), func(o *options) {
		m = metrics.New(metrics.Options{Version: "test", NoRuntimeCollectors: true})
		o.metrics, o.ctx, o.l7 = m, ctx, true
	})
	stage := h.a.l7
	h.a.syncL7()

	code, body, err := get("http://" + listen + "/")
	if err != nil || code != 200 || body != "be1" {
		t.Fatalf("GET = %d %q %v", code, body, err)
	}
	if got := gather(t, m)["sluice_l7_requests_total"]["code=200,service=web-http"]; got != 1 {
		t.Fatalf("requests metric = %v", got)
	}

	// Drained: the L7 stage sends nothing to it any more.
	if err := h.a.Drain(h.ctx, "web", backend); err != nil {
		t.Fatal(err)
	}
	code, _, err = get("http://" + listen + "/")
	if err != nil || code < 500 {
		t.Fatalf("GET with the only backend drained = %d, %v; want a 5xx", code, err)
	}
	if err := h.a.Undrain(h.ctx, "web", backend); err != nil {
		t.Fatal(err)
	}

	// A drained address keeps its in-flight request (it counts as a flow)
	// and is removed once it is done.
	release := make(chan struct{})
	slowBE := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		fmt.Fprint(w, "slow")
	}))
	defer slowBE.Close()
	defer close(release)
	slow := strings.TrimPrefix(slowBE.URL, "http://")
	h.write(l7Config(listen, slow))
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		_, body, _ := get("http://" + listen + "/")
		got <- body
	}()
	slowAddr := netip.MustParseAddrPort(slow)
	deadline := time.Now().Add(5 * time.Second)
	for h.a.l7.busy(h.a.pools["web"].p, slowAddr) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("request never reached the slow backend")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := h.a.Drain(h.ctx, "web", slow); err != nil {
		t.Fatal(err)
	}
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if b := h.state(slowAddr); b.State != pool.Draining || b.Flows != 1 {
		t.Fatalf("draining address with a request in flight = %+v", b)
	}
	// status shows what the drain waits for: no flow, one request.
	if b := statusBackend(t, h, "web", slow); b.ActiveFlows != 0 || b.Requests == nil || *b.Requests != 1 {
		t.Fatalf("status of the draining address = %+v (requests %v)", b, b.Requests)
	}
	release <- struct{}{}
	if body := <-got; body != "slow" {
		t.Fatalf("in-flight request = %q", body)
	}
	deadline = time.Now().Add(5 * time.Second)
	for h.a.l7.busy(h.a.pools["web"].p, slowAddr) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("request still busy")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if b := h.state(slowAddr); b.State != pool.Removed || b.Cause != pool.CauseNoFlows {
		t.Fatalf("drained address after its request = %+v", b)
	}
	if b := statusBackend(t, h, "web", slow); b.Requests == nil || *b.Requests != 0 {
		t.Fatalf("status of the drained address = %+v (requests %v)", b, b.Requests)
	}

	// A new listen address: a new server there, the old one stops.
	listen2 := freePort(t)
	h.write(l7Config(listen2, backend))
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	if code, body, err := get("http://" + listen2 + "/"); err != nil || code != 200 || body != "be1" {
		t.Fatalf("GET on the new address = %d %q %v", code, body, err)
	}
	waitRefused(t, listen)

	// Removed from the config (an L4 service in its place): it stops.
	h.write(strings.Replace(l7Config("198.18.1.100:80", backend), "protocol: http", "protocol: tcp", 1))
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	waitRefused(t, listen2)
	// No http service uses the pool any more: status shows no requests
	// column for it (absent, not 0).
	if b := statusBackend(t, h, "web", backend); b.Requests != nil {
		t.Fatalf("status of an address only L4 services use: requests %d", *b.Requests)
	}
	if len(stage.services) != 0 {
		t.Fatalf("stage still holds %d services", len(stage.services))
	}

	cancel()
	done := make(chan struct{})
	go func() { stage.wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("l7 services did not stop with the context")
	}
}

func TestL7ListenConflictLeavesOthersRunning(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := newHarnessWith(t, nil, l7Config(taken.Addr().String(), "127.0.0.1:9"), func(o *options) {
		o.ctx, o.l7 = ctx, true
	})
	h.a.syncL7()
	if len(h.a.l7.services) != 0 {
		t.Fatal("service started on a taken address")
	}

	// Issue 10 item 11: a reload that cannot start the service says so
	// (ErrReloadPartial, with the reason), and status lists it until a
	// reload applies everything.
	err = h.a.Reload(h.ctx)
	if !errors.Is(err, admin.ErrReloadPartial) || !strings.Contains(err.Error(), "http service web-http not started") {
		t.Fatalf("reload with the listen address taken: %v", err)
	}
	st, _ := h.a.Status(h.ctx)
	if len(st.NotApplied) != 1 || !strings.Contains(st.NotApplied[0], "web-http") {
		t.Fatalf("status not applied = %q", st.NotApplied)
	}
	taken.Close()
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatalf("reload with the address free: %v", err)
	}
	if st, _ := h.a.Status(h.ctx); len(st.NotApplied) != 0 {
		t.Fatalf("status not applied after a full reload = %q", st.NotApplied)
	}
	cancel()
	h.a.l7.wait()
}

func waitRefused(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("%s still accepts connections", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestL7AccessLogAndSettings: access_log to a file (reopened on reload for
// log rotation), and a reload that changes the upstream settings replaces
// the server on the same address without failing a request.
func TestL7AccessLogAndSettings(t *testing.T) {
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "be1")
	}))
	defer be.Close()
	backend := strings.TrimPrefix(be.URL, "http://")
	listen := freePort(t)
	logPath := filepath.Join(t.TempDir(), "access.log")
	cfg := func(extra string) string {
		return l7Config(listen, backend) + "    access_log: " + logPath + "\n" + extra
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := newHarnessWith(t, datapath.NewFake(tableSize), cfg(""), func(o *options) {
		o.ctx, o.l7 = ctx, true
	})
	h.a.syncL7()
	mustGet := func(path string) {
		t.Helper()
		code, body, err := get("http://" + listen + path)
		if err != nil || code != 200 || body != "be1" {
			t.Fatalf("GET %s = %d %q %v", path, code, body, err)
		}
	}
	waitFor := func(file, uri string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			b, _ := os.ReadFile(file)
			if strings.Contains(string(b), `"uri":"`+uri+`"`) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no access log line for %s in %q", file, uri, b)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	mustGet("/one")
	waitFor(logPath, "/one") // written within the flush interval

	// Rotation: move the file away, reload, the next lines go to a new file.
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	mustGet("/two")
	waitFor(logPath, "/two")

	// A rotation while the file holds an edit that does not load: the
	// reload is refused, the access log reopened all the same.
	h.write(cfg("    bogus_key: 1\n"))
	if err := os.Rename(logPath, logPath+".2"); err != nil {
		t.Fatal(err)
	}
	if err := h.a.Reload(h.ctx); !errors.Is(err, admin.ErrReloadRefused) {
		t.Fatalf("reload of an invalid file: %v", err)
	}
	mustGet("/two-b")
	waitFor(logPath, "/two-b")

	// New upstream settings: a new server on the same address.
	old := h.a.l7.services["web-http"].srv
	h.write(cfg("    upstream: {max_idle: 4, idle_timeout: 5s}\n    client: {idle_timeout: 10s}\n"))
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	if h.a.l7.services["web-http"].srv == old {
		t.Fatal("server not replaced after upstream settings changed")
	}
	mustGet("/three")
	waitFor(logPath, "/three")

	// access_log: off stops the lines, in place.
	h.write(l7Config(listen, backend) + "    access_log: \"off\"\n    upstream: {max_idle: 4, idle_timeout: 5s}\n    client: {idle_timeout: 10s}\n")
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	cur := h.a.l7.services["web-http"].srv
	mustGet("/four")
	if h.a.l7.services["web-http"].srv != cur {
		t.Fatal("server replaced for an access_log change")
	}
	cancel()
	h.a.l7.wait() // flushes and closes the logs
	if b, _ := os.ReadFile(logPath); strings.Contains(string(b), "/four") {
		t.Errorf("access_log: off still logged: %q", b)
	}
}

// The agent's NetHTTP1 option (SLUICE_L7_NETHTTP1, read by cmd/sluice)
// reaches every http service's proxy options.
func TestL7NetHTTP1Option(t *testing.T) {
	for _, on := range []bool{false, true} {
		a := newAgent(datapath.NewFake(tableSize), options{l7: true, l7NetHTTP1: on})
		opts, err := a.l7.options(config.Service{Name: "web", Pool: "web", AccessLog: config.AccessLogOff})
		if err != nil {
			t.Fatal(err)
		}
		if opts.NetHTTP1 != on {
			t.Errorf("l7NetHTTP1 %v: proxy NetHTTP1 %v", on, opts.NetHTTP1)
		}
	}
}

// statusBackend is address of pool in the agent's status.
func statusBackend(t *testing.T, h *harness, poolName, address string) admin.Backend {
	t.Helper()
	st, err := h.a.Status(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Pools {
		for _, b := range p.Backends {
			if p.Name == poolName && b.Address == address {
				return b
			}
		}
	}
	t.Fatalf("no %s %s in status: %+v", poolName, address, st.Pools)
	return admin.Backend{}
}

// An access log file removed, or moved away by a rotation that did not
// reload, is opened again at its path by the next check: the lines after
// it go to the new file, none to the old one. A path whose directory is
// gone is told of once and tried again.
func TestAccessLogReopenGone(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	a := newAccessLogs(nil)
	l, err := a.get(path)
	if err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	line := func(uri string) {
		t.Helper()
		l.Log(&accesslog.Record{Service: "web", URI: uri})
		if err := l.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	read := func(p string) string {
		t.Helper()
		b, _ := os.ReadFile(p)
		return string(b)
	}
	line("/1")
	a.reopenGone(log) // nothing gone
	if logBuf.Len() != 0 {
		t.Fatalf("logged %q with the file in place", logBuf.String())
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	a.reopenGone(log)
	line("/2")
	if got := read(path); !strings.Contains(got, `"/2"`) || strings.Contains(got, `"/1"`) {
		t.Errorf("after the file was removed the path holds %q, want the line of /2 only", got)
	}
	if !strings.Contains(logBuf.String(), "access log file removed") {
		t.Errorf("logged %q, want the removal told of", logBuf.String())
	}

	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	a.reopenGone(log)
	line("/3")
	if got := read(path); !strings.Contains(got, `"/3"`) {
		t.Errorf("after a rotation without reload the path holds %q, want the line of /3", got)
	}
	if got := read(rotated); strings.Contains(got, `"/3"`) {
		t.Errorf("the rotated file got a line after the check: %q", got)
	}

	// The directory gone: told of once, the old file kept, tried again.
	logBuf.Reset()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	a.reopenGone(log)
	a.reopenGone(log)
	if n := strings.Count(logBuf.String(), "not opened again"); n != 1 {
		t.Errorf("a path that cannot be opened again was told of %d times, want once: %q", n, logBuf.String())
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	a.reopenGone(log)
	line("/4")
	if got := read(path); !strings.Contains(got, `"/4"`) {
		t.Errorf("once the directory is back the path holds %q, want the line of /4", got)
	}
	a.close(log)
}

// A reload reads the upstream CA file again even when the config did not
// change (it took the update path, which kept the CAs read at start): a
// backend whose certificate only the rewritten file trusts is reached
// right after `sluice reload`.
func TestL7ReloadRereadsUpstreamCA(t *testing.T) {
	be := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "be1")
	}))
	defer be.Close()
	be.Config.ErrorLog = log.New(io.Discard, "", 0)
	backend := strings.TrimPrefix(be.URL, "https://")
	listen := freePort(t)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	// First a CA that did not sign the backend's certificate.
	der, _ := testcert.New(t, testcert.Options{CommonName: "old CA", CA: true})
	testcert.WritePEM(t, ca, der)
	cfg := l7Config(listen, backend) + "    upstream: {tls: true, server_name: example.com, ca: " + ca + "}\n"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := newHarnessWith(t, datapath.NewFake(tableSize), cfg, func(o *options) { o.ctx, o.l7 = ctx, true })
	h.a.syncL7()
	if code, _, err := get("http://" + listen + "/"); err != nil || code != http.StatusBadGateway {
		t.Fatalf("with a CA that did not sign the backend: %d %v, want 502", code, err)
	}
	testcert.WritePEM(t, ca, be.Certificate().Raw)
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	if code, body, err := get("http://" + listen + "/"); err != nil || code != 200 || body != "be1" {
		t.Fatalf("after the CA file was rewritten and the agent reloaded: %d %q %v, want 200 from be1", code, body, err)
	}
}
