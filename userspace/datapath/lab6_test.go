package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/bpf"
)

// The IPv6 side of the prog.Run lab (2001:2::/48, the counterpart of
// 198.18.0.0/15): the client side "tc" is 2001:2::1/64, the backend side
// "tb" 2001:2:0:2::1/64, with static neighbours for the client and the
// backends (the IPv4 ones' MACs), so bpf_fib_lookup succeeds for IPv6 too.
var (
	client6     = netip.MustParseAddrPort("[2001:2::2]:40000")
	vip6        = netip.MustParseAddrPort("[2001:2:0:1::100]:80")
	vip6UDP     = netip.MustParseAddrPort("[2001:2:0:1::100]:53")
	vip6None    = netip.MustParseAddrPort("[2001:2:0:1::101]:80")
	vip6SNAT    = netip.MustParseAddrPort("[2001:2:0:1::102]:80")
	vip6B       = netip.MustParseAddrPort("[2001:2:0:1::103]:80") // a second nat VIP on be6a
	be6a        = netip.MustParseAddrPort("[2001:2:0:2::11]:80")
	be6b        = netip.MustParseAddrPort("[2001:2:0:2::12]:80")
	be6UDP      = netip.MustParseAddrPort("[2001:2:0:2::11]:53")
	snat6       = netip.MustParseAddr("2001:2:0:2::1") // the lb's own address on the backend side
	lbClient6   = netip.MustParseAddr("2001:2::1")
	router6     = netip.MustParseAddr("2001:2::fe")
	keyTCP6     = ServiceKey{VIP: vip6.Addr(), Port: vip6.Port(), Proto: TCP}
	keyUDP6     = ServiceKey{VIP: vip6UDP.Addr(), Port: vip6UDP.Port(), Proto: UDP}
	keyNone6    = ServiceKey{VIP: vip6None.Addr(), Port: vip6None.Port(), Proto: TCP}
	keySNAT6    = ServiceKey{VIP: vip6SNAT.Addr(), Port: vip6SNAT.Port(), Proto: TCP}
	keyB6       = ServiceKey{VIP: vip6B.Addr(), Port: vip6B.Port(), Proto: TCP}
	vip6Addrs   = []netip.Addr{vip6.Addr(), vip6None.Addr(), vip6SNAT.Addr(), vip6B.Addr()}
	backend6Set = []netip.Addr{be6a.Addr(), be6b.Addr()}
)

// Service ids and backend slots of the IPv6 baseline (the IPv4 baseline
// uses 1..5): one id space and one slot space for both families.
const (
	svcTCP6  = 9  // vip6, table of be6a
	svcUDP6  = 10 // vip6UDP, table of be6UDP
	svcNone6 = 11 // vip6None, no table
	svcSNAT6 = 12 // vip6SNAT (snat), table of be6b
	svcB6    = 13 // vip6B, only in the cases that add it

	slotBE6a   = 9
	slotBE6b   = 10
	slotBE6UDP = 11
)

func (l *lab) setup6() error {
	for _, f := range []string{"/proc/sys/net/ipv6/conf/all/forwarding", "/proc/sys/net/ipv6/conf/default/forwarding"} {
		if err := os.WriteFile(f, []byte("1"), 0); err != nil {
			return fmt.Errorf("enable ipv6 forwarding: %w", err)
		}
	}
	for _, s := range []struct {
		ifc   *net.Interface
		cidr  string
		neigh []netip.Addr
		macs  [][6]byte
	}{
		{l.clientIf, "2001:2::1/64", []netip.Addr{client6.Addr(), router6}, [][6]byte{macClient, macClient}},
		{l.backendIf, "2001:2:0:2::1/64", []netip.Addr{be6a.Addr(), be6b.Addr()}, [][6]byte{macBE1, macBE2}},
	} {
		link, err := netlink.LinkByIndex(s.ifc.Index)
		if err != nil {
			return err
		}
		addr, err := netlink.ParseAddr(s.cidr)
		if err != nil {
			return err
		}
		addr.Flags = unix.IFA_F_NODAD
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add address %s: %w", s.cidr, err)
		}
		for i, ip := range s.neigh {
			n := &netlink.Neigh{LinkIndex: s.ifc.Index, Family: netlink.FAMILY_V6, State: netlink.NUD_PERMANENT,
				IP: net.IP(ip.AsSlice()), HardwareAddr: net.HardwareAddr(s.macs[i][:])}
			if err := netlink.NeighAdd(n); err != nil {
				return fmt.Errorf("add neighbour %v: %w", ip, err)
			}
		}
	}
	return nil
}

func baselineBackends6() map[uint32]Backend {
	return map[uint32]Backend{
		slotBE6a:   {Addr: be6a, Gen: 1, State: BackendActive, PoolID: PoolID("web6")},
		slotBE6b:   {Addr: be6b, Gen: 1, State: BackendActive, PoolID: PoolID("web6"), Src: snat6},
		slotBE6UDP: {Addr: be6UDP, Gen: 1, State: BackendActive, PoolID: PoolID("dns6")},
	}
}

// reset6 is reset for the IPv6 maps: no flows, no nat hints, zero
// counters of the IPv6 ids and slots, the IPv6 baseline services, backends
// and tables. reset (IPv4) runs first: it deletes every service and frees
// every slot, IPv6 ones included.
func (l *lab) reset6(tb testing.TB) {
	tb.Helper()
	r := l.r
	for _, m := range []*ebpf.Map{r.conntrack6, r.halfopen6} {
		var keys []bpf.SluiceCt6Key
		mustSet(tb, eachIn(m, "test", func(k *bpf.SluiceCt6Key, _ *bpf.SluiceCt6Value) bool { keys = append(keys, *k); return true }))
		for _, k := range keys {
			_ = m.Delete(k)
		}
	}
	var hints []bpf.SluiceEndpoint6
	var hk bpf.SluiceEndpoint6
	var hv bpf.SluiceNatHint6Value
	it := r.natHint6.Iterate()
	for it.Next(&hk, &hv) {
		hints = append(hints, hk)
	}
	mustSet(tb, it.Err())
	for _, k := range hints {
		_ = r.natHint6.Delete(k)
	}
	ncpu, err := ebpf.PossibleCPU()
	mustSet(tb, err)
	for i := uint32(8); i < 16; i++ {
		mustSet(tb, r.SetTable(i, nil))
		mustSet(tb, r.svcStats.Put(i, make([]bpf.SluiceSvcCounters, ncpu)))
		mustSet(tb, r.backendStats.Put(i, make([]bpf.SluiceBackendCounters, ncpu)))
		mustSet(tb, r.backendHops6.Put(i, make([]bpf.SluiceBackendHop6, ncpu)))
	}
	mustSet(tb, r.SetService(keyTCP6, Service{ID: svcTCP6}))
	mustSet(tb, r.SetService(keyUDP6, Service{ID: svcUDP6}))
	mustSet(tb, r.SetService(keyNone6, Service{ID: svcNone6}))
	mustSet(tb, r.SetService(keySNAT6, Service{ID: svcSNAT6, Mode: ModeSNAT, SNATAddr: snat6}))
	for slot, b := range baselineBackends6() {
		mustSet(tb, r.SetBackend(slot, b))
	}
	mustSet(tb, r.SetTable(svcTCP6, fill(r.TableSize(), slotBE6a)))
	mustSet(tb, r.SetTable(svcUDP6, fill(r.TableSize(), slotBE6UDP)))
	mustSet(tb, r.SetTable(svcSNAT6, fill(r.TableSize(), slotBE6b)))
}

// forgetReplyHops6 empties the per-client next-hop cache of IPv6 replies.
func (l *lab) forgetReplyHops6(tb testing.TB) {
	tb.Helper()
	ncpu, err := ebpf.PossibleCPU()
	mustSet(tb, err)
	zero := make([]bpf.SluiceBackendHop6, ncpu)
	for i := uint32(0); i < l.r.replyHops6.MaxEntries(); i++ {
		mustSet(tb, l.r.replyHops6.Put(i, zero))
	}
}

// sweepDeadLabs removes the pin directories of test labs whose process is
// gone (/sys/fs/bpf/sluice-test-PID[-tmp-N]): a fuzz worker killed at the
// end of -fuzztime never runs its cleanup, and its maps would stay pinned.
func sweepDeadLabs() {
	dirs, _ := filepath.Glob("/sys/fs/bpf/sluice-test-*")
	for _, d := range dirs {
		rest := strings.TrimPrefix(filepath.Base(d), "sluice-test-")
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			_ = Teardown(d)
			_ = os.RemoveAll(d)
		}
	}
}
