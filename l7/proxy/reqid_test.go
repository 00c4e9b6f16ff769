package proxy

import (
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sluicelb/sluice/l7/reqid"
	"github.com/sluicelb/sluice/l7/route"
	"github.com/sluicelb/sluice/l7/service"
)

// Every request has an id: in the access log, in a header rule's
// {request_id} (at the backend and the client), in sluice's own answers
// (header and body); a trusted peer's id is taken only when the service
// says so, and only from a trusted peer.
func TestRequestID(t *testing.T) {
	var seen atomic.Value
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) { seen.Store(r.Header.Get("X-Request-Id")) })
	p := newPool(t, nil, be.addr)
	rules := service.HeaderRules{
		Request:  service.HeaderOps{Set: []service.Field{{Name: "X-Request-Id", Value: "{request_id}"}}},
		Response: service.HeaderOps{Set: []service.Field{{Name: "X-Request-Id", Value: "{request_id}"}, {Name: "X-Trace", Value: "id={request_id};r={route}"}}},
	}
	src := reqid.NewSource()
	h := start(t, p, func(o *Options) {
		o.RequestIDs = src
		o.Service.Headers = rules
		o.Service.Routes = []service.Route{{Match: route.Spec{Name: "api", Path: "/api/"}, Pool: "web"}}
	})
	ids := map[string]bool{}
	for i := 0; i < 3; i++ {
		// A client's own id is not believed (no trusted peer).
		resp, _ := h.do(t, "GET", "/x", nil, http.Header{"X-Request-Id": {"client-made"}})
		l := h.access.last(t)
		id := resp.Header.Get("X-Request-Id")
		if id == "" || id == "client-made" || ids[id] || seen.Load() != id || l.ReqID != id ||
			resp.Header.Get("X-Trace") != "id="+id+";r=default" {
			t.Errorf("request %d: client got id %q (X-Trace %q), backend %q, log %q", i, id, resp.Header.Get("X-Trace"), seen.Load(), l.ReqID)
		}
		ids[id] = true
	}
	// sluice's own answer (400: a dot segment) names the id too.
	resp, body := h.do(t, "GET", "/api/%2e%2e/x", nil, nil)
	l := h.access.last(t)
	if id := resp.Header.Get("X-Request-Id"); resp.StatusCode != 400 || id == "" || l.ReqID != id || !strings.Contains(body, "request id "+id) {
		t.Errorf("own answer: %d, id %q, log %q, body %q", resp.StatusCode, id, l.ReqID, body)
	}

	// trust_incoming with a trusted peer (loopback): its valid id is taken.
	svc := testService()
	svc.Headers = rules
	svc.RequestID = service.RequestID{Header: "x-correlation-id", TrustIncoming: true}
	svc.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	if err := h.srv.Update(svc, testEjection()); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ sent, want string }{
		{"abc-123", "abc-123"},
		{"bad id", ""}, // not a valid id: sluice's own
	} {
		resp, _ := h.do(t, "GET", "/x", nil, http.Header{"X-Correlation-Id": {c.sent}})
		l := h.access.last(t)
		if got := resp.Header.Get("X-Request-Id"); c.want != "" && got != c.want || c.want == "" && (got == c.sent || got == "") || l.ReqID != got {
			t.Errorf("trusted peer sent %q: id %q, log %q", c.sent, got, l.ReqID)
		}
	}
	// The same setting with a peer not trusted: never believed.
	svc.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")}
	if err := h.srv.Update(svc, testEjection()); err != nil {
		t.Fatal(err)
	}
	if resp, _ := h.do(t, "GET", "/x", nil, http.Header{"X-Correlation-Id": {"abc-123"}}); resp.Header.Get("X-Request-Id") == "abc-123" {
		t.Error("an untrusted peer's id was taken")
	}
	// A header no rule may name is refused.
	svc.RequestID.Header = "Content-Length"
	if err := h.srv.Update(svc, testEjection()); err == nil {
		t.Error("request_id.header Content-Length accepted")
	}
}
