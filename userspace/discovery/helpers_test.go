package discovery

import (
	"context"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startServer runs h on 127.0.0.1 (UDP and TCP, same random port) until
// the test ends and returns "127.0.0.1:port".
func startServer(t *testing.T, h dns.HandlerFunc) string {
	t.Helper()
	var pc net.PacketConn
	var l net.Listener
	for range 20 {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		pc, l = nil, nil
	}
	if l == nil {
		t.Fatal("no free port for udp+tcp")
	}
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // runs after the Shutdowns registered below
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.ActivateAndServe()
		}()
		<-started
		t.Cleanup(func() { _ = s.Shutdown() })
	}
	return pc.LocalAddr().String()
}

// closedPort returns a 127.0.0.1 UDP address nobody listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

func rrs(t *testing.T, lines ...string) []dns.RR {
	t.Helper()
	var out []dns.RR
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			t.Fatalf("bad rr %q: %v", l, err)
		}
		out = append(out, rr)
	}
	return out
}

// reply answers q with rcode and the records among answer that match its
// type (CNAMEs always).
func reply(w dns.ResponseWriter, q *dns.Msg, rcode int, answer []dns.RR) {
	m := new(dns.Msg)
	m.SetRcode(q, rcode)
	for _, rr := range answer {
		if rr.Header().Rrtype == q.Question[0].Qtype || rr.Header().Rrtype == dns.TypeCNAME {
			m.Answer = append(m.Answer, rr)
		}
	}
	_ = w.WriteMsg(m)
}

// staticHandler answers every query with the given records.
func staticHandler(t *testing.T, lines ...string) dns.HandlerFunc {
	answer := rrs(t, lines...)
	return func(w dns.ResponseWriter, q *dns.Msg) { reply(w, q, dns.RcodeSuccess, answer) }
}

// fakeClock is a manual Clock.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c  chan time.Time
	at time.Time
	fc *fakeClock
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: make(chan time.Time, 1), at: c.now.Add(d), fc: c}
	if d <= 0 {
		t.c <- c.now
		return t
	}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.fc.mu.Lock()
	defer t.fc.mu.Unlock()
	for i, x := range t.fc.timers {
		if x == t {
			t.fc.timers = append(t.fc.timers[:i], t.fc.timers[i+1:]...)
			return true
		}
	}
	return false
}

// Advance moves time and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			t.c <- c.now
		} else {
			kept = append(kept, t)
		}
	}
	c.timers = kept
}

// Next is the earliest pending timer's deadline (zero if none).
func (c *fakeClock) Next() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n time.Time
	for _, t := range c.timers {
		if n.IsZero() || t.at.Before(n) {
			n = t.at
		}
	}
	return n
}

// waitTimers waits until n timers are pending (the watcher goroutines are
// all parked).
func (c *fakeClock) waitTimers(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		k := len(c.timers)
		c.mu.Unlock()
		if k == n {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("timed out waiting for %d pending timers", n)
}

// scriptExchanger answers from a function the test can swap.
type scriptExchanger struct {
	mu sync.Mutex
	fn func(q *dns.Msg, network, server string) (*dns.Msg, error)
	n  int
}

func (x *scriptExchanger) set(fn func(q *dns.Msg, network, server string) (*dns.Msg, error)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.fn = fn
}

func (x *scriptExchanger) calls() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.n
}

func (x *scriptExchanger) Exchange(ctx context.Context, q *dns.Msg, network, server string) (*dns.Msg, error) {
	x.mu.Lock()
	fn := x.fn
	x.n++
	x.mu.Unlock()
	return fn(q, network, server)
}

// answerA returns a script answering A queries with the given ttl and
// addresses (NOERROR, empty for AAAA).
func answerA(ttl uint32, addrs ...string) func(q *dns.Msg, network, server string) (*dns.Msg, error) {
	return func(q *dns.Msg, network, server string) (*dns.Msg, error) {
		m := new(dns.Msg)
		m.SetReply(q)
		if q.Question[0].Qtype == dns.TypeA {
			for _, a := range addrs {
				rr, _ := dns.NewRR(q.Question[0].Name + " " + strconv.FormatUint(uint64(ttl), 10) + " A " + a)
				m.Answer = append(m.Answer, rr)
			}
		}
		return m, nil
	}
}

func answerRcode(rc int) func(q *dns.Msg, network, server string) (*dns.Msg, error) {
	return func(q *dns.Msg, network, server string) (*dns.Msg, error) {
		m := new(dns.Msg)
		m.SetRcode(q, rc)
		return m, nil
	}
}
