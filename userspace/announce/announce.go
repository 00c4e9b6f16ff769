// Package announce decides which VIPs this node announces over BGP and
// keeps the routing table the node's BGP daemon exports in step with that
// decision. It speaks no BGP: BIRD (or any daemon that exports a kernel
// table) does, and this package only adds and deletes one route per VIP
// (Routes). docs/scale-out.md says why.
//
// A VIP is announced while three things hold: one of its services has a
// usable backend (a Maglev table with at least one active slot), the data
// path is attached to every configured interface, and the node is not
// draining. Routes are the kernel's, not the agent's: an agent that exits
// or dies (kill -9) leaves them as they are, and the next agent adopts
// them, changing only what its own first decision changes.
//
// A drain (`sluice node drain`) withdraws every VIP, then waits until the
// node has seen no packet of any flow for a quiet period (its flows moved
// to the other nodes, or ended) or a deadline passes; then the node is
// drained. The drain is kept in a file, so a restarted agent does not
// announce again what an operator withdrew.
package announce

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// Reasons a VIP is announced or not, as status and logs show them.
const (
	ReasonServing    = "serving"
	ReasonNoBackend  = "no usable backend"
	ReasonDetached   = "data path not attached"
	ReasonDraining   = "node draining"
	ReasonDrained    = "node drained"
	ReasonUnknownVIP = "not in the config"
)

// NodeState is where the node stands in a drain.
type NodeState int

// Node states.
const (
	Serving NodeState = iota
	Draining
	Drained
)

func (s NodeState) String() string {
	switch s {
	case Serving:
		return "serving"
	case Draining:
		return "draining"
	case Drained:
		return "drained"
	}
	return fmt.Sprintf("NodeState(%d)", int(s))
}

// NodeStates lists every state, for metrics.
var NodeStates = []NodeState{Serving, Draining, Drained}

// VIP is one address the config serves, as the agent sees it now.
type VIP struct {
	Addr netip.Addr
	// Services are the names of the L4 services on the address.
	Services []string
	// Usable: at least one of them has a usable backend in the data path.
	Usable bool
}

// Metrics receives what the announcer does; nil methods are not called
// (see metrics.Announce).
type Metrics interface {
	VIPAnnounced(vip netip.Addr, announced bool)
	ForgetVIP(vip netip.Addr)
	RouteChange(action string) // "announce" or "withdraw"
	RouteError()
	NodeState(state string)
	SessionUp(session string, up bool)
	ForgetSession(session string)
}

// VIPStatus is one VIP in Status.
type VIPStatus struct {
	Addr      netip.Addr
	Services  []string
	Announced bool   // the route is in the table
	Reason    string // why it is or is not announced
	Since     time.Time
}

// Status is the announcer's state.
type Status struct {
	Node          NodeState
	DrainStarted  time.Time // zero: not draining
	DrainDeadline time.Time
	DrainQuiet    time.Duration
	DrainedAt     time.Time
	DrainCause    string // why the drain ended: "quiet" or "deadline"
	VIPs          []VIPStatus
	LastError     string // the last failed route operation ("" when the last sync succeeded)
	// Sessions are BIRD's BGP sessions at the last RefreshSessions, and
	// SessionsError why they could not be read.
	Sessions      []Session
	SessionsError string
}

// Options configure New.
type Options struct {
	Routes Routes
	Log    *slog.Logger
	// Metrics may be nil.
	Metrics Metrics
	// StateFile keeps a drain across restarts ("": not kept).
	StateFile string
	// BIRDSocket is BIRD's control socket, read by RefreshSessions (""
	// : sessions are not read).
	BIRDSocket string
}

type vipState struct {
	services  []string
	announced bool
	reason    string
	since     time.Time
}

// Announcer owns the VIP routes and the node's drain. Safe for concurrent use.
type Announcer struct {
	routes     Routes
	log        *slog.Logger
	metrics    Metrics
	stateFile  string
	birdSocket string

	mu      sync.Mutex
	vips    map[netip.Addr]*vipState
	node    NodeState
	drain   drainState
	lastErr string

	sessions    []Session
	sessionsErr string
}

// drainState is a drain, as kept in the state file.
type drainState struct {
	Started   time.Time     `json:"started"`
	Deadline  time.Time     `json:"deadline"`
	Quiet     time.Duration `json:"quiet"`
	DrainedAt time.Time     `json:"drained_at,omitzero"`
	Cause     string        `json:"cause,omitempty"`
}

// New returns an announcer; a drain saved by a previous agent is resumed.
func New(o Options) *Announcer {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	a := &Announcer{routes: o.Routes, log: o.Log, metrics: o.Metrics, stateFile: o.StateFile,
		birdSocket: o.BIRDSocket, vips: make(map[netip.Addr]*vipState)}
	if d, ok := a.loadDrain(); ok {
		a.drain = d
		a.node = Draining
		if !d.DrainedAt.IsZero() {
			a.node = Drained
		}
		a.log.Info("resuming the node's drain", "state", a.node.String(), "started", d.Started)
	}
	a.reportNode()
	return a
}

// Sync announces and withdraws so that the table matches want: each VIP of
// want is announced when it is usable, the data path is attached and the
// node is not draining; any other route of ours (a VIP gone from the
// config) is withdrawn. When the table cannot be read nothing changes.
func (a *Announcer) Sync(now time.Time, want []VIP, attached bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	have, err := a.routes.List()
	if err != nil {
		a.fail(err)
		return fmt.Errorf("announce: %w", err)
	}
	installed := make(map[netip.Addr]bool, len(have))
	for _, v := range have {
		installed[v] = true
	}
	var errs []error
	seen := make(map[netip.Addr]bool, len(want))
	for _, w := range want {
		seen[w.Addr] = true
		reason := ReasonServing
		switch {
		case a.node == Draining:
			reason = ReasonDraining
		case a.node == Drained:
			reason = ReasonDrained
		case !attached:
			reason = ReasonDetached
		case !w.Usable:
			reason = ReasonNoBackend
		}
		on := reason == ReasonServing
		st, ok := a.vips[w.Addr]
		if !ok {
			st = &vipState{since: now, announced: installed[w.Addr], reason: reason}
			a.vips[w.Addr] = st
		}
		st.services = slices.Clone(w.Services)
		if err := a.set(w.Addr, on, installed[w.Addr]); err != nil {
			errs = append(errs, err)
			continue
		}
		if st.announced != on || st.reason != reason {
			if st.announced != on {
				st.since = now
				a.log.Info("vip "+map[bool]string{true: "announced", false: "withdrawn"}[on], "vip", w.Addr.String(), "reason", reason)
			}
			st.announced, st.reason = on, reason
		}
		if a.metrics != nil {
			a.metrics.VIPAnnounced(w.Addr, on)
		}
	}
	for _, v := range have {
		if seen[v] {
			continue
		}
		if err := a.set(v, false, true); err != nil {
			errs = append(errs, err)
			continue
		}
		a.log.Info("vip withdrawn", "vip", v.String(), "reason", ReasonUnknownVIP)
	}
	for v := range a.vips {
		if !seen[v] {
			delete(a.vips, v)
			if a.metrics != nil {
				a.metrics.ForgetVIP(v)
			}
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	a.lastErr = ""
	return nil
}

// set makes the route of vip present (on) or absent; installed is whether
// it is there now. Called with mu held.
func (a *Announcer) set(vip netip.Addr, on, installed bool) error {
	switch {
	case on && !installed:
		if err := a.routes.Add(vip); err != nil {
			a.fail(err)
			return err
		}
		a.changed("announce")
	case !on && installed:
		if err := a.routes.Delete(vip); err != nil {
			a.fail(err)
			return err
		}
		a.changed("withdraw")
	}
	return nil
}

func (a *Announcer) changed(action string) {
	if a.metrics != nil {
		a.metrics.RouteChange(action)
	}
}

func (a *Announcer) fail(err error) {
	a.lastErr = err.Error()
	a.log.Warn("route operation failed, retried on the next tick", "err", err)
	if a.metrics != nil {
		a.metrics.RouteError()
	}
}

// Drain starts a drain: the next Sync withdraws every VIP. The node is
// drained once it has seen no packet for quiet (see Observe), or at
// now+timeout. A drain already running keeps its start and gets the new
// deadline and quiet period.
func (a *Announcer) Drain(now time.Time, timeout, quiet time.Duration) error {
	if timeout <= 0 || quiet <= 0 {
		return errors.New("drain timeout and quiet period must be greater than 0")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.node == Serving {
		a.drain = drainState{Started: now}
	}
	a.drain.Deadline = now.Add(timeout)
	a.drain.Quiet = quiet
	if a.node != Drained {
		a.node = Draining
	}
	a.log.Info("node drain", "state", a.node.String(), "deadline", a.drain.Deadline, "quiet", quiet)
	a.reportNode()
	return a.saveDrain()
}

// Undrain ends a drain: the next Sync announces again what is usable.
func (a *Announcer) Undrain() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.node == Serving {
		return nil
	}
	a.node = Serving
	a.drain = drainState{}
	a.log.Info("node undrained: announcing again")
	a.reportNode()
	return a.saveDrain()
}

// Observe moves a drain on with what the flow watcher saw at `at`: idle
// is how long ago the node forwarded the last packet of any flow (flows
// false: there is no flow at all). It reports whether the node just
// became drained.
func (a *Announcer) Observe(now, at time.Time, idle time.Duration, flows bool) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.node != Draining {
		return false
	}
	d := &a.drain
	// A count taken before the withdrawal plus quiet says nothing about
	// flows the router may still have sent.
	quietSince := d.Started.Add(d.Quiet)
	cause := ""
	switch {
	case !at.Before(quietSince) && (!flows || idle >= d.Quiet):
		cause = "quiet"
	case !now.Before(d.Deadline):
		cause = "deadline"
	default:
		return false
	}
	a.node = Drained
	d.DrainedAt, d.Cause = now, cause
	a.log.Info("node drained", "cause", cause, "took", now.Sub(d.Started).Round(time.Millisecond))
	a.reportNode()
	if err := a.saveDrain(); err != nil {
		a.log.Warn("saving the drain failed", "err", err)
	}
	return true
}

// Status returns the node's state and every VIP's, in address order.
func (a *Announcer) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := Status{Node: a.node, LastError: a.lastErr, Sessions: slices.Clone(a.sessions), SessionsError: a.sessionsErr}
	if a.node != Serving {
		st.DrainStarted, st.DrainDeadline, st.DrainQuiet = a.drain.Started, a.drain.Deadline, a.drain.Quiet
		st.DrainedAt, st.DrainCause = a.drain.DrainedAt, a.drain.Cause
	}
	for v, s := range a.vips {
		st.VIPs = append(st.VIPs, VIPStatus{Addr: v, Services: slices.Clone(s.services), Announced: s.announced, Reason: s.reason, Since: s.since})
	}
	slices.SortFunc(st.VIPs, func(x, y VIPStatus) int { return x.Addr.Compare(y.Addr) })
	return st
}

// NextDeadline is the running drain's deadline (zero: none).
func (a *Announcer) NextDeadline() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.node != Draining {
		return time.Time{}
	}
	return a.drain.Deadline
}

func (a *Announcer) reportNode() {
	if a.metrics != nil {
		a.metrics.NodeState(a.node.String())
	}
}

// loadDrain reads a saved drain (ok false: none, or unreadable: logged).
func (a *Announcer) loadDrain() (drainState, bool) {
	if a.stateFile == "" {
		return drainState{}, false
	}
	b, err := os.ReadFile(a.stateFile)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			a.log.Warn("reading the node state failed; not draining", "file", a.stateFile, "err", err)
		}
		return drainState{}, false
	}
	var d drainState
	if err := json.Unmarshal(b, &d); err != nil || d.Started.IsZero() {
		a.log.Warn("node state file unreadable; not draining", "file", a.stateFile, "err", err)
		return drainState{}, false
	}
	return d, true
}

// saveDrain writes the drain (or removes the file when serving),
// atomically. Called with mu held.
func (a *Announcer) saveDrain() error {
	if a.stateFile == "" {
		return nil
	}
	if a.node == Serving {
		if err := os.Remove(a.stateFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove node state: %w", err)
		}
		return nil
	}
	b, err := json.Marshal(a.drain)
	if err != nil {
		return fmt.Errorf("encode node state: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(a.stateFile), 0o700); err != nil {
		return fmt.Errorf("node state directory: %w", err)
	}
	tmp := a.stateFile + ".tmp"
	if err := os.WriteFile(tmp, append(bytes.TrimSpace(b), '\n'), 0o600); err != nil {
		return fmt.Errorf("write node state: %w", err)
	}
	if err := os.Rename(tmp, a.stateFile); err != nil {
		return fmt.Errorf("write node state: %w", err)
	}
	return nil
}

// RefreshSessions reads BIRD's BGP sessions (status, metrics). It does
// I/O: call it without holding the agent's lock. A failure is kept for
// status and logged once until the next success.
func (a *Announcer) RefreshSessions(ctx context.Context) {
	if a.birdSocket == "" {
		return
	}
	sessions, err := BIRDSessions(ctx, a.birdSocket)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		if a.sessionsErr == "" {
			a.log.Warn("reading BIRD's sessions failed (status and metrics show none)", "socket", a.birdSocket, "err", err)
		}
		a.sessionsErr = err.Error()
		sessions = nil
	} else {
		a.sessionsErr = ""
	}
	if a.metrics != nil {
		now := make(map[string]bool, len(sessions))
		for _, s := range sessions {
			now[s.Name] = true
			a.metrics.SessionUp(s.Name, s.Up())
		}
		for _, s := range a.sessions {
			if !now[s.Name] {
				a.metrics.ForgetSession(s.Name)
			}
		}
	}
	for _, s := range sessions {
		if i := slices.IndexFunc(a.sessions, func(o Session) bool { return o.Name == s.Name }); i >= 0 && a.sessions[i].Up() != s.Up() {
			a.log.Info("bgp session "+map[bool]string{true: "up", false: "down"}[s.Up()], "session", s.Name, "state", s.State, "info", s.Info)
		}
	}
	a.sessions = sessions
}
