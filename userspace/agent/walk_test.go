package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/datapath"
)

// slowWalk is a Fake whose conntrack walk stops at its first flow until
// released: a walk of a huge table.
type slowWalk struct {
	*datapath.Fake
	entered chan struct{}
	release chan struct{}
}

func (s *slowWalk) Flows(fn func(datapath.Flow) bool) error {
	return s.Fake.Flows(func(f datapath.Flow) bool {
		if s.entered != nil {
			close(s.entered)
			s.entered = nil
			<-s.release
		}
		return fn(f)
	})
}

// Issue 10 item 15: a conntrack walk for `sluice status` or `sluice
// conntrack` holds no lock of the agent's, so drains, DNS answers and
// reloads go on while it runs.
func TestWalksDoNotStallTheAgent(t *testing.T) {
	for _, walk := range []string{"status", "conntrack"} {
		t.Run(walk, func(t *testing.T) {
			fake := datapath.NewFake(tableSize)
			dp := &slowWalk{Fake: fake}
			now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
			path := filepath.Join(t.TempDir(), "sluice.yaml")
			if err := os.WriteFile(path, []byte(baseConfig), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			a := newAgent(dp, options{configPath: path, now: func() time.Time { return now }})
			if err := a.start(now, cfg); err != nil {
				t.Fatal(err)
			}
			n, _, _ := a.rec.slotOf(datapath.PoolID("web"), be1)
			fake.AddFlow(datapath.Flow{Client: be4, VIP: vip, Proto: datapath.TCP, BackendSlot: n, BackendGen: 1, Backend: be1})

			dp.entered, dp.release = make(chan struct{}), make(chan struct{})
			entered := dp.entered
			done := make(chan error, 1)
			go func() {
				var err error
				if walk == "status" {
					_, err = a.Status(t.Context())
				} else {
					_, err = a.Flows(t.Context(), admin.FlowFilter{})
				}
				done <- err
			}()
			<-entered // the walk is under way, and stays there

			ops := make(chan error, 1)
			go func() {
				if err := a.Drain(t.Context(), "web", be2.String()); err != nil {
					ops <- err
					return
				}
				ops <- a.Reload(t.Context())
			}()
			select {
			case err := <-ops:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("a drain and a reload waited for the conntrack walk")
			}
			close(dp.release)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// countingStats is a Fake that counts BackendStats reads.
type countingStats struct {
	*datapath.Fake
	reads int
}

func (c *countingStats) BackendStats(slot uint32) (datapath.BackendStats, error) {
	c.reads++
	return c.Fake.BackendStats(slot)
}

// An idle pool costs no counter read per tick (issue 14: work proportional
// to what changed); the first refusal after a long idle spell is still
// seen, with the flow it leaves behind.
func TestIdleSlotsReadNoCounters(t *testing.T) {
	fake := datapath.NewFake(tableSize)
	dp := &countingStats{Fake: fake}
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	path := filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(path, []byte(baseConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	a := newAgent(dp, options{configPath: path, now: func() time.Time { return now }})
	if err := a.start(now, cfg); err != nil {
		t.Fatal(err)
	}
	tick := func() {
		now = now.Add(time.Second)
		if err := a.tick(now); err != nil {
			t.Fatal(err)
		}
	}
	tick() // baselines of the three slots
	dp.reads = 0
	for range 10 {
		tick()
	}
	if dp.reads != 0 {
		t.Fatalf("%d counter reads in 10 idle ticks, want 0", dp.reads)
	}
	n, gen, _ := a.rec.slotOf(datapath.PoolID("web"), be2)
	fake.SetBackendStats(n, datapath.BackendStats{ConnectRefused: 1})
	fake.AddFlow(datapath.Flow{Client: be4, VIP: vip, Proto: datapath.TCP, BackendSlot: n, BackendGen: gen,
		Backend: be2, State: datapath.FlowClosing})
	counts, failures, ok := a.flows.scan(now.Add(time.Second), a.rec.activeSlots(), nil)
	if !ok || len(failures) != 1 || failures[0].refused != 1 || counts.bySlot[slotGen{n, gen}] != 1 {
		t.Fatalf("refusal after idle: failures %+v, ok %v", failures, ok)
	}
}
