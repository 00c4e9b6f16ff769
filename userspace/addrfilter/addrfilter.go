// Package addrfilter decides which addresses may become backends. Every
// address a pool is given — a fixed `address:` of the config or an answer
// of a DNS name — goes through a Filter first, because whoever controls a
// DNS answer must not be able to point the balancer at itself, at the
// host's loopback services or at a cloud metadata endpoint.
//
// An address (ip:port) is refused, in this order, when it is:
//  1. one of our own listeners: the VIP of an L4 service (any port), the
//     listen address of an http service or of the metrics endpoint (that
//     ip:port). Nothing overrides this: a backend that is the balancer is
//     a loop.
//  2. in the pool's deny list.
//  3. outside the pool's allow list, when the pool has one.
//  4. an address of the host itself, unless the allow list names it
//     exactly (a /32 or /128).
//  5. in a range that is never a backend by default: unspecified, 0.0.0.0/8
//     ("this network"), loopback, link-local (169.254.0.0/16, which holds
//     the metadata address 169.254.169.254), multicast, 240.0.0.0/4
//     (reserved, with the broadcast address), and their IPv6 equivalents
//     (::1, fe80::/10, ff00::/8, the rest of ::/8, fec0::/10), plus the
//     IPv6 ranges that carry an IPv4 address a gateway would reach for
//     us (NAT64 64:ff9b::/96 and 64:ff9b:1::/48, 6to4 2002::/16, Teredo
//     2001::/32), and the discard prefix 100::/64. An allow entry inside
//     such a range (e.g. 127.0.0.1/32) lets the operator loosen it
//     knowingly; a broad one (0.0.0.0/0, ::/0) does not.
//
// An IPv4-mapped IPv6 address (::ffff:198.18.2.11) is refused always,
// after the own-address check: it is an IPv4 address written as IPv6,
// which would slip past the IPv4 ranges if unmapped and reach an IPv4
// host from an IPv6 service if not; write the IPv4 address instead.
package addrfilter

import (
	"fmt"
	"net/netip"
	"slices"
)

// Reasons an address is refused (Verdict.Reason), stable strings for
// status and metric labels.
const (
	ReasonOwn         = "own-address"
	ReasonDenied      = "denied"
	ReasonNotAllowed  = "not-allowed"
	ReasonUnspecified = "unspecified"
	ReasonThisNetwork = "this-network"
	ReasonLoopback    = "loopback"
	ReasonLinkLocal   = "link-local"
	ReasonMulticast   = "multicast"
	ReasonReserved    = "reserved"
	ReasonV4Mapped    = "v4-mapped"
	ReasonV4Embedded  = "v4-embedded"
)

// Reasons lists every reason, for documentation and tests.
var Reasons = []string{ReasonOwn, ReasonDenied, ReasonNotAllowed, ReasonUnspecified,
	ReasonThisNetwork, ReasonLoopback, ReasonLinkLocal, ReasonMulticast, ReasonReserved,
	ReasonV4Mapped, ReasonV4Embedded}

// category is a range refused by default.
type category struct {
	prefix netip.Prefix
	reason string
	what   string
}

// defaultDeny are the ranges refused unless an allow entry inside them
// says otherwise. The unspecified addresses are refused always (an allow
// entry cannot name them usefully). The first range containing an address
// gives its reason, so narrow ranges come before the wide ones holding
// them (::1 before ::/8).
var defaultDeny = []category{
	{netip.MustParsePrefix("0.0.0.0/8"), ReasonThisNetwork, "0.0.0.0/8 (this network)"},
	{netip.MustParsePrefix("127.0.0.0/8"), ReasonLoopback, "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), ReasonLinkLocal, "link-local (cloud metadata lives here)"},
	{netip.MustParsePrefix("224.0.0.0/4"), ReasonMulticast, "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), ReasonReserved, "240.0.0.0/4 (reserved, broadcast)"},
	{netip.MustParsePrefix("::1/128"), ReasonLoopback, "loopback"},
	{netip.MustParsePrefix("64:ff9b::/96"), ReasonV4Embedded, "64:ff9b::/96 (NAT64: an IPv4 address behind a translator)"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), ReasonV4Embedded, "64:ff9b:1::/48 (local NAT64: an IPv4 address behind a translator)"},
	{netip.MustParsePrefix("::/8"), ReasonReserved, "::/8 (reserved: IPv4-compatible and unassigned)"},
	{netip.MustParsePrefix("100::/64"), ReasonReserved, "100::/64 (discard-only)"},
	{netip.MustParsePrefix("fe80::/10"), ReasonLinkLocal, "link-local"},
	{netip.MustParsePrefix("fec0::/10"), ReasonReserved, "fec0::/10 (site-local, deprecated)"},
	{netip.MustParsePrefix("ff00::/8"), ReasonMulticast, "multicast"},
	{netip.MustParsePrefix("2002::/16"), ReasonV4Embedded, "2002::/16 (6to4: an IPv4 address behind a relay)"},
	{netip.MustParsePrefix("2001::/32"), ReasonV4Embedded, "2001::/32 (Teredo: an IPv4 address behind a relay)"},
}

// Own is one of our own addresses, with what it is (for the message).
type Own struct {
	Addr netip.Addr
	// Port is the listener's port; 0: every port (an L4 VIP, whose
	// other ports are not a backend either).
	Port uint16
	// Host marks an address of the host's interfaces rather than a
	// listener: an allow entry naming it exactly loosens it.
	Host bool
	What string // e.g. `listen address of service "web-l4"`
}

// Filter is one pool's filter. A nil *Filter refuses only the default
// ranges. It is immutable and safe for concurrent use.
type Filter struct {
	allow, deny []netip.Prefix
	own         map[netip.AddrPort]string // port 0: every port
	host        map[netip.Addr]string
}

// New returns the filter of a pool with allow and deny lists (either may
// be empty) and our own addresses.
func New(allow, deny []netip.Prefix, own []Own) *Filter {
	f := &Filter{allow: canon(allow), deny: canon(deny),
		own: make(map[netip.AddrPort]string, len(own)), host: make(map[netip.Addr]string)}
	for _, o := range own {
		if !o.Addr.IsValid() || o.Addr.IsUnspecified() {
			continue
		}
		if o.Host {
			f.host[o.Addr.Unmap()] = o.What
			continue
		}
		f.own[netip.AddrPortFrom(o.Addr.Unmap(), o.Port)] = o.What
	}
	return f
}

func canon(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if p.IsValid() {
			out = append(out, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p)).Masked())
		}
	}
	return out
}

// unmapBits is how many bits an IPv4-mapped IPv6 prefix loses unmapped.
func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return 96
	}
	return 0
}

// Verdict is the filter's answer for one address.
type Verdict struct {
	OK     bool
	Reason string // one of the Reason constants when !OK
	Detail string // a sentence for status and messages when !OK
}

// Check judges the backend address ap.
func (f *Filter) Check(ap netip.AddrPort) Verdict {
	// A zone (fe80::1%eth0) would make every prefix miss it.
	ip := ap.Addr().Unmap().WithZone("")
	if !ip.IsValid() {
		return Verdict{Reason: ReasonUnspecified, Detail: "not an address"}
	}
	if f != nil {
		for _, k := range []netip.AddrPort{netip.AddrPortFrom(ip, 0), netip.AddrPortFrom(ip, ap.Port())} {
			if what, ok := f.own[k]; ok {
				return Verdict{Reason: ReasonOwn, Detail: "our own address: " + what}
			}
		}
	}
	if ip.IsUnspecified() {
		return Verdict{Reason: ReasonUnspecified, Detail: "the unspecified address"}
	}
	if ap.Addr().Is4In6() {
		return Verdict{Reason: ReasonV4Mapped, Detail: "an IPv4-mapped IPv6 address: write the IPv4 address " + ip.String() + " instead"}
	}
	var allowedBy []netip.Prefix
	if f != nil {
		for _, p := range f.deny {
			if p.Contains(ip) {
				return Verdict{Reason: ReasonDenied, Detail: fmt.Sprintf("in the pool's deny list (%s)", p)}
			}
		}
		for _, p := range f.allow {
			if p.Contains(ip) {
				allowedBy = append(allowedBy, p)
			}
		}
		if len(f.allow) > 0 && len(allowedBy) == 0 {
			return Verdict{Reason: ReasonNotAllowed, Detail: "not in the pool's allow list"}
		}
		if what, ok := f.host[ip]; ok && !slices.ContainsFunc(allowedBy, func(p netip.Prefix) bool { return p.IsSingleIP() }) {
			return Verdict{Reason: ReasonOwn, Detail: what + ": never a backend unless the pool's allow list names it (/32)"}
		}
	}
	for _, c := range defaultDeny {
		if !c.prefix.Contains(ip) {
			continue
		}
		for _, p := range allowedBy {
			if p.Bits() >= c.prefix.Bits() {
				return Verdict{OK: true} // loosened knowingly
			}
		}
		return Verdict{Reason: c.reason, Detail: fmt.Sprintf("%s: never a backend unless the pool's allow list names it", c.what)}
	}
	return Verdict{OK: true}
}
