package discovery_test

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/discovery"
)

// The agent's wiring: one Watcher for the config's dns section, each
// backend name a source of its pool, Refresh when connects fail.
func ExampleWatcher() {
	ctx := context.Background()
	var cfg config.DNS // from the loaded config
	r, err := discovery.NewResolver(discovery.FromConfig(cfg), discovery.WithLogger(slog.Default()))
	if err != nil {
		return
	}
	w := discovery.NewWatcher(r, discovery.WatcherOptions{
		OnUpdate: func(u discovery.Update) {
			// For every pool backend `name: u.Name, port: P`:
			for _, a := range u.Addrs {
				_ = netip.AddrPortFrom(a.Addr, 80) // pool.Desired{Addr: ..., Info: a.Info()}
			}
			// pool.SetSource(now, u.Name, desired) — an empty set drains the name.
		},
		Observe: func(u discovery.Update) {
			// metrics: count u.Lookup outcomes by u.Reason / u.Failure.
		},
	})
	_ = w.Sync(ctx, []string{"backend.lab"}) // every backend name of the config
	// Connects to an address of backend.lab keep failing:
	w.Refresh("backend.lab")
	// sluice status: TTL left of the name's answer.
	if st, ok := w.Status("backend.lab"); ok {
		_ = st.TTLLeft(st.At)
	}
}
