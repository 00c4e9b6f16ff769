package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// marker is how a case marks a line that must carry a problem: the text after
// it must occur in that problem's "path: message".
const marker = "# <-"

type wantProblem struct {
	line int
	text string
}

// markers are the problems src marks with mark ("# <-" errors, "# <~"
// warnings): the text after the mark must occur in "path: message" of a
// problem on that line.
func markers(src, mark string) []wantProblem {
	var want []wantProblem
	for i, l := range strings.Split(src, "\n") {
		if _, text, ok := strings.Cut(l, mark); ok {
			want = append(want, wantProblem{line: i + 1, text: strings.TrimSpace(text)})
		}
	}
	return want
}

// matchProblems asserts that got are exactly the wanted problems (kind
// names them in failures: "problem", "warning"); false when they are not.
func matchProblems(t *testing.T, want []wantProblem, got []Problem, kind string) bool {
	t.Helper()
	got = slices.Clone(got)
	ok := true
	for _, w := range want {
		i := slices.IndexFunc(got, func(p Problem) bool {
			return p.Line == w.line && strings.Contains(p.Path+": "+p.Msg, w.text)
		})
		if i < 0 {
			t.Errorf("missing %s at line %d containing %q", kind, w.line, w.text)
			ok = false
			continue
		}
		got = slices.Delete(got, i, i+1)
	}
	for _, p := range got {
		t.Errorf("unexpected %s at line %d: %s: %s", kind, p.Line, p.Path, p.Msg)
		ok = false
	}
	return ok
}

// checkProblems asserts that err holds exactly the problems marked in src.
func checkProblems(t *testing.T, src string, err error) {
	t.Helper()
	want := markers(src, marker)
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("want no error, got:\n%v", err)
		}
		return
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("want *ValidationError, got %T: %v", err, err)
	}
	if !matchProblems(t, want, ve.Problems, "problem") {
		t.Logf("all problems:\n%v", err)
	}
}

func TestParseProblems(t *testing.T) {
	tests := []struct {
		name string
		yaml string
	}{
		{"minimal ok", `
interfaces: [eth0]
pools:
  - name: web
    backends:
      - address: 198.18.2.11:80
services:
  - name: s
    listen: 198.18.1.100:80
    pool: web
`},
		{"unknown top-level key", `
interfaces: [eth0]
intefaces: [eth1]          # <- unknown key "intefaces" (did you mean "interfaces"?)
pools:
  - name: web
    backends:
      - address: 198.18.2.11:80
services:
  - name: s
    listen: 198.18.1.100:80
    pool: web
frobnicate: true           # <- frobnicate: unknown key "frobnicate" (known keys:
`},
		{"unknown nested keys", `
interfaces: [eth0]
dns:
  server: [1.1.1.1]        # <- dns.server: unknown key "server" (did you mean "servers"?)
pools:
  - name: web
    drain_timout: 5s       # <- pools[0].drain_timout: unknown key
    backends:
      - address: 198.18.2.11:80
        wieght: 2          # <- pools[0].backends[0].wieght: unknown key "wieght" (did you mean "weight"?)
    health_check: {http: {pth: /}}   # <- pools[0].health_check.http.pth: unknown key
services:
  - name: s
    listen: 198.18.1.100:80
    pool: web
    retry: {attempts: 2}   # <- services[0].retry: only allowed for http services
  - name: h
    listen: 198.18.1.100:81
    protocol: http
    pool: web
    retry:
      backof: {base: 1ms}  # <- services[1].retry.backof: unknown key
`},
		{"wrong types", `
interfaces: eth0           # <- interfaces: expected a list, got "eth0"
datapath:
  conntrack_max: lots      # <- datapath.conntrack_max: expected an integer, got "lots"
  maglev_table_size: 70000000000   # <- out of range
pools:
  - name: web
    drain_timeout: 30      # <- pools[0].drain_timeout: expected a duration such as "2s" or "5m", got "30"
    ejection:
      window: -1s          # <- pools[0].ejection.window: duration -1s must not be negative
      base_time: soon      # <- pools[0].ejection.base_time: expected a duration
    backends:
      - name: backend.lab
        port: "80"         # <- pools[0].backends[0].port: expected an integer, got "80"
      - name: backend2.lab
        port: 70000        # <- pools[0].backends[1].port: 70000 is out of range (0-65535)
      - address: [198.18.2.11, 80]   # <- pools[0].backends[2].address: expected a string, got a list
  - web                    # <- pools[1]: expected a mapping of keys, got "web"
services:
  - name: s
    listen: 198.18.1.101:80
    protocol: http
    pool: web
    retry:
      non_idempotent: yes  # <- services[0].retry.non_idempotent: expected true or false, got "yes"
      attempts: 2.5        # <- services[0].retry.attempts: expected an integer
    timeouts: 5s           # <- services[0].timeouts: expected a mapping of keys, got "5s"
`},
		{"repeated key", `
interfaces: [eth0]
pools:
  - name: web
    backends:
      - address: 198.18.2.11:80
services:
  - name: s
    listen: 198.18.1.100:80
    pool: web
    pool: web              # <- services[0].pool: key "pool" is repeated (first at line 10)
`},
		{"duplicate and bad names", `
interfaces: [eth0]
pools:
  - name: web
    backends:
      - address: 198.18.2.11:80
  - name: web              # <- pools[1].name: pool "web" is already defined at line 4
    backends:
      - address: 198.18.2.12:80
  - name: "web pool"       # <- pools[2].name: "web pool": pool names may only contain
    backends:
      - address: 198.18.2.12:80
  - backends:              # <- pools[3].name: pool name is required
      - address: 198.18.2.12:80
services:
  - name: s
    listen: 198.18.1.100:80
    pool: web
  - name: s                # <- services[1].name: service "s" is already defined at line 16
    listen: 198.18.1.100:81
    pool: web
  - name: s/1              # <- services[2].name: "s/1": service names may only contain
    listen: 198.18.1.100:82
    pool: web
  - listen: 198.18.1.100:83   # <- services[3].name: service name is required
    pool: web
`},
		{"listen", `
interfaces: [eth0]
pools:
  - name: web
    backends:
      - address: 198.18.2.11:80
services:
  - name: a
    listen: 198.18.1.100   # <- services[0].listen: "198.18.1.100" is not an ip:port
    pool: web
  - name: b
    listen: "[ff02::1]:80"   # <- services[1].listen: "[ff02::1]:80": a tcp/udp VIP must be a unicast address
    pool: web
  - name: c
    listen: 198.18.1.100:0 # <- port must not be 0
    pool: web
  - name: d                # <- services[3].listen: listen (vip:port) is required
    pool: web
  - name: e
    listen: 0.0.0.0:80     # <- a tcp/udp VIP must be a unicast address
    pool: web
  - name: f
    listen: "[2001:db8::1]:80"
    protocol: http
    pool: web
`},
		{"listener conflicts", `
interfaces: [eth0]
pools:
  - name: web
    backends:
      - address: 198.18.2.11:80
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
  - name: b
    listen: 198.18.1.100:80
    protocol: udp
    pool: web
  - name: c
    listen: 198.18.1.100:80   # <- services[2].listen: 198.18.1.100:80/tcp is already used by service "a"
    protocol: http
    pool: web
  - name: d
    listen: 0.0.0.0:8080
    protocol: http
    pool: web
  - name: e
    listen: 198.18.1.1:8080   # <- already used by service "d"
    protocol: http
    pool: web
  - name: f
    listen: 198.18.1.100:80   # <- services[5].listen: 198.18.1.100:80/udp is already used by service "b"
    protocol: udp
    pool: web
`},
		{"protocol and mode", `
interfaces: [eth0]
pools:
  - name: web
    backends:
      - address: 198.18.2.11:80
services:
  - name: a
    listen: 198.18.1.100:80
    protocol: sctp         # <- services[0].protocol: "sctp": must be tcp, udp or http
    pool: web
  - name: b
    listen: 198.18.1.100:81
    mode: snatt            # <- services[1].mode: "snatt": must be nat, snat or dsr
    pool: web
  - name: c
    listen: 198.18.1.100:82
    snat_source: 198.18.2.1   # <- services[2].snat_source: only allowed with mode: snat
    pool: web
  - name: d
    listen: 198.18.1.100:83
    mode: snat
    snat_source: 2001:db8::1  # <- services[3].snat_source: "2001:db8::1": not of the VIP's family
    pool: web
  - name: e
    listen: 198.18.1.100:84
    protocol: http
    mode: nat              # <- services[4].mode: only allowed for tcp/udp services
    pool: web
  - name: f
    listen: 198.18.1.100:85
    mode: snat
    snat_source: 198.18.2.1
    pool: web
  - name: g
    listen: "[2001:2:0:1::100]:86"
    mode: dsr              # <- services[6].mode: dsr is IPv4 only
    pool: web
`},
		{"pool references", `
interfaces: [eth0]
pools:
  - name: web
    backends:
      - address: 198.18.2.11:80
  - name: empty
    backends: []           # <- pools[1].backends: pool "empty" has no backends
  - name: none             # <- pools[2].backends: pool "none" has no backends
services:
  - name: a
    listen: 198.18.1.100:80
    pool: webx             # <- services[0].pool: pool "webx" is not defined
  - name: b                # <- services[1].pool: pool is required
    listen: 198.18.1.100:81
`},
		{"backends", `
interfaces: [eth0]
pools:
  - name: web
    backends:
      - name: backend.lab  # <- pools[0].backends[0]: set either name or address, not both
        address: 198.18.2.11:80
      - weight: 2          # <- pools[0].backends[1]: a backend needs a name (with port) or an address
      - name: backend.lab  # <- pools[0].backends[2].port: a backend name needs a port
      - name: -bad.lab     # <- pools[0].backends[3].name: "-bad.lab" is not a valid DNS name
        port: 80
      - name: 198.18.2.11  # <- pools[0].backends[4].name: "198.18.2.11" is an IP address, not a name: use address: 198.18.2.11:80
        port: 80
      - name: a..lab       # <- empty label
        port: 80
      - address: "[fe80::2%eth0]:80"   # <- a zone (%eth0) is not allowed in a backend address
      - address: 198.18.2.12:0        # <- pools[0].backends[7].address: "198.18.2.12:0": port must not be 0
      - address: 198.18.2.13          # <- "198.18.2.13" has no port: use address: 198.18.2.13:PORT
      - address: 198.18.2.14:80
        port: 80           # <- pools[0].backends[9].port: port is not allowed with address
      - address: 198.18.2.14:80       # <- pools[0].backends[10].address: 198.18.2.14:80 is already a backend of this pool (line 19)
      - name: other.lab
        port: 80
      - name: OTHER.lab.   # <- pools[0].backends[12].name: other.lab:80 is already a backend of this pool
        port: 80
      - name: other.lab
        port: 8080
      - address: 198.18.2.15:80
        weight: 0          # <- pools[0].backends[14].weight: 0: must be between 1 and 1000
      - address: 198.18.2.16:80
        weight: 1001       # <- 1001: must be between 1 and 1000
      - address: 198.18.2.17:80
        weight: 1000
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
`},
		{"backend address filter", `
interfaces: [eth0]
metrics: {listen: 198.18.0.1:9464}
pools:
  - name: web
    backends:
      - address: 127.0.0.1:80          # <- pools[0].backends[0].address: 127.0.0.1:80 refused (loopback)
      - address: 169.254.169.254:80    # <- refused (link-local)
      - address: 0.0.0.0:80            # <- refused (unspecified)
      - address: 0.1.2.3:80            # <- refused (this-network)
      - address: 224.0.0.1:80          # <- refused (multicast)
      - address: 255.255.255.255:80    # <- refused (reserved)
      - address: 198.18.1.100:8080     # <- refused (own-address): our own address: listen address of service "a"
      - address: 198.18.0.1:9464       # <- refused (own-address): our own address: the metrics listen address
      - address: 198.18.0.1:80
      - address: 198.18.2.11:80
  - name: local
    addresses:
      allow: [127.0.0.1/32, 198.18.2.0/24, 198.18.3.1]
      deny:
        - 198.18.2.99/32
        - 10.0.0.1/8                   # <- "10.0.0.1/8" has host bits set (did you mean 10.0.0.0/8?)
        - nonsense                     # <- pools[1].addresses.deny[2]: "nonsense" is not a CIDR
    backends:
      - address: 127.0.0.1:80
      - address: 198.18.2.12:80
      - address: 198.18.3.1:80
      - address: 198.18.2.99:80        # <- pools[1].backends[3].address: 198.18.2.99:80 refused (denied): in the pool's deny list
      - address: 198.18.4.1:80         # <- refused (not-allowed)
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
`},
		{"pool timers and ejection", `
interfaces: [eth0]
pools:
  - name: web
    drain_timeout: 0s      # <- pools[0].drain_timeout: must be greater than 0
    backends:
      - address: 198.18.2.11:80
    ejection:
      failures: -1         # <- pools[0].ejection.failures: -1: must be 0 (off) or more
      window: 0s           # <- pools[0].ejection.window: must be greater than 0
      base_time: 1m
      max_time: 30s        # <- pools[0].ejection.max_time: max_time (30s) must not be less than base_time (1m0s)
      max_ejected_percent: 101   # <- 101: must be between 0 and 100
  - name: web2
    backends:
      - address: 198.18.2.11:80
    ejection:
      failures: 0
      base_time: 0s        # <- pools[1].ejection.base_time: must be greater than 0
      max_ejected_percent: 0
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
`},
		{"health checks", `
interfaces: [eth0]
pools:
  - name: a
    backends: [{address: 198.18.2.11:80}]
    health_check: {http: {}, tcp: {}}        # <- pools[0].health_check: set either http or tcp, not both
  - name: b
    backends: [{address: 198.18.2.11:80}]
    health_check: {interval: 5s}             # <- pools[1].health_check: set one of http or tcp
  - name: c
    backends: [{address: 198.18.2.11:80}]
    health_check:
      tcp: {}
      interval: 1s
      timeout: 1s          # <- pools[2].health_check.timeout: timeout (1s) must be less than interval (1s)
      rise: 0              # <- pools[2].health_check.rise: 0: must be at least 1
      fall: -2             # <- pools[2].health_check.fall: -2: must be at least 1
  - name: d
    backends: [{address: 198.18.2.11:80}]
    health_check:
      http:
        path: healthz      # <- pools[3].health_check.http.path: "healthz": must start with '/'
        expect: 2xx        # <- pools[3].health_check.http.expect: "2xx": expected a status
  - name: e
    backends: [{address: 198.18.2.11:80}]
    health_check: {http: {expect: 399-200}}  # <- range is empty
  - name: f
    backends: [{address: 198.18.2.11:80}]
    health_check: {http: {expect: "204", host: web.example}, interval: 500ms, timeout: 200ms}
  - name: g
    backends: [{address: 198.18.2.11:80}]
    health_check: {tcp: }
  - name: h
    backends: [{address: 198.18.2.11:80}]
    health_check: {interval: 0s, tcp: {}}    # <- pools[7].health_check.interval: must be greater than 0
services:
  - name: s
    listen: 198.18.1.100:80
    pool: a
`},
		{"http-only keys on l4 services", `
interfaces: [eth0]
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
    host: keep             # <- services[0].host: only allowed for http services
    timeouts: {connect: 1s}   # <- services[0].timeouts: only allowed for http services
  - name: b
    listen: 198.18.1.100:81
    protocol: udp
    pool: web
    retry: {}              # <- services[1].retry: only allowed for http services
`},
		{"http services", `
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: a
    listen: 198.18.1.100:80
    protocol: http
    pool: web
    host: "bad host"       # <- services[0].host: "bad host": not a valid host name
    timeouts:
      connect: 0s          # <- services[0].timeouts.connect: must be greater than 0
    retry:
      attempts: 0          # <- services[0].retry.attempts: 0: must be between 1 and 10
      on: [connect-failure, bogus, 429, 599]   # <- "bogus": must be connect-failure, reset, timeout, 429 or a status 500-599
      methods: [GET, post] # <- services[0].retry.methods[1]: "post": methods are upper-case tokens
      idempotency_header: "Idem Key"   # <- "Idem Key" is not a valid header name
      budget_percent: 101  # <- services[0].retry.budget_percent: 101: must be between 0 and 100
      backoff: {base: 1s, max: 10ms}   # <- services[0].retry.backoff.max: max (10ms) must not be less than base (1s)
  - name: b
    listen: 198.18.1.100:81
    protocol: http
    pool: web
    host: api.example:8443
    retry: {attempts: 11}  # <- 11: must be between 1 and 10
`},
		{"retry.on status codes", `
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: a
    listen: 198.18.1.100:80
    protocol: http
    pool: web
    retry:
      on:
        - 404              # <- services[0].retry.on[0]: "404": must be
        - 503
        - 503              # <- services[0].retry.on[2]: "503" is listed twice
        - 600              # <- "600": must be
`},
		{"interfaces", `pools:  # <- interfaces: at least one interface is required for tcp/udp services
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
`},
		{"interface names", `
interfaces:
  - eth0
  - eth0                   # <- interfaces[1]: interface "eth0" is listed twice
  - a-very-long-interface-name   # <- is not a valid interface name
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
`},
		{"dns", `
interfaces: [eth0]
dns:
  servers:
    - 198.18.2.53
    - "[2001:db8::53]:5353"
    - dns.example          # <- dns.servers[2]: "dns.example" is not an IP address or ip:port
    - 198.18.2.53:0        # <- port must not be 0
  min_ttl: 10m             # <- dns.min_ttl: min_ttl (10m0s) must not exceed max_ttl (5m0s)
  on_failure: drop         # <- dns.on_failure: "drop": only "keep" is supported
  timeout: 0s              # <- dns.timeout: must be greater than 0
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
`},
		{"datapath", `
interfaces: [eth0]
datapath:
  xdp_mode: turbo          # <- datapath.xdp_mode: "turbo": must be auto, native or generic
  pin_path: sys/fs/bpf     # <- datapath.pin_path: "sys/fs/bpf": must be an absolute path
  maglev_table_size: 16384 # <- datapath.maglev_table_size: 16384: must be a prime between 251 and 65521
  conntrack_max: 1000      # <- datapath.conntrack_max: 1000: must be at least 1024
  conntrack_timeouts:
    tcp_established: 0s    # <- datapath.conntrack_timeouts.tcp_established: must be greater than 0
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
`},
		{"maglev size limits", `
interfaces: [eth0]
datapath:
  maglev_table_size: 65537 # <- must be a prime between 251 and 65521
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
`},
		{"maglev size small prime", `
interfaces: [eth0]
datapath:
  maglev_table_size: 241   # <- must be a prime between 251 and 65521
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
`},
		{"metrics listen", `
interfaces: [eth0]
metrics: {listen: 9464}    # <- metrics.listen: "9464": expected host:port
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
`},
		{"anchors and merge keys", `
interfaces: [eth0]
pools:
  - name: web
    drain_timeout: 5s
    ejection: &ej {failures: 3, window: 20s}
    health_check: &hc
      tcp: {}
      interval: 3s
    backends: [{address: 198.18.2.11:80}]
  - name: api
    ejection: *ej
    health_check:
      <<: *hc
      interval: 4s
      rise: 5
    backends: [{address: 198.18.2.12:80}]
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
`},
		{"extension keys are not allowed", `
interfaces: [eth0]
x-common: &common          # <- x-common: unknown key
  drain_timeout: 5s
pools:
  - name: web
    <<: *common
    backends: [{address: 198.18.2.11:80}]
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
`},
		{"admin and metrics", `
interfaces: [eth0]
admin: {socket: ""}        # <- admin.socket: must not be empty
metrics: {listen: off}
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
    health_check: {tcp: {port: 81}}   # <- pools[0].health_check.tcp.port: unknown key "port" (this section takes no keys)
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
`},
		{"non-scalar key", `
interfaces: [eth0]
? [a, b]                   # <- keys must be plain strings, got a list
: 1
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
`},
		{"syntax error", `
interfaces: [eth0          # <- invalid YAML: did not find expected ',' or ']'
pools:
`},
		{"syntax error in block", `
pools:
  - name: web              # <- invalid YAML: did not find expected key
    backends:
      - address: 198.18.2.11:80
     weight: 2
`},
		{"unknown anchor", `
interfaces: [eth0]
pools:
  - name: web
    backends: *nope        # <- invalid YAML: unknown anchor 'nope' referenced
`},
		{"tab indentation", "interfaces: [eth0]\npools:\n\t- name: web   # <- invalid YAML\n"},
		{"two documents", `
interfaces: [eth0]
---                        # <- only one YAML document is allowed
interfaces: [eth1]
`},
		{"no services", `
interfaces: [eth0]
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services: []               # <- services: no services defined
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.yaml), "test.yaml")
			checkProblems(t, tt.yaml, err)
			if err != nil && cfg != nil {
				t.Errorf("Parse returned a config with an error")
			}
		})
	}
}

func TestParseEmpty(t *testing.T) {
	for _, src := range []string{"", "\n\n", "# only a comment\n", "---\n", "~\n"} {
		_, err := Parse([]byte(src), "empty.yaml")
		var ve *ValidationError
		if !errors.As(err, &ve) {
			t.Fatalf("%q: want *ValidationError, got %v", src, err)
		}
		if got, want := err.Error(), "empty.yaml:1: no services defined"; got != want {
			t.Errorf("%q: error %q, want %q", src, got, want)
		}
	}
}

func TestErrorFormat(t *testing.T) {
	src := `interfaces: [eth0]
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: a
    listen: 198.18.1.100:80
    pool: web
  - name: b
    listen: 198.18.1.100:81
    pool: webx
    bogus: 1
`
	_, err := Parse([]byte(src), "sluice.yaml")
	want := `sluice.yaml:11: services[1].pool: pool "webx" is not defined (did you mean "web"?)
sluice.yaml:12: services[1].bogus: unknown key "bogus" (known keys: name, listen, protocol, mode, snat_source, pool, host, timeouts, retry, tls, h2c, client, upstream, trusted_proxies, upgrades, routes, headers, request_id, access_log)`
	if err == nil || err.Error() != want {
		t.Errorf("error:\n%v\nwant:\n%s", err, want)
	}
	_, err = Parse([]byte(src), "")
	if err == nil || !strings.HasPrefix(err.Error(), "<config>:11: ") {
		t.Errorf("error without a path: %v", err)
	}
}

func TestLoadFull(t *testing.T) {
	cfg, err := Load("testdata/full.yaml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if cfg.Path != "testdata/full.yaml" {
		t.Errorf("Path = %q", cfg.Path)
	}
	if !slices.Equal(cfg.Interfaces, []string{"eth0"}) {
		t.Errorf("Interfaces = %v", cfg.Interfaces)
	}
	if !slices.Equal(cfg.DNS.Servers, []string{"198.18.2.53:53"}) {
		t.Errorf("DNS.Servers = %v", cfg.DNS.Servers)
	}
	web := cfg.Pool("web")
	if web == nil {
		t.Fatal(`Pool("web") = nil`)
	}
	if web != &cfg.Pools[0] {
		t.Error(`Pool("web") does not point into Pools`)
	}
	if cfg.Pool("nope") != nil {
		t.Error(`Pool("nope") != nil`)
	}
	if web.Line != 10 {
		t.Errorf("pool line = %d, want 10", web.Line)
	}
	wantBackends := []Backend{
		{Name: "backend.lab", Port: 80, Weight: 1, Line: 12},
		{Address: "198.18.2.13:80", Weight: 2, AddrPort: netip.MustParseAddrPort("198.18.2.13:80"), Line: 14},
	}
	if !slices.Equal(web.Backends, wantBackends) {
		t.Errorf("backends = %+v, want %+v", web.Backends, wantBackends)
	}
	if !web.Backends[0].IsName() || web.Backends[1].IsName() {
		t.Error("IsName wrong")
	}
	hc := web.HealthCheck
	if hc == nil || hc.HTTP == nil || hc.HTTP.Path != "/healthz" || hc.HTTP.Expect != "200-399" ||
		hc.TCP != nil || hc.Interval.D() != 2*time.Second || hc.Timeout.D() != time.Second || hc.Rise != 2 || hc.Fall != 3 {
		t.Errorf("health check = %+v", hc)
	}
	wantEj := Ejection{Failures: 5, Window: Duration(10 * time.Second), BaseTime: Duration(10 * time.Second),
		MaxTime: Duration(5 * time.Minute), MaxEjectedPercent: 50,
		On: []string{"connect-failure", "reset", "timeout", "502", "503", "504", "grpc-unavailable"}}
	if !reflect.DeepEqual(web.Ejection, wantEj) {
		t.Errorf("ejection = %+v", web.Ejection)
	}

	if len(cfg.Services) != 2 {
		t.Fatalf("%d services", len(cfg.Services))
	}
	l4 := cfg.L4Services()
	if len(l4) != 1 || l4[0].Name != "web-l4" || l4[0].Line != 25 || l4[0].Mode != ModeNAT ||
		l4[0].ListenAddr != netip.MustParseAddrPort("198.18.1.100:80") || l4[0].Timeouts != nil || l4[0].Retry != nil {
		t.Errorf("L4Services = %+v", l4)
	}
	h := cfg.HTTPServices()
	if len(h) != 1 || h[0].Name != "web-http" || h[0].Line != 33 || h[0].Host != HostKeep || h[0].Mode != "" {
		t.Fatalf("HTTPServices = %+v", h)
	}
	r := h[0].Retry
	if r.Attempts != 3 || r.IdempotencyHeader != "Idempotency-Key" || r.NonIdempotent || r.BudgetPercent != 20 ||
		r.Backoff.Base.D() != 25*time.Millisecond || r.Backoff.Max.D() != 250*time.Millisecond || r.BufferBytes != 65536 ||
		!slices.Equal(r.On, []string{"connect-failure", "reset", "timeout", "502", "503", "504"}) ||
		!slices.Equal(r.Methods, []string{"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}) {
		t.Errorf("retry = %+v", r)
	}
	if *h[0].Timeouts != (Timeouts{Connect: Duration(2 * time.Second), Send: Duration(30 * time.Second),
		Read: Duration(60 * time.Second), Total: Duration(90 * time.Second)}) {
		t.Errorf("timeouts = %+v", h[0].Timeouts)
	}
}

func TestDefaults(t *testing.T) {
	src := `interfaces: [eth0]
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
    health_check: {http: {}}
services:
  - name: l4
    listen: 198.18.1.100:80
    pool: web
  - name: h
    listen: 198.18.1.100:8080
    protocol: http
    pool: web
`
	cfg, err := Parse([]byte(src), "d.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := time.Second
	checks := []struct {
		name      string
		got, want any
	}{
		{"admin.socket", cfg.Admin.Socket, "/run/sluice/admin.sock"},
		{"metrics.listen", cfg.Metrics.Listen, "127.0.0.1:9464"},
		{"dns.servers", len(cfg.DNS.Servers), 0},
		{"dns.min_ttl", cfg.DNS.MinTTL.D(), s},
		{"dns.max_ttl", cfg.DNS.MaxTTL.D(), 5 * time.Minute},
		{"dns.on_failure", cfg.DNS.OnFailure, "keep"},
		{"dns.nxdomain_hold", cfg.DNS.NXDomainHold.D(), 30 * s},
		{"dns.timeout", cfg.DNS.Timeout.D(), 2 * s},
		{"datapath.xdp_mode", cfg.Datapath.XDPMode, "auto"},
		{"datapath.pin_path", cfg.Datapath.PinPath, "/sys/fs/bpf/sluice"},
		{"datapath.maglev_table_size", cfg.Datapath.MaglevTableSize, uint32(16381)},
		{"datapath.conntrack_max", cfg.Datapath.ConntrackMax, uint32(262144)},
		{"tcp_syn", cfg.Datapath.Timeouts.TCPSyn.D(), 60 * s},
		{"tcp_established", cfg.Datapath.Timeouts.TCPEstablished.D(), time.Hour},
		{"tcp_closing", cfg.Datapath.Timeouts.TCPClosing.D(), 10 * s},
		{"udp", cfg.Datapath.Timeouts.UDP.D(), 60 * s},
		{"drain_timeout", cfg.Pools[0].DrainTimeout.D(), 30 * s},
		{"weight", cfg.Pools[0].Backends[0].Weight, uint32(1)},
		{"ejection.failures", cfg.Pools[0].Ejection.Failures, 5},
		{"ejection.window", cfg.Pools[0].Ejection.Window.D(), 10 * s},
		{"ejection.base_time", cfg.Pools[0].Ejection.BaseTime.D(), 10 * s},
		{"ejection.max_time", cfg.Pools[0].Ejection.MaxTime.D(), 5 * time.Minute},
		{"ejection.max_ejected_percent", cfg.Pools[0].Ejection.MaxEjectedPercent, 50},
		{"health_check.interval", cfg.Pools[0].HealthCheck.Interval.D(), 2 * s},
		{"health_check.timeout", cfg.Pools[0].HealthCheck.Timeout.D(), s},
		{"health_check.rise", cfg.Pools[0].HealthCheck.Rise, 2},
		{"health_check.fall", cfg.Pools[0].HealthCheck.Fall, 3},
		{"health_check.http.path", cfg.Pools[0].HealthCheck.HTTP.Path, "/"},
		{"health_check.http.expect", cfg.Pools[0].HealthCheck.HTTP.Expect, "200-399"},
		{"l4 protocol", cfg.Services[0].Protocol, "tcp"},
		{"l4 mode", cfg.Services[0].Mode, "nat"},
		{"l4 host", cfg.Services[0].Host, ""},
		{"l4 timeouts", cfg.Services[0].Timeouts == nil, true},
		{"l4 retry", cfg.Services[0].Retry == nil, true},
		{"http host", cfg.Services[1].Host, "keep"},
		{"http mode", cfg.Services[1].Mode, ""},
		{"http timeouts", *cfg.Services[1].Timeouts, Timeouts{Duration(2 * s), Duration(30 * s), Duration(60 * s), Duration(90 * s)}},
		{"retry.attempts", cfg.Services[1].Retry.Attempts, 3},
		{"retry.on", strings.Join(cfg.Services[1].Retry.On, ","), "connect-failure,reset,timeout,502,503,504,grpc-unavailable"},
		{"retry.methods", strings.Join(cfg.Services[1].Retry.Methods, ","), "GET,HEAD,OPTIONS,PUT,DELETE"},
		{"retry.budget_percent", cfg.Services[1].Retry.BudgetPercent, 20},
		{"retry.backoff", cfg.Services[1].Retry.Backoff, Backoff{Duration(25 * time.Millisecond), Duration(250 * time.Millisecond)}},
		{"retry.buffer_bytes", cfg.Services[1].Retry.BufferBytes, int64(65536)},
		{"retry.non_idempotent", cfg.Services[1].Retry.NonIdempotent, false},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

// TestExplicitValuesKept checks that values equal to Go's zero value, or
// partial sections, are not overwritten by defaults.
func TestExplicitValuesKept(t *testing.T) {
	src := `interfaces: [eth0]
dns:
  servers: [198.18.2.53, "198.18.2.54:5353", "2001:db8::53"]
  min_ttl: 0s
  nxdomain_hold: 0s
pools:
  - name: web
    backends: [{address: 198.18.2.11:80, weight: 7}]
    ejection: {failures: 0, max_ejected_percent: 0}
services:
  - name: h
    listen: 198.18.1.100:8080
    protocol: http
    pool: web
    host: api.example
    timeouts: {total: 5s}
    retry:
      attempts: 1
      on: []
      budget_percent: 0
      buffer_bytes: 0
      backoff: {max: 1s}
`
	cfg, err := Parse([]byte(src), "e.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.DNS.Servers; !slices.Equal(got, []string{"198.18.2.53:53", "198.18.2.54:5353", "[2001:db8::53]:53"}) {
		t.Errorf("servers = %v", got)
	}
	if cfg.DNS.MinTTL != 0 || cfg.DNS.NXDomainHold != 0 {
		t.Errorf("dns = %+v", cfg.DNS)
	}
	p := cfg.Pools[0]
	if p.Backends[0].Weight != 7 || p.Ejection.Failures != 0 || p.Ejection.MaxEjectedPercent != 0 || p.Ejection.Window.D() != 10*time.Second {
		t.Errorf("pool = %+v", p)
	}
	s := cfg.Services[0]
	if s.Host != "api.example" || s.Timeouts.Total.D() != 5*time.Second || s.Timeouts.Connect.D() != 2*time.Second {
		t.Errorf("service = %+v, timeouts %+v", s, s.Timeouts)
	}
	r := s.Retry
	if r.Attempts != 1 || len(r.On) != 0 || r.On == nil || r.BudgetPercent != 0 || r.BufferBytes != 0 ||
		r.Backoff.Max.D() != time.Second || r.Backoff.Base.D() != 25*time.Millisecond || len(r.Methods) != 5 {
		t.Errorf("retry = %+v", r)
	}
}

func TestAnchors(t *testing.T) {
	src := `interfaces: [eth0]
pools:
  - name: web
    ejection: &ej {failures: 3, window: 20s}
    health_check: &hc
      tcp: {}
      interval: 3s
    backends: [{address: 198.18.2.11:80}]
  - name: api
    ejection: *ej
    health_check:
      <<: *hc
      interval: 4s
    backends: [{address: 198.18.2.12:80}]
services:
  - name: a
    listen: 198.18.1.100:80
    pool: api
`
	cfg, err := Parse([]byte(src), "a.yaml")
	if err != nil {
		t.Fatal(err)
	}
	api := cfg.Pool("api")
	if api.Ejection.Failures != 3 || api.Ejection.Window.D() != 20*time.Second || api.Ejection.BaseTime.D() != 10*time.Second {
		t.Errorf("ejection via alias = %+v", api.Ejection)
	}
	hc := api.HealthCheck
	if hc.TCP == nil || hc.Interval.D() != 4*time.Second || hc.Timeout.D() != time.Second {
		t.Errorf("health check via merge = %+v", hc)
	}
	if cfg.Pool("web").HealthCheck.Interval.D() != 3*time.Second {
		t.Errorf("anchored health check changed")
	}
}

func TestLoadErrors(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.yaml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	path := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(path, []byte("services: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(path)
	if err == nil || err.Error() != path+`:1: services: expected a list, got "3"` {
		t.Errorf("bad file: %v", err)
	}
}

func TestParseExpect(t *testing.T) {
	tests := []struct {
		in     string
		lo, hi int
		ok     bool
	}{
		{"200", 200, 200, true},
		{"200-399", 200, 399, true},
		{"100-599", 100, 599, true},
		{"399-200", 0, 0, false},
		{"2xx", 0, 0, false},
		{"600", 0, 0, false},
		{"", 0, 0, false},
		{"200-", 0, 0, false},
		{" 200", 0, 0, false},
	}
	for _, tt := range tests {
		lo, hi, err := ParseExpect(tt.in)
		if (err == nil) != tt.ok || lo != tt.lo || hi != tt.hi {
			t.Errorf("ParseExpect(%q) = %d, %d, %v", tt.in, lo, hi, err)
		}
	}
}

func TestCheckDNSName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"backend.lab", true},
		{"backend.lab.", true},
		{"_http._tcp.example.com", true},
		{"a", true},
		{"xn--bcher-kva.example", true},
		{"", false},
		{".", false},
		{"a..b", false},
		{"-a.b", false},
		{"a-.b", false},
		{"a b", false},
		{strings.Repeat("a", 64) + ".b", false},
		{strings.Repeat("a.", 127) + "ab", false},
	}
	for _, tt := range tests {
		if err := checkDNSName(tt.name); (err == nil) != tt.ok {
			t.Errorf("checkDNSName(%q) = %v", tt.name, err)
		}
	}
}

// TestDocsExamples parses every YAML example of docs/config.md, so the
// reference cannot drift from what Parse accepts.
func TestDocsExamples(t *testing.T) {
	data, err := os.ReadFile("../../docs/config.md")
	if errors.Is(err, fs.ErrNotExist) {
		t.Skip("docs/config.md not present")
	}
	if err != nil {
		t.Fatal(err)
	}
	blocks := 0
	for i, part := range strings.Split(string(data), "```yaml\n")[1:] {
		src, _, ok := strings.Cut(part, "```")
		if !ok {
			t.Fatalf("example %d is not closed", i)
		}
		blocks++
		if _, err := Parse([]byte(src), fmt.Sprintf("config.md example %d", i)); err != nil {
			t.Errorf("example %d:\n%v", i, err)
		}
	}
	if blocks < 2 {
		t.Errorf("found %d examples, want at least 2", blocks)
	}
}

// Issue 10 item 10: more services or fixed backends than the data path
// holds are refused by `sluice check`, not discovered at run time.
func TestLimits(t *testing.T) {
	build := func(services, pools, perPool int) string {
		var b strings.Builder
		b.WriteString("interfaces: [eth0]\ndatapath: {maglev_table_size: 65521}\npools:\n")
		for p := range pools {
			fmt.Fprintf(&b, "  - name: p%d\n    backends:\n", p)
			for i := range perPool {
				fmt.Fprintf(&b, "      - address: 10.%d.%d.%d:80\n", p, i/250, 1+i%250)
			}
		}
		b.WriteString("services:\n")
		for s := range services {
			fmt.Fprintf(&b, "  - name: s%d\n    listen: 198.18.%d.%d:80\n    pool: p0\n", s, 1+s/250, 1+s%250)
		}
		return b.String()
	}
	if _, err := Parse([]byte(build(1023, 4, 1023)), "ok.yaml"); err != nil {
		t.Fatalf("at the limits: %v", err)
	}
	_, err := Parse([]byte(build(1100, 5, 1000)), "big.yaml")
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("over the limits: %v", err)
	}
	var msgs []string
	for _, p := range ve.Problems {
		msgs = append(msgs, p.Path+": "+p.Msg)
	}
	want := []string{
		"pools: 5000 fixed backend addresses in all pools: the data path holds at most 4095",
		"services: 1100 tcp/udp services: the data path holds at most 1023",
	}
	slices.Sort(msgs)
	if !slices.Equal(msgs, want) {
		t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(msgs, "\n"), strings.Join(want, "\n"))
	}
}
