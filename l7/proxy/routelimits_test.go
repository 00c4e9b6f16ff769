package proxy

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/l7/route"
	"github.com/sluicelb/sluice/l7/service"
)

// A route's max_requests bounds its own requests in flight (503 with
// Retry-After above it, counted as route_requests) without touching the
// listener's other routes, and keeps counting across a reload.
func TestRouteMaxRequests(t *testing.T) {
	release := make(chan struct{})
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/slow/") {
			<-release
		}
	})
	p := newPool(t, nil, be.addr)
	routes := []service.Route{{Match: route.Spec{Name: "slow", Path: "/slow/"}, Pool: "web", MaxRequests: 1}}
	h := start(t, p, func(o *Options) { o.Service.Routes = routes })
	done := statusLater(func() (*http.Response, error) { return h.client.Get(h.url + "/slow/a") })
	waitFor(t, "the first request at the backend", func() bool { return h.srv.UpstreamStats(be.addr).Busy == 1 })
	// A reload keeps the route's count: the request in flight still counts.
	svc := testService()
	svc.Routes = routes
	if err := h.srv.Update(svc, testEjection()); err != nil {
		t.Fatal(err)
	}
	resp, body := h.do(t, "GET", "/slow/b", nil, nil)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" || !strings.Contains(body, "the route's max_requests (1)") {
		t.Errorf("second request on the route: %d Retry-After %q %q", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if resp, _ := h.do(t, "GET", "/other", nil, nil); resp.StatusCode != 200 {
		t.Errorf("another route: %d", resp.StatusCode)
	}
	close(release)
	if code := <-done; code != 200 {
		t.Errorf("first request: %d", code)
	}
	if resp, _ := h.do(t, "GET", "/slow/c", nil, nil); resp.StatusCode != 200 {
		t.Errorf("the route once free: %d", resp.StatusCode)
	}
}

// A route's tunnel_idle_timeout replaces the listener's for its upgraded
// connections: a tunnel quiet for longer than the listener's idle timeout
// stays open on a route that allows more.
func TestRouteTunnelIdleTimeout(t *testing.T) {
	be := echoUpgradeBackend(t)
	p := newPool(t, nil, be.addr)
	h := start(t, p, func(o *Options) {
		o.Client.TunnelIdleTimeout = 200 * time.Millisecond
		o.Service.Upgrades = []string{"echo"}
		o.Service.Routes = []service.Route{{Match: route.Spec{Name: "chat", ExactPath: "/chat"}, Pool: "web", TunnelIdleTimeout: 5 * time.Second}}
	})
	c, br := upgradeClient(t, h) // GET /chat
	time.Sleep(time.Second)      // five listener idle timeouts, quiet
	io.WriteString(c, "ping")
	got := make([]byte, 4)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping" {
		t.Fatalf("the route's tunnel was closed at the listener's idle timeout: %q %v", got, err)
	}
}

// A route's max_requests still counts its tunnels (the cap of a WebSocket
// route), while the listener's does not.
func TestRouteMaxRequestsCountsTunnels(t *testing.T) {
	be := echoUpgradeBackend(t)
	h := start(t, newPool(t, nil, be.addr), func(o *Options) {
		o.Service.Upgrades = []string{"echo"}
		o.Service.Routes = []service.Route{{Match: route.Spec{Name: "chat", ExactPath: "/chat"}, Pool: "web", MaxRequests: 1}}
	})
	upgradeClient(t, h) // GET /chat: the route's one place
	c, br := rawConn(t, h)
	io.WriteString(c, "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	resp, _ := readResp(t, br, "GET")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a second tunnel on a route with max_requests 1: %d, want 503", resp.StatusCode)
	}
}
