package agent

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/datapath"
)

// Issue 13: nodes with an identical config and an identical view of the
// backends build byte-identical Maglev tables, whatever order their
// sources reported in; a node whose slots were bound in another order
// (another history) builds a table that sends every entry to the same
// address.
func TestNodesBuildIdenticalTables(t *testing.T) {
	nodeA := newHarness(t, nil, baseConfig)
	nodeB := newHarness(t, nil, baseConfig)
	id := func(h *harness) uint32 {
		s, ok := h.a.rec.serviceOf(webKey)
		if !ok {
			t.Fatal("web-l4 not programmed")
		}
		return s.id
	}
	ta, tb := nodeA.dp.Table(id(nodeA)), nodeB.dp.Table(id(nodeB))
	if len(ta) != tableSize || !slices.Equal(ta, tb) {
		t.Fatalf("same config, same history: the tables differ")
	}

	// Node C started before be1 was in the config: be1 got the slot
	// after be2's and be3's, so its table holds other slot numbers, but
	// entry for entry the same addresses.
	nodeC := newHarness(t, nil, strings.Replace(baseConfig, "      - address: 198.18.2.11:80\n", "", 1))
	nodeC.write(baseConfig)
	if err := nodeC.a.Reload(nodeC.ctx); err != nil {
		t.Fatal(err)
	}
	if err := nodeC.tick(time.Second); err != nil {
		t.Fatal(err)
	}
	tc := nodeC.dp.Table(id(nodeC))
	addrOf := func(h *harness, slot uint32) string { return h.dp.Backend(slot).Addr.String() }
	if slices.Equal(ta, tc) {
		t.Fatal("node C's slots are node A's: the test proves nothing")
	}
	for i := range ta {
		if a, c := addrOf(nodeA, ta[i]), addrOf(nodeC, tc[i]); a != c {
			t.Fatalf("entry %d: node A sends to %s, node C to %s", i, a, c)
		}
	}
	if st := nodeC.dp.Backend(nodeC.slotOf(be1)); st.State != datapath.BackendActive {
		t.Fatalf("be1 on node C: %+v", st)
	}
}
