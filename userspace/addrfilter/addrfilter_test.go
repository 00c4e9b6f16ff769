package addrfilter

import (
	"net/netip"
	"testing"
)

func TestCheck(t *testing.T) {
	own := []Own{
		{Addr: netip.MustParseAddr("198.18.1.100"), What: `listen address of service "web-l4"`},
		{Addr: netip.MustParseAddr("127.0.0.1"), Port: 9464, What: "the metrics listen address"},
		{Addr: netip.MustParseAddr("198.18.0.1"), Host: true, What: "an address of this host"},
		{Addr: netip.MustParseAddr("198.18.2.50"), Host: true, What: "an address of this host"},
	}
	none := New(nil, nil, own)
	lab := New([]netip.Prefix{netip.MustParsePrefix("198.18.2.0/24"), netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("198.18.2.50/32")},
		[]netip.Prefix{netip.MustParsePrefix("198.18.2.99/32")}, own)
	broad := New([]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, nil, own)
	for _, tc := range []struct {
		f    *Filter
		ip   string
		want string // "" = accepted
	}{
		{none, "198.18.2.11", ""},
		{none, "10.1.2.3", ""},
		{none, "0.0.0.0", ReasonUnspecified},
		{none, "0.1.2.3", ReasonThisNetwork},
		{none, "127.0.0.1", ReasonLoopback},
		{none, "127.8.9.10", ReasonLoopback},
		{none, "169.254.169.254", ReasonLinkLocal},
		{none, "224.0.0.1", ReasonMulticast},
		{none, "239.255.255.250", ReasonMulticast},
		{none, "240.0.0.1", ReasonReserved},
		{none, "255.255.255.255", ReasonReserved},
		{none, "198.18.1.100", ReasonOwn},
		{none, "198.18.1.100:8080", ReasonOwn}, // a VIP's other ports too
		{none, "198.18.0.1", ReasonOwn},
		{none, "198.18.2.50", ReasonOwn},
		{none, "::ffff:127.0.0.1", ReasonLoopback},
		{none, "::1", ReasonLoopback},
		{none, "fe80::1", ReasonLinkLocal},
		{none, "::", ReasonUnspecified},
		{nil, "127.0.0.1", ReasonLoopback},
		{nil, "198.18.2.11", ""},
		{lab, "198.18.2.11", ""},
		{lab, "198.18.2.99", ReasonDenied},
		{lab, "198.18.3.1", ReasonNotAllowed},
		{lab, "127.0.0.1", ""},               // named by a /32: loosened knowingly
		{lab, "127.0.0.2", ReasonNotAllowed}, // not in the allow list
		{lab, "198.18.1.100", ReasonOwn},     // nothing overrides our own
		{broad, "10.0.0.1", ""},
		{broad, "127.0.0.1", ReasonLoopback}, // 0.0.0.0/0 does not loosen the defaults
		{broad, "169.254.169.254", ReasonLinkLocal},
	} {
		ap, err := netip.ParseAddrPort(tc.ip)
		if err != nil {
			ap = netip.AddrPortFrom(netip.MustParseAddr(tc.ip), 80)
		}
		v := tc.f.Check(ap)
		if tc.want == "" && !v.OK || tc.want != "" && (v.OK || v.Reason != tc.want) {
			t.Errorf("%s: %+v, want reason %q", tc.ip, v, tc.want)
		}
		if !v.OK && v.Detail == "" {
			t.Errorf("%s: refused without a detail", tc.ip)
		}
	}
}

func FuzzCheck(f *testing.F) {
	f.Add([]byte{127, 0, 0, 1})
	f.Add([]byte{198, 18, 2, 11})
	f.Add(make([]byte, 16))
	filter := New([]netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")}, nil,
		[]Own{{Addr: netip.MustParseAddr("198.18.1.100"), What: "vip"}})
	f.Fuzz(func(t *testing.T, b []byte) {
		ip, ok := netip.AddrFromSlice(b)
		if !ok {
			return
		}
		v := filter.Check(netip.AddrPortFrom(ip, 80))
		u := ip.Unmap()
		if v.OK && (u.IsLoopback() || u.IsUnspecified() || u.IsMulticast() || u.IsLinkLocalUnicast() ||
			!netip.MustParsePrefix("198.18.0.0/15").Contains(u) || u == netip.MustParseAddr("198.18.1.100")) {
			t.Fatalf("%s accepted", ip)
		}
	})
}
