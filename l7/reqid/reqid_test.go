package reqid

import (
	"strings"
	"sync"
	"testing"
)

func TestSourceIDsUnique(t *testing.T) {
	a, b := NewSource(), NewSource()
	if a.prefix == b.prefix {
		t.Fatalf("two sources share the prefix %s", a.prefix[:])
	}
	seen := make(map[string]bool)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				s := a.Next().String()
				mu.Lock()
				if seen[s] {
					t.Errorf("id %s made twice", s)
				}
				seen[s] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	id := b.Next()
	if s := id.String(); !strings.HasPrefix(s, string(b.prefix[:])+"-") || s != string(id.AppendTo(nil)) || len(s) != 14 || id.IsZero() {
		t.Errorf("id %q (AppendTo %q)", s, id.AppendTo(nil))
	}
}

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in string
		ok bool
	}{
		{"f47ac10b-58cc-4372-a567-0e02b2c3d479", true},
		{"Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f", true},
		{"", false},
		{"a b", false},
		{`a"b`, false},
		{`a\b`, false},
		{"a,b", false},
		{"a\x00", false},
		{"é", false},
		{strings.Repeat("a", MaxLen), true},
		{strings.Repeat("a", MaxLen+1), false},
	} {
		id, ok := Parse(c.in)
		if ok != c.ok || ok && (id.String() != c.in || string(id.AppendTo(nil)) != c.in) {
			t.Errorf("Parse(%q) = %q, %v; want ok %v", c.in, id.String(), ok, c.ok)
		}
	}
	if !(ID{}).IsZero() || (ID{}).String() != "" {
		t.Error("the zero ID is not empty")
	}
}

func TestNextAllocatesNothing(t *testing.T) {
	s := NewSource()
	buf := make([]byte, 0, 64)
	if n := testing.AllocsPerRun(100, func() { buf = s.Next().AppendTo(buf[:0]) }); n != 0 {
		t.Errorf("Next+AppendTo: %v allocations", n)
	}
}

func BenchmarkNext(b *testing.B) {
	s := NewSource()
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		buf = s.Next().AppendTo(buf[:0])
	}
}
