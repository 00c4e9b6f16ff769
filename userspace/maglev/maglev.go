// Package maglev builds weighted Maglev lookup tables (Eisenbud et al.,
// "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI'16).
//
// A table is a slice of backend IDs whose length is a prime. The data path
// hashes a flow to an index and sends a new flow to the backend found there.
// Each backend walks its own permutation of the table positions, derived only
// from its Key, so a table depends on the set of (Key, Weight) pairs and
// nothing else: it is the same across agent restarts, reloads and input
// orders, and adding or removing one backend moves only about 1/N of entries.
package maglev

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Backend is one entry candidate of a Maglev table.
type Backend struct {
	// ID is what the table stores (the data path's backend slot).
	ID uint32
	// Key is the stable identity that decides the backend's permutation,
	// such as "198.18.2.11:80". Keys must be unique within one Build.
	Key string
	// Weight is the relative share of entries, at least 1.
	Weight uint32
}

// Errors returned by Build, for callers that test with errors.Is.
var (
	ErrSizeNotPrime  = errors.New("table size is not prime")
	ErrTooFewEntries = errors.New("table size is smaller than the number of backends")
	ErrZeroWeight    = errors.New("backend weight is 0")
	ErrDuplicateKey  = errors.New("duplicate backend key")
)

// Seeds of the two permutation hashes; any two different constants do, but
// changing them reshuffles every table, so they are fixed forever.
const (
	offsetSeed uint64 = 0x5173_6c75_6963_6531 // ASCII "Qsluice1"
	skipSeed   uint64 = 0x9e37_79b9_7f4a_7c15 // golden ratio
)

// Build returns a Maglev table of size entries, each holding the ID of a
// backend. A backend of weight w gets about w/Σw of the entries.
//
// size must be a prime and at least len(backends); every weight must be at
// least 1 and every Key unique. With no backends Build returns a nil table
// and no error (after checking size).
func Build(backends []Backend, size uint32) ([]uint32, error) {
	if !IsPrime(size) {
		return nil, fmt.Errorf("maglev: size %d: %w", size, ErrSizeNotPrime)
	}
	if len(backends) == 0 {
		return nil, nil
	}
	if uint64(len(backends)) > uint64(size) {
		return nil, fmt.Errorf("maglev: %d backends, size %d: %w", len(backends), size, ErrTooFewEntries)
	}

	sorted := slices.Clone(backends)
	slices.SortFunc(sorted, func(a, b Backend) int { return strings.Compare(a.Key, b.Key) })

	m := uint64(size)
	// Per backend: the next position of its permutation to try, its skip,
	// and the weight credit that decides when it gets a turn.
	type walker struct {
		pos, skip uint64
		credit    uint64
		weight    uint64
		id        uint32
	}
	walkers := make([]walker, len(sorted))
	var maxWeight uint64
	for i, b := range sorted {
		if b.Weight == 0 {
			return nil, fmt.Errorf("maglev: backend %q: %w", b.Key, ErrZeroWeight)
		}
		if i > 0 && sorted[i-1].Key == b.Key {
			return nil, fmt.Errorf("maglev: backend %q: %w", b.Key, ErrDuplicateKey)
		}
		w := walker{
			pos:    hash(b.Key, offsetSeed) % m,
			skip:   1,
			weight: uint64(b.Weight),
			id:     b.ID,
		}
		if m > 1 {
			w.skip = hash(b.Key, skipSeed)%(m-1) + 1
		}
		walkers[i] = w
		maxWeight = max(maxWeight, w.weight)
	}

	// taken marks claimed positions; the table is written alongside.
	taken := make([]bool, size)
	table := make([]uint32, size)
	var filled uint64

	// Each round every backend earns credit equal to its weight; whenever its
	// credit reaches the largest weight it takes one turn: it claims the next
	// free position of its permutation. The heaviest backends take a turn
	// every round and the others proportionally less often, so the table
	// fills in interleaved fashion and the shares track the weights even when
	// Σw exceeds the table size.
	for filled < m {
		for i := range walkers {
			w := &walkers[i]
			w.credit += w.weight
			if w.credit < maxWeight {
				continue
			}
			w.credit -= maxWeight
			for taken[w.pos] {
				w.pos += w.skip
				if w.pos >= m {
					w.pos -= m
				}
			}
			taken[w.pos] = true
			table[w.pos] = w.id
			w.pos += w.skip
			if w.pos >= m {
				w.pos -= m
			}
			filled++
			if filled == m {
				break
			}
		}
	}
	return table, nil
}

// hash is FNV-1a 64 over key, started from a seeded basis and finished with
// the murmur3 fmix64 avalanche so that close keys ("...:80", "...:81") land
// far apart.
func hash(key string, seed uint64) uint64 {
	const (
		offset64 = 14695981039346656037
		prime64  = 1099511628211
	)
	h := uint64(offset64) ^ seed
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= prime64
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// IsPrime reports whether n is a prime number.
func IsPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	if n < 4 {
		return true
	}
	if n%2 == 0 || n%3 == 0 {
		return false
	}
	v := uint64(n)
	for d := uint64(5); d*d <= v; d += 6 {
		if v%d == 0 || v%(d+2) == 0 {
			return false
		}
	}
	return true
}
