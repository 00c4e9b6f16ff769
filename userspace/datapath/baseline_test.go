package datapath

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
)

// The program as it was before issue 10 (commit df5b5f6's
// bpf/sluice_bpfel.o, kept in testdata/baseline), so BenchmarkXDP can time
// today's program against it in the same run, on the same frames: the
// issue's targets are relative to it ("a SYN at most half of today's
// cost"). It is loaded with private maps, never pinned or attached.
const baselineObject = "testdata/baseline/sluice_df5b5f6.o"

type baseline struct {
	coll *ebpf.Collection
	prog *ebpf.Program
}

// baselineConfig is df5b5f6's struct sluice_config.
type baselineConfig struct {
	TCPSynTimeoutNs, TCPEstablishedTimeoutNs, TCPClosingTimeoutNs, UDPTimeoutNs, NexthopCacheNs uint64
	SNATPortMin, SNATPortMax, MaglevSize, HashSeed                                              uint32
}

// loadBaseline loads the old program with the lab's baseline services,
// backends and tables (the same as lab.reset writes), and conntrackMax
// conntrack entries.
func loadBaseline(tb testing.TB, tableSize, conntrackMax uint32) *baseline {
	tb.Helper()
	spec, err := ebpf.LoadCollectionSpec(baselineObject)
	if err != nil {
		tb.Fatalf("load %s: %v", baselineObject, err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	spec.Maps["conntrack"].MaxEntries = conntrackMax
	spec.Maps["maglev_outer"].InnerMap.MaxEntries = tableSize
	cfg := baselineConfig{
		TCPSynTimeoutNs: 60e9, TCPEstablishedTimeoutNs: 3600e9, TCPClosingTimeoutNs: 10e9, UDPTimeoutNs: 60e9,
		NexthopCacheNs: 1e9, SNATPortMin: 20000, SNATPortMax: 32767, MaglevSize: tableSize, HashSeed: 0x5eed1ce,
	}
	mustSet(tb, spec.Variables["cfg"].Set(cfg))
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		tb.Fatalf("baseline collection: %v", err)
	}
	tb.Cleanup(coll.Close)
	b := &baseline{coll: coll, prog: coll.Programs["sluice_xdp"]}

	// struct svc_key and backend have not changed since; svc_value has
	// grown the pool id since: the baseline's is its first 12 bytes (id,
	// mode nat, snat address 0).
	svcs, bes, outer := coll.Maps["services"], coll.Maps["backends"], coll.Maps["maglev_outer"]
	for k, id := range map[ServiceKey]uint32{keyTCP: svcTCP, keyUDP: svcUDP, keyNone: svcNone} {
		v := binary.LittleEndian.AppendUint32(nil, id)
		mustSet(tb, svcs.Put(svcKey(k), append(v, make([]byte, 8)...)))
	}
	for slot, be := range baselineBackends() {
		mustSet(tb, bes.Put(slot, bpf.SluiceBackend{Addr: be32(be.Addr.Addr()), Port: be16(be.Addr.Port()), State: uint8(be.State), Gen: be.Gen}))
	}
	for id, slot := range map[uint32]uint32{svcTCP: 1, svcUDP: 3} {
		inner, err := ebpf.NewMap(spec.Maps["maglev_outer"].InnerMap)
		mustSet(tb, err)
		for i, s := range fill(tableSize, slot) {
			mustSet(tb, inner.Put(uint32(i), s))
		}
		mustSet(tb, outer.Put(id, inner))
		inner.Close()
	}
	return b
}
