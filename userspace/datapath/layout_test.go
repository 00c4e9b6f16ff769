package datapath

import (
	"testing"

	"github.com/cilium/ebpf/btf"
)

// TestMapFingerprint: the layout version of a map changes with a renamed
// or moved value field at equal size, and not with a typedef's name or a
// resizable map's size.
func TestMapFingerprint(t *testing.T) {
	spec, err := LoadSpec(251, 1024, DefaultTimeouts())
	if err != nil {
		t.Fatal(err)
	}
	ct := spec.Maps["conntrack"]
	base := mapFingerprint("conntrack", ct)
	if again, _ := LoadSpec(251, 1024, DefaultTimeouts()); mapFingerprint("conntrack", again.Maps["conntrack"]) != base {
		t.Fatal("fingerprint not stable across loads")
	}
	bigger := ct.Copy()
	bigger.MaxEntries *= 2
	if mapFingerprint("conntrack", bigger) != base {
		t.Error("conntrack's size (kept from the pinned map) changed its layout version")
	}
	if svc := spec.Maps["services"].Copy(); func() bool { svc.MaxEntries++; return true }() &&
		mapFingerprint("services", svc) == mapFingerprint("services", spec.Maps["services"]) {
		t.Error("a fixed-size map's size is not part of its layout version")
	}

	value := btf.Copy(ct.Value).(*btf.Struct)
	changed := ct.Copy()
	changed.Value = value
	value.Members[1].Name = "renamed"
	if mapFingerprint("conntrack", changed) == base {
		t.Error("a renamed value field left the layout version alone")
	}
	value.Members[1].Name = btf.Copy(ct.Value).(*btf.Struct).Members[1].Name
	value.Members[1].Offset, value.Members[2].Offset = value.Members[2].Offset, value.Members[1].Offset
	if mapFingerprint("conntrack", changed) == base {
		t.Error("swapped value fields at equal size left the layout version alone")
	}
}
