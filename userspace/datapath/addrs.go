package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
)

// The addrs map tells the program which addresses are VIPs and which are
// backends, for the packets that carry no ports: IPv4 fragments, which it
// drops and counts instead of passing them on un-translated. It is derived
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
)

type addrIndex struct {
	services map[uint32]map[bpf.SluiceSvcKey]uint32 // VIP -> its services' keys -> ids
	backends map[uint32]map[uint32]bool             // address -> non-free slots holding it
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

func (x *addrIndex) setService(k bpf.SluiceSvcKey, id uint32) {
	if x.services[k.Vip] == nil {
		x.services[k.Vip] = map[bpf.SluiceSvcKey]uint32{}
	}
	x.services[k.Vip][k] = id
}

func (x *addrIndex) deleteService(k bpf.SluiceSvcKey) {
	delete(x.services[k.Vip], k)
	if len(x.services[k.Vip]) == 0 {
		delete(x.services, k.Vip)
	}
}

// setSlot records slot's backend b (free: no address) and returns the
// address it held before, if it changed.
func (x *addrIndex) setSlot(slot uint32, b bpf.SluiceBackend) {
	for addr, slots := range x.backends {
		if slots[slot] && (addr != b.Addr || b.State == uint8(BackendFree)) {
			delete(slots, slot)
			if len(slots) == 0 {
				delete(x.backends, addr)
			}
		}
	}
	if b.State != uint8(BackendFree) && b.Addr != 0 {
		if x.backends[b.Addr] == nil {
			x.backends[b.Addr] = map[uint32]bool{}
		}
		x.backends[b.Addr][slot] = true
	}
}

// buildAddrs rebuilds the index from the services and backends maps and
// rewrites the addrs map to match.
func (r *Real) buildAddrs() error {
	x := &addrIndex{services: map[uint32]map[bpf.SluiceSvcKey]uint32{}, backends: map[uint32]map[uint32]bool{}}
	var sk bpf.SluiceSvcKey
	var sv bpf.SluiceSvcValue
	it := r.services.Iterate()
	for it.Next(&sk, &sv) {
		x.setService(sk, sv.Id)
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
