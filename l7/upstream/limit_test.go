package upstream

import (
	"context"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// An address at MaxConnsPerAddr: a Get waits for a connection to come
// back and reuses it, or fails with ErrAddrFull at its connect deadline
// without dialling.
func TestMaxConnsPerAddr(t *testing.T) {
	s := newEchoServer(t)
	var dials atomic.Int64
	p := New(Options{MaxConnsPerAddr: 2, Dial: func(ctx context.Context, n, a string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, n, a)
	}})
	defer p.Close()
	ctx := context.Background()
	c1, err := p.Get(ctx, s.addr, "", "", time.Now().Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	c2, err := p.Get(ctx, s.addr, "", "", time.Now().Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if _, err := p.Get(ctx, s.addr, "", "", time.Now().Add(200*time.Millisecond)); !errors.Is(err, ErrAddrFull) {
		t.Fatalf("third Get at the limit: %v, want ErrAddrFull", err)
	}
	if d := time.Since(t0); d < 150*time.Millisecond {
		t.Errorf("ErrAddrFull after %s, want at the connect deadline", d)
	}
	got := make(chan *Conn, 1)
	go func() {
		c, err := p.Get(ctx, s.addr, "", "", time.Now().Add(5*time.Second))
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	time.Sleep(50 * time.Millisecond)
	p.Put(c1, "") // back to the pool: the waiting Get takes it
	c3 := <-got
	if c3 != c1 {
		t.Error("the waiting Get did not reuse the connection given back")
	}
	if n := dials.Load(); n != 2 {
		t.Errorf("%d dials, want 2", n)
	}
	p.Put(c2, CloseError)
	p.Put(c3, "")
	if st := p.Stats(s.addr); st.Busy != 0 || st.Idle != 1 {
		t.Errorf("stats %+v", st)
	}
}

// Concurrent dials to one address are bounded by MaxDialsPerAddr.
func TestMaxDialsPerAddr(t *testing.T) {
	s := newEchoServer(t)
	var inflight, peak atomic.Int64
	release := make(chan struct{})
	p := New(Options{MaxDialsPerAddr: 3, Dial: func(ctx context.Context, n, a string) (net.Conn, error) {
		v := inflight.Add(1)
		for {
			m := peak.Load()
			if v <= m || peak.CompareAndSwap(m, v) {
				break
			}
		}
		<-release
		defer inflight.Add(-1)
		var d net.Dialer
		return d.DialContext(ctx, n, a)
	}})
	defer p.Close()
	errs := make(chan error, 10)
	for range 10 {
		go func() {
			c, err := p.Get(context.Background(), s.addr, "", "", time.Now().Add(5*time.Second))
			if err == nil {
				p.Put(c, CloseError)
			}
			errs <- err
		}()
	}
	time.Sleep(100 * time.Millisecond)
	close(release)
	for range 10 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if peak.Load() > 3 {
		t.Errorf("%d dials at once, want at most 3", peak.Load())
	}
}

// A host out of local ports (a dial failing with EADDRNOTAVAIL) while
// connections to the address are in use: a Get waits for one of them to
// come back and takes it; without any in use, or when none comes back by
// the connect deadline, it fails with the dial's error (LocalFailure).
func TestOutOfPortsWaitsForAConnection(t *testing.T) {
	s := newEchoServer(t)
	var exhausted atomic.Bool
	p := New(Options{Dial: func(ctx context.Context, n, a string) (net.Conn, error) {
		if exhausted.Load() {
			return nil, &net.OpError{Op: "dial", Net: n, Err: os.NewSyscallError("connect", syscall.EADDRNOTAVAIL)}
		}
		var d net.Dialer
		return d.DialContext(ctx, n, a)
	}})
	defer p.Close()
	ctx := context.Background()
	c1, err := p.Get(ctx, s.addr, "", "", time.Now().Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	exhausted.Store(true)
	got := make(chan *Conn, 1)
	go func() {
		c, err := p.Get(ctx, s.addr, "", "", time.Now().Add(5*time.Second))
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	time.Sleep(50 * time.Millisecond)
	p.Put(c1, "")
	if c := <-got; c != c1 {
		t.Fatal("the waiting Get did not take the connection given back")
	}
	// In use, and nothing given back by the deadline: the dial's error.
	t0 := time.Now()
	if _, err := p.Get(ctx, s.addr, "", "", time.Now().Add(200*time.Millisecond)); !LocalFailure(err) {
		t.Fatalf("Get with none given back: %v, want the dial's EADDRNOTAVAIL", err)
	}
	if d := time.Since(t0); d < 150*time.Millisecond {
		t.Errorf("failed after %s, want at the connect deadline", d)
	}
	// None in use: nothing to wait for.
	p.Put(c1, CloseError)
	t0 = time.Now()
	if _, err := p.Get(ctx, s.addr, "", "", time.Now().Add(5*time.Second)); !LocalFailure(err) {
		t.Fatalf("Get with none in use: %v, want EADDRNOTAVAIL", err)
	}
	if d := time.Since(t0); d > time.Second {
		t.Errorf("failed after %s with nothing in use to wait for, want at once", d)
	}
}
