package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeCert writes a self-signed certificate and its key as PEM files.
func writeCert(t *testing.T, dir string) (cert, key string) {
	t.Helper()
	certPEM, keyPEM := selfSigned(t)
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

const httpHead = `pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: h
    listen: 198.18.1.101:443
    protocol: http
    pool: web
`

func TestHTTPListenerAndUpstreamKeys(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCert(t, dir)
	logFile := filepath.Join(dir, "access.log")
	src := httpHead + `    tls: {cert: ` + cert + `, key: ` + key + `}
    client: {header_timeout: 5s, idle_timeout: 2m, max_header_bytes: 32768}
    upstream: {tls: true, ca: ` + cert + `, max_idle: 8, idle_timeout: 10s, max_lifetime: 1m, max_header_bytes: 16384, max_header_count: 50}
    access_log: ` + logFile + `
`
	cfg, err := Parse([]byte(src), "h.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Services[0]
	if s.TLS == nil || s.TLS.Cert != cert || s.TLS.Key != key {
		t.Errorf("tls = %+v", s.TLS)
	}
	if want := (ClientLimits{HeaderTimeout: Duration(5 * time.Second), IdleTimeout: Duration(2 * time.Minute), MaxHeaderBytes: 32768, TunnelIdleTimeout: Duration(time.Minute), MaxConnections: 10000, MaxRequests: 1000, MaxConnectionsPerIP: 1000, MaxRequestsPerIP: 100, MaxBodyBytes: 64 << 20, BodyTimeout: Duration(30 * time.Second), BodyMinRate: 500, MaxHeaderCount: 100, H2MaxStreams: 100, H2StreamWindow: 65536, H2ConnWindow: 1 << 20, H2MaxResetStreams: 200, UnderscoreHeaders: "drop"}); *s.Client != want {
		t.Errorf("client = %+v, want %+v", *s.Client, want)
	}
	if want := (Upstream{TLS: true, CA: cert, MaxIdle: 8, IdleTimeout: Duration(10 * time.Second), MaxLifetime: Duration(time.Minute), MaxConnections: 1024, Protocol: "http1", MaxHeaderBytes: 16384, MaxHeaderCount: 50}); *s.Upstream != want {
		t.Errorf("upstream = %+v, want %+v", *s.Upstream, want)
	}
	if s.AccessLog != logFile {
		t.Errorf("access_log = %q, want %q", s.AccessLog, logFile)
	}
	if _, err := os.Stat(logFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("validation created or touched the access log: %v", err)
	}
}

func TestHTTPKeyDefaults(t *testing.T) {
	cfg, err := Parse([]byte(httpHead+"    h2c: true\n    client: {idle_timeout: 5s}\n    upstream: {max_idle: 2}\n"), "d.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Services[0]
	if s.TLS != nil || !s.H2C || s.AccessLog != AccessLogStdout {
		t.Errorf("tls %v h2c %v access_log %q", s.TLS, s.H2C, s.AccessLog)
	}
	if want := (ClientLimits{HeaderTimeout: Duration(10 * time.Second), IdleTimeout: Duration(5 * time.Second), MaxHeaderBytes: 65536, TunnelIdleTimeout: Duration(time.Minute), MaxConnections: 10000, MaxRequests: 1000, MaxConnectionsPerIP: 1000, MaxRequestsPerIP: 100, MaxBodyBytes: 64 << 20, BodyTimeout: Duration(30 * time.Second), BodyMinRate: 500, MaxHeaderCount: 100, H2MaxStreams: 100, H2StreamWindow: 65536, H2ConnWindow: 1 << 20, H2MaxResetStreams: 200, UnderscoreHeaders: "drop"}); *s.Client != want {
		t.Errorf("client = %+v, want %+v", *s.Client, want)
	}
	if want := (Upstream{MaxIdle: 2, IdleTimeout: Duration(30 * time.Second), MaxLifetime: Duration(5 * time.Minute), MaxConnections: 1024, Protocol: "http1", MaxHeaderBytes: 65536, MaxHeaderCount: 100}); *s.Upstream != want {
		t.Errorf("upstream = %+v, want %+v", *s.Upstream, want)
	}
	// A tcp service gets none of them.
	cfg, err = Parse([]byte("interfaces: [eth0]\n"+strings.Replace(httpHead, "protocol: http", "protocol: tcp", 1)), "d.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Services[0]; s.Client != nil || s.Upstream != nil || s.AccessLog != "" {
		t.Errorf("tcp service: client %v upstream %v access_log %q", s.Client, s.Upstream, s.AccessLog)
	}
}

func TestHTTPKeyProblems(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCert(t, dir)
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, extra string
		want        []string // substrings of the error, each with its line
	}{
		{"missing cert file", "    tls: {cert: " + dir + "/nope.pem, key: " + key + "}\n",
			[]string{"h.yaml:9: services[0].tls: certificate"}},
		{"key without cert", "    tls: {key: " + key + "}\n",
			[]string{"h.yaml:9: services[0].tls.cert: cert (PEM file) is required"}},
		{"cert is not a key", "    tls: {cert: " + cert + ", key: " + cert + "}\n",
			[]string{"services[0].tls: certificate"}},
		{"h2c with tls", "    tls: {cert: " + cert + ", key: " + key + "}\n    h2c: true\n",
			[]string{"h.yaml:10: services[0].h2c: only for plain-text listeners"}},
		{"zero client timeouts", "    client:\n      header_timeout: 0s\n      idle_timeout: 0s\n      max_header_bytes: 10\n",
			[]string{"h.yaml:10: services[0].client.header_timeout: must be greater than 0",
				"h.yaml:11: services[0].client.idle_timeout: must be greater than 0",
				"h.yaml:12: services[0].client.max_header_bytes: 10: must be between 1024"}},
		{"h2 reset bound", "    client:\n      h2_max_reset_streams: 0\n",
			[]string{"h.yaml:10: services[0].client.h2_max_reset_streams: 0: must be between 1 and 1000000"}},
		{"ca without tls", "    upstream: {ca: " + cert + "}\n",
			[]string{"h.yaml:9: services[0].upstream.ca: only allowed with tls: true"}},
		{"ca not PEM", "    upstream: {tls: true, ca: " + notPEM + "}\n",
			[]string{"services[0].upstream.ca: " + notPEM + ": no PEM certificate found"}},
		{"ca missing", "    upstream: {tls: true, ca: " + dir + "/missing.pem}\n",
			[]string{"services[0].upstream.ca: read CA file:"}},
		{"ca and insecure", "    upstream: {tls: true, ca: " + cert + ", insecure_skip_verify: true}\n",
			[]string{"services[0].upstream.insecure_skip_verify: set either ca or insecure_skip_verify"}},
		{"upstream bounds", "    upstream:\n      max_idle: 0\n      idle_timeout: 0s\n      max_lifetime: 0s\n      max_header_bytes: 1000\n      max_header_count: 0\n",
			[]string{"h.yaml:10: services[0].upstream.max_idle: 0: must be between 1 and 10000",
				"h.yaml:11: services[0].upstream.idle_timeout: must be greater than 0",
				"h.yaml:12: services[0].upstream.max_lifetime: must be greater than 0",
				"h.yaml:13: services[0].upstream.max_header_bytes: 1000: must be between 1024 and 16777216",
				"h.yaml:14: services[0].upstream.max_header_count: 0: must be between 1 and 10000"}},
		{"access log dir missing", "    access_log: " + dir + "/no/such/dir/access.log\n",
			[]string{"h.yaml:9: services[0].access_log: ", "does not exist"}},
		{"access log is a dir", "    access_log: " + dir + "\n",
			[]string{"h.yaml:9: services[0].access_log: ", "is a directory"}},
		{"h2 without tls", "    upstream: {protocol: h2}\n",
			[]string{"h.yaml:9: services[0].upstream.protocol: h2 is HTTP/2 over TLS: set tls: true"}},
		{"h2c with tls", "    upstream: {tls: true, protocol: h2c}\n",
			[]string{"h.yaml:9: services[0].upstream.protocol: h2c is HTTP/2 in clear text"}},
		{"unknown protocol", "    upstream: {protocol: http2}\n",
			[]string{"h.yaml:9: services[0].upstream.protocol: \"http2\": must be http1, h2c or h2"}},
		{"max_streams with http1", "    upstream: {max_streams: 10}\n",
			[]string{"h.yaml:9: services[0].upstream.max_streams: only allowed with protocol: h2c or h2"}},
		{"underscore_headers", "    client: {underscore_headers: ignore}\n",
			[]string{"h.yaml:9: services[0].client.underscore_headers: \"ignore\": must be drop, reject or allow"}},
		{"max_streams bound", "    upstream: {protocol: h2c, max_streams: 0}\n",
			[]string{"h.yaml:9: services[0].upstream.max_streams: 0: must be between 1 and 10000"}},
		{"upgrades over h2", "    upgrades: [websocket]\n    upstream: {protocol: h2c}\n",
			[]string{"h.yaml:9: services[0].upgrades: a protocol upgrade (WebSocket) is not carried over HTTP/2"}},
		{"unknown upstream key", "    upstream: {max_idel: 3}\n",
			[]string{"h.yaml:9: services[0].upstream.max_idel: unknown key"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(httpHead+tc.extra), "h.yaml")
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
	t.Run("only for http", func(t *testing.T) {
		src := "interfaces: [eth0]\n" + strings.Replace(httpHead, "protocol: http", "protocol: tcp", 1) +
			"    h2c: true\n    access_log: off\n    client: {idle_timeout: 1s}\n"
		_, err := Parse([]byte(src), "h.yaml")
		if err == nil {
			t.Fatal("no error")
		}
		for _, k := range []string{"h2c", "access_log", "client"} {
			if !strings.Contains(err.Error(), "services[0]."+k+": only allowed for http services") {
				t.Errorf("no problem for %s:\n%v", k, err)
			}
		}
	})
}

func TestUpstreamProtocolDefaults(t *testing.T) {
	cfg, err := Parse([]byte(httpHead+"    upstream: {protocol: h2c}\n"), "d.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if u := cfg.Services[0].Upstream; u.Protocol != UpstreamH2C || u.MaxStreams != 100 {
		t.Errorf("upstream = %+v", u)
	}
}

// The per-address limits follow the listener's: a tenth, with floors, and
// never above the limit itself; set above it, they are refused.
func TestClientPerIPLimits(t *testing.T) {
	cases := []struct {
		client         string
		conns, reqs    int
		wantErrContain string
	}{
		{"{}", 1000, 100, ""},
		{"{max_connections: 60, max_requests: 20}", 60, 20, ""},
		{"{max_connections: 50000, max_requests: 5000}", 5000, 500, ""},
		{"{max_connections_per_ip: 8, max_requests_per_ip: 4}", 8, 4, ""},
		{"{max_connections: 60, max_connections_per_ip: 61}", 0, 0, "max_connections_per_ip"},
		{"{max_requests_per_ip: 0}", 0, 0, "max_requests_per_ip"},
	}
	for _, c := range cases {
		cfg, err := Parse([]byte(httpHead+"    client: "+c.client+"\n"), "p.yaml")
		if c.wantErrContain != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErrContain) {
				t.Errorf("%s: err %v, want one naming %s", c.client, err, c.wantErrContain)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.client, err)
			continue
		}
		if cl := cfg.Services[0].Client; cl.MaxConnectionsPerIP != c.conns || cl.MaxRequestsPerIP != c.reqs {
			t.Errorf("%s: per ip %d connections, %d requests; want %d, %d", c.client, cl.MaxConnectionsPerIP, cl.MaxRequestsPerIP, c.conns, c.reqs)
		}
	}
}
