package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
)

// IPv6 has maps of its own (services6, backends6, conntrack6, halfopen6,
// addrs6, backend_ports6, nat_hint6: bpf/include/maps6.h), with 16-byte
// addresses; the service ids and backend slots are the IPv4 ones (one id
// space, one Maglev outer map, one set of counters). The Map interface is
// the same for both families: the methods of Real look at the address and
// use the maps of its family. A slot holds a backend of one family: its
// entry in the other family's map is kept free.

// is6 tells whether a belongs in the IPv6 maps (an IPv4-mapped address is
// IPv4).
func is6(a netip.Addr) bool { return a.Is6() && !a.Is4In6() }

// addr6 is a's 16 bytes as the four network-order words of the BPF structs.
func addr6(a netip.Addr) [4]uint32 {
	var w [4]uint32
	if !a.IsValid() {
		return w
	}
	b := a.As16()
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

// addrFrom6 is addr6's inverse.
func addrFrom6(w [4]uint32) netip.Addr {
	var b [16]byte
	for i, v := range w {
		binary.NativeEndian.PutUint32(b[4*i:], v)
	}
	return netip.AddrFrom16(b)
}

func isZero6(w [4]uint32) bool { return w == [4]uint32{} }

// flowReply6 is ct6_value.flags' bit of a snat flow's reverse entry.
const flowReply6 = uint8(bpf.SluiceCt6FlagsCT6F_REPLY)

func svc6Key(k ServiceKey) bpf.SluiceSvc6Key {
	return bpf.SluiceSvc6Key{Vip: addr6(k.VIP), Port: be16(k.Port), Proto: uint8(k.Proto)}
}

// services6 adds the IPv6 services to out.
func (r *Real) services6(out map[ServiceKey]Service) error {
	if r.services6m == nil {
		return nil
	}
	var k bpf.SluiceSvc6Key
	var v bpf.SluiceSvc6Value
	it := r.services6m.Iterate()
	for it.Next(&k, &v) {
		key := ServiceKey{VIP: addrFrom6(k.Vip), Port: portFromBE16(k.Port), Proto: Proto(k.Proto)}
		s := Service{ID: v.Id, Mode: Mode(v.Mode)}
		if !isZero6(v.SnatAddr) {
			s.SNATAddr = addrFrom6(v.SnatAddr)
		}
		out[key] = s
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate services6: %w", err)
	}
	return nil
}

func (r *Real) setService6(k ServiceKey, s Service) error {
	if s.SNATAddr.IsValid() && !is6(s.SNATAddr) {
		return fmt.Errorf("set service [%v]:%d: snat address %v is not IPv6", k.VIP, k.Port, s.SNATAddr)
	}
	v := bpf.SluiceSvc6Value{Id: s.ID, Mode: uint8(s.Mode), SnatAddr: addr6(s.SNATAddr)}
	sk := svc6Key(k)
	if err := r.services6m.Put(sk, v); err != nil {
		return fmt.Errorf("set service [%v]:%d: %w", k.VIP, k.Port, err)
	}
	if r.addrIdx6 != nil {
		r.addrIdx6.setService(sk.Vip, sk, s.ID)
	}
	return r.writeAddr6(sk.Vip)
}

func (r *Real) deleteService6(k ServiceKey, id uint32) error {
	sk := svc6Key(k)
	if err := r.services6m.Delete(sk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete service [%v]:%d: %w", k.VIP, k.Port, err)
	}
	if r.addrIdx6 != nil {
		r.addrIdx6.deleteService(sk.Vip, sk)
	}
	if err := r.writeAddr6(sk.Vip); err != nil {
		return err
	}
	return r.SetTable(id, nil)
}

// backends6 adds the non-free IPv6 slots to out (a slot whose IPv4 entry
// is in use keeps it: the agent never writes both).
func (r *Real) backends6(out map[uint32]Backend) error {
	if r.backends6m == nil {
		return nil
	}
	var k uint32
	var v bpf.SluiceBackend6
	it := r.backends6m.Iterate()
	for it.Next(&k, &v) {
		if v.State == uint8(BackendFree) && v.Gen == 0 {
			continue
		}
		if cur, ok := out[k]; ok && cur.State != BackendFree {
			continue
		}
		b := Backend{
			Addr:   netip.AddrPortFrom(addrFrom6(v.Addr), portFromBE16(v.Port)),
			Gen:    v.Gen,
			State:  BackendState(v.State),
			PoolID: v.PoolId,
		}
		if !isZero6(v.SrcAddr) {
			b.Src = addrFrom6(v.SrcAddr)
		}
		out[k] = b
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate backends6: %w", err)
	}
	return nil
}

// setBackend6 writes an IPv6 backend slot (v6 true) or frees the slot's
// IPv6 entry (an IPv4 backend took the slot, v6 false).
func (r *Real) setBackend6(slot uint32, b Backend, v6 bool) error {
	var v bpf.SluiceBackend6
	if v6 {
		v = bpf.SluiceBackend6{
			Addr:   addr6(b.Addr.Addr()),
			Port:   be16(b.Addr.Port()),
			State:  uint8(b.State),
			Gen:    b.Gen,
			PoolId: b.PoolID,
		}
		if is6(b.Src) {
			v.SrcAddr = addr6(b.Src)
		}
	}
	if err := r.backends6m.Put(slot, v); err != nil {
		return fmt.Errorf("set backend slot %d: %w", slot, err)
	}
	if r.addrIdx6 == nil {
		return nil
	}
	oldAddr, oldEP := r.addrIdx6.setSlot(slot, v.Addr, bpf.SluiceEndpoint6{Addr: v.Addr, Port: v.Port}, v.State != uint8(BackendFree))
	for _, err := range []error{
		r.writeAddr6(oldAddr), r.writeEndpoint6(oldEP),
		r.writeAddr6(v.Addr), r.writeEndpoint6(bpf.SluiceEndpoint6{Addr: v.Addr, Port: v.Port}),
	} {
		if err != nil {
			return fmt.Errorf("set backend slot %d: %w", slot, err)
		}
	}
	return nil
}

// addrIndex6 is addrIndex for IPv6: who uses which address and endpoint,
// so addrs6 and backend_ports6 are written one entry at a time.
type addrIndex6 struct {
	services map[[4]uint32]map[bpf.SluiceSvc6Key]uint32
	backends map[[4]uint32]map[uint32]bool
	ports    map[bpf.SluiceEndpoint6]map[uint32]bool
	slots    map[uint32]bpf.SluiceEndpoint6
}

func newAddrIndex6() *addrIndex6 {
	return &addrIndex6{
		services: map[[4]uint32]map[bpf.SluiceSvc6Key]uint32{},
		backends: map[[4]uint32]map[uint32]bool{},
		ports:    map[bpf.SluiceEndpoint6]map[uint32]bool{},
		slots:    map[uint32]bpf.SluiceEndpoint6{},
	}
}

func (x *addrIndex6) info(addr [4]uint32) bpf.SluiceAddrInfo {
	var a bpf.SluiceAddrInfo
	for _, id := range x.services[addr] {
		if a.Flags&addrVIP == 0 || id < a.SvcId {
			a.SvcId = id
		}
		a.Flags |= addrVIP
	}
	if len(x.backends[addr]) > 0 {
		a.Flags |= addrBackend
	}
	return a
}

func (x *addrIndex6) setService(vip [4]uint32, k bpf.SluiceSvc6Key, id uint32) {
	if x.services[vip] == nil {
		x.services[vip] = map[bpf.SluiceSvc6Key]uint32{}
	}
	x.services[vip][k] = id
}

func (x *addrIndex6) deleteService(vip [4]uint32, k bpf.SluiceSvc6Key) {
	delete(x.services[vip], k)
	if len(x.services[vip]) == 0 {
		delete(x.services, vip)
	}
}

// setSlot records what slot holds (used false: nothing) and returns the
// address and endpoint it held before (zero: none).
func (x *addrIndex6) setSlot(slot uint32, addr [4]uint32, ep bpf.SluiceEndpoint6, used bool) (oldAddr [4]uint32, oldEP bpf.SluiceEndpoint6) {
	if old, ok := x.slots[slot]; ok {
		oldAddr, oldEP = old.Addr, old
		delete(x.slots, slot)
		dropSlot(x.backends, oldAddr, slot)
		dropSlot(x.ports, oldEP, slot)
	}
	if used && !isZero6(addr) {
		x.slots[slot] = ep
		addSlot(x.backends, addr, slot)
		addSlot(x.ports, ep, slot)
	}
	return oldAddr, oldEP
}

// buildAddrs6 rebuilds the IPv6 index from services6 and backends6 and
// rewrites addrs6 and backend_ports6 to match (see buildAddrs).
func (r *Real) buildAddrs6() error {
	x := newAddrIndex6()
	var sk bpf.SluiceSvc6Key
	var sv bpf.SluiceSvc6Value
	it := r.services6m.Iterate()
	for it.Next(&sk, &sv) {
		x.setService(sk.Vip, sk, sv.Id)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("index addresses: services6: %w", err)
	}
	var slot uint32
	var b bpf.SluiceBackend6
	bit := r.backends6m.Iterate()
	for bit.Next(&slot, &b) {
		x.setSlot(slot, b.Addr, bpf.SluiceEndpoint6{Addr: b.Addr, Port: b.Port}, b.State != uint8(BackendFree))
	}
	if err := bit.Err(); err != nil {
		return fmt.Errorf("index addresses: backends6: %w", err)
	}
	r.addrIdx6 = x

	var stale [][16]byte
	var k [16]byte
	var v bpf.SluiceAddrInfo
	ait := r.addrs6.Iterate()
	for ait.Next(&k, &v) {
		if x.info(words(k)).Flags == 0 {
			stale = append(stale, k)
		}
	}
	if err := ait.Err(); err != nil {
		return fmt.Errorf("index addresses: addrs6: %w", err)
	}
	for _, k := range stale {
		if err := r.addrs6.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("index addresses: delete %v: %w", netip.AddrFrom16(k), err)
		}
	}
	for addr := range x.services {
		if err := r.writeAddr6(addr); err != nil {
			return err
		}
	}
	for addr := range x.backends {
		if err := r.writeAddr6(addr); err != nil {
			return err
		}
	}

	var staleEPs []bpf.SluiceEndpoint6
	var ep bpf.SluiceEndpoint6
	var n uint32
	pit := r.backendPorts6.Iterate()
	for pit.Next(&ep, &n) {
		if len(x.ports[ep]) == 0 {
			staleEPs = append(staleEPs, ep)
		}
	}
	if err := pit.Err(); err != nil {
		return fmt.Errorf("index addresses: backend_ports6: %w", err)
	}
	for _, ep := range staleEPs {
		if err := r.writeEndpoint6(ep); err != nil {
			return err
		}
	}
	for ep := range x.ports {
		if err := r.writeEndpoint6(ep); err != nil {
			return err
		}
	}
	return nil
}

// words is the addrs6 key (16 bytes) as the words of the BPF structs.
func words(b [16]byte) [4]uint32 { return addr6(netip.AddrFrom16(b)) }

// writeAddr6 writes (or deletes) one addrs6 entry from the index.
func (r *Real) writeAddr6(addr [4]uint32) error {
	if r.addrIdx6 == nil || isZero6(addr) {
		return nil
	}
	key := addrFrom6(addr).As16()
	a := r.addrIdx6.info(addr)
	if a.Flags == 0 {
		if err := r.addrs6.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget address %v: %w", addrFrom6(addr), err)
		}
		return nil
	}
	if err := r.addrs6.Put(key, a); err != nil {
		return fmt.Errorf("record address %v: %w", addrFrom6(addr), err)
	}
	return nil
}

// writeEndpoint6 writes (or deletes) one backend_ports6 entry from the
// index. An endpoint no slot holds any more loses its nat_hint6 entries
// too (the hint map is bounded by the endpoints the slots hold).
func (r *Real) writeEndpoint6(ep bpf.SluiceEndpoint6) error {
	if r.addrIdx6 == nil || isZero6(ep.Addr) {
		return nil
	}
	n := uint32(len(r.addrIdx6.ports[ep]))
	if n > 0 {
		if err := r.backendPorts6.Put(ep, n); err != nil {
			return fmt.Errorf("record backend [%v]:%d: %w", addrFrom6(ep.Addr), portFromBE16(ep.Port), err)
		}
		return nil
	}
	if err := r.backendPorts6.Delete(ep); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("forget backend [%v]:%d: %w", addrFrom6(ep.Addr), portFromBE16(ep.Port), err)
	}
	if r.natHint6 == nil {
		return nil
	}
	for _, p := range []Proto{TCP, UDP} {
		hk := ep
		hk.Proto = uint8(p)
		if err := r.natHint6.Delete(hk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget the nat hint of [%v]:%d: %w", addrFrom6(ep.Addr), portFromBE16(ep.Port), err)
		}
	}
	return nil
}

func (r *Real) flowOf6(k bpf.SluiceCt6Key, v bpf.SluiceCt6Value, now uint64) Flow {
	var snat netip.AddrPort
	if !isZero6(v.SaddrNew) {
		snat = netip.AddrPortFrom(addrFrom6(v.SaddrNew), portFromBE16(v.SportNew))
	}
	return r.flowFrom(
		netip.AddrPortFrom(addrFrom6(k.Saddr), portFromBE16(k.Sport)),
		netip.AddrPortFrom(addrFrom6(k.Daddr), portFromBE16(k.Dport)),
		netip.AddrPortFrom(addrFrom6(v.DaddrNew), portFromBE16(v.DportNew)),
		snat, k.Proto, v.ServiceId, v.BackendId, v.BackendGen, v.State, v.LastSeen, now)
}

// eachCT6 calls fn for every entry of conntrack6 and then of halfopen6.
func (r *Real) eachCT6(fn func(k *bpf.SluiceCt6Key, v *bpf.SluiceCt6Value, halfOpen bool) bool) error {
	more := true
	for _, t := range []struct {
		m        *ebpf.Map
		name     string
		halfOpen bool
	}{{r.conntrack6, "conntrack6", false}, {r.halfopen6, "halfopen6", true}} {
		if t.m == nil || !more {
			continue
		}
		err := eachIn(t.m, t.name, func(k *bpf.SluiceCt6Key, v *bpf.SluiceCt6Value) bool {
			more = fn(k, v, t.halfOpen)
			return more
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// flows6 calls fn for every IPv6 forward entry; false: fn asked to stop.
func (r *Real) flows6(fn func(Flow) bool) (bool, error) {
	now := monotonicNow()
	more := true
	err := r.eachCT6(func(k *bpf.SluiceCt6Key, v *bpf.SluiceCt6Value, halfOpen bool) bool {
		if v.Flags&flowReply6 != 0 {
			return true
		}
		f := r.flowOf6(*k, *v, now)
		if halfOpen {
			f.HalfOpen = true
			f.Expired = f.Idle > r.timeouts.TCPSyn
		}
		more = fn(f)
		return more
	})
	return more, err
}

func flowKey6(f Flow) bpf.SluiceCt6Key {
	return bpf.SluiceCt6Key{
		Saddr: addr6(f.Client.Addr()), Daddr: addr6(f.VIP.Addr()),
		Sport: be16(f.Client.Port()), Dport: be16(f.VIP.Port()), Proto: uint8(f.Proto),
	}
}

// snatReverseKey6 is the key of the reverse entry of a snat forward entry
// (backend -> snat address and port); ok false for a nat flow, which has
// none.
func snatReverseKey6(fk bpf.SluiceCt6Key, fv bpf.SluiceCt6Value) (bpf.SluiceCt6Key, bool) {
	if isZero6(fv.SaddrNew) {
		return bpf.SluiceCt6Key{}, false
	}
	return bpf.SluiceCt6Key{Saddr: fv.DaddrNew, Sport: fv.DportNew, Daddr: fv.SaddrNew, Dport: fv.SportNew, Proto: fk.Proto}, true
}

// deleteFlow6 removes an IPv6 forward entry and, for a snat flow, its
// reverse entry, from both tables.
func (r *Real) deleteFlow6(f Flow) error {
	fk := flowKey6(f)
	for _, m := range []*ebpf.Map{r.conntrack6, r.halfopen6} {
		if m == nil {
			continue
		}
		var fv bpf.SluiceCt6Value
		if err := m.Lookup(fk, &fv); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			return fmt.Errorf("look up flow %v: %w", f.Client, err)
		}
		keys := []bpf.SluiceCt6Key{fk}
		if rk, ok := snatReverseKey6(fk, fv); ok {
			keys = append(keys, rk)
		}
		for _, k := range keys {
			if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete flow %v: %w", f.Client, err)
			}
		}
	}
	return nil
}

// gcReverse6 removes snat reverse entries whose forward entry is gone or
// took another port or backend (nat flows have no reverse entry).
func (r *Real) gcReverse6() (int, error) {
	type orphan struct {
		k        bpf.SluiceCt6Key
		halfOpen bool
	}
	var orphans []orphan
	err := r.eachCT6(func(k *bpf.SluiceCt6Key, v *bpf.SluiceCt6Value, halfOpen bool) bool {
		if v.Flags&flowReply6 == 0 {
			return true
		}
		fk := bpf.SluiceCt6Key{Saddr: v.DaddrNew, Sport: v.DportNew, Daddr: v.SaddrNew, Dport: v.SportNew, Proto: k.Proto}
		var fv bpf.SluiceCt6Value
		err := r.conntrack6.Lookup(fk, &fv)
		if errors.Is(err, ebpf.ErrKeyNotExist) && r.halfopen6 != nil {
			err = r.halfopen6.Lookup(fk, &fv)
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			orphans = append(orphans, orphan{*k, halfOpen})
		case err != nil:
		case fv.Flags&flowReply6 != 0:
		default:
			if rk, ok := snatReverseKey6(fk, fv); !ok || rk != *k {
				orphans = append(orphans, orphan{*k, halfOpen})
			}
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, o := range orphans {
		m := r.conntrack6
		if o.halfOpen {
			m = r.halfopen6
		}
		if err := m.Delete(o.k); err == nil {
			n++
		}
	}
	return n, nil
}
