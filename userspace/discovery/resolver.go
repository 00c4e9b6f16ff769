// Package discovery resolves backend names with a DNS client that sees
// TTLs and follows them: each watched name is re-resolved when its answer
// expires (TTL clamped to [min_ttl, max_ttl], with jitter), transport
// failures keep the last good answer, and a name that stops existing is
// held for nxdomain_hold before its addresses are withdrawn.
//
// The Resolver does single lookups (several servers in order, UDP then TCP
// on truncation, EDNS0). The Watcher runs one goroutine per name and
// publishes Updates; each name is one source of addresses for the pool.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// FailureKind names why a lookup produced no usable answer.
type FailureKind string

// Failure kinds. NXDOMAIN and an empty answer are not failures: they are
// answers, handled by the hold logic.
const (
	FailTimeout  FailureKind = "timeout"  // no reply within Config.Timeout
	FailServfail FailureKind = "servfail" // rcode SERVFAIL
	FailRefused  FailureKind = "refused"  // rcode REFUSED
	FailGarbage  FailureKind = "garbage"  // unparsable, wrong question, other rcodes, truncated over TCP
	FailNetwork  FailureKind = "network"  // dial or socket error (e.g. ICMP port unreachable)
)

// FailureKinds lists every kind, for metrics that want all label values.
func FailureKinds() []FailureKind {
	return []FailureKind{FailTimeout, FailServfail, FailRefused, FailGarbage, FailNetwork}
}

// ErrInvalidName is returned for names that are not DNS names.
var ErrInvalidName = errors.New("invalid dns name")

// Attempt is one server's failure within a lookup.
type Attempt struct {
	Server string
	Kind   FailureKind
	Err    error
}

// LookupError is returned when no server gave a usable answer.
type LookupError struct {
	Name     string
	Kind     FailureKind // kind of the last attempt
	Attempts []Attempt   // one per server tried, in order
}

func (e *LookupError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "lookup %s: %s", e.Name, e.Kind)
	for _, a := range e.Attempts {
		fmt.Fprintf(&b, "; %s: %v", a.Server, a.Err)
	}
	return b.String()
}

// Unwrap returns the attempts' errors.
func (e *LookupError) Unwrap() []error {
	errs := make([]error, 0, len(e.Attempts))
	for _, a := range e.Attempts {
		errs = append(errs, a.Err)
	}
	return errs
}

// Answer is one usable reply for a name.
type Answer struct {
	Name string // the name asked, fully qualified, lower case
	// Addrs are the name's addresses, IPv4 (A records after following
	// CNAMEs) then IPv6 (AAAA records), sorted, unique.
	Addrs []netip.Addr
	// TTL is the smallest TTL of the records used (CNAMEs, A and AAAA
	// records). For NXDOMAIN and empty answers: the negative-caching TTL
	// from the SOA in the authority section, or 0 when there is none.
	TTL        time.Duration
	Rcode      int    // dns.RcodeSuccess or dns.RcodeNameError
	Server     string // the server that answered
	ReceivedAt time.Time
	Truncated  bool     // the UDP reply was truncated and TCP was used
	CNAMEs     []string // the chain followed, in order, if any
}

// Negative reports whether the answer says the name has no address
// (NXDOMAIN, or NOERROR without A and AAAA records).
func (a Answer) Negative() bool { return len(a.Addrs) == 0 }

// Expires is when the answer's TTL runs out.
func (a Answer) Expires() time.Time { return a.ReceivedAt.Add(a.TTL) }

// Resolver looks names up. It is safe for concurrent use.
type Resolver struct {
	cfg   Config
	x     Exchanger
	clock Clock
	log   *slog.Logger
	stats *Stats

	mu       sync.Mutex
	lastFail map[string]time.Time // server -> last failure, for ordering
	aaaa     map[string]lastAAAA  // name -> its last good AAAA addresses
	// resolv follows cfg.ResolvConf when the servers come from it (nil:
	// configured servers).
	resolv *resolvWatch
}

// resolvWatch is what was read of the resolv.conf the servers come from,
// checked again at most every resolvCheck (the file changes when DHCP,
// a VPN or an operator changes the host's name servers: the C library
// and Go's resolver read it again too).
type resolvWatch struct {
	next time.Time // when to look at the file again
	seen os.FileInfo
	warn bool // a warning about the file is out (said once until it is read again)
}

// resolvCheck is how often a resolv.conf the servers come from is
// looked at again (Go's resolver: 5 s).
const resolvCheck = 5 * time.Second

// lastAAAA is a name's last good AAAA answer, kept for a lookup whose
// AAAA query fails while its A query succeeds. noneUntil is set by a
// NODATA answer (no AAAA records): until then the name is known to have
// none, and its AAAA records are not asked again (RFC 2308 negative
// caching, the SOA's TTL and minimum, at most MaxTTL).
type lastAAAA struct {
	addrs     []netip.Addr
	at        time.Time
	noneUntil time.Time
}

// ResolverOption customises a Resolver (tests, observability).
type ResolverOption func(*Resolver)

// WithExchanger replaces the network exchanger.
func WithExchanger(x Exchanger) ResolverOption { return func(r *Resolver) { r.x = x } }

// WithClock replaces the wall clock.
func WithClock(c Clock) ResolverOption { return func(r *Resolver) { r.clock = c } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) ResolverOption { return func(r *Resolver) { r.log = l } }

// WithStats counts into s instead of a Stats of the Resolver's own.
func WithStats(s *Stats) ResolverOption { return func(r *Resolver) { r.stats = s } }

// NewResolver validates cfg (after defaults) and reads the resolv.conf
// nameservers when cfg.Servers is empty.
func NewResolver(cfg Config, opts ...ResolverOption) (*Resolver, error) {
	cfg = cfg.WithDefaults()
	var resolv *resolvWatch
	if len(cfg.Servers) == 0 {
		seen, _ := os.Stat(cfg.ResolvConf)
		servers, err := ServersFromResolvConf(cfg.ResolvConf)
		if err != nil {
			return nil, fmt.Errorf("dns servers: %w", err)
		}
		cfg.Servers = servers
		resolv = &resolvWatch{seen: seen}
	}
	cfg.Servers = slices.Clone(cfg.Servers)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Resolver{
		cfg:      cfg,
		x:        &NetExchanger{},
		clock:    realClock{},
		log:      slog.Default(),
		lastFail: make(map[string]time.Time),
		aaaa:     make(map[string]lastAAAA),
		resolv:   resolv,
	}
	for _, o := range opts {
		o(r)
	}
	if resolv != nil {
		resolv.next = r.clock.Now().Add(resolvCheck)
	}
	if r.stats == nil {
		r.stats = &Stats{}
	}
	return r, nil
}

// Config returns the effective configuration (defaults applied, servers
// resolved).
func (r *Resolver) Config() Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.cfg
	c.Servers = slices.Clone(c.Servers)
	return c
}

// followResolvConf reads the resolv.conf the servers come from again when
// it changed (another file, size or modification time), at most every
// resolvCheck; r.mu is held. A file that cannot be read leaves the
// servers as they are (one without a name server means 127.0.0.1, as at
// start and for the C library).
func (r *Resolver) followResolvConf(now time.Time) {
	w := r.resolv
	if w == nil || now.Before(w.next) {
		return
	}
	w.next = now.Add(resolvCheck)
	path := r.cfg.ResolvConf
	fi, err := os.Stat(path)
	if err == nil && w.seen != nil && os.SameFile(fi, w.seen) && fi.Size() == w.seen.Size() && fi.ModTime().Equal(w.seen.ModTime()) {
		return
	}
	var servers []string
	if err == nil {
		servers, err = ServersFromResolvConf(path)
	}
	if err != nil {
		if !w.warn {
			w.warn = true
			r.log.Warn("dns servers: resolv.conf cannot be read; asking the servers it named before", "file", path, "servers", r.cfg.Servers, "err", err)
		}
		return
	}
	w.seen, w.warn = fi, false
	if slices.Equal(servers, r.cfg.Servers) {
		return
	}
	r.log.Info("dns servers changed in resolv.conf", "file", path, "servers", servers, "before", r.cfg.Servers)
	r.cfg.Servers = servers
	for s := range r.lastFail {
		if !slices.Contains(servers, s) {
			delete(r.lastFail, s)
		}
	}
}

// Stats returns the resolver's counters.
func (r *Resolver) Stats() *Stats { return r.stats }

// Normalize returns name fully qualified and lower case, or ErrInvalidName.
func Normalize(name string) (string, error) {
	n := dns.Fqdn(strings.ToLower(strings.TrimSpace(name)))
	if n == "." {
		return "", fmt.Errorf("%w: empty name", ErrInvalidName)
	}
	if !hostname(n) {
		return "", fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	if _, err := netip.ParseAddr(strings.TrimSuffix(n, ".")); err == nil {
		return "", fmt.Errorf("%w: %q is an address, not a name", ErrInvalidName, name)
	}
	return n, nil
}

// hostname reports whether fq (fully qualified) is made of labels of
// 1-63 letters, digits, '-' and '_', 253 characters at most.
func hostname(fq string) bool {
	if len(fq) > 254 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(fq, "."), ".") {
		if len(label) == 0 || len(label) > 63 {
			return false
		}
		for _, c := range []byte(label) {
			switch {
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			default:
				return false
			}
		}
	}
	return true
}

// failMemory is how long a failed server is tried after the others.
const failMemory = 30 * time.Second

// order returns the servers to try: those without a recent failure in
// configured order, then the recently failed ones, longest ago first.
func (r *Resolver) order(now time.Time) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.followResolvConf(now)
	var good, bad []string
	for _, s := range r.cfg.Servers {
		if t, ok := r.lastFail[s]; ok && now.Sub(t) < failMemory {
			bad = append(bad, s)
		} else {
			good = append(good, s)
		}
	}
	slices.SortStableFunc(bad, func(a, b string) int { return r.lastFail[a].Compare(r.lastFail[b]) })
	return append(good, bad...)
}

func (r *Resolver) markServer(server string, failed bool, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if failed {
		r.lastFail[server] = now
	} else {
		delete(r.lastFail, server)
	}
}

// Lookup resolves the A and (unless disabled) AAAA records of name, asked
// at once of the same server. It returns an Answer for NOERROR and
// NXDOMAIN replies, and a *LookupError when no server gave a usable reply
// to the A query. A failed AAAA query next to a good A reply keeps the
// name's last good AAAA addresses (the rule of a failed lookup, for one
// family): the next lookup asks again.
func (r *Resolver) Lookup(ctx context.Context, name string) (Answer, error) {
	fq, err := Normalize(name)
	if err != nil {
		return Answer{}, err
	}
	r.stats.lookups.Add(1)
	lerr := &LookupError{Name: fq}
	for _, server := range r.order(r.clock.Now()) {
		if err := ctx.Err(); err != nil {
			return Answer{}, fmt.Errorf("lookup %s: %w", fq, err)
		}
		ans, v6, kind, err := r.queryBoth(ctx, fq, server)
		if err != nil {
			if cerr := ctxDone(ctx); cerr != nil {
				return Answer{}, fmt.Errorf("lookup %s: %w", fq, cerr)
			}
			r.stats.serverFailure(kind)
			r.markServer(server, true, r.clock.Now())
			r.log.Debug("dns query failed", "name", fq, "server", server, "kind", kind, "err", err)
			lerr.Attempts = append(lerr.Attempts, Attempt{Server: server, Kind: kind, Err: err})
			lerr.Kind = kind
			continue
		}
		r.markServer(server, false, r.clock.Now())
		if v6 != nil {
			ans = r.merge(ans, *v6)
		}
		r.stats.answer(ans)
		return ans, nil
	}
	r.stats.lookupFailure(lerr.Kind)
	return Answer{}, lerr
}

// aaaaReply is the outcome of an AAAA query.
type aaaaReply struct {
	ans Answer
	err error
}

// queryBoth asks server for fq's A and AAAA records in parallel. The A
// reply decides whether the server answered; v6 is nil when AAAA is not
// asked (NoAAAA) or the A query failed. The AAAA reply is waited for at
// most half a timeout after the A reply.
func (r *Resolver) queryBoth(ctx context.Context, fq, server string) (a Answer, v6 *aaaaReply, kind FailureKind, err error) {
	if r.cfg.NoAAAA || r.knownNoAAAA(fq) {
		a, kind, err = r.query(ctx, fq, dns.TypeA, server)
		return a, nil, kind, err
	}
	qctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := make(chan aaaaReply, 1)
	go func() {
		ans, _, err := r.query(qctx, fq, dns.TypeAAAA, server)
		ch <- aaaaReply{ans, err}
	}()
	a, kind, err = r.query(ctx, fq, dns.TypeA, server)
	if err != nil {
		cancel() // the server failed: its AAAA reply does not matter
		<-ch
		return Answer{}, nil, kind, err
	}
	// The AAAA query has had as long as the A query; a server that
	// answers A but drops AAAA queries must not hold every lookup for a
	// whole timeout: it gets half a timeout more, then counts as failed
	// (the last AAAA addresses are kept).
	t := time.NewTimer(r.cfg.Timeout / 2)
	defer t.Stop()
	var rep aaaaReply
	select {
	case rep = <-ch:
	case <-t.C:
		cancel()
		rep = <-ch
		rep.err = fmt.Errorf("no AAAA reply %s after the A reply: %w", r.cfg.Timeout/2, context.DeadlineExceeded)
	}
	return a, &rep, "", nil
}

// knownNoAAAA reports whether fq answered NODATA to its last AAAA query
// and that answer's negative-caching TTL has not run out: an IPv4-only
// name then costs one query per refresh, not two.
func (r *Resolver) knownNoAAAA(fq string) bool {
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	return now.Before(r.aaaa[fq].noneUntil)
}

// merge adds an AAAA reply to the A answer a of the same name and server.
func (r *Resolver) merge(a Answer, v6 aaaaReply) Answer {
	now := r.clock.Now()
	if a.Rcode == dns.RcodeNameError {
		return a // no such name: no address of either family
	}
	var addrs []netip.Addr
	r.mu.Lock()
	if v6.err == nil {
		l := lastAAAA{addrs: v6.ans.Addrs, at: now}
		if len(v6.ans.Addrs) == 0 && v6.ans.Rcode == dns.RcodeSuccess {
			l.noneUntil = now.Add(min(v6.ans.TTL, r.cfg.MaxTTL))
		}
		r.aaaa[a.Name] = l
		addrs = v6.ans.Addrs
	} else {
		last := r.aaaa[a.Name]
		addrs = last.addrs
	}
	for name, l := range r.aaaa {
		if now.Sub(l.at) > 10*r.cfg.MaxTTL+time.Hour {
			delete(r.aaaa, name) // a name nobody asks for any more
		}
	}
	r.mu.Unlock()
	if v6.err != nil {
		r.log.Debug("dns AAAA query failed, keeping the last AAAA addresses", "name", a.Name,
			"server", a.Server, "keep", addrs, "err", v6.err)
	}
	switch {
	case len(addrs) == 0:
		// IPv4 only (or no address at all: a's negative TTL).
		return a
	case v6.err != nil && len(a.Addrs) == 0:
		// An IPv6-only name whose AAAA query failed: its last addresses,
		// asked again soon (the failure's rule).
		a.Addrs = slices.Clone(addrs)
		a.TTL = min(a.TTL, r.cfg.MinTTL)
		return a
	case v6.err != nil:
		a.Addrs = append(slices.Clone(a.Addrs), addrs...)
		return a
	case len(a.Addrs) == 0:
		// IPv6 only: the AAAA reply's TTL and chain.
		v6.ans.Server, v6.ans.Truncated = a.Server, a.Truncated || v6.ans.Truncated
		return v6.ans
	}
	a.Addrs = append(slices.Clone(a.Addrs), addrs...)
	a.TTL = min(a.TTL, v6.ans.TTL)
	a.Truncated = a.Truncated || v6.ans.Truncated
	return a
}

// ctxDone is ctx.Err(), also when the deadline has passed but the
// context's timer has not fired yet (a socket deadline set from it can
// fire first).
func ctxDone(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

// query asks one server one question: UDP, then TCP if truncated. It
// returns the answer or the failure kind.
func (r *Resolver) query(ctx context.Context, fq string, qtype uint16, server string) (Answer, FailureKind, error) {
	q := new(dns.Msg)
	q.SetQuestion(fq, qtype) // random id (crypto/rand)
	q.RecursionDesired = true
	q.SetEdns0(EDNSBufferSize, false)

	truncated := false
	reply, err := r.exchange(ctx, q, "udp", server)
	if err == nil && reply.Truncated {
		r.stats.truncated.Add(1)
		truncated = true
		q.Id = dns.Id()
		reply, err = r.exchange(ctx, q, "tcp", server)
	}
	if err != nil {
		return Answer{}, classify(err), err
	}
	received := r.clock.Now()
	if !questionMatches(q, reply) {
		return Answer{}, FailGarbage, fmt.Errorf("%w: reply from %s does not match the question %s", errGarbage, server, fq)
	}
	if reply.Truncated {
		return Answer{}, FailGarbage, fmt.Errorf("%w: truncated reply over tcp from %s", errGarbage, server)
	}
	switch reply.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
	case dns.RcodeServerFailure:
		return Answer{}, FailServfail, fmt.Errorf("%s answered SERVFAIL", server)
	case dns.RcodeRefused:
		return Answer{}, FailRefused, fmt.Errorf("%s answered REFUSED", server)
	default:
		return Answer{}, FailGarbage, fmt.Errorf("%w: %s answered %s", errGarbage, server, rcodeName(reply.Rcode))
	}
	if lameReferral(reply) {
		// A server that is not a resolver for this name (or is
		// misconfigured) hands out a delegation: that says nothing
		// about the name, so it must not count as "no addresses".
		return Answer{}, FailGarbage, fmt.Errorf("%w: %s answered with a referral, not an answer (is it a recursive resolver?)", errGarbage, server)
	}
	ans := parseAnswer(fq, qtype, reply)
	ans.Server = server
	ans.ReceivedAt = received
	ans.Truncated = truncated
	return ans, "", nil
}

func (r *Resolver) exchange(ctx context.Context, q *dns.Msg, network, server string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	return r.x.Exchange(ctx, q, network, server)
}

// lameReferral reports a NOERROR reply with no answer, NS records and no
// SOA in the authority section: a delegation, not a negative answer.
func lameReferral(reply *dns.Msg) bool {
	if reply.Rcode != dns.RcodeSuccess || len(reply.Answer) > 0 {
		return false
	}
	ns := false
	for _, rr := range reply.Ns {
		switch rr.(type) {
		case *dns.SOA:
			return false
		case *dns.NS:
			ns = true
		}
	}
	return ns
}

// maxChain bounds the CNAME chain followed inside one reply.
const maxChain = 16

// parseAnswer extracts the addresses for fq from a NOERROR or NXDOMAIN
// reply, following the CNAME chain as the server returned it.
func parseAnswer(fq string, qtype uint16, reply *dns.Msg) Answer {
	ans := Answer{Name: fq, Rcode: reply.Rcode}
	cnames := make(map[string]*dns.CNAME)
	for _, rr := range reply.Answer {
		if c, ok := rr.(*dns.CNAME); ok {
			cnames[strings.ToLower(c.Hdr.Name)] = c
		}
	}
	minTTL := uint32(0)
	first := true
	use := func(ttl uint32) {
		if first || ttl < minTTL {
			minTTL, first = ttl, false
		}
	}
	target := fq
	for range maxChain {
		c, ok := cnames[target]
		if !ok {
			break
		}
		use(c.Hdr.Ttl)
		target = strings.ToLower(dns.Fqdn(c.Target))
		ans.CNAMEs = append(ans.CNAMEs, target)
	}
	for _, rr := range reply.Answer {
		if !strings.EqualFold(rr.Header().Name, target) {
			continue
		}
		switch v := rr.(type) {
		case *dns.A:
			if qtype != dns.TypeA {
				continue
			}
			if a, ok := netip.AddrFromSlice(v.A.To4()); ok {
				ans.Addrs = append(ans.Addrs, a)
				use(v.Hdr.Ttl)
			}
		case *dns.AAAA:
			if qtype != dns.TypeAAAA {
				continue
			}
			if a, ok := netip.AddrFromSlice(v.AAAA.To16()); ok {
				ans.Addrs = append(ans.Addrs, a)
				use(v.Hdr.Ttl)
			}
		}
	}
	slices.SortFunc(ans.Addrs, netip.Addr.Compare)
	ans.Addrs = slices.Compact(ans.Addrs)
	if len(ans.Addrs) == 0 {
		// Negative answer: RFC 2308 negative TTL from the SOA.
		first = true
		for _, rr := range reply.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				use(min(soa.Hdr.Ttl, soa.Minttl))
			}
		}
		if first {
			minTTL = 0
		}
	}
	ans.TTL = time.Duration(minTTL) * time.Second
	return ans
}

func rcodeName(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return fmt.Sprintf("rcode %d", rc)
}
