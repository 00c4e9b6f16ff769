// Package route is the routing table of an http listener that carries
// many sites: it picks the route of a request by its host, then its path,
// then (optionally) its method and one header.
//
// Precedence, most specific first (as nginx's server_name and location,
// and Envoy's virtual hosts and routes):
//
//  1. The site: the routes listing the request's host exactly, else those
//     with the longest wildcard (*.example.com) covering it, else the
//     routes that list no host (the default site). A site, once chosen,
//     is never left for a less specific one: a request for a host whose
//     routes do not match its path gets 404, as in nginx.
//  2. Within the site: an exact path before every prefix, a longer
//     prefix before a shorter one (plain string prefixes, as nginx's
//     location: /api matches /api, /api/ and /apix).
//  3. For the same path: a route with a header condition before one
//     without, a route with methods before one without, then the order of
//     the file. A route whose method or header does not match hands the
//     request to the next route by this order.
//
// Compile refuses a table where one route can never match, or where two
// routes match the same requests (same site, same path, same header
// condition, overlapping methods): the error names both routes and their
// lines. Matching costs one map look-up for an exact host, one pass over
// the wildcards (longest first) otherwise, and one pass over the site's
// routes: no regex, nothing that grows with the request.
package route

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Spec is what one route matches.
type Spec struct {
	Name string
	// Hosts are exact names (api.example.com) and wildcards
	// (*.example.com: any name ending in .example.com, at any depth, not
	// example.com itself); none: the default site.
	Hosts []string
	// Path is a prefix (default "/"); ExactPath, when set instead, is the
	// only path the route matches. Both are compared to the request's
	// path as sent (percent-encoding kept, before '?').
	Path      string
	ExactPath string
	// Methods limit the route to these methods (none: any method).
	Methods []string
	// Header, when set, limits the route to requests with this header.
	Header *Header
	// Line is where the route is in the config file (messages; 0: none).
	Line int
}

// String says what the spec matches, for sluice status: "host
// api.example.com,*.api.example.com path /v1/ methods GET,POST header
// X-Canary=1"; without hosts "any host", and only the conditions set.
func (s Spec) String() string {
	var b strings.Builder
	if len(s.Hosts) == 0 {
		b.WriteString("any host")
	} else {
		b.WriteString("host ")
		b.WriteString(strings.Join(s.Hosts, ","))
	}
	switch {
	case s.ExactPath != "":
		b.WriteString(" exact_path " + s.ExactPath)
	case s.Path != "" && s.Path != "/":
		b.WriteString(" path " + s.Path)
	}
	if len(s.Methods) > 0 {
		b.WriteString(" methods " + strings.Join(s.Methods, ","))
	}
	if h := s.Header; h != nil {
		b.WriteString(" header " + h.Name)
		if h.Value != "" {
			b.WriteString("=" + h.Value)
		}
	}
	return b.String()
}

// Header is a header condition: the field is present, with exactly Value
// when Value is not empty (one of its values, when it is repeated).
type Header struct {
	Name  string
	Value string
}

// Table is a compiled routing table; Match is safe for concurrent use.
type Table struct {
	exact map[string]*site
	wild  []*site // longest suffix first
	any   *site   // nil: no default site
	// pathRoutes: some route matches on a path other than "/" (the
	// listener then refuses dot segments, see CheckPath).
	pathRoutes bool
}

type site struct {
	pattern string // "" for the default site
	suffix  string // wildcards: ".example.com"
	entries []entry
}

type entry struct {
	idx     int // into the specs given to Compile
	exact   bool
	path    string
	methods []string // sorted; nil: any
	header  *Header  // canonical name
	name    string
	line    int
}

// Compile checks specs and builds their table; Match returns indexes
// into specs.
func Compile(specs []Spec) (*Table, error) {
	t := &Table{exact: make(map[string]*site)}
	wild := make(map[string]*site)
	var errs []error
	for i, sp := range specs {
		e, err := newEntry(i, sp)
		if err != nil {
			errs = append(errs, fmt.Errorf("route %s%s: %w", sp.Name, at(sp.Line), err))
			continue
		}
		if e.exact || e.path != "/" {
			t.pathRoutes = true
		}
		if len(sp.Hosts) == 0 {
			if t.any == nil {
				t.any = &site{}
			}
			t.any.entries = append(t.any.entries, e)
			continue
		}
		seen := make(map[string]bool)
		for _, h := range sp.Hosts {
			p, err := NormalizePattern(h)
			if err != nil {
				errs = append(errs, fmt.Errorf("route %s%s: %w", sp.Name, at(sp.Line), err))
				continue
			}
			if seen[p] {
				errs = append(errs, fmt.Errorf("route %s%s: host %q listed twice", sp.Name, at(sp.Line), h))
				continue
			}
			seen[p] = true
			m := t.exact
			if strings.HasPrefix(p, "*.") {
				m = wild
			}
			s := m[p]
			if s == nil {
				s = &site{pattern: p}
				if strings.HasPrefix(p, "*.") {
					s.suffix = p[1:]
				}
				m[p] = s
			}
			s.entries = append(s.entries, e)
		}
	}
	for _, s := range wild {
		t.wild = append(t.wild, s)
	}
	sort.Slice(t.wild, func(i, j int) bool {
		a, b := t.wild[i].suffix, t.wild[j].suffix
		return len(a) > len(b) || len(a) == len(b) && a < b
	})
	all := slices.Collect(func(yield func(*site) bool) {
		for _, s := range t.exact {
			if !yield(s) {
				return
			}
		}
		for _, s := range t.wild {
			if !yield(s) {
				return
			}
		}
		if t.any != nil {
			yield(t.any)
		}
	})
	for _, s := range all {
		s.sort()
		errs = append(errs, s.check()...)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return t, nil
}

func at(line int) string {
	if line > 0 {
		return fmt.Sprintf(" (line %d)", line)
	}
	return ""
}

func newEntry(i int, sp Spec) (entry, error) {
	e := entry{idx: i, name: sp.Name, line: sp.Line, path: sp.Path}
	switch {
	case sp.Path != "" && sp.ExactPath != "":
		return e, errors.New("set path (a prefix) or exact_path, not both")
	case sp.ExactPath != "":
		e.exact, e.path = true, sp.ExactPath
	case sp.Path == "":
		e.path = "/"
	}
	if err := CheckPattern(e.path); err != nil {
		return e, err
	}
	// Compared in the form requests' paths are matched in (MatchPath).
	e.path = MatchPath(e.path)
	for _, m := range sp.Methods {
		if !httpguts.ValidHeaderFieldName(m) {
			return e, fmt.Errorf("method %q is not a method name such as GET", m)
		}
		m = strings.ToUpper(m)
		if slices.Contains(e.methods, m) {
			return e, fmt.Errorf("method %s listed twice", m)
		}
		e.methods = append(e.methods, m)
	}
	slices.Sort(e.methods)
	if h := sp.Header; h != nil {
		if !httpguts.ValidHeaderFieldName(h.Name) {
			return e, fmt.Errorf("header %q is not a header name", h.Name)
		}
		for i := 0; i < len(h.Value); i++ {
			if c := h.Value[i]; c < ' ' && c != '\t' || c == 0x7f {
				return e, fmt.Errorf("header %s: the value has a control character", h.Name)
			}
		}
		e.header = &Header{Name: http.CanonicalHeaderKey(h.Name), Value: h.Value}
	}
	return e, nil
}

// sort puts the site's routes in precedence order (see the package doc).
func (s *site) sort() {
	sort.SliceStable(s.entries, func(i, j int) bool {
		a, b := s.entries[i], s.entries[j]
		if a.exact != b.exact {
			return a.exact
		}
		if len(a.path) != len(b.path) {
			return len(a.path) > len(b.path)
		}
		if a.path != b.path {
			return a.path < b.path
		}
		if (a.header != nil) != (b.header != nil) {
			return a.header != nil
		}
		if (a.methods != nil) != (b.methods != nil) {
			return a.methods != nil
		}
		return a.idx < b.idx
	})
}

// check refuses routes of the site that match the same requests: with
// the precedence above, only a route with the same path and the same
// header condition can take a request from another, and only for the
// methods both accept (a route with methods before one without is not a
// conflict: the second takes the other methods).
func (s *site) check() []error {
	var errs []error
	for i, a := range s.entries {
		for _, b := range s.entries[i+1:] {
			if a.exact != b.exact || a.path != b.path || !sameHeader(a.header, b.header) {
				continue
			}
			if a.methods != nil && b.methods == nil {
				// a, more specific, comes first: b takes the other methods.
				continue
			}
			m, ok := overlap(a.methods, b.methods)
			if !ok {
				continue
			}
			host := s.pattern
			if host == "" {
				host = "any host (the default site)"
			}
			kind := "path"
			if a.exact {
				kind = "exact_path"
			}
			errs = append(errs, fmt.Errorf("route %s%s is shadowed by route %s%s: both match %s %s %s on %s (give them different paths, methods or headers, or merge them)",
				b.name, at(b.line), a.name, at(a.line), m, kind, a.path, host))
		}
	}
	return errs
}

func sameHeader(a, b *Header) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// overlap says whether two method lists (nil: any) share a method, and
// names what they share.
func overlap(a, b []string) (string, bool) {
	switch {
	case a == nil && b == nil:
		return "any method", true
	case a == nil:
		return strings.Join(b, ","), true
	case b == nil:
		return strings.Join(a, ","), true
	}
	var both []string
	for _, m := range a {
		if slices.Contains(b, m) {
			both = append(both, m)
		}
	}
	return strings.Join(both, ","), len(both) > 0
}

// Match returns the index (into the specs given to Compile) of the route
// of a request: host is the request's Host (a port is ignored), path its
// path as sent (without the query), compared in its MatchPath form. ok is
// false when no route matches.
func (t *Table) Match(host, path, method string, h http.Header) (idx int, ok bool) {
	path = MatchPath(path)
	s := t.site(NormalizeHost(host))
	if s == nil {
		return 0, false
	}
	for i := range s.entries {
		e := &s.entries[i]
		if e.exact {
			if path != e.path {
				continue
			}
		} else if !strings.HasPrefix(path, e.path) {
			continue
		}
		if e.methods != nil && !slices.Contains(e.methods, method) {
			continue
		}
		if e.header != nil && !headerMatches(h, e.header) {
			continue
		}
		return e.idx, true
	}
	return 0, false
}

// RoutesPaths reports whether a route matches on a path other than "/".
func (t *Table) RoutesPaths() bool { return t.pathRoutes }

func (t *Table) site(host string) *site {
	if s, ok := t.exact[host]; ok {
		return s
	}
	for _, s := range t.wild {
		if len(host) > len(s.suffix) && strings.HasSuffix(host, s.suffix) {
			return s
		}
	}
	return t.any
}

func headerMatches(h http.Header, c *Header) bool {
	vv, ok := h[c.Name]
	if !ok {
		return false
	}
	if c.Value == "" {
		return true
	}
	return slices.Contains(vv, c.Value)
}

// NormalizeHost is a request's Host as routes compare it: lower case,
// without port and without a final dot.
func NormalizeHost(h string) string {
	if strings.HasPrefix(h, "[") {
		if i := strings.IndexByte(h, ']'); i >= 0 {
			return strings.ToLower(h[:i+1])
		}
		return strings.ToLower(h)
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		h = h[:i]
	}
	return strings.ToLower(strings.TrimSuffix(h, "."))
}

// NormalizePattern checks a route's host (a name, or *. and a name) and
// returns it in lower case without a final dot.
func NormalizePattern(h string) (string, error) {
	p := strings.ToLower(strings.TrimSuffix(h, "."))
	name := strings.TrimPrefix(p, "*.")
	if name == "" || len(name) > 253 || strings.Contains(name, "*") {
		return "", fmt.Errorf("host %q: must be a name (api.example.com) or a wildcard (*.example.com)", h)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("host %q: must be a name (api.example.com) or a wildcard (*.example.com)", h)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				if c == ':' {
					return "", fmt.Errorf("host %q: no port (routes match the host whatever the port)", h)
				}
				return "", fmt.Errorf("host %q: must be a name (api.example.com) or a wildcard (*.example.com)", h)
			}
		}
	}
	return p, nil
}

// CheckPattern checks a route's path: it starts with '/', is visible
// ASCII without '?' or '#', and has no dot segment.
func CheckPattern(p string) error {
	if p == "" || p[0] != '/' {
		return fmt.Errorf("path %q: must start with /", p)
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c >= 0x7f || c == '?' || c == '#' {
			return fmt.Errorf("path %q: visible ASCII only, no ? or # (percent-encode other bytes)", p)
		}
	}
	if hasDotSegment(p) {
		return fmt.Errorf("path %q: no . or .. segment", p)
	}
	return nil
}

// MatchPath is the form of a path that routes are matched in (the path
// sent to the backend is the client's, unchanged): percent-encoded
// unreserved characters decoded (RFC 3986 6.2.2.2: %61 is a, %7E is ~),
// the hex digits of other escapes in upper case (%2f is %2F), and runs
// of slashes merged into one (nginx's merge_slashes, on by default).
// Every form a backend would read as the same path matches the same
// route: /%61dmin and //admin cannot slip past a route for /admin to the
// default route's pool. An encoded slash (%2F) stays one: it is not a
// segment boundary to every backend (Envoy's default keeps it too). A
// path with a '%' that starts no escape is returned as it is.
func MatchPath(p string) string {
	if strings.IndexByte(p, '%') < 0 && !strings.Contains(p, "//") {
		return p // the common path: nothing to do, nothing allocated
	}
	b := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c == '%' {
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				// Not an escape: left as it is (decoding around it could
				// make one, "%0%61"), and refused before it is sent (400:
				// strict translation).
				return p
			}
			d := unhex(p[i+1])<<4 | unhex(p[i+2])
			if !unreserved(d) {
				b = append(b, '%', upperHex(p[i+1]), upperHex(p[i+2]))
				i += 2
				continue
			}
			c = d
			i += 2
		}
		if c == '/' && len(b) > 0 && b[len(b)-1] == '/' {
			continue
		}
		b = append(b, c)
	}
	return string(b)
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

// unreserved is RFC 3986's unreserved set: ALPHA, DIGIT, - . _ ~.
func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// CheckPath checks a request's path on a listener that routes by path:
// a dot segment (/../, also percent-encoded) is refused, so a request
// cannot match one route's prefix and reach another route's path once
// the backend resolves it.
func CheckPath(p string) error {
	if hasDotSegment(p) {
		return errors.New("the path has a . or .. segment")
	}
	return nil
}

func hasDotSegment(p string) bool {
	for _, seg := range strings.Split(p, "/") {
		s := strings.ReplaceAll(strings.ToLower(seg), "%2e", ".")
		if s == "." || s == ".." {
			return true
		}
	}
	return false
}
