package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// routePools are pools api (be2) and static (be3); pool web is be1.
const routePools = `  - name: api
    backends: [{address: 198.18.2.12:80}]
  - name: static
    backends: [{address: 198.18.2.13:80}]
`

// routesHTTP are web-http's routes: site api.lab to pool api with a fixed
// upstream Host, /static/ of www.lab and *.cdn.lab to pool static;
// everything else to the service's pool web.
const routesHTTP = `    routes:
      - name: api
        hosts: [api.lab]
        pool: api
        host: api.internal
        headers:
          request:
            set: [{name: X-Env, value: "prod {client_ip}"}, {name: X-Request-Id, value: "{request_id}"}]
            remove: [X-Debug]
          response:
            remove: [X-Client-Addr]
            set: [{name: X-Route, value: "{route}"}]
          rewrite_location: true
      - name: static
        hosts: [www.lab, "*.cdn.lab"]
        path: /static/
        pool: static
`

// seenHost is the X-Seen-Host header of a curl result (the Host the
// backend got).
func seenHost(r HTTPResult) string { return header(r, "X-Seen-Host") }

// header is a response header of a curl result ("" when absent).
func header(r HTTPResult, name string) string {
	sc := bufio.NewScanner(strings.NewReader(r.Body))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// TestL7Routes: two sites and two paths on one listener go to their pools
// with their upstream Host; an unknown host goes to the default site; a
// known site without a route for the path gets 404; the access log names
// the route; a reload adding a site (a new pool: the listener is handed to
// a new server) fails no request of a load running through it.
func TestL7Routes(t *testing.T) {
	parallel(t)
	lab, agent := startL7(t, agentConfig{Backends: []string{"be1"}, ExtraPools: routePools, HTTPExtra: routesHTTP})
	for _, c := range []struct {
		host, path    string
		code          int
		backend, seen string
	}{
		{"api.lab", "/v1/users", 200, "be2", "api.internal"},
		{"API.lab:80", "/", 200, "be2", "api.internal"},
		{"www.lab", "/static/app.js", 200, "be3", "www.lab"},
		{"img.cdn.lab", "/static/a.png", 200, "be3", "img.cdn.lab"},
		// A form a backend reads as /static/… matches its route too
		// (the test backend's mux would redirect a //static// path).
		{"www.lab", "/%73tatic/app.js", 200, "be3", "www.lab"},
		{"other.lab", "/static/a.png", 200, "be1", "other.lab"},
		{"www.lab", "/index.html", 404, "", ""},
	} {
		r := lab.curl("GET", strings.TrimSuffix(httpURL, "/")+c.path, "-H", "Host: "+c.host)
		if r.Code != c.code || r.Backend != c.backend || seenHost(r) != c.seen {
			t.Errorf("%s%s: %d from %q with Host %q, want %d from %q with Host %q\n%s", c.host, c.path,
				r.Code, r.Backend, seenHost(r), c.code, c.backend, c.seen, r.Body)
		}
	}
	// The api route's header rules, seen at the backend and the client.
	base := strings.TrimSuffix(httpURL, "/")
	r := lab.curl("GET", base+"/x?echo=X-Env&echo=X-Debug", "-H", "Host: api.lab", "-H", "X-Debug: 1", "-H", "X-Env: dev")
	if !strings.HasPrefix(header(r, "X-Echo-X-Env"), "prod 198.18.") || header(r, "X-Echo-X-Debug") != "-" ||
		header(r, "X-Client-Addr") != "" || header(r, "X-Route") != "api" {
		t.Errorf("header rules: backend saw X-Env %q, X-Debug %q; client got X-Client-Addr %q, X-Route %q\n%s",
			header(r, "X-Echo-X-Env"), header(r, "X-Echo-X-Debug"), header(r, "X-Client-Addr"), header(r, "X-Route"), r.Body)
	}
	r = lab.curl("GET", base+"/redirect?to=http://api.internal/next", "-H", "Host: api.lab")
	if r.Code != 302 || header(r, "Location") != "http://api.lab/next" || header(r, "Refresh") != "3; url=http://api.lab/next" {
		t.Errorf("Location rewriting: %d, Location %q, Refresh %q", r.Code, header(r, "Location"), header(r, "Refresh"))
	}
	// The static route has no rules: the backend's headers pass as they are.
	if r := lab.curl("GET", base+"/static/x", "-H", "Host: www.lab"); header(r, "X-Client-Addr") == "" || header(r, "X-Route") != "" {
		t.Errorf("rules applied outside their route:\n%s", r.Body)
	}

	// The access log names the route and the request id, which the
	// route's rule sent to the backend as X-Request-Id.
	rid := newRID("route")
	r = lab.curl("GET", strings.TrimSuffix(httpURL, "/")+"/x?echo=X-Request-Id&rid="+rid, "-H", "Host: api.lab", "-H", "X-Request-Id: forged")
	reqID := header(r, "X-Echo-X-Request-Id")
	if r.Backend != "be2" || reqID == "" || reqID == "forged" {
		t.Fatalf("api.lab went to %q with X-Request-Id %q", r.Backend, reqID)
	}
	waitFor(t, 5*time.Second, "the access log line naming the route", func() error {
		for _, l := range strings.Split(string(agent.proc.Output()), "\n") {
			if strings.Contains(l, "rid="+rid) {
				if !strings.Contains(l, `"route":"api","request_id":"`+reqID+`"`) {
					return fmt.Errorf("line without route api and request id %s: %s", reqID, l)
				}
				return nil
			}
		}
		return fmt.Errorf("not written yet")
	})
	// sluice status lists the routes with their pools.
	out, err := agent.CLI("status")
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	for _, want := range []string{"web-http  api      host api.lab", "web-http  static   host www.lab,*.cdn.lab path /static/  static", "web-http  default  anything else"} {
		if !strings.Contains(out, want) {
			t.Errorf("status has no %q:\n%s", want, out)
		}
	}

	// Reload adding a site with a new pool, under load.
	fresh := lab.StartLoad("newconn", nil, "--url", httpURL, "--mode", "newconn",
		"--conns", "2", "--interval", "20ms", "--count", "100000", "--duration", "20s", "--timeout", "3s")
	t.Cleanup(func() { fresh.Stop(3 * time.Second) })
	keep := lab.StartLoad("keepalive", nil, "--url", httpURL, "--mode", "keepalive",
		"--conns", "4", "--interval", "20ms", "--count", "100000", "--duration", "20s", "--timeout", "3s")
	t.Cleanup(func() { keep.Stop(3 * time.Second) })
	time.Sleep(time.Second)
	agent.WriteConfig(agentConfig{Backends: []string{"be1"}, HTTP: true,
		ExtraPools: routePools + "  - name: shop\n    backends: [{address: 198.18.2.11:80}]\n",
		HTTPExtra:  routesHTTP + "      - name: shop\n        hosts: [shop.lab]\n        pool: shop\n        host: shop.internal\n"})
	if _, err := agent.CLI("reload"); err != nil {
		t.Fatalf("reload: %v", err)
	}
	waitFor(t, 5*time.Second, "the new site", func() error {
		r := lab.curl("GET", strings.TrimSuffix(httpURL, "/")+"/", "-H", "Host: shop.lab")
		if seenHost(r) != "shop.internal" {
			return fmt.Errorf("shop.lab: %d, Host %q", r.Code, seenHost(r))
		}
		return nil
	})
	time.Sleep(time.Second)
	fresh.Stop(5 * time.Second)
	keep.Stop(5 * time.Second)
	assertNoFailures(t, "new-connection load across a reload adding a site", parseReport(t, fresh.Output()))
	assertNoFailures(t, "keep-alive load across a reload adding a site", parseReport(t, keep.Output()))
}

// tlsGet fetches https://name/ through the TLS listener with SNI name
// (and Host host when set) over HTTP/2, and returns the status, the
// certificate's subject CN and the answering backend.
func tlsGet(lab *Lab, name, host string) (code int, cn, backend string) {
	lab.t.Helper()
	argv := []string{"curl", "-sv", "-k", "--http2", "--max-time", "5", "--resolve", name + ":443:" + httpVIP,
		"-o", "/dev/null", "-w", "__CODE__ %{http_code}\n"}
	if host != "" {
		argv = append(argv, "-H", "Host: "+host)
	}
	out, _ := lab.Run("client", 10*time.Second, append(argv, "https://"+name+"/")...)
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if rest, ok := strings.CutPrefix(line, "__CODE__ "); ok {
			fmt.Sscan(rest, &code)
		}
		if _, rest, ok := strings.Cut(line, "subject: CN="); ok {
			cn = strings.TrimSpace(rest)
		}
		if _, rest, ok := strings.Cut(strings.ToLower(line), "< x-backend: "); ok {
			backend = strings.TrimSpace(rest)
		}
	}
	return code, cn, backend
}

// TestL7SNICertificates: one TLS listener with a default certificate and
// two chosen by SNI; each name gets its certificate and its site, an
// unknown name the default certificate and the default site, and a
// request for another certificate's host on a connection (coalescing)
// gets 421.
func TestL7SNICertificates(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	mk := func(name string) (string, string) { return writeTestCert(t, filepath.Join(dir, name), name) }
	for _, d := range []string{"default.lab", "a.lab", "*.b.lab"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	dc, dk := mk("default.lab")
	ac, ak := mk("a.lab")
	bc, bk := mk("*.b.lab")
	lab := newLab(t)
	lab.StartBackends()
	lab.AddLocalVIP(httpVIP)
	lab.StartAgent(agentConfig{Backends: []string{"be1"}, ExtraPools: routePools, ExtraServices: fmt.Sprintf(`  - name: web-tls
    listen: %s:443
    protocol: http
    pool: web
    tls:
      cert: %s
      key: %s
      certificates:
        - {cert: %s, key: %s}
        - {cert: %s, key: %s}
    routes:
      - name: a
        hosts: [a.lab]
        pool: api
`, httpVIP, dc, dk, ac, ak, bc, bk)})
	waitFor(t, 10*time.Second, "the TLS listener", func() error {
		if code, _, _ := tlsGet(lab, "a.lab", ""); code != 200 {
			return fmt.Errorf("status %d", code)
		}
		return nil
	})
	for _, c := range []struct {
		sni, host string
		code      int
		cn, be    string
	}{
		{"a.lab", "", 200, "a.lab", "be2"},
		{"x.b.lab", "", 200, "*.b.lab", "be1"},
		{"unknown.lab", "", 200, "default.lab", "be1"},
		{"a.lab", "x.b.lab", 421, "a.lab", ""},
		{"x.b.lab", "a.lab", 421, "*.b.lab", ""},
		{"y.b.lab", "x.b.lab", 200, "*.b.lab", "be1"}, // the same certificate: served
	} {
		code, cn, be := tlsGet(lab, c.sni, c.host)
		if code != c.code || cn != c.cn || be != c.be {
			t.Errorf("SNI %s Host %q: %d, certificate %q, backend %q; want %d %q %q", c.sni, c.host, code, cn, be, c.code, c.cn, c.be)
		}
	}
}

// TestL7RouteUpstreamTLS: a route to TLS backends with a fixed upstream
// Host and its own SNI, the certificate verified against
// upstream.verify_name (neither the SNI nor the Host); the default route
// sends no name of its own.
func TestL7RouteUpstreamTLS(t *testing.T) {
	parallel(t)
	cert, key := writeTestCert(t, t.TempDir(), "backend.lab")
	pools := `  - name: tlsdef
    backends: [{address: 198.18.2.11:8443}]
  - name: tlsapi
    backends: [{address: 198.18.2.12:8443}]
`
	svc := fmt.Sprintf(`  - name: tls-routes
    listen: %s:82
    protocol: http
    pool: tlsdef
    upstream: {tls: true, ca: %s, verify_name: backend.lab}
    routes:
      - name: api
        hosts: [api.lab]
        pool: tlsapi
        host: api.internal
        server_name: sni.api.lab
`, httpVIP, cert)
	lab, _ := startL7(t, agentConfig{ExtraPools: pools, ExtraServices: svc})
	for _, be := range []string{"be1", "be2"} {
		startTLSBackend(t, lab, be, cert, key)
	}
	url := "http://" + httpVIP + ":82/x"
	var r HTTPResult
	waitFor(t, 10*time.Second, "the TLS backends", func() error {
		if r = lab.curl("GET", url, "-H", "Host: api.lab"); r.Code != 200 {
			return fmt.Errorf("status %d", r.Code)
		}
		return nil
	})
	if r.Backend != "be2" || seenHost(r) != "api.internal" || header(r, "X-Seen-SNI") != "sni.api.lab" {
		t.Errorf("route api: backend %q Host %q SNI %q, want be2 api.internal sni.api.lab\n%s", r.Backend, seenHost(r), header(r, "X-Seen-SNI"), r.Body)
	}
	r = lab.curl("GET", url, "-H", "Host: www.lab")
	if r.Code != 200 || r.Backend != "be1" || seenHost(r) != "www.lab" || header(r, "X-Seen-SNI") != "" {
		t.Errorf("default route: %d backend %q Host %q SNI %q, want 200 be1 www.lab and no SNI (an address is not sent as SNI)\n%s",
			r.Code, r.Backend, seenHost(r), header(r, "X-Seen-SNI"), r.Body)
	}
}
