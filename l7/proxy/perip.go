package proxy

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
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

// A shard keeps an address whose count fell to 0 (a client between two
// requests of a kept-alive connection: its count goes 1, 0, 1, … — one
// map look-up per acquire and per release, where deleting and adding the
// entry again each time took four); those idle entries are swept out
// once they are more than idleKept and half the shard's, so that the map
// holds the addresses counting something and at most as many others
// (amortized: a sweep's work is paid for by the releases before it).
type perIPShard struct {
	mu   sync.Mutex
	n    map[netip.Addr]*int32
	idle int      // entries at 0
	_    [40]byte // a shard per cache line (64 bytes with the lock, map and idle)
}

// idleKept is how many entries at 0 a shard keeps at least before a sweep.
const idleKept = 64

func newPerIP(max int) *perIP {
	p := &perIP{max: int32(min(max, 1<<30))}
	for i := range p.shards {
		p.shards[i].n = make(map[netip.Addr]*int32)
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
	var held int32
	if n != nil {
		held = *n
	}
	if held >= p.max {
		return false
	}
	switch {
	case n == nil:
		n = new(int32)
		sh.n[key] = n
	case held == 0:
		sh.idle--
	}
	*n++
	return true
}

// release gives back one acquired for key.
func (p *perIP) release(key netip.Addr) {
	sh := p.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	n := sh.n[key]
	if n == nil || *n <= 0 {
		return // (never acquired: nothing to give back)
	}
	if *n--; *n > 0 {
		return
	}
	if sh.idle++; sh.idle > idleKept && sh.idle > len(sh.n)/2 {
		for k, v := range sh.n {
			if *v == 0 {
				delete(sh.n, k)
			}
		}
		sh.idle = 0
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

// requestKey is the key of a request's client (false: none, not
// counted): its peer's, or, when the peer is a trusted proxy, that of the
// client the proxy names in h (forwardedClient). A proxy that names none
// is not counted: it carries many clients.
func requestKey(p peer, h http.Header, trusted []netip.Prefix) (netip.Addr, bool) {
	if !p.ok {
		return netip.Addr{}, false
	}
	if !p.trusted {
		return clientKey(p.ip), true
	}
	if ip, ok := forwardedClient(h, trusted); ok {
		return clientKey(ip), true
	}
	return netip.Addr{}, false
}

// maxForwardedHops bounds the trusted proxies forwardedClient looks past.
const maxForwardedHops = 16

// forwardedClient is the client address the trusted proxies in front of
// sluice name in h: the last X-Forwarded-For entry that is not itself one
// of the trusted proxies (those before it come from the client and prove
// nothing), else X-Real-IP. False when neither names one (or an entry is
// no address).
func forwardedClient(h http.Header, trusted []netip.Prefix) (netip.Addr, bool) {
	xff := h["X-Forwarded-For"]
	hops := 0
	for i := len(xff) - 1; i >= 0; i-- {
		v := xff[i]
		for v != "" {
			var e string
			if j := strings.LastIndexByte(v, ','); j >= 0 {
				v, e = v[:j], v[j+1:]
			} else {
				v, e = "", v
			}
			if e = strings.TrimSpace(e); e == "" {
				continue
			}
			ip, ok := parseForwardedAddr(e)
			if !ok {
				return netip.Addr{}, false
			}
			if !inPrefixes(ip, trusted) {
				return ip, true
			}
			if hops++; hops >= maxForwardedHops {
				return netip.Addr{}, false
			}
		}
	}
	if len(xff) == 0 {
		if vv := h["X-Real-Ip"]; len(vv) == 1 {
			if ip, ok := parseForwardedAddr(strings.TrimSpace(vv[0])); ok && !inPrefixes(ip, trusted) {
				return ip, true
			}
		}
	}
	return netip.Addr{}, false
}

// parseForwardedAddr parses an address as forwarding headers write it:
// bare ("198.18.0.7", "2001:2::7"), or with a port ("198.18.0.7:4711",
// "[2001:2::7]:4711").
func parseForwardedAddr(s string) (netip.Addr, bool) {
	if ip, err := netip.ParseAddr(s); err == nil {
		return ip.Unmap().WithZone(""), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().WithZone(""), true
	}
	return netip.Addr{}, false
}
