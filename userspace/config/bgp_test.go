package config

import (
	"strings"
	"testing"
	"time"
)

const bgpBase = `interfaces: [eth0]
pools:
  - name: web
    backends: [{address: 198.18.2.11:80}]
services:
  - name: web-l4
    listen: 198.18.1.100:80
    pool: web
`

func TestBGPDefaults(t *testing.T) {
	c, err := Parse([]byte(bgpBase+`bgp:
  local_asn: 64512
  router_id: 198.18.4.11
  peers: [{address: 198.18.4.1, asn: 64500}]
  bfd: {}
  communities: ["64512:100"]
`), "")
	if err != nil {
		t.Fatal(err)
	}
	b := c.BGP
	if b.Table != DefaultBGPTable || b.Protocol != DefaultBGPProtocol || b.HoldTime.D() != 9*time.Second ||
		b.Keepalive.D() != 3*time.Second || b.BFD.Interval.D() != 300*time.Millisecond || b.BFD.Multiplier != 3 {
		t.Fatalf("defaults: %+v %+v", b, b.BFD)
	}
	if b.RouterIDAddr.String() != "198.18.4.11" || b.Peers[0].Addr.String() != "198.18.4.1" {
		t.Fatalf("parsed addresses: %+v", b)
	}
	if noBGP, err := Parse([]byte(bgpBase), ""); err != nil || noBGP.BGP != nil {
		t.Fatalf("no bgp section: %v %+v", err, noBGP)
	}
}

func TestBGPInvalid(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"  table: 254\n", "bgp.table"},
		{"  protocol: 186\n", "bgp.protocol"},
		{"  hold_time: 2s\n", "bgp.hold_time"},
		{"  keepalive: 5s\n", "bgp.keepalive"},
		{"  communities: [\"70000:1\"]\n", "bgp.communities[0]"},
		{"  bfd: {interval: 1ms}\n", "bgp.bfd.interval"},
	} {
		_, err := Parse([]byte(bgpBase+`bgp:
  local_asn: 64512
  router_id: 198.18.4.11
  peers: [{address: 198.18.4.1, asn: 64500}]
`+tc.yaml), "")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: want an error on %s, got %v", tc.yaml, tc.want, err)
		}
	}
	_, err := Parse([]byte(bgpBase+"bgp: {local_asn: 0, router_id: x, peers: [{address: 2001:2::1}]}\n"), "")
	for _, want := range []string{"bgp.local_asn", "bgp.router_id", "bgp.peers[0].address", "bgp.peers[0].asn"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want an error on %s, got %v", want, err)
		}
	}
}

// Behind ECMP a nat service needs nothing more than its replies routed to
// the nodes; only an endpoint shared by several nat services of a
// protocol is warned about (a reply without its flow cannot be given a VIP).
func TestBGPWarnsAboutSharedNATEndpoints(t *testing.T) {
	const bgp = `bgp:
  local_asn: 64512
  router_id: 198.18.4.11
  peers: [{address: 198.18.4.1, asn: 64500}]
`
	warnings := func(cfg string) string {
		t.Helper()
		c, err := Parse([]byte(cfg), "")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(c.WarningLines(), "\n")
	}
	if w := warnings(bgpBase + bgp); strings.Contains(w, "behind ECMP") {
		t.Fatalf("one nat service: %q", w)
	}
	second := func(listen, mode, proto string) string {
		return bgpBase + "  - name: second\n    listen: " + listen + "\n    pool: web\n    mode: " + mode +
			"\n    protocol: " + proto + "\n" + bgp
	}
	w := warnings(second("198.18.1.101:80", "nat", "tcp"))
	if !strings.Contains(w, "backend 198.18.2.11:80 serves nat services \"web-l4\" and \"second\"") {
		t.Fatalf("two nat services, one endpoint: %q", w)
	}
	for _, cfg := range []string{
		second("198.18.1.101:80", "dsr", "tcp"),
		second("198.18.1.101:80", "snat", "tcp"),
		second("198.18.1.101:80", "nat", "udp"),
		strings.Replace(bgpBase, "    pool: web\n", "    mode: dsr\n    pool: web\n", 1) + bgp,
	} {
		if w := warnings(cfg); strings.Contains(w, "behind ECMP") {
			t.Errorf("%s: %q", cfg, w)
		}
	}
	// Without a bgp section, nothing to warn about.
	if w := warnings(strings.TrimSuffix(second("198.18.1.101:80", "nat", "tcp"), bgp)); strings.Contains(w, "behind ECMP") {
		t.Fatalf("no bgp: %q", w)
	}
}
