package agent

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/announce"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/datapath"
)

// NodeStateFile is where an agent whose admin socket is socket keeps the
// node's drain (next to StateFile; `sluice teardown` removes it).
func NodeStateFile(socket string) string {
	return filepath.Join(filepath.Dir(socket), "node.json")
}

// birdQueryTimeout bounds one read of BIRD's sessions (every tick).
const birdQueryTimeout = 300 * time.Millisecond

// Drain defaults of `sluice node drain`.
const (
	DefaultNodeDrainTimeout = 5 * time.Minute
	DefaultNodeDrainQuiet   = 5 * time.Second
)

// announceLocked hands the announcer what the data path can serve now:
// every VIP of the running config's L4 services, usable when one of its
// services has a Maglev table with an active slot, and whether the
// program is attached to every configured interface. It runs after every
// reconcile, so a VIP is withdrawn in the same pass that empties its last
// table, and announced only once a table is written. Called with mu held.
func (a *agent) announceLocked(now time.Time) {
	if a.ann == nil || a.cfg == nil {
		return
	}
	byVIP := make(map[netip.Addr]*announce.VIP)
	var order []netip.Addr
	for _, sc := range a.cfg.L4Services() {
		vip := sc.ListenAddr.Addr()
		v, ok := byVIP[vip]
		if !ok {
			v = &announce.VIP{Addr: vip}
			byVIP[vip] = v
			order = append(order, vip)
		}
		v.Services = append(v.Services, sc.Name)
		if s, ok := a.rec.serviceOf(serviceKey(sc)); ok && s.written && s.backends > 0 {
			v.Usable = true
		}
	}
	want := make([]announce.VIP, 0, len(order))
	for _, vip := range order {
		want = append(want, *byVIP[vip])
	}
	if err := a.ann.Sync(now, want, a.attached()); err != nil {
		a.log.Debug("announcing finished with errors, retrying on the next tick", "err", err)
	}
}

// attached: the program is attached to every configured interface.
func (a *agent) attached() bool {
	have := a.rec.dp.Attachments()
	for _, name := range a.cfg.Interfaces {
		if !slices.ContainsFunc(have, func(at datapath.Attachment) bool { return at.Interface == name }) {
			return false
		}
	}
	return true
}

// observeDrain moves a node drain on with the flow watcher's last walk.
// Called with mu held, after the walk.
func (a *agent) observeDrain(now time.Time, counts flowCounts, known bool) {
	if a.ann == nil || !known {
		return
	}
	a.ann.Observe(now, counts.at, counts.minIdle, counts.live > 0)
}

// NodeDrain implements admin.Agent: withdraw every VIP and drain the node.
func (a *agent) NodeDrain(ctx context.Context, timeout, quiet time.Duration) error {
	if a.ann == nil {
		return fmt.Errorf("node drain: the config has no bgp section, nothing is announced: %w", admin.ErrBadRequest)
	}
	if timeout <= 0 {
		timeout = DefaultNodeDrainTimeout
	}
	if quiet <= 0 {
		quiet = DefaultNodeDrainQuiet
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if err := a.ann.Drain(now, timeout, quiet); err != nil {
		return fmt.Errorf("node drain: %w", err)
	}
	// Withdraw now, not on the next tick.
	a.announceLocked(now)
	return nil
}

// NodeUndrain implements admin.Agent: announce again what is usable.
func (a *agent) NodeUndrain(ctx context.Context) error {
	if a.ann == nil {
		return fmt.Errorf("node undrain: the config has no bgp section, nothing is announced: %w", admin.ErrBadRequest)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.ann.Undrain(); err != nil {
		return fmt.Errorf("node undrain: %w", err)
	}
	a.announceLocked(a.now())
	return nil
}

// nodeStatus is the node part of Status (nil without a bgp section).
// Called without mu: it reads BIRD's sessions.
func (a *agent) nodeStatus(cfg *config.Config) *admin.Node {
	if a.ann == nil {
		return nil
	}
	// The sessions as they are now, not as the last tick saw them.
	ctx, cancel := context.WithTimeout(a.ctx, birdQueryTimeout)
	a.ann.RefreshSessions(ctx)
	cancel()
	st := a.ann.Status()
	n := &admin.Node{State: st.Node.String(), LastError: st.LastError, VIPs: []admin.VIP{}, SessionsError: st.SessionsError}
	for _, s := range st.Sessions {
		n.Sessions = append(n.Sessions, admin.BGPSession{Name: s.Name, State: s.State, Info: s.Info, Up: s.Up()})
	}
	if cfg != nil && cfg.BGP != nil {
		n.Table, n.Protocol = cfg.BGP.Table, cfg.BGP.Protocol
	}
	if st.Node != announce.Serving {
		n.Drain = &admin.NodeDrain{Started: st.DrainStarted, Deadline: st.DrainDeadline,
			Quiet: st.DrainQuiet.String(), Cause: st.DrainCause}
		if !st.DrainedAt.IsZero() {
			t := st.DrainedAt
			n.Drain.DrainedAt = &t
		}
	}
	for _, v := range st.VIPs {
		n.VIPs = append(n.VIPs, admin.VIP{Address: v.Addr.String(), Services: v.Services,
			Announced: v.Announced, Reason: v.Reason, Since: v.Since})
	}
	return n
}

// bgpRoutes is what of a bgp section the agent itself uses (a reload
// cannot change it): whether there is one, and its table and protocol.
func bgpRoutes(b *config.BGP) [3]uint32 {
	if b == nil {
		return [3]uint32{}
	}
	return [3]uint32{1, b.Table, uint32(b.Protocol)}
}
