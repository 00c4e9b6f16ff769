package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/pool"
)

func healthConfig(be1, be2 string, check bool) string {
	hc := ""
	if check {
		hc = "    health_check: {http: {path: /healthz}, interval: 50ms, timeout: 40ms, rise: 2, fall: 2}\n"
	}
	return fmt.Sprintf(`interfaces: [veth0]
pools:
  - name: web
    drain_timeout: 30s
    addresses: {allow: [127.0.0.1/32]}   # the test servers listen on loopback
%s    backends:
      - address: %s
      - address: %s
services:
  - name: web-l4
    listen: 198.18.1.100:80
    protocol: tcp
    pool: web
`, hc, be1, be2)
}

// healthServer answers /healthz with 200 or 503 as the test says.
func healthServer(t *testing.T, healthy *atomic.Bool) netip.AddrPort {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if healthy.Load() {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(strings.TrimPrefix(srv.URL, "http://"))
}

func TestHealthChecksEjectAndRecover(t *testing.T) {
	var ok1, ok2 atomic.Bool
	ok1.Store(true)
	ok2.Store(false)
	h1, h2 := healthServer(t, &ok1), healthServer(t, &ok2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := newHarnessWith(t, nil, healthConfig(h1.String(), h2.String(), true), func(o *options) {
		o.ctx = ctx
		o.now = time.Now // the checkers report from their own goroutines
	})
	defer h.a.health.stop()

	waitFor := func(addr netip.AddrPort, want pool.State, cause string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			if err := h.a.tick(time.Now()); err != nil {
				t.Fatal(err)
			}
			b := h.state(addr)
			if b.State == want && strings.HasPrefix(b.Cause, cause) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s = %s (%s), want %s (%s)", addr, b.State, b.Cause, want, cause)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor(h2, pool.Ejected, "health:status")
	if b := h.dp.Backend(h.slotOf(h2)); b.State != datapath.BackendEjected {
		t.Fatalf("slot = %+v", b)
	}
	if slices.Contains(h.tableSlots(1), h.slotOf(h2)) {
		t.Fatal("unhealthy address still in the table")
	}
	// The other one is kept whatever happens: 50% at most are ejected.
	// Wait for the checker's verdict on it: the pool refusing the ejection.
	p := h.a.pools["web"].p
	refused := p.EjectionsRefused()
	ok1.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for p.EjectionsRefused() == refused {
		if time.Now().After(deadline) {
			t.Fatal("no ejection of the last healthy address was attempted")
		}
		if err := h.a.tick(time.Now()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // a tick between two checks (interval 50ms)
	}
	if b := h.state(h1); b.State != pool.Active {
		t.Fatalf("the whole pool ejected: %+v", b)
	}
	// h2 recovers (rise 2); then h1, unhealthy all along, can be ejected.
	ok2.Store(true)
	waitFor(h2, pool.Active, "health:passed")
	waitFor(h1, pool.Ejected, "health:status")

	// Health checks removed from the config: h1 comes back.
	h.write(healthConfig(h1.String(), h2.String(), false))
	if err := h.a.Reload(h.ctx); err != nil {
		t.Fatal(err)
	}
	if b := h.state(h1); b.State != pool.Active {
		t.Fatalf("address ejected by removed health checks = %+v", b)
	}
	if h.a.health.running() != 0 {
		t.Fatal("checker still running")
	}
}
