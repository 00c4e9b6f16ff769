package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Problem is one thing wrong with a config file.
type Problem struct {
	Line int    // 1-based line in the file
	Path string // the key, such as "services[1].pool"; "" for the whole file
	Msg  string
}

// ValidationError is every problem found in one config file. Its message
// lists them one per line as "file:line: path: message".
type ValidationError struct {
	File     string // the path given to Load or Parse ("<config>" when none)
	Problems []Problem
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%s:%d: ", e.File, p.Line)
		if p.Path != "" {
			b.WriteString(p.Path)
			b.WriteString(": ")
		}
		b.WriteString(p.Msg)
	}
	return b.String()
}

// WarningLines formats c.Warnings one per line as
// "file:line: path: warning: message", in file order.
func (c *Config) WarningLines() []string {
	file := c.Path
	if file == "" {
		file = "<config>"
	}
	out := make([]string, 0, len(c.Warnings))
	for _, w := range c.Warnings {
		l := fmt.Sprintf("%s:%d: ", file, w.Line)
		if w.Path != "" {
			l += w.Path + ": "
		}
		out = append(out, l+"warning: "+w.Msg)
	}
	return out
}

// Load reads, decodes, defaults and validates the config file at path.
// A file that cannot be read gives an error wrapping the os error; a file
// with problems gives a *ValidationError.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes data strictly (unknown keys are errors), applies defaults
// and validates the result. path only names the file in messages and in
// Config.Path. Any problem gives a nil *Config and a *ValidationError that
// holds all of them, each with its line.
func Parse(data []byte, path string) (*Config, error) {
	file := path
	if file == "" {
		file = "<config>"
	}
	cfg := &Config{Path: path}
	d := newDecoder()

	root, problem := parseYAML(data)
	if problem != nil {
		return nil, &ValidationError{File: file, Problems: []Problem{*problem}}
	}
	if root != nil {
		d.decode(root, reflect.ValueOf(cfg).Elem(), "")
	}
	setLines(cfg, d.lines)
	applyDefaults(cfg, d.lines)
	v := &validator{lines: d.lines, bad: d.bad}
	v.validate(cfg)

	problems := append(d.problems, v.problems...)
	if len(problems) > 0 {
		slices.SortStableFunc(problems, func(a, b Problem) int { return a.Line - b.Line })
		return nil, &ValidationError{File: file, Problems: problems}
	}
	slices.SortStableFunc(v.warnings, func(a, b Problem) int { return a.Line - b.Line })
	cfg.Warnings = v.warnings
	return cfg, nil
}

// setLines records where each pool, backend and service starts.
func setLines(c *Config, lines map[string]int) {
	for i := range c.Pools {
		p := &c.Pools[i]
		p.Line = lines[fmt.Sprintf("pools[%d]", i)]
		for j := range p.Backends {
			p.Backends[j].Line = lines[fmt.Sprintf("pools[%d].backends[%d]", i, j)]
		}
	}
	for i := range c.Services {
		c.Services[i].Line = lines[fmt.Sprintf("services[%d]", i)]
		for j := range c.Services[i].Routes {
			c.Services[i].Routes[j].Line = lines[fmt.Sprintf("services[%d].routes[%d]", i, j)]
		}
	}
}

var (
	yamlLineRE   = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	yamlAnchorRE = regexp.MustCompile(`^yaml: unknown anchor '(.*)' referenced$`)
)

// parseYAML returns the root node of the only document in data (nil for an
// empty file) or the syntax problem.
func parseYAML(data []byte) (*yaml.Node, *Problem) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, syntaxProblem(err, data)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, syntaxProblem(err, data)
	default:
		return nil, &Problem{Line: extra.Line, Msg: "only one YAML document is allowed"}
	}
	if len(doc.Content) == 0 || isNull(doc.Content[0]) {
		return nil, nil
	}
	return doc.Content[0], nil
}

// parserMessages are the yaml.v3 errors raised by its parser rather than its
// scanner: yaml.v3 reports their line 0-based (one too low).
var parserMessages = []string{
	"did not find expected node content",
	"did not find expected key",
	"did not find expected '-' indicator",
	"did not find expected ',' or ']'",
	"did not find expected ',' or '}'",
	"did not find expected <document start>",
}

// syntaxProblem turns a yaml.v3 syntax error into a Problem with a 1-based line.
func syntaxProblem(err error, data []byte) *Problem {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		if slices.Contains(parserMessages, m[2]) {
			line++
		}
		return &Problem{Line: line, Msg: "invalid YAML: " + m[2]}
	}
	line := 1
	if m := yamlAnchorRE.FindStringSubmatch(msg); m != nil {
		for i, l := range strings.Split(string(data), "\n") {
			if strings.Contains(l, "*"+m[1]) {
				line = i + 1
				break
			}
		}
	}
	return &Problem{Line: line, Msg: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
}

// Pools are the names of the pools a service sends to, sorted: its own
// (when set) and, for an http service, its routes'.
func (s Service) Pools() []string {
	var out []string
	if s.Pool != "" {
		out = append(out, s.Pool)
	}
	for _, r := range s.Routes {
		if !slices.Contains(out, r.Pool) {
			out = append(out, r.Pool)
		}
	}
	slices.Sort(out)
	return out
}

// Pool returns the pool called name, or nil.
func (c *Config) Pool(name string) *Pool {
	for i := range c.Pools {
		if c.Pools[i].Name == name {
			return &c.Pools[i]
		}
	}
	return nil
}

// L4Services returns the services served by the XDP data path (tcp and udp),
// in file order.
func (c *Config) L4Services() []Service {
	var out []Service
	for _, s := range c.Services {
		if s.IsL4() {
			out = append(out, s)
		}
	}
	return out
}

// HTTPServices returns the services served by the L7 stage, in file order.
func (c *Config) HTTPServices() []Service {
	var out []Service
	for _, s := range c.Services {
		if s.Protocol == ProtocolHTTP {
			out = append(out, s)
		}
	}
	return out
}

// IsL4 reports whether the XDP data path serves s (protocol tcp or udp).
func (s *Service) IsL4() bool {
	return s.Protocol == ProtocolTCP || s.Protocol == ProtocolUDP
}

// IsName reports whether b is a DNS-name backend (else a fixed address).
func (b *Backend) IsName() bool { return b.Name != "" }
