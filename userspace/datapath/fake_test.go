package datapath

import (
	"errors"
	"net/netip"
	"testing"
)

func TestFakeTables(t *testing.T) {
	f := NewFake(7)
	k := ServiceKey{VIP: netip.MustParseAddr("198.18.1.100"), Port: 80, Proto: TCP}
	if err := f.SetService(k, Service{ID: 1}); err != nil {
		t.Fatal(err)
	}
	if err := f.SetTable(1, []uint32{1, 2, 1, 2, 1, 2, 1}); err != nil {
		t.Fatal(err)
	}
	if err := f.SetTable(1, []uint32{1, 2}); err == nil {
		t.Fatal("short table accepted")
	}
	if err := f.SetTable(1, []uint32{1, 2, 1, 0, 1, 2, 1}); err == nil {
		t.Fatal("slot 0 accepted")
	}
	if got := f.Table(1); len(got) != 7 || got[1] != 2 {
		t.Fatalf("table = %v", got)
	}
	if err := f.SetTable(1, nil); err != nil {
		t.Fatal(err)
	}
	if got := f.Table(1); got != nil {
		t.Fatalf("table after clear = %v", got)
	}
	if n := f.SetTableCalls(); n != 2 {
		t.Fatalf("SetTableCalls = %d, want 2", n)
	}
	if err := f.DeleteService(k, 1); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteService(k, 1); err != nil {
		t.Fatalf("delete not idempotent: %v", err)
	}
	svcs, _ := f.Services()
	if len(svcs) != 0 {
		t.Fatalf("services = %v", svcs)
	}
}

func TestFakeFailNext(t *testing.T) {
	f := NewFake(7)
	boom := errors.New("boom")
	f.FailNext("SetBackend", boom)
	b := Backend{Addr: netip.MustParseAddrPort("198.18.2.1:80"), Gen: 1, State: BackendActive}
	if err := f.SetBackend(1, b); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	if got := f.Backend(1); got.State != BackendFree {
		t.Fatalf("failed write applied: %+v", got)
	}
	if err := f.SetBackend(1, b); err != nil {
		t.Fatalf("second write: %v", err)
	}
	if err := f.SetBackend(MaxBackends, b); err == nil {
		t.Fatal("slot out of range accepted")
	}
	ops := f.Ops()
	if len(ops) != 3 || ops[0].Err == nil || ops[1].Err != nil {
		t.Fatalf("ops = %v", ops)
	}
	if s := ops[1].String(); s != "SetBackend(1 198.18.2.1:80 gen=1 active)" {
		t.Fatalf("op string = %q", s)
	}
	bs, _ := f.Backends()
	if len(bs) != 1 {
		t.Fatalf("backends = %v", bs)
	}
}

func TestFakeFlows(t *testing.T) {
	f := NewFake(7)
	vip := netip.MustParseAddrPort("198.18.1.100:80")
	for i, c := range []string{"198.18.0.2:1000", "198.18.0.1:1000", "198.18.0.1:999"} {
		f.AddFlow(Flow{Client: netip.MustParseAddrPort(c), VIP: vip, Proto: TCP, BackendSlot: uint32(i + 1)})
	}
	var seen []string
	if err := f.Flows(func(fl Flow) bool {
		seen = append(seen, fl.Client.String())
		return true
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"198.18.0.1:999", "198.18.0.1:1000", "198.18.0.2:1000"}
	for i := range want {
		if seen[i] != want[i] {
			t.Fatalf("order = %v, want %v", seen, want)
		}
	}
	n := 0
	_ = f.Flows(func(Flow) bool { n++; return false })
	if n != 1 {
		t.Fatalf("stop ignored: %d", n)
	}
	if err := f.DeleteFlow(Flow{Client: netip.MustParseAddrPort("198.18.0.1:999"), VIP: vip, Proto: TCP}); err != nil {
		t.Fatal(err)
	}
	if f.FlowCount() != 2 {
		t.Fatalf("flows = %d", f.FlowCount())
	}
}
