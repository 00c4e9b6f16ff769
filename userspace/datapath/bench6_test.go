package datapath

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
)

// fillTable6 is fillTable for the IPv6 tables: frac × max_entries live
// established flows of clients in 2001:2:ff::/64 (no benchmark frame uses
// them) to vip6 on slot slotBE6a.
func (l *lab) fillTable6(tb testing.TB, m *ebpf.Map, frac float64) {
	tb.Helper()
	n := int(frac * float64(m.MaxEntries()))
	const chunk = 4096
	keys := make([]bpf.SluiceCt6Key, 0, chunk)
	vals := make([]bpf.SluiceCt6Value, 0, chunk)
	now := monotonicNow()
	flush := func() {
		if len(keys) == 0 {
			return
		}
		if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
			tb.Fatalf("fill %v: %v", m, err)
		}
		keys, vals = keys[:0], vals[:0]
	}
	base := netip.MustParseAddr("2001:2:ff::").As16()
	for i := 0; i < n; i++ {
		a := base
		a[12], a[13], a[14], a[15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
		keys = append(keys, bpf.SluiceCt6Key{
			Saddr: addr6(netip.AddrFrom16(a)), Daddr: addr6(vip6.Addr()),
			Sport: be16(40000), Dport: be16(vip6.Port()), Proto: uint8(TCP),
		})
		vals = append(vals, bpf.SluiceCt6Value{
			LastSeen: now, ServiceId: svcTCP6, BackendId: slotBE6a, BackendGen: 1,
			DaddrNew: addr6(be6a.Addr()), DportNew: be16(be6a.Port()), State: uint8(FlowEstablished),
		})
		if len(keys) == chunk {
			flush()
		}
	}
	flush()
}
