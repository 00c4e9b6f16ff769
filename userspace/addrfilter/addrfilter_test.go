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
	own6 := append(own,
		Own{Addr: netip.MustParseAddr("2001:2::100"), What: `listen address of service "web6"`},
		Own{Addr: netip.MustParseAddr("2001:2::1"), Host: true, What: "an address of this host"})
	none = New(nil, nil, own6)
	v6lab := New([]netip.Prefix{netip.MustParsePrefix("2001:2::/48"), netip.MustParsePrefix("::1/128")},
		[]netip.Prefix{netip.MustParsePrefix("2001:2::99/128")}, own6)
	v6broad := New([]netip.Prefix{netip.MustParsePrefix("::/0")}, nil, own6)
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
		{none, "::ffff:127.0.0.1", ReasonV4Mapped},
		{none, "::ffff:198.18.2.11", ReasonV4Mapped}, // an IPv4 backend in disguise
		{none, "::ffff:198.18.1.100", ReasonOwn},     // our own comes first
		{lab, "::ffff:127.0.0.1", ReasonV4Mapped},    // an allow entry does not loosen it
		{none, "::1", ReasonLoopback},
		{none, "fe80::1", ReasonLinkLocal},
		{none, "fe80::1%eth0", ReasonLinkLocal},
		{none, "::", ReasonUnspecified},
		{none, "::ffff:0.0.0.0", ReasonUnspecified},
		{none, "::7f00:1", ReasonReserved}, // IPv4-compatible 127.0.0.1
		{none, "::2", ReasonReserved},
		{none, "100::1", ReasonReserved},
		{none, "fec0::1", ReasonReserved},
		{none, "ff02::1", ReasonMulticast},
		{none, "ff05::1:3", ReasonMulticast},
		{none, "64:ff9b::7f00:1", ReasonV4Embedded},    // NAT64 of 127.0.0.1
		{none, "64:ff9b::a9fe:a9fe", ReasonV4Embedded}, // NAT64 of 169.254.169.254
		{none, "64:ff9b:1::1", ReasonV4Embedded},
		{none, "2002:7f00:1::1", ReasonV4Embedded}, // 6to4 of 127.0.0.1
		{none, "2001:0:4136:e378::1", ReasonV4Embedded},
		{none, "2001:2::11", ""}, // the benchmarking range (the lab's)
		{none, "2001:2:0:2::11", ""},
		{none, "2001:db8::1", ""},
		{none, "fd00::1", ""}, // unique local: private backends
		{none, "2a00:1450:4001::1", ""},
		{nil, "::1", ReasonLoopback},
		{v6lab, "2001:2::11", ""},
		{v6lab, "2001:2::99", ReasonDenied},
		{v6lab, "2001:3::1", ReasonNotAllowed},
		{v6lab, "2001:2::1", ReasonOwn}, // a host address, not named by a /128
		{v6lab, "2001:2::100", ReasonOwn},
		{v6lab, "::1", ""}, // named by a /128: loosened knowingly
		{v6lab, "fe80::1", ReasonNotAllowed},
		{v6broad, "fe80::1", ReasonLinkLocal}, // ::/0 does not loosen the defaults
		{v6broad, "64:ff9b::7f00:1", ReasonV4Embedded},
		{v6broad, "2001:2::11", ""},
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
	f.Add(netip.MustParseAddr("::ffff:198.18.2.11").AsSlice())
	f.Add(netip.MustParseAddr("64:ff9b::7f00:1").AsSlice())
	filter := New([]netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")}, nil,
		[]Own{{Addr: netip.MustParseAddr("198.18.1.100"), What: "vip"}})
	f.Fuzz(func(t *testing.T, b []byte) {
		ip, ok := netip.AddrFromSlice(b)
		if !ok {
			return
		}
		v := filter.Check(netip.AddrPortFrom(ip, 80))
		u := ip.Unmap()
		if v.OK && (ip.Is4In6() || u.IsLoopback() || u.IsUnspecified() || u.IsMulticast() || u.IsLinkLocalUnicast() ||
			!netip.MustParsePrefix("198.18.0.0/15").Contains(u) || u == netip.MustParseAddr("198.18.1.100")) {
			t.Fatalf("%s accepted", ip)
		}
	})
}
