package certs

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/testcert"
)

// write writes a self-signed certificate for names (none: no SAN).
func write(t *testing.T, cn string, names ...string) Pair {
	t.Helper()
	c, k := testcert.Write(t, t.TempDir(), "c", testcert.Options{CommonName: cn, Names: names})
	return Pair{Cert: c, Key: k}
}

func TestPickAndMisdirected(t *testing.T) {
	def := write(t, "default", "default.test")
	a := write(t, "a", "a.test", "alias.test")
	w := write(t, "w", "*.w.test")
	cs, err := Load(Files{Cert: def.Cert, Key: def.Key, SNI: []Pair{a, w}})
	if err != nil {
		t.Fatal(err)
	}
	cn := func(name string) string { return cs.Pick(name).Leaf.Subject.CommonName }
	for name, want := range map[string]string{
		"a.test": "a", "ALIAS.test.": "a", "x.w.test": "w", "x.y.w.test": "default", "w.test": "default", "": "default", "a.test:443": "a",
	} {
		if got := cn(name); got != want {
			t.Errorf("Pick(%q) = %s, want %s", name, got, want)
		}
	}
	for _, c := range []struct {
		sni, host string
		want      bool
	}{
		{"a.test", "a.test", false}, {"a.test", "alias.test:443", false}, {"a.test", "x.w.test", true},
		{"x.w.test", "y.w.test", false}, {"", "other.test", false}, {"", "a.test", true}, {"other.test", "default.test", false},
	} {
		if got := cs.Misdirected(c.sni, c.host); got != c.want {
			t.Errorf("Misdirected(%q, %q) = %v", c.sni, c.host, got)
		}
	}
	// One certificate: nothing is misdirected.
	one, err := Load(Files{Cert: def.Cert, Key: def.Key})
	if err != nil {
		t.Fatal(err)
	}
	if one.Misdirected("a.test", "b.test") {
		t.Error("single certificate: misdirected")
	}
	// Refused: two certificates for one name, one without DNS names.
	if _, err := Load(Files{Cert: def.Cert, Key: def.Key, SNI: []Pair{a, write(t, "a2", "a.test")}}); err == nil || !strings.Contains(err.Error(), "name a.test is covered by another") {
		t.Errorf("duplicate: %v", err)
	}
	if _, err := Load(Files{Cert: def.Cert, Key: def.Key, SNI: []Pair{write(t, "nosan")}}); err == nil || !strings.Contains(err.Error(), "no DNS name") {
		t.Errorf("no SAN: %v", err)
	}
}

// A set knows its files and what its certificates say; Changed sees a
// file rewritten (same path, new contents), replaced by a rename, or
// removed, and nothing when they are as loaded.
func TestChangedAndInfo(t *testing.T) {
	def := write(t, "default", "default.test")
	a := write(t, "a", "a.test", "alias.test")
	cs, err := Load(Files{Cert: def.Cert, Key: def.Key, SNI: []Pair{a}})
	if err != nil {
		t.Fatal(err)
	}
	info := cs.Info()
	if len(info) != 2 || info[0].File != def.Cert || info[1].File != a.Cert ||
		strings.Join(info[1].Names, ",") != "a.test,alias.test" || time.Until(info[0].NotAfter) <= 0 {
		t.Fatalf("Info() = %+v", info)
	}
	changed := func() bool {
		t.Helper()
		c, err := cs.Changed()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if changed() {
		t.Fatal("Changed right after Load")
	}
	// Rewritten in place with another certificate (same size: the
	// modification and change times tell).
	b := write(t, "b", "a.test", "alias.test")
	data, _ := os.ReadFile(b.Key)
	if err := os.WriteFile(a.Key, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if !changed() {
		t.Error("a key file rewritten is not seen")
	}
	cs, err = Load(Files{Cert: def.Cert, Key: def.Key, SNI: []Pair{b}})
	if err != nil {
		t.Fatal(err)
	}
	// Replaced by a rename.
	c := write(t, "c", "c.test")
	if err := os.Rename(c.Cert, b.Cert); err != nil {
		t.Fatal(err)
	}
	if !changed() {
		t.Error("a certificate file renamed over is not seen")
	}
	// Removed.
	if err := os.Remove(def.Key); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Changed(); err == nil {
		t.Error("a removed key file gives no error")
	}
}
