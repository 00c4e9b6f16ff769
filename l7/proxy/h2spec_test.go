package proxy

import (
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// h2specBin finds h2spec (github.com/summerwind/h2spec, installed by
// scripts/deps.sh): $H2SPEC, then PATH, then ~/go/bin. "" when absent.
func h2specBin() string {
	if p := os.Getenv("H2SPEC"); p != "" {
		return p
	}
	if p, err := exec.LookPath("h2spec"); err == nil {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil {
		if p := filepath.Join(home, "go", "bin", "h2spec"); fileExists(p) {
			return p
		}
	}
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// h2specKnown are h2spec cases sluice is allowed to fail, with the
// reason (docs/l7.md lists them). There is none: the four net/http
// deviations listed here before (a repeated SETTINGS parameter, a
// connection-specific header field and a TE other than "trailers"
// answered with 400, a non-preface on an h2c listener answered as
// HTTP/1.1) are handled by the frame guard (h2guard.go) and h2cGate.
var h2specKnown = map[string]string{}

type junitSuites struct {
	Suites []struct {
		Cases []struct {
			Package string    `xml:"package,attr"`
			Name    string    `xml:"classname,attr"`
			Error   *struct{} `xml:"error"`
			Failure *struct{} `xml:"failure"`
			Skipped *struct{} `xml:"skipped"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// TestH2Spec runs h2spec, every case, strict ones too, against the h2c
// and the TLS listener: no failure but the known ones above. It skips when
// h2spec is not installed, unless SLUICE_REQUIRE_H2SPEC=1 (make test sets it).
func TestH2Spec(t *testing.T) {
	bin := h2specBin()
	if bin == "" {
		if os.Getenv("SLUICE_REQUIRE_H2SPEC") == "1" {
			t.Fatal("h2spec is not installed (scripts/deps.sh installs it)")
		}
		t.Skip("h2spec is not installed (scripts/deps.sh installs it)")
	}
	be := newBackend(t, status(200))
	p := newPool(t, nil, be.addr)
	for _, mode := range []string{"h2c", "tls"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			h := start(t, p, func(o *Options) {
				if mode == "tls" {
					cert, key := writeCert(t, t.TempDir(), "sluice.test")
					o.TLS = &TLSFiles{Cert: cert, Key: key}
				} else {
					o.H2C = true
				}
			})
			host, port, _ := strings.Cut(strings.TrimPrefix(h.url, "http://"), ":")
			report := filepath.Join(t.TempDir(), "h2spec.xml")
			args := []string{"--strict", "-h", host, "-p", port, "-o", "3", "-j", report}
			if mode == "tls" {
				args = append(args, "-t", "-k")
			}
			t0 := time.Now()
			out, _ := exec.Command(bin, args...).CombinedOutput()
			raw, err := os.ReadFile(report)
			if err != nil {
				t.Fatalf("h2spec %s: no report: %v\n%s", strings.Join(args, " "), err, out)
			}
			var js junitSuites
			if err := xml.Unmarshal(raw, &js); err != nil {
				t.Fatalf("h2spec report: %v", err)
			}
			var passed, known int
			var unexpected, knownSeen []string
			for _, s := range js.Suites {
				for i, c := range s.Cases {
					id := fmt.Sprintf("%s/%d", c.Package, i+1)
					switch {
					case c.Skipped != nil:
					case c.Error == nil && c.Failure == nil:
						passed++
					case h2specKnown[id] != "" || h2specKnown[mode+":"+id] != "":
						known++
						knownSeen = append(knownSeen, id)
					default:
						unexpected = append(unexpected, id+" "+c.Name)
					}
				}
			}
			sort.Strings(knownSeen)
			t.Logf("h2spec --strict %s (%s): %d passed, %d known net/http deviations %v, %d unexpected failures",
				mode, time.Since(t0).Round(time.Millisecond), passed, known, knownSeen, len(unexpected))
			if len(unexpected) > 0 {
				t.Errorf("h2spec %s: unexpected failures:\n  %s\n%s", mode, strings.Join(unexpected, "\n  "), failures(string(out)))
			}
			if passed < 145 {
				t.Errorf("h2spec %s: only %d cases passed", mode, passed)
			}
		})
	}
}

// failures keeps h2spec's failure report (after "Failures:").
func failures(out string) string {
	if i := strings.Index(out, "Failures:"); i >= 0 {
		return out[i:]
	}
	return out
}
