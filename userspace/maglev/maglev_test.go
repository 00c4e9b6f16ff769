package maglev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"testing"
)

const testSize = 16381

func backends(n int) []Backend {
	bs := make([]Backend, n)
	for i := range bs {
		bs[i] = Backend{ID: uint32(i + 1), Key: fmt.Sprintf("198.18.2.%d:80", i+1), Weight: 1}
	}
	return bs
}

func counts(table []uint32) map[uint32]int {
	c := map[uint32]int{}
	for _, id := range table {
		c[id]++
	}
	return c
}

func mustBuild(t *testing.T, bs []Backend, size uint32) []uint32 {
	t.Helper()
	table, err := Build(bs, size)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if len(table) != int(size) {
		t.Fatalf("table has %d entries, want %d", len(table), size)
	}
	return table
}

func TestBalanceEqualWeights(t *testing.T) {
	for _, n := range []int{1, 3, 10, 50} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			bs := backends(n)
			c := counts(mustBuild(t, bs, testSize))
			if len(c) != n {
				t.Fatalf("%d backends present, want %d", len(c), n)
			}
			want := float64(testSize) / float64(n)
			for _, b := range bs {
				got := float64(c[b.ID])
				if got < want*0.95 || got > want*1.05 {
					t.Errorf("backend %d has %v entries, want %v ±5%%", b.ID, got, want)
				}
			}
		})
	}
}

func TestBalanceWeights(t *testing.T) {
	tests := []struct {
		name    string
		weights []uint32
	}{
		{"1:2:3", []uint32{1, 2, 3}},
		{"1:1:4", []uint32{1, 1, 4}},
		{"10:20:30:40", []uint32{10, 20, 30, 40}},
		{"1000:1:1", []uint32{1000, 1, 1}},
		{"sum above size", []uint32{1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 500}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := backends(len(tt.weights))
			var sum uint32
			for i, w := range tt.weights {
				bs[i].Weight = w
				sum += w
			}
			c := counts(mustBuild(t, bs, testSize))
			for _, b := range bs {
				want := float64(testSize) * float64(b.Weight) / float64(sum)
				got := float64(c[b.ID])
				// ±5% relative, but never tighter than one entry.
				tol := max(want*0.05, 1)
				if got < want-tol || got > want+tol {
					t.Errorf("backend %d (weight %d) has %v entries, want %.1f ±%.1f", b.ID, b.Weight, got, want, tol)
				}
			}
		})
	}
}

// moved counts the entries whose backend differs between two tables.
func moved(a, b []uint32) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

func TestDisruption(t *testing.T) {
	for _, n := range []int{3, 10, 50} {
		t.Run(fmt.Sprintf("remove of %d", n), func(t *testing.T) {
			bs := backends(n)
			before := mustBuild(t, bs, testSize)
			for _, drop := range []int{0, n / 2, n - 1} {
				gone := bs[drop].ID
				rest := slices.Delete(slices.Clone(bs), drop, drop+1)
				after := mustBuild(t, rest, testSize)
				if c := counts(after); c[gone] != 0 {
					t.Fatalf("removed backend %d still has %d entries", gone, c[gone])
				}
				limit := testSize/n + testSize*5/100
				if m := moved(before, after); m > limit {
					t.Errorf("removing backend %d moved %d entries, want ≤ %d", gone, m, limit)
				}
				// Entries that did not belong to the removed backend should mostly stay.
				for i := range before {
					if before[i] == gone && after[i] == gone {
						t.Fatalf("entry %d still points at removed backend", i)
					}
				}
			}
		})
		t.Run(fmt.Sprintf("add to %d", n), func(t *testing.T) {
			bs := backends(n + 1)
			before := mustBuild(t, bs[:n], testSize)
			after := mustBuild(t, bs, testSize)
			added := bs[n].ID
			limit := testSize/(n+1) + testSize*5/100
			if m := moved(before, after); m > limit {
				t.Errorf("adding backend moved %d entries, want ≤ %d", m, limit)
			}
			// The new backend gets its full share, all of it from moved entries.
			want := float64(testSize) / float64(n+1)
			if got := float64(counts(after)[added]); got < want*0.95 || got > want*1.05 {
				t.Errorf("new backend has %v entries, want %.0f ±5%%", got, want)
			}
		})
	}
}

func TestWeightChangeDisruption(t *testing.T) {
	bs := backends(10)
	before := mustBuild(t, bs, testSize)
	bs[3].Weight = 2
	after := mustBuild(t, bs, testSize)
	// Backend 4 grows from 1/10 to 2/11 of the table: about 8% of entries
	// must move; allow the same 5% slack as for adds and removes.
	limit := testSize*8/100 + testSize*5/100
	if m := moved(before, after); m > limit {
		t.Errorf("doubling one weight moved %d entries, want ≤ %d", m, limit)
	}
}

func TestDeterministic(t *testing.T) {
	bs := backends(20)
	bs[4].Weight = 3
	bs[7].Weight = 5
	want := mustBuild(t, bs, testSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 10 {
		shuffled := slices.Clone(bs)
		rng.Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
		if got := mustBuild(t, shuffled, testSize); !slices.Equal(got, want) {
			t.Fatalf("shuffle %d: table differs", i)
		}
	}
	// IDs are only the payload: renumbering keeps positions.
	renumbered := slices.Clone(bs)
	for i := range renumbered {
		renumbered[i].ID += 100
	}
	got := mustBuild(t, renumbered, testSize)
	for i := range got {
		if got[i] != want[i]+100 {
			t.Fatalf("entry %d: got %d, want %d", i, got[i], want[i]+100)
		}
	}
}

func TestEveryEntryFilled(t *testing.T) {
	tests := []struct {
		n    int
		size uint32
	}{
		{1, 2}, {2, 2}, {3, 7}, {7, 7}, {5, 251}, {100, 16381}, {251, 251},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d in %d", tt.n, tt.size), func(t *testing.T) {
			bs := backends(tt.n)
			table := mustBuild(t, bs, tt.size)
			valid := map[uint32]bool{}
			for _, b := range bs {
				valid[b.ID] = true
			}
			for i, id := range table {
				if !valid[id] {
					t.Fatalf("entry %d holds unknown id %d", i, id)
				}
			}
			if tt.n <= int(tt.size) && len(counts(table)) != tt.n {
				t.Errorf("%d backends present, want %d", len(counts(table)), tt.n)
			}
		})
	}
}

func TestBuildErrors(t *testing.T) {
	tests := []struct {
		name     string
		backends []Backend
		size     uint32
		want     error
	}{
		{"size not prime", backends(3), 16384, ErrSizeNotPrime},
		{"size zero", backends(3), 0, ErrSizeNotPrime},
		{"size one", backends(1), 1, ErrSizeNotPrime},
		{"no backends bad size", nil, 100, ErrSizeNotPrime},
		{"size below backends", backends(8), 7, ErrTooFewEntries},
		{"zero weight", []Backend{{ID: 1, Key: "a", Weight: 1}, {ID: 2, Key: "b"}}, 7, ErrZeroWeight},
		{"duplicate key", []Backend{{ID: 1, Key: "a", Weight: 1}, {ID: 2, Key: "a", Weight: 1}}, 7, ErrDuplicateKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table, err := Build(tt.backends, tt.size)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if table != nil {
				t.Errorf("table = %d entries, want nil", len(table))
			}
		})
	}
}

func TestBuildEmpty(t *testing.T) {
	for _, bs := range [][]Backend{nil, {}} {
		table, err := Build(bs, testSize)
		if err != nil || table != nil {
			t.Fatalf("Build(%v) = %v, %v; want nil, nil", bs, table, err)
		}
	}
}

func TestIsPrime(t *testing.T) {
	primes := map[uint32]bool{}
	// Sieve up to 70000 as the reference.
	const limit = 70000
	composite := make([]bool, limit)
	for i := 2; i < limit; i++ {
		if !composite[i] {
			primes[uint32(i)] = true
			for j := i * i; j < limit; j += i {
				composite[j] = true
			}
		}
	}
	for n := range uint32(limit) {
		if got := IsPrime(n); got != primes[n] {
			t.Fatalf("IsPrime(%d) = %v", n, got)
		}
	}
	for _, tt := range []struct {
		n    uint32
		want bool
	}{
		{4294967291, true}, // largest uint32 prime
		{4294967295, false},
		{4294967279, true},
		{65521, true},
		{16381, true},
		{251, true},
		{65535, false},
	} {
		if got := IsPrime(tt.n); got != tt.want {
			t.Errorf("IsPrime(%d) = %v, want %v", tt.n, got, tt.want)
		}
	}
}

// BenchmarkBuild is where build speed is measured (a 16381-entry table over
// 100 backends should stay well under 10 ms); speed is never asserted in a
// test, where a loaded CI machine would make it flaky.
func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{3, 100} {
		b.Run(fmt.Sprintf("size=%d/backends=%d", testSize, n), func(b *testing.B) {
			bs := backends(n)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Build(bs, testSize); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestStable pins the table for a fixed input. Tables must not change
// between releases: a new agent binary adopting a running data path would
// otherwise send new flows of unchanged backend sets elsewhere. If this test
// fails, the hash or the fill order changed: that is a compatibility break.
func TestStable(t *testing.T) {
	bs := backends(5)
	bs[2].Weight = 3
	table := mustBuild(t, bs, 251)
	h := fnv.New64a()
	for _, id := range table {
		_ = binary.Write(h, binary.LittleEndian, id)
	}
	t.Logf("table[:16] = %v, digest %#x", table[:16], h.Sum64())
	const want uint64 = 0x91d83ba73304c750
	if got := h.Sum64(); got != want {
		t.Errorf("table digest = %#x, want %#x", got, want)
	}
}
