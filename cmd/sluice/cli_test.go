package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/agent"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/gcpace"
)

var testNow = time.Date(2026, 1, 2, 3, 10, 0, 0, time.UTC)

// fakeAgent answers the admin API with fixed data.
type fakeAgent struct {
	mu        sync.Mutex
	status    admin.Status
	flows     []admin.Flow
	reloadErr error
	calls     []string
	// onStatus, when set, changes the status before each Status answer.
	onStatus func(*admin.Status)
}

func newFakeAgent() *fakeAgent {
	deadline := testNow.Add(25 * time.Second)
	return &fakeAgent{
		status: admin.Status{
			Version:    "v1.0.0",
			ConfigPath: "/etc/sluice/sluice.yaml",
			StartedAt:  testNow.Add(-(5*time.Minute + 55*time.Second)),
			Warnings:   []string{"/etc/sluice/sluice.yaml:31: services[2].upstream.insecure_skip_verify: warning: backend certificates are not verified"},
			Runtime: &admin.Runtime{GOMAXPROCS: 3, GOGC: 400, GCPaced: true, HeapLiveBytes: 3 << 20,
				EventLoops: 2, LoopConnections: 12, LoopSockets: 1},
			Log: &admin.Log{Warnings: 7, Errors: 1, Recent: []admin.LogEntry{
				{Time: testNow.Add(-2 * time.Minute), Level: "WARN", Text: `msg="listener closed under the agent: listening again" addr=0.0.0.0:443`},
				{Time: testNow.Add(-5 * time.Second), Level: "ERROR", Text: "msg=\"a line\nbreak\" component=l7"},
			}},
			Services: []admin.Service{
				{Name: "web-l4", Listen: "198.18.1.100:80", Protocol: "tcp", Mode: "nat", Pool: "web",
					ID: 1, ActiveFlows: 3, Backends: 1, Packets: 1200, Bytes: 3 << 20, NewFlows: 40, RSTs: 2},
				{Name: "dns-udp", Listen: "198.18.1.101:53", Protocol: "udp", Mode: "snat", Pool: "dns", ID: 2},
				{Name: "front", Listen: "0.0.0.0:443", Protocol: "http", HTTP: &admin.HTTPCounts{
					Requests: 1210, Status1xx: 2, Status2xx: 1100, Status3xx: 20, Status4xx: 40, Status5xx: 45,
					ClientGone: 3, Retries: 7, Refused: 1}, Routes: []admin.Route{
					{Name: "api", Match: "host api.lab path /v1/", Pool: "web", Backends: map[string]int{"active": 1, "draining": 1}},
					{Name: "old", Match: "any host", Pool: "gone"},
					{Name: "none", Match: "host x.lab", Pool: "dns", Backends: map[string]int{}},
				}, Certificates: []admin.Certificate{
					{File: "/etc/sluice/front.crt", Names: []string{"front.lab", "www.front.lab"}, NotAfter: testNow.Add(90 * 24 * time.Hour)},
					{File: "/etc/sluice/api.crt", Names: []string{"api.lab"}, NotAfter: testNow.Add(5*24*time.Hour + time.Hour)},
					{File: "/etc/sluice/old.crt", Names: []string{"old.lab"}, NotAfter: testNow.Add(-30 * time.Hour)},
				}},
			},
			Pools: []admin.Pool{
				{Name: "web", Backends: []admin.Backend{
					{Address: "198.18.2.11:80", Source: "backend.lab", State: "active", Cause: "dns",
						Since: testNow.Add(-3 * time.Hour), Weight: 1, ActiveFlows: 2, TTLLeft: "20s",
						Packets: 800, Bytes: 2048, NewFlows: 30, Requests: ptr(4)},
					{Address: "198.18.2.12:80", Source: "static", State: "draining", Cause: "operator",
						Since: testNow.Add(-5 * time.Second), Weight: 2, ActiveFlows: 1, DrainDeadline: &deadline, Requests: ptr(0)},
				}},
				{Name: "dns"},
			},
		},
		flows: []admin.Flow{
			{Service: "web-l4", Client: "198.18.0.10:40000", VIP: "198.18.1.100:80", Backend: "198.18.2.11:80", Proto: "tcp", State: "established", Idle: "1s"},
			{Service: "web-l4", Client: "198.18.0.10:40001", VIP: "198.18.1.100:80", Backend: "198.18.2.12:80", Proto: "tcp", State: "closing", Idle: "9s", Expired: true},
		},
	}
}

func (f *fakeAgent) record(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
}

func (f *fakeAgent) Status(context.Context) (admin.Status, error) {
	f.record("status")
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.onStatus != nil {
		f.onStatus(&f.status)
	}
	return f.status, nil
}

func (f *fakeAgent) Flows(_ context.Context, flt admin.FlowFilter) ([]admin.Flow, error) {
	f.record(fmt.Sprintf("flows service=%s backend=%s", flt.Service, flt.Backend))
	var out []admin.Flow
	for _, fl := range f.flows {
		if (flt.Service == "" || fl.Service == flt.Service) && (flt.Backend == "" || fl.Backend == flt.Backend) {
			out = append(out, fl)
		}
	}
	return out, nil
}

func (f *fakeAgent) addressOp(op, pool, address string) error {
	f.record(op + " " + pool + " " + address)
	for _, p := range f.status.Pools {
		if p.Name == pool {
			if _, ok := findBackend(f.status, pool, address); !ok {
				return fmt.Errorf("pool %s has no address %s: %w", pool, address, admin.ErrUnknownAddress)
			}
			return nil
		}
	}
	return fmt.Errorf("pool %q: %w", pool, admin.ErrUnknownPool)
}

func (f *fakeAgent) Drain(_ context.Context, pool, address string) error {
	return f.addressOp("drain", pool, address)
}

func (f *fakeAgent) Undrain(_ context.Context, pool, address string) error {
	return f.addressOp("undrain", pool, address)
}

func (f *fakeAgent) Reload(context.Context) error {
	f.record("reload")
	return f.reloadErr
}

func (f *fakeAgent) NodeDrain(_ context.Context, timeout, quiet time.Duration) error {
	f.record(fmt.Sprintf("node-drain %s %s", timeout, quiet))
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.status.Node == nil {
		return fmt.Errorf("no bgp section: %w", admin.ErrBadRequest)
	}
	f.status.Node.State = "draining"
	return nil
}

func (f *fakeAgent) NodeUndrain(context.Context) error {
	f.record("node-undrain")
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.status.Node == nil {
		return fmt.Errorf("no bgp section: %w", admin.ErrBadRequest)
	}
	f.status.Node.State = "serving"
	return nil
}

// fakePinned is a flowReader over fixed data path flows.
type fakePinned struct {
	flows  []datapath.Flow
	closed bool
}

func (p *fakePinned) Flows(fn func(datapath.Flow) bool) error {
	for _, f := range p.flows {
		if !fn(f) {
			break
		}
	}
	return nil
}

func (p *fakePinned) Close() error { p.closed = true; return nil }

// harness runs commands against a fake agent behind a real unix socket.
type harness struct {
	t        *testing.T
	agent    *fakeAgent
	socket   string
	pinned   *fakePinned
	pinOpens []string
	teardown []string
	pinsHeld bool     // what the fake pin lock says
	ran      []string // runAgent calls
}

func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sluice-cli-") // unix socket paths are short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// newHarness starts the fake agent's admin server unless down is true.
func newHarness(t *testing.T, down bool) *harness {
	t.Helper()
	h := &harness{t: t, agent: newFakeAgent(), socket: filepath.Join(shortTempDir(t), "admin.sock")}
	h.pinned = &fakePinned{flows: []datapath.Flow{{
		Client: netip.MustParseAddrPort("198.18.0.10:40000"), VIP: netip.MustParseAddrPort("198.18.1.100:80"),
		Proto: datapath.TCP, ServiceID: 1, BackendSlot: 1, Backend: netip.MustParseAddrPort("198.18.2.11:80"),
		State: datapath.FlowEstablished, Idle: 1500 * time.Millisecond,
	}, {
		Client: netip.MustParseAddrPort("198.18.0.11:5353"), VIP: netip.MustParseAddrPort("198.18.1.101:53"),
		Proto: datapath.UDP, ServiceID: 2, BackendSlot: 3, Backend: netip.MustParseAddrPort("198.18.2.21:53"),
		State: datapath.FlowUDP, Idle: 70 * time.Second, Expired: true,
	}}}
	if down {
		return h
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- admin.NewServer(h.agent, nil).Serve(ctx, h.socket) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("admin server: %v", err)
		}
	})
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", h.socket); err == nil {
			c.Close()
			break
		}
		if i == 500 {
			t.Fatal("admin socket never came up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return h
}

func (h *harness) env(stdout, stderr *bytes.Buffer) *env {
	return &env{
		stdout:  stdout,
		stderr:  stderr,
		version: "v9.9.9-test",
		now:     func() time.Time { return testNow },
		poll:    5 * time.Millisecond,
		newClient: func(socket string) admin.Agent {
			return admin.NewClient(socket, admin.WithTimeout(5*time.Second))
		},
		loadConfig: config.Load,
		openPinned: func(pinPath string) (flowReader, error) {
			h.pinOpens = append(h.pinOpens, pinPath)
			return h.pinned, nil
		},
		teardown: func(pinPath string) error {
			h.teardown = append(h.teardown, pinPath)
			return nil
		},
		pinsHeld: func(pinPath string) (bool, error) { return h.pinsHeld, nil },
		runAgent: func(ctx context.Context, path string, log *slog.Logger, version string, _ agent.RunOptions) error {
			h.ran = append(h.ran, path+" "+version)
			log.Info("fake agent ran")
			return nil
		},
	}
}

// run runs a command line; "@SOCK" in args is replaced with the socket.
func (h *harness) run(args ...string) (code int, stdout, stderr string) {
	h.t.Helper()
	for i, a := range args {
		args[i] = strings.ReplaceAll(a, "@SOCK", h.socket)
	}
	var out, errb bytes.Buffer
	code = run(context.Background(), h.env(&out, &errb), args)
	return code, out.String(), errb.String()
}

// The command list of the design and docs: help must cover each.
var wantCommands = []string{"agent", "check", "status", "backends", "conntrack", "drain", "undrain", "node", "decap", "reload", "teardown", "version", "help"}

func TestHelp(t *testing.T) {
	h := newHarness(t, true)
	code, overview, _ := h.run("--help")
	if code != exitOK {
		t.Fatalf("sluice --help exit %d", code)
	}
	for _, name := range wantCommands {
		if !strings.Contains(overview, "\n  "+name+" ") {
			t.Errorf("overview does not list %q:\n%s", name, overview)
		}
		code, viaHelp, stderr := h.run("help", name)
		if code != exitOK || !strings.HasPrefix(viaHelp, "usage: sluice "+name) {
			t.Errorf("sluice help %s: exit %d, stdout %q, stderr %q", name, code, viaHelp, stderr)
		}
		for _, flagHelp := range []string{"--help", "-h"} {
			code, viaFlag, _ := h.run(name, flagHelp)
			if code != exitOK || viaFlag != viaHelp {
				t.Errorf("sluice %s %s: exit %d, output differs from 'sluice help %s':\n%s", name, flagHelp, code, name, viaFlag)
			}
		}
	}
	if len(commands()) != len(wantCommands) {
		t.Errorf("%d commands, docs and tests know %d", len(commands()), len(wantCommands))
	}
	for _, a := range [][]string{{"help"}, {"-h"}} {
		if code, out, _ := h.run(a...); code != exitOK || out != overview {
			t.Errorf("sluice %v: exit %d, output differs from --help", a, code)
		}
	}
}

func TestHelpShowsFlags(t *testing.T) {
	h := newHarness(t, true)
	for cmd, flags := range map[string][]string{
		"status":    {"--json", "--socket PATH", "-c, --config FILE"},
		"conntrack": {"--service NAME", "--backend ADDR", "--pin-path DIR", "--pinned", "--json"},
		"teardown":  {"--pin-path DIR", "--force"},
		"agent":     {"-c, --config FILE", "--log-format", "--log-level"},
	} {
		_, out, _ := h.run("help", cmd)
		for _, f := range flags {
			if !strings.Contains(out, "  "+f) {
				t.Errorf("help %s lacks %q:\n%s", cmd, f, out)
			}
		}
	}
}

func TestDocsListEveryCommand(t *testing.T) {
	doc, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatalf("docs/cli.md: %v", err)
	}
	for _, name := range wantCommands {
		if !strings.Contains(string(doc), "\n## sluice "+name) {
			t.Errorf("docs/cli.md has no '## sluice %s' section", name)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	h := newHarness(t, true)
	tests := []struct {
		args []string
		code int
		msg  string
	}{
		{nil, exitUsage, "usage: sluice COMMAND"},
		{[]string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"help", "frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"status", "--bogus"}, exitUsage, "flag provided but not defined: -bogus"},
		{[]string{"status", "extra"}, exitUsage, `unexpected argument "extra"`},
		{[]string{"drain", "web"}, exitUsage, "missing arguments: want POOL ADDRESS"},
		{[]string{"drain", "web", "nonsense"}, exitUsage, `"nonsense" is not ip:port or ip`},
		{[]string{"conntrack", "--backend", "x"}, exitUsage, "--backend"},
		{[]string{"agent"}, exitUsage, "-c FILE is required"},
		{[]string{"agent", "-c", "x.yaml", "--log-level", "loud"}, exitUsage, "--log-level"},
		{[]string{"agent", "-c", "x.yaml", "--log-format", "xml"}, exitUsage, "--log-format"},
		{[]string{"check"}, exitUsage, "-c FILE is required"},
	}
	for _, tt := range tests {
		code, _, stderr := h.run(tt.args...)
		if code != tt.code || !strings.Contains(stderr, tt.msg) {
			t.Errorf("sluice %v: exit %d stderr %q, want %d and %q", tt.args, code, stderr, tt.code, tt.msg)
		}
		if tt.args != nil && strings.Count(stderr, "\n") != 1 {
			t.Errorf("sluice %v: stderr is not one line: %q", tt.args, stderr)
		}
	}
}

func TestVersion(t *testing.T) {
	h := newHarness(t, true)
	for _, args := range [][]string{{"version"}, {"--version"}} {
		code, out, _ := h.run(args...)
		if code != exitOK || !strings.HasPrefix(out, "sluice v9.9.9-test (go") {
			t.Errorf("sluice %v: exit %d, %q", args, code, out)
		}
	}
}

const goodConfig = `interfaces: [veth0]
pools:
  - name: web
    backends:
      - address: 198.18.2.11:80
services:
  - name: web-l4
    listen: 198.18.1.100:80
    pool: web
`

const badConfig = `interfaces: [veth0]
pools:
  - name: web
    backends:
      - address: 198.18.2.11:80
        wieght: 2
services:
  - name: web-l4
    listen: 198.18.1.100:80
    pool: nowhere
`

func TestCheck(t *testing.T) {
	h := newHarness(t, true)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	// The tcp_established timeout set: no warning.
	os.WriteFile(good, []byte(goodConfig+"datapath: {conntrack_timeouts: {tcp_established: 2h}}\n"), 0o600)
	os.WriteFile(bad, []byte(badConfig), 0o600)

	code, out, stderr := h.run("check", "-c", good)
	if code != exitOK || out != good+": ok (1 pool, 1 service: 1 l4, 0 http)\n" {
		t.Errorf("check good: exit %d stdout %q stderr %q", code, out, stderr)
	}
	if code, _, _ := h.run("check", good); code != exitOK {
		t.Errorf("check FILE as an argument: exit %d", code)
	}

	code, out, stderr = h.run("check", "-c", bad)
	if code != exitFailure || out != "" {
		t.Errorf("check bad: exit %d stdout %q", code, out)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if len(lines) < 3 {
		t.Fatalf("check bad: want every problem and a summary, got %q", stderr)
	}
	for _, l := range lines[:len(lines)-1] {
		if !strings.HasPrefix(l, bad+":") {
			t.Errorf("problem line without file:line: %q", l)
		}
	}
	for _, want := range []string{bad + ":6:", bad + ":10:", "wieght", "nowhere"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("check bad: stderr lacks %q:\n%s", want, stderr)
		}
	}
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "sluice check: "+bad+": ") || !strings.Contains(last, "problems") {
		t.Errorf("check bad: summary line %q", last)
	}

	// A valid file with warnings: printed on stderr with file:line, exit
	// 0, or 1 with --strict.
	warned := filepath.Join(dir, "warned.yaml")
	os.WriteFile(warned, []byte(goodConfig), 0o600)
	code, out, stderr = h.run("check", "-c", warned)
	if code != exitOK || out != warned+": ok (1 pool, 1 service: 1 l4, 0 http, 1 warning)\n" ||
		!strings.HasPrefix(stderr, warned+":7: services[0]: warning: ") || !strings.Contains(stderr, "tcp_established") {
		t.Errorf("check warned: exit %d stdout %q stderr %q", code, out, stderr)
	}
	code, _, stderr = h.run("check", "--strict", "-c", warned)
	if code != exitFailure || !strings.Contains(stderr, "warning: ") || !strings.Contains(stderr, "1 warning, refused with --strict") {
		t.Errorf("check --strict warned: exit %d stderr %q", code, stderr)
	}
	if code, _, stderr := h.run("check", "--strict", good); code != exitOK {
		t.Errorf("check --strict good: exit %d stderr %q", code, stderr)
	}

	code, _, stderr = h.run("check", "-c", filepath.Join(dir, "missing.yaml"))
	if code != exitFailure || !strings.Contains(stderr, "no such file") {
		t.Errorf("check missing file: exit %d stderr %q", code, stderr)
	}
}

func TestStatusTable(t *testing.T) {
	h := newHarness(t, false)
	code, out, stderr := h.run("status", "--socket", "@SOCK")
	if code != exitOK {
		t.Fatalf("status: exit %d stderr %q", code, stderr)
	}
	want := `agent v1.0.0, config /etc/sluice/sluice.yaml, up 5m55s
runtime: gomaxprocs 3, gc paced (gogc 400, live heap 3.0MiB), http/1 event loops 2 (12 connections, 1 socket)

CONFIG WARNINGS (1; sluice check prints the same):
  - /etc/sluice/sluice.yaml:31: services[2].upstream.insecure_skip_verify: warning: backend certificates are not verified

SERVICE  LISTEN           PROTO/MODE  POOL      BACKENDS  FLOWS  PACKETS  BYTES   NEW FLOWS  RSTS
web-l4   198.18.1.100:80  tcp/nat     web       1/2       3      1200     3.0MiB  40         2
dns-udp  198.18.1.101:53  udp/snat    dns       0/0       0      0        0B      0          0
front    0.0.0.0:443      http        (routes)  -         -      -        -       -          -

HTTP SERVICE  REQUESTS  1XX  2XX   3XX  4XX  5XX  CLIENT GONE  RETRIES  REFUSED
front         1210      2    1100  20   40   45   3            7        1

SERVICE  ROUTE  MATCH                   POOL  ADDRESSES
front    api    host api.lab path /v1/  web   1 active, 1 draining
front    old    any host                gone  (pool not running)
front    none   host x.lab              dns   no addresses

SERVICE  CERTIFICATE            NAMES                    EXPIRES
front    /etc/sluice/front.crt  front.lab,www.front.lab  2026-04-02 03:10Z (in 90d)
front    /etc/sluice/api.crt    api.lab                  2026-01-07 04:10Z (in 5d: RENEW)
front    /etc/sluice/old.crt    old.lab                  2025-12-31 21:10Z (EXPIRED 30h ago)

POOL  ADDRESS         SOURCE       STATE     CAUSE     AGE  FLOWS  REQUESTS  DRAIN LEFT
web   198.18.2.11:80  backend.lab  active    dns       3h   2      4         -
web   198.18.2.12:80  static       draining  operator  5s   1      0         25s
dns   (no addresses)  -            -         -         -    -      -         -

RECENT WARNINGS AND ERRORS (7 warnings, 1 error since start, the last 2 (the agent's log has them all)):
  2026-01-02 03:08:00 UTC (2m ago) WARN  msg="listener closed under the agent: listening again" addr=0.0.0.0:443
  2026-01-02 03:09:55 UTC (5s ago) ERROR msg="a line\nbreak" component=l7
`
	if out != want {
		t.Errorf("status table:\n%s\nwant:\n%s", out, want)
	}
}

// TestStatusRuntime: the runtime line without pacing (the operator's
// GOGC) and without event loops.
func TestStatusRuntime(t *testing.T) {
	var b bytes.Buffer
	writeRuntime(&b, &admin.Runtime{GOMAXPROCS: 2, GOGC: 100})
	if want := "runtime: gomaxprocs 2, gc gogc 100 (the environment's GOGC), no http/1 event loops\n"; b.String() != want {
		t.Errorf("runtime line %q, want %q", b.String(), want)
	}
}

// TestStatusRecentLog: an agent that logged nothing says so in a line; an
// older agent (no log in its status) prints nothing.
func TestStatusRecentLog(t *testing.T) {
	var b bytes.Buffer
	writeRecentLog(&b, &admin.Log{}, testNow)
	if want := "\nlog: 0 warnings, 0 errors since start\n"; b.String() != want {
		t.Errorf("empty log %q, want %q", b.String(), want)
	}
	b.Reset()
	writeRecentLog(&b, &admin.Log{Warnings: 1, Recent: []admin.LogEntry{{Time: testNow, Level: "WARN", Text: "msg=x"}}}, testNow)
	if want := "\nRECENT WARNINGS AND ERRORS (1 warning, 0 errors since start):\n  2026-01-02 03:10:00 UTC (0s ago) WARN  msg=x\n"; b.String() != want {
		t.Errorf("one warning %q, want %q", b.String(), want)
	}
	b.Reset()
	writeRecentLog(&b, nil, testNow)
	if b.Len() != 0 {
		t.Errorf("no log from an older agent printed %q", b.String())
	}
}

func TestStatusJSON(t *testing.T) {
	h := newHarness(t, false)
	code, out, _ := h.run("status", "--json", "--socket", "@SOCK")
	if code != exitOK {
		t.Fatalf("status --json: exit %d", code)
	}
	var got admin.Status
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(got, h.agent.status) {
		t.Errorf("status --json = %+v, want %+v", got, h.agent.status)
	}
	if !strings.Contains(out, "\n  \"services\": [") {
		t.Errorf("status --json is not indented:\n%s", out)
	}
}

func TestBackends(t *testing.T) {
	h := newHarness(t, false)
	code, out, _ := h.run("backends", "web", "--socket", "@SOCK") // flags after arguments work
	want := `POOL  ADDRESS         SOURCE       STATE     CAUSE     AGE  WEIGHT  FLOWS  REQUESTS  PACKETS  BYTES   NEW FLOWS  TTL  DRAIN LEFT
web   198.18.2.11:80  backend.lab  active    dns       3h   1       2      4         800      2.0KiB  30         20s  -
web   198.18.2.12:80  static       draining  operator  5s   2       1      0         0        0B      0          -    25s
`
	if code != exitOK || out != want {
		t.Errorf("backends web: exit %d\n%s\nwant:\n%s", code, out, want)
	}

	code, out, _ = h.run("backends", "--json", "--socket", "@SOCK")
	var pools []admin.Pool
	if err := json.Unmarshal([]byte(out), &pools); code != exitOK || err != nil || len(pools) != 2 {
		t.Errorf("backends --json: exit %d, %v, %d pools", code, err, len(pools))
	}
	code, out, _ = h.run("backends", "dns", "--json", "--socket", "@SOCK")
	if err := json.Unmarshal([]byte(out), &pools); code != exitOK || err != nil || len(pools) != 1 || pools[0].Name != "dns" {
		t.Errorf("backends dns --json: exit %d, %v, %+v", code, err, pools)
	}

	code, _, stderr := h.run("backends", "nope", "--socket", "@SOCK")
	if code != exitFailure || stderr != "sluice backends: pool \"nope\": unknown pool (pools: web, dns)\n" {
		t.Errorf("backends nope: exit %d stderr %q", code, stderr)
	}
}

func TestConntrack(t *testing.T) {
	h := newHarness(t, false)
	code, out, _ := h.run("conntrack", "--socket", "@SOCK")
	want := `SERVICE  PROTO  CLIENT             VIP              BACKEND         STATE              IDLE
web-l4   tcp    198.18.0.10:40000  198.18.1.100:80  198.18.2.11:80  established        1s
web-l4   tcp    198.18.0.10:40001  198.18.1.100:80  198.18.2.12:80  closing (expired)  9s
`
	if code != exitOK || out != want {
		t.Errorf("conntrack: exit %d\n%s\nwant:\n%s", code, out, want)
	}

	code, out, _ = h.run("conntrack", "--service", "web-l4", "--backend", "198.18.2.12:80", "--json", "--socket", "@SOCK")
	var flows []admin.Flow
	if err := json.Unmarshal([]byte(out), &flows); code != exitOK || err != nil || len(flows) != 1 || flows[0].Client != "198.18.0.10:40001" {
		t.Errorf("conntrack filtered --json: exit %d, %v, %+v", code, err, flows)
	}
	if last := h.agent.calls[len(h.agent.calls)-1]; last != "flows service=web-l4 backend=198.18.2.12:80" {
		t.Errorf("agent saw %q", last)
	}

	code, out, stderr := h.run("conntrack", "--service", "none", "--socket", "@SOCK")
	if code != exitOK || stderr != "no flows\n" || strings.Count(out, "\n") != 1 {
		t.Errorf("conntrack without matches: exit %d stdout %q stderr %q", code, out, stderr)
	}
	if code, out, _ := h.run("conntrack", "--service", "none", "--json", "--socket", "@SOCK"); code != exitOK || out != "[]\n" {
		t.Errorf("conntrack --json without matches: %q", out)
	}
	if len(h.pinOpens) != 0 {
		t.Errorf("pinned maps opened while the agent answers: %v", h.pinOpens)
	}
}

func TestConntrackPinnedFallback(t *testing.T) {
	h := newHarness(t, true) // no agent
	code, out, stderr := h.run("conntrack", "--socket", "@SOCK", "--pin-path", "/sys/fs/bpf/test")
	if code != exitOK {
		t.Fatalf("conntrack without agent: exit %d stderr %q", code, stderr)
	}
	if !strings.Contains(stderr, "agent not reachable") || !strings.Contains(stderr, "reading the pinned maps under /sys/fs/bpf/test directly") {
		t.Errorf("fallback not announced on stderr: %q", stderr)
	}
	want := `SERVICE  PROTO  CLIENT             VIP              BACKEND         STATE          IDLE
#1       tcp    198.18.0.10:40000  198.18.1.100:80  198.18.2.11:80  established    1s
#2       udp    198.18.0.11:5353   198.18.1.101:53  198.18.2.21:53  udp (expired)  1m10s
`
	if out != want {
		t.Errorf("pinned conntrack:\n%s\nwant:\n%s", out, want)
	}
	if !reflect.DeepEqual(h.pinOpens, []string{"/sys/fs/bpf/test"}) || !h.pinned.closed {
		t.Errorf("pinned opens %v closed %v", h.pinOpens, h.pinned.closed)
	}

	// With -c, names come from the config and the pin path from it too.
	cfgPath := filepath.Join(t.TempDir(), "sluice.yaml")
	os.WriteFile(cfgPath, []byte(goodConfig+"admin: {socket: "+h.socket+"}\ndatapath: {pin_path: /sys/fs/bpf/other}\n"), 0o600)
	code, out, _ = h.run("conntrack", "-c", cfgPath, "--backend", "198.18.2.11", "--json")
	var flows []admin.Flow
	if err := json.Unmarshal([]byte(out), &flows); code != exitOK || err != nil || len(flows) != 1 || flows[0].Service != "web-l4" || flows[0].Idle != "1.5s" {
		t.Errorf("pinned conntrack -c: exit %d, %v, %+v", code, err, flows)
	}
	if h.pinOpens[len(h.pinOpens)-1] != "/sys/fs/bpf/other" {
		t.Errorf("pin path from config not used: %v", h.pinOpens)
	}
	code, out, _ = h.run("conntrack", "-c", cfgPath, "--service", "web-l4")
	if code != exitOK || strings.Count(out, "\n") != 2 {
		t.Errorf("pinned conntrack --service by config name: exit %d\n%s", code, out)
	}

	h.pinned = nil
	env := h.env(&bytes.Buffer{}, &bytes.Buffer{})
	env.openPinned = func(string) (flowReader, error) { return nil, errors.New("no such file or directory") }
	var errb bytes.Buffer
	env.stderr = &errb
	if code := run(context.Background(), env, []string{"conntrack", "--socket", h.socket}); code != exitFailure ||
		!strings.Contains(errb.String(), "opening pinned maps under "+defaultPinPath) {
		t.Errorf("conntrack with neither agent nor pins: exit %d stderr %q", code, errb.String())
	}
}

func TestDrainUndrain(t *testing.T) {
	h := newHarness(t, false)
	code, out, stderr := h.run("drain", "web", "198.18.2.12:80", "--socket", "@SOCK")
	if code != exitOK || out != "web 198.18.2.12:80: draining (operator), 1 flow, 0 requests, cut in 25s\n" {
		t.Errorf("drain: exit %d stdout %q stderr %q", code, out, stderr)
	}
	code, out, _ = h.run("undrain", "web", "198.18.2.11:80", "--socket", "@SOCK")
	if code != exitOK || out != "web 198.18.2.11:80: active (dns), 2 flows, 4 requests\n" {
		t.Errorf("undrain: exit %d stdout %q", code, out)
	}
	code, out, _ = h.run("undrain", "web", "198.18.2.11", "--socket", "@SOCK") // an ip the pool has once
	if code != exitOK || out != "web 198.18.2.11:80: active (dns), 2 flows, 4 requests\n" {
		t.Errorf("undrain by ip: exit %d stdout %q", code, out)
	}
	if !slicesContain(h.agent.calls, "drain web 198.18.2.12:80") || !slicesContain(h.agent.calls, "undrain web 198.18.2.11:80") {
		t.Errorf("agent calls %v", h.agent.calls)
	}

	tests := []struct {
		args []string
		msg  string
	}{
		{[]string{"drain", "nope", "198.18.2.11:80"}, `sluice drain: pool "nope": unknown pool` + "\n"},
		{[]string{"undrain", "web", "198.18.2.99:80"}, "sluice undrain: pool web has no address 198.18.2.99:80: unknown address\n"},
	}
	for _, tt := range tests {
		code, _, stderr := h.run(append(tt.args, "--socket", "@SOCK")...)
		if code != exitFailure || stderr != tt.msg {
			t.Errorf("sluice %v: exit %d stderr %q, want 1 and %q", tt.args, code, stderr, tt.msg)
		}
	}
}

func slicesContain(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestReload(t *testing.T) {
	h := newHarness(t, false)
	if code, out, _ := h.run("reload", "--socket", "@SOCK"); code != exitOK || out != "config reloaded\n" {
		t.Errorf("reload: exit %d %q", code, out)
	}
	h.agent.reloadErr = errors.New(`/etc/sluice/sluice.yaml:7: pools[0].backends[0]: unknown key "wieght"`)
	code, _, stderr := h.run("reload", "--socket", "@SOCK")
	if code != exitFailure || stderr != "sluice reload: reload refused: /etc/sluice/sluice.yaml:7: pools[0].backends[0]: unknown key \"wieght\"\n" {
		t.Errorf("refused reload: exit %d stderr %q", code, stderr)
	}
	// Applied in part (issue 10 item 11): exit 1 with what did not apply,
	// and status shows it.
	h.agent.reloadErr = fmt.Errorf("%w: http service web-http not started: address already in use", admin.ErrReloadPartial)
	code, out, stderr := h.run("reload", "--socket", "@SOCK")
	if code != exitFailure || out != "" || stderr != "sluice reload: reload applied in part: http service web-http not started: address already in use\n" {
		t.Errorf("partial reload: exit %d out %q stderr %q", code, out, stderr)
	}
	h.agent.status.NotApplied = []string{"http service web-http not started: address already in use"}
	if code, out, _ := h.run("status", "--socket", "@SOCK"); code != exitOK ||
		!strings.Contains(out, "NOT APPLIED (the last start or reload could not apply 1 thing of the config):\n  - http service web-http not started") {
		t.Errorf("status after a partial reload: exit %d\n%s", code, out)
	}
}

func TestUnreachable(t *testing.T) {
	h := newHarness(t, true)
	for _, args := range [][]string{{"status"}, {"backends"}, {"drain", "web", "198.18.2.11:80"}, {"reload"}} {
		code, _, stderr := h.run(append(args, "--socket", "@SOCK")...)
		if code != exitUnreachable || !strings.Contains(stderr, "agent not reachable at "+h.socket) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("sluice %v without agent: exit %d stderr %q", args, code, stderr)
		}
	}
}

func TestSocketFromConfig(t *testing.T) {
	h := newHarness(t, false)
	cfgPath := filepath.Join(t.TempDir(), "sluice.yaml")
	os.WriteFile(cfgPath, []byte(goodConfig+"admin: {socket: "+h.socket+"}\n"), 0o600)
	if code, _, stderr := h.run("status", "-c", cfgPath); code != exitOK {
		t.Errorf("status -c: exit %d stderr %q", code, stderr)
	}
	if code, _, stderr := h.run("status", "--config", cfgPath); code != exitOK {
		t.Errorf("status --config: exit %d stderr %q", code, stderr)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte(badConfig), 0o600)
	if code, _, stderr := h.run("status", "-c", bad); code != exitFailure || !strings.Contains(stderr, "reading "+bad) {
		t.Errorf("status -c bad: exit %d stderr %q", code, stderr)
	}
}

func TestTeardown(t *testing.T) {
	live := newHarness(t, false)
	code, _, stderr := live.run("teardown", "--socket", "@SOCK")
	if code != exitFailure || !strings.Contains(stderr, "an agent is running") || len(live.teardown) != 0 {
		t.Errorf("teardown under a live agent: exit %d stderr %q teardowns %v", code, stderr, live.teardown)
	}
	code, out, _ := live.run("teardown", "--force", "--socket", "@SOCK", "--pin-path", "/sys/fs/bpf/x")
	if code != exitOK || !reflect.DeepEqual(live.teardown, []string{"/sys/fs/bpf/x"}) || !strings.Contains(out, "/sys/fs/bpf/x") {
		t.Errorf("teardown --force: exit %d out %q teardowns %v", code, out, live.teardown)
	}

	down := newHarness(t, true)
	if code, _, stderr := down.run("teardown", "--socket", "@SOCK"); code != exitOK || !reflect.DeepEqual(down.teardown, []string{defaultPinPath}) {
		t.Errorf("teardown without agent: exit %d stderr %q teardowns %v", code, stderr, down.teardown)
	}

	// Issue 10 item 13: an agent nobody reaches on this socket (another
	// socket, or a hung API) but holding the pin directory's lock.
	locked := newHarness(t, true)
	locked.pinsHeld = true
	if code, _, stderr := locked.run("teardown", "--socket", "@SOCK"); code != exitFailure ||
		!strings.Contains(stderr, "an agent holds the pins under "+defaultPinPath) || len(locked.teardown) != 0 {
		t.Errorf("teardown while the pins are locked: exit %d stderr %q teardowns %v", code, stderr, locked.teardown)
	}
	if code, _, stderr := locked.run("teardown", "--force", "--socket", "@SOCK"); code != exitOK || len(locked.teardown) != 1 {
		t.Errorf("teardown --force while the pins are locked: exit %d stderr %q", code, stderr)
	}
}

func TestAgent(t *testing.T) {
	h := newHarness(t, true)
	code, _, stderr := h.run("agent", "-c", "/etc/sluice/x.yaml", "--log-format", "json", "--log-level", "debug")
	if code != exitOK || !reflect.DeepEqual(h.ran, []string{"/etc/sluice/x.yaml v9.9.9-test"}) {
		t.Errorf("agent: exit %d ran %v", code, h.ran)
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(stderr)), &rec); err != nil || rec["msg"] != "fake agent ran" {
		t.Errorf("agent --log-format json: log %q (%v)", stderr, err)
	}

	env := h.env(&bytes.Buffer{}, &bytes.Buffer{})
	var errb bytes.Buffer
	env.stderr = &errb
	env.runAgent = func(context.Context, string, *slog.Logger, string, agent.RunOptions) error {
		return errors.New("attach xdp to veth0: operation not permitted")
	}
	if code := run(context.Background(), env, []string{"agent", "--config", "x.yaml"}); code != exitFailure ||
		errb.String() != "sluice agent: attach xdp to veth0: operation not permitted\n" {
		t.Errorf("failing agent: exit %d stderr %q", code, errb.String())
	}

	// SLUICE_L7_NETHTTP1 and SLUICE_L7_EVENTLOOPS in the environment reach
	// the agent as options: net/http's server when asked for, event loops
	// unless turned off.
	for _, tc := range []struct {
		val               string
		netHTTP1, evloops bool
	}{
		{"", false, true},
		{"1", true, true},
		{"0", false, false},
		{"off", false, false},
	} {
		env := h.env(&bytes.Buffer{}, &bytes.Buffer{})
		env.getenv = func(k string) string {
			if k == EnvL7NetHTTP1 && tc.val != "1" {
				return ""
			}
			if k == EnvL7NetHTTP1 || k == EnvL7EventLoops {
				return tc.val
			}
			return ""
		}
		var got agent.RunOptions
		env.runAgent = func(_ context.Context, _ string, _ *slog.Logger, _ string, ro agent.RunOptions) error {
			got = ro
			return nil
		}
		if code := run(context.Background(), env, []string{"agent", "-c", "x.yaml"}); code != exitOK || got.L7NetHTTP1 != tc.netHTTP1 || got.L7EventLoops != tc.evloops {
			t.Errorf("%s/%s=%q: exit %d, L7NetHTTP1 %v, L7EventLoops %v", EnvL7NetHTTP1, EnvL7EventLoops, tc.val, code, got.L7NetHTTP1, got.L7EventLoops)
		}
	}
	// The garbage collector is paced unless the operator set GOGC.
	for _, gogc := range []string{"", "100", "off"} {
		env := h.env(&bytes.Buffer{}, &bytes.Buffer{})
		env.getenv = func(k string) string {
			if k == "GOGC" {
				return gogc
			}
			return ""
		}
		var got agent.RunOptions
		env.runAgent = func(_ context.Context, _ string, _ *slog.Logger, _ string, ro agent.RunOptions) error {
			got = ro
			return nil
		}
		want := uint64(0)
		if gogc == "" {
			want = gcpace.DefaultHeadroom
		}
		if code := run(context.Background(), env, []string{"agent", "-c", "x.yaml"}); code != exitOK || got.GCHeadroom != want {
			t.Errorf("GOGC=%q: exit %d, GCHeadroom %d, want %d", gogc, code, got.GCHeadroom, want)
		}
	}
}

func TestHuman(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"},
		{250 * time.Millisecond, "250ms"},
		{45 * time.Second, "45s"},
		{3*time.Minute + 20*time.Second, "3m20s"},
		{5 * time.Minute, "5m"},
		{2*time.Hour + 5*time.Minute + 59*time.Second, "2h5m"},
		{76 * time.Hour, "3d4h"},
	}
	for _, tt := range tests {
		if got := human(tt.d); got != tt.want {
			t.Errorf("human(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
	for n, want := range map[uint64]string{0: "0B", 1023: "1023B", 1024: "1.0KiB", 3 << 20: "3.0MiB", 5 << 30: "5.0GiB"} {
		if got := bytesHuman(n); got != want {
			t.Errorf("bytesHuman(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestDrainWait(t *testing.T) {
	h := newHarness(t, false)
	// Flows of 198.18.2.12:80 go down by one per status call, then it is removed.
	h.agent.status.Pools[0].Backends[1].ActiveFlows = 3
	h.agent.onStatus = func(st *admin.Status) {
		b := &st.Pools[0].Backends[1]
		switch {
		case b.ActiveFlows > 0:
			b.ActiveFlows--
		default:
			b.State, b.Cause, b.DrainDeadline = "removed", "no-flows", nil
		}
	}
	code, out, stderr := h.run("drain", "--wait", "web", "198.18.2.12:80", "--socket", "@SOCK")
	if code != exitOK || !strings.HasSuffix(out, "web 198.18.2.12:80: removed (no-flows), 0 flows, 0 requests\n") {
		t.Errorf("drain --wait: exit %d stdout %q stderr %q", code, out, stderr)
	}
	if !strings.Contains(stderr, "1 flow, 0 requests, cut in 25s") {
		t.Errorf("drain --wait shows no progress: %q", stderr)
	}

	// An address only http services use: no flows, the requests in
	// flight to it are what the drain waits for, and what it shows.
	b := &h.agent.status.Pools[0].Backends[1]
	b.State, b.Cause, b.Requests = "draining", "operator", ptr(3)
	h.agent.onStatus = func(st *admin.Status) {
		b := &st.Pools[0].Backends[1]
		switch {
		case *b.Requests > 0:
			b.Requests = ptr(*b.Requests - 1)
		default:
			b.State, b.Cause = "removed", "no-flows"
		}
	}
	code, out, stderr = h.run("drain", "--wait", "web", "198.18.2.12:80", "--socket", "@SOCK")
	if code != exitOK || !strings.HasSuffix(out, "removed (no-flows), 0 flows, 0 requests\n") ||
		!strings.Contains(stderr, "0 flows, 1 request\n") {
		t.Errorf("drain --wait of an http pool's address: exit %d stdout %q stderr %q", code, out, stderr)
	}

	// Undrained by someone else while waiting: an error.
	h.agent.onStatus = func(st *admin.Status) {
		b := &st.Pools[0].Backends[1]
		b.State, b.Cause, b.ActiveFlows = "active", "operator", 1
	}
	code, _, stderr = h.run("drain", "--wait", "web", "198.18.2.12:80", "--socket", "@SOCK")
	if code != exitFailure || !strings.Contains(stderr, "is active (operator) again") {
		t.Errorf("drain --wait undrained meanwhile: exit %d stderr %q", code, stderr)
	}

	// Never drains: --timeout ends the wait.
	h.agent.onStatus = func(st *admin.Status) {
		b := &st.Pools[0].Backends[1]
		b.State, b.ActiveFlows = "draining", 5
	}
	start := time.Now()
	code, _, stderr = h.run("drain", "--wait", "--timeout", "100ms", "web", "198.18.2.12:80", "--socket", "@SOCK")
	if code != exitFailure || !strings.Contains(stderr, "deadline exceeded") || time.Since(start) > 3*time.Second {
		t.Errorf("drain --wait --timeout: exit %d stderr %q after %v", code, stderr, time.Since(start))
	}
}

func TestNodeDrainCommand(t *testing.T) {
	h := newHarness(t, false)
	// Without a bgp section the agent refuses.
	if code, _, stderr := h.run("node", "drain", "--socket", "@SOCK"); code != exitFailure || !strings.Contains(stderr, "bgp") {
		t.Fatalf("no bgp: exit %d stderr %q", code, stderr)
	}
	h.agent.mu.Lock()
	h.agent.status.Node = &admin.Node{State: "serving", Table: 4153, Protocol: 201,
		VIPs: []admin.VIP{{Address: "198.18.1.100", Services: []string{"web-l4"}, Announced: true, Reason: "serving"}}}
	polls := 0
	h.agent.onStatus = func(st *admin.Status) {
		if st.Node.State == "draining" {
			st.Node.VIPs[0].Announced, st.Node.VIPs[0].Reason = false, "node draining"
			if polls++; polls > 2 {
				at := testNow.Add(7 * time.Second)
				st.Node.State = "drained"
				st.Node.Drain = &admin.NodeDrain{Started: testNow, DrainedAt: &at, Cause: "quiet"}
			}
		}
	}
	h.agent.mu.Unlock()
	code, out, stderr := h.run("node", "drain", "--quiet", "2s", "--socket", "@SOCK")
	if code != exitOK || !strings.Contains(out, "withdrawn: 198.18.1.100") || !strings.Contains(out, "drained (quiet) after 7s") {
		t.Fatalf("node drain: exit %d out %q stderr %q", code, out, stderr)
	}
	if !slices.Contains(h.agent.calls, "node-drain 0s 2s") {
		t.Fatalf("calls %v", h.agent.calls)
	}
	code, out, _ = h.run("status", "--socket", "@SOCK")
	if code != exitOK || !strings.Contains(out, "node: drained (VIP routes in table 4153, protocol 201)") {
		t.Fatalf("status: %q", out)
	}
	if code, out, _ := h.run("node", "undrain", "--socket", "@SOCK"); code != exitOK || !strings.Contains(out, "node serving") {
		t.Fatalf("undrain: exit %d %q", code, out)
	}
	if code, _, _ := h.run("node", "sideways", "--socket", "@SOCK"); code != exitUsage {
		t.Fatalf("unknown action: exit %d", code)
	}
}

func TestNodeBIRDConfig(t *testing.T) {
	h := newHarness(t, true)
	path := filepath.Join(t.TempDir(), "sluice.yaml")
	cfg := `interfaces: [eth0]
pools: [{name: web, backends: [{address: 198.18.2.11:80}]}]
services: [{name: web-l4, listen: 198.18.1.100:80, pool: web}]
bgp:
  local_asn: 64512
  router_id: 198.18.4.11
  hold_time: 3s
  keepalive: 1s
  bfd: {interval: 100ms}
  communities: ["64512:7"]
  peers: [{address: 198.18.4.1, asn: 64500}]
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := h.run("node", "bird-config", "-c", path)
	for _, want := range []string{"router id 198.18.4.11;", "kernel table 4153;", "import where krt_source = 201 && net.len = 32;",
		"neighbor 198.18.4.1 as 64500;", "local as 64512;", "hold time 3;", "keepalive time 1;", "bfd on;",
		"min rx interval 100 ms;", "bgp_community.add((64512, 7));", "export filter sluice_export;"} {
		if !strings.Contains(out, want) {
			t.Errorf("bird config lacks %q", want)
		}
	}
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}

func ptr[T any](v T) *T { return &v }

// TestStatusInterfaces: the xdp line says each interface's mode, a
// fallback, and an interface the program was lost from.
func TestStatusInterfaces(t *testing.T) {
	var b bytes.Buffer
	st := admin.Status{Version: "v1", ConfigPath: "/c", StartedAt: testNow, Interfaces: []admin.Interface{
		{Name: "eth0", Mode: "native"}, {Name: "eth1", Mode: "generic", Fallback: true}, {Name: "eth2", Mode: admin.ModeDetached}}}
	if err := writeStatus(&b, st, testNow); err != nil {
		t.Fatal(err)
	}
	want := "xdp: eth0 native, eth1 generic (FALLBACK from native: slow path), eth2 NOT ATTACHED (its traffic is not balanced; the agent attaches it again when it can)\n"
	if !strings.Contains(b.String(), want) {
		t.Errorf("status:\n%s\nwant the line %q", b.String(), want)
	}
}
