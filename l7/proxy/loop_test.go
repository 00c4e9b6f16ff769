package proxy

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/pool"
)

// A pool whose backend is the service itself (a backend name that
// resolves to the load balancer's own address: the site's public name
// used as the pool's) makes a forwarding loop: each pass adds a Via
// entry, and at maxSluiceHops of sluice's the request is answered 508
// Loop Detected instead of going round until client.max_header_count
// (95 passes before) or every request slot ran out.
func TestForwardingLoop(t *testing.T) {
	p := newPool(t, nil)
	obs := &refusedObserver{}
	h := start(t, p, func(o *Options) { o.Observer = obs })
	self := netip.MustParseAddrPort(strings.TrimPrefix(h.url, "http://"))
	p.SetSource(time.Now(), pool.SourceStatic, []pool.Desired{{Addr: self, Weight: 1, Info: "static " + self.String()}})
	resp, body := h.do(t, "GET", "/", nil, nil)
	if resp.StatusCode != http.StatusLoopDetected || !strings.Contains(body, "forwarding loop") || !strings.Contains(body, "pool web") {
		t.Errorf("%d %q, want 508 naming the loop and the pool", resp.StatusCode, body)
	}
	if n := len(h.access.lines(t)); n != maxSluiceHops+1 {
		t.Errorf("%d passes through the service, want %d", n, maxSluiceHops+1)
	}
	if n := obs.count(limitLoop); n != 1 {
		t.Errorf("refused{loop} = %d, want 1", n)
	}
}

// A chain of load balancers below maxSluiceHops is served.
func TestViaChainServed(t *testing.T) {
	b := newBackend(t, status(200))
	h := start(t, newPool(t, nil, b.addr), nil)
	hdr := http.Header{"Via": {"1.1 cdn (CloudFront), 1.1 sluice", "2 sluice, 1.1 sluice", "1.1 sluice"}}
	if resp, body := h.do(t, "GET", "/", nil, hdr); resp.StatusCode != http.StatusOK {
		t.Errorf("%d %q, want 200", resp.StatusCode, body)
	}
}

func TestSluiceHops(t *testing.T) {
	cases := []struct {
		via  []string
		want int
	}{
		{nil, 0},
		{[]string{"1.1 sluice"}, 1},
		{[]string{"1.1 sluice, 2 sluice", "HTTP/1.1   sluice (node a)"}, 3},
		{[]string{"1.1 proxy.example, 1.0 fred, 1.1 sluicex, 1.1 xsluice"}, 0},
		{[]string{",,, sluice, 1.1, , 1.1 sluice,"}, 1},
		{[]string{"1.1 cdn (CloudFront, edge), 1.1 sluice"}, 1},
	}
	for _, c := range cases {
		if got := sluiceHops(c.via); got != c.want {
			t.Errorf("sluiceHops(%q) = %d, want %d", c.via, got, c.want)
		}
	}
}
