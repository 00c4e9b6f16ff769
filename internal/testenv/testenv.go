// Package testenv is the one rule every test of the repository follows
// when it cannot run here (no root, a tool missing, no lab): on a
// workstation it skips, in CI it fails, so CI never passes by skipping.
//
// CI is recognised by the CI environment variable, as CI services set it:
// any value but "", "0" and "false" (in any case accepted by
// strconv.ParseBool) means CI.
package testenv

import (
	"fmt"
	"os"
	"strconv"
	"testing"
)

// CI reports whether the tests run in CI.
func CI() bool {
	return ciValue(os.Getenv("CI"))
}

func ciValue(v string) bool {
	if v == "" {
		return false
	}
	b, err := strconv.ParseBool(v)
	return err != nil || b
}

// SkipOrFail skips tb with the reason on a workstation and fails it in CI.
func SkipOrFail(tb testing.TB, format string, args ...any) {
	tb.Helper()
	reason := fmt.Sprintf(format, args...)
	if CI() {
		tb.Fatalf("CI requires this test, which cannot run here: %s", reason)
	}
	tb.Skip(reason + " (skipped; CI makes this a failure)")
}

// RequireRoot skips or fails (SkipOrFail) a test that needs root, e.g. for
// BPF (CAP_BPF, CAP_NET_ADMIN) or network namespaces.
func RequireRoot(tb testing.TB, what string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(tb, "%s needs root", what)
	}
}
