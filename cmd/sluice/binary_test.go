package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBinary builds the real binary and checks its wiring: version from
// -ldflags, exit statuses and where messages go.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool on PATH")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "sluice")
	build := exec.Command(gobin, "build", "-ldflags", "-X main.version=v0.0.0-test", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(badConfig), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		args           []string
		code           int
		stdout, stderr string // substrings; "" checks for empty output
	}{
		{[]string{"version"}, 0, "sluice v0.0.0-test (go", ""},
		{[]string{"--help"}, 0, "conntrack", ""},
		{[]string{"status", "--help"}, 0, "usage: sluice status", ""},
		{[]string{}, 2, "", "usage: sluice COMMAND"},
		{[]string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{[]string{"status", "--socket", filepath.Join(dir, "none.sock")}, 3, "", "agent not reachable"},
		{[]string{"check", "-c", bad}, 1, "", "2 problems"},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(bin, tt.args...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("sluice %v: %v", tt.args, err)
		}
		if code != tt.code {
			t.Errorf("sluice %v: exit %d, want %d (stderr %q)", tt.args, code, tt.code, stderr.String())
		}
		for _, c := range []struct {
			name, got, want string
		}{{"stdout", stdout.String(), tt.stdout}, {"stderr", stderr.String(), tt.stderr}} {
			if (c.want == "" && c.got != "") || !strings.Contains(c.got, c.want) {
				t.Errorf("sluice %v: %s %q, want %q", tt.args, c.name, c.got, c.want)
			}
		}
	}
}
