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
