package config

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"time"
)

// BGP makes the agent announce its VIPs. sluice speaks no BGP itself: the
// agent writes one /32 route per announced VIP into a routing table of its
// own, marked with its own route protocol, and the BGP daemon on the node
// (BIRD 2) exports exactly those routes to the peers. Table and Protocol
// are what the agent writes; the other keys are what `sluice node
// bird-config` puts in the BIRD configuration it generates. See
// docs/scale-out.md for why, and docs/config.md for every key.
type BGP struct {
	// Table is the kernel routing table the VIP routes go to: one no
	// ip rule looks at, so they change nothing in the node's forwarding.
	Table uint32 `yaml:"table"` // default 4153; not 0, 253 (default), 254 (main), 255 (local)
	// Protocol is the rtnetlink protocol number the routes carry, so
	// BIRD (krt_source) and the agent (its own routes only) tell them
	// apart from anything else in the table.
	Protocol uint8     `yaml:"protocol"` // default 201; 5..255 minus the numbers iproute2 names
	LocalASN uint32    `yaml:"local_asn"`
	RouterID string    `yaml:"router_id"`
	Peers    []BGPPeer `yaml:"peers"`
	// HoldTime and Keepalive are the BGP timers BIRD proposes; BFD, when
	// set, takes a dead peer out faster than the hold time.
	HoldTime  Duration `yaml:"hold_time"` // default 9s, BIRD's minimum is 3s
	Keepalive Duration `yaml:"keepalive"` // default hold_time/3
	BFD       *BFD     `yaml:"bfd"`
	// Communities are added to every VIP route ("ASN:value").
	Communities []string `yaml:"communities"`
	// MED is the multi-exit discriminator sent with every VIP route (0: none).
	MED uint32 `yaml:"med"`
	// BIRDSocket is BIRD's control socket, where the agent reads the
	// sessions' state for status and metrics ("off": not read).
	BIRDSocket string `yaml:"bird_socket"` // default /run/bird/bird.ctl

	// RouterIDAddr is RouterID parsed.
	RouterIDAddr netip.Addr `yaml:"-"`
	Line         int        `yaml:"-"`
}

// BGPPeer is one BGP neighbour of the node's BGP daemon.
type BGPPeer struct {
	Address string `yaml:"address"` // the neighbour's IPv4 address
	ASN     uint32 `yaml:"asn"`
	// Multihop: the neighbour is not on a directly connected network.
	Multihop bool `yaml:"multihop"`

	// Addr is Address parsed.
	Addr netip.Addr `yaml:"-"`
}

// BFD sets the bidirectional forwarding detection timers of the sessions.
type BFD struct {
	Interval   Duration `yaml:"interval"`   // default 300ms: min rx and tx
	Multiplier int      `yaml:"multiplier"` // default 3: missed packets before down
}

// Defaults of the bgp section.
const (
	DefaultBGPTable    = 4153
	DefaultBGPProtocol = 201
	DefaultBGPHoldTime = 9 * time.Second
	DefaultBIRDSocket  = "/run/bird/bird.ctl"
	BIRDSocketOff      = "off"
)

// reservedRouteProtocols are the rtnetlink protocol numbers the kernel
// or iproute2's rt_protos name (the routes of others).
var reservedRouteProtocols = map[uint8]bool{
	0: true, 1: true, 2: true, 3: true, 4: true, 8: true, 9: true, 10: true, 11: true,
	12: true, 13: true, 14: true, 15: true, 16: true, 18: true, 42: true, 99: true,
	186: true, 187: true, 188: true, 189: true, 192: true,
}

func (d defaulter) bgp(b *BGP) {
	if b == nil {
		return
	}
	d.u32("bgp.table", &b.Table, DefaultBGPTable)
	if !d.set("bgp.protocol") {
		b.Protocol = DefaultBGPProtocol
	}
	d.dur("bgp.hold_time", &b.HoldTime, DefaultBGPHoldTime)
	d.str("bgp.bird_socket", &b.BIRDSocket, DefaultBIRDSocket)
	d.dur("bgp.keepalive", &b.Keepalive, b.HoldTime.D()/3)
	if b.BFD != nil {
		d.dur("bgp.bfd.interval", &b.BFD.Interval, 300*time.Millisecond)
		d.int("bgp.bfd.multiplier", &b.BFD.Multiplier, 3)
	}
}

func (v *validator) bgp(c *Config) {
	b := c.BGP
	if b == nil {
		return
	}
	switch b.Table {
	case 0, 253, 254, 255:
		v.add("bgp.table", "%d: must be a table of sluice's own, not 0, default (253), main (254) or local (255)", b.Table)
	}
	if reservedRouteProtocols[b.Protocol] {
		v.add("bgp.protocol", "%d: a route protocol the kernel or another daemon uses; pick one of sluice's own (e.g. %d)", b.Protocol, DefaultBGPProtocol)
	}
	if b.LocalASN == 0 {
		v.add("bgp.local_asn", "is required (the node's AS number, e.g. 64512)")
	}
	ip, err := netip.ParseAddr(b.RouterID)
	switch {
	case b.RouterID == "":
		v.add("bgp.router_id", "is required (an IPv4 address of the node)")
	case err != nil || !ip.Is4():
		v.add("bgp.router_id", "%q: must be an IPv4 address", b.RouterID)
	default:
		b.RouterIDAddr = ip
	}
	if len(b.Peers) == 0 {
		v.add("bgp.peers", "at least one peer is required")
	}
	seen := map[netip.Addr]bool{}
	for i := range b.Peers {
		p := &b.Peers[i]
		path := fmt.Sprintf("bgp.peers[%d]", i)
		ip, err := netip.ParseAddr(p.Address)
		switch {
		case err != nil || !ip.Is4():
			v.add(path+".address", "%q: must be an IPv4 address", p.Address)
		case seen[ip]:
			v.add(path+".address", "%s is listed twice", ip)
		default:
			seen[ip] = true
			p.Addr = ip
		}
		if p.ASN == 0 {
			v.add(path+".asn", "is required")
		}
	}
	if b.HoldTime.D() < 3*time.Second || b.HoldTime.D() > 65535*time.Second || b.HoldTime.D()%time.Second != 0 {
		v.add("bgp.hold_time", "%s: must be whole seconds between 3s and 65535s", b.HoldTime.D())
	}
	if b.Keepalive.D() < time.Second || b.Keepalive.D()%time.Second != 0 || b.Keepalive > b.HoldTime/3 {
		v.add("bgp.keepalive", "%s: must be whole seconds, at least 1s and at most hold_time/3", b.Keepalive.D())
	}
	if f := b.BFD; f != nil {
		if f.Interval.D() < 10*time.Millisecond || f.Interval.D() > 10*time.Second {
			v.add("bgp.bfd.interval", "%s: must be between 10ms and 10s", f.Interval.D())
		}
		if f.Multiplier < 2 || f.Multiplier > 50 {
			v.add("bgp.bfd.multiplier", "%d: must be between 2 and 50", f.Multiplier)
		}
	}
	if b.BIRDSocket != BIRDSocketOff && !filepath.IsAbs(b.BIRDSocket) {
		v.add("bgp.bird_socket", "%q: must be an absolute path or off", b.BIRDSocket)
	}
	for i, s := range b.Communities {
		if _, _, err := ParseCommunity(s); err != nil {
			v.add(fmt.Sprintf("bgp.communities[%d]", i), "%v", err)
		}
	}
	for _, s := range c.Services {
		if !s.IsL4() {
			continue
		}
		if s.ListenAddr.IsValid() && !s.ListenAddr.Addr().Is4() {
			v.add("bgp", "service %q: only IPv4 VIPs are announced for now", s.Name)
		}
	}
	warnSharedNATEndpoints(c, v)
}

// warnSharedNATEndpoints warns about a backend endpoint (address or name,
// and port) in the pools of several nat services of one protocol. Behind
// ECMP a nat reply may reach a node without its flow entry; the node then
// translates it from the endpoint's one nat service (the data path's
// backend_ports), which an endpoint of several services does not name: such
// a reply passes untranslated and the client's connection breaks.
func warnSharedNATEndpoints(c *Config, v *validator) {
	pools := make(map[string]*Pool, len(c.Pools))
	for i := range c.Pools {
		pools[c.Pools[i].Name] = &c.Pools[i]
	}
	type endpoint struct{ key, proto string }
	first := map[endpoint]string{} // the first nat service that uses it
	warned := map[endpoint]bool{}
	for i, s := range c.Services {
		p := pools[s.Pool]
		if !s.IsL4() || s.Mode != ModeNAT || p == nil {
			continue
		}
		for _, b := range p.Backends {
			key := b.Address
			if b.AddrPort.IsValid() {
				key = b.AddrPort.String()
			} else if b.Name != "" {
				key = net.JoinHostPort(b.Name, strconv.Itoa(int(b.Port)))
			}
			e := endpoint{key, s.Protocol}
			other, ok := first[e]
			switch {
			case !ok:
				first[e] = s.Name
			case other != s.Name && !warned[e]:
				warned[e] = true
				v.warn(fmt.Sprintf("services[%d].pool", i), "backend %s serves nat services %q and %q: behind ECMP a reply that reaches a node without its flow entry cannot be given a VIP and passes untranslated (the connection breaks); give each nat service its own backend ports, or use dsr, see docs/scale-out.md", key, other, s.Name)
			}
		}
	}
}

// ParseCommunity parses a standard BGP community "ASN:value" (each 0..65535).
func ParseCommunity(s string) (asn, value uint16, err error) {
	var a, b uint32
	var rest string
	n, _ := fmt.Sscanf(s, "%d:%d%s", &a, &b, &rest)
	if n != 2 || a > 65535 || b > 65535 || fmt.Sprintf("%d:%d", a, b) != s {
		return 0, 0, fmt.Errorf("community %q: want ASN:value, each 0..65535", s)
	}
	return uint16(a), uint16(b), nil
}
