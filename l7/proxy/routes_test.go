package proxy

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicelb/sluice/l7/route"
	"github.com/sluicelb/sluice/l7/service"
	"github.com/sluicelb/sluice/userspace/pool"
)

// Two sites and two paths on one listener: each request goes to its
// route's pool with its route's Host, the access log names the route, an
// unknown host goes to the service's own pool, a known host with no route
// for its path gets 404, and a dot segment is refused.
func TestRoutes(t *testing.T) {
	answer := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Backend", name)
			w.Header().Set("X-Seen-Host", r.Host)
		}
	}
	web := newBackend(t, answer("web"))
	api := newBackend(t, answer("api"))
	static := newBackend(t, answer("static"))
	pWeb, pAPI, pStatic := newPool(t, nil, web.addr), newPool(t, nil, api.addr), newPool(t, nil, static.addr)
	h := start(t, pWeb, func(o *Options) {
		o.Service.Routes = []service.Route{
			{Match: route.Spec{Name: "api", Hosts: []string{"api.example"}}, Pool: "api", Host: "api.internal",
				Timeouts: service.Timeouts{Read: 300 * time.Millisecond}},
			{Match: route.Spec{Name: "static", Hosts: []string{"www.example", "*.cdn.example"}, Path: "/static/"}, Pool: "static"},
		}
		o.RoutePools = map[string]RoutePool{
			"api":    {Pool: pAPI, Ejection: testEjection()},
			"static": {Pool: pStatic, Ejection: testEjection()},
		}
	})
	for _, c := range []struct {
		host, path    string
		status        int
		backend, seen string
		route         string
	}{
		{"api.example", "/v1/x", 200, "api", "api.internal", "api"},
		{"API.example:8080", "/", 200, "api", "api.internal", "api"},
		{"www.example", "/static/app.js", 200, "static", "www.example", "static"},
		{"img.cdn.example", "/static/a.png", 200, "static", "img.cdn.example", "static"},
		// The forms a backend reads as /static/… match its route too.
		{"www.example", "/%73tatic/app.js", 200, "static", "www.example", "static"},
		{"www.example", "//static//app.js", 200, "static", "www.example", "static"},
		{"other.example", "/static/a.png", 200, "web", "other.example", "default"},
		{"www.example", "/index.html", 404, "", "", ""},
		{"www.example", "/static/../admin", 400, "", "", ""},
	} {
		req, _ := http.NewRequest("GET", h.url+c.path, nil)
		req.Host = c.host
		resp, err := h.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		l := h.access.last(t)
		if resp.StatusCode != c.status || resp.Header.Get("X-Backend") != c.backend ||
			resp.Header.Get("X-Seen-Host") != c.seen || l.Route != c.route {
			t.Errorf("%s%s: status %d backend %q Host %q route %q, want %d %q %q %q (log %+v)", c.host, c.path,
				resp.StatusCode, resp.Header.Get("X-Backend"), resp.Header.Get("X-Seen-Host"), l.Route,
				c.status, c.backend, c.seen, c.route, l)
		}
	}

	// A reload may change routes among the server's pools; a pool it does
	// not have needs a new server.
	svc := testService()
	svc.Routes = []service.Route{{Match: route.Spec{Name: "all-api", Path: "/api/"}, Pool: "api"}}
	if err := h.srv.Update(svc, testEjection()); err != nil {
		t.Fatal(err)
	}
	resp, _ := h.do(t, "GET", "/api/x", nil, nil)
	if resp.Header.Get("X-Backend") != "api" {
		t.Errorf("after Update: /api/x went to %q", resp.Header.Get("X-Backend"))
	}
	svc.Routes = []service.Route{{Match: route.Spec{Name: "new", Path: "/new/"}, Pool: "other"}}
	if err := h.srv.Update(svc, testEjection()); err == nil {
		t.Error("Update with a route to a pool the server does not have: no error")
	}
	// A reload adding a site with a pool of its own: AddPools, then Update.
	other := newBackend(t, answer("other"))
	pOther := newPool(t, nil, other.addr)
	if err := h.srv.AddPools(map[string]RoutePool{"other": {Pool: pOther, Ejection: testEjection()}, "api": {Pool: pAPI}}); err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Update(svc, testEjection()); err != nil {
		t.Fatal(err)
	}
	if resp, _ := h.do(t, "GET", "/new/x", nil, nil); resp.Header.Get("X-Backend") != "other" {
		t.Errorf("after AddPools and Update: /new/x went to %q", resp.Header.Get("X-Backend"))
	}
	if g := *h.srv.groups.Load(); len(g) != 2 || g["api"] != nil || g["static"] != nil {
		t.Errorf("pools kept after Update: %v (want web and other)", g)
	}
	if err := h.srv.AddPools(map[string]RoutePool{"other": {Pool: pAPI}}); err == nil {
		t.Error("AddPools with another pool under a known name: no error")
	}
}

// Routes without the service's own pool: what no route takes gets 404.
func TestRoutesNoDefault(t *testing.T) {
	api := newBackend(t, status(200))
	pAPI := newPool(t, nil, api.addr)
	h := start(t, nil, func(o *Options) {
		o.Pool = nil
		o.Service.Pool = ""
		o.Service.Routes = []service.Route{{Match: route.Spec{Name: "api", Hosts: []string{"api.example"}}, Pool: "api"}}
		o.RoutePools = map[string]RoutePool{"api": {Pool: pAPI, Ejection: testEjection()}}
	})
	resp, _ := h.do(t, "GET", "/", nil, nil)
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown host: status %d, want 404", resp.StatusCode)
	}
}

// The TLS server name sent to a backend: the route's when set, else the
// service's, else the route's host; never the client's Host.
func TestRouteServerName(t *testing.T) {
	var sni, host atomic.Value
	be := newTLSBackend(t, func(w http.ResponseWriter, r *http.Request) {
		sni.Store(r.TLS.ServerName)
		host.Store(r.Host)
	})
	p := newPool(t, nil, be)
	h := start(t, p, func(o *Options) {
		o.Service.SNI = "svc.internal"
		o.Service.Routes = []service.Route{
			{Match: route.Spec{Name: "own", Path: "/own/"}, Pool: "web", SNI: "route.internal", Host: "api.example"},
			{Match: route.Spec{Name: "host", Path: "/host/"}, Pool: "web", Host: "api.example"},
		}
		o.Upstream.TLS = &tls.Config{InsecureSkipVerify: true}
	})
	for path, want := range map[string][2]string{
		"/own/x":  {"route.internal", "api.example"},
		"/host/x": {"svc.internal", "api.example"},
		"/other":  {"svc.internal", "client.example"},
	} {
		req, _ := http.NewRequest("GET", h.url+path, nil)
		req.Host = "client.example"
		resp, err := h.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if sni.Load() != want[0] || host.Load() != want[1] {
			t.Errorf("%s: SNI %v Host %v, want %v", path, sni.Load(), host.Load(), want)
		}
	}
}

// Header rules: a route's request rules reach the backend (with their
// variables), its response rules the client; Location, Content-Location
// and Refresh naming the upstream host point back at the client's host.
func TestHeaderRules(t *testing.T) {
	var seen atomic.Value
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Header.Clone())
		w.Header().Set("Server", "backend/1.0")
		w.Header().Set("X-Internal", "secret")
		w.Header().Set("Location", "http://app.internal:8080/next?a=1")
		w.Header().Set("Content-Location", "http://elsewhere.example/x")
		w.Header().Set("Refresh", "5; url=http://APP.internal/later")
		w.WriteHeader(http.StatusFound)
	})
	p := newPool(t, nil, be.addr)
	rules := service.HeaderRules{
		Request: service.HeaderOps{
			Remove: []string{"X-Debug"},
			Set:    []service.Field{{Name: "X-Env", Value: "prod"}, {Name: "X-Client", Value: "{client_ip} via {scheme}://{host} ({route})"}},
			Add:    []service.Field{{Name: "X-Tag", Value: "sluice"}},
		},
		Response:        service.HeaderOps{Remove: []string{"X-Internal"}, Set: []service.Field{{Name: "Server", Value: "front"}}},
		RewriteLocation: true,
	}
	h := start(t, p, func(o *Options) {
		o.Service.Routes = []service.Route{{Match: route.Spec{Name: "app", Path: "/app/"}, Pool: "web", Host: "app.internal", Headers: &rules}}
	})
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("GET", h.url+"/app/x", nil)
	req.Host = "www.example:8443"
	req.Header.Set("X-Debug", "1")
	req.Header.Set("X-Env", "dev")
	req.Header.Add("X-Tag", "client")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	got := seen.Load().(http.Header)
	if got.Get("X-Debug") != "" || got.Get("X-Env") != "prod" || got.Get("X-Client") != "127.0.0.1 via http://www.example:8443 (app)" ||
		strings.Join(got["X-Tag"], ",") != "client,sluice" {
		t.Errorf("backend saw %v", got)
	}
	rh := resp.Header
	if rh.Get("X-Internal") != "" || rh.Get("Server") != "front" ||
		rh.Get("Location") != "http://www.example:8443/next?a=1" ||
		rh.Get("Content-Location") != "http://elsewhere.example/x" ||
		rh.Get("Refresh") != "5; url=http://www.example:8443/later" {
		t.Errorf("client got %v", rh)
	}
	// The service's pool (no rules) passes everything as it came.
	req, _ = http.NewRequest("GET", h.url+"/other", nil)
	req.Header.Set("X-Debug", "1")
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if seen.Load().(http.Header).Get("X-Debug") != "1" || resp.Header.Get("X-Internal") != "secret" {
		t.Error("rules applied outside their route")
	}
	// Refused rules.
	for _, bad := range []service.HeaderRules{
		{Request: service.HeaderOps{Set: []service.Field{{Name: "Host", Value: "x"}}}},
		{Request: service.HeaderOps{Remove: []string{"X-Forwarded-For"}}},
		{Response: service.HeaderOps{Set: []service.Field{{Name: "Content-Length", Value: "1"}}}},
		{Response: service.HeaderOps{Set: []service.Field{{Name: "X-A", Value: "{nope}"}}}},
		{Response: service.HeaderOps{Add: []service.Field{{Name: "X-A", Value: "a\nb"}}}},
	} {
		if err := bad.Check(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}

// A route's max_body_bytes replaces the listener's for its requests.
func TestRouteMaxBody(t *testing.T) {
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) })
	p := newPool(t, nil, be.addr)
	h := start(t, p, func(o *Options) {
		o.Client.MaxBodyBytes = 100
		o.Service.Routes = []service.Route{
			{Match: route.Spec{Name: "small", Path: "/small/"}, Pool: "web", MaxBodyBytes: 10},
			{Match: route.Spec{Name: "upload", Path: "/upload/"}, Pool: "web", MaxBodyBytes: 1000},
		}
	})
	for _, c := range []struct {
		path string
		n    int
		want int
	}{
		{"/small/x", 10, 200}, {"/small/x", 11, 413},
		{"/upload/x", 500, 200}, {"/upload/x", 1001, 413},
		{"/other", 100, 200}, {"/other", 101, 413},
	} {
		resp, _ := h.do(t, "POST", c.path, []byte(strings.Repeat("x", c.n)), nil)
		if resp.StatusCode != c.want {
			t.Errorf("%s with %d bytes: %d, want %d", c.path, c.n, resp.StatusCode, c.want)
		}
	}
	if l := h.access.last(t); !strings.Contains(l.Error, "client.max_body_bytes (100)") {
		t.Errorf("listener limit message: %q", l.Error)
	}
}

// TestRemovedFromOnePoolOfTwo: the service's upstream connections are
// shared by its pools; an address one pool removes while another still
// has it keeps its requests in flight; removed from both, they are cut.
func TestRemovedFromOnePoolOfTwo(t *testing.T) {
	gate := make(chan struct{})
	var in atomic.Int64
	a := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		in.Add(1)
		select {
		case <-gate:
		case <-r.Context().Done():
		}
	})
	t.Cleanup(func() { close(gate) })
	pWeb, pAPI := newPool(t, nil, a.addr), newPool(t, nil, a.addr)
	h := start(t, pWeb, func(o *Options) {
		o.Service.Routes = []service.Route{{Match: route.Spec{Name: "api", Hosts: []string{"api.example"}}, Pool: "api"}}
		o.RoutePools = map[string]RoutePool{"api": {Pool: pAPI, Ejection: testEjection()}}
	})
	done := statusLater(func() (*http.Response, error) { return h.client.Get(h.url + "/held") }) // the default route: pool web
	waitFor(t, "the request at the backend", func() bool { return in.Load() == 1 })
	remove := func(p *pool.Pool) {
		t.Helper()
		now := time.Now()
		if err := p.Drain(now, a.addr); err != nil {
			t.Fatal(err)
		}
		p.Tick(now.Add(2*time.Minute), func(netip.AddrPort) (int, bool) { return 1, true })
		if b, _ := p.Backend(a.addr); b.State != pool.Removed {
			t.Fatalf("setup: %v after its drain timeout", b.State)
		}
	}
	remove(pAPI)
	select {
	case code := <-done:
		t.Fatalf("the request ended (%d) when another pool than its own removed the address", code)
	case <-time.After(100 * time.Millisecond):
	}
	if n := in.Load(); n != 1 {
		t.Fatalf("the request reached the backend %d times: cut and retried when another pool removed its address", n)
	}
	remove(pWeb)
	select {
	case code := <-done:
		if code < 500 {
			t.Errorf("the request cut at its address's removal: %d", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the request still waits on an address both pools removed")
	}
}
