package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/internal/testclock"
)

// echoServer accepts connections on loopback and counts the open ones.
type echoServer struct {
	addr netip.AddrPort
	open atomic.Int64
	mu   sync.Mutex
	cs   []net.Conn
}

func newEchoServer(t *testing.T) *echoServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{addr: netip.MustParseAddrPort(l.Addr().String())}
	var wg sync.WaitGroup
	accepting := make(chan struct{})
	go func() {
		defer close(accepting)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			// Counted open once closeAll can find it: a test that saw the
			// count go up and then calls closeAll must not miss it.
			s.mu.Lock()
			s.cs = append(s.cs, c)
			s.open.Add(1)
			s.mu.Unlock()
			wg.Go(func() {
				defer s.open.Add(-1)
				io.Copy(c, c)
				c.Close()
			})
		}
	}()
	t.Cleanup(func() {
		l.Close()
		// The accept loop ends before closeAll: a connection it took
		// just before the listener closed is in s.cs by then (closed
		// too), not added after, left echoing for a client that never
		// closes it.
		<-accepting
		s.closeAll()
		wg.Wait()
	})
	return s
}

func (s *echoServer) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.cs {
		c.Close()
	}
	s.cs = nil
}

func waitOpen(t *testing.T, s *echoServer, want int64) {
	t.Helper()
	for range 1000 { // 5 s: a loaded machine may take its time
		if s.open.Load() == want {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Errorf("%d connections open at the server, want %d", s.open.Load(), want)
}

// waitPeerFIN waits until c's socket has the peer's FIN (TCP state
// CLOSE_WAIT): on a loaded machine the FIN of a close on loopback may be
// delivered by ksoftirqd well after the close returned.
func waitPeerFIN(t *testing.T, c *Conn) {
	t.Helper()
	for range 1000 {
		var state uint8
		_ = c.rawc.Control(func(fd uintptr) {
			if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
				state = info.State
			}
		})
		if state == unix.BPF_TCP_CLOSE_WAIT {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the peer's FIN did not arrive within 5s")
}

func get(t *testing.T, p *Pools, a netip.AddrPort) *Conn {
	t.Helper()
	c, err := p.Get(context.Background(), a, "", "answer-1", time.Now().Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestReuseAndRetire(t *testing.T) {
	s := newEchoServer(t)
	p := New(Options{})
	defer p.Close()
	c1, c2 := get(t, p, s.addr), get(t, p, s.addr)
	p.Put(c1, "")
	c3 := get(t, p, s.addr)
	if c3 != c1 || !c3.Reused() || c3.Info() != "answer-1" || c3.Requests() != 2 {
		t.Fatalf("idle connection not reused: %p %p reused=%v", c3, c1, c3.Reused())
	}
	p.Put(c3, "")
	if st := p.Stats(s.addr); st.Idle != 1 || st.Busy != 1 || st.Dialled != 2 || st.Reused != 1 {
		t.Errorf("stats %+v", st)
	}
	// The address leaves active: the idle one closes now, the busy one
	// when it is given back, even as reusable.
	if n := p.Retire(s.addr); n != 1 {
		t.Errorf("retire closed %d idle, want 1", n)
	}
	waitOpen(t, s, 1)
	p.Put(c2, "")
	waitOpen(t, s, 0)
	if st := p.Stats(s.addr); st.Idle != 0 || st.Busy != 0 {
		t.Errorf("after retire: %+v", st)
	}
	// Active again: fresh connections, pooled again.
	c4 := get(t, p, s.addr)
	if c4.Reused() {
		t.Error("a connection from before the retirement was reused")
	}
	p.Put(c4, "")
	if st := p.Stats(s.addr); st.Idle != 1 {
		t.Errorf("after coming back: %+v", st)
	}
}

func TestLifetimeIdleTimeoutAndDeadPeers(t *testing.T) {
	s := newEchoServer(t)
	p := New(Options{MaxLifetime: 100 * time.Millisecond, IdleTimeout: time.Hour})
	defer p.Close()
	c := get(t, p, s.addr)
	p.Put(c, "")
	time.Sleep(120 * time.Millisecond)
	if c2 := get(t, p, s.addr); c2 == c {
		t.Error("connection reused past its lifetime")
	} else {
		// A busy connection past its lifetime closes when given back.
		time.Sleep(120 * time.Millisecond)
		p.Put(c2, "")
	}
	waitOpen(t, s, 0)

	p2 := New(Options{IdleTimeout: 50 * time.Millisecond})
	defer p2.Close()
	p2.Put(get(t, p2, s.addr), "")
	p2.Sweep(time.Now().Add(time.Second))
	if st := p2.Stats(s.addr); st.Idle != 0 {
		t.Errorf("sweep left %d idle past the idle timeout", st.Idle)
	}
	waitOpen(t, s, 0)

	// The peer closes an idle connection: it is not handed out.
	p3 := New(Options{})
	defer p3.Close()
	c = get(t, p3, s.addr)
	p3.Put(c, "")
	waitOpen(t, s, 1) // accepted and known to the server
	s.closeAll()
	waitOpen(t, s, 0)
	waitPeerFIN(t, c)
	if c2 := get(t, p3, s.addr); c2 == c {
		t.Error("a connection closed by the peer was reused")
	}
}

func TestDialErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	p := New(Options{})
	_, err = p.Get(context.Background(), a, "", "", time.Now().Add(time.Second))
	var de *DialError
	if !errors.As(err, &de) || de.Timeout || de.Addr != a {
		t.Errorf("refused: %v", err)
	}
	p = New(Options{Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}})
	t0 := time.Now()
	_, err = p.Get(context.Background(), a, "", "", time.Now().Add(50*time.Millisecond))
	if !errors.As(err, &de) || !de.Timeout || time.Since(t0) > time.Second {
		t.Errorf("connect timeout: %v", err)
	}
	p.Close()
	if _, err := p.Get(context.Background(), a, "", "", time.Now().Add(time.Second)); !errors.Is(err, ErrClosed) {
		t.Errorf("after close: %v", err)
	}
}

// The phase deadlines fire; a plain TCP connection is read and written
// through sockio (outside the scheduler's system-call hand-off), so this
// is that path's deadline test too.
func TestPhaseDeadlines(t *testing.T) {
	s := newEchoServer(t)
	p := New(Options{})
	defer p.Close()
	c := get(t, p, s.addr)
	defer p.Put(c, CloseError)
	if !c.sock.Raw() {
		t.Fatal("a plain TCP backend connection is not read and written through sockio")
	}
	c.SetTimeouts(time.Second, 50*time.Millisecond, time.Time{})
	c.Writer().WriteString("ping")
	if err := c.Writer().Flush(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c.Reader(), buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q %v", buf, err)
	}
	if c.Written() != 4 || c.ReadBytes() != 4 {
		t.Errorf("counters %d/%d", c.Written(), c.ReadBytes())
	}
	t0 := time.Now()
	_, err := c.Reader().ReadByte()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || time.Since(t0) > 500*time.Millisecond {
		t.Errorf("read timeout: %v after %s", err, time.Since(t0))
	}
	// The overall deadline wins over a longer phase timeout.
	c.SetTimeouts(time.Second, time.Hour, time.Now().Add(30*time.Millisecond))
	t0 = time.Now()
	if _, err := c.Reader().ReadByte(); err == nil || time.Since(t0) > 500*time.Millisecond {
		t.Errorf("deadline: %v after %s", err, time.Since(t0))
	}
}

func TestMaxIdleAndCloseReasons(t *testing.T) {
	s := newEchoServer(t)
	var mu sync.Mutex
	reasons := map[string]int{}
	p := New(Options{MaxIdlePerAddr: 2, OnClose: func(_ netip.AddrPort, why string) {
		mu.Lock()
		reasons[why]++
		mu.Unlock()
	}})
	cs := []*Conn{get(t, p, s.addr), get(t, p, s.addr), get(t, p, s.addr)}
	for _, c := range cs {
		p.Put(c, "")
	}
	if st := p.Stats(s.addr); st.Idle != 2 {
		t.Errorf("%d idle, want MaxIdlePerAddr=2", st.Idle)
	}
	c := get(t, p, s.addr)
	p.Put(c, CloseBackend)
	p.Retire(s.addr)
	p.Close()
	mu.Lock()
	defer mu.Unlock()
	want := map[string]int{CloseFull: 1, CloseBackend: 1, CloseDraining: 1}
	for k, v := range want {
		if reasons[k] != v {
			t.Errorf("reasons %v, want %v", reasons, want)
			break
		}
	}
}

// GetResendable hands out a connection given back just now without the
// liveness peek, but peeks one idle for longer, one whose last response
// may have left bytes behind (PeekNext), and one with bytes buffered.
func TestGetResendableSkipsThePeekOfRecentOnly(t *testing.T) {
	s := newEchoServer(t)
	p := New(Options{})
	defer p.Close()
	c := get(t, p, s.addr)
	now := time.Now()
	c.idleSince = now
	if !c.recent(now) {
		t.Error("a connection given back just now is not recent")
	}
	if c.recent(now.Add(RecentWithoutPeek)) {
		t.Error("a connection idle for RecentWithoutPeek is still recent")
	}
	c.PeekNext()
	if c.recent(now) {
		t.Error("PeekNext did not force the peek")
	}
	if !c.alive() || c.peekNext {
		t.Error("the peek did not clear PeekNext")
	}
	p.Put(c, "")
	c2, err := p.GetResendable(context.Background(), s.addr, "", "", time.Now().Add(time.Second))
	if err != nil || c2 != c || !c2.Reused() {
		t.Fatalf("GetResendable: %v, %p for %p", err, c2, c)
	}
	p.Put(c2, "")
	// The peer closes it; once idle longer than RecentWithoutPeek it is
	// peeked and not handed out.
	waitOpen(t, s, 1)
	s.closeAll()
	waitOpen(t, s, 0)
	waitPeerFIN(t, c)
	p.mu.Lock()
	c.idleSince = time.Now().Add(-2 * RecentWithoutPeek) // idle for long
	p.mu.Unlock()
	c3, err := p.GetResendable(context.Background(), s.addr, "", "", time.Now().Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if c3 == c {
		t.Error("a connection closed by the peer and idle past RecentWithoutPeek was reused")
	}
	p.Put(c3, "")
}

// TestCutClosesConnectionsInUse: when the address is removed, its
// connections in use are closed at once (their owner's read fails) and
// counted CloseRemoved when given back; another address's are untouched.
func TestCutClosesConnectionsInUse(t *testing.T) {
	s, other := newEchoServer(t), newEchoServer(t)
	var mu sync.Mutex
	reasons := map[string]int{}
	p := New(Options{OnClose: func(_ netip.AddrPort, why string) {
		mu.Lock()
		reasons[why]++
		mu.Unlock()
	}})
	defer p.Close()
	busy, idle, elsewhere := get(t, p, s.addr), get(t, p, s.addr), get(t, p, other.addr)
	p.Put(idle, "")
	if p.Stats(s.addr).Busy != 1 {
		t.Fatalf("stats %+v", p.Stats(s.addr))
	}
	read := make(chan error, 1)
	go func() {
		_, err := busy.Reader().ReadByte() // an exchange waiting for its response
		read <- err
	}()
	if n := p.Cut(s.addr); n != 1 {
		t.Fatalf("Cut closed %d connections in use, want 1", n)
	}
	select {
	case err := <-read:
		if err == nil {
			t.Fatal("the read of a cut connection succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the read of a cut connection still waits")
	}
	if !busy.Removed() || elsewhere.Removed() {
		t.Fatalf("Removed: cut %v, other address %v", busy.Removed(), elsewhere.Removed())
	}
	p.Put(busy, CloseError) // as the proxy gives back a failed exchange
	waitOpen(t, s, 0)
	waitOpen(t, other, 1)
	mu.Lock()
	if reasons[CloseRemoved] != 1 || reasons[CloseDraining] != 1 {
		t.Errorf("close reasons %v, want one %s (in use) and one %s (idle)", reasons, CloseRemoved, CloseDraining)
	}
	mu.Unlock()
	if st := p.Stats(s.addr); st.Busy != 0 || st.Idle != 0 {
		t.Errorf("after the cut: %+v", st)
	}
	// Nothing left in use: a second Cut closes nothing.
	if n := p.Cut(s.addr); n != 0 {
		t.Errorf("a second Cut closed %d", n)
	}
	p.Put(elsewhere, "")
}

// TestCapDeadlineFollowsTheMonotonicClock: the deadline CapDeadline sets
// (from another goroutine, when a client went away) is kept on the
// monotonic clock: with the wall clock stepped an hour either way
// (internal/testclock), a read still ends 100ms later, not at once or an
// hour later.
func TestCapDeadlineFollowsTheMonotonicClock(t *testing.T) {
	s := newEchoServer(t)
	p := New(Options{})
	defer p.Close()
	c := get(t, p, s.addr)
	defer p.Put(c, CloseError)
	const wait = 100 * time.Millisecond
	for _, step := range []time.Duration{time.Hour, -time.Hour} {
		c.SetTimeouts(time.Second, time.Hour, time.Time{})
		t0 := time.Now()
		c.CapDeadline(testclock.WallStepped(t, t0.Add(wait), step))
		stuck := time.AfterFunc(3*time.Second, func() { c.Close() })
		_, err := c.Reader().ReadByte()
		stuck.Stop()
		took := time.Since(t0)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || took < wait || took > 2*time.Second {
			t.Errorf("wall clock stepped %v: a read capped %v from now: %v after %v", step, wait, err, took)
		}
	}
}

// checkBooks compares what the pools count with what they hold: each
// address's idle count with its idle lists, and its list of connections
// handed out with the connections the test holds (each at its index).
func checkBooks(t *testing.T, p *Pools, held map[*Conn]bool) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := 0
	for addr, ap := range p.addrs {
		n := 0
		names := map[string]bool{}
		for _, l := range ap.idle {
			n += len(l.conns)
			if names[l.name] {
				t.Errorf("%s: two idle lists for server name %q", addr, l.name)
			}
			names[l.name] = true
		}
		if ap.nidle != n {
			t.Errorf("%s: idle count %d, idle lists hold %d", addr, ap.nidle, n)
		}
		for i, c := range ap.out {
			if c.outAt != i || c.lender != ap || !held[c] {
				t.Errorf("%s: out[%d] is %p at %d (lent by %p, held %v)", addr, i, c, c.outAt, c.lender, held[c])
			}
		}
		out += len(ap.out)
	}
	if out != len(held) {
		t.Errorf("%d connections recorded as handed out, the test holds %d", out, len(held))
	}
}

// TestPoolBookkeeping: the idle count and the list of connections handed
// out (what limits and Cut read) follow every way a connection comes and
// goes — taken and given back in any order, kept idle or closed at
// MaxIdlePerAddr, retired, swept, cut, closed idle.
func TestPoolBookkeeping(t *testing.T) {
	s, other := newEchoServer(t), newEchoServer(t)
	p := New(Options{MaxIdlePerAddr: 3})
	defer p.Close()
	held := map[*Conn]bool{}
	take := func(a netip.AddrPort) *Conn {
		c := get(t, p, a)
		held[c] = true
		checkBooks(t, p, held)
		return c
	}
	give := func(c *Conn, why string) {
		delete(held, c)
		p.Put(c, why)
		checkBooks(t, p, held)
	}
	var cs []*Conn
	for range 5 {
		cs = append(cs, take(s.addr), take(other.addr))
	}
	// Back in an order that moves the last one into every freed slot.
	for _, i := range []int{0, 9, 4, 5, 2, 7} {
		give(cs[i], "")
	}
	if st := p.Stats(s.addr); st.Idle != 3 || st.Busy != 2 {
		t.Errorf("stats %+v, want 3 idle (MaxIdlePerAddr), 2 busy", st)
	}
	give(cs[1], CloseBackend)
	cs = append(cs[:0], cs[3], cs[6], cs[8], take(s.addr), take(s.addr))
	p.Retire(s.addr)
	checkBooks(t, p, held)
	give(cs[3], "") // of a retired address: closed
	p.Sweep(time.Now().Add(time.Hour))
	checkBooks(t, p, held)
	if n := p.Cut(s.addr); n != 3 {
		t.Errorf("Cut closed %d in use, want 3", n)
	}
	give(cs[4], CloseError)
	give(cs[1], "")
	p.CloseIdle()
	checkBooks(t, p, held)
	for c := range held {
		give(c, "")
	}
	if st := p.Stats(other.addr); st.Idle != 1 || st.Busy != 0 {
		t.Errorf("stats %+v, want 1 idle (given back after CloseIdle), none busy", st)
	}
}

// Over TLS an address's idle connections are kept per server name: one
// dialled for a name is handed out again for that name only, each name's
// most recent first; the sweep keeps each name's list apart.
func TestIdleListsPerServerName(t *testing.T) {
	addr, cfg := tlsBackend(t, false)
	cfg.InsecureSkipVerify = true // (the names are the test's own)
	p := New(Options{TLS: cfg})
	defer p.Close()
	take := func(name string) *Conn {
		t.Helper()
		c, err := p.GetResendable(context.Background(), addr, name, "", time.Now().Add(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a1, a2, b1 := take("a.test"), take("a.test"), take("b.test")
	for _, c := range []*Conn{a1, b1, a2} {
		p.Put(c, "")
	}
	if got := take("b.test"); got != b1 {
		t.Fatalf("b.test got %p, want its own idle one %p", got, b1)
	} else {
		p.Put(got, "")
	}
	if got := take("a.test"); got != a2 {
		t.Fatalf("a.test got %p, want its most recent idle one %p", got, a2)
	} else {
		p.Put(got, "")
	}
	p.Sweep(time.Now()) // nothing expired: both lists kept as they are
	c := take("c.test")
	if c == a1 || c == a2 || c == b1 {
		t.Fatal("c.test was handed another name's connection")
	}
	p.Put(c, "")
	checkBooks(t, p, map[*Conn]bool{})
	if st := p.Stats(addr); st.Idle != 4 {
		t.Errorf("stats %+v, want the 4 connections idle", st)
	}
	for _, want := range []struct {
		name string
		c    *Conn
	}{{"a.test", a2}, {"a.test", a1}, {"b.test", b1}} {
		if got := take(want.name); got != want.c {
			t.Errorf("%s: got %p, want %p", want.name, got, want.c)
		}
	}
}
