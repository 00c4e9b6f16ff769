package discovery

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func newTestResolver(t *testing.T, cfg Config, opts ...ResolverOption) *Resolver {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = 300 * time.Millisecond
	}
	opts = append([]ResolverOption{WithLogger(slog.New(slog.DiscardHandler))}, opts...)
	r, err := NewResolver(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

func TestLookupAnswer(t *testing.T) {
	var sawEDNS atomic.Bool
	srv := startServer(t, func(w dns.ResponseWriter, q *dns.Msg) {
		if o := q.IsEdns0(); o != nil && o.UDPSize() == EDNSBufferSize && q.RecursionDesired {
			sawEDNS.Store(true)
		}
		reply(w, q, dns.RcodeSuccess, rrs(t,
			"backend.lab. 30 CNAME alb.lab.",
			"alb.lab. 20 CNAME alb-1.lab.",
			"alb-1.lab. 7 A 198.18.2.12",
			"alb-1.lab. 9 A 198.18.2.11",
			"alb-1.lab. 9 A 198.18.2.11",
			"other.lab. 1 A 198.18.9.9", // not on the chain: ignored
			"alb-1.lab. 5 AAAA 2001:db8::1",
		))
	})
	r := newTestResolver(t, Config{Servers: []string{srv}})
	ans, err := r.Lookup(t.Context(), "Backend.LAB")
	if err != nil {
		t.Fatal(err)
	}
	if ans.Name != "backend.lab." {
		t.Errorf("name %q", ans.Name)
	}
	if want := addrs("198.18.2.11", "198.18.2.12", "2001:db8::1"); !slices.Equal(ans.Addrs, want) {
		t.Errorf("addrs %v, want %v", ans.Addrs, want)
	}
	if ans.TTL != 5*time.Second {
		t.Errorf("ttl %s, want 5s (min over the chain, the A and the AAAA records)", ans.TTL)
	}
	if !slices.Equal(ans.CNAMEs, []string{"alb.lab.", "alb-1.lab."}) {
		t.Errorf("cnames %v", ans.CNAMEs)
	}
	if ans.Server != srv || ans.Rcode != dns.RcodeSuccess || ans.ReceivedAt.IsZero() || ans.Truncated {
		t.Errorf("answer %+v", ans)
	}
	if !sawEDNS.Load() {
		t.Error("query without EDNS0 1232 / RD")
	}
}

func TestLookupNegative(t *testing.T) {
	soa := rrs(t, "lab. 60 SOA ns.lab. admin.lab. 1 60 60 60 5")
	srv := startServer(t, func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		switch q.Question[0].Name {
		case "gone.lab.":
			m.SetRcode(q, dns.RcodeNameError)
			m.Ns = soa
		case "v6only.lab.":
			m.SetReply(q)
			if q.Question[0].Qtype == dns.TypeAAAA {
				m.Answer = rrs(t, "v6only.lab. 5 AAAA 2001:db8::2")
			} else {
				m.Ns = soa
			}
		default:
			m.SetReply(q)
		}
		_ = w.WriteMsg(m)
	})
	r := newTestResolver(t, Config{Servers: []string{srv}})
	tests := []struct {
		name     string
		rcode    int
		ttl      time.Duration
		negative bool
	}{
		{"gone.lab", dns.RcodeNameError, 5 * time.Second, true},
		{"empty.lab", dns.RcodeSuccess, 0, true},
		{"v6only.lab", dns.RcodeSuccess, 5 * time.Second, false}, // an IPv6-only name is served
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ans, err := r.Lookup(t.Context(), tt.name)
			if err != nil {
				t.Fatal(err)
			}
			if ans.Negative() != tt.negative || ans.Rcode != tt.rcode || ans.TTL != tt.ttl {
				t.Errorf("got %+v", ans)
			}
		})
	}
	s := r.Stats().Snapshot()
	if s.NXDomain != 1 || s.Empty != 1 || s.Answers != 3 {
		t.Errorf("stats %+v", s)
	}
}

func TestLookupTCPFallback(t *testing.T) {
	var udp, tcp atomic.Int32
	srv := startServer(t, func(w dns.ResponseWriter, q *dns.Msg) {
		if w.RemoteAddr().Network() == "udp" {
			udp.Add(1)
			m := new(dns.Msg)
			m.SetReply(q)
			m.Truncated = true
			_ = w.WriteMsg(m)
			return
		}
		tcp.Add(1)
		var lines []string
		for i := range 100 { // too big for 1232 bytes
			lines = append(lines, "big.lab. 10 A 198.18.3."+strconv.Itoa(i+1))
		}
		reply(w, q, dns.RcodeSuccess, rrs(t, lines...))
	})
	r := newTestResolver(t, Config{Servers: []string{srv}, NoAAAA: true})
	ans, err := r.Lookup(t.Context(), "big.lab")
	if err != nil {
		t.Fatal(err)
	}
	if len(ans.Addrs) != 100 || !ans.Truncated {
		t.Errorf("got %d addrs, truncated=%v", len(ans.Addrs), ans.Truncated)
	}
	if udp.Load() != 1 || tcp.Load() != 1 {
		t.Errorf("udp %d tcp %d queries, want 1 and 1", udp.Load(), tcp.Load())
	}
	if r.Stats().Snapshot().Truncated != 1 {
		t.Error("truncation not counted")
	}
}

// garbageHandler replies with the query id and bytes that do not parse.
func garbageHandler(w dns.ResponseWriter, q *dns.Msg) {
	_, _ = w.Write([]byte{byte(q.Id >> 8), byte(q.Id), 0x81, 0x80, 0, 1, 0, 5, 0xff, 0xff, 0xff})
}

func TestLookupFailover(t *testing.T) {
	good := startServer(t, staticHandler(t, "backend.lab. 5 A 198.18.2.11"))
	rcode := func(rc int) dns.HandlerFunc {
		return func(w dns.ResponseWriter, q *dns.Msg) { reply(w, q, rc, nil) }
	}
	tests := []struct {
		name string
		bad  func(t *testing.T) string
		kind FailureKind
	}{
		{"servfail", func(t *testing.T) string { return startServer(t, rcode(dns.RcodeServerFailure)) }, FailServfail},
		{"refused", func(t *testing.T) string { return startServer(t, rcode(dns.RcodeRefused)) }, FailRefused},
		{"notimp", func(t *testing.T) string { return startServer(t, rcode(dns.RcodeNotImplemented)) }, FailGarbage},
		{"garbage", func(t *testing.T) string { return startServer(t, garbageHandler) }, FailGarbage},
		{"wrong question", func(t *testing.T) string {
			return startServer(t, func(w dns.ResponseWriter, q *dns.Msg) {
				m := new(dns.Msg)
				m.SetReply(q)
				m.Question[0].Name = "evil.lab."
				_ = w.WriteMsg(m)
			})
		}, FailGarbage},
		{"lame referral", func(t *testing.T) string {
			return startServer(t, func(w dns.ResponseWriter, q *dns.Msg) {
				m := new(dns.Msg)
				m.SetReply(q)
				m.Ns = rrs(t, "lab. 60 NS ns1.elsewhere.")
				_ = w.WriteMsg(m)
			})
		}, FailGarbage},
		{"timeout", func(t *testing.T) string {
			return startServer(t, func(dns.ResponseWriter, *dns.Msg) {})
		}, FailTimeout},
		{"closed port", closedPort, FailNetwork},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := tt.bad(t)
			r := newTestResolver(t, Config{Servers: []string{bad, good}, Timeout: 200 * time.Millisecond, NoAAAA: true})
			ans, err := r.Lookup(t.Context(), "backend.lab")
			if err != nil {
				t.Fatal(err)
			}
			if ans.Server != good || !slices.Equal(ans.Addrs, addrs("198.18.2.11")) {
				t.Errorf("answer %+v", ans)
			}
			s := r.Stats().Snapshot()
			if s.ServerFailures[tt.kind] != 1 {
				t.Errorf("server failures %v, want one %s", s.ServerFailures, tt.kind)
			}
			// The failed server is now tried last.
			if got := r.order(time.Now()); !slices.Equal(got, []string{good, bad}) {
				t.Errorf("order %v", got)
			}
			// Alone, it fails with that kind.
			r1 := newTestResolver(t, Config{Servers: []string{bad}, Timeout: 200 * time.Millisecond, NoAAAA: true})
			_, err = r1.Lookup(t.Context(), "backend.lab")
			var le *LookupError
			if !errors.As(err, &le) || le.Kind != tt.kind || len(le.Attempts) != 1 {
				t.Fatalf("err %v, want LookupError %s", err, tt.kind)
			}
			if r1.Stats().Snapshot().LookupFailures[tt.kind] != 1 {
				t.Error("lookup failure not counted")
			}
		})
	}
}

func TestLookupIgnoresForeignUDPReplies(t *testing.T) {
	srv := startServer(t, func(w dns.ResponseWriter, q *dns.Msg) {
		// A stale reply with another id, then junk too short to be a
		// reply, then the real one.
		m := new(dns.Msg)
		m.SetReply(q)
		m.Id = q.Id + 1
		m.Answer = rrs(t, "backend.lab. 5 A 198.18.6.6")
		_ = w.WriteMsg(m)
		_, _ = w.Write([]byte{1})
		reply(w, q, dns.RcodeSuccess, rrs(t, "backend.lab. 5 A 198.18.2.11"))
	})
	r := newTestResolver(t, Config{Servers: []string{srv}, NoAAAA: true})
	ans, err := r.Lookup(t.Context(), "backend.lab")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ans.Addrs, addrs("198.18.2.11")) {
		t.Errorf("addrs %v", ans.Addrs)
	}
}

func TestLookupContextCancel(t *testing.T) {
	srv := startServer(t, func(dns.ResponseWriter, *dns.Msg) {})
	r := newTestResolver(t, Config{Servers: []string{srv}, Timeout: 10 * time.Second})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := r.Lookup(ctx, "backend.lab")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err %v", err)
	}
	if time.Since(start) > time.Second {
		t.Error("lookup outlived its context")
	}
}

func TestNormalize(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"backend.lab", "backend.lab.", true},
		{"Backend.Lab.", "backend.lab.", true},
		{" a.b ", "a.b.", true},
		{"", "", false},
		{".", "", false},
		{"198.18.2.11", "", false},
		{"a..b", "", false},
		{"not a name!", "", false},
		{"under_score.lab", "under_score.lab.", true},
		{strings.Repeat("a", 64) + ".lab", "", false},
	}
	for _, tt := range tests {
		got, err := Normalize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("Normalize(%q) = %q, %v", tt.in, got, err)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("Normalize(%q): %v is not ErrInvalidName", tt.in, err)
		}
	}
}

func TestServersFromResolvConf(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	got, err := ServersFromResolvConf(write("a", "# lab\nsearch lab\nnameserver 198.18.2.53\nnameserver 2001:db8::53\nnameserver bogus\noptions ndots:1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"198.18.2.53:53", "[2001:db8::53]:53"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	got, err = ServersFromResolvConf(write("b", "search lab\n"))
	if err != nil || !slices.Equal(got, []string{"127.0.0.1:53"}) {
		t.Errorf("no nameserver: %v %v", got, err)
	}
	if _, err := ServersFromResolvConf(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file accepted")
	}
	r, err := NewResolver(Config{ResolvConf: write("c", "nameserver 198.18.2.53\n")})
	if err != nil || !slices.Equal(r.Config().Servers, []string{"198.18.2.53:53"}) {
		t.Errorf("resolver from resolv.conf: %v", err)
	}
}

// With no servers configured, the resolver follows the host's resolv.conf:
// a change of its name servers (DHCP, a VPN, an operator) is used within
// resolvCheck, as the C library and Go's resolver do; a file that goes
// away keeps the servers it named before.
func TestResolverFollowsResolvConf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	write := func(body string) {
		t.Helper()
		// Through a new file, as resolvconf and NetworkManager replace it.
		tmp := path + ".new"
		if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write("nameserver 198.18.2.53\n")
	clock := newFakeClock()
	var mu sync.Mutex
	var asked []string
	x := &scriptExchanger{}
	a := answerA(60, "198.18.2.11")
	x.set(func(q *dns.Msg, network, server string) (*dns.Msg, error) {
		mu.Lock()
		asked = append(asked, server)
		mu.Unlock()
		return a(q, network, server)
	})
	r, err := NewResolver(Config{ResolvConf: path}, WithExchanger(x), WithClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	lookup := func(want string) {
		t.Helper()
		mu.Lock()
		asked = nil
		mu.Unlock()
		if _, err := r.Lookup(context.Background(), "web.lab"); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(asked) == 0 || asked[0] != want {
			t.Errorf("asked %v, want %s first", asked, want)
		}
	}
	lookup("198.18.2.53:53")
	write("nameserver 198.18.3.53\nnameserver 198.18.2.53\n")
	lookup("198.18.2.53:53") // not looked at again before resolvCheck
	clock.Advance(resolvCheck)
	lookup("198.18.3.53:53")
	if got := r.Config().Servers; !slices.Equal(got, []string{"198.18.3.53:53", "198.18.2.53:53"}) {
		t.Errorf("Config().Servers = %v", got)
	}
	// Gone, then without a name server: the last servers stay.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	clock.Advance(resolvCheck)
	lookup("198.18.3.53:53")
	write("search lab\n") // the C library would ask 127.0.0.1: so do we
	clock.Advance(resolvCheck)
	lookup("127.0.0.1:53")
	// Configured servers are never replaced by the file's.
	r2, err := NewResolver(Config{Servers: []string{"198.18.4.53:53"}, ResolvConf: path}, WithExchanger(x), WithClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(resolvCheck)
	r = r2
	lookup("198.18.4.53:53")
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{Servers: []string{"198.18.2.53:53"}}, true},
		{"hostname server", Config{Servers: []string{"dns.lab:53"}}, false},
		{"no port", Config{Servers: []string{"198.18.2.53"}}, false},
		{"max below min", Config{Servers: []string{"198.18.2.53:53"}, MinTTL: time.Minute, MaxTTL: time.Second}, false},
		{"jitter", Config{Servers: []string{"198.18.2.53:53"}, Jitter: 1}, false},
	}
	for _, tt := range tests {
		if err := tt.cfg.WithDefaults().Validate(); (err == nil) != tt.ok {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
	d := Config{}.WithDefaults()
	if d.Timeout != 2*time.Second || d.MinTTL != time.Second || d.MaxTTL != 5*time.Minute || d.NXDomainHold != 30*time.Second {
		t.Errorf("defaults %+v", d)
	}
}

// AAAA records are served: asked with every A query, their TTL counts,
// and a failed AAAA query next to a good A reply keeps the name's last
// AAAA addresses (an IPv6-only name's are asked again within min_ttl).
func TestAAAAServed(t *testing.T) {
	var aaaa atomic.Int32
	var fail atomic.Bool
	var v6 atomic.Value
	v6.Store("2001:2:0:2::11")
	srv := startServer(t, func(w dns.ResponseWriter, q *dns.Msg) {
		switch {
		case q.Question[0].Qtype != dns.TypeAAAA && q.Question[0].Name == "v6only.lab.":
			reply(w, q, dns.RcodeSuccess, nil)
		case q.Question[0].Qtype != dns.TypeAAAA:
			reply(w, q, dns.RcodeSuccess, rrs(t, "backend.lab. 60 A 198.18.2.11"))
		case fail.Load():
			aaaa.Add(1)
			reply(w, q, dns.RcodeServerFailure, nil)
		default:
			aaaa.Add(1)
			reply(w, q, dns.RcodeSuccess, rrs(t, q.Question[0].Name+" 3 AAAA "+v6.Load().(string)))
		}
	})
	clock := newFakeClock()
	r := newTestResolver(t, Config{Servers: []string{srv}, MinTTL: time.Second}, WithClock(clock))
	lookup := func(name string, want []netip.Addr, ttl time.Duration) {
		t.Helper()
		ans, err := r.Lookup(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ans.Addrs, want) || ans.TTL != ttl {
			t.Fatalf("%s: addrs %v ttl %s, want %v ttl %s", name, ans.Addrs, ans.TTL, want, ttl)
		}
	}
	lookup("backend.lab", addrs("198.18.2.11", "2001:2:0:2::11"), 3*time.Second)
	v6.Store("2001:2:0:2::12") // the AAAA record moves
	lookup("backend.lab", addrs("198.18.2.11", "2001:2:0:2::12"), 3*time.Second)
	fail.Store(true) // SERVFAIL for AAAA only: the last AAAA addresses stay
	lookup("backend.lab", addrs("198.18.2.11", "2001:2:0:2::12"), 60*time.Second)
	if got := aaaa.Load(); got != 3 {
		t.Errorf("%d AAAA queries for 3 lookups, want 3", got)
	}
	fail.Store(false)
	lookup("v6only.lab", addrs("2001:2:0:2::12"), 3*time.Second)
	fail.Store(true)
	lookup("v6only.lab", addrs("2001:2:0:2::12"), 0) // kept, asked again at min_ttl

	// Without AAAA queries: the A records only.
	r4 := newTestResolver(t, Config{Servers: []string{srv}, NoAAAA: true})
	ans, err := r4.Lookup(t.Context(), "backend.lab")
	if err != nil || !slices.Equal(ans.Addrs, addrs("198.18.2.11")) {
		t.Fatalf("NoAAAA: %v %v", ans.Addrs, err)
	}
}

// An IPv4-only name's NODATA answer to AAAA is cached for its negative
// TTL (the SOA's, at most max_ttl): its refreshes ask A alone until then,
// and the AAAA records are asked again after it, so an AAAA record added
// later is served within that TTL. Without an SOA (no negative TTL) AAAA
// is asked with every A query.
func TestAAAANoDataCached(t *testing.T) {
	var aaaa atomic.Int32
	var v6 atomic.Value
	v6.Store("")
	soa := rrs(t, "lab. 30 SOA ns.lab. admin.lab. 1 60 60 600 30")
	srv := startServer(t, func(w dns.ResponseWriter, q *dns.Msg) {
		if q.Question[0].Qtype != dns.TypeAAAA {
			reply(w, q, dns.RcodeSuccess, rrs(t, q.Question[0].Name+" 5 A 198.18.2.11"))
			return
		}
		aaaa.Add(1)
		m := new(dns.Msg)
		m.SetRcode(q, dns.RcodeSuccess)
		switch {
		case v6.Load().(string) != "":
			m.Answer = rrs(t, q.Question[0].Name+" 5 AAAA "+v6.Load().(string))
		case q.Question[0].Name == "nosoa.lab.":
		default:
			m.Ns = soa
		}
		_ = w.WriteMsg(m)
	})
	clock := newFakeClock()
	r := newTestResolver(t, Config{Servers: []string{srv}}, WithClock(clock))
	lookup := func(name string, want ...string) {
		t.Helper()
		ans, err := r.Lookup(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ans.Addrs, addrs(want...)) {
			t.Fatalf("%s: addrs %v, want %v", name, ans.Addrs, want)
		}
	}
	for range 4 { // refreshes within the negative TTL: one AAAA query
		lookup("backend.lab", "198.18.2.11")
		clock.Advance(5 * time.Second)
	}
	if got := aaaa.Load(); got != 1 {
		t.Fatalf("%d AAAA queries for 4 lookups within the 30s negative TTL, want 1", got)
	}
	v6.Store("2001:2:0:2::11") // an AAAA record appears
	clock.Advance(11 * time.Second)
	lookup("backend.lab", "198.18.2.11", "2001:2:0:2::11")
	if got := aaaa.Load(); got != 2 {
		t.Fatalf("%d AAAA queries after the negative TTL ran out, want 2", got)
	}
	lookup("backend.lab", "198.18.2.11", "2001:2:0:2::11") // positive: asked every time
	if got := aaaa.Load(); got != 3 {
		t.Fatalf("%d AAAA queries, want 3 (a positive answer is not cached here)", got)
	}

	v6.Store("")
	aaaa.Store(0)
	lookup("nosoa.lab", "198.18.2.11")
	lookup("nosoa.lab", "198.18.2.11")
	if got := aaaa.Load(); got != 2 {
		t.Fatalf("%d AAAA queries for a NODATA without SOA, want 2 (asked every time)", got)
	}
}

// A server that answers A but drops AAAA queries costs a lookup half a
// timeout more, not a whole one; the A addresses are served.
func TestAAAADroppedBoundsLookup(t *testing.T) {
	srv := startServer(t, func(w dns.ResponseWriter, q *dns.Msg) {
		if q.Question[0].Qtype == dns.TypeAAAA {
			return // dropped
		}
		reply(w, q, dns.RcodeSuccess, rrs(t, "backend.lab. 60 A 198.18.2.11"))
	})
	r := newTestResolver(t, Config{Servers: []string{srv}, Timeout: 800 * time.Millisecond})
	start := time.Now()
	ans, err := r.Lookup(t.Context(), "backend.lab")
	took := time.Since(start)
	if err != nil || !slices.Equal(ans.Addrs, addrs("198.18.2.11")) {
		t.Fatalf("lookup: %v %v", ans.Addrs, err)
	}
	if took > 700*time.Millisecond {
		t.Errorf("lookup took %s with AAAA dropped, want about half the 800ms timeout", took)
	}
}
