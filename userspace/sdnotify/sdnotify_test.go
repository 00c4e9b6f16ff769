package sdnotify

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// listen makes a datagram socket standing in for systemd's; it returns
// its NOTIFY_SOCKET value and a function reading the next message.
func listen(t *testing.T, abstract bool) (string, func() string) {
	t.Helper()
	name := filepath.Join(t.TempDir(), "notify.sock")
	value := name
	if abstract {
		value = "@sluice-sdnotify-test-" + strings.ReplaceAll(t.Name(), "/", "-")
		name = "\x00" + value[1:]
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return value, func() string {
		t.Helper()
		buf := make([]byte, 4096)
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no message: %v", err)
		}
		return string(buf[:n])
	}
}

func TestNotify(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		sock, next := listen(t, abstract)
		env := map[string]string{"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}
		n, err := FromEnv(func(k string) string { return env[k] }, 42)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Notify("READY=1\nSTATUS=serving"); err != nil {
			t.Fatal(err)
		}
		if got := next(); got != "READY=1\nSTATUS=serving" {
			t.Errorf("abstract %v: got %q", abstract, got)
		}
		if d := n.Watchdog(); d != 30*time.Second {
			t.Errorf("watchdog %v, want 30s", d)
		}
		n.Close()
	}
}

func TestFromEnv(t *testing.T) {
	sock, _ := listen(t, false)
	cases := []struct {
		name     string
		env      map[string]string
		nilN     bool
		err      string
		watchdog time.Duration
	}{
		{"unset", map[string]string{}, true, "", 0},
		{"no watchdog", map[string]string{"NOTIFY_SOCKET": sock}, false, "", 0},
		{"watchdog of another process", map[string]string{"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "7"}, false, "", 0},
		{"watchdog without pid", map[string]string{"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "1000000"}, false, "", time.Second},
		{"bad watchdog", map[string]string{"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "soon"}, true, "WATCHDOG_USEC", 0},
		{"zero watchdog", map[string]string{"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "0"}, true, "WATCHDOG_USEC", 0},
		{"relative path", map[string]string{"NOTIFY_SOCKET": "notify.sock"}, true, "NOTIFY_SOCKET", 0},
		{"nobody listening", map[string]string{"NOTIFY_SOCKET": sock + ".gone"}, true, "NOTIFY_SOCKET", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n, err := FromEnv(func(k string) string { return c.env[k] }, 42)
			if (err != nil) != (c.err != "") || err != nil && !strings.Contains(err.Error(), c.err) {
				t.Fatalf("err %v, want one naming %q", err, c.err)
			}
			if (n == nil) != c.nilN {
				t.Fatalf("notifier %v, want nil %v", n, c.nilN)
			}
			if d := n.Watchdog(); d != c.watchdog {
				t.Errorf("watchdog %v, want %v", d, c.watchdog)
			}
			// A nil notifier sends nothing, without error.
			if err := n.Notify("READY=1"); err != nil && n != nil {
				t.Errorf("notify: %v", err)
			}
			n.Close()
		})
	}
}
