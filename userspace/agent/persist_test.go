package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/discovery"
	"github.com/sluicelb/sluice/userspace/pool"
)

// Issue 10 item 14: what an operator (or the agent) decided survives a
// restart: a drained DNS-derived address stays drained with its deadline,
// a drained address already removed stays out, an ejection keeps its end.
func TestStateSurvivesRestart(t *testing.T) {
	stateFile := filepath.Join(t.TempDir(), "state.json")
	w := &fakeWatcher{status: map[string]discovery.Update{}}
	h := newHarnessWith(t, nil, dnsConfig, func(o *options) {
		w.use(o)
		o.stateFile = stateFile
	})
	h.a.syncDNS()
	h.a.onDNSUpdate(answer(h.now, dns1, dns2))
	h.addFlow(40000, h.slotOf(dns1), false) // keeps dns1 draining
	until := h.now.Add(time.Minute)
	if err := h.a.pools["web"].p.Eject(h.now, dns2, until, "test"); err != nil {
		t.Fatal(err)
	}
	if err := h.a.Drain(h.ctx, "web", dns1.String()); err != nil {
		t.Fatal(err)
	}
	if err := h.a.Drain(h.ctx, "web", be1.String()); err != nil { // no flows: removed at the next tick
		t.Fatal(err)
	}
	deadline := h.state(dns1).DrainDeadline
	if err := h.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	if b := h.state(be1); b.State != pool.Removed || !b.Held {
		t.Fatalf("be1 before the restart = %+v", b)
	}
	if _, err := os.Stat(stateFile); err != nil {
		t.Fatalf("no state file: %v", err)
	}

	// A new agent on the same data path: it adopts the slots, restores
	// the saved states, then the name answers both addresses again.
	h.now = h.now.Add(5 * time.Second)
	cfg, err := config.Load(h.path)
	if err != nil {
		t.Fatal(err)
	}
	w2 := &fakeWatcher{status: map[string]discovery.Update{}}
	o := options{configPath: h.path, now: func() time.Time { return h.now }, stateFile: stateFile}
	w2.use(&o)
	a := newAgent(h.dp, o)
	if err := a.start(h.now, cfg); err != nil {
		t.Fatal(err)
	}
	a.syncDNS()
	a.onDNSUpdate(answer(h.now, dns1, dns2))
	p := a.pools["web"].p
	if b, _ := p.Backend(dns1); b.State != pool.Draining || !b.Held || !b.DrainDeadline.Equal(deadline) {
		t.Errorf("dns1 after the restart = %+v, want draining, held, deadline %s", b, deadline)
	}
	if b, _ := p.Backend(be1); b.State != pool.Removed || !b.Held {
		t.Errorf("be1 after the restart = %+v, want removed and held (the operator drained it)", b)
	}
	if b, _ := p.Backend(dns2); b.State != pool.Ejected || !b.EjectedUntil.Equal(until) {
		t.Errorf("dns2 after the restart = %+v, want ejected until its saved end", b)
	}
	// Undrain is remembered too.
	if err := a.Undrain(h.ctx, "web", be1.String()); err != nil {
		t.Fatal(err)
	}
	if b, _ := p.Backend(be1); b.State != pool.Active {
		t.Errorf("be1 after undrain = %+v", b)
	}
}
