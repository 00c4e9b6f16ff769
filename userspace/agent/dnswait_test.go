package agent

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/discovery"
	"github.com/sluicelb/sluice/userspace/pool"
)

// dnsOnlyConfig is pool web made of one DNS name and nothing else.
var dnsOnlyConfig = strings.Replace(dnsConfig, "      - address: 198.18.2.11:80\n", "", 1)

func (h *harness) pool(name string) *pool.Pool {
	h.t.Helper()
	h.a.mu.Lock()
	defer h.a.mu.Unlock()
	ps, ok := h.a.pools[name]
	if !ok {
		h.t.Fatalf("no pool %s", name)
	}
	return ps.p
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// The pool's only address refusing: the first refused connect re-resolves
// the name (no count to reach first).
func TestFirstRefusalRefreshesTheOnlyAddress(t *testing.T) {
	w := &fakeWatcher{status: map[string]discovery.Update{}}
	h := newHarnessWith(t, nil, dnsOnlyConfig, w.use)
	h.a.syncDNS()
	h.a.onDNSUpdate(answer(h.now, dns1))
	s1 := h.slotOf(dns1)
	h.refuse(s1, 40) // history
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if len(w.refreshed) != 0 {
		t.Fatalf("refreshed on history: %v", w.refreshed)
	}
	h.refuse(s1, 41)
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(w.refreshed, []string{"backend.lab"}) {
		t.Fatalf("refreshed = %v, want the name after the first refusal", w.refreshed)
	}
}

// A refresh the agent started counts as in flight for the pool: a request
// asking to wait gets a channel, closed once the answer is in the pool.
func TestLookupOutcomeWakesWaiters(t *testing.T) {
	w := &fakeWatcher{status: map[string]discovery.Update{}}
	h := newHarnessWith(t, nil, dnsOnlyConfig, w.use)
	h.a.syncDNS()
	h.a.onDNSUpdate(answer(h.now, dns1))
	p := h.pool("web")
	ch := p.Reresolve(h.now)
	if ch == nil {
		t.Fatal("no channel to wait on")
	}
	if !slices.Equal(w.refreshed, []string{"backend.lab"}) {
		t.Fatalf("refreshed = %v", w.refreshed)
	}
	// An update that is no lookup (a hold expiring) wakes nobody.
	u := answer(h.now, dns1)
	h.a.onDNSUpdate(u)
	if isClosed(ch) {
		t.Fatal("woken by an update that was not a lookup")
	}
	u = answer(h.now, dns2)
	u.Lookup = true
	h.a.onDNSUpdate(u)
	if !isClosed(ch) {
		t.Fatal("the lookup's outcome did not wake the waiter")
	}
	if b := h.state(dns2); b.State != pool.Active {
		t.Fatalf("dns2 = %+v: waiters woke before the answer was applied", b)
	}
	// An unpublished outcome (the watcher's Observe) wakes them too.
	ch = p.Reresolve(h.now)
	if ch == nil {
		t.Fatal("no channel for the second lookup")
	}
	h.a.mu.Lock()
	h.a.lookupDone(discovery.Update{Name: "backend.lab.", Lookup: true, Reason: discovery.ReasonFailure})
	h.a.mu.Unlock()
	if !isClosed(ch) {
		t.Fatal("a failed lookup did not wake the waiter")
	}
}
