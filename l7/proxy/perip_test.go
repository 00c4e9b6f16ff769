package proxy

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/sluicelb/sluice/l7/service"
)

func TestClientKey(t *testing.T) {
	for in, want := range map[string]string{
		"198.18.0.7":            "198.18.0.7",
		"::ffff:198.18.0.7":     "198.18.0.7",
		"2001:2::1":             "2001:2::",
		"2001:2::ffff:1:2:3":    "2001:2::",
		"2001:2:0:1::5":         "2001:2:0:1::",
		"fe80::1%eth0":          "fe80::",
		"2001:2:0:0:ffff::1%lo": "2001:2::",
	} {
		if got := clientKey(netip.MustParseAddr(in)); got.String() != want {
			t.Errorf("clientKey(%s) = %s, want %s", in, got, want)
		}
	}
	p := newPerIP(2)
	a, b := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	if !p.acquire(a) || !p.acquire(a) || p.acquire(a) || !p.acquire(b) {
		t.Fatal("want two for a, then a refused, b admitted")
	}
	p.release(a)
	if !p.acquire(a) || p.acquire(a) {
		t.Fatal("want one more for a after a release, then a refused")
	}
	p.release(a)
	p.release(a)
	p.release(b)
	if !p.acquire(a) || !p.acquire(a) || p.acquire(a) {
		t.Fatal("want two for a again once all were released")
	}
	if newPerIP(0).acquire(a) {
		t.Fatal("a limit of 0 admitted an address")
	}
}

// Addresses whose counts went back to 0 are kept for a while (a client
// between two requests), not for ever: the shards hold the addresses
// counting something and at most as many (and idleKept) idle ones.
func TestPerIPForgetsIdleAddresses(t *testing.T) {
	p := newPerIP(1)
	held := netip.MustParseAddr("2001:2::1")
	p.acquire(held)
	for i := range 100_000 {
		a := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		if !p.acquire(a) {
			t.Fatalf("%v refused", a)
		}
		p.release(a)
	}
	entries, idle := 0, 0
	for i := range p.shards {
		entries += len(p.shards[i].n)
		idle += p.shards[i].idle
	}
	if entries > perIPShards*(idleKept+1)+1 || idle != entries-1 {
		t.Errorf("after 100000 addresses came and went: %d entries, %d counted idle; want at most %d, all idle but one", entries, idle, perIPShards*(idleKept+1)+1)
	}
	if p.acquire(held) {
		t.Error("the address still holding its one was admitted again")
	}
	p.release(held)
	p.release(held) // one too many: nothing to give back
	if !p.acquire(held) || p.acquire(held) {
		t.Error("want one for the address again after its release (and an extra release ignored)")
	}
}

// client.max_connections_per_ip: one address's connection past it is
// closed at once, counted; a trusted proxy's are not limited.
func TestMaxConnectionsPerIP(t *testing.T) {
	for _, trusted := range []bool{false, true} {
		t.Run(map[bool]string{false: "client", true: "trusted-proxy"}[trusted], func(t *testing.T) {
			be := newBackend(t, status(200))
			obs := &refusedObserver{}
			h := start(t, newPool(t, nil, be.addr), func(o *Options) {
				o.Client.MaxConnections, o.Client.MaxConnectionsPerIP = 10, 2
				o.Observer = obs
				if trusted {
					o.Service.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
				}
			})
			addr := strings.TrimPrefix(h.url, "http://")
			holdConns(t, addr, 2)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
			b, _ := io.ReadAll(c)
			served := strings.HasPrefix(string(b), "HTTP/1.1 200")
			if served != trusted {
				t.Errorf("third connection from one address: served %v (%q), want %v", served, b, trusted)
			}
			if !trusted {
				waitFor(t, "refused{connections_per_ip} = 1", func() bool { return obs.count(limitConnectionsPerIP) == 1 })
			}
		})
	}
}

// A tunnel (WebSocket) holds a connection, not a request in flight: with
// client.max_requests or max_requests_per_ip at 1, a client with two
// tunnels open still gets its requests served.
func TestTunnelNotARequest(t *testing.T) {
	for name, set := range map[string]func(*service.ClientLimits){
		"max_requests":        func(c *service.ClientLimits) { c.MaxRequests = 1 },
		"max_requests_per_ip": func(c *service.ClientLimits) { c.MaxRequestsPerIP = 1 },
	} {
		t.Run(name, func(t *testing.T) {
			be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("Upgrade") != "" {
					echoUpgrade(w, r)
					return
				}
				io.WriteString(w, "ok")
			})
			h := start(t, newPool(t, nil, be.addr), func(o *Options) {
				set(&o.Client)
				o.Service.Upgrades = []string{"echo"}
			})
			upgradeClient(t, h)
			upgradeClient(t, h)
			if resp, body := h.do(t, "GET", "/", nil, nil); resp.StatusCode != 200 {
				t.Errorf("a request beside two open tunnels: %d %q, want 200", resp.StatusCode, body)
			}
		})
	}
}

func TestPerIPShardSize(t *testing.T) {
	if n := unsafe.Sizeof(perIPShard{}); n != 64 {
		t.Errorf("a shard is %d bytes, want a cache line (64)", n)
	}
}

func TestForwardedClient(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24"), netip.MustParsePrefix("2001:2:0:1::/64")}
	cases := []struct {
		name string
		h    http.Header
		want string // "": none
	}{
		{"none", http.Header{}, ""},
		{"one", http.Header{"X-Forwarded-For": {"198.18.0.7"}}, "198.18.0.7"},
		{"spoofed entries before the proxy's", http.Header{"X-Forwarded-For": {"1.2.3.4, 198.18.0.9", "198.18.0.7"}}, "198.18.0.7"},
		{"trusted hops skipped", http.Header{"X-Forwarded-For": {"198.18.0.7, 198.18.1.5,198.18.1.6"}}, "198.18.0.7"},
		{"ports and brackets", http.Header{"X-Forwarded-For": {"[2001:2::7]:4711, [2001:2:0:1::5]:80"}}, "2001:2::7"},
		{"mapped", http.Header{"X-Forwarded-For": {"::ffff:198.18.0.7"}}, "198.18.0.7"},
		{"only trusted", http.Header{"X-Forwarded-For": {"198.18.1.5"}}, ""},
		{"garbage", http.Header{"X-Forwarded-For": {"198.18.0.7, unknown"}}, ""},
		{"empty entries", http.Header{"X-Forwarded-For": {"198.18.0.7,, ,"}}, "198.18.0.7"},
		{"x-real-ip", http.Header{"X-Real-Ip": {" 198.18.0.8 "}}, "198.18.0.8"},
		{"x-forwarded-for first", http.Header{"X-Forwarded-For": {"198.18.0.7"}, "X-Real-Ip": {"198.18.0.8"}}, "198.18.0.7"},
		{"x-real-ip twice", http.Header{"X-Real-Ip": {"198.18.0.8", "198.18.0.9"}}, ""},
		{"too many trusted hops", http.Header{"X-Forwarded-For": {"198.18.0.7" + strings.Repeat(", 198.18.1.1", maxForwardedHops)}}, ""},
	}
	for _, c := range cases {
		ip, ok := forwardedClient(c.h, trusted)
		if got := map[bool]string{true: ip.String(), false: ""}[ok]; got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

// client.max_requests_per_ip behind a trusted proxy: its requests count
// against the client address it names in X-Forwarded-For (one client
// cannot take every request slot through a CDN or a cloud load balancer);
// a request that names none is not counted.
func TestMaxRequestsPerIPBehindProxy(t *testing.T) {
	be, release, arrived := blockingBackend(t)
	obs := &refusedObserver{}
	h := start(t, newPool(t, nil, be.addr), func(o *Options) {
		o.Client.MaxRequestsPerIP = 1
		o.Service.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		o.Observer = obs
	})
	from := func(xff string) http.Header {
		if xff == "" {
			return nil
		}
		return http.Header{"X-Forwarded-For": {xff}}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, _ := h.do(t, "GET", "/held", nil, from("198.18.0.7")); resp.StatusCode != 200 {
			t.Errorf("held request: %d", resp.StatusCode)
		}
	}()
	<-arrived
	if resp, body := h.do(t, "GET", "/again", nil, from("1.2.3.4, 198.18.0.7")); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("second request of 198.18.0.7: %d %q, want 429", resp.StatusCode, body)
	}
	var others sync.WaitGroup
	for _, xff := range []string{"198.18.0.8", ""} {
		others.Go(func() {
			if resp, _ := h.do(t, "GET", "/other", nil, from(xff)); resp.StatusCode != 200 {
				t.Errorf("request from %q: %d, want 200", xff, resp.StatusCode)
			}
		})
		<-arrived
	}
	close(release)
	<-done
	others.Wait()
	if n := obs.count(limitRequestsPerIP); n != 1 {
		t.Errorf("refused{requests_per_ip} = %d, want 1", n)
	}
	if resp, _ := h.do(t, "GET", "/after", nil, from("198.18.0.7")); resp.StatusCode != 200 {
		t.Errorf("after the first ended: %d, want 200 (the slot given back under the same key)", resp.StatusCode)
	}
}

// The per-address key kept with a request's slots comes back as it went
// in, IPv4 as IPv4.
func TestRequestSlotsKey(t *testing.T) {
	for _, in := range []string{"198.18.0.7", "2001:2::"} {
		var sl requestSlots
		a := netip.MustParseAddr(in)
		sl.setKey(a)
		if got := sl.keyAddr(); got != a || !sl.ip {
			t.Errorf("key %v came back as %v (ip %v)", a, got, sl.ip)
		}
	}
}

// The per-request struct stays in the 1152-byte size class with its
// malloc header (8 bytes for an object with pointers past 512): the next
// class costs 128 bytes per request (BenchmarkProxy B/op).
func TestRequestSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(request{}) + 8; n > 1152 {
		t.Errorf("request is %d bytes with its malloc header, past the 1152-byte size class", n)
	}
}

// FuzzForwardedClient: whatever a trusted proxy's client put in the
// forwarding headers, the address taken is a valid one outside the
// trusted proxies (or none), and Via's count never panics.
func FuzzForwardedClient(f *testing.F) {
	f.Add("198.18.0.7, 198.18.1.5", "", "1.1 sluice, 1.1 sluice (x)")
	f.Add("[2001:2::7]:4711,,", "198.18.0.8", "HTTP/1.1 sluice")
	f.Add(strings.Repeat("198.18.1.1,", 40), "", ",,,")
	trusted := []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")}
	f.Fuzz(func(t *testing.T, xff, realIP, via string) {
		h := http.Header{}
		if xff != "" {
			h["X-Forwarded-For"] = strings.Split(xff, "\n")
		}
		if realIP != "" {
			h["X-Real-Ip"] = []string{realIP}
		}
		if ip, ok := forwardedClient(h, trusted); ok && (!ip.IsValid() || inPrefixes(ip, trusted) || ip.Zone() != "") {
			t.Fatalf("forwardedClient(%q, %q) = %v", xff, realIP, ip)
		}
		if n := sluiceHops([]string{via}); n < 0 || n > strings.Count(via, ",")+1 {
			t.Fatalf("sluiceHops(%q) = %d", via, n)
		}
	})
}
