package proxy

import "testing"

func TestValidTarget(t *testing.T) {
	for _, c := range []struct {
		method, uri string
		ok          bool
	}{
		{"GET", "/", true},
		{"GET", "/a/b?x=1&y=%2F", true},
		{"GET", "/%41%6a", true},
		{"OPTIONS", "*", true},
		{"GET", "*", false},
		{"GET", "", false},
		{"GET", "a/b", false},
		{"GET", "http://x/", false},
		{"GET", "/a b", false},
		{"GET", "/a\tb", false},
		{"GET", "/a#frag", false},
		{"GET", "/\x7f", false},
		{"GET", "/%", false},    // found by FuzzTranslateH2: an h2 :path net/http's h1 parser refuses
		{"GET", "/%4", false},   // one digit
		{"GET", "/%zz", false},  // not hex
		{"GET", "/a%2", false},  // cut at the end
		{"GET", "/%%41", false}, // '%' after '%'
	} {
		if got := validTarget(c.method, c.uri); got != c.ok {
			t.Errorf("validTarget(%q, %q) = %v, want %v", c.method, c.uri, got, c.ok)
		}
	}
}
