package discovery

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/miekg/dns"

	"github.com/sluicelb/sluice/userspace/config"
)

// Defaults for the fields of Config left zero.
const (
	DefaultTimeout      = 2 * time.Second
	DefaultMinTTL       = 1 * time.Second
	DefaultMaxTTL       = 5 * time.Minute
	DefaultNXDomainHold = 30 * time.Second
	DefaultBackoffBase  = 1 * time.Second
	DefaultBackoffMax   = 30 * time.Second
	// DefaultJitter is the largest fraction of a refresh interval taken off
	// it at random, so names with equal TTLs do not refresh in lock-step.
	DefaultJitter = 0.1
	// DefaultResolvConf is read when Config.Servers is empty.
	DefaultResolvConf = "/etc/resolv.conf"
	// EDNSBufferSize is the UDP payload size advertised in queries (the DNS
	// flag day 2020 value: no IP fragmentation on common paths).
	EDNSBufferSize = 1232
)

// Config is how names are resolved and followed. The agent fills it from
// the YAML dns section: servers, timeout, min_ttl, max_ttl, nxdomain_hold
// map one to one; zero values take the defaults.
type Config struct {
	// Servers are "host:port" addresses queried in order. Empty: the
	// nameservers of ResolvConf, port 53.
	Servers []string
	// ResolvConf is read when Servers is empty; default /etc/resolv.conf.
	ResolvConf string
	// Timeout bounds one query to one server (UDP, and TCP after a
	// truncated reply, each get it).
	Timeout time.Duration
	// MinTTL and MaxTTL clamp the TTL of answers: a name is re-resolved at
	// least every MaxTTL and at most every MinTTL.
	MinTTL time.Duration
	MaxTTL time.Duration
	// NXDomainHold is how long the last good answer is kept after the name
	// stopped existing (NXDOMAIN) or stopped having A records (empty
	// NOERROR), before an empty set is published. Zero takes the default;
	// negative means no hold (withdraw at the first negative answer).
	NXDomainHold time.Duration
	// BackoffBase and BackoffMax bound the retry delay after failed lookups
	// (doubling from base, with jitter).
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// Jitter is the largest fraction of a refresh interval removed at
	// random (0 <= Jitter < 1). A refresh is never scheduled before MinTTL.
	Jitter float64
	// NoAAAA disables the AAAA query made with each A query: the name's
	// IPv4 addresses only (tests that count queries).
	NoAAAA bool
}

// FromConfig converts the YAML dns section, whose defaults the config
// package has already applied: an explicit nxdomain_hold of 0 ("at once")
// becomes a negative hold here.
func FromConfig(c config.DNS) Config {
	hold := c.NXDomainHold.D()
	if hold == 0 {
		hold = -1
	}
	return Config{
		Servers:      slices.Clone(c.Servers),
		Timeout:      c.Timeout.D(),
		MinTTL:       c.MinTTL.D(),
		MaxTTL:       c.MaxTTL.D(),
		NXDomainHold: hold,
	}
}

// WithDefaults returns c with every zero field set to its default.
// Servers stay empty here; NewResolver reads ResolvConf for them.
func (c Config) WithDefaults() Config {
	if c.ResolvConf == "" {
		c.ResolvConf = DefaultResolvConf
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MinTTL == 0 {
		c.MinTTL = DefaultMinTTL
	}
	if c.MaxTTL == 0 {
		c.MaxTTL = DefaultMaxTTL
	}
	if c.NXDomainHold == 0 {
		c.NXDomainHold = DefaultNXDomainHold
	}
	if c.BackoffBase == 0 {
		c.BackoffBase = DefaultBackoffBase
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.Jitter == 0 {
		c.Jitter = DefaultJitter
	}
	return c
}

// Validate reports the first inconsistent field of a defaulted Config.
func (c Config) Validate() error {
	var errs []error
	for _, s := range c.Servers {
		if _, err := netip.ParseAddrPort(s); err != nil {
			errs = append(errs, fmt.Errorf("dns server %q: want ip:port: %w", s, err))
		}
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("dns timeout %s is negative", c.Timeout))
	}
	if c.MinTTL < 0 || c.MaxTTL < 0 {
		errs = append(errs, errors.New("dns min_ttl and max_ttl must not be negative"))
	}
	if c.MaxTTL < c.MinTTL {
		errs = append(errs, fmt.Errorf("dns max_ttl %s is below min_ttl %s", c.MaxTTL, c.MinTTL))
	}
	if c.BackoffMax < c.BackoffBase {
		errs = append(errs, fmt.Errorf("dns backoff max %s is below base %s", c.BackoffMax, c.BackoffBase))
	}
	if c.Jitter < 0 || c.Jitter >= 1 {
		errs = append(errs, fmt.Errorf("dns jitter %v not in [0, 1)", c.Jitter))
	}
	return errors.Join(errs...)
}

// ServersFromResolvConf returns the nameservers of a resolv.conf file as
// "ip:port". A file without nameservers yields 127.0.0.1:53, as the C
// library does.
func ServersFromResolvConf(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read nameservers: %w", err)
	}
	defer f.Close()
	cc, err := dns.ClientConfigFromReader(f)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	var servers []string
	for _, s := range cc.Servers {
		a, err := netip.ParseAddr(s)
		if err != nil {
			// Not an address (the C library ignores such lines too).
			continue
		}
		servers = append(servers, net.JoinHostPort(a.String(), cc.Port))
	}
	if len(servers) == 0 {
		servers = []string{"127.0.0.1:53"}
	}
	return servers, nil
}
