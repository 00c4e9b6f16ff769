package config

import (
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// decoder walks a yaml.Node tree alongside the Go types, strictly: every key
// must name a field, every value must fit its field. It records the line of
// every key it sees (which also tells defaults what the user wrote) and
// collects problems instead of stopping at the first.
type decoder struct {
	// lines maps a value's path ("services[1].pool") to its line. A path is
	// present only when the file sets it to something other than null.
	lines map[string]int
	// bad holds the paths whose values could not be decoded, so validation
	// does not pile a second, misleading message on the same field.
	bad      map[string]bool
	problems []Problem
}

func newDecoder() *decoder {
	return &decoder{lines: map[string]int{}, bad: map[string]bool{}}
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.bad[path] = true
	d.problems = append(d.problems, Problem{Line: n.Line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

var durationType = reflect.TypeFor[Duration]()

// decode stores n into v (addressable), reporting problems under path.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if isNull(n) {
		// An explicit null leaves a value unset (defaults apply), except
		// for optional sections: `tcp:` alone switches the TCP check on.
		if v.Kind() == reflect.Pointer && v.Type().Elem().Kind() == reflect.Struct {
			v.Set(reflect.New(v.Type().Elem()))
			return
		}
		delete(d.lines, path)
		return
	}
	if v.Type() == durationType {
		d.decodeDuration(n, v, path)
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		d.decode(n, p.Elem(), path)
		v.Set(p)
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n, path, "expected a list, got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			d.lines[p] = item.Line
			d.decode(item, s.Index(i), p)
		}
		v.Set(s)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.fail(n, path, "expected a string, got %s", describe(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
			d.fail(n, path, "expected true or false, got %s", describe(n))
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Uint16, reflect.Uint32:
		d.decodeInt(n, v, path)
	default:
		// Only reachable if types.go grows a field kind this walker does not know.
		d.fail(n, path, "internal error: cannot decode into %s", v.Type())
	}
}

func (d *decoder) decodeInt(n *yaml.Node, v reflect.Value, path string) {
	var i int64
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&i) != nil {
		d.fail(n, path, "expected an integer, got %s", describe(n))
		return
	}
	var lo, hi int64
	switch v.Kind() {
	case reflect.Uint16:
		lo, hi = 0, math.MaxUint16
	case reflect.Uint32:
		lo, hi = 0, math.MaxUint32
	default:
		lo, hi = math.MinInt64, math.MaxInt64
	}
	if i < lo || i > hi {
		d.fail(n, path, "%d is out of range (%d-%d)", i, lo, hi)
		return
	}
	if v.CanInt() {
		v.SetInt(i)
	} else {
		v.SetUint(uint64(i))
	}
}

func (d *decoder) decodeDuration(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.ScalarNode {
		d.fail(n, path, "expected a duration such as \"2s\" or \"5m\", got %s", describe(n))
		return
	}
	dur, err := time.ParseDuration(n.Value)
	if err != nil {
		d.fail(n, path, "expected a duration such as \"2s\" or \"5m\", got %q", n.Value)
		return
	}
	if dur < 0 {
		d.fail(n, path, "duration %s must not be negative", n.Value)
		return
	}
	v.SetInt(int64(dur))
}

// field is one YAML key of a struct.
type field struct {
	index int
	name  string
}

func yamlFields(t reflect.Type) []field {
	var fs []field
	for i := range t.NumField() {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if name == "" || name == "-" || !sf.IsExported() {
			continue
		}
		fs = append(fs, field{index: i, name: name})
	}
	return fs
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping of keys, got %s", describe(n))
		return
	}
	fields := yamlFields(v.Type())
	byName := make(map[string]field, len(fields))
	names := make([]string, 0, len(fields))
	for _, f := range fields {
		byName[f.name] = f
		names = append(names, f.name)
	}
	seen := map[string]int{}
	for _, kv := range mappingPairs(n) {
		key, val := kv[0], kv[1]
		p := join(path, key.Value)
		if key.Kind != yaml.ScalarNode {
			d.fail(key, path, "keys must be plain strings, got %s", describe(key))
			continue
		}
		if first, dup := seen[key.Value]; dup {
			d.fail(key, p, "key %q is repeated (first at line %d)", key.Value, first)
			continue
		}
		seen[key.Value] = key.Line
		f, ok := byName[key.Value]
		if !ok {
			msg := fmt.Sprintf("unknown key %q", key.Value)
			if h := listenerOnlyHint(path, key.Value); h != "" {
				msg += h
			} else if s := suggest(key.Value, names); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			} else if len(names) == 0 {
				msg += " (this section takes no keys)"
			} else {
				msg += fmt.Sprintf(" (known keys: %s)", strings.Join(names, ", "))
			}
			d.fail(key, p, "%s", msg)
			continue
		}
		d.lines[p] = key.Line
		d.decode(val, v.Field(f.index), p)
	}
}

// mappingPairs returns the key/value pairs of a mapping with YAML merge keys
// ("<<: *anchor") expanded: merged pairs come first and explicit keys of the
// mapping itself win over them.
func mappingPairs(n *yaml.Node) [][2]*yaml.Node {
	var merged, own [][2]*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			srcs := []*yaml.Node{v}
			if v.Kind == yaml.SequenceNode {
				srcs = v.Content
			}
			for _, s := range srcs {
				if s.Kind == yaml.AliasNode {
					s = s.Alias
				}
				if s.Kind == yaml.MappingNode {
					merged = append(merged, mappingPairs(s)...)
				}
			}
			continue
		}
		own = append(own, [2]*yaml.Node{k, v})
	}
	if len(merged) == 0 {
		return own
	}
	mine := map[string]bool{}
	for _, kv := range own {
		mine[kv[0].Value] = true
	}
	var out [][2]*yaml.Node
	taken := map[string]bool{}
	for _, kv := range merged {
		if !mine[kv[0].Value] && !taken[kv[0].Value] {
			taken[kv[0].Value] = true
			out = append(out, kv)
		}
	}
	return append(out, own...)
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names a node's shape for a type error.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return strconv.Quote(n.Value)
	default:
		return "an unexpected YAML node"
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// parent strips the last ".key" or "[i]" of a path.
func parent(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

// suggest returns the known name closest to s when it is close enough to be
// a likely typo, else "".
func suggest(s string, names []string) string {
	best, bestDist := "", 3
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	for _, n := range sorted {
		if d := editDistance(strings.ToLower(s), n); d < bestDist {
			best, bestDist = n, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// listenerOnly are the keys of an http service (and of its client block,
// as client.KEY) that a route cannot have, and why.
var listenerOnly = map[string]string{
	"client.header_timeout":   "a request's header is read before it is routed",
	"client.max_header_bytes": "a request's header is read before it is routed",
	"client.max_header_count": "a request's header is read before it is routed",
	"client.idle_timeout":     "a keep-alive connection carries requests of any route",
	"client.max_connections":  "a connection carries requests of any route",
	"client.h2_":              "HTTP/2 settings are a connection's, and a connection carries requests of any route",
	"client":                  "a route's own limits are max_body_bytes, max_requests and tunnel_idle_timeout, set on the route; the others act before routing or per connection",
	"tls":                     "the certificate is chosen by SNI before any request (tls.certificates)",
	"h2c":                     "the protocol is chosen per connection",
	"upstream":                "backend connections are pooled per service (a route may set server_name)",
	"trusted_proxies":         "a peer is trusted per connection",
	"request_id":              "the id is given before the request is routed",
	"access_log":              "one log per listener (each line names its route)",
	"upgrades":                "the allow-list is the listener's",
}

// listenerOnlyHint explains, for an unknown key of a route, that it is
// the listener's: where to set it instead and why ("" for other keys).
func listenerOnlyHint(path, key string) string {
	if !strings.HasSuffix(path, "]") || !strings.Contains(path, ".routes[") {
		return ""
	}
	where := key
	why, ok := listenerOnly[key]
	if !ok {
		where = "client." + key
		if why, ok = listenerOnly[where]; !ok && strings.HasPrefix(key, "h2_") {
			why, ok = listenerOnly["client.h2_"]
		}
	}
	if !ok {
		return ""
	}
	return fmt.Sprintf(" (%s is the service's, for all its routes: %s)", where, why)
}
