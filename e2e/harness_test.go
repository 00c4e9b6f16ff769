// Package e2e drives the real sluice binary in the netns lab of scripts/lab.sh.
//
// Every test builds its own lab (namespaces named sl-ID-*, addresses in
// 198.18.0.0/15 only), starts the test backends and `sluice agent` inside it,
// asserts through real sockets, and removes everything on cleanup. The suite
// needs root; without it every test skips, except under CI=true where it fails.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/testenv"
	"github.com/sluicelb/sluice/userspace/admin"
)

// suite is what TestMain prepares once for all tests.
type suite struct {
	repoRoot   string
	sluice     string // built binaries
	backend    string
	loadgen    string
	dnsserver  string // "" when it did not build (dnsErr): only DNS tests fail
	skipReason string // non-empty: every test skips (or fails under CI)
	buildErr   error  // building failed: every test fails
	dnsErr     error  // building the lab DNS server failed
}

var env suite

func TestMain(m *testing.M) {
	code := func() int {
		root, err := repoRoot()
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
			return 1
		}
		env.repoRoot = root
		switch {
		case runtime.GOOS != "linux":
			env.skipReason = "the e2e lab needs Linux network namespaces"
		case os.Geteuid() != 0:
			env.skipReason = "the e2e lab needs root (network namespaces, XDP, bpffs): run `sudo make test`"
		}
		if env.skipReason != "" {
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "sluice-e2e-bin-")
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
			return 1
		}
		defer os.RemoveAll(dir)
		env.buildErr = buildAll(root, dir)
		// Labs left behind by an earlier run that died (a test timeout skips
		// every cleanup) go first.
		if out, err := exec.Command(filepath.Join(root, "scripts", "lab.sh"), "gc").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: lab.sh gc: %v\n%s", err, out)
		}
		return m.Run()
	}()
	os.Exit(code)
}

func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	root := filepath.Dir(wd) // tests run in e2e/
	if _, err := os.Stat(filepath.Join(root, "scripts", "lab.sh")); err != nil {
		return "", fmt.Errorf("repository root not found from %s: %w", wd, err)
	}
	return root, nil
}

func buildAll(root, dir string) error {
	goBin := "go"
	if _, err := exec.LookPath("go"); err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	version := "e2e"
	if out, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty").Output(); err == nil {
		version = strings.TrimSpace(string(out))
	}
	// E2E_RACE=1: the agent is built with the race detector; a race it
	// reports fails the test that ran it.
	var race []string
	if os.Getenv("E2E_RACE") == "1" {
		race = []string{"-race"}
	}
	targets := []struct {
		out, pkg string
		dst      *string
		ldflags  string
		flags    []string
	}{
		{"sluice", "./cmd/sluice", &env.sluice, "-X main.version=" + version, race},
		{"sluice-testbackend", "./e2e/backend", &env.backend, "", nil},
		{"sluice-loadgen", "./e2e/loadgen", &env.loadgen, "", nil},
		{"sluice-icmperr", "./e2e/icmperr", &icmperrBin, "", nil},
		{"sluice-flood", "./e2e/flood", &floodBin, "", nil},
		{"sluice-grpcbackend", "./e2e/grpcbackend", &grpcBackendBin, "", nil},
	}
	for _, tg := range targets {
		out := filepath.Join(dir, tg.out)
		args := append([]string{"build", "-o", out}, tg.flags...)
		if tg.ldflags != "" {
			args = append(args, "-ldflags", tg.ldflags)
		}
		args = append(args, tg.pkg)
		cmd := exec.Command(goBin, args...)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", tg.pkg, err, b)
		}
		*tg.dst = out
	}
	// The lab DNS server is only needed by the DNS tests.
	out := filepath.Join(dir, "sluice-dnsserver")
	cmd := exec.Command(goBin, "build", "-o", out, "./e2e/dnsserver")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		env.dnsErr = fmt.Errorf("go build ./e2e/dnsserver: %w\n%s", err, b)
	} else {
		env.dnsserver = out
	}
	return nil
}

// parallel lets a test run next to others (go test -parallel: 2 in make
// e2e, E2E_PARALLEL), each in its own lab: for tests that mostly wait
// (TTLs, drains, timers, a restart) and make light traffic, which is most
// of them. Tests that make load or count what load
// did (floods, spreads, a rate), build releases, run several agents (the
// clusters) or run h2spec stay serial: a neighbour would change what they
// measure. E2E_SERIAL=1 runs every test alone, to tell a failure from a
// neighbour's disturbance.
func parallel(t *testing.T) {
	t.Helper()
	if os.Getenv("E2E_SERIAL") == "" {
		t.Parallel()
	}
}

// requireLab skips (or fails in CI, testenv's rule) when the lab cannot
// run here.
func requireLab(t *testing.T) {
	t.Helper()
	if env.skipReason != "" {
		testenv.SkipOrFail(t, "the e2e suite cannot run: %s", env.skipReason)
	}
	if env.buildErr != nil {
		t.Fatalf("building the binaries: %v", env.buildErr)
	}
}

// Lab is one lab built by scripts/lab.sh for one test.
type Lab struct {
	t   *testing.T
	ID  string
	Env map[string]string
	dir string // per-test scratch directory

	mu    sync.Mutex
	procs []*Proc
}

// newLab brings up a lab; t.Cleanup stops its processes and takes it down.
func newLab(t *testing.T) *Lab {
	t.Helper()
	return newLabWith(t, "up")
}

// newLabWith brings up a lab with `lab.sh VERB ID ARGS...` (up, or
// up-cluster N for the multi-node lab).
func newLabWith(t *testing.T, verb string, args ...string) *Lab {
	t.Helper()
	requireLab(t)
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("random lab id: %v", err)
	}
	l := &Lab{t: t, ID: hex.EncodeToString(b[:]), dir: t.TempDir()}
	lab := filepath.Join(env.repoRoot, "scripts", "lab.sh")
	t.Cleanup(func() {
		l.stopAll()
		out, err := exec.Command(lab, "down", l.ID).CombinedOutput()
		if err != nil {
			t.Errorf("lab.sh down %s: %v\n%s", l.ID, err, out)
		}
	})
	up := exec.Command(lab, append([]string{verb, l.ID}, args...)...)
	// lab.sh gc takes the lab down if this process dies without cleaning up.
	up.Env = append(os.Environ(), fmt.Sprintf("LAB_OWNER_PID=%d", os.Getpid()))
	out, err := up.CombinedOutput()
	if err != nil {
		t.Fatalf("lab.sh %s %s: %v\n%s", verb, l.ID, err, out)
	}
	l.Env, err = readEnv(filepath.Join(env.repoRoot, ".lab", l.ID+".env"))
	if err != nil {
		t.Fatalf("lab %s: %v", l.ID, err)
	}
	assertRootNamespaceClean(t)
	t.Logf("lab %s up", l.ID)
	return l
}

// assertRootNamespaceClean checks the lab rule: the root namespace holds no
// lab address or route (198.18.0.0/15, 2001:2::/48).
func assertRootNamespaceClean(t *testing.T) {
	t.Helper()
	for _, argv := range [][]string{{"ip", "-4", "addr", "show"}, {"ip", "-4", "route", "show", "table", "all"},
		{"ip", "-6", "addr", "show"}, {"ip", "-6", "route", "show", "table", "all"}} {
		out, err := runCmd(5*time.Second, argv[0], argv[1:]...)
		if err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "198.18.") || strings.Contains(line, "198.19.") || strings.Contains(line, "2001:2:") {
				t.Errorf("root namespace has a lab address or route: %s", strings.TrimSpace(line))
			}
		}
	}
}

func readEnv(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read env file: %w", err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok {
			m[k] = v
		}
	}
	return m, nil
}

// NS is the namespace of lab host h (client, lb, sw, be1, be2, be3, dns).
func (l *Lab) NS(h string) string { return "sl-" + l.ID + "-" + h }

// command runs argv in host h. nsenter switches only the network namespace,
// so the host's bpffs at /sys/fs/bpf stays visible (ip netns exec hides it).
func (l *Lab) command(ctx context.Context, h string, argv ...string) *exec.Cmd {
	args := append([]string{"--net=/run/netns/" + l.NS(h), "--"}, argv...)
	return exec.CommandContext(ctx, "nsenter", args...)
}

// Run runs argv in host h, waits up to timeout, and returns its combined output.
func (l *Lab) Run(h string, timeout time.Duration, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := l.command(ctx, h, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s in %s: %w: %s", strings.Join(argv, " "), h, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// MustRun is Run that fails the test on error.
func (l *Lab) MustRun(h string, timeout time.Duration, argv ...string) string {
	l.t.Helper()
	out, err := l.Run(h, timeout, argv...)
	if err != nil {
		l.t.Fatal(err)
	}
	return out
}

// Proc is a background process started in the lab.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // valid after done
	log  string

	stdout *bytes.Buffer
	mu     *sync.Mutex
}

// Start runs argv in host h in the background; its stdout and stderr go to a
// log file (and stdout is also kept for Output). The lab kills it on cleanup.
func (l *Lab) Start(name, h string, argv ...string) *Proc {
	l.t.Helper()
	p := l.start(name, h, nil, argv...)
	return p
}

// StartPiped is Start with stderr delivered line by line to lines (closed at
// exit). Lines are dropped while lines is full: give it room.
func (l *Lab) StartPiped(name, h string, lines chan<- string, argv ...string) *Proc {
	l.t.Helper()
	return l.start(name, h, lines, argv...)
}

func (l *Lab) start(name, h string, lines chan<- string, argv ...string) *Proc {
	l.t.Helper()
	logPath := filepath.Join(l.dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		l.t.Fatalf("start %s: %v", name, err)
	}
	p := &Proc{Name: name, done: make(chan struct{}), log: logPath, stdout: &bytes.Buffer{}, mu: &sync.Mutex{}}
	p.cmd = l.command(context.Background(), h, argv...)
	p.cmd.Stdout = io.MultiWriter(f, lockedWriter{p.mu, p.stdout})
	var pr *io.PipeReader
	if lines != nil {
		var pw *io.PipeWriter
		pr, pw = io.Pipe()
		p.cmd.Stderr = io.MultiWriter(f, pw)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(pr)
			for sc.Scan() {
				// Never block the process on a reader that stopped reading.
				select {
				case lines <- sc.Text():
				default:
				}
			}
		}()
		defer func() {
			go func() { <-p.done; _ = pw.Close() }()
		}()
	} else {
		p.cmd.Stderr = f
	}
	if err := p.cmd.Start(); err != nil {
		_ = f.Close()
		l.t.Fatalf("start %s (%s): %v", name, strings.Join(argv, " "), err)
	}
	go func() {
		p.err = p.cmd.Wait()
		_ = f.Close()
		close(p.done)
	}()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(b)
}

// PID is the process id (nsenter execs the command, so it is the command's).
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Running reports whether the process has not exited yet.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Signal sends sig to the process (by PID).
func (p *Proc) Signal(sig syscall.Signal) error {
	if !p.Running() {
		return nil
	}
	if err := syscall.Kill(p.PID(), sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %s to %s (pid %d): %w", sig, p.Name, p.PID(), err)
	}
	return nil
}

// Wait waits up to timeout for the process to exit and returns its exit error.
func (p *Proc) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("%s (pid %d) still running after %s", p.Name, p.PID(), timeout)
	}
}

// Stop sends SIGTERM, then SIGKILL after timeout.
func (p *Proc) Stop(timeout time.Duration) {
	_ = p.Signal(syscall.SIGTERM)
	if p.Wait(timeout) != nil && p.Running() {
		_ = p.Signal(syscall.SIGKILL)
		_ = p.Wait(5 * time.Second)
	}
}

// Output is what the process wrote on stdout so far.
func (p *Proc) Output() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.stdout.Bytes())
}

// Log is the process's log file content (stdout and stderr).
func (p *Proc) Log() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	return string(b)
}

func (l *Lab) stopAll() {
	l.mu.Lock()
	procs := l.procs
	l.procs = nil
	l.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop(3 * time.Second)
	}
}

// StartBackends runs the test backend on :80 in be1..be3 and waits for it.
func (l *Lab) StartBackends() {
	l.t.Helper()
	for _, be := range []string{"be1", "be2", "be3"} {
		l.startBackend(be)
	}
	for _, be := range []string{"be1", "be2", "be3"} {
		l.waitBackend(be)
	}
}

// startBackend runs the test backend on :80 (and UDP :5353) in host be,
// named be, with flags added (e.g. "--idle-timeout", "50ms").
func (l *Lab) startBackend(be string, flags ...string) {
	l.t.Helper()
	l.Start(be, be, append([]string{env.backend, "--listen", ":80", "--udp-listen", ":5353", "--name", be}, flags...)...)
}

// waitBackend waits until the test backend in host be answers on :80.
func (l *Lab) waitBackend(be string) {
	l.t.Helper()
	waitFor(l.t, 5*time.Second, be+" listening", func() error {
		_, err := l.Run(be, 2*time.Second, "curl", "-sf", "-o", "/dev/null", "--max-time", "1", "http://127.0.0.1:80/healthz")
		return err
	})
}

// runCmd runs a command in the root namespace (tools like bpftool) and
// returns its combined output.
func runCmd(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// DNS is the lab DNS server (e2e/dnsserver) on 198.18.2.53:53 in the dns host.
type DNS struct {
	lab     *Lab
	records string // records file
	proc    *Proc
}

// StartDNS starts the lab DNS server answering from records (zone-file lines,
// see e2e/dnsserver) and waits until it answers.
func (l *Lab) StartDNS(records string) *DNS {
	l.t.Helper()
	if env.dnsErr != nil {
		l.t.Fatalf("the lab DNS server did not build: %v", env.dnsErr)
	}
	d := &DNS{lab: l, records: filepath.Join(l.dir, "records.zone")}
	d.Set(records)
	d.proc = l.Start("dns", "dns", env.dnsserver, "--listen", "198.18.2.53:53", "--records", d.records)
	waitFor(l.t, 5*time.Second, "the lab DNS server", func() error {
		_, err := l.Run("dns", 2*time.Second, "bash", "-c", "exec 3<>/dev/tcp/198.18.2.53/53")
		return err
	})
	return d
}

// ListenAlso starts a second lab DNS server in the dns host answering from
// the same records on addr (e.g. "[2001:2:0:2::53]:53", for a resolver
// asked over IPv6) and waits until it answers over TCP.
func (d *DNS) ListenAlso(addr string) {
	d.lab.t.Helper()
	d.lab.Start("dns-"+strings.NewReplacer("[", "", "]", "", ":", "_").Replace(addr), "dns",
		env.dnsserver, "--listen", addr, "--records", d.records)
	waitFor(d.lab.t, 5*time.Second, "the lab DNS server on "+addr, func() error {
		host, port, _ := strings.Cut(strings.TrimPrefix(addr, "["), "]:")
		_, err := d.lab.Run("dns", 2*time.Second, "bash", "-c", "exec 3<>/dev/tcp/"+host+"/"+port)
		return err
	})
}

// Set replaces the records (write and rename: the server never reads half a file).
func (d *DNS) Set(records string) {
	d.lab.t.Helper()
	tmp := d.records + ".tmp"
	if err := os.WriteFile(tmp, []byte(records), 0o644); err != nil {
		d.lab.t.Fatalf("write dns records: %v", err)
	}
	if err := os.Rename(tmp, d.records); err != nil {
		d.lab.t.Fatalf("write dns records: %v", err)
	}
}

// waitFor polls fn until it succeeds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Backend addresses of the lab, by name: beN on IPv4, beNv6 the same host
// on IPv6 (2001:2::/48).
var backendAddr = map[string]string{
	"be1":   "198.18.2.11:80",
	"be2":   "198.18.2.12:80",
	"be3":   "198.18.2.13:80",
	"be1v6": "[2001:2:0:2::11]:80",
	"be2v6": "[2001:2:0:2::12]:80",
	"be3v6": "[2001:2:0:2::13]:80",
}

// vip is the L4 service's VIP; vip6 the IPv6 one (for IPv6 L4 tests).
const (
	vip  = "198.18.1.100"
	vip6 = "2001:2:0:1::100"
)

// agentConfig is what a test varies in the agent's config.
type agentConfig struct {
	// Env is added to the agent's environment ("KEY=value").
	Env          []string
	DrainTimeout time.Duration
	// Backends of pool web, by name; default be1, be2, be3.
	Backends []string
	// UDP adds pool udp (be1..be3 port 5353) and service udp-l4 at VIP:53/udp.
	UDP bool
	// DNSName, when set, makes pool web one DNS-named backend (port 80)
	// resolved through the lab DNS server, instead of Backends.
	DNSName string
	// Mode of service web-l4: nat (default) or snat.
	Mode string
	// HTTP adds service web-http at httpVIP:80 (the L7 stage, pool web) and
	// a short passive ejection on pool web. httpVIP must be local to the lb
	// (Lab.AddLocalVIP): the proxy binds it.
	HTTP bool
	// Health adds a fast active HTTP health check (/healthz) to pool web.
	Health bool
	// Ejection, Timeouts, Retry replace pool web's ejection block and
	// web-http's timeouts and retry blocks (YAML flow maps) when set.
	Ejection, Timeouts, Retry string
	// NXDomainHold sets dns.nxdomain_hold when non-zero.
	NXDomainHold time.Duration
	// ExtraPools and ExtraServices are YAML list items ("  - name: ...")
	// appended to pools and services.
	ExtraPools, ExtraServices string
	// Datapath is appended to the datapath flow map (", key: value, ...").
	Datapath string
	// HTTPExtra is appended to service web-http's keys (lines indented by
	// four spaces, e.g. "    client: {header_timeout: 1s}\n").
	HTTPExtra string
	// L4v6 adds service web6-l4 at [vip6]:80/tcp on pool web (its IPv6
	// addresses; Mode applies): the IPv6 data path.
	L4v6 bool
	// DNSServers is the dns.servers list (YAML flow items); default
	// "198.18.2.53:53".
	DNSServers string
	// HTTP6 adds service web6-http at [httpVIP6]:80 (the L7 stage on
	// IPv6, pool web, web-http's timeouts and retry); with HTTP, pool web
	// serves both.
	HTTP6 bool
}

// httpVIP is the L7 service's address; httpVIP6 the IPv6 one.
const (
	httpVIP  = "198.18.1.101"
	httpVIP6 = "2001:2:0:1::101"
)

// AddLocalVIP assigns addr/32 (addr/128 for IPv6) to the lb's loopback: an
// L7 listen address must be local, unlike an L4 VIP (which XDP intercepts).
func (l *Lab) AddLocalVIP(addr string) {
	l.t.Helper()
	prefix := addr + "/32"
	if strings.Contains(addr, ":") {
		prefix = addr + "/128"
	}
	l.MustRun("lb", 5*time.Second, "ip", "addr", "add", prefix, "dev", "lo")
}

// Agent is a running `sluice agent` in the lab's lb namespace.
type Agent struct {
	lab     *Lab
	Config  string // config file
	Socket  string // admin socket
	PinPath string
	proc    *Proc
	starts  int
	// Binary is the sluice binary Start runs (default: the suite's).
	Binary string
	// Env is added to the agent's environment (agentConfig.Env).
	Env []string
}

// StartAgent writes a config (service web-l4 at VIP:80 -> pool web of
// be1..be3), starts the agent in the lb namespace and waits until it answers.
func (l *Lab) StartAgent(c agentConfig) *Agent {
	l.t.Helper()
	return l.StartAgentBinary(c, "")
}

// StartAgentBinary is StartAgent with another sluice binary (an older
// release, for upgrade tests; "": the suite's).
func (l *Lab) StartAgentBinary(c agentConfig, binary string) *Agent {
	l.t.Helper()
	a := &Agent{
		Binary:  binary,
		lab:     l,
		Config:  filepath.Join(l.dir, "sluice.yaml"),
		Socket:  filepath.Join(l.dir, "admin.sock"),
		PinPath: "/sys/fs/bpf/sluice-e2e-" + l.ID,
	}
	if len(a.Socket) > 100 {
		// unix socket paths are limited to 108 bytes
		a.Socket = filepath.Join(os.TempDir(), "sluice-e2e-"+l.ID+".sock")
	}
	a.Env = c.Env
	a.WriteConfig(c)
	l.t.Cleanup(func() {
		a.Kill()
		out, err := l.Run("lb", 30*time.Second, env.sluice, "teardown", "--socket", a.Socket, "--pin-path", a.PinPath)
		if err != nil {
			l.t.Errorf("sluice teardown: %v", err)
		} else if _, serr := os.Stat(a.PinPath); serr == nil {
			l.t.Errorf("sluice teardown left %s behind: %s", a.PinPath, out)
		}
	})
	a.Start()
	return a
}

// WriteConfig (re)writes the agent's config file from c; `sluice reload`
// or SIGHUP applies it.
func (a *Agent) WriteConfig(c agentConfig) {
	a.lab.t.Helper()
	a.WriteRawConfig(a.render(c))
}

// WriteRawConfig writes text as the agent's config file.
func (a *Agent) WriteRawConfig(text string) {
	a.lab.t.Helper()
	// Write and rename, so the agent never reads half a file.
	tmp := a.Config + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		a.lab.t.Fatalf("write config: %v", err)
	}
	if err := os.Rename(tmp, a.Config); err != nil {
		a.lab.t.Fatalf("write config: %v", err)
	}
}

func (a *Agent) render(c agentConfig) string {
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 30 * time.Second
	}
	if c.Backends == nil {
		c.Backends = []string{"be1", "be2", "be3"}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `# written by the e2e suite (lab %s)
interfaces: [eth0, eth1]
admin: {socket: %s}
metrics: {listen: 127.0.0.1:9464}
datapath: {pin_path: %s, xdp_mode: native%s}
dns: {servers: [%s], min_ttl: 1s, timeout: 1s%s}
pools:
  - name: web
    backends:
`, a.lab.ID, a.Socket, a.PinPath, c.Datapath, or(c.DNSServers, `"198.18.2.53:53"`), nxHold(c.NXDomainHold))
	if c.DNSName != "" {
		fmt.Fprintf(&b, "      - name: %s\n        port: 80\n", c.DNSName)
	} else {
		for _, be := range c.Backends {
			fmt.Fprintf(&b, "      - address: \"%s\"\n", backendAddr[be])
		}
	}
	fmt.Fprintf(&b, "    drain_timeout: %s\n", c.DrainTimeout)
	switch {
	case c.Ejection != "":
		fmt.Fprintf(&b, "    ejection: %s\n", c.Ejection)
	case c.HTTP || c.HTTP6:
		b.WriteString("    ejection: {failures: 2, window: 10s, base_time: 2s, max_time: 10s, max_ejected_percent: 50}\n")
	}
	if c.Health {
		b.WriteString("    health_check: {http: {path: /healthz}, interval: 300ms, timeout: 250ms, rise: 2, fall: 2}\n")
	}
	if c.UDP {
		b.WriteString(`  - name: udp
    backends:
      - address: 198.18.2.11:5353
      - address: 198.18.2.12:5353
      - address: 198.18.2.13:5353
`)
	}
	b.WriteString(c.ExtraPools)
	if c.Mode == "" {
		c.Mode = "nat"
	}
	fmt.Fprintf(&b, `services:
  - name: web-l4
    listen: %s:80
    protocol: tcp
    mode: %s
    pool: web
`, vip, c.Mode)
	if c.L4v6 {
		fmt.Fprintf(&b, `  - name: web6-l4
    listen: "[%s]:80"
    protocol: tcp
    mode: %s
    pool: web
`, vip6, c.Mode)
	}
	// web-http and web6-http: the L7 stage on pool web, on IPv4 and IPv6.
	httpService := func(name, listen string) {
		fmt.Fprintf(&b, `  - name: %s
    listen: "%s"
    protocol: http
    pool: web
    timeouts: %s
    retry: %s
`, name, listen, or(c.Timeouts, "{connect: 1s, read: 2s, total: 5s}"),
			or(c.Retry, "{attempts: 3, on: [connect-failure, reset, timeout, 502, 503, 504], methods: [GET, HEAD]}"))
	}
	if c.HTTP {
		httpService("web-http", httpVIP+":80")
		b.WriteString(c.HTTPExtra)
	}
	if c.HTTP6 {
		httpService("web6-http", "["+httpVIP6+"]:80")
	}
	if c.UDP {
		fmt.Fprintf(&b, `  - name: udp-l4
    listen: %s:53
    protocol: udp
    mode: nat
    pool: udp
`, vip)
	}
	b.WriteString(c.ExtraServices)
	return b.String()
}

func or(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

func nxHold(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return fmt.Sprintf(", nxdomain_hold: %s", d)
}

// Start (re)starts the agent process and waits for readiness.
func (a *Agent) Start() {
	t := a.lab.t
	t.Helper()
	a.starts++
	n := a.starts
	bin := a.Binary
	if bin == "" {
		bin = env.sluice
	}
	// env(1) execs the agent: its process is the agent's.
	argv := append(append([]string{"env"}, a.Env...), bin, "agent", "-c", a.Config)
	proc := a.lab.Start(fmt.Sprintf("agent-%d", n), "lb", argv...)
	a.proc = proc
	t.Cleanup(func() {
		// Runs after the agent is stopped (cleanups run last-in first-out).
		log := proc.Log()
		if strings.Contains(log, "WARNING: DATA RACE") {
			t.Errorf("the agent (start %d) reported a data race (built with E2E_RACE=1)", n)
		}
		if t.Failed() {
			t.Logf("agent log (start %d):\n%s", n, log)
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := a.Status(); err == nil {
			return
		} else if !a.proc.Running() {
			t.Fatalf("agent exited before becoming ready (%v):\n%s", a.proc.Wait(time.Second), a.proc.Log())
		} else if time.Now().After(deadline) {
			t.Fatalf("agent not ready after 15s: %v\n%s", err, a.proc.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Kill stops the agent with SIGKILL if it runs.
func (a *Agent) Kill() {
	if a.proc != nil && a.proc.Running() {
		_ = a.proc.Signal(syscall.SIGKILL)
		_ = a.proc.Wait(5 * time.Second)
	}
}

// CLI runs `sluice ARGS --socket S` (from the root namespace: the socket is a file).
func (a *Agent) CLI(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	argv := append([]string{args[0], "--socket", a.Socket}, args[1:]...)
	out, err := exec.CommandContext(ctx, env.sluice, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("sluice %s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Status is `sluice status --json`.
func (a *Agent) Status() (admin.Status, error) {
	var st admin.Status
	out, err := a.CLI("status", "--json")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("decode status: %w: %s", err, out)
	}
	return st, nil
}

// BackendState is the state of addr in pool web ("" when absent).
func (a *Agent) BackendState(addr string) (string, error) {
	st, err := a.Status()
	if err != nil {
		return "", err
	}
	for _, p := range st.Pools {
		if p.Name != "web" {
			continue
		}
		for _, b := range p.Backends {
			if b.Address == addr {
				return b.State, nil
			}
		}
	}
	return "", nil
}

// Report is the loadgen's JSON report.
type Report struct {
	Requests  int                `json:"requests"`
	OK        int                `json:"ok"`
	Failures  int                `json:"failures"`
	Dials     int                `json:"dials"`
	ByBackend map[string]int     `json:"by_backend"`
	Errors    map[string]int     `json:"errors"`
	Samples   []string           `json:"error_samples"`
	LatencyMS map[string]float64 `json:"latency_ms"`
}

// Event is one loadgen --events line.
type Event struct {
	TimeMS  int64  `json:"t"`
	Worker  int    `json:"worker"`
	Conn    int    `json:"conn"`
	Event   string `json:"event"`
	Backend string `json:"backend"`
	Kind    string `json:"kind"`
	Error   string `json:"error"`
	// Latency is how long the request took, to its response or its error.
	Latency float64 `json:"latency_ms"`
}

// Time is the event's wall clock time.
func (e Event) Time() time.Time { return time.UnixMilli(e.TimeMS) }

// Load runs the loadgen in the client namespace to completion.
func (l *Lab) Load(args ...string) Report {
	l.t.Helper()
	argv := append([]string{env.loadgen}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := l.command(ctx, "client", argv...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		l.t.Fatalf("loadgen %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return parseReport(l.t, out)
}

func parseReport(t *testing.T, out []byte) Report {
	t.Helper()
	var r Report
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("decode loadgen report: %v: %s", err, out)
	}
	return r
}

// StartLoad runs the loadgen in the background (stop it with Proc.Stop, then
// parse Output with parseReport).
func (l *Lab) StartLoad(name string, events chan<- string, args ...string) *Proc {
	l.t.Helper()
	argv := append([]string{env.loadgen}, args...)
	if events != nil {
		return l.StartPiped(name, "client", events, argv...)
	}
	return l.Start(name, "client", argv...)
}

// nextEvent reads the next JSON event line (skipping anything else) until timeout.
func nextEvent(lines <-chan string, timeout time.Duration) (Event, error) {
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				return Event{}, errors.New("loadgen exited")
			}
			if !strings.HasPrefix(line, "{") {
				continue
			}
			var ev Event
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				return Event{}, fmt.Errorf("decode event %q: %w", line, err)
			}
			return ev, nil
		case <-deadline:
			return Event{}, fmt.Errorf("no loadgen event within %s", timeout)
		}
	}
}
