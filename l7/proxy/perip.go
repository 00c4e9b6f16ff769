package proxy

import (
	"net"
	"net/netip"
	"sync"
)

// perIP counts what each client address holds (connections, requests in
// flight) against a limit, so that one host cannot take a listener's
// whole client.max_connections or max_requests from everyone else. An
// IPv6 client counts per /64: a host is usually given a whole /64 and can
// use any address in it.
type perIP struct {
	max    int32
	shards [perIPShards]perIPShard
}

// perIPShards spreads the counts over locks of their own, so that many
// cores counting requests do not queue on one.
const perIPShards = 32

type perIPShard struct {
	mu sync.Mutex
	n  map[netip.Addr]int32
	_  [48]byte // a shard per cache line (64 bytes with the lock and map)
}

func newPerIP(max int) *perIP {
	p := &perIP{max: int32(min(max, 1<<30))}
	for i := range p.shards {
		p.shards[i].n = make(map[netip.Addr]int32)
	}
	return p
}

// shard is key's shard: its address's bytes folded (a client address is
// not chosen to collide with others: at worst they share a lock).
func (p *perIP) shard(key netip.Addr) *perIPShard {
	b := key.As16()
	h := uint32(0)
	for _, c := range b {
		h = h*31 + uint32(c)
	}
	return &p.shards[h%perIPShards]
}

// clientKey is the address a client is counted under: an IPv4 address
// (an IPv4-mapped IPv6 one unmapped), or the /64 of an IPv6 one; the
// zero Addr when ip is not valid.
func clientKey(ip netip.Addr) netip.Addr {
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// acquire counts one more for key, or reports false (counting nothing)
// when key holds max already.
func (p *perIP) acquire(key netip.Addr) bool {
	sh := p.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	n := sh.n[key]
	if n >= p.max {
		return false
	}
	sh.n[key] = n + 1
	return true
}

// release gives back one acquired for key.
func (p *perIP) release(key netip.Addr) {
	sh := p.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if n := sh.n[key]; n > 1 {
		sh.n[key] = n - 1
	} else {
		delete(sh.n, key)
	}
}

// connKey is the key of a client connection's peer (false when it has no
// IP address, or it is a trusted proxy: a proxy in front of sluice
// carries many clients, and is not limited per address).
func connKey(c net.Conn, trusted []netip.Prefix) (netip.Addr, bool) {
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok || inPrefixes(ip.Unmap(), trusted) {
		return netip.Addr{}, false
	}
	return clientKey(ip), true
}

// requestKey is connKey for a request's peer.
func requestKey(p peer) (netip.Addr, bool) {
	if !p.ok || p.trusted {
		return netip.Addr{}, false
	}
	return clientKey(p.ip), true
}
