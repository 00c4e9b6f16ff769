package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicelb/sluice/userspace/datapath"
)

// Stats is what the collector reads from the data path at scrape time;
// datapath.Map satisfies it. It is called from the scraping goroutine,
// concurrently with the agent: datapath.Real (every read is a syscall on a
// map) and datapath.Fake (locked) are safe for that.
type Stats interface {
	ServiceStats(id uint32) (datapath.ServiceStats, error)
	BackendStats(slot uint32) (datapath.BackendStats, error)
	GlobalStats() (datapath.GlobalStats, error)
	Flows(fn func(datapath.Flow) bool) error
	Attachments() []datapath.Attachment
}

var _ Stats = datapath.Map(nil)

// ServiceRef names a service.
type ServiceRef struct {
	Name string
	// ID is the data path service id; 0 for a service that is not in the
	// data path (an http service), which gets no data path metrics.
	ID uint32
	// Backends is the number of distinct backends in the service's Maglev
	// table.
	Backends int
}

// BackendRef names one address of a pool.
type BackendRef struct {
	Pool    string
	Address string // ip:port
	// Slot is the data path backend slot; 0 for an address without one
	// (a pool only http services use), which gets only its state.
	Slot uint32
	// Gen is the slot's generation: flows pinned to an older generation of
	// the slot belong to a removed address and are not counted for this
	// one. 0 counts every flow of the slot.
	Gen uint32
	// State is the address's lifecycle state: active, draining, ejected or
	// removed (pool.State.String()).
	State string
	// DrainDeadline is when a draining address is removed at the latest;
	// zero when not draining.
	DrainDeadline time.Time
}

// Topology is implemented by the agent: it maps data path ids to names and
// lists every address of every pool with its state. Called at scrape time,
// concurrently with the agent's own work.
type Topology interface {
	Services() []ServiceRef
	Backends() []BackendRef
	// FlowCounts are the flows the agent counted on its last walk of the
	// conntrack map, so a scrape does not walk it once more; ok false
	// (nothing counted yet) makes the collector walk the map itself.
	FlowCounts() (c FlowCounts, ok bool)
}

// FlowCounts are live flows counted by whoever already walks the
// conntrack map.
type FlowCounts struct {
	ByService map[uint32]int // service id -> live flows
	BySlot    map[uint32]int // backend slot -> live flows (current generation)
	Total     int            // forward entries seen, live or expired
}

// seriesStates are the states sluice_backend_state always has a series for
// (0 or 1), in this order; the label is the state's own String().
var seriesStates = [...]datapath.BackendState{datapath.BackendActive, datapath.BackendDraining, datapath.BackendEjected, datapath.BackendRemoved}

// collector exports the data path's counters, read at scrape time, and
// counts its own failures to read them.
type collector struct {
	dp       Stats
	topo     Topology
	capacity uint32

	svcPackets, svcBytes, svcNewFlows, svcRSTs, svcDrops *prometheus.Desc
	svcFragments, svcSNATFailures, svcFlows, svcBackends *prometheus.Desc
	beState, beDrainDeadline                             *prometheus.Desc
	bePackets, beBytes, beNewFlows, beFlows              *prometheus.Desc
	ctFlows, ctCapacity                                  *prometheus.Desc
	passed, replies, ctUpdateFailures, rstSent           *prometheus.Desc
	icmpTranslated, beFragments, rstLimited              *prometheus.Desc
	confirmed, reverseRecreated, fragNeeded, synackDrops *prometheus.Desc
	repliesWithoutFlow, halfOpenOverwritten              *prometheus.Desc
	xdpAttached, xdpFallback                             *prometheus.Desc
	scrapeErrorsDesc                                     *prometheus.Desc

	mu           sync.Mutex // one scrape at a time: a flow walk is not cheap
	scrapeErrors uint64
}

// NewCollector returns the data path collector: dp's counters named
// through topo, read at scrape time. capacity is the conntrack map's size
// (sluice_conntrack_capacity). Register it on Metrics.Registry once the
// agent that implements topo exists (Options.DataPath does the same for
// a topology known before New).
func NewCollector(dp Stats, topo Topology, capacity uint32) prometheus.Collector {
	return newCollector(dp, topo, capacity)
}

func newCollector(dp Stats, topo Topology, capacity uint32) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("sluice_"+name, help, labels, nil)
	}
	return &collector{
		dp: dp, topo: topo, capacity: capacity,

		svcPackets:      d("service_packets_total", "Packets of a service's flows, both directions.", "service"),
		svcBytes:        d("service_bytes_total", "Bytes of a service's flows, both directions.", "service"),
		svcNewFlows:     d("service_new_flows_total", "New flows a service's Maglev table placed.", "service"),
		svcRSTs:         d("service_rsts_total", "TCP packets answered with an RST, by reason (no_backend, removed_backend, nat_conflict).", "service", "reason"),
		svcDrops:        d("service_udp_drops_total", "UDP packets dropped, by reason (no_backend, removed_backend, nat_conflict).", "service", "reason"),
		svcFragments:    d("service_fragments_total", "Fragments to a service's VIP, dropped (they cannot be NATed).", "service"),
		svcSNATFailures: d("service_snat_failures_total", "New snat flows refused for want of a free source port.", "service"),
		svcFlows:        d("service_active_flows", "Live (not expired) conntrack flows of a service.", "service"),
		svcBackends:     d("service_backends", "Backends in a service's Maglev table.", "service"),

		beState:         d("backend_state", "1 for the state an address of a pool is in, 0 for the others.", "pool", "address", "state"),
		beDrainDeadline: d("backend_drain_deadline_seconds", "Unix time at which a draining address is removed at the latest.", "pool", "address"),
		bePackets:       d("backend_packets_total", "Packets forwarded to or from an address.", "pool", "address"),
		beBytes:         d("backend_bytes_total", "Bytes forwarded to or from an address.", "pool", "address"),
		beNewFlows:      d("backend_new_flows_total", "New flows placed on an address.", "pool", "address"),
		beFlows:         d("backend_active_flows", "Live (not expired) conntrack flows pinned to an address.", "pool", "address"),

		ctFlows:    d("conntrack_flows", "Flows in conntrack and the half-open table (one entry each), live or expired."),
		ctCapacity: d("conntrack_capacity", "Size of the conntrack map in entries (one per confirmed flow)."),

		passed:              d("passed_packets_total", "Packets handed to the kernel untouched or after rewriting, by reason (not_ours, no_neighbour, fib_failure, malformed, ttl_exceeded, too_big).", "reason"),
		xdpAttached:         d("xdp_attached", "1 per interface the XDP program is attached to, with its mode: native, or generic (the slow skb path).", "interface", "mode"),
		xdpFallback:         d("xdp_generic_fallbacks", "Interfaces where xdp_mode auto fell back to generic mode because the driver refused native XDP (0 is what you want)."),
		fragNeeded:          d("frag_needed_sent_total", "Packets too big for the next hop's MTU with DF set, answered with ICMP fragmentation needed quoting what the sender sent."),
		replies:             d("replies_translated_total", "Backend replies reverse-NATed."),
		ctUpdateFailures:    d("conntrack_update_failures_total", "Conntrack map updates that failed in the data path."),
		rstSent:             d("rst_sent_total", "TCP RSTs sent by the data path."),
		confirmed:           d("flows_confirmed_total", "Half-open flows the backend confirmed (its first answer after the handshake, or any UDP answer), moved into conntrack."),
		synackDrops:         d("synack_no_flow_drops_total", "SYN-ACKs from a backend's service port for a VIP flow sluice no longer knows, whose endpoint serves several nat services (or none): dropped so the backend's address never reaches the client; the client retransmits its SYN."),
		reverseRecreated:    d("reverse_entries_recreated_total", "snat flows' reverse entries that LRU evicted, re-created from the flow's entry."),
		halfOpenOverwritten: d("halfopen_overwritten_total", "live IPv4 half-open flows whose slot in the direct-mapped half-open table another new flow took; each is placed by Maglev again on its next packet (flood pressure on the table)."),
		repliesWithoutFlow:  d("replies_without_flow_total", "nat replies translated with no flow entry (evicted, or the client's packets went through another node), from the one nat service the backend's endpoint serves."),
		rstLimited:          d("rst_rate_limited_total", "RSTs not sent because the per-CPU RST rate limit was reached (the packet was dropped)."),
		beFragments:         d("backend_fragments_dropped_total", "Fragments from a backend's address, dropped: never passed on un-translated."),
		icmpTranslated:      d("icmp_translated_total", "ICMP errors about tracked flows (fragmentation needed, unreachable, time exceeded) rewritten and forwarded to the other side."),

		scrapeErrorsDesc: d("datapath_scrape_errors_total", "Data path reads that failed while collecting metrics."),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.svcPackets, c.svcBytes, c.svcNewFlows, c.svcRSTs, c.svcDrops,
		c.svcFragments, c.svcSNATFailures, c.svcFlows, c.svcBackends,
		c.beState, c.beDrainDeadline, c.bePackets, c.beBytes, c.beNewFlows, c.beFlows,
		c.ctFlows, c.ctCapacity,
		c.passed, c.replies, c.ctUpdateFailures, c.rstSent, c.icmpTranslated, c.beFragments, c.rstLimited, c.confirmed, c.reverseRecreated, c.synackDrops, c.repliesWithoutFlow, c.halfOpenOverwritten, c.fragNeeded, c.xdpAttached, c.xdpFallback,
		c.scrapeErrorsDesc,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	var failed uint64

	var services []ServiceRef
	var backends []BackendRef
	if c.topo != nil {
		services = dedupServices(c.topo.Services())
		backends = dedupBackends(c.topo.Backends())
	}
	flows, flowsOK := c.countFlows(backends)
	if !flowsOK {
		failed++
	}
	if c.capacity > 0 {
		gauge(c.ctCapacity, float64(c.capacity))
	}
	if flowsOK {
		gauge(c.ctFlows, float64(flows.Total))
	}

	for _, s := range services {
		if s.ID == 0 {
			continue
		}
		gauge(c.svcBackends, float64(s.Backends), s.Name)
		if flowsOK {
			gauge(c.svcFlows, float64(flows.ByService[s.ID]), s.Name)
		}
		st, err := c.dp.ServiceStats(s.ID)
		if err != nil {
			failed++
			continue
		}
		counter(c.svcPackets, st.Packets, s.Name)
		counter(c.svcBytes, st.Bytes, s.Name)
		counter(c.svcNewFlows, st.NewFlows, s.Name)
		counter(c.svcRSTs, st.RSTNoBackend, s.Name, "no_backend")
		counter(c.svcRSTs, st.RSTRemovedBackend, s.Name, "removed_backend")
		counter(c.svcDrops, st.DropNoBackend, s.Name, "no_backend")
		counter(c.svcDrops, st.DropRemovedBackend, s.Name, "removed_backend")
		counter(c.svcRSTs, st.RSTNATConflict, s.Name, "nat_conflict")
		counter(c.svcDrops, st.DropNATConflict, s.Name, "nat_conflict")
		counter(c.svcFragments, st.Fragments, s.Name)
		counter(c.svcSNATFailures, st.SNATFailures, s.Name)
	}

	for _, b := range backends {
		known := false
		for _, state := range seriesStates {
			st := state.String()
			v := 0.0
			if b.State == st {
				v, known = 1, true
			}
			gauge(c.beState, v, b.Pool, b.Address, st)
		}
		if !known && b.State != "" {
			gauge(c.beState, 1, b.Pool, b.Address, b.State)
		}
		if !b.DrainDeadline.IsZero() {
			gauge(c.beDrainDeadline, float64(b.DrainDeadline.UnixMilli())/1e3, b.Pool, b.Address)
		}
		if b.Slot == 0 {
			continue
		}
		if flowsOK {
			gauge(c.beFlows, float64(flows.BySlot[b.Slot]), b.Pool, b.Address)
		}
		st, err := c.dp.BackendStats(b.Slot)
		if err != nil {
			failed++
			continue
		}
		counter(c.bePackets, st.Packets, b.Pool, b.Address)
		counter(c.beBytes, st.Bytes, b.Pool, b.Address)
		counter(c.beNewFlows, st.NewFlows, b.Pool, b.Address)
	}

	fallbacks := 0
	for _, a := range c.dp.Attachments() {
		gauge(c.xdpAttached, 1, a.Interface, a.Mode)
		if a.Fallback {
			fallbacks++
		}
	}
	gauge(c.xdpFallback, float64(fallbacks))

	if g, err := c.dp.GlobalStats(); err != nil {
		failed++
	} else {
		counter(c.passed, g.PassedNotOurs, "not_ours")
		counter(c.passed, g.PassedNoNeigh, "no_neighbour")
		counter(c.passed, g.FIBFailures, "fib_failure")
		counter(c.passed, g.Malformed, "malformed")
		counter(c.passed, g.PassedTTLExceeded, "ttl_exceeded")
		counter(c.passed, g.PassedTooBig, "too_big")
		counter(c.fragNeeded, g.FragNeededSent)
		counter(c.replies, g.RepliesTranslated)
		counter(c.ctUpdateFailures, g.CTUpdateFailures)
		counter(c.rstSent, g.RSTSent)
		counter(c.icmpTranslated, g.ICMPTranslated)
		counter(c.beFragments, g.BackendFragments)
		counter(c.rstLimited, g.RSTRateLimited)
		counter(c.confirmed, g.FlowsConfirmed)
		counter(c.reverseRecreated, g.ReverseRecreated)
		counter(c.synackDrops, g.SYNACKNoFlowDrops)
		counter(c.repliesWithoutFlow, g.RepliesWithoutFlow)
		counter(c.halfOpenOverwritten, g.HalfOpenOverwritten)
	}

	c.scrapeErrors += failed
	counter(c.scrapeErrorsDesc, c.scrapeErrors)
}

// countFlows counts live flows per service and per backend slot, from the
// topology's own counts when it has them, else in one walk of the
// conntrack map. A flow pinned to an older generation of a slot is not
// counted for the slot's current address.
func (c *collector) countFlows(backends []BackendRef) (FlowCounts, bool) {
	if counts, ok := c.topo.FlowCounts(); ok {
		return counts, true
	}
	gens := make(map[uint32]uint32, len(backends))
	for _, b := range backends {
		if b.Slot != 0 {
			gens[b.Slot] = b.Gen
		}
	}
	out := FlowCounts{ByService: make(map[uint32]int), BySlot: make(map[uint32]int)}
	err := c.dp.Flows(func(f datapath.Flow) bool {
		out.Total++
		if f.Expired {
			return true
		}
		out.ByService[f.ServiceID]++
		if gen, ok := gens[f.BackendSlot]; ok && (gen == 0 || gen == f.BackendGen) {
			out.BySlot[f.BackendSlot]++
		}
		return true
	})
	return out, err == nil
}

// dedupServices drops services whose name was already seen: two series
// with the same labels would fail the whole scrape.
func dedupServices(in []ServiceRef) []ServiceRef {
	seen := make(map[string]bool, len(in))
	out := in[:0:0]
	for _, s := range in {
		if seen[s.Name] {
			continue
		}
		seen[s.Name] = true
		out = append(out, s)
	}
	return out
}

// dedupBackends drops repeated pool/address pairs.
func dedupBackends(in []BackendRef) []BackendRef {
	type key struct{ pool, addr string }
	seen := make(map[key]bool, len(in))
	out := in[:0:0]
	for _, b := range in {
		k := key{b.Pool, b.Address}
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, b)
	}
	return out
}
