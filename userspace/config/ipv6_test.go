package config

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
)

// Issue 12: IPv6 listen addresses (http), IPv6 backends, dual-stack pools,
// and the warning for a service whose pool has no address of its family.
func TestIPv6(t *testing.T) {
	tests := []struct {
		name string
		yaml string
	}{
		{"dual stack", `
dns: {servers: ["2001:2:0:2::53", "[2001:2:0:2::54]:5353", 198.18.2.53]}
pools:
  - name: web
    backends:
      - address: 198.18.2.11:80
      - address: "[2001:2:0:2::11]:80"
      - name: backend.lab
        port: 80
  - name: v6
    backends:
      - address: "[2001:2:0:2::12]:8080"
        weight: 2
services:
  - name: web4
    listen: 198.18.1.101:80
    protocol: http
    pool: web
  - name: web6
    listen: "[2001:2::100]:80"
    protocol: http
    pool: web
  - name: any6
    listen: "[::]:8080"
    protocol: http
    pool: v6
`},
		{"refused", `
pools:
  - name: web
    backends:
      - address: "[::ffff:198.18.2.11]:80"  # <- v4-mapped
      - address: "[::1]:80"                 # <- refused (loopback)
      - address: "[64:ff9b::7f00:1]:80"     # <- refused (v4-embedded)
      - address: "[2001:2::100]:80"         # <- refused (own-address)
      - address: "[2001:2:0:2::11]:0"       # <- port must not be 0
      - address: "2001:2:0:2::11:80"        # <- "2001:2:0:2::11:80" is an IPv6 address without a port: use address: [2001:2:0:2::11:80]:PORT (an IPv6 address with a port is written in brackets: [2001:2:0:2::11]:80)
      - address: "[2001:2:0:2::11]:80"
services:
  - name: web6
    listen: "[2001:2::100]:80"
    protocol: http
    pool: web
`},
		{"dual-stack wildcard", `
pools:
  - name: web
    backends:
      - address: 198.18.2.11:80
      - address: "[2001:2:0:2::11]:80"
services:
  - name: any6
    listen: "[::]:80"
    protocol: http
    pool: web
  - name: v4
    listen: 198.18.1.101:80   # <- services[1].listen: 198.18.1.101:80/tcp is already used by service "any6"
    protocol: http
    pool: web
  - name: any4
    listen: 0.0.0.0:80        # <- services[2].listen: 0.0.0.0:80/tcp is already used by service "any6"
    protocol: http
    pool: web
  - name: v6
    listen: "[2001:2::100]:80" # <- services[3].listen: [2001:2::100]:80/tcp is already used by service "any6"
    protocol: http
    pool: web
  - name: other-port
    listen: 198.18.1.101:81
    protocol: http
    pool: web
  - name: any4b
    listen: 0.0.0.0:82
    protocol: http
    pool: web
  - name: v6b
    listen: "[2001:2::100]:82" # an IPv6 address on the IPv4 wildcard's port: no conflict
    protocol: http
    pool: web
`},
		{"family warning", `
pools:
  - name: v4
    backends:
      - address: 198.18.2.11:80
  - name: v6
    backends:
      - address: "[2001:2:0:2::11]:80"
  - name: named
    backends:
      - name: backend.lab
        port: 80
services:
  - name: a
    listen: "[2001:2::100]:80"   # <~ services[0].listen: service "a" listens on IPv6 but pool "v4" has only IPv4 addresses
    protocol: http
    pool: v4
  - name: b
    listen: 198.18.1.101:80      # <~ services[1].listen: service "b" listens on IPv4 but pool "v6" has only IPv6 addresses
    protocol: http
    pool: v6
  - name: c
    listen: "[::]:81"            # <~ pool "v4" has only IPv4 addresses
    protocol: http
    pool: v4
  - name: d
    listen: "[2001:2::100]:82"   # a DNS name may answer AAAA: no warning
    protocol: http
    pool: named
  - name: e
    listen: 198.18.1.100:80      # <~ services[4].listen: service "e" listens on IPv4 but pool "v6"
    protocol: udp
    pool: v6
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "interfaces: [eth0]\n" + tt.yaml[1:]
			cfg, err := Parse([]byte(src), "test.yaml")
			checkProblems(t, src, err)
			var ve *ValidationError
			if err != nil && !errors.As(err, &ve) {
				t.Fatalf("want *ValidationError, got %v", err)
			}
			if cfg != nil {
				checkWarnings(t, src, cfg)
			}
		})
	}
	cfg, err := Parse([]byte("interfaces: [eth0]\n"+tests[0].yaml[1:]), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.DNS.Servers, []string{"[2001:2:0:2::53]:53", "[2001:2:0:2::54]:5353", "198.18.2.53:53"}; !slices.Equal(got, want) {
		t.Errorf("dns servers %v, want %v", got, want)
	}
	if got := cfg.Pools[0].Backends[1].AddrPort; got != netip.MustParseAddrPort("[2001:2:0:2::11]:80") {
		t.Errorf("v6 backend parsed as %v", got)
	}
}
