package agent

import (
	"log/slog"
	"reflect"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/logring"
)

// An http service with routes and no pool of its own lists its routes in
// Status, each with its pool's addresses by state; the service's own
// pool, when it has one, is the route "default".
func TestStatusRoutes(t *testing.T) {
	cfg := `interfaces: [veth0]
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}, {address: 198.18.2.12:80}]
  - name: api
    backends: [{address: 198.18.2.13:80}]
  - name: spare
    backends: [{address: 198.18.2.14:80}]
services:
  - name: front
    listen: 198.18.1.101:80
    protocol: http
    routes:
      - {name: api, hosts: [api.lab], path: /v1/, pool: api}
      - {name: www, pool: web}
  - name: both
    listen: 198.18.1.101:81
    protocol: http
    pool: web
    routes: [{name: api, hosts: [api.lab], pool: api}]
`
	h := newHarnessWith(t, nil, cfg, nil)
	st, err := h.a.Status(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]admin.Route{
		"front": {
			{Name: "api", Match: "host api.lab path /v1/", Pool: "api", Backends: map[string]int{"active": 1}},
			{Name: "www", Match: "any host", Pool: "web", Backends: map[string]int{"active": 2}},
		},
		"both": {
			{Name: "api", Match: "host api.lab", Pool: "api", Backends: map[string]int{"active": 1}},
			{Name: "default", Match: "anything else", Pool: "web", Backends: map[string]int{"active": 2}},
		},
	}
	// The config's warnings are in the status too (here: pool spare).
	if len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], `pools[2]: warning: pool "spare" is used by no service and no route`) {
		t.Errorf("warnings %q", st.Warnings)
	}
	for _, s := range st.Services {
		if !reflect.DeepEqual(s.Routes, want[s.Name]) {
			t.Errorf("service %s routes %+v, want %+v", s.Name, s.Routes, want[s.Name])
		}
	}
}

// oneL4Service is a config of one tcp service and its pool.
const oneL4Service = `interfaces: [veth0]
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - {name: web, listen: 198.18.1.100:80, protocol: tcp, pool: web}
`

// The status says how the Go runtime runs: its processors and the
// collector's setting (in tests: not paced, no HTTP stage, no loops).
func TestStatusRuntime(t *testing.T) {
	h := newHarnessWith(t, nil, oneL4Service, nil)
	st, err := h.a.Status(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	rt := st.Runtime
	if rt == nil || rt.GOMAXPROCS < 1 || rt.GOGC == 0 || rt.GCPaced || rt.EventLoops != 0 {
		t.Fatalf("runtime status %+v; want GOMAXPROCS and GOGC set, not paced, no loops", rt)
	}
}

// The status lists the agent's last warnings and errors: a refused reload
// is one.
func TestStatusRecentLog(t *testing.T) {
	ring := logring.New(5)
	h := newHarnessWith(t, nil, oneL4Service, func(o *options) {
		o.recentLog = ring
		o.log = slog.New(ring.Handler(slog.DiscardHandler))
	})
	h.write("pools: [")
	if err := h.a.Reload(h.ctx); err == nil {
		t.Fatal("a broken config reloaded")
	}
	st, err := h.a.Status(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	l := st.Log
	if l == nil || l.Errors != 1 || l.Warnings != 0 || len(l.Recent) != 1 ||
		l.Recent[0].Level != "ERROR" || !strings.HasPrefix(l.Recent[0].Text, `msg="reload refused, the running config stays" config=`) {
		t.Fatalf("status log %+v; want the refused reload", l)
	}
}
