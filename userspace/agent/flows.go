package agent

import (
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/sluicelb/sluice/userspace/datapath"
)

// slotGen is one incarnation of a backend slot: flows pinned to another
// generation of the slot belong to an address that is gone.
type slotGen struct{ slot, gen uint32 }

// flowID identifies a conntrack flow across scans.
type flowID struct {
	client, vip netip.AddrPort
	proto       datapath.Proto
}

// flowCounts are the live flows of one walk of the conntrack map.
type flowCounts struct {
	bySlot map[slotGen]int // per slot incarnation
	bySvc  map[uint32]int  // per service id
	total  int             // forward entries seen, expired ones too
	// live counts the flows not expired; minIdle is the shortest idle
	// time among them: how long ago the node forwarded its last packet
	// of any flow (a node drain ends when it is long enough).
	live    int
	minIdle time.Duration
	at      time.Time // zero: never counted
}

// connectFailure is what the data path saw go wrong with new connections
// to one backend slot since the previous scan.
type connectFailure struct {
	slot slotGen
	// stuck flows have had their SYN unanswered for synStuckAfter right
	// now; unanswered counts those not reported before (each flow once).
	stuck, unanswered int
	// refused SYNs were answered with an RST since the previous scan.
	refused int
	// answered handshakes are the slot's half-open flows whose SYN the
	// backend answered (SYN-ACK seen, the client's ACK not yet): a backend
	// that answers most of its SYNs is alive, and its unanswered ones are
	// lost to a flood (spoofed clients, SYN-ACKs dropped on the way), not
	// its connect failures.
	answered int
}

// flowWatcher owns everything the agent learns by reading the data path's
// flows: the flow counts (status, drains, metrics), the conntrack garbage
// collection (expired flows every scan, orphaned reverse entries every
// reverseGCEvery), and the connect failures (stuck SYNs, refused
// connects) it turns into events. It has its own lock and never calls the
// agent: the conntrack walk holds no other lock.
type flowWatcher struct {
	dp        datapath.Map
	log       *slog.Logger
	errs      *mapErrors
	reverseGC func() (int, error) // nil: the data path cannot
	gcCount   func(n int)         // the GC metric; nil: none

	mu     sync.Mutex
	counts flowCounts
	// stuckSeen are the stuck flows already reported.
	stuckSeen map[flowID]bool
	// blind are the services (ids) whose backends answer clients without
	// passing this node (mode dsr): no SYN-ACK is ever seen, so a SYN
	// left in syn-sent says nothing about the backend and is not judged.
	blind map[uint32]bool
	// refusals are the ConnectRefused counters of active slots at the
	// last scan.
	refusals      map[uint32]refusalMark
	gcDeleted     uint64
	lastReverseGC time.Time
}

// refusalMark is a slot's ConnectRefused counter at the last scan.
type refusalMark struct {
	gen   uint32
	count uint64
}

func newFlowWatcher(dp datapath.Map, log *slog.Logger, errs *mapErrors, reverseGC func() (int, error), gcCount func(int)) *flowWatcher {
	return &flowWatcher{
		dp: dp, log: log, errs: errs, reverseGC: reverseGC, gcCount: gcCount,
		stuckSeen: make(map[flowID]bool),
		refusals:  make(map[uint32]refusalMark),
	}
}

// scan walks the conntrack map once: it counts live flows, deletes
// expired ones (up to maxGCPerTick), collects orphaned reverse entries
// when due, and returns the connect failures since the previous scan of
// the given active slots. ok false: the map could not be read, the
// counts are the previous ones and no failure is reported.
func (w *flowWatcher) scan(now time.Time, active []slotGen, blind map[uint32]bool) (_ flowCounts, _ []connectFailure, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.blind = blind
	failures := make(map[slotGen]*connectFailure)
	fail := func(sg slotGen) *connectFailure {
		f, ok := failures[sg]
		if !ok {
			f = &connectFailure{slot: sg}
			failures[sg] = f
		}
		return f
	}
	prev := w.counts
	if !w.countLocked(now, fail) {
		w.collectReverse(now)
		return w.counts, nil, false
	}
	// A refused connect leaves its flow in the map (closing, for
	// tcp_closing), so past its first read (the baseline of a slot
	// generation) only a slot with a flow now or at the previous scan can
	// have new refusals: an idle pool costs no counter read. A refusal
	// whose entry was evicted before a scan saw it is counted with the
	// slot's next flow.
	for _, sg := range active {
		mark, read := w.refusals[sg.slot]
		if read && mark.gen == sg.gen && w.counts.bySlot[sg] == 0 && prev.bySlot[sg] == 0 {
			continue
		}
		if r := w.newRefusals(sg); r > 0 {
			fail(sg).refused = r
		}
	}
	w.collectReverse(now)
	out := make([]connectFailure, 0, len(failures))
	for _, f := range failures {
		out = append(out, *f)
	}
	return w.counts, out, true
}

// current returns flow counts no older than maxAge, walking the map again
// when they are (status right after a drain); ok false: none could be
// read.
func (w *flowWatcher) current(now time.Time, maxAge time.Duration) (flowCounts, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.counts.at.IsZero() && now.Sub(w.counts.at) <= maxAge {
		return w.counts, true
	}
	// Stuck flows found here are reported by the next scan.
	ok := w.countLocked(now, nil)
	return w.counts, ok && !w.counts.at.IsZero()
}

// last returns the counts of the last walk (at zero: none yet).
func (w *flowWatcher) last() flowCounts {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.counts
}

// countLocked walks the map: counts, GC of expired flows, and stuck SYNs
// handed to fail (nil: not reported now). Called with mu held.
func (w *flowWatcher) countLocked(now time.Time, fail func(slotGen) *connectFailure) bool {
	bySlot := make(map[slotGen]int)
	bySvc := make(map[uint32]int)
	stuckSeen := make(map[flowID]bool)
	var expired []datapath.Flow
	total, live := 0, 0
	var minIdle time.Duration
	err := w.dp.Flows(func(f datapath.Flow) bool {
		total++
		if f.Expired {
			if len(expired) < maxGCPerTick {
				expired = append(expired, f)
			}
			return true
		}
		if live == 0 || f.Idle < minIdle {
			minIdle = f.Idle
		}
		live++
		bySvc[f.ServiceID]++
		sg := slotGen{f.BackendSlot, f.BackendGen}
		bySlot[sg]++
		if f.State == datapath.FlowSynRecv && f.HalfOpen && fail != nil {
			fail(sg).answered++
		}
		if f.State == datapath.FlowSynSent && f.Idle >= synStuckAfter && !w.blind[f.ServiceID] {
			id := flowID{f.Client, f.VIP, f.Proto}
			if fail == nil {
				stuckSeen[id] = w.stuckSeen[id]
				return true
			}
			stuckSeen[id] = true
			cf := fail(sg)
			cf.stuck++
			if !w.stuckSeen[id] {
				cf.unanswered++
			}
		}
		return true
	})
	if err != nil {
		w.errs.report("Flows", err, "reading conntrack failed")
		return false
	}
	w.counts = flowCounts{bySlot: bySlot, bySvc: bySvc, total: total, live: live, minIdle: minIdle, at: now}
	w.stuckSeen = stuckSeen
	deleted := 0
	for _, f := range expired {
		if err := w.dp.DeleteFlow(f); err != nil {
			w.errs.report("DeleteFlow", err, "deleting an expired flow failed", "client", f.Client.String(), "vip", f.VIP.String())
			break
		}
		deleted++
	}
	w.deleted(deleted)
	return true
}

func (w *flowWatcher) deleted(n int) {
	if n <= 0 {
		return
	}
	w.gcDeleted += uint64(n)
	if w.gcCount != nil {
		w.gcCount(n)
	}
}

// newRefusals is how many SYNs to a slot were answered with an RST since
// its counter was last read (0 on the first read of a slot generation, or
// when the counter cannot be read). Called with mu held.
func (w *flowWatcher) newRefusals(sg slotGen) int {
	st, err := w.dp.BackendStats(sg.slot)
	if err != nil {
		w.errs.report("BackendStats", err, "reading backend stats failed", "slot", sg.slot)
		return 0
	}
	prev, seen := w.refusals[sg.slot]
	w.refusals[sg.slot] = refusalMark{gen: sg.gen, count: st.ConnectRefused}
	if !seen || prev.gen != sg.gen || st.ConnectRefused < prev.count {
		return 0
	}
	return int(st.ConnectRefused - prev.count)
}

// collectReverse removes orphaned reverse conntrack entries every
// reverseGCEvery, when the data path can. Called with mu held.
func (w *flowWatcher) collectReverse(now time.Time) {
	if w.reverseGC == nil || now.Sub(w.lastReverseGC) < reverseGCEvery {
		return
	}
	w.lastReverseGC = now
	n, err := w.reverseGC()
	if err != nil {
		w.errs.report("GCReverse", err, "collecting orphaned reverse conntrack entries failed")
		return
	}
	if n > 0 {
		w.deleted(n)
		w.log.Debug("orphaned reverse conntrack entries removed", "count", n)
	}
}
