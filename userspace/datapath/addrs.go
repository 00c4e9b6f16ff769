package datapath

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
)

// The addrs map tells the program which addresses are VIPs and which are
// backends, for the packets that carry no ports: IPv4 fragments, which it
// drops and counts instead of passing them on un-translated. backend_ports
// tells it, for a backend's address and service port, which nat services
// a reply from there can belong to (a reply names no VIP). It is derived
// state, kept in step here with services and backends so the agent never
// writes it: a VIP entry while a service uses the address, a backend entry
// while a non-free slot holds it. addrIndex remembers who uses which
// address (so a write costs one map update, not a walk); both are rebuilt
// from the services and backends maps when the data path is opened (an
// upgrade from a version without the map, or a crash between two writes,
// leaves nothing stale).

const (
	addrVIP     = uint8(bpf.SluiceAddrFlagsADDR_VIP)
	addrBackend = uint8(bpf.SluiceAddrFlagsADDR_BACKEND)
	epSNAT      = uint8(bpf.SluiceEpFlagsEP_SNAT)
)

type addrIndex struct {
	services map[uint32]map[bpf.SluiceSvcKey]uint32 // VIP -> its services' keys -> ids
	backends map[uint32]map[uint32]bool             // address -> non-free slots holding it
	ports    map[bpf.SluiceEndpoint]map[uint32]bool // address and port -> non-free slots holding them
	slots    map[uint32]bpf.SluiceBackend           // non-free slot -> what it holds
	// svcs holds every service's value, and svcPools the pools it has
	// had since the data path was opened (its current one and those it
	// left, whose backends may still carry its flows): backend_ports
	// lists a nat service for every endpoint of those pools.
	svcs     map[bpf.SluiceSvcKey]bpf.SluiceSvcValue
	svcPools map[bpf.SluiceSvcKey]map[uint32]bool
	// written is the backend_ports entry last written per endpoint:
	// a write that would not change it is skipped.
	written map[bpf.SluiceEndpoint]bpf.SluiceEpInfo
}

func newAddrIndex() *addrIndex {
	return &addrIndex{
		services: map[uint32]map[bpf.SluiceSvcKey]uint32{},
		backends: map[uint32]map[uint32]bool{},
		ports:    map[bpf.SluiceEndpoint]map[uint32]bool{},
		slots:    map[uint32]bpf.SluiceBackend{},
		svcs:     map[bpf.SluiceSvcKey]bpf.SluiceSvcValue{},
		svcPools: map[bpf.SluiceSvcKey]map[uint32]bool{},
		written:  map[bpf.SluiceEndpoint]bpf.SluiceEpInfo{},
	}
}

// epInfo is the backend_ports entry an endpoint should have (Slots 0:
// none): the nat services whose pools hold one of its slots, sorted by
// VIP, port and protocol (so the bytes do not depend on the order of
// writes), the first len(Nat) of them listed.
func (x *addrIndex) epInfo(ep bpf.SluiceEndpoint) bpf.SluiceEpInfo {
	var e bpf.SluiceEpInfo
	slots := x.ports[ep]
	if len(slots) == 0 {
		return e
	}
	e.Slots = uint32(len(slots))
	pools := map[uint32]bool{}
	for s := range slots {
		pools[x.slots[s].PoolId] = true
	}
	var nat []bpf.SluiceEpService
	for k, v := range x.svcs {
		held := false
		for p := range x.svcPools[k] {
			if pools[p] {
				held = true
				break
			}
		}
		if !held {
			continue
		}
		if Mode(v.Mode) == ModeSNAT {
			e.Flags |= epSNAT
			continue
		}
		if Mode(v.Mode) == ModeDSR {
			// Its backends answer from the VIP straight to the client:
			// no reply of theirs is the node's to translate.
			continue
		}
		nat = append(nat, bpf.SluiceEpService{Vip: k.Vip, Port: k.Port, Proto: k.Proto, Id: v.Id})
	}
	slices.SortFunc(nat, func(a, b bpf.SluiceEpService) int {
		return cmp.Or(cmp.Compare(a.Vip, b.Vip), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto))
	})
	e.NatCount = uint8(min(len(nat), 255))
	copy(e.Nat[:], nat)
	return e
}

// endpointsOfPools returns every endpoint one of whose slots belongs to
// one of pools.
func (x *addrIndex) endpointsOfPools(pools map[uint32]bool) []bpf.SluiceEndpoint {
	var out []bpf.SluiceEndpoint
	for ep, slots := range x.ports {
		for s := range slots {
			if pools[x.slots[s].PoolId] {
				out = append(out, ep)
				break
			}
		}
	}
	return out
}

// info is the addrs entry an address should have; zero flags: none.
func (x *addrIndex) info(addr uint32) bpf.SluiceAddrInfo {
	var a bpf.SluiceAddrInfo
	for _, id := range x.services[addr] {
		if a.Flags&addrVIP == 0 || id < a.SvcId {
			a.SvcId = id // the lowest id: stable whatever the order of writes
		}
		a.Flags |= addrVIP
	}
	if len(x.backends[addr]) > 0 {
		a.Flags |= addrBackend
	}
	return a
}

// setService records service k's value and returns the endpoints whose
// backend_ports entry it may change.
func (x *addrIndex) setService(k bpf.SluiceSvcKey, v bpf.SluiceSvcValue) []bpf.SluiceEndpoint {
	if x.services[k.Vip] == nil {
		x.services[k.Vip] = map[bpf.SluiceSvcKey]uint32{}
	}
	x.services[k.Vip][k] = v.Id
	x.svcs[k] = v
	if x.svcPools[k] == nil {
		x.svcPools[k] = map[uint32]bool{}
	}
	x.svcPools[k][v.PoolId] = true
	return x.endpointsOfPools(x.svcPools[k])
}

// deleteService forgets service k and returns the endpoints whose
// backend_ports entry listed it.
func (x *addrIndex) deleteService(k bpf.SluiceSvcKey) []bpf.SluiceEndpoint {
	delete(x.services[k.Vip], k)
	if len(x.services[k.Vip]) == 0 {
		delete(x.services, k.Vip)
	}
	eps := x.endpointsOfPools(x.svcPools[k])
	delete(x.svcs, k)
	delete(x.svcPools, k)
	return eps
}

// setSlot records slot's backend b (free: nothing) and returns the
// address and endpoint it held before (zero when none).
func (x *addrIndex) setSlot(slot uint32, b bpf.SluiceBackend) (oldAddr uint32, oldEP bpf.SluiceEndpoint) {
	if old, ok := x.slots[slot]; ok {
		oldAddr, oldEP = old.Addr, bpf.SluiceEndpoint{Addr: old.Addr, Port: old.Port}
		delete(x.slots, slot)
		dropSlot(x.backends, oldAddr, slot)
		dropSlot(x.ports, oldEP, slot)
	}
	if b.State != uint8(BackendFree) && b.Addr != 0 {
		x.slots[slot] = b
		addSlot(x.backends, b.Addr, slot)
		addSlot(x.ports, bpf.SluiceEndpoint{Addr: b.Addr, Port: b.Port}, slot)
	}
	return oldAddr, oldEP
}

// addSlot and dropSlot keep m[k], a set of slots, for the address and
// endpoint indexes of both families; an empty set leaves the map.
func addSlot[K comparable](m map[K]map[uint32]bool, k K, slot uint32) {
	if m[k] == nil {
		m[k] = map[uint32]bool{}
	}
	m[k][slot] = true
}

func dropSlot[K comparable](m map[K]map[uint32]bool, k K, slot uint32) {
	delete(m[k], slot)
	if len(m[k]) == 0 {
		delete(m, k)
	}
}

// buildAddrs rebuilds the index from the services and backends maps and
// rewrites the addrs map to match.
func (r *Real) buildAddrs() error {
	x := newAddrIndex()
	var sk bpf.SluiceSvcKey
	var sv bpf.SluiceSvcValue
	it := r.services.Iterate()
	for it.Next(&sk, &sv) {
		x.setService(sk, sv)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("index addresses: services: %w", err)
	}
	var slot uint32
	var b bpf.SluiceBackend
	bit := r.backends.Iterate()
	for bit.Next(&slot, &b) {
		x.setSlot(slot, b)
	}
	if err := bit.Err(); err != nil {
		return fmt.Errorf("index addresses: backends: %w", err)
	}
	r.addrIdx = x

	var stale []uint32
	var k uint32
	var v bpf.SluiceAddrInfo
	ait := r.addrs.Iterate()
	for ait.Next(&k, &v) {
		if x.info(k).Flags == 0 {
			stale = append(stale, k)
		}
	}
	if err := ait.Err(); err != nil {
		return fmt.Errorf("index addresses: addrs: %w", err)
	}
	for _, k := range stale {
		if err := r.addrs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("index addresses: delete %v: %w", addrFromBE32(k), err)
		}
	}
	for _, set := range []map[uint32]bool{keysOf(x.services), keysOf(x.backends)} {
		for addr := range set {
			if err := r.writeAddr(addr); err != nil {
				return err
			}
		}
	}

	var staleEPs []bpf.SluiceEndpoint
	var ep bpf.SluiceEndpoint
	var info bpf.SluiceEpInfo
	pit := r.backendPorts.Iterate()
	for pit.Next(&ep, &info) {
		if len(x.ports[ep]) == 0 {
			staleEPs = append(staleEPs, ep)
		}
	}
	if err := pit.Err(); err != nil {
		return fmt.Errorf("index addresses: backend_ports: %w", err)
	}
	for _, ep := range staleEPs {
		if err := r.backendPorts.Delete(ep); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("index addresses: delete endpoint: %w", err)
		}
	}
	for ep := range x.ports {
		if err := r.writeEndpoint(ep); err != nil {
			return err
		}
	}
	return nil
}

// writeEndpoint writes (or deletes) one backend_ports entry from the
// index, unless it holds that already.
func (r *Real) writeEndpoint(ep bpf.SluiceEndpoint) error {
	if r.addrIdx == nil || ep.Addr == 0 {
		return nil
	}
	e := r.addrIdx.epInfo(ep)
	if old, ok := r.addrIdx.written[ep]; ok && old == e {
		return nil
	}
	delete(r.addrIdx.written, ep)
	if e.Slots == 0 {
		if err := r.backendPorts.Delete(ep); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget backend %v:%d: %w", addrFromBE32(ep.Addr), portFromBE16(ep.Port), err)
		}
		r.addrIdx.written[ep] = e
		return nil
	}
	if e.NatCount >= 2 {
		// Before the entry lists a second service: from then on new
		// nat flows look for another VIP's flow (nat_conflict).
		if err := r.markNATShared(); err != nil {
			return err
		}
	}
	if err := r.backendPorts.Put(ep, e); err != nil {
		return fmt.Errorf("record backend %v:%d: %w", addrFromBE32(ep.Addr), portFromBE16(ep.Port), err)
	}
	r.addrIdx.written[ep] = e
	return nil
}

func keysOf[V any](m map[uint32]V) map[uint32]bool {
	out := make(map[uint32]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}

// writeAddr writes (or deletes) one address's addrs entry from the index.
func (r *Real) writeAddr(addr uint32) error {
	if r.addrIdx == nil || addr == 0 {
		return nil
	}
	a := r.addrIdx.info(addr)
	if a.Flags == 0 {
		if err := r.addrs.Delete(addr); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget address %v: %w", addrFromBE32(addr), err)
		}
		return nil
	}
	if err := r.addrs.Put(addr, a); err != nil {
		return fmt.Errorf("record address %v: %w", addrFromBE32(addr), err)
	}
	return nil
}

// markNATShared tells the program that some backend endpoint serves more
// than one nat service (the nat_shared map, bpf/include/maps.h): only then
// does a new nat flow check for another VIP's flow from the same client
// port to the same backend. Set once; a new program starts without it and
// is told again as Open rebuilds backend_ports.
func (r *Real) markNATShared() error {
	if r.natSharedSet || r.natShared == nil {
		return nil
	}
	if err := r.natShared.Put(uint32(0), uint32(1)); err != nil {
		return fmt.Errorf("mark shared nat endpoints: %w", err)
	}
	r.natSharedSet = true
	return nil
}
