package agent

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/sluicelb/sluice/internal/defaults"
	"github.com/sluicelb/sluice/userspace/addrfilter"
	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/pool"
)

// reasonOverLimit is the refusal reason of the addresses of a DNS answer
// beyond maxPerName.
const reasonOverLimit = "over-limit"

// sourceKey is one source of one pool.
type sourceKey struct{ pool, source string }

// admission is the address filter in front of every pool: each set a
// source gives a pool (a DNS answer, the config's fixed addresses) passes
// through the pool's addrfilter.Filter, built from the pool's allow and
// deny lists and our own addresses (every listen address, the metrics
// address, the host's addresses). A refused address never reaches the
// pool, so it is never a backend, a health-check target or an L7
// upstream; it is listed in status and counted. Its own lock guards the
// filters and what they refuse now.
type admission struct {
	hostAddrs func() []netip.Addr               // nil: none known
	count     func(pool, source, reason string) // the metric; nil: none
	forget    func(pool, source string)         // drops a source's series; nil: none
	// maxPerName caps the addresses one DNS name may add to a pool.
	maxPerName int

	mu      sync.Mutex
	filters map[string]*addrfilter.Filter
	refused map[sourceKey]map[netip.AddrPort]addrfilter.Verdict
	own     []addrfilter.Own
	// host is the host's addresses the filters were built with (sorted),
	// cfg the config (see hostChanged).
	host []netip.Addr
	cfg  *config.Config
}

// hostChanged reads the host's addresses again and, when they are not
// those the filters were built with (an address added by DHCP, keepalived,
// an operator), builds the filters again and returns true: the sources
// are then to be admitted again.
func (g *admission) hostChanged() bool {
	if g.hostAddrs == nil {
		return false
	}
	host := sortedAddrs(g.hostAddrs())
	g.mu.Lock()
	cfg, same := g.cfg, slices.Equal(host, g.host)
	g.mu.Unlock()
	if same || cfg == nil {
		return false
	}
	g.setConfig(cfg)
	return true
}

func sortedAddrs(in []netip.Addr) []netip.Addr {
	out := slices.Clone(in)
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(out)
}

func newAdmission(hostAddrs func() []netip.Addr, count func(pool, source, reason string), forget func(pool, source string)) *admission {
	return &admission{
		hostAddrs: hostAddrs, count: count, forget: forget, maxPerName: defaults.MaxAddressesPerName,
		filters: make(map[string]*addrfilter.Filter),
		refused: make(map[sourceKey]map[netip.AddrPort]addrfilter.Verdict),
	}
}

// hostAddresses lists the addresses of the host's interfaces.
func hostAddresses() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out
}

// setConfig builds every pool's filter for cfg (the host's addresses are
// read again: a reload picks up new ones) and forgets what sources no
// longer in cfg refused.
func (g *admission) setConfig(cfg *config.Config) {
	own := cfg.OwnAddresses()
	var host []netip.Addr
	if g.hostAddrs != nil {
		host = g.hostAddrs()
		for _, ip := range host {
			own = append(own, addrfilter.Own{Addr: ip, Host: true, What: "an address of this host"})
		}
		// A listener on an unspecified address listens on every one of
		// the host's: 0.0.0.0 on the IPv4 ones, [::] on all (dual-stack).
		for _, o := range cfg.OwnAddresses() {
			if o.Addr.IsUnspecified() && o.Port != 0 {
				for _, ip := range host {
					if o.Addr.Is4() && !ip.Is4() {
						continue
					}
					own = append(own, addrfilter.Own{Addr: ip, Port: o.Port, What: o.What})
				}
			}
		}
	}
	sources := make(map[sourceKey]bool)
	filters := make(map[string]*addrfilter.Filter, len(cfg.Pools))
	for i := range cfg.Pools {
		p := &cfg.Pools[i]
		filters[p.Name] = p.Filter(own)
		sources[sourceKey{p.Name, pool.SourceStatic}] = true
		for _, b := range p.Backends {
			if b.IsName() {
				sources[sourceKey{p.Name, b.Name}] = true
			}
		}
	}
	g.mu.Lock()
	g.own, g.filters = own, filters
	g.host, g.cfg = sortedAddrs(host), cfg
	var gone []sourceKey
	for k := range g.refused {
		if !sources[k] {
			gone = append(gone, k)
			delete(g.refused, k)
		}
	}
	g.mu.Unlock()
	if g.forget != nil {
		for _, k := range gone {
			g.forget(k.pool, k.source)
		}
	}
}

// admit returns the addresses of in the pool's filter accepts, and
// records the ones it refuses as the source's refused set (counting those
// the source did not give before).
func (g *admission) admit(poolName, source string, in []pool.Desired) []pool.Desired {
	g.mu.Lock()
	f, ok := g.filters[poolName]
	if !ok {
		f = addrfilter.New(nil, nil, g.own)
	}
	key := sourceKey{poolName, source}
	before := g.refused[key]
	var (
		out     = make([]pool.Desired, 0, len(in))
		now     map[netip.AddrPort]addrfilter.Verdict
		counted []string
	)
	for _, d := range in {
		v := f.Check(d.Addr)
		if v.OK {
			out = append(out, d)
			continue
		}
		if now == nil {
			now = make(map[netip.AddrPort]addrfilter.Verdict)
		}
		now[d.Addr] = v
		if _, was := before[d.Addr]; !was {
			counted = append(counted, v.Reason)
		}
	}
	if source != pool.SourceStatic && len(out) > g.maxPerName {
		// A name answering more addresses than a pool can use: the
		// first ones by address are served, the rest reported.
		slices.SortFunc(out, func(x, y pool.Desired) int { return x.Addr.Compare(y.Addr) })
		if now == nil {
			now = make(map[netip.AddrPort]addrfilter.Verdict)
		}
		detail := fmt.Sprintf("the name answered %d usable addresses, more than the %d one name may add: the first %d by address are served",
			len(out), g.maxPerName, g.maxPerName)
		for _, d := range out[g.maxPerName:] {
			now[d.Addr] = addrfilter.Verdict{Reason: reasonOverLimit, Detail: detail}
			if _, was := before[d.Addr]; !was {
				counted = append(counted, reasonOverLimit)
			}
		}
		out = out[:g.maxPerName]
	}
	if now == nil {
		delete(g.refused, key)
	} else {
		g.refused[key] = now
	}
	g.mu.Unlock()
	if g.count != nil {
		for _, reason := range counted {
			g.count(poolName, source, reason)
		}
	}
	return out
}

// notServed lists the pool's addresses refused now, by source and address.
func (g *admission) notServed(poolName string) []admin.NotServed {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []admin.NotServed
	for k, set := range g.refused {
		if k.pool != poolName {
			continue
		}
		for addr, v := range set {
			out = append(out, admin.NotServed{
				Address: addr.String(),
				Source:  k.source,
				Reason:  "refused (" + v.Reason + "): " + v.Detail,
			})
		}
	}
	slices.SortFunc(out, func(x, y admin.NotServed) int {
		if x.Source != y.Source {
			if x.Source < y.Source {
				return -1
			}
			return 1
		}
		xa, _ := netip.ParseAddrPort(x.Address)
		ya, _ := netip.ParseAddrPort(y.Address)
		return xa.Compare(ya)
	})
	return out
}
