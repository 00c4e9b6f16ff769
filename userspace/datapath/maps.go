package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/bpf"
)

func svcKey(k ServiceKey) bpf.SluiceSvcKey {
	return bpf.SluiceSvcKey{Vip: be32(k.VIP), Port: be16(k.Port), Proto: uint8(k.Proto)}
}

// Services returns every service in the data path.
func (r *Real) Services() (map[ServiceKey]Service, error) {
	out := map[ServiceKey]Service{}
	var k bpf.SluiceSvcKey
	var v bpf.SluiceSvcValue
	it := r.services.Iterate()
	for it.Next(&k, &v) {
		key := ServiceKey{VIP: addrFromBE32(k.Vip), Port: portFromBE16(k.Port), Proto: Proto(k.Proto)}
		s := Service{ID: v.Id, Mode: Mode(v.Mode), PoolID: v.PoolId}
		if v.SnatAddr != 0 {
			s.SNATAddr = addrFromBE32(v.SnatAddr)
		}
		out[key] = s
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate services: %w", err)
	}
	if err := r.services6(out); err != nil {
		return nil, err
	}
	return out, nil
}

// SetService creates or replaces a service.
func (r *Real) SetService(k ServiceKey, s Service) error {
	if s.ID == 0 || s.ID >= MaxServices {
		return fmt.Errorf("set service %v:%d: id %d: %w", k.VIP, k.Port, s.ID, ErrOutOfRange)
	}
	if is6(k.VIP) {
		return r.setService6(k, s)
	}
	k.VIP = k.VIP.Unmap()
	if !k.VIP.Is4() {
		return fmt.Errorf("set service %v: not an IP address", k.VIP)
	}
	v := bpf.SluiceSvcValue{Id: s.ID, Mode: uint8(s.Mode), SnatAddr: be32(s.SNATAddr), PoolId: s.PoolID}
	if err := r.services.Put(svcKey(k), v); err != nil {
		return fmt.Errorf("set service %v:%d: %w", k.VIP, k.Port, err)
	}
	if r.addrIdx != nil {
		eps := r.addrIdx.setService(svcKey(k), v)
		for _, ep := range eps {
			if err := r.writeEndpoint(ep); err != nil {
				return fmt.Errorf("set service %v:%d: %w", k.VIP, k.Port, err)
			}
		}
	}
	return r.writeAddr(be32(k.VIP))
}

// DeleteService removes a service and its Maglev table.
func (r *Real) DeleteService(k ServiceKey, id uint32) error {
	if is6(k.VIP) {
		return r.deleteService6(k, id)
	}
	k.VIP = k.VIP.Unmap()
	if err := r.services.Delete(svcKey(k)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete service %v:%d: %w", k.VIP, k.Port, err)
	}
	if r.addrIdx != nil {
		for _, ep := range r.addrIdx.deleteService(svcKey(k)) {
			if err := r.writeEndpoint(ep); err != nil {
				return fmt.Errorf("delete service %v:%d: %w", k.VIP, k.Port, err)
			}
		}
	}
	if err := r.writeAddr(be32(k.VIP)); err != nil {
		return err
	}
	return r.SetTable(id, nil)
}

// Backends returns every non-free backend slot.
func (r *Real) Backends() (map[uint32]Backend, error) {
	out := map[uint32]Backend{}
	var k uint32
	var v bpf.SluiceBackend
	it := r.backends.Iterate()
	for it.Next(&k, &v) {
		if v.State == uint8(BackendFree) && v.Gen == 0 {
			continue
		}
		out[k] = Backend{
			Addr:   netip.AddrPortFrom(addrFromBE32(v.Addr), portFromBE16(v.Port)),
			Gen:    v.Gen,
			State:  BackendState(v.State),
			PoolID: v.PoolId,
		}
		if v.SrcAddr != 0 {
			b := out[k]
			b.Src = addrFromBE32(v.SrcAddr)
			out[k] = b
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate backends: %w", err)
	}
	if err := r.backends6(out); err != nil {
		return nil, err
	}
	return out, nil
}

// SetBackend writes a backend slot.
func (r *Real) SetBackend(slot uint32, b Backend) error {
	if slot == 0 || slot >= MaxBackends {
		return fmt.Errorf("set backend slot %d: %w", slot, ErrOutOfRange)
	}
	orig := b
	// A slot holds a backend of one family: the other family's entry of
	// the slot is written free (an address reused by the other family
	// must not leave its old entry pickable).
	v6 := is6(b.Addr.Addr())
	if r.backends6m != nil {
		if err := r.setBackend6(slot, b, v6); err != nil {
			return err
		}
	}
	if v6 {
		b = Backend{Gen: b.Gen, State: BackendFree, PoolID: b.PoolID}
	} else {
		b.Addr = netip.AddrPortFrom(b.Addr.Addr().Unmap(), b.Addr.Port())
	}
	if b.State != BackendFree && !b.Addr.Addr().Is4() {
		return fmt.Errorf("set backend slot %d: %v is not an IP address", slot, b.Addr)
	}
	v := bpf.SluiceBackend{
		Addr:   be32(b.Addr.Addr()),
		Port:   be16(b.Addr.Port()),
		State:  uint8(b.State),
		Gen:    b.Gen,
		PoolId: b.PoolID,
	}
	if b.Src.Is4() {
		v.SrcAddr = be32(b.Src)
	}
	if err := r.backends.Put(slot, v); err != nil {
		return fmt.Errorf("set backend slot %d: %w", slot, err)
	}
	if r.addrIdx != nil {
		// The slot's old address and endpoint, and its new ones.
		oldAddr, oldEP := r.addrIdx.setSlot(slot, v)
		for _, err := range []error{
			r.writeAddr(oldAddr), r.writeEndpoint(oldEP),
			r.writeAddr(v.Addr), r.writeEndpoint(bpf.SluiceEndpoint{Addr: v.Addr, Port: v.Port}),
		} {
			if err != nil {
				return fmt.Errorf("set backend slot %d: %w", slot, err)
			}
		}
	}
	if v6 {
		b.Addr = orig.Addr
		b.State = orig.State
	}
	if b.State == BackendActive && r.keepNeighbours {
		// Best effort: without it the first packets take the slow path.
		if err := ensureNeighbour(b.Addr.Addr()); err != nil {
			r.log.Warn("cannot keep the backend's next hop resolved", "backend", b.Addr, "err", err)
		}
	}
	return nil
}

// TableSize is the Maglev table size the program was loaded with.
func (r *Real) TableSize() uint32 { return r.tableSize }

// monotonicNow is the clock bpf_ktime_get_coarse_ns reads.
func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts)
	return uint64(ts.Nano())
}

func (r *Real) flowOf(k bpf.SluiceCtKey, v bpf.SluiceCtValue, now uint64) Flow {
	var snat netip.AddrPort
	if v.SaddrNew != 0 {
		snat = netip.AddrPortFrom(addrFromBE32(v.SaddrNew), portFromBE16(v.SportNew))
	}
	return r.flowFrom(
		netip.AddrPortFrom(addrFromBE32(k.Saddr), portFromBE16(k.Sport)),
		netip.AddrPortFrom(addrFromBE32(k.Daddr), portFromBE16(k.Dport)),
		netip.AddrPortFrom(addrFromBE32(v.DaddrNew), portFromBE16(v.DportNew)),
		snat, k.Proto, v.ServiceId, v.BackendId, v.BackendGen, v.State, v.LastSeen, now)
}

// flowFrom is a Flow of either family from its fields, already converted
// from the map's layout (flowOf, flowOf6); idle and expired as of now.
func (r *Real) flowFrom(client, vip, backend, snat netip.AddrPort, proto uint8, svc, slot, gen uint32,
	state uint8, lastSeen, now uint64) Flow {
	f := Flow{
		Client:      client,
		VIP:         vip,
		Proto:       Proto(proto),
		ServiceID:   svc,
		BackendSlot: slot,
		BackendGen:  gen,
		Backend:     backend,
		SNAT:        snat,
		State:       FlowState(state),
	}
	if now > lastSeen {
		f.Idle = time.Duration(now - lastSeen)
	}
	f.Expired = f.Idle > r.timeouts.of(f.State)
	return f
}

// ctBatch is how many conntrack entries one batch lookup syscall reads:
// walking a large table entry by entry costs a syscall per entry, which
// the agent's 1 s tick cannot afford at a few hundred thousand flows.
const ctBatch = 4096

// eachCT calls fn for every entry of conntrack and then for every live
// flow of the half-open table (halfOpen true). An expired half-open slot
// is not a flow (the program treats it as empty and the next flow hashed
// there overwrites it): it is skipped, never collected.
func (r *Real) eachCT(now uint64, fn func(k *bpf.SluiceCtKey, v *bpf.SluiceCtValue, halfOpen bool) bool) error {
	more := true
	err := eachIn(r.conntrack, "conntrack", func(k *bpf.SluiceCtKey, v *bpf.SluiceCtValue) bool {
		more = fn(k, v, false)
		return more
	})
	if err != nil || !more {
		return err
	}
	syn := uint64(r.timeouts.TCPSyn)
	return r.eachHalfOpen(func(_ uint32, s *bpf.SluiceHoSlot) bool {
		if now > s.Val.LastSeen && now-s.Val.LastSeen > syn {
			return true
		}
		return fn(&s.Key, &s.Val, true)
	})
}

// eachIn calls fn for every entry of a conntrack-like map (either
// family's), reading it in batches (one entry at a time on kernels without
// batch lookups for hash maps).
func eachIn[K, V any](m *ebpf.Map, name string, fn func(k *K, v *V) bool) error {
	keys := make([]K, ctBatch)
	vals := make([]V, ctBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			if !fn(&keys[i], &vals[i]) {
				return nil
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if err != nil {
			return fmt.Errorf("batch lookup %s: %w", name, err)
		}
	}
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		if !fn(&k, &v) {
			return nil
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate %s: %w", name, err)
	}
	return nil
}

// Flows calls fn for every flow, confirmed or half-open, IPv4 then
// IPv6.
func (r *Real) Flows(fn func(Flow) bool) error {
	now := monotonicNow()
	more := true
	err := r.eachCT(now, func(k *bpf.SluiceCtKey, v *bpf.SluiceCtValue, halfOpen bool) bool {
		f := r.flowOf(*k, *v, now)
		if halfOpen {
			f.HalfOpen = true
			f.Expired = f.Idle > r.timeouts.TCPSyn
		}
		more = fn(f)
		return more
	})
	if err != nil || !more {
		return err
	}
	_, err = r.flows6(fn)
	return err
}

// DeleteFlow removes a flow from conntrack and the half-open table, with
// an snat flow's reverse entry.
func (r *Real) DeleteFlow(f Flow) error {
	if is6(f.Client.Addr()) {
		return r.deleteFlow6(f)
	}
	fk := bpf.SluiceCtKey{
		Saddr: be32(f.Client.Addr()), Daddr: be32(f.VIP.Addr()),
		Sport: be16(f.Client.Port()), Dport: be16(f.VIP.Port()), Proto: uint8(f.Proto),
	}
	var fv bpf.SluiceCtValue
	switch err := r.conntrack.Lookup(fk, &fv); {
	case err == nil:
		if err := r.deleteReverse(r.snatRev, fk, fv, f); err != nil {
			return err
		}
		if err := r.conntrack.Delete(fk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete flow %v: %w", f.Client, err)
		}
	case !errors.Is(err, ebpf.ErrKeyNotExist):
		return fmt.Errorf("look up flow %v: %w", f.Client, err)
	}
	hv, ok, err := r.halfOpenLookup(&fk)
	if err != nil || !ok {
		return err
	}
	if err := r.deleteReverse(r.snatRevHO, fk, hv, f); err != nil {
		return err
	}
	if err := r.halfOpenDelete(&fk); err != nil {
		return fmt.Errorf("delete flow %v: %w", f.Client, err)
	}
	return nil
}

// deleteReverse deletes the snat reverse entry of flow fv at fk from rev
// (nothing for a nat flow).
func (r *Real) deleteReverse(rev *ebpf.Map, fk bpf.SluiceCtKey, fv bpf.SluiceCtValue, f Flow) error {
	rk, ok := snatReverseKey(fk, fv)
	if !ok || rev == nil {
		return nil
	}
	if err := rev.Delete(rk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete flow %v: reverse entry: %w", f.Client, err)
	}
	return nil
}

// snatReverseKey is the key of the reverse entry of the snat flow fv at
// fk (ok false: a nat flow, which has none).
func snatReverseKey(fk bpf.SluiceCtKey, fv bpf.SluiceCtValue) (bpf.SluiceCtKey, bool) {
	if fv.SaddrNew == 0 {
		return bpf.SluiceCtKey{}, false
	}
	return bpf.SluiceCtKey{Saddr: fv.DaddrNew, Sport: fv.DportNew, Daddr: fv.SaddrNew, Dport: fv.SportNew, Proto: fk.Proto}, true
}

// GCReverse removes snat reverse entries whose flow is gone (from both
// tables) or now points elsewhere (a SYN that picked again), which LRU
// eviction, DeleteFlow and re-picks leave behind; the snat port is free
// again once its reverse entry is gone. It returns how many it removed.
func (r *Real) GCReverse() (int, error) {
	n := 0
	for _, rev := range []*ebpf.Map{r.snatRev, r.snatRevHO} {
		if rev == nil {
			continue
		}
		var orphans []bpf.SluiceCtKey
		var k, fk bpf.SluiceCtKey
		it := rev.Iterate()
		for it.Next(&k, &fk) {
			var fv bpf.SluiceCtValue
			err := r.conntrack.Lookup(fk, &fv)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				var ok bool
				if fv, ok, err = r.halfOpenLookup(&fk); err == nil && !ok {
					err = ebpf.ErrKeyNotExist
				}
			}
			switch {
			case errors.Is(err, ebpf.ErrKeyNotExist):
				orphans = append(orphans, k)
			case err != nil:
			default:
				if want, ok := snatReverseKey(fk, fv); !ok || want != k {
					orphans = append(orphans, k) // another backend or snat port now
				}
			}
		}
		if err := it.Err(); err != nil {
			return n, fmt.Errorf("iterate snat reverse entries: %w", err)
		}
		for _, k := range orphans {
			if err := rev.Delete(k); err == nil {
				n++
			}
		}
	}
	if r.conntrack6 == nil {
		return n, nil
	}
	n6, err := r.gcReverse6()
	return n + n6, err
}

// ServiceStats sums a service's per-CPU counters.
func (r *Real) ServiceStats(id uint32) (ServiceStats, error) {
	var per []bpf.SluiceSvcCounters
	if err := r.svcStats.Lookup(id, &per); err != nil {
		return ServiceStats{}, fmt.Errorf("read stats of service %d: %w", id, err)
	}
	var s ServiceStats
	for _, c := range per {
		s.Packets += c.Packets
		s.Bytes += c.Bytes
		s.NewFlows += c.NewFlows
		s.RSTNoBackend += c.RstNoBackend
		s.RSTRemovedBackend += c.RstRemovedBackend
		s.DropNoBackend += c.DropNoBackend
		s.DropRemovedBackend += c.DropRemovedBackend
		s.Fragments += c.Fragments
		s.SNATFailures += c.SnatFailures
		s.RSTNATConflict += c.RstNatConflict
		s.DropNATConflict += c.DropNatConflict
	}
	return s, nil
}

// BackendStats sums a backend slot's per-CPU counters.
func (r *Real) BackendStats(slot uint32) (BackendStats, error) {
	var per []bpf.SluiceBackendCounters
	if err := r.backendStats.Lookup(slot, &per); err != nil {
		return BackendStats{}, fmt.Errorf("read stats of backend %d: %w", slot, err)
	}
	var s BackendStats
	for _, c := range per {
		s.Packets += c.Packets
		s.Bytes += c.Bytes
		s.NewFlows += c.NewFlows
		s.ConnectRefused += c.ConnectRefused
	}
	return s, nil
}

// GlobalStats sums the global per-CPU counters.
func (r *Real) GlobalStats() (GlobalStats, error) {
	var per []bpf.SluiceGlobalCounters
	if err := r.globalStats.Lookup(uint32(0), &per); err != nil {
		return GlobalStats{}, fmt.Errorf("read global stats: %w", err)
	}
	var s GlobalStats
	for _, c := range per {
		s.PassedNotOurs += c.PassedNotOurs
		s.PassedNoNeigh += c.PassedNoNeigh
		s.FIBFailures += c.FibFailures
		s.Malformed += c.Malformed
		s.RepliesTranslated += c.RepliesTranslated
		s.CTUpdateFailures += c.CtUpdateFailures
		s.RSTSent += c.RstSent
		s.ICMPTranslated += c.IcmpTranslated
		s.PassedTTLExceeded += c.PassedTtlExceeded
		s.BackendFragments += c.BackendFragments
		s.RSTRateLimited += c.RstRateLimited
		s.FlowsConfirmed += c.FlowsConfirmed
		s.ReverseRecreated += c.ReverseRecreated
		s.SYNACKNoFlowDrops += c.SynackNoFlowDrops
		s.FragNeededSent += c.FragNeededSent
		s.PassedTooBig += c.PassedTooBig
		s.RepliesWithoutFlow += c.RepliesWithoutFlow
		s.HalfOpenOverwritten += c.HalfopenOverwritten
	}
	return s, nil
}
