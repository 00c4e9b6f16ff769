package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/userspace/admin"
)

// Issue 10 item 16: a metrics address that cannot be bound stops the
// agent at start, before it touches the data path, with the address in
// the message.
func TestMetricsBindFailureIsFatal(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`interfaces: [sluicenone0]
admin: {socket: %s}
metrics: {listen: %s}
datapath: {pin_path: /sys/fs/bpf/sluice-test-never-created}
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: web-l4
    listen: 198.18.1.100:80
    pool: web
`, filepath.Join(dir, "admin.sock"), taken.Addr())
	path := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	err = Run(context.Background(), path, nil, "test", RunOptions{})
	if err == nil || !strings.Contains(err.Error(), "metrics listen "+taken.Addr().String()) {
		t.Fatalf("Run with the metrics address taken: %v", err)
	}
	if _, err := os.Stat("/sys/fs/bpf/sluice-test-never-created"); err == nil {
		t.Fatal("the data path was opened before the metrics address was bound")
	}
}

// A reload cannot move the metrics endpoint (nor the other restart-only
// settings): it says so, exit non-zero, and status keeps saying so until
// a restart or until the file is back to what runs.
func TestRestartOnlySettingsReported(t *testing.T) {
	h := newHarness(t, nil, baseConfig)
	moved := strings.Replace(baseConfig, "interfaces: [veth0]\n", "interfaces: [veth0]\nmetrics: {listen: 127.0.0.1:19464}\n", 1)
	h.write(moved)
	for range 2 { // the second reload of the same file still reports it
		err := h.a.Reload(h.ctx)
		if !errors.Is(err, admin.ErrReloadPartial) || !strings.Contains(err.Error(), "metrics listen address changed to 127.0.0.1:19464: it takes effect on restart") {
			t.Fatalf("reload moving the metrics endpoint: %v", err)
		}
		if st, _ := h.a.Status(h.ctx); len(st.NotApplied) != 1 {
			t.Fatalf("not applied = %q", st.NotApplied)
		}
	}
	h.write(baseConfig)
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatalf("reload back to the running settings: %v", err)
	}
	if st, _ := h.a.Status(h.ctx); len(st.NotApplied) != 0 {
		t.Fatalf("not applied = %q", st.NotApplied)
	}
}
