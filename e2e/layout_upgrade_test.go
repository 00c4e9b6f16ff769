package e2e

import (
	"github.com/sluicelb/sluice/internal/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// layoutBefore is the last commit whose conntrack entries carried the next
// hop (64-byte ct_value) and whose pinned state had no layout version.
const layoutBefore = "212c264d1e57e3c64ac9edafe5048d69fea0695d"

// layoutTwoEntries is the last commit whose flows took two conntrack
// entries (a forward and a reverse one), with a layout version pinned.
const layoutTwoEntries = "4cafe194a0fd5aa1b383c0ad76b0cd0d79a57664"

// layoutLRUHalfOpen is the last commit whose IPv4 half-open table was an
// LRU hash (before the direct-mapped array).
const layoutLRUHalfOpen = "593591d061ce734d184a5646b06a9fbb17bdb10b"

// layoutMapInMap is the last commit whose Maglev tables were a map-in-map
// (maglev_outer, one inner array per service) before the flat array.
const layoutMapInMap = "043cf877e3b1496b42bcce522340df238bbc25b7"

// buildRelease builds cmd/sluice as of commit rev (skips the test when the
// commit is not in the repository, e.g. a shallow clone).
func buildRelease(t *testing.T, rev string) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	archive := exec.Command("git", "-C", env.repoRoot, "archive", rev)
	tar := exec.Command("tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	tar.Stdin = pipe
	if err := tar.Start(); err != nil {
		t.Fatal(err)
	}
	if err := archive.Run(); err != nil {
		// A shallow clone lacks the older release: CI must have the history.
		testenv.SkipOrFail(t, "commit %s not available (%v): cannot build the older release", rev[:12], err)
	}
	if err := tar.Wait(); err != nil {
		t.Fatalf("unpack %s: %v", rev[:12], err)
	}
	goBin := "go"
	if _, err := exec.LookPath("go"); err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	out := filepath.Join(dir, "sluice-old")
	cmd := exec.Command(goBin, "build", "-o", out, "-ldflags", "-X main.version=e2e-old-layout", "./cmd/sluice")
	cmd.Dir = src
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", rev[:12], err, b)
	}
	return out
}

// TestLayoutUpgrade: an upgrade from a release whose map layout differs
// under continuous load: the new agent starts (no refusal, no restart
// loop), migrates conntrack, and no established connection breaks or
// changes backend. Three older layouts: the next hop in every conntrack
// entry with no layout version pinned, two entries per flow (with a
// layout version), both migrating conntrack; and the LRU half-open table,
// replaced by the array (its half-open flows dropped, conntrack adopted
// as it is); and the Maglev tables as a map-in-map, copied into the flat
// table before the new program loads: new connections opened all through
// the upgrade succeed too (no moment without a table).
func TestLayoutUpgrade(t *testing.T) {
	migrated := "pinned map migrated to this release's layout"
	t.Run("next-hop-in-entries", func(t *testing.T) { testLayoutUpgrade(t, layoutBefore, false, migrated, "map=conntrack", false) })
	t.Run("two-entries-per-flow", func(t *testing.T) {
		testLayoutUpgrade(t, layoutTwoEntries, true, migrated, "map=conntrack", false)
	})
	t.Run("lru-half-open", func(t *testing.T) {
		testLayoutUpgrade(t, layoutLRUHalfOpen, true, "a pinned map has another layout", "map=halfopen", false)
	})
	t.Run("map-in-map-maglev", func(t *testing.T) {
		testLayoutUpgrade(t, layoutMapInMap, true, migrated+" (one flat Maglev table", "map=maglev_tables", true)
	})
}

// testLayoutUpgrade upgrades from release rev (versioned: it pins a layout
// version); the new agent's log must say wantLog and wantMap. newConns:
// new connections are opened all through the upgrade, and must all
// succeed.
func testLayoutUpgrade(t *testing.T, rev string, versioned bool, wantLog, wantMap string, newConns bool) {
	lab := newLab(t)
	old := buildRelease(t, rev)
	lab.StartBackends()
	agent := lab.StartAgentBinary(agentConfig{}, old)
	if st, err := agent.Status(); err != nil || st.Version != "e2e-old-layout" {
		t.Fatalf("before the upgrade: version %q (%v)", st.Version, err)
	}
	if _, err := os.Stat(filepath.Join(agent.PinPath, "layout")); (err == nil) != versioned {
		t.Fatalf("the older release pinned a layout version: %v, want %v: not the release this test is about", err == nil, versioned)
	}

	const conns = 6
	keep := lab.StartLoad("keepalive", nil, "--url", vipURL, "--mode", "keepalive",
		"--conns", "6", "--interval", "20ms", "--count", "100000", "--duration", "30s", "--timeout", "2s")
	t.Cleanup(func() { keep.Stop(3 * time.Second) })
	var short *Proc
	if newConns {
		short = lab.StartLoad("newconn", nil, "--url", vipURL, "--mode", "newconn",
			"--conns", "2", "--interval", "20ms", "--count", "100000", "--duration", "30s", "--timeout", "2s")
		t.Cleanup(func() { short.Stop(3 * time.Second) })
	}
	time.Sleep(time.Second)
	before := agent.clientFlows(t, vip+":80")

	if err := agent.proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := agent.proc.Wait(10 * time.Second); err != nil {
		t.Fatalf("old agent after SIGTERM: %v", err)
	}
	agent.Binary = "" // the suite's: this release
	agent.Start()
	time.Sleep(time.Second)
	after := agent.clientFlows(t, vip+":80")
	assertSameBackends(t, "after the layout upgrade", before, after, conns)

	st, err := agent.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.LayoutReset) != 0 {
		t.Errorf("the state was started afresh (%v): conntrack should have been kept", st.LayoutReset)
	}
	if _, err := os.Stat(filepath.Join(agent.PinPath, "layout")); err != nil {
		t.Errorf("no layout version pinned after the upgrade: %v", err)
	}
	if log := agent.proc.Log(); !strings.Contains(log, wantLog) || !strings.Contains(log, wantMap) {
		t.Errorf("the agent did not say %q about %s:\n%s", wantLog, wantMap, log)
	}

	time.Sleep(time.Second)
	if short != nil {
		short.Stop(5 * time.Second)
		sr := parseReport(t, short.Output())
		assertNoFailures(t, "new connections across the layout upgrade", sr)
		if sr.Dials < 20 {
			t.Errorf("only %d new connections across the upgrade", sr.Dials)
		}
	}
	keep.Stop(5 * time.Second)
	kr := parseReport(t, keep.Output())
	assertNoFailures(t, "keep-alive load across the layout upgrade", kr)
	if kr.Dials != conns {
		t.Errorf("keep-alive load dialled %d connections, want %d", kr.Dials, conns)
	}
}
