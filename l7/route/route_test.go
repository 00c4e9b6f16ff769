package route

import (
	"net/http"
	"strings"
	"testing"
)

func TestMatchPrecedence(t *testing.T) {
	specs := []Spec{
		{Name: "default"}, // 0
		{Name: "wild", Hosts: []string{"*.example.com"}},                                                                      // 1
		{Name: "deepwild", Hosts: []string{"*.api.example.com"}},                                                              // 2
		{Name: "api", Hosts: []string{"API.example.com."}},                                                                    // 3
		{Name: "api-v1", Hosts: []string{"api.example.com"}, Path: "/v1/"},                                                    // 4
		{Name: "api-v1-long", Hosts: []string{"api.example.com"}, Path: "/v1/users"},                                          // 5
		{Name: "api-health", Hosts: []string{"api.example.com"}, ExactPath: "/v1/health"},                                     // 6
		{Name: "api-post", Hosts: []string{"api.example.com"}, Path: "/v1/", Methods: []string{"post"}},                       // 7
		{Name: "api-canary", Hosts: []string{"api.example.com"}, Path: "/v1/", Header: &Header{Name: "x-canary", Value: "1"}}, // 8
		{Name: "static", Hosts: []string{"www.example.com"}, Path: "/static/"},                                                // 9
	}
	tab, err := Compile(specs)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		host, path, method string
		h                  http.Header
		want               string
	}{
		{"other.org", "/", "GET", nil, "default"},
		{"", "/x", "GET", nil, "default"},
		{"x.example.com", "/", "GET", nil, "wild"},
		{"a.b.example.com:8443", "/", "GET", nil, "wild"},
		{"example.com", "/", "GET", nil, "default"},
		{"x.api.example.com", "/", "GET", nil, "deepwild"},
		{"api.example.com", "/", "GET", nil, "api"},
		{"Api.Example.Com:443", "/v1/x", "GET", nil, "api-v1"},
		{"api.example.com", "/v1/users/7", "GET", nil, "api-v1-long"},
		{"api.example.com", "/v1/health", "GET", nil, "api-health"},
		{"api.example.com", "/v1/health/x", "GET", nil, "api-v1"},
		{"api.example.com", "/v1/x", "POST", nil, "api-post"},
		{"api.example.com", "/v1/x", "POST", http.Header{"X-Canary": {"1"}}, "api-canary"},
		{"api.example.com", "/v1/x", "GET", http.Header{"X-Canary": {"2"}}, "api-v1"},
		{"api.example.com", "/v2", "GET", nil, "api"},
	} {
		i, ok := tab.Match(c.host, c.path, c.method, c.h)
		if !ok || specs[i].Name != c.want {
			got := "none"
			if ok {
				got = specs[i].Name
			}
			t.Errorf("%s %s%s: route %s, want %s", c.method, c.host, c.path, got, c.want)
		}
	}
	// A chosen site is not left for a less specific one (nginx, Envoy).
	if i, ok := tab.Match("www.example.com", "/index.html", "GET", nil); ok {
		t.Errorf("www.example.com/index.html matched %s, want no route (404)", specs[i].Name)
	}
	if !tab.RoutesPaths() {
		t.Error("RoutesPaths false with path routes")
	}
}

func TestNoDefaultSite(t *testing.T) {
	tab, err := Compile([]Spec{{Name: "a", Hosts: []string{"a.example"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tab.Match("b.example", "/", "GET", nil); ok {
		t.Error("unknown host matched without a default site")
	}
	if tab.RoutesPaths() {
		t.Error("RoutesPaths true without path routes")
	}
}

func TestCompileRefuses(t *testing.T) {
	for _, c := range []struct {
		name  string
		specs []Spec
		want  string
	}{
		{"duplicate", []Spec{{Name: "a", Hosts: []string{"x.example"}, Path: "/p", Line: 3}, {Name: "b", Hosts: []string{"X.example"}, Path: "/p", Line: 9}},
			"route b (line 9) is shadowed by route a (line 3)"},
		{"default path", []Spec{{Name: "a", Path: "/"}, {Name: "b"}}, "route b is shadowed by route a"},
		{"methods overlap", []Spec{{Name: "a", Path: "/p", Methods: []string{"GET", "PUT"}}, {Name: "b", Path: "/p", Methods: []string{"put"}}}, "both match PUT path /p"},
		{"both paths", []Spec{{Name: "a", Path: "/p", ExactPath: "/q"}}, "not both"},
		{"relative path", []Spec{{Name: "a", Path: "p"}}, "must start with /"},
		{"dot segment", []Spec{{Name: "a", Path: "/a/../b"}}, "no . or .. segment"},
		{"query", []Spec{{Name: "a", Path: "/a?b"}}, "no ? or #"},
		{"host port", []Spec{{Name: "a", Hosts: []string{"a.example:443"}}}, "no port"},
		{"host star", []Spec{{Name: "a", Hosts: []string{"a.*.example"}}}, "wildcard"},
		{"host twice", []Spec{{Name: "a", Hosts: []string{"a.example", "A.example"}}}, "listed twice"},
		{"bad method", []Spec{{Name: "a", Methods: []string{"GET POST"}}}, "not a method"},
		{"bad header", []Spec{{Name: "a", Header: &Header{Name: "x y"}}}, "not a header name"},
	} {
		_, err := Compile(c.specs)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
	// Not shadowed: different methods, header conditions, hosts, path kinds.
	if _, err := Compile([]Spec{
		{Name: "a", Path: "/p", Methods: []string{"GET"}},
		{Name: "b", Path: "/p", Methods: []string{"POST"}},
		{Name: "c", Path: "/p", Header: &Header{Name: "X-A", Value: "1"}},
		{Name: "d", Path: "/p", Header: &Header{Name: "X-A", Value: "2"}},
		{Name: "e", Path: "/p"},
		{Name: "f", ExactPath: "/p"},
		{Name: "g", Hosts: []string{"x.example"}, Path: "/p"},
		{Name: "h", Hosts: []string{"*.x.example"}, Path: "/p"},
	}); err != nil {
		t.Error(err)
	}
}

func TestCheckPath(t *testing.T) {
	for p, bad := range map[string]bool{
		"/a/b": false, "/a..b": false, "/.well-known/x": false,
		"/a/../b": true, "/a/./b": true, "/a/%2e%2E/b": true, "/a/..": true, "/a/.%2e": true,
	} {
		if err := CheckPath(p); (err != nil) != bad {
			t.Errorf("CheckPath(%q) = %v", p, err)
		}
	}
}

func TestSpecString(t *testing.T) {
	for _, c := range []struct {
		s    Spec
		want string
	}{
		{Spec{}, "any host"},
		{Spec{Path: "/"}, "any host"},
		{Spec{Hosts: []string{"api.example.com", "*.api.example.com"}, Path: "/v1/", Methods: []string{"GET", "POST"}, Header: &Header{Name: "X-Canary", Value: "1"}},
			"host api.example.com,*.api.example.com path /v1/ methods GET,POST header X-Canary=1"},
		{Spec{ExactPath: "/healthz", Header: &Header{Name: "X-A"}}, "any host exact_path /healthz header X-A"},
	} {
		if got := c.s.String(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.s, got, c.want)
		}
	}
}

func TestMatchPath(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"/api/x", "/api/x"},
		{"/%61dmin", "/admin"},
		{"/%41%5a%7e%2d%2E%5f%30", "/AZ~-._0"},
		{"/a%2fb", "/a%2Fb"}, // an encoded slash stays encoded
		{"/a%2Fb", "/a%2Fb"},
		{"/%e2%82%ac", "/%E2%82%AC"},
		{"//admin///x", "/admin/x"},
		{"/%2F/", "/%2F/"},
		{"/%", "/%"}, {"/%6", "/%6"}, {"/%zz", "/%zz"}, {"/%61", "/a"}, {"/a%6", "/a%6"},
		{"%0%61", "%0%61"}, {"//%zz%61", "//%zz%61"}, // not escapes: left alone
		{"", ""},
	} {
		if got := MatchPath(c.in); got != c.want {
			t.Errorf("MatchPath(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// Routes match every form of a path a backend reads as the same: an
// encoded unreserved character or doubled slashes cannot slip a request
// past /admin's route to the default one.
func TestMatchNormalizesPaths(t *testing.T) {
	tab, err := Compile([]Spec{{Name: "admin", Path: "/admin"}, {Name: "exact", ExactPath: "/a~b"}, {Name: "default", Path: "/"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		want int
	}{
		{"/admin/x", 0}, {"/%61dmin/x", 0}, {"/%61%64%6D%69%6E", 0}, {"//admin", 0}, {"/admin%2Fx", 0},
		{"/a~b", 1}, {"/a%7Eb", 1}, {"/a%7eb", 1},
		{"/public", 2}, {"/%2Fadmin", 2},
	} {
		if i, ok := tab.Match("h", c.path, "GET", nil); !ok || i != c.want {
			t.Errorf("Match(%q) = %d, %v; want %d", c.path, i, ok, c.want)
		}
	}
}
