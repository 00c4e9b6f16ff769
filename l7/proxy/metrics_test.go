package proxy

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/l7/accesslog"
	"github.com/sluicelb/sluice/userspace/metrics"
	"github.com/sluicelb/sluice/userspace/pool"
)

var _ Metrics = (*metrics.L7)(nil)

// The proxy's observer feeds the agent's metrics: requests, retries,
// ejections and closed upstream connections show up in a scrape.
func TestMetricsObserver(t *testing.T) {
	m := metrics.New(metrics.Options{NoRuntimeCollectors: true})
	bad := newBackend(t, status(503))
	good := newBackend(t, status(200))
	p := newPool(t, nil, bad.addr, good.addr)
	h := start(t, p, func(o *Options) {
		o.Observer = NewMetricsObserver(m.L7, "web")
		o.Selector = preferSelector{bad.addr}
	})
	for range 4 {
		h.do(t, "GET", "/", nil, nil)
	}
	h.srv.AddressChanged(good.addr, pool.Draining) // its pooled connection closes
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`sluice_l7_requests_total{code="200",service="web-http"} 4`,
		`sluice_l7_retries_total{reason="503",service="web-http"} 3`,
		`sluice_l7_ejections_total{address="` + bad.addr.String() + `",cause="status",pool="web"} 1`,
		`sluice_l7_upstream_connections_closed_total{pool="web",reason="draining"} 2`, // the ejected one and the drained one
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", grepLines(string(out), "sluice_l7_"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A try's sends again on another connection (a pooled one found closed
// by its backend) are counted per service.
func TestMetricsObserverStaleResends(t *testing.T) {
	m := metrics.New(metrics.Options{NoRuntimeCollectors: true})
	o := NewMetricsObserver(m.L7, "web")
	o.Request(&accesslog.Record{Service: "web-http", Status: 200, Tries: []accesslog.Try{{Outcome: "ok", Resent: 2}}})
	o.Request(&accesslog.Record{Service: "web-http", Status: 200, Tries: []accesslog.Try{{Outcome: "ok"}}})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out, _ := io.ReadAll(rec.Body)
	if want := `sluice_l7_upstream_stale_resends_total{service="web-http"} 2`; !strings.Contains(string(out), want) {
		t.Errorf("scrape lacks %s:\n%s", want, grepLines(string(out), "sluice_l7_"))
	}
}
