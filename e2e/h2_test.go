package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/testcert"
)

// HTTP/2 through the real binary: h2spec against an h2c and a TLS
// listener, and a rapid-reset client (issue 9).

// buildTool builds the Go command pkg of this module into a temporary
// directory.
func buildTool(t *testing.T, pkg string) string {
	t.Helper()
	goBin := "go"
	if _, err := exec.LookPath("go"); err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	out := filepath.Join(t.TempDir(), path.Base(pkg))
	cmd := exec.Command(goBin, "build", "-o", out, pkg)
	cmd.Dir = env.repoRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// h2specPath finds h2spec (github.com/summerwind/h2spec v2.2.1, installed
// by scripts/deps.sh): $H2SPEC, PATH, /usr/local/bin, ~/go/bin.
func h2specPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("H2SPEC"); p != "" {
		return p
	}
	if p, err := exec.LookPath("h2spec"); err == nil {
		return p
	}
	home, _ := os.UserHomeDir()
	for _, p := range []string{"/usr/local/bin/h2spec", filepath.Join(home, "go", "bin", "h2spec")} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatal("h2spec is not installed (scripts/deps.sh installs it)")
	return ""
}

// writeTestCert writes a self-signed ECDSA certificate for name and its
// key into dir.
func writeTestCert(t *testing.T, dir, name string) (cert, key string) {
	t.Helper()
	return writeTestCertUntil(t, dir, name, time.Now().Add(24*time.Hour))
}

// writeTestCertUntil is writeTestCert with the certificate expiring at
// notAfter.
func writeTestCertUntil(t *testing.T, dir, name string, notAfter time.Time) (cert, key string) {
	t.Helper()
	return testcert.Write(t, dir, "cert", testcert.Options{Names: []string{name}, IPs: []net.IP{net.ParseIP(httpVIP)}, NotAfter: notAfter})
}

// h2Services are an h2c service on httpVIP:80 and a TLS one on
// httpVIP:443, both over pool web, with the default HTTP/2 settings.
func h2Services(cert, key string) string {
	return fmt.Sprintf(`  - name: web-h2c
    listen: %[1]s:80
    protocol: http
    pool: web
    h2c: true
  - name: web-tls
    listen: %[1]s:443
    protocol: http
    pool: web
    tls: {cert: %[2]s, key: %[3]s}
`, httpVIP, cert, key)
}

// TestL7H2Spec runs h2spec (generic, HTTP/2 and HPACK sections, then
// strict mode) against sluice's h2c and TLS listeners: no case may fail.
func TestL7H2Spec(t *testing.T) {
	lab := newLab(t)
	h2spec := h2specPath(t)
	cert, key := writeTestCert(t, t.TempDir(), "web.lab")
	lab.StartBackends()
	lab.AddLocalVIP(httpVIP)
	lab.StartAgent(agentConfig{ExtraServices: h2Services(cert, key)})
	for _, u := range []string{"http://" + httpVIP + "/", "https://" + httpVIP + "/"} {
		waitFor(t, 10*time.Second, "the L7 listener "+u, func() error {
			_, err := lab.Run("client", 3*time.Second, "curl", "-skf", "--max-time", "2", "-o", "/dev/null", u)
			return err
		})
	}
	for _, run := range []struct {
		name string
		args []string
	}{
		{"h2c", []string{"-p", "80"}},
		{"h2c strict", []string{"-p", "80", "-S"}},
		{"tls", []string{"-p", "443", "-t", "-k"}},
		{"tls strict", []string{"-p", "443", "-t", "-k", "-S"}},
	} {
		t.Run(run.name, func(t *testing.T) {
			// /stats: a body long enough for every flow-control case (the
			// backends answer "/" with 4 bytes; one case wants 5).
			args := append([]string{h2spec, "-h", httpVIP, "-o", "5", "-P", "/stats"}, run.args...)
			out, err := lab.Run("client", 3*time.Minute, args...)
			summary := ""
			for line := range strings.SplitSeq(out, "\n") {
				if strings.Contains(line, " tests, ") {
					summary = strings.TrimSpace(line)
				}
			}
			t.Logf("h2spec %s: %s", strings.Join(run.args, " "), summary)
			if err != nil || !strings.HasSuffix(summary, " 0 skipped, 0 failed") {
				i := strings.Index(out, "Failures:")
				if i < 0 {
					i = 0
				}
				t.Errorf("h2spec %s failed (%v):\n%s", strings.Join(run.args, " "), err, out[i:])
			}
		})
	}
}

// passiveOpens is the sum of the backends' accepted TCP connections
// (Tcp PassiveOpens of their namespaces).
func passiveOpens(t *testing.T, lab *Lab) int {
	t.Helper()
	total := 0
	for _, be := range []string{"be1", "be2", "be3"} {
		out := lab.MustRun(be, 5*time.Second, "cat", "/proc/net/snmp")
		var names, values []string
		for line := range strings.SplitSeq(out, "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == "Tcp:" {
				if names == nil {
					names = f
				} else {
					values = f
				}
			}
		}
		for i, n := range names {
			if n == "PassiveOpens" && i < len(values) {
				v, err := strconv.Atoi(values[i])
				if err != nil {
					t.Fatalf("%s: PassiveOpens %q: %v", be, values[i], err)
				}
				total += v
			}
		}
	}
	return total
}

// TestL7H2RapidReset: a client that opens and at once resets thousands of
// streams on one h2c connection, or makes the server reset them
// (MadeYouReset: a WINDOW_UPDATE of 0 or DATA after the end on each),
// costs a bounded number of
// backend connections, gets GOAWAY ENHANCE_YOUR_CALM and is closed; so
// does one flooding frames that do no work (empty DATA, PING); the next
// client is served. A frame header announcing 16 MiB, on connections then
// held, does not cost the agent what it announces.
func TestL7H2RapidReset(t *testing.T) {
	lab := newLab(t)
	rapid := buildTool(t, "./e2e/h2rapid")
	cert, key := writeTestCert(t, t.TempDir(), "web.lab")
	lab.StartBackends()
	lab.AddLocalVIP(httpVIP)
	lab.StartAgent(agentConfig{ExtraServices: h2Services(cert, key)})
	waitFor(t, 10*time.Second, "the h2c listener", func() error {
		_, err := lab.Run("client", 3*time.Second, "curl", "-sf", "--max-time", "2", "-o", "/dev/null", "http://"+httpVIP+"/")
		return err
	})
	for _, mode := range []string{"rst", "window-update-0", "data-after-end", "empty-data", "ping"} {
		t.Run(mode, func(t *testing.T) {
			before := passiveOpens(t, lab)
			path := "/"
			if mode != "rst" {
				// The server must still have the stream when the frame
				// comes (a WINDOW_UPDATE on a closed one is ignored).
				path = "/slow?ms=100"
			}
			out := lab.MustRun("client", time.Minute, rapid, "-addr", httpVIP+":80", "-mode", mode, "-path", path,
				"-streams", "20000", "-duration", "15s")
			var rep struct {
				Sent       int    `json:"sent"`
				GoAway     string `json:"goaway"`
				Closed     bool   `json:"closed"`
				After      int    `json:"after_status"`
				AfterError string `json:"after_error"`
			}
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatalf("h2rapid output %q: %v", out, err)
			}
			accepted := passiveOpens(t, lab) - before
			unit := "streams"
			if mode == "empty-data" || mode == "ping" {
				unit = "frames"
			}
			t.Logf("%s: %d %s sent, GOAWAY %q, closed %v; backends accepted %d connections; next request %d %s",
				mode, rep.Sent, unit, rep.GoAway, rep.Closed, accepted, rep.After, rep.AfterError)
			if rep.GoAway != "ENHANCE_YOUR_CALM" || !rep.Closed || rep.Sent >= 20000 {
				t.Errorf("after %d reset streams: GOAWAY %q, connection closed %v; want ENHANCE_YOUR_CALM and closed", rep.Sent, rep.GoAway, rep.Closed)
			}
			// At most about one connection per stream in flight (100 by
			// default), never one per reset stream.
			if accepted > 150 {
				t.Errorf("%d reset streams made the backends accept %d connections, want at most 150", rep.Sent, accepted)
			}
			if rep.After != 200 {
				t.Errorf("a normal request after the attack: status %d %s, want 200", rep.After, rep.AfterError)
			}
			if mode == "empty-data" || mode == "ping" {
				// Frames that do no work: the connection is closed within
				// a few hundred of them (not the 20000 sent otherwise).
				if rep.Sent > 5000 {
					t.Errorf("%d %s frames sent before the close, want the connection closed within a few hundred", rep.Sent, mode)
				}
				values, _ := lab.scrape()
				if n := values[`sluice_l7_refused_total{limit="h2_flood",service="web-h2c"}`]; n == 0 {
					t.Error(`no connection closed for a flood counted (sluice_l7_refused_total{limit="h2_flood"})`)
				}
			}
		})
	}
	// A frame header that announces 16 MiB and nothing after it, on 32
	// connections held open: the agent's heap must not grow by what the
	// headers announce (it grew by 16 MiB per connection).
	t.Run("frame-header", func(t *testing.T) {
		heap := func() float64 {
			values, _ := lab.scrape()
			return values["go_memstats_heap_alloc_bytes"]
		}
		before := heap()
		done := make(chan string, 1)
		go func() {
			out, err := lab.Run("client", time.Minute, rapid, "-addr", httpVIP+":80", "-mode", "frame-header", "-streams", "32", "-duration", "4s")
			if err != nil {
				out += " " + err.Error()
			}
			done <- out
		}()
		time.Sleep(2500 * time.Millisecond)
		during := heap()
		out := <-done
		var rep struct {
			Sent int `json:"sent"`
			Held int `json:"held"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("h2rapid output %q: %v", out, err)
		}
		t.Logf("%d connections sent the frame header, %d still open after 4 s; agent heap %.1f MiB before, %.1f MiB while they were held",
			rep.Sent, rep.Held, before/(1<<20), during/(1<<20))
		if rep.Sent != 32 {
			t.Fatalf("%d connections sent the frame header, want 32", rep.Sent)
		}
		if grew := during - before; grew > 64<<20 {
			t.Errorf("the agent's heap grew by %.0f MiB for 32 frame headers of 9 bytes, want under 64 MiB", grew/(1<<20))
		}
	})
}
