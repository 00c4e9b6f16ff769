package config

import (
	"strings"
	"testing"
	"time"
)

const routesHead = `pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
  - name: api
    backends: [{address: 198.18.2.12:80}]
services:
  - name: h
    listen: 198.18.1.101:80
    protocol: http
`

func TestRoutesParse(t *testing.T) {
	src := routesHead + `    pool: web
    timeouts: {read: 7s}
    routes:
      - name: api
        hosts: [api.example.com, "*.api.example.com"]
        path: /v1/
        methods: [GET, POST]
        header: {name: X-Canary, value: "1"}
        pool: api
        host: api.internal
        timeouts: {total: 3s}
        retry: {attempts: 2}
      - name: health
        exact_path: /healthz
        pool: api
`
	cfg, err := Parse([]byte(src), "r.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Services[0]
	if len(s.Routes) != 2 {
		t.Fatalf("routes: %+v", s.Routes)
	}
	r := s.Routes[0]
	if r.Line != 13 || r.Pool != "api" || r.Host != "api.internal" || r.Header == nil || r.Header.Name != "X-Canary" ||
		r.Timeouts.Total.D() != 3*time.Second || r.Timeouts.Read != 0 || r.Retry.Attempts != 2 || len(r.Retry.On) == 0 {
		t.Errorf("route 0: %+v (timeouts %+v retry %+v)", r, r.Timeouts, r.Retry)
	}
	if h := s.Routes[1]; h.ExactPath != "/healthz" || h.Retry != nil || h.Timeouts != nil || h.Host != "" {
		t.Errorf("route 1 takes the service's settings: %+v", h)
	}
	// Routes without the service's own pool.
	if _, err := Parse([]byte(routesHead+"    routes: [{name: a, pool: api}]\n"), "r.yaml"); err != nil {
		t.Error(err)
	}
}

func TestRoutesProblems(t *testing.T) {
	for _, c := range []struct{ name, src, want string }{
		{"no pool no routes", "", "pool is required"},
		{"shadowed", `    pool: web
    routes:
      - name: a
        path: /x
        pool: api
      - name: b
        path: /x
        pool: web
`, "r.yaml:15: services[0].routes[1]: route b (line 15) is shadowed by route a (line 12)"},
		{"catch-all against the service pool", "    pool: web\n    routes: [{name: all, pool: api}]\n",
			"route default (the service's pool web) is shadowed by route all"},
		{"unknown pool", "    routes: [{name: a, pool: nope}]\n", "pool \"nope\" is not defined"},
		{"no name", "    routes: [{pool: api}]\n", "name is required"},
		{"twice", "    routes: [{name: a, pool: api, path: /a}, {name: a, pool: api, path: /b}]\n", "defined twice"},
		{"default name", "    pool: web\n    routes: [{name: default, pool: api, path: /a}]\n", "choose another name"},
		{"bad host", "    routes: [{name: a, pool: api, hosts: [\"a.example:80\"]}]\n", "no port"},
		{"bad path", "    routes: [{name: a, pool: api, path: x}]\n", "must start with /"},
		{"both paths", "    routes: [{name: a, pool: api, path: /x, exact_path: /y}]\n", "not both"},
		{"bad timeout", "    routes: [{name: a, pool: api, timeouts: {read: -1s}}]\n", "timeouts.read"},
		{"bad retry", "    routes: [{name: a, pool: api, retry: {attempts: 99}}]\n", "attempts"},
		{"bad upstream host", "    routes: [{name: a, pool: api, host: \"a b\"}]\n", "routes[0].host"},
		{"unknown key", "    routes: [{name: a, pool: api, paht: /x}]\n", "paht"},
	} {
		_, err := Parse([]byte(routesHead+c.src), "r.yaml")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
	// routes is for http services only.
	src := "interfaces: [eth0]\n" + strings.Replace(routesHead, "protocol: http", "protocol: tcp", 1) + "    pool: web\n    routes: [{name: a, pool: api}]\n"
	if _, err := Parse([]byte(src), "r.yaml"); err == nil || !strings.Contains(err.Error(), "only allowed for http services") {
		t.Errorf("tcp service with routes: %v", err)
	}
}

func TestSNICertificatesKeys(t *testing.T) {
	c1, k1 := writeCert(t, t.TempDir())
	c2, k2 := writeCert(t, t.TempDir())
	c3, k3 := writeCert(t, t.TempDir())
	src := httpHead + "    tls:\n      cert: " + c1 + "\n      key: " + k1 + "\n      certificates:\n        - {cert: " + c2 + ", key: " + k2 + "}\n"
	cfg, err := Parse([]byte(src), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if f := cfg.Services[0].TLS.Files(); f.Cert != c1 || len(f.SNI) != 1 || f.SNI[0].Cert != c2 || f.SNI[0].Key != k2 {
		t.Errorf("files %+v", f)
	}
	// Two certificates chosen by SNI for the same name.
	_, err = Parse([]byte(src+"        - {cert: "+c3+", key: "+k3+"}\n"), "t.yaml")
	if err == nil || !strings.Contains(err.Error(), "tls.certificates: certificate "+c3+": name sluice.test is covered by another certificate") {
		t.Errorf("duplicate name: %v", err)
	}
	_, err = Parse([]byte(src+"        - {cert: "+c3+"}\n"), "t.yaml")
	if err == nil || !strings.Contains(err.Error(), "certificates[1].key: key (PEM file) is required") {
		t.Errorf("no key: %v", err)
	}
}

func TestUpstreamNames(t *testing.T) {
	src := routesHead + "    pool: web\n    upstream: {tls: true, server_name: api.example, verify_name: backend.internal}\n" +
		"    routes: [{name: a, pool: api, path: /a, server_name: a.internal}]\n"
	cfg, err := Parse([]byte(src), "u.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Services[0]; s.Upstream.VerifyName != "backend.internal" || s.Routes[0].ServerName != "a.internal" {
		t.Errorf("upstream %+v route %+v", s.Upstream, s.Routes[0])
	}
	for _, c := range []struct{ src, want string }{
		{"    pool: web\n    upstream: {verify_name: b.internal}\n", "upstream.verify_name: only allowed with tls: true"},
		{"    pool: web\n    upstream: {tls: true, insecure_skip_verify: true, verify_name: b.internal}\n", "set either verify_name or insecure_skip_verify"},
		{"    pool: web\n    upstream: {tls: true, verify_name: \"b internal\"}\n", "not a DNS name"},
		{"    pool: web\n    routes: [{name: a, pool: api, path: /a, server_name: a.internal}]\n", "routes[0].server_name: only allowed with upstream.tls: true"},
		{"    pool: web\n    upstream: {tls: true}\n    routes: [{name: a, pool: api, path: /a, server_name: \"a/b\"}]\n", "routes[0].server_name: \"a/b\": not a DNS name"},
	} {
		if _, err := Parse([]byte(routesHead+c.src), "u.yaml"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.src, err, c.want)
		}
	}
}

func TestHeaderRulesKeys(t *testing.T) {
	src := routesHead + `    pool: web
    headers:
      response: {remove: [Server]}
    routes:
      - name: app
        path: /app/
        pool: api
        host: app.internal
        headers:
          request:
            set: [{name: X-Client, value: "{client_ip}"}]
            remove: [X-Debug]
          response:
            add: [{name: X-Route, value: "{route}"}]
          rewrite_location: true
`
	cfg, err := Parse([]byte(src), "h.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Services[0]
	if h := s.Headers.L7(); len(h.Response.Remove) != 1 {
		t.Errorf("service headers %+v", h)
	}
	if h := s.Routes[0].Headers.L7(); !h.RewriteLocation || h.Request.Set[0].Value != "{client_ip}" || h.Response.Add[0].Name != "X-Route" {
		t.Errorf("route headers %+v", h)
	}
	for _, c := range []struct{ src, want string }{
		{"    pool: web\n    headers: {request: {set: [{name: Host, value: x}]}}\n", "services[0].headers: request header Host: frames the message or is written by sluice"},
		{"    pool: web\n    routes: [{name: a, pool: api, path: /a, headers: {response: {add: [{name: X-A, value: \"{nope}\"}]}}}]\n", "routes[0].headers: response header X-A: \"{nope}\": unknown variable"},
	} {
		if _, err := Parse([]byte(routesHead+c.src), "h.yaml"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.src, err, c.want)
		}
	}
}

func TestRouteMaxBodyKey(t *testing.T) {
	cfg, err := Parse([]byte(routesHead+"    routes: [{name: a, pool: api, max_body_bytes: 1048576}]\n"), "b.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Services[0].Routes[0].MaxBodyBytes != 1<<20 {
		t.Errorf("max_body_bytes %d", cfg.Services[0].Routes[0].MaxBodyBytes)
	}
	if _, err := Parse([]byte(routesHead+"    routes: [{name: a, pool: api, max_body_bytes: 0}]\n"), "b.yaml"); err == nil || !strings.Contains(err.Error(), "routes[0].max_body_bytes") {
		t.Errorf("max_body_bytes 0: %v", err)
	}
}

// A second http service on the same listener: the refusal points at routes.
func TestSecondSiteHint(t *testing.T) {
	src := routesHead + "    pool: web\n  - name: h2\n    listen: 198.18.1.101:80\n    protocol: http\n    pool: api\n"
	_, err := Parse([]byte(src), "s.yaml")
	if err == nil || !strings.Contains(err.Error(), `is already used by service "h" (several sites on one http listener: make them routes of service "h"`) {
		t.Errorf("%v", err)
	}
}

func TestRequestIDKey(t *testing.T) {
	src := routesHead + `    pool: web
    trusted_proxies: [198.18.5.0/24]
    request_id: {header: X-Correlation-Id, trust_incoming: true}
    headers:
      request:
        set: [{name: X-Correlation-Id, value: "{request_id}"}]
`
	cfg, err := Parse([]byte(src), "i.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if r := cfg.Services[0].RequestID.L7(); !r.TrustIncoming || r.HeaderName() != "X-Correlation-Id" {
		t.Errorf("request_id %+v", r)
	}
	if r := (*RequestID)(nil).L7(); r.TrustIncoming || r.HeaderName() != "X-Request-Id" {
		t.Errorf("no request_id block: %+v", r)
	}
	for _, c := range []struct{ src, want string }{
		{"    pool: web\n    request_id: {trust_incoming: true}\n", "services[0].request_id.trust_incoming: no peer is trusted: list the proxies in front of sluice whose request ids to take in trusted_proxies (any other peer's X-Request-Id is never believed)"},
		{"    pool: web\n    request_id: {header: Content-Length}\n", "services[0].request_id.header: request_id.header: request header Content-Length: frames the message"},
		{"    pool: web\n    request_id: {header: \"a b\"}\n", "not a header name"},
	} {
		if _, err := Parse([]byte(routesHead+c.src), "i.yaml"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.src, err, c.want)
		}
	}
	l4 := "pools: [{name: p, backends: [{address: 198.18.2.11:80}]}]\nservices:\n  - {name: t, listen: 198.18.1.1:80, pool: p, request_id: {header: X-A}}\n"
	if _, err := Parse([]byte(l4), "i.yaml"); err == nil || !strings.Contains(err.Error(), "request_id: only allowed for http services") {
		t.Errorf("tcp service with request_id: %v", err)
	}
}

// A route's max_requests and tunnel_idle_timeout; the limits a route
// cannot have are refused with where to set them and why.
func TestRouteLimitKeys(t *testing.T) {
	cfg, err := Parse([]byte(routesHead+"    routes: [{name: a, pool: api, max_requests: 50, tunnel_idle_timeout: 10m}]\n"), "l.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if r := cfg.Services[0].Routes[0]; r.MaxRequests != 50 || r.TunnelIdleTimeout.D() != 10*time.Minute {
		t.Errorf("route %+v", r)
	}
	for _, c := range []struct{ src, want string }{
		{"    routes: [{name: a, pool: api, max_requests: 0}]\n", "routes[0].max_requests: 0: must be between 1 and"},
		{"    client: {max_requests: 10}\n    routes: [{name: a, pool: api, max_requests: 20}]\n", "routes[0].max_requests: 20 is more than client.max_requests (10): the listener's bound always cuts first"},
		{"    routes: [{name: a, pool: api, tunnel_idle_timeout: 0s}]\n", "routes[0].tunnel_idle_timeout"},
		{"    routes: [{name: a, pool: api, header_timeout: 5s}]\n", `routes[0].header_timeout: unknown key "header_timeout" (client.header_timeout is the service's, for all its routes: a request's header is read before it is routed)`},
		{"    routes: [{name: a, pool: api, h2_max_streams: 5}]\n", `(client.h2_max_streams is the service's, for all its routes: HTTP/2 settings are a connection's`},
		{"    routes: [{name: a, pool: api, client: {}}]\n", `(client is the service's, for all its routes: a route's own limits are max_body_bytes, max_requests and tunnel_idle_timeout`},
		{"    routes: [{name: a, pool: api, upstream: {}}]\n", `(upstream is the service's, for all its routes: backend connections are pooled per service (a route may set server_name))`},
		{"    routes: [{name: a, pool: api, hostz: x}]\n", `unknown key "hostz" (did you mean "host"?)`},
	} {
		if _, err := Parse([]byte(routesHead+c.src), "l.yaml"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v\nwant %q", c.src, err, c.want)
		}
	}
}
