// Package reqid gives every request of the L7 stage an id: cheap to make
// (one atomic add, no allocation until it is written out), unique across
// the agent's servers and restarts (a random prefix per Source, chosen
// when the Source is made, then a counter), or taken from a trusted
// peer's header (Parse). The access log, header rules ({request_id}) and
// sluice's own error answers carry it.
package reqid

import (
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"sync/atomic"
)

// prefixBytes random bytes start every id of a Source: 48 bits, so two
// agents (or two starts of one) share a prefix with a chance of 2^-48.
const prefixBytes = 6

// MaxLen is the longest id Parse accepts from a peer.
const MaxLen = 128

// Source makes the ids of one agent (every server of the process shares
// it, so ids are unique across services).
type Source struct {
	prefix [2 * prefixBytes]byte // hex
	n      atomic.Uint64
}

// NewSource makes a Source with a fresh random prefix.
func NewSource() *Source {
	var raw [prefixBytes]byte
	_, _ = rand.Read(raw[:]) // never fails (it crashes the program instead)
	s := &Source{}
	hex.Encode(s.prefix[:], raw[:])
	return s
}

// Next is a new id: the prefix, a dash and the counter in hex
// ("3f09a1c27b5d-1a2b").
func (s *Source) Next() ID { return ID{src: s, n: s.n.Add(1)} }

// ID is one request's id. The zero ID is no id.
type ID struct {
	src *Source // nil for an id taken from a header (s) or none
	n   uint64
	s   string
}

// IsZero reports whether id is no id.
func (id ID) IsZero() bool { return id.src == nil && id.s == "" }

// AppendTo appends the id's text to b (nothing for the zero ID).
func (id ID) AppendTo(b []byte) []byte {
	if id.src == nil {
		return append(b, id.s...)
	}
	b = append(b, id.src.prefix[:]...)
	b = append(b, '-')
	return strconv.AppendUint(b, id.n, 16)
}

// String is the id's text ("" for the zero ID); it allocates for an id
// of a Source: use AppendTo on a hot path.
func (id ID) String() string {
	if id.src == nil {
		return id.s
	}
	var buf [2*prefixBytes + 1 + 16]byte
	return string(id.AppendTo(buf[:0]))
}

// Parse takes an id from a peer's header value: 1 to MaxLen visible ASCII
// characters other than the quote, the backslash and the comma (so it
// is written as it came into a header, a log line or a list).
func Parse(v string) (ID, bool) {
	if v == "" || len(v) > MaxLen {
		return ID{}, false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c >= 0x7f || c == '"' || c == '\\' || c == ',' {
			return ID{}, false
		}
	}
	return ID{s: v}, true
}
