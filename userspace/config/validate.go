package config

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/sluicelb/sluice/internal/defaults"
	"github.com/sluicelb/sluice/l7/certs"
	"github.com/sluicelb/sluice/l7/eject"
	"github.com/sluicelb/sluice/l7/retry"
	"github.com/sluicelb/sluice/l7/route"
	"github.com/sluicelb/sluice/l7/service"
	"github.com/sluicelb/sluice/l7/upstream"
	"github.com/sluicelb/sluice/userspace/addrfilter"
	"github.com/sluicelb/sluice/userspace/maglev"
)

// Limits enforced by validation.
const (
	MinMaglevTableSize = 251
	MaxMaglevTableSize = 65521
	MinConntrackMax    = 1024
	MaxWeight          = 1000
	MaxRetryAttempts   = retry.MaxAttempts
)

var (
	nameRE   = regexp.MustCompile(`^[a-zA-Z0-9_.-]+$`)
	expectRE = regexp.MustCompile(`^([1-5][0-9][0-9])(?:-([1-5][0-9][0-9]))?$`)
	ifnameRE = regexp.MustCompile(`^[^/\s:]{1,15}$`)
	tokenRE  = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

// validator collects problems, each placed at the line of the key it names.
type validator struct {
	lines    map[string]int
	bad      map[string]bool
	problems []Problem
	// warnings are settings that are valid but likely to surprise: the
	// config is accepted, `sluice check` prints them (and fails with
	// --strict), the agent logs them at start and reload.
	warnings []Problem
}

func (v *validator) set(path string) bool { _, ok := v.lines[path]; return ok }

// line is the line of path, or of its nearest ancestor the file sets.
func (v *validator) line(path string) int {
	for p := path; p != ""; p = parent(p) {
		if l, ok := v.lines[p]; ok {
			return l
		}
	}
	return 1
}

func (v *validator) add(path, format string, args ...any) {
	// A value that failed to decode already has its problem; do not add a
	// second one about the zero value left in its place.
	// The same goes for a problem about a section whose part failed to
	// decode ("needs a name or an address" when the address was a list).
	if path != "" {
		for b := range v.bad {
			if related(path, b) {
				return
			}
		}
	}
	v.problems = append(v.problems, Problem{Line: v.line(path), Path: path, Msg: fmt.Sprintf(format, args...)})
}

// warn records a warning at path's line.
func (v *validator) warn(path, format string, args ...any) {
	v.warnings = append(v.warnings, Problem{Line: v.line(path), Path: path, Msg: fmt.Sprintf(format, args...)})
}

// related reports whether one path is the other or lies inside it.
func related(a, b string) bool {
	if len(a) > len(b) {
		a, b = b, a
	}
	return a == b || strings.HasPrefix(b, a) && (b[len(a)] == '.' || b[len(a)] == '[')
}

// positive reports a zero duration the file sets (negatives never decode).
func (v *validator) positive(path string, d Duration) {
	if d <= 0 {
		v.add(path, "must be greater than 0")
	}
}

func (v *validator) validate(c *Config) {
	if len(c.Services) == 0 {
		path := ""
		if v.set("services") {
			path = "services"
		}
		v.add(path, "no services defined")
	}
	v.interfaces(c)
	v.admin(c)
	v.dns(c)
	v.datapath(c)
	pools := map[string]int{}
	for i := range c.Pools {
		p := &c.Pools[i]
		path := fmt.Sprintf("pools[%d]", i)
		if p.Name != "" {
			if first, dup := pools[p.Name]; dup {
				v.add(path+".name", "pool %q is already defined at line %d", p.Name, first)
			} else {
				pools[p.Name] = p.Line
			}
		}
		v.pool(c, p, path)
	}
	type listener struct {
		addr      netip.AddrPort
		transport string
	}
	// In declaration order, so a conflict names the first service that
	// took the port, whatever else conflicted since.
	type taken struct {
		listener
		name string
	}
	var listeners []taken
	httpNames := map[string]bool{} // http services, for the routes hint
	services := map[string]int{}
	for i := range c.Services {
		s := &c.Services[i]
		path := fmt.Sprintf("services[%d]", i)
		if s.Name != "" {
			if first, dup := services[s.Name]; dup {
				v.add(path+".name", "service %q is already defined at line %d", s.Name, first)
			} else {
				services[s.Name] = s.Line
			}
		}
		v.service(s, path, pools)
		v.serviceWarnings(c, s, path)
		v.familyWarning(c, s, path)
		if !s.ListenAddr.IsValid() {
			continue
		}
		transport := s.Protocol
		if transport == ProtocolHTTP {
			transport = ProtocolTCP
		}
		for _, l := range listeners {
			other := l.name
			if l.transport != transport || l.addr.Port() != s.ListenAddr.Port() {
				continue
			}
			a, b := l.addr.Addr(), s.ListenAddr.Addr()
			if a == b || covers(a, b) || covers(b, a) {
				hint := ""
				if s.Protocol == ProtocolHTTP && httpNames[other] {
					// The nginx habit: one server block per site.
					hint = fmt.Sprintf(" (several sites on one http listener: make them routes of service %q, see docs/l7.md)", other)
				}
				v.add(path+".listen", "%s/%s is already used by service %q%s", s.Listen, transport, other, hint)
				break
			}
		}
		listeners = append(listeners, taken{listener{s.ListenAddr, transport}, s.Name})
		if s.Protocol == ProtocolHTTP {
			httpNames[s.Name] = true
		}
	}
	v.bgp(c) // after the services: it checks their VIPs
	v.limits(c)
	v.conntrackWarning(c)
	v.healthWarnings(c)
	v.unusedPoolWarnings(c)
	// Fixed addresses go through the filter DNS answers go through, once
	// every listen address is known.
	own := c.OwnAddresses()
	for i := range c.Pools {
		p := &c.Pools[i]
		filter := p.Filter(own)
		for j := range p.Backends {
			b := &p.Backends[j]
			if !b.AddrPort.IsValid() {
				continue
			}
			if vd := filter.Check(b.AddrPort); !vd.OK {
				v.add(fmt.Sprintf("pools[%d].backends[%d].address", i, j), "%s refused (%s): %s", b.AddrPort, vd.Reason, vd.Detail)
			}
		}
	}
}

func (v *validator) interfaces(c *Config) {
	if len(c.L4Services()) > 0 && len(c.Interfaces) == 0 {
		v.add("interfaces", "at least one interface is required for tcp/udp services: list the links facing clients and backends, e.g. interfaces: [eth0]")
	}
	seen := map[string]bool{}
	for i, name := range c.Interfaces {
		path := fmt.Sprintf("interfaces[%d]", i)
		switch {
		case !ifnameRE.MatchString(name):
			v.add(path, "%q is not a valid interface name", name)
		case seen[name]:
			v.add(path, "interface %q is listed twice", name)
		}
		seen[name] = true
	}
}

func (v *validator) admin(c *Config) {
	if c.Admin.Socket == "" {
		v.add("admin.socket", "must not be empty")
	}
	if l := c.Metrics.Listen; l != MetricsOff {
		if _, err := parseHostPort(l); err != nil {
			v.add("metrics.listen", "%q: %v (or \"off\")", l, err)
		}
	}
}

// parseHostPort checks a listen address of the form host:port.
func parseHostPort(s string) (uint16, error) {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return 0, fmt.Errorf("expected host:port")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("port %q is not a number 0-65535", port)
	}
	return uint16(n), nil
}

func (v *validator) dns(c *Config) {
	d := &c.DNS
	for i, s := range d.Servers {
		path := fmt.Sprintf("dns.servers[%d]", i)
		if ap, err := netip.ParseAddrPort(s); err == nil {
			if ap.Port() == 0 {
				v.add(path, "%q: port must not be 0", s)
				continue
			}
			d.Servers[i] = ap.String()
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			v.add(path, "%q is not an IP address or ip:port", s)
			continue
		}
		d.Servers[i] = netip.AddrPortFrom(a, DefaultDNSPort).String()
	}
	if d.MinTTL > d.MaxTTL {
		v.add("dns.min_ttl", "min_ttl (%s) must not exceed max_ttl (%s)", d.MinTTL.D(), d.MaxTTL.D())
	}
	v.positive("dns.max_ttl", d.MaxTTL)
	v.positive("dns.timeout", d.Timeout)
	if d.OnFailure != "keep" {
		v.add("dns.on_failure", "%q: only \"keep\" is supported", d.OnFailure)
	}
}

func (v *validator) datapath(c *Config) {
	dp := &c.Datapath
	switch dp.XDPMode {
	case XDPModeAuto, XDPModeNative, XDPModeGeneric:
	default:
		v.add("datapath.xdp_mode", "%q: must be auto, native or generic", dp.XDPMode)
	}
	if !filepath.IsAbs(dp.PinPath) {
		v.add("datapath.pin_path", "%q: must be an absolute path", dp.PinPath)
	}
	if n := dp.MaglevTableSize; n < MinMaglevTableSize || n > MaxMaglevTableSize || !maglev.IsPrime(n) {
		v.add("datapath.maglev_table_size", "%d: must be a prime between %d and %d (e.g. 251, 1021, 4093, 16381, 65521)",
			n, MinMaglevTableSize, MaxMaglevTableSize)
	}
	if dp.ConntrackMax < MinConntrackMax {
		v.add("datapath.conntrack_max", "%d: must be at least %d", dp.ConntrackMax, MinConntrackMax)
	}
	if dp.RSTRate == 0 {
		v.add("datapath.rst_rate", "must be at least 1 (RSTs per second and CPU)")
	}
	t := &dp.Timeouts
	v.positive("datapath.conntrack_timeouts.tcp_syn", t.TCPSyn)
	v.positive("datapath.conntrack_timeouts.tcp_established", t.TCPEstablished)
	v.positive("datapath.conntrack_timeouts.tcp_closing", t.TCPClosing)
	v.positive("datapath.conntrack_timeouts.udp", t.UDP)
}

func (v *validator) name(path, kind, name string) {
	switch {
	case name == "":
		v.add(path, "%s name is required", kind)
	case !nameRE.MatchString(name):
		v.add(path, "%q: %s names may only contain letters, digits, '_', '.' and '-'", name, kind)
	}
}

func (v *validator) pool(c *Config, p *Pool, path string) {
	v.name(path+".name", "pool", p.Name)
	if len(p.Backends) == 0 {
		v.add(path+".backends", "pool %q has no backends", p.Name)
	}
	addrs := map[netip.AddrPort]int{}
	names := map[string]int{}
	for j := range p.Backends {
		b := &p.Backends[j]
		bp := fmt.Sprintf("%s.backends[%d]", path, j)
		v.backend(b, bp)
		switch {
		case b.AddrPort.IsValid():
			if first, dup := addrs[b.AddrPort]; dup {
				v.add(bp+".address", "%s is already a backend of this pool (line %d)", b.AddrPort, first)
			} else {
				addrs[b.AddrPort] = b.Line
			}
		case b.Name != "" && b.Port != 0:
			key := net.JoinHostPort(strings.ToLower(strings.TrimSuffix(b.Name, ".")), strconv.Itoa(int(b.Port)))
			if first, dup := names[key]; dup {
				v.add(bp+".name", "%s is already a backend of this pool (line %d)", key, first)
			} else {
				names[key] = b.Line
			}
		}
	}
	if len(addrs) > int(c.Datapath.MaglevTableSize) {
		v.add(path+".backends", "%d backends do not fit a Maglev table of %d entries", len(addrs), c.Datapath.MaglevTableSize)
	}
	v.positive(path+".drain_timeout", p.DrainTimeout)
	p.Addresses.AllowPrefixes = v.prefixes(path+".addresses.allow", p.Addresses.Allow)
	p.Addresses.DenyPrefixes = v.prefixes(path+".addresses.deny", p.Addresses.Deny)

	e := &p.Ejection
	ep := path + ".ejection"
	if e.Failures < 0 {
		v.add(ep+".failures", "%d: must be 0 (off) or more", e.Failures)
	}
	v.positive(ep+".window", e.Window)
	v.positive(ep+".base_time", e.BaseTime)
	if e.MaxTime < e.BaseTime {
		v.add(ep+".max_time", "max_time (%s) must not be less than base_time (%s)", e.MaxTime.D(), e.BaseTime.D())
	}
	if e.MaxEjectedPercent < 0 || e.MaxEjectedPercent > 100 {
		v.add(ep+".max_ejected_percent", "%d: must be between 0 and 100", e.MaxEjectedPercent)
	}
	if v.set(ep+".on") && len(e.On) == 0 {
		v.add(ep+".on", "an empty list would eject for nothing: to switch passive ejection off write failures: 0")
	}
	seen := map[string]bool{}
	for i, on := range e.On {
		p := fmt.Sprintf("%s.on[%d]", ep, i)
		if seen[on] {
			v.add(p, "%q is listed twice", on)
			continue
		}
		seen[on] = true
		if _, err := eject.ParseCondition(on); err != nil {
			v.add(p, "%q: must be connect-failure, reset, timeout, 429 or a status 500-599%s", on, conditionHint(on))
		}
	}
	if p.HealthCheck != nil {
		v.healthCheck(c, p, p.HealthCheck, path+".health_check")
	}
}

// limits checks what the data path can hold: service ids for the tcp/udp
// services, backend slots for the fixed addresses of every pool (DNS
// answers come on top at run time, capped per name).
func (v *validator) limits(c *Config) {
	if n := len(c.L4Services()); n > defaults.MaxServices-1 {
		v.add("services", "%d tcp/udp services: the data path holds at most %d", n, defaults.MaxServices-1)
	}
	type key struct {
		pool string
		addr netip.AddrPort
	}
	fixed := make(map[key]bool)
	for _, p := range c.Pools {
		for _, b := range p.Backends {
			if b.AddrPort.IsValid() {
				fixed[key{p.Name, b.AddrPort}] = true
			}
		}
	}
	if n := len(fixed); n > defaults.MaxBackends-1 {
		v.add("pools", "%d fixed backend addresses in all pools: the data path holds at most %d", n, defaults.MaxBackends-1)
	}
}

// prefixes parses a list of CIDRs (a bare IP is a /32 or /128).
func (v *validator) prefixes(path string, list []string) []netip.Prefix {
	var out []netip.Prefix
	for i, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			ip, ierr := netip.ParseAddr(s)
			if ierr != nil {
				v.add(fmt.Sprintf("%s[%d]", path, i), "%q is not a CIDR (198.18.2.0/24) nor an IP", s)
				continue
			}
			p = netip.PrefixFrom(ip, ip.BitLen())
		}
		if p != p.Masked() {
			v.add(fmt.Sprintf("%s[%d]", path, i), "%q has host bits set (did you mean %s?)", s, p.Masked())
			continue
		}
		out = append(out, p)
	}
	return out
}

// OwnAddresses are our own listeners, which no backend may be: every L4
// service's VIP (any port), every http service's and the metrics
// endpoint's ip:port. The agent adds the host's addresses at run time
// (and the host's ip:port of a listener on an unspecified address).
func (c *Config) OwnAddresses() []addrfilter.Own {
	var out []addrfilter.Own
	for _, s := range c.Services {
		if !s.ListenAddr.IsValid() {
			continue
		}
		o := addrfilter.Own{Addr: s.ListenAddr.Addr(), What: fmt.Sprintf("listen address of service %q", s.Name)}
		if !s.IsL4() {
			o.Port = s.ListenAddr.Port()
		}
		out = append(out, o)
	}
	if ap, err := netip.ParseAddrPort(c.Metrics.Listen); err == nil {
		out = append(out, addrfilter.Own{Addr: ap.Addr(), Port: ap.Port(), What: "the metrics listen address"})
	}
	return out
}

// Filter is the pool's address filter with own as our own addresses.
func (p *Pool) Filter(own []addrfilter.Own) *addrfilter.Filter {
	return addrfilter.New(p.Addresses.AllowPrefixes, p.Addresses.DenyPrefixes, own)
}

func (v *validator) backend(b *Backend, path string) {
	switch {
	case b.Name != "" && b.Address != "":
		v.add(path, "set either name or address, not both")
	case b.Name == "" && b.Address == "":
		v.add(path, "a backend needs a name (with port) or an address")
	case b.Name != "":
		if hint, ok := endpointHint(b.Name, b.Port, true); ok {
			// One error that says what to write, not one about the
			// name's syntax and another about the missing port.
			v.add(path+".name", "%q %s", b.Name, hint)
			break
		}
		if a, err := netip.ParseAddr(b.Name); err == nil {
			v.add(path+".name", "%q is an IP address, not a name: use address: %s", b.Name, addrWithPort(a.String(), b.Port))
			break
		} else if err := checkDNSName(b.Name); err != nil {
			v.add(path+".name", "%q is not a valid DNS name: %v", b.Name, err)
		}
		if b.Port == 0 {
			v.add(path+".port", "a backend name needs a port: add port: 1-65535 next to name: %s", b.Name)
		}
	default:
		ap, err := netip.ParseAddrPort(b.Address)
		switch {
		case err != nil:
			if hint, ok := endpointHint(b.Address, b.Port, false); ok {
				v.add(path+".address", "%q %s", b.Address, hint)
			} else {
				v.add(path+".address", "%q is not an ip:port (write address: 198.18.2.11:8080, or name: and port: for a DNS name)", b.Address)
			}
			if v.set(path + ".port") {
				// The hint above already says where the port goes.
				return
			}
		case ap.Addr().Zone() != "":
			v.add(path+".address", "%q: a zone (%%%s) is not allowed in a backend address", b.Address, ap.Addr().Zone())
		case ap.Port() == 0:
			v.add(path+".address", "%q: port must not be 0", b.Address)
		default:
			b.AddrPort = ap
		}
		if v.set(path+".port") && b.AddrPort.IsValid() {
			v.add(path+".port", "port is not allowed with address: the port is part of address (%s)", b.Address)
		} else if v.set(path+".port") && err == nil {
			v.add(path+".port", "port is not allowed with address: write the port in address instead")
		}
	}
	if b.Weight < 1 || b.Weight > MaxWeight {
		v.add(path+".weight", "%d: must be between 1 and %d", b.Weight, MaxWeight)
	}
}

// poolRef checks that name is a defined pool, and when it is not says
// which one was meant (a typo) or which there are.
func (v *validator) poolRef(path, name string, pools map[string]int) {
	if _, ok := pools[name]; ok {
		return
	}
	names := make([]string, 0, len(pools))
	for n := range pools {
		names = append(names, n)
	}
	switch hint := suggest(name, names); {
	case hint != "":
		v.add(path, "pool %q is not defined (did you mean %q?)", name, hint)
	case len(names) == 0:
		v.add(path, "pool %q is not defined: add it under pools: with its backends", name)
	default:
		slices.Sort(names)
		v.add(path, "pool %q is not defined (pools: %s)", name, strings.Join(names, ", "))
	}
}

// listenHint says what to write instead of a listen value that is no
// ip:port: ":443", "443", "*:443", "localhost:80", "0.0.0.0".
func listenHint(s string, l4 bool) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if _, perr := strconv.ParseUint(s, 10, 16); perr == nil {
			host, port = "", s
		} else if a, aerr := netip.ParseAddr(strings.Trim(s, "[]")); aerr == nil {
			return "it has no port: write " + net.JoinHostPort(a.String(), "PORT")
		} else {
			return "write an IP address and a port, e.g. 0.0.0.0:443 or 198.18.1.100:443"
		}
	}
	if n, perr := strconv.ParseUint(port, 10, 16); perr != nil || n == 0 {
		return "the port must be a number 1-65535"
	}
	switch {
	case (host == "" || host == "*") && l4:
		return "a tcp/udp service needs its VIP: write the address clients connect to, e.g. 198.18.1.100:" + port
	case host == "" || host == "*":
		return "write 0.0.0.0:" + port + " (every IPv4 address) or [::]:" + port + " (every IPv6 address)"
	case strings.EqualFold(strings.TrimSuffix(host, "."), "localhost"):
		return "listen takes an address, not a name: write 127.0.0.1:" + port
	default:
		return "listen takes an address, not a name: write the IP address " + host + " stands for, e.g. 198.18.1.100:" + port
	}
}

// endpointHint explains what to write instead of s, given as a backend's
// name (asName) or address, when s has the shape of the other key, a
// host:port in name or a URL. ok is false when s has none of these shapes.
func endpointHint(s string, port uint16, asName bool) (hint string, ok bool) {
	host, p, url, inline := s, "", false, false
	if scheme, rest, found := strings.Cut(s, "://"); found {
		url = true
		host, _, _ = strings.Cut(rest, "/")
		switch strings.ToLower(scheme) {
		case "https":
			p = "443"
		case "http":
			p = "80"
		}
	}
	if h, hp, err := net.SplitHostPort(host); err == nil {
		if _, err := strconv.ParseUint(hp, 10, 16); err != nil || hp == "0" {
			return "", false
		}
		host, p = h, hp
		inline = true
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if p == "" && port != 0 {
		p = strconv.Itoa(int(port))
	}
	withPort := func(h string) string {
		if p == "" {
			return "use name: " + h + " with port: PORT"
		}
		return "use name: " + h + " with port: " + p
	}
	_, ipErr := netip.ParseAddr(host)
	isIP := ipErr == nil
	if !isIP && checkDNSName(host) != nil {
		return "", false
	}
	addr := "use address: " + addrWithPort(host, port)
	if p != "" {
		addr = "use address: " + net.JoinHostPort(host, p)
	}
	const reresolved = " (a name is resolved again as its TTL expires)"
	switch {
	case url && isIP:
		return "is a URL: " + addr, true
	case url && asName:
		return "is a URL: " + withPort(host), true
	case url:
		return "is a URL: " + withPort(host) + reresolved, true
	case asName && isIP && inline:
		return "is an ip:port, not a name: " + addr, true
	case asName && inline:
		return "has a port in it, which goes in port: " + withPort(host), true
	case asName:
		return "", false
	case isIP && !url && !strings.HasPrefix(s, "[") && strings.Contains(host, ":"):
		// 2001:db8::11:80 is an address on its own; its last group may be
		// meant as a port, which needs the brackets.
		hint := "is an IPv6 address without a port: " + addr
		if i := strings.LastIndexByte(host, ':'); i > 0 && p == "" {
			if a, err := netip.ParseAddr(host[:i]); err == nil && !strings.HasSuffix(host[:i], ":") {
				hint += " (an IPv6 address with a port is written in brackets: [" + a.String() + "]:" + host[i+1:] + ")"
			}
		}
		return hint, true
	case isIP:
		return "has no port: " + addr, true
	default:
		return "is a name, not an ip:port: " + withPort(host) + reresolved, true
	}
}

// addrWithPort writes ip:port, with PORT standing in for a missing port.
func addrWithPort(ip string, port uint16) string {
	if port == 0 {
		return net.JoinHostPort(ip, "PORT")
	}
	return net.JoinHostPort(ip, strconv.Itoa(int(port)))
}

// checkDNSName checks the syntax of a host name: dot-separated labels of
// letters, digits, '-' and '_', 1-63 bytes each, not starting or ending
// with '-', 253 bytes at most, an optional final dot.
func checkDNSName(name string) error {
	n := strings.TrimSuffix(name, ".")
	if n == "" {
		return fmt.Errorf("empty name")
	}
	if len(n) > 253 {
		return fmt.Errorf("longer than 253 characters")
	}
	for _, label := range strings.Split(n, ".") {
		switch {
		case label == "":
			return fmt.Errorf("empty label")
		case len(label) > 63:
			return fmt.Errorf("label %q is longer than 63 characters", label)
		case label[0] == '-' || label[len(label)-1] == '-':
			return fmt.Errorf("label %q starts or ends with '-'", label)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("label %q contains %q", label, r)
			}
		}
	}
	return nil
}

func (v *validator) healthCheck(c *Config, p *Pool, hc *HealthCheck, path string) {
	switch {
	case hc.HTTP != nil && hc.TCP != nil:
		v.add(path, "set either http or tcp, not both")
	case hc.HTTP == nil && hc.TCP == nil:
		v.add(path, "set one of http or tcp")
	case hc.HTTP != nil:
		h := hc.HTTP
		if !strings.HasPrefix(h.Path, "/") {
			v.add(path+".http.path", "%q: must start with '/'", h.Path)
		}
		if h.Host != "" {
			if err := checkHost(h.Host); err != nil {
				v.add(path+".http.host", "%q: %v", h.Host, err)
			}
		}
		if _, _, err := ParseExpect(h.Expect); err != nil {
			v.add(path+".http.expect", "%v", err)
		}
		v.healthTLS(c, p, h, path+".http")
	}
	v.positive(path+".interval", hc.Interval)
	v.positive(path+".timeout", hc.Timeout)
	if hc.Timeout > 0 && hc.Interval > 0 && hc.Timeout >= hc.Interval {
		v.add(path+".timeout", "timeout (%s) must be less than interval (%s)", hc.Timeout.D(), hc.Interval.D())
	}
	if hc.Rise < 1 {
		v.add(path+".rise", "%d: must be at least 1", hc.Rise)
	}
	if hc.Fall < 1 {
		v.add(path+".fall", "%d: must be at least 1", hc.Fall)
	}
}

// healthTLS checks an HTTPS health check's keys (an upstream's names) and
// fills server_name's default: the host key without its port, else the
// pool's one DNS name.
func (v *validator) healthTLS(c *Config, p *Pool, h *HTTPCheck, path string) {
	if !h.TLS {
		for _, k := range []string{"server_name", "verify_name", "ca", "insecure_skip_verify"} {
			if v.set(path + "." + k) {
				v.add(path+"."+k, "only allowed with tls: true (add tls: true to check over HTTPS)")
			}
		}
		return
	}
	for _, k := range []string{"server_name", "verify_name"} {
		n := h.ServerName
		if k == "verify_name" {
			n = h.VerifyName
		}
		if n == "" {
			continue
		}
		if err := checkDNSName(n); err != nil {
			v.add(path+"."+k, "%q is not a DNS name: %v", n, err)
		}
	}
	if h.CA != "" {
		if _, err := upstream.LoadCAs(h.CA); err != nil {
			v.add(path+".ca", "%v", err)
		}
		if h.InsecureSkipVerify {
			v.add(path+".insecure_skip_verify", "set either ca or insecure_skip_verify, not both")
		}
	}
	if h.ServerName == "" && h.Host != "" {
		host := h.Host
		if hp, _, err := net.SplitHostPort(host); err == nil {
			host = hp
		}
		if _, err := netip.ParseAddr(host); err != nil {
			h.ServerName = host
		}
	}
	if h.ServerName == "" {
		names := map[string]bool{}
		fixed := false
		for _, b := range p.Backends {
			if b.IsName() {
				names[strings.ToLower(strings.TrimSuffix(b.Name, "."))] = true
			} else {
				fixed = true
			}
		}
		if len(names) == 1 && !fixed {
			for n := range names {
				h.ServerName = n
			}
		}
	}
	if !h.InsecureSkipVerify && h.ServerName == "" && h.VerifyName == "" {
		hint := "NAME"
		if names := c.trafficServerNames(p.Name); len(names) == 1 {
			// What the traffic to this pool sends: the check then
			// verifies what the proxy verifies.
			hint = names[0] + " (the server name its traffic uses)"
		}
		v.add(path+".tls", "an HTTPS check of fixed addresses (or of several names) needs the name the backends' certificates carry: set server_name: %s (sent and verified) or verify_name: NAME (verified only)", hint)
	}
	if h.InsecureSkipVerify {
		v.warn(path+".insecure_skip_verify", "health check certificates are not verified: a check passes against anything that speaks TLS; give the CA with ca: FILE instead")
	}
}

// trafficServerNames are the TLS server names the http services and
// routes sending to pool name over TLS use (a route's or the upstream's
// server_name, else a host that is a name), sorted, without repeats; one
// of them sending no name of its own (host: keep without server_name)
// adds none.
func (c *Config) trafficServerNames(name string) []string {
	var out []string
	add := func(sni, host string) {
		if sni == "" && host != HostKeep {
			if h, _, err := net.SplitHostPort(host); err == nil {
				host = h
			}
			if _, err := netip.ParseAddr(host); err != nil {
				sni = host
			}
		}
		if sni != "" && !slices.Contains(out, sni) {
			out = append(out, sni)
		}
	}
	for _, s := range c.Services {
		if s.Protocol != ProtocolHTTP || s.Upstream == nil || !s.Upstream.TLS {
			continue
		}
		if s.Pool == name {
			add(s.Upstream.ServerName, s.Host)
		}
		for _, r := range s.Routes {
			if r.Pool != name {
				continue
			}
			sni, host := r.ServerName, r.Host
			if sni == "" {
				sni = s.Upstream.ServerName
			}
			if host == "" {
				host = s.Host
			}
			add(sni, host)
		}
	}
	slices.Sort(out)
	return out
}

// ParseExpect parses a health check's expected status: "200" or "200-399".
func ParseExpect(s string) (lo, hi int, err error) {
	m := expectRE.FindStringSubmatch(s)
	if m == nil {
		return 0, 0, fmt.Errorf("%q: expected a status (\"200\") or a range (\"200-399\") within 100-599", s)
	}
	lo, _ = strconv.Atoi(m[1])
	hi = lo
	if m[2] != "" {
		hi, _ = strconv.Atoi(m[2])
	}
	if lo > hi {
		return 0, 0, fmt.Errorf("%q: range is empty", s)
	}
	return lo, hi, nil
}

// checkHost checks a host name or IP address with an optional :port, as
// sent in a Host header or SNI.
func checkHost(h string) error {
	host := h
	if hp, port, err := net.SplitHostPort(h); err == nil {
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return fmt.Errorf("port %q is not a number 0-65535", port)
		}
		host = hp
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if err := checkDNSName(host); err != nil {
		return fmt.Errorf("not a valid host name: %w", err)
	}
	return nil
}

func (v *validator) service(s *Service, path string, pools map[string]int) {
	v.name(path+".name", "service", s.Name)

	l4 := s.IsL4()
	switch {
	case l4, s.Protocol == ProtocolHTTP:
	default:
		v.add(path+".protocol", "%q: must be tcp, udp or http", s.Protocol)
	}

	switch ap, err := netip.ParseAddrPort(s.Listen); {
	case s.Listen == "":
		v.add(path+".listen", "listen (vip:port) is required")
	case err != nil:
		v.add(path+".listen", "%q is not an ip:port: %s", s.Listen, listenHint(s.Listen, l4))
	case ap.Port() == 0:
		v.add(path+".listen", "%q: port must not be 0: write the port clients connect to, e.g. %s", s.Listen, net.JoinHostPort(ap.Addr().String(), "443"))
	case l4 && ap.Addr().Is4In6():
		v.add(path+".listen", "%q: an IPv4-mapped address: write the IPv4 VIP as it is, e.g. %s", s.Listen, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	case l4 && (ap.Addr().IsUnspecified() || ap.Addr().IsMulticast() || ap.Addr() == netip.AddrFrom4([4]byte{255, 255, 255, 255})):
		v.add(path+".listen", "%q: a tcp/udp VIP must be a unicast address: write the address clients connect to, e.g. 198.18.1.100:%d (0.0.0.0 is for protocol: http only)", s.Listen, ap.Port())
	default:
		s.ListenAddr = ap
	}

	if s.Pool == "" {
		if len(s.Routes) == 0 || l4 {
			v.add(path+".pool", "pool is required")
		}
	} else {
		v.poolRef(path+".pool", s.Pool, pools)
	}

	if l4 {
		switch s.Mode {
		case ModeNAT, ModeSNAT, ModeDSR:
		default:
			v.add(path+".mode", "%q: must be nat, snat or dsr", s.Mode)
		}
		if s.Mode == ModeDSR && s.ListenAddr.IsValid() && !s.ListenAddr.Addr().Is4() {
			v.add(path+".mode", "dsr is IPv4 only (the backends decapsulate IPIP): use nat or snat for an IPv6 VIP")
		}
		if v.set(path + ".snat_source") {
			if s.Mode != ModeSNAT {
				v.add(path+".snat_source", "only allowed with mode: snat")
			} else if a, err := netip.ParseAddr(s.SNATSource); err != nil || a.Is4In6() {
				v.add(path+".snat_source", "%q is not an IP address", s.SNATSource)
			} else if s.ListenAddr.IsValid() && a.Is4() != s.ListenAddr.Addr().Is4() {
				v.add(path+".snat_source", "%q: not of the VIP's family (%s): sluice translates IPv4 to IPv4 and IPv6 to IPv6", s.SNATSource, s.ListenAddr.Addr())
			}
		}
		for _, k := range []string{"host", "timeouts", "retry", "tls", "h2c", "client", "upstream", "access_log", "upgrades", "trusted_proxies", "routes", "headers", "request_id"} {
			if v.set(path + "." + k) {
				v.add(path+"."+k, "only allowed for http services")
			}
		}
		return
	}
	if s.Protocol != ProtocolHTTP {
		return
	}
	for _, k := range []string{"mode", "snat_source"} {
		if v.set(path + "." + k) {
			v.add(path+"."+k, "only allowed for tcp/udp services")
		}
	}
	if s.Host != HostKeep {
		if err := checkHost(s.Host); err != nil {
			v.add(path+".host", "%q: %v (or \"keep\")", s.Host, err)
		}
	}
	if t := s.Timeouts; t != nil {
		tp := path + ".timeouts"
		v.positive(tp+".connect", t.Connect)
		v.positive(tp+".send", t.Send)
		v.positive(tp+".read", t.Read)
		v.positive(tp+".total", t.Total)
		v.timeouts(t, tp)
	}
	if r := s.Retry; r != nil {
		v.retry(r, path+".retry")
	}
	v.httpListener(s, path)
	v.routes(s, path, pools)
	v.headers(s.Headers, path+".headers")
	for i, tp := range s.TrustedProxies {
		if _, err := service.ParseTrustedProxies([]string{tp}); err != nil {
			v.add(fmt.Sprintf("%s.trusted_proxies[%d]", path, i), "%v", err)
		}
	}
	if rid := s.RequestID; rid != nil {
		if err := rid.L7().Check(); err != nil {
			v.add(path+".request_id.header", "%v", err)
		}
		if rid.TrustIncoming && len(s.TrustedProxies) == 0 {
			v.add(path+".request_id.trust_incoming", "no peer is trusted: list the proxies in front of sluice whose request ids to take in trusted_proxies (any other peer's %s is never believed)", rid.L7().HeaderName())
		}
	}
	for i, u := range s.Upgrades {
		if err := service.CheckUpgrade(u); err != nil {
			v.add(fmt.Sprintf("%s.upgrades[%d]", path, i), "%v", err)
		}
	}
	if u := s.Upstream; u != nil {
		v.upstream(u, path+".upstream")
		if u.Protocol == UpstreamH2C || u.Protocol == UpstreamH2 {
			if len(s.Upgrades) > 0 && v.set(path+".upgrades") {
				v.add(path+".upgrades", "a protocol upgrade (WebSocket) is not carried over HTTP/2 to the backends (upstream.protocol %s): a request asking for one is answered 501", u.Protocol)
			}
		}
	}
	switch s.AccessLog {
	case AccessLogStdout, AccessLogOff:
	case "":
		v.add(path+".access_log", "must be stdout, off or a file path")
	default:
		// The file is created by the agent; check only that it can be.
		dir := filepath.Dir(s.AccessLog)
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			v.add(path+".access_log", "%q: directory %s does not exist", s.AccessLog, dir)
		} else if fi, err := os.Stat(s.AccessLog); err == nil && fi.IsDir() {
			v.add(path+".access_log", "%q is a directory", s.AccessLog)
		}
	}
}

// Bounds of the http listener's and upstream keys.
const (
	MinMaxHeaderBytes = service.MinMaxHeaderBytes
	MaxMaxHeaderBytes = service.MaxMaxHeaderBytes
	MaxUpstreamIdle   = 10000
	MaxClientConns    = 1 << 20
	MaxClientRequests = 1 << 20
	MaxUpstreamConns  = 1 << 20
	// MaxUpstreamStreams bounds upstream.max_streams.
	MaxUpstreamStreams = 10000
	MaxMaxBodyBytes    = 1 << 40
)

// httpListener checks tls, h2c and client of an http service.
func (v *validator) httpListener(s *Service, path string) {
	if t := s.TLS; t != nil {
		tp := path + ".tls"
		switch {
		case t.Cert == "":
			v.add(tp+".cert", "cert (PEM file) is required")
		case t.Key == "":
			v.add(tp+".key", "key (PEM file) is required")
		default:
			if _, err := tls.LoadX509KeyPair(t.Cert, t.Key); err != nil {
				v.add(tp, "certificate %s, key %s: %v", t.Cert, t.Key, err)
			} else if len(t.Certificates) > 0 {
				v.sniCerts(t, tp)
			}
		}
		if s.H2C {
			v.add(path+".h2c", "only for plain-text listeners: with tls, HTTP/2 is negotiated by ALPN")
		}
	}
	if c := s.Client; c != nil {
		cp := path + ".client"
		v.positive(cp+".header_timeout", c.HeaderTimeout)
		v.positive(cp+".idle_timeout", c.IdleTimeout)
		v.positive(cp+".tunnel_idle_timeout", c.TunnelIdleTimeout)
		v.positive(cp+".body_timeout", c.BodyTimeout)
		v.between(cp+".body_min_rate", c.BodyMinRate, 0, 1<<30)
		v.between(cp+".max_connections", int64(c.MaxConnections), 1, MaxClientConns)
		v.between(cp+".max_requests", int64(c.MaxRequests), 1, MaxClientRequests)
		v.between(cp+".max_connections_per_ip", int64(c.MaxConnectionsPerIP), 1, int64(max(c.MaxConnections, 1)))
		v.between(cp+".max_requests_per_ip", int64(c.MaxRequestsPerIP), 1, int64(max(c.MaxRequests, 1)))
		v.between(cp+".max_body_bytes", c.MaxBodyBytes, 1, MaxMaxBodyBytes)
		v.between(cp+".max_header_count", int64(c.MaxHeaderCount), 1, service.MaxMaxHeaderCount)
		v.between(cp+".h2_max_streams", int64(c.H2MaxStreams), 1, 10000)
		// Windows: at least the 16 KiB a frame may carry, at most HTTP/2's 2^31-1.
		v.between(cp+".h2_stream_window", int64(c.H2StreamWindow), 16<<10, 1<<31-1)
		v.between(cp+".h2_connection_window", int64(c.H2ConnWindow), 64<<10, 1<<31-1)
		v.between(cp+".h2_max_reset_streams", int64(c.H2MaxResetStreams), 1, 1000000)
		switch c.UnderscoreHeaders {
		case service.UnderscoreDrop, service.UnderscoreReject, service.UnderscoreAllow:
		default:
			v.add(cp+".underscore_headers", "%q: must be drop, reject or allow", c.UnderscoreHeaders)
		}
		if c.MaxHeaderBytes < MinMaxHeaderBytes || c.MaxHeaderBytes > MaxMaxHeaderBytes {
			v.add(cp+".max_header_bytes", "%d: must be between %d and %d", c.MaxHeaderBytes, MinMaxHeaderBytes, MaxMaxHeaderBytes)
		}
	}
}

// upstream checks the connections to the backends of an http service.
func (v *validator) upstream(u *Upstream, path string) {
	if !u.TLS {
		for _, k := range []string{"ca", "insecure_skip_verify", "server_name", "verify_name"} {
			if v.set(path + "." + k) {
				v.add(path+"."+k, "only allowed with tls: true")
			}
		}
	}
	if u.CA != "" {
		if _, err := upstream.LoadCAs(u.CA); err != nil {
			v.add(path+".ca", "%v", err)
		}
		if u.InsecureSkipVerify {
			v.add(path+".insecure_skip_verify", "set either ca or insecure_skip_verify, not both")
		}
	}
	v.verifyName(u, path)
	if u.ServerName != "" {
		if err := checkDNSName(u.ServerName); err != nil {
			if _, ipErr := netip.ParseAddr(u.ServerName); ipErr != nil {
				v.add(path+".server_name", "%q: not a DNS name or an IP address: %v", u.ServerName, err)
			}
		}
	}
	if u.MaxIdle < 1 || u.MaxIdle > MaxUpstreamIdle {
		v.add(path+".max_idle", "%d: must be between 1 and %d", u.MaxIdle, MaxUpstreamIdle)
	}
	v.between(path+".max_connections", int64(u.MaxConnections), 1, MaxUpstreamConns)
	v.between(path+".max_header_bytes", int64(u.MaxHeaderBytes), MinMaxHeaderBytes, MaxMaxHeaderBytes)
	v.between(path+".max_header_count", int64(u.MaxHeaderCount), 1, service.MaxMaxHeaderCount)
	v.positive(path+".idle_timeout", u.IdleTimeout)
	v.positive(path+".max_lifetime", u.MaxLifetime)
	switch u.Protocol {
	case UpstreamHTTP1:
		if v.set(path + ".max_streams") {
			v.add(path+".max_streams", "only allowed with protocol: h2c or h2 (HTTP/1.1 carries one request per connection)")
		}
	case UpstreamH2C:
		if u.TLS {
			v.add(path+".protocol", "h2c is HTTP/2 in clear text: with tls: true write protocol: h2 (HTTP/2 over TLS, ALPN h2)")
		}
	case UpstreamH2:
		if !u.TLS {
			v.add(path+".protocol", "h2 is HTTP/2 over TLS: set tls: true, or write protocol: h2c for HTTP/2 in clear text")
		}
	default:
		v.add(path+".protocol", "%q: must be http1, h2c or h2", u.Protocol)
	}
	if u.Protocol != UpstreamHTTP1 {
		v.between(path+".max_streams", int64(u.MaxStreams), 1, MaxUpstreamStreams)
	}
}

// conntrackWarning warns, once, when tcp services rely on the default
// tcp_established idle timeout: a connection idle longer (a database
// pool's spare connections) is forgotten by the data path.
func (v *validator) conntrackWarning(c *Config) {
	const key = "datapath.conntrack_timeouts.tcp_established"
	if v.set(key) {
		return
	}
	for i, s := range c.Services {
		if s.Protocol != ProtocolTCP {
			continue
		}
		v.warn(fmt.Sprintf("services[%d]", i), "service %q: a TCP connection idle longer than %s (%s, the default) is forgotten by the data path; its next packet is balanced as a new flow and, if the pool changed meanwhile, reaches a backend that resets it: idle database-pool connections are cut. Set %s to more than your clients ever leave a connection idle (e.g. 24h), or their keepalive below %s",
			s.Name, c.Datapath.Timeouts.TCPEstablished.D(), key, key, c.Datapath.Timeouts.TCPEstablished.D())
		return
	}
}

// healthWarnings warns of a plain HTTP health check on a pool its services
// (or routes) reach only over TLS: the check probes the TLS port in clear
// text (it fails, or passes against something else than what serves
// traffic).
func (v *validator) healthWarnings(c *Config) {
	for i := range c.Pools {
		p := &c.Pools[i]
		if p.HealthCheck == nil {
			for j, s := range c.Services {
				if s.Mode == ModeDSR && slices.Contains(s.Pools(), p.Name) {
					v.warn(fmt.Sprintf("services[%d].mode", j), "service %q is dsr and its pool %q has no health_check: its backends answer clients without passing sluice, so a backend that stops answering is not noticed from traffic; add a health_check to the pool", s.Name, p.Name)
				}
			}
		}
		if p.HealthCheck == nil || p.HealthCheck.HTTP == nil || p.HealthCheck.HTTP.TLS {
			continue
		}
		tlsOnly, users := true, 0
		for _, s := range c.Services {
			if !slices.Contains(s.Pools(), p.Name) {
				continue
			}
			users++
			if s.Protocol != ProtocolHTTP || s.Upstream == nil || !s.Upstream.TLS {
				tlsOnly = false
			}
		}
		if users > 0 && tlsOnly {
			v.warn(fmt.Sprintf("pools[%d].health_check.http", i), "pool %q is reached over TLS (upstream.tls of its services) but checked in plain HTTP: the check talks clear text to the TLS port; add tls: true (with server_name: or verify_name: when the backends are fixed addresses)", p.Name)
		}
	}
}

// unusedPoolWarnings warns of a pool no service and no route sends to:
// its names are resolved and its addresses checked for nothing, which is
// mostly a misspelt or forgotten pool: name.
func (v *validator) unusedPoolWarnings(c *Config) {
	used := map[string]bool{}
	for _, s := range c.Services {
		for _, name := range s.Pools() {
			used[name] = true
		}
	}
	for i, p := range c.Pools {
		if p.Name != "" && !used[p.Name] {
			v.warn(fmt.Sprintf("pools[%d]", i), "pool %q is used by no service and no route: its backends are resolved and checked but get no traffic; name it in a service's pool: or a route's pool:, or remove it", p.Name)
		}
	}
}

// serviceWarnings are an http service's valid but risky settings.
func (v *validator) serviceWarnings(c *Config, s *Service, path string) {
	if s.Protocol != ProtocolHTTP || s.Upstream == nil {
		return
	}
	u := s.Upstream
	if u.TLS && u.InsecureSkipVerify {
		v.warn(path+".upstream.insecure_skip_verify", "backend certificates are not verified: anyone on the path to the backends can impersonate them; give the CA that signed them with upstream.ca instead")
	}
	if !u.TLS {
		return
	}
	// host: keep with DNS backends, for the service's own pool and for
	// every route (a route takes the service's host and server name
	// unless it sets its own).
	if s.Pool != "" {
		v.hostKeepWarning(c, path, "", s.Pool, s.Host, u.ServerName)
	}
	for j, r := range s.Routes {
		host, sni := r.Host, r.ServerName
		if host == "" {
			host = s.Host
		}
		if sni == "" {
			sni = u.ServerName
		}
		v.hostKeepWarning(c, fmt.Sprintf("%s.routes[%d]", path, j), fmt.Sprintf("route %q: ", r.Name), r.Pool, host, sni)
	}
}

// hostKeepWarning warns when requests to a pool with DNS backends keep
// the client's Host over TLS without a server name: the backends get the
// client's Host but the TLS name of their DNS name. path is the
// service's or the route's.
func (v *validator) hostKeepWarning(c *Config, path, who, poolName, host, sni string) {
	p := c.Pool(poolName)
	if host != HostKeep || sni != "" || p == nil {
		return
	}
	for _, b := range p.Backends {
		if !b.IsName() {
			continue
		}
		at := path + ".host"
		if !v.set(at) {
			at = path
		}
		v.warn(at, "%shost: keep with upstream.tls and DNS backends (pool %q, %s): the backends get the client's Host header but the TLS name (SNI, certificate check) %q; a backend serving several sites may answer with the wrong one or 421. Set host: to the site the backends serve, or server_name (upstream's or the route's) to state the TLS name (nginx: proxy_ssl_name)",
			who, p.Name, b.Name, strings.TrimSuffix(b.Name, "."))
		return
	}
}

// covers reports whether a listener on x takes the port of address y too:
// 0.0.0.0 takes every IPv4 address, [::] every address of both families
// (sluice listens dual-stack, IPV6_V6ONLY off, as Go does).
func covers(x, y netip.Addr) bool {
	return x.IsUnspecified() && (x.Is6() || y.Unmap().Is4())
}

// familyWarning warns when a service's pool can give it no backend: a
// service uses only the addresses of its own family (an IPv4 listen
// address IPv4 backends, an IPv6 one IPv6 backends), and a pool of fixed
// addresses only of the other family has none. A pool with a DNS name is
// not judged: the name may answer in either family.
func (v *validator) familyWarning(c *Config, s *Service, path string) {
	if !s.ListenAddr.IsValid() {
		return
	}
	v6 := !s.ListenAddr.Addr().Unmap().Is4()
	names := []string{s.Pool}
	for _, r := range s.Routes {
		names = append(names, r.Pool)
	}
	for _, name := range slices.Compact(names) {
		p := c.Pool(name)
		if p == nil || len(p.Backends) == 0 {
			continue
		}
		if slices.ContainsFunc(p.Backends, func(b Backend) bool {
			return b.IsName() || b.AddrPort.IsValid() && !b.AddrPort.Addr().Unmap().Is4() == v6
		}) {
			continue
		}
		fam, other := "IPv4", "IPv6"
		if v6 {
			fam, other = other, fam
		}
		v.warn(path+".listen", "service %q listens on %s but pool %q has only %s addresses: a service sends only to backends of its own family, so it has none; add %s backends to the pool or listen on an %s address",
			s.Name, fam, p.Name, other, fam, other)
	}
}

// timeouts refuses combinations that cannot work: total bounds the whole
// exchange, so a phase timeout the file sets longer than total can never
// fire (total cuts first; a connect timeout longer than total lets one
// slow connect use up every try).
func (v *validator) timeouts(t *Timeouts, tp string) {
	if t.Total <= 0 {
		return
	}
	for _, ph := range []struct {
		key string
		d   Duration
	}{{"connect", t.Connect}, {"send", t.Send}, {"read", t.Read}} {
		// A tight total alone is a choice (the phase defaults simply
		// never matter); a phase the file sets longer than total is a
		// setting that can never take effect.
		at := tp + "." + ph.key
		if ph.d <= t.Total || !v.set(at) {
			continue
		}
		v.add(at, "%s (%s) is longer than total (%s), which bounds the whole exchange and would always cut first: raise total to at least %s or lower %s",
			ph.key, ph.d.D(), t.Total.D(), ph.d.D(), ph.key)
	}
}

// conditionHint suggests the entries to write for a retry.on or
// ejection.on value that is not one: "5xx", "http_503", "error".
func conditionHint(on string) string {
	l := strings.ToLower(on)
	switch {
	case l == "5xx" || l == "http_5xx" || l == "server_error":
		return " (list statuses one by one, e.g. [502, 503, 504])"
	case strings.HasPrefix(l, "http_"):
		return fmt.Sprintf(" (write the status alone: %s)", strings.TrimPrefix(l, "http_"))
	case l == "error" || l == "connect_failure" || l == "connect-error" || l == "refused":
		return " (a failed connect is connect-failure)"
	case strings.Contains(l, "timeout"):
		return " (write timeout)"
	case l == "reset" || strings.Contains(l, "reset"):
		return " (write reset)"
	}
	return ""
}

// between checks an integer key is within [lo, hi].
func (v *validator) between(path string, n, lo, hi int64) {
	if n < lo || n > hi {
		v.add(path, "%d: must be between %d and %d", n, lo, hi)
	}
}

func (v *validator) retry(r *Retry, path string) {
	if r.Attempts < 1 || r.Attempts > MaxRetryAttempts {
		v.add(path+".attempts", "%d: must be between 1 and %d (tries in total)", r.Attempts, MaxRetryAttempts)
	}
	seen := map[string]bool{}
	for i, on := range r.On {
		p := fmt.Sprintf("%s.on[%d]", path, i)
		if seen[on] {
			v.add(p, "%q is listed twice", on)
			continue
		}
		seen[on] = true
		if _, err := retry.ParseCondition(on); err != nil {
			v.add(p, "%q: must be connect-failure, reset, timeout, 429 or a status 500-599%s", on, conditionHint(on))
		}
	}
	seen = map[string]bool{}
	for i, m := range r.Methods {
		p := fmt.Sprintf("%s.methods[%d]", path, i)
		switch {
		case retry.CheckMethod(m) != nil:
			v.add(p, "%q: methods are upper-case tokens such as GET", m)
		case seen[m]:
			v.add(p, "%q is listed twice", m)
		}
		seen[m] = true
	}
	if h := r.IdempotencyHeader; h != "" && !tokenRE.MatchString(h) {
		v.add(path+".idempotency_header", "%q is not a valid header name", h)
	}
	if r.BudgetPercent < 0 || r.BudgetPercent > 100 {
		v.add(path+".budget_percent", "%d: must be between 0 and 100", r.BudgetPercent)
	}
	v.positive(path+".backoff.base", r.Backoff.Base)
	if r.Backoff.Max < r.Backoff.Base {
		v.add(path+".backoff.max", "max (%s) must not be less than base (%s)", r.Backoff.Max.D(), r.Backoff.Base.D())
	}
	if r.BufferBytes < 0 || r.BufferBytes > retry.MaxBufferBytes {
		v.add(path+".buffer_bytes", "%d: must be between 0 and %d", r.BufferBytes, retry.MaxBufferBytes)
	}
}

// routes checks the routes of an http service: each one's keys here, the
// table as a whole (precedence, shadowed routes) by l7/route through
// l7/service, its problems put on the lines of the routes they name.
func (v *validator) routes(s *Service, path string, pools map[string]int) {
	if len(s.Routes) == 0 {
		return
	}
	ok := true
	for i := range s.Routes {
		r := &s.Routes[i]
		rp := fmt.Sprintf("%s.routes[%d]", path, i)
		if r.Name == "" {
			v.add(rp+".name", "name is required (the access log names the route)")
			ok = false
		} else if r.Name == service.DefaultRouteName && s.Pool != "" {
			v.add(rp+".name", "%q names the route of the service's own pool; choose another name", r.Name)
			ok = false
		}
		for j := range s.Routes[:i] {
			if r.Name != "" && s.Routes[j].Name == r.Name {
				v.add(rp+".name", "route %q is defined twice (also at line %d)", r.Name, s.Routes[j].Line)
				ok = false
			}
		}
		if r.Pool == "" {
			v.add(rp+".pool", "pool is required")
			ok = false
		} else if _, found := pools[r.Pool]; !found {
			v.poolRef(rp+".pool", r.Pool, pools)
			ok = false
		}
		if v.set(rp+".host") && r.Host != HostKeep {
			if err := checkHost(r.Host); err != nil {
				v.add(rp+".host", "%q: %v (or \"keep\")", r.Host, err)
			}
		}
		if t := r.Timeouts; t != nil {
			for _, f := range []struct {
				k string
				d Duration
			}{{"connect", t.Connect}, {"send", t.Send}, {"read", t.Read}, {"total", t.Total}} {
				if v.set(rp + ".timeouts." + f.k) {
					v.positive(rp+".timeouts."+f.k, f.d)
				}
			}
		}
		if r.Retry != nil {
			v.retry(r.Retry, rp+".retry")
		}
		v.headers(r.Headers, rp+".headers")
		if v.set(rp + ".max_body_bytes") {
			v.between(rp+".max_body_bytes", r.MaxBodyBytes, 1, MaxMaxBodyBytes)
		}
		if v.set(rp + ".max_requests") {
			v.between(rp+".max_requests", int64(r.MaxRequests), 1, MaxClientRequests)
			if c := s.Client; c != nil && r.MaxRequests > c.MaxRequests {
				v.add(rp+".max_requests", "%d is more than client.max_requests (%d): the listener's bound always cuts first; lower it, or raise client.max_requests", r.MaxRequests, c.MaxRequests)
			}
		}
		if v.set(rp + ".tunnel_idle_timeout") {
			v.positive(rp+".tunnel_idle_timeout", r.TunnelIdleTimeout)
		}
		if r.ServerName != "" {
			if s.Upstream == nil || !s.Upstream.TLS {
				v.add(rp+".server_name", "only allowed with upstream.tls: true")
			} else if err := checkServerName(r.ServerName); err != nil {
				v.add(rp+".server_name", "%q: %v", r.ServerName, err)
			}
		}
		if r.Header != nil && r.Header.Name == "" {
			v.add(rp+".header.name", "name is required (the header the route matches on)")
			ok = false
		}
	}
	if !ok {
		return
	}
	if _, err := l7Service(*s).Table(); err != nil {
		for _, e := range splitErrors(err) {
			v.add(v.routePath(s, path, e.Error()), "%v", e)
		}
	}
}

// routePath is the path of the route an error of the routing table
// names first ("route NAME ..."), for its line; path when none.
func (v *validator) routePath(s *Service, path, msg string) string {
	name, _, _ := strings.Cut(strings.TrimPrefix(msg, "route "), " ")
	for i, r := range s.Routes {
		if r.Name == name {
			return fmt.Sprintf("%s.routes[%d]", path, i)
		}
	}
	return path + ".routes"
}

// splitErrors is the errors an errors.Join holds (err itself otherwise).
func splitErrors(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// l7Service is the part of an http service l7/service checks: its pool
// and the match of its routes.
func l7Service(s Service) service.Config {
	c := service.Config{Name: s.Name, Pool: s.Pool}
	for _, r := range s.Routes {
		c.Routes = append(c.Routes, service.Route{Match: r.Spec(), Pool: r.Pool})
	}
	return c
}

// Spec is what the route matches, for l7/route.
func (r Route) Spec() route.Spec {
	sp := route.Spec{Name: r.Name, Hosts: r.Hosts, Path: r.Path, ExactPath: r.ExactPath, Methods: r.Methods, Line: r.Line}
	if r.Header != nil {
		sp.Header = &route.Header{Name: r.Header.Name, Value: r.Header.Value}
	}
	return sp
}

// sniCerts checks the certificates of a listener chosen by SNI: each
// loads and names its DNS names, and no two cover the same name
// (l7/certs decides).
func (v *validator) sniCerts(t *ServiceTLS, tp string) {
	for i, c := range t.Certificates {
		cp := fmt.Sprintf("%s.certificates[%d]", tp, i)
		switch {
		case c.Cert == "":
			v.add(cp+".cert", "cert (PEM file) is required")
			return
		case c.Key == "":
			v.add(cp+".key", "key (PEM file) is required")
			return
		}
	}
	if _, err := certs.Load(t.Files()); err != nil {
		v.add(tp+".certificates", "%v", err)
	}
}

// verifyName checks upstream.verify_name: with verification on, a name.
func (v *validator) verifyName(u *Upstream, path string) {
	if u.VerifyName == "" || !u.TLS {
		return
	}
	if u.InsecureSkipVerify {
		v.add(path+".verify_name", "set either verify_name or insecure_skip_verify, not both")
	}
	if err := checkServerName(u.VerifyName); err != nil {
		v.add(path+".verify_name", "%q: %v", u.VerifyName, err)
	}
}

// checkServerName checks a TLS server name: a DNS name or an IP address.
func checkServerName(n string) error {
	if err := checkDNSName(n); err != nil {
		if _, ipErr := netip.ParseAddr(n); ipErr != nil {
			return fmt.Errorf("not a DNS name or an IP address: %w", err)
		}
	}
	return nil
}

// headers checks header rules (l7/service decides).
func (v *validator) headers(h *HeaderRules, path string) {
	if h == nil {
		return
	}
	if err := h.L7().Check(); err != nil {
		v.add(path, "%v", err)
	}
}
