package config

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/internal/testcert"
)

// warnMarker marks a line that must carry a warning (the config is
// accepted): the text after it must occur in the warning's "path: message".
const warnMarker = "# <~"

// checkWarnings asserts that cfg holds exactly the warnings marked in src.
func checkWarnings(t *testing.T, src string, cfg *Config) {
	t.Helper()
	if !matchProblems(t, markers(src, warnMarker), cfg.Warnings, "warning") {
		t.Logf("all warnings:\n%s", strings.Join(cfg.WarningLines(), "\n"))
	}
}

// Issue 16: every refusal says what to write instead; risky defaults are
// warnings. Each case is YAML with the expected errors (# <-) or, for a
// config that is accepted, the expected warnings (# <~) on their lines.
func TestCheckTeaches(t *testing.T) {
	tests := []struct {
		name string
		yaml string
	}{
		{"name with a port", `
pools:
  - name: web
    backends:
      - name: internal-api.example:8080  # <- pools[0].backends[0].name: "internal-api.example:8080" has a port in it, which goes in port: use name: internal-api.example with port: 8080
      - name: 198.18.2.11:8080           # <- pools[0].backends[1].name: "198.18.2.11:8080" is an ip:port, not a name: use address: 198.18.2.11:8080
      - name: https://api.example/v1     # <- pools[0].backends[2].name: "https://api.example/v1" is a URL: use name: api.example with port: 443
      - name: 198.18.2.12                # <- "198.18.2.12" is an IP address, not a name: use address: 198.18.2.12:PORT
services:
  - name: s
    listen: 0.0.0.0:80
    protocol: http
    pool: web
`},
		{"address that is a name", `
pools:
  - name: web
    backends:
      - address: internal-api.example:443   # <- pools[0].backends[0].address: "internal-api.example:443" is a name, not an ip:port: use name: internal-api.example with port: 443
      - address: internal-api.example       # <- "internal-api.example" is a name, not an ip:port: use name: internal-api.example with port: PORT
      - address: db.example                 # <- use name: db.example with port: 5432
        port: 5432
      - address: 198.18.2.11                # <- "198.18.2.11" has no port: use address: 198.18.2.11:8080
        port: 8080
      - address: http://198.18.2.12:8080/   # <- is a URL: use address: 198.18.2.12:8080
      - address: "%%%"                      # <- "%%%" is not an ip:port (write address: 198.18.2.11:8080, or name: and port: for a DNS name)
services:
  - name: s
    listen: 0.0.0.0:80
    protocol: http
    pool: web
`},
		{"listen hints", `
interfaces: [eth0]
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: a
    listen: ":443"             # <- services[0].listen: ":443" is not an ip:port: write 0.0.0.0:443 (every IPv4 address) or [::]:443 (every IPv6 address)
    protocol: http
    pool: web
  - name: b
    listen: "8080"             # <- write 0.0.0.0:8080
    protocol: http
    pool: web
  - name: c
    listen: localhost:81       # <- listen takes an address, not a name: write 127.0.0.1:81
    protocol: http
    pool: web
  - name: d
    listen: ":5432"            # <- a tcp/udp service needs its VIP: write the address clients connect to, e.g. 198.18.1.100:5432
    pool: web
  - name: e
    listen: 0.0.0.0:5433       # <- a tcp/udp VIP must be a unicast address: write the address clients connect to
    pool: web
  - name: f
    listen: 198.18.1.100       # <- it has no port: write 198.18.1.100:PORT
    protocol: http
    pool: web
  - name: g
    listen: 198.18.1.100:82
    protocol: http
    pool: wbe                  # <- pool "wbe" is not defined (did you mean "web"?)
`},
		{"impossible timeouts", `
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: a
    listen: 0.0.0.0:80
    protocol: http
    pool: web
    timeouts:
      connect: 30s      # <- services[0].timeouts.connect: connect (30s) is longer than total (10s), which bounds the whole exchange and would always cut first: raise total to at least 30s or lower connect
      total: 10s
  - name: b
    listen: 0.0.0.0:81
    protocol: http
    pool: web
    timeouts:
      read: 300s        # <- services[1].timeouts.read: read (5m0s) is longer than total (1m30s)
  - name: c
    listen: 0.0.0.0:82
    protocol: http
    pool: web
    timeouts: {total: 5s}
    retry:
      on:
        - 5xx        # <- "5xx": must be connect-failure, reset, timeout, 429 or a status 500-599 (list statuses one by one, e.g. [502, 503, 504])
        - http_503   # <- (write the status alone: 503)
        - 502
`},
		{"ejection.on", `
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
    ejection:
      on:
        - connect-failure
        - 5xx              # <- pools[0].ejection.on[1]: "5xx": must be connect-failure, reset, timeout, 429 or a status 500-599 (list statuses one by one
        - 404              # <- "404": must be
        - connect-failure  # <- "connect-failure" is listed twice
  - name: none
    backends: [{address: 198.18.2.12:80}]
    ejection: {on: []}     # <- pools[1].ejection.on: an empty list would eject for nothing: to switch passive ejection off write failures: 0
  - name: alb
    backends: [{address: 198.18.2.13:80}]
    ejection: {on: [connect-failure, reset, timeout, "500"]}
services:
  - name: s
    listen: 0.0.0.0:80
    protocol: http
    pool: web
`},
		{"https health checks", `
pools:
  - name: fixed
    backends: [{address: 198.18.2.11:443}]
    health_check:
      http:
        tls: true          # <- pools[0].health_check.http.tls: an HTTPS check of fixed addresses (or of several names) needs the name the backends' certificates carry: set server_name: NAME
  - name: plain
    backends: [{address: 198.18.2.12:80}]
    health_check:
      http:
        server_name: a.example     # <- pools[1].health_check.http.server_name: only allowed with tls: true (add tls: true to check over HTTPS)
  - name: named
    backends: [{name: api.example, port: 443}]
    health_check: {http: {tls: true}}
  - name: bad
    backends: [{address: 198.18.2.13:443}]
    health_check:
      http:
        tls: true
        server_name: "bad name"    # <- pools[3].health_check.http.server_name: "bad name" is not a DNS name
services:
  - name: s
    listen: 0.0.0.0:80
    protocol: http
    pool: named
`},
		{"https health check warnings", `
pools:
  - name: tlsonly
    backends: [{address: 198.18.2.11:443}]
    health_check:
      http: {path: /healthz}     # <~ pools[0].health_check.http: pool "tlsonly" is reached over TLS (upstream.tls of its services) but checked in plain HTTP
  - name: unverified
    backends: [{address: 198.18.2.12:443}]
    health_check:
      http:
        tls: true
        insecure_skip_verify: true   # <~ pools[1].health_check.http.insecure_skip_verify: health check certificates are not verified
  - name: ok
    backends: [{address: 198.18.2.13:443}]
    health_check:
      http: {tls: true, verify_name: api.example}
services:
  - name: a
    listen: 0.0.0.0:80
    protocol: http
    pool: tlsonly
    upstream: {tls: true, server_name: api.example}
  - name: b
    listen: 0.0.0.0:81
    protocol: http
    pool: unverified
    upstream: {tls: true, server_name: api.example}
  - name: c
    listen: 0.0.0.0:82
    protocol: http
    pool: ok
    upstream: {tls: true, server_name: api.example}
`},
		{"dsr without a health check warned", `
interfaces: [eth0]
datapath:
  conntrack_timeouts: {tcp_established: 24h}
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
  - name: checked
    backends: [{address: 198.18.2.12:80}]
    health_check: {tcp: {}}
services:
  - name: a
    listen: 198.18.1.100:80
    mode: dsr                # <~ services[0].mode: service "a" is dsr and its pool "web" has no health_check
    pool: web
  - name: b
    listen: 198.18.1.101:80
    mode: dsr
    pool: checked
`},
		{"conntrack default warned", `
interfaces: [eth0]
pools:
  - name: db
    backends: [{address: 198.18.2.11:5432}]
services:
  - name: pg               # <~ services[0]: service "pg": a TCP connection idle longer than 1h0m0s (datapath.conntrack_timeouts.tcp_established, the default) is forgotten
    listen: 198.18.1.100:5432
    pool: db
  - name: pg2
    listen: 198.18.1.100:5433
    pool: db
`},
		{"conntrack set: no warning", `
interfaces: [eth0]
datapath:
  conntrack_timeouts: {tcp_established: 24h}
pools:
  - name: db
    backends: [{address: 198.18.2.11:5432}]
services:
  - name: pg
    listen: 198.18.1.100:5432
    pool: db
  - name: dns
    listen: 198.18.1.100:53
    protocol: udp
    pool: db
`},
		{"upstream tls warnings", `
pools:
  - name: alb
    backends: [{name: internal-alb.example, port: 443}]
  - name: fixed
    backends: [{address: 198.18.2.11:443}]
services:
  - name: a                # <~ services[0]: host: keep with upstream.tls and DNS backends (pool "alb", internal-alb.example)
    listen: 0.0.0.0:80
    protocol: http
    pool: alb
    upstream: {tls: true}
  - name: b
    listen: 0.0.0.0:81
    protocol: http
    pool: alb
    host: keep             # <~ services[1].host: host: keep with upstream.tls
    upstream:
      tls: true
      insecure_skip_verify: true   # <~ services[1].upstream.insecure_skip_verify: backend certificates are not verified
  - name: c
    listen: 0.0.0.0:82
    protocol: http
    pool: alb
    host: app.example
    upstream: {tls: true}
  - name: d
    listen: 0.0.0.0:83
    protocol: http
    pool: alb
    upstream: {tls: true, server_name: app.example}
  - name: e
    listen: 0.0.0.0:84
    protocol: http
    pool: fixed
    upstream: {tls: true}
`},
		{"https check hint from the routes' server name", `
pools:
  - name: api
    backends: [{address: 198.18.2.11:443}]
    health_check:
      http:
        tls: true          # <- pools[0].health_check.http.tls: an HTTPS check of fixed addresses (or of several names) needs the name the backends' certificates carry: set server_name: api.internal (the server name its traffic uses)
services:
  - name: front
    listen: 0.0.0.0:443
    protocol: http
    upstream: {tls: true}
    routes:
      - {name: a, hosts: [a.example], pool: api, host: api.internal}
      - {name: b, hosts: [b.example], pool: api, server_name: api.internal}
`},
		{"pool warnings walk routes", `
pools:
  - name: alb                # a route's pool only: used
    backends: [{name: internal-alb.example, port: 443}]
    health_check:
      http: {path: /healthz}     # <~ pools[0].health_check.http: pool "alb" is reached over TLS (upstream.tls of its services) but checked in plain HTTP
  - name: www
    backends: [{address: 198.18.2.11:443}]
  - name: spare              # <~ pools[2]: pool "spare" is used by no service and no route
    backends: [{address: 198.18.2.12:443}]
  - name: api
    backends: [{name: api.example, port: 443}]
  - name: mixed              # reached over TLS by a route and in clear by another service
    backends: [{address: 198.18.2.13:80}]
    health_check:
      http: {path: /healthz}
services:
  - name: front
    listen: 0.0.0.0:443
    protocol: http
    pool: www                # fixed addresses: no warning
    upstream: {tls: true}
    routes:
      - name: app          # <~ services[0].routes[0]: route "app": host: keep with upstream.tls and DNS backends (pool "alb", internal-alb.example)
        hosts: [app.example]
        pool: alb
      - name: api
        hosts: [api.example]
        pool: api
        host: keep         # <~ services[0].routes[1].host: route "api": host: keep with upstream.tls and DNS backends (pool "api", api.example)
      - name: api3
        hosts: [api3.example]
        pool: api
        server_name: api.example   # stated: no warning
      - name: api2
        hosts: [api2.example]
        pool: api
        host: api.example  # a name: no warning
      - name: m
        hosts: [m.example]
        pool: mixed
  - name: plain
    listen: 0.0.0.0:80
    protocol: http
    pool: mixed
`},
		{"routes without their own server name take the service's", `
pools:
  - name: alb
    backends: [{name: internal-alb.example, port: 443}]
services:
  - name: front
    listen: 0.0.0.0:443
    protocol: http
    routes: [{name: app, pool: alb}]
    upstream: {tls: true, server_name: app.example}
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.yaml), "test.yaml")
			checkProblems(t, tt.yaml, err)
			var ve *ValidationError
			if err != nil && !errors.As(err, &ve) {
				t.Fatalf("want *ValidationError, got %v", err)
			}
			if cfg != nil {
				checkWarnings(t, tt.yaml, cfg)
			} else if strings.Contains(tt.yaml, warnMarker) {
				t.Errorf("config refused, cannot check its warnings")
			}
		})
	}
}

func TestWarningLines(t *testing.T) {
	cfg := &Config{Path: "s.yaml", Warnings: []Problem{{Line: 7, Path: "services[0]", Msg: "careful"}, {Line: 1, Msg: "whole file"}}}
	got := strings.Join(cfg.WarningLines(), "\n")
	want := "s.yaml:7: services[0]: warning: careful\ns.yaml:1: warning: whole file"
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

// The SNI of an HTTPS check defaults to the host key (without its port),
// else to the pool's one DNS name.
func TestHealthSNIDefault(t *testing.T) {
	src := `
pools:
  - name: named
    backends: [{name: API.example., port: 443}, {name: api.example, port: 8443}]
    health_check: {http: {tls: true}}
  - name: hosted
    backends: [{address: 198.18.2.11:443}]
    health_check: {http: {tls: true, host: "www.example:8443"}}
  - name: explicit
    backends: [{name: api.example, port: 443}]
    health_check: {http: {tls: true, server_name: other.example, host: www.example}}
services:
  - name: s
    listen: 0.0.0.0:80
    protocol: http
    pool: named
`
	cfg, err := Parse([]byte(src), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"api.example", "www.example", "other.example"} {
		if got := cfg.Pools[i].HealthCheck.HTTP.ServerName; got != want {
			t.Errorf("pool %s: server_name %q, want %q", cfg.Pools[i].Name, got, want)
		}
	}
}

// Issue 16: every yaml block of docs/migration.md is a config sluice
// accepts without a warning. The certificate, key and CA files the examples
// name under /etc/sluice/ are made up in a temporary directory.
func TestMigrationExamples(t *testing.T) {
	data, err := os.ReadFile("../../docs/migration.md")
	if errors.Is(err, fs.ErrNotExist) {
		t.Skip("docs/migration.md not present")
	}
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPEM, keyPEM := selfSigned(t)
	fileRE := regexp.MustCompile(`\b(cert|key|ca): (/etc/sluice/[^\s,}]+)`)
	blocks := 0
	for i, part := range strings.Split(string(data), "```yaml\n")[1:] {
		src, _, ok := strings.Cut(part, "```")
		if !ok {
			t.Fatalf("example %d is not closed", i)
		}
		blocks++
		for _, m := range fileRE.FindAllStringSubmatch(src, -1) {
			f := filepath.Join(dir, strings.TrimPrefix(m[2], "/etc/sluice/"))
			if err := os.MkdirAll(filepath.Dir(f), 0o700); err != nil {
				t.Fatal(err)
			}
			content := certPEM
			if m[1] == "key" {
				content = keyPEM
			}
			if err := os.WriteFile(f, content, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		src = strings.ReplaceAll(src, "/etc/sluice/", dir+"/")
		cfg, err := Parse([]byte(src), fmt.Sprintf("migration.md example %d", i))
		if err != nil {
			t.Errorf("example %d:\n%v", i, err)
			continue
		}
		if len(cfg.Warnings) > 0 {
			t.Errorf("example %d has warnings:\n%s", i, strings.Join(cfg.WarningLines(), "\n"))
		}
	}
	if blocks < 3 {
		t.Errorf("found %d examples, want at least 3", blocks)
	}
}

// selfSigned returns a self-signed certificate and its key, PEM encoded.
func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	der, key := testcert.New(t, testcert.Options{Names: []string{"sluice.test"}, CA: true})
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}
