package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/l7/evloop"
	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/sdnotify"
)

// startedAgent starts an agent with o on dp from baseConfig, written to a
// file in a temporary directory; it returns the agent, the directory and
// the file's path.
func startedAgent(t *testing.T, dp datapath.Map, o options) (*agent, string, string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(path, []byte(baseConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	o.configPath, o.version = path, "test"
	a := newAgent(dp, o)
	if err := a.start(time.Now(), cfg); err != nil {
		t.Fatal(err)
	}
	return a, dir, path
}

// TestServe runs the loop with the real admin server on a temporary socket:
// the CLI's client sees the agent, drains through it, and a hup reloads.
func TestServe(t *testing.T) {
	dp := datapath.NewFake(tableSize)
	a, dir, path := startedAgent(t, dp, options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	socket := filepath.Join(dir, "admin.sock")
	hup := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- a.serve(ctx, socket, nil, hup) }()

	c := admin.NewClient(socket)
	var st admin.Status
	var err error
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err = c.Status(ctx)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("admin API not up: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.Version != "test" || len(st.Services) != 1 || len(st.Pools) != 1 || len(st.Pools[0].Backends) != 3 {
		t.Fatalf("status = %+v", st)
	}
	if err := c.Drain(ctx, "web", "198.18.2.12:80"); err != nil {
		t.Fatal(err)
	}
	if err := c.Drain(ctx, "nope", "198.18.2.12:80"); !errors.Is(err, admin.ErrUnknownPool) {
		t.Fatalf("drain of unknown pool: %v", err)
	}

	// An invalid file is refused through the API with its line.
	if err := os.WriteFile(path, []byte(baseConfig+"bogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.Reload(ctx); !errors.Is(err, admin.ErrReloadRefused) || !strings.Contains(err.Error(), ":14:") {
		t.Fatalf("reload of a bad file = %v", err)
	}

	// A valid file, applied on hup.
	if err := os.WriteFile(path, []byte(strings.Replace(baseConfig, "198.18.1.100:80", "198.18.1.100:8080", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	hup <- syscall.SIGHUP
	for {
		st, err = c.Status(ctx)
		if err == nil && st.Services[0].Listen == "198.18.1.100:8080" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hup not applied: %+v, %v", st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	svcs, _ := dp.Services()
	if _, ok := svcs[webKey]; ok || len(svcs) != 1 {
		t.Fatalf("services after hup = %+v", svcs)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return after cancel")
	}
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
}

// Under systemd the loop reports READY=1 once the admin socket answers,
// feeds the watchdog while it turns — and stops feeding it when it hangs
// (here: a tick waiting for the agent's lock forever), so systemd restarts
// the agent — and reports STOPPING=1.
func TestServeNotifiesSystemd(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	msgs := make(chan string, 1000)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := nl.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	env := map[string]string{"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "200000"}
	n, err := sdnotify.FromEnv(func(k string) string { return env[k] }, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	// The L7 stage's loops, as their check sees them.
	var l7stuck atomic.Bool
	l7Ping := func(timeout time.Duration) error {
		if l7stuck.Load() {
			time.Sleep(timeout)
			return evloop.ErrStuck
		}
		return nil
	}
	a, dir, _ := startedAgent(t, datapath.NewFake(tableSize), options{notify: n, l7Ping: l7Ping})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	socket := filepath.Join(dir, "admin.sock")
	done := make(chan error, 1)
	go func() { done <- a.serve(ctx, socket, nil, make(chan os.Signal)) }()

	next := func(within time.Duration) (string, bool) {
		select {
		case m := <-msgs:
			return m, true
		case <-time.After(within):
			return "", false
		}
	}
	if m, _ := next(5 * time.Second); m != "READY=1\nSTATUS=serving 1 services, 1 pools" {
		t.Fatalf("first message %q, want READY=1 and a status", m)
	}
	if _, err := admin.NewClient(socket).Status(ctx); err != nil {
		t.Fatalf("READY=1 sent before the admin socket answers: %v", err)
	}
	pings := 0
	for end := time.Now().Add(time.Second); time.Now().Before(end); {
		if m, ok := next(time.Second); ok && m == "WATCHDOG=1" {
			pings++
		}
	}
	if pings < 5 {
		t.Fatalf("%d watchdog pings in a second, want about 10 (every 100ms)", pings)
	}

	// drain drops the messages sent so far.
	drain := func() {
		for {
			select {
			case <-msgs:
			default:
				return
			}
		}
	}

	// A hung loop: its next tick waits for the lock.
	a.mu.Lock()
	time.Sleep(TickInterval + 200*time.Millisecond)
	drain()
	if m, ok := next(700 * time.Millisecond); ok {
		a.mu.Unlock()
		t.Fatalf("%q from a hung loop, want silence (the watchdog then restarts the agent)", m)
	}
	a.mu.Unlock()
	if m, _ := next(time.Second); m != "WATCHDOG=1" {
		t.Fatalf("after the loop went on: %q, want the watchdog fed again", m)
	}

	// A stuck L7 event loop (its check fails): the control loop turns,
	// but the watchdog is not fed; fed again once the loop runs.
	l7stuck.Store(true)
	time.Sleep(300 * time.Millisecond) // a check (every 50ms, 66ms long) fails
	drain()
	if m, ok := next(700 * time.Millisecond); ok {
		t.Fatalf("%q with an L7 event loop stuck, want silence", m)
	}
	l7stuck.Store(false)
	if m, _ := next(time.Second); m != "WATCHDOG=1" {
		t.Fatalf("after the L7 loop ran again: %q, want the watchdog fed again", m)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve = %v", err)
	}
	for {
		m, ok := next(time.Second)
		if !ok {
			t.Fatal("no STOPPING=1")
		}
		if m == "STOPPING=1" {
			break
		}
	}
}
