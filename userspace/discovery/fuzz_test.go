package discovery

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

// FuzzParseAnswer feeds arbitrary DNS replies to the answer parser: it must
// not panic, and what it hands on is always a sorted set of unique IPv4
// addresses (AAAA apart) with a TTL in range, whatever the reply claims.
func FuzzParseAnswer(f *testing.F) {
	for _, rrs := range [][]string{
		{"backend.lab. 30 IN A 198.18.2.11", "backend.lab. 5 IN A 198.18.2.12"},
		{"backend.lab. 30 IN CNAME alb.lab.", "alb.lab. 10 IN A 127.0.0.1", "alb.lab. 10 IN A 169.254.169.254"},
		{"backend.lab. 60 IN AAAA 2001:2::1"},
	} {
		m := new(dns.Msg)
		m.SetQuestion("backend.lab.", dns.TypeA)
		m.Response = true
		for _, s := range rrs {
			rr, err := dns.NewRR(s)
			if err != nil {
				f.Fatal(err)
			}
			m.Answer = append(m.Answer, rr)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		m := new(dns.Msg)
		if err := m.Unpack(raw); err != nil {
			return
		}
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
			a := parseAnswer("backend.lab.", qtype, m)
			if !slices.IsSortedFunc(a.Addrs, netip.Addr.Compare) || len(slices.Compact(slices.Clone(a.Addrs))) != len(a.Addrs) {
				t.Fatalf("addresses not a sorted set: %v", a.Addrs)
			}
			for _, ip := range a.Addrs {
				if ip.Is4() != (qtype == dns.TypeA) {
					t.Fatalf("answer of the other type kept: %s for %s", ip, dns.TypeToString[qtype])
				}
			}
			if a.TTL < 0 || a.TTL.Seconds() > float64(^uint32(0)) {
				t.Fatalf("TTL %s out of range", a.TTL)
			}
		}
	})
}
