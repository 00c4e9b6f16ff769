package route

import (
	"net/http"
	"testing"
)

// FuzzMatch: any host, path and method is matched without panicking,
// and a match is an index of the table's specs.
func FuzzMatch(f *testing.F) {
	specs := []Spec{
		{Name: "a", Hosts: []string{"a.example", "*.w.example"}, Path: "/api/"},
		{Name: "b", Hosts: []string{"a.example"}, ExactPath: "/x", Methods: []string{"GET"}},
		{Name: "c", Header: &Header{Name: "X-A", Value: "1"}},
		{Name: "d", Path: "/"},
	}
	tab, err := Compile(specs)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range [][3]string{
		{"a.example", "/api/x", "GET"}, {"[::1]:80", "/", "POST"}, {"x.w.example.", "/%2e%2e/", "GET"},
		{"", "", ""}, {":", "/..", "PUT"}, {"a.example", "/%61pi//x%2f", "GET"}, {"[", "//", "GET"}, {"A.EXAMPLE:99999", "/x", "GET"},
	} {
		f.Add(s[0], s[1], s[2], "1")
	}
	f.Fuzz(func(t *testing.T, host, path, method, hv string) {
		i, ok := tab.Match(host, path, method, http.Header{"X-A": {hv}})
		if ok && (i < 0 || i >= len(specs)) {
			t.Fatalf("Match(%q, %q, %q) = %d", host, path, method, i)
		}
		_ = CheckPath(path)
		_ = NormalizeHost(host)
		// The form routes are matched in is its own form.
		if m := MatchPath(path); MatchPath(m) != m {
			t.Fatalf("MatchPath(%q) = %q, whose MatchPath is %q", path, m, MatchPath(m))
		}
	})
}
