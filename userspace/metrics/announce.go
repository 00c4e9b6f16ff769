package metrics

import (
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
)

// Node states of sluice_node_state (announce.NodeState's names).
var nodeStates = []string{"serving", "draining", "drained"}

// Announce holds the metrics of the VIP announcements (userspace/announce
// calls it; it satisfies announce.Metrics). Its methods are safe for
// concurrent use. Without a bgp section nothing is announced and only
// the counters, at 0, are exported.
type Announce struct {
	announced *prometheus.GaugeVec
	changes   *prometheus.CounterVec
	errors    prometheus.Counter
	node      *prometheus.GaugeVec
	sessions  *prometheus.GaugeVec
}

func newAnnounce() *Announce {
	a := &Announce{
		announced: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_vip_announced",
			Help: "1 while the VIP's route is in the table the node's BGP daemon exports (announced), 0 while withdrawn.",
		}, []string{"vip"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_vip_route_changes_total",
			Help: "VIP routes added (announce) or deleted (withdraw) by the agent.",
		}, []string{"action"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_vip_route_errors_total",
			Help: "Route operations on the VIP table that failed (retried on the next tick).",
		}),
		node: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_node_state",
			Help: "1 for the node's drain state (serving, draining, drained), 0 for the others; absent without a bgp section.",
		}, []string{"state"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_bgp_session_up",
			Help: "1 while the BGP session of the node's BIRD is established, 0 otherwise, as read from BIRD's control socket every tick.",
		}, []string{"session"}),
	}
	a.changes.WithLabelValues("announce")
	a.changes.WithLabelValues("withdraw")
	return a
}

// Describe implements prometheus.Collector.
func (a *Announce) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range a.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (a *Announce) Collect(ch chan<- prometheus.Metric) {
	for _, c := range a.collectors() {
		c.Collect(ch)
	}
}

func (a *Announce) collectors() []prometheus.Collector {
	return []prometheus.Collector{a.announced, a.changes, a.errors, a.node, a.sessions}
}

// VIPAnnounced sets sluice_vip_announced of vip.
func (a *Announce) VIPAnnounced(vip netip.Addr, announced bool) {
	v := 0.0
	if announced {
		v = 1
	}
	a.announced.WithLabelValues(vip.String()).Set(v)
}

// ForgetVIP deletes the series of a VIP gone from the config.
func (a *Announce) ForgetVIP(vip netip.Addr) {
	a.announced.DeleteLabelValues(vip.String())
}

// RouteChange counts a route added ("announce") or deleted ("withdraw").
func (a *Announce) RouteChange(action string) { a.changes.WithLabelValues(action).Inc() }

// RouteError counts a failed route operation.
func (a *Announce) RouteError() { a.errors.Inc() }

// NodeState sets sluice_node_state: 1 for state, 0 for the others.
func (a *Announce) NodeState(state string) {
	for _, s := range nodeStates {
		v := 0.0
		if s == state {
			v = 1
		}
		a.node.WithLabelValues(s).Set(v)
	}
}

// SessionUp sets sluice_bgp_session_up of a session of BIRD.
func (a *Announce) SessionUp(session string, up bool) {
	v := 0.0
	if up {
		v = 1
	}
	a.sessions.WithLabelValues(session).Set(v)
}

// ForgetSession deletes the series of a session BIRD no longer has.
func (a *Announce) ForgetSession(session string) { a.sessions.DeleteLabelValues(session) }
