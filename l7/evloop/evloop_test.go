package evloop

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/internal/testclock"
)

func newGroup(t *testing.T, n int) *Group {
	t.Helper()
	g, err := NewGroup(n, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g
}

// echo serves every connection of ln on g's loops: each a task that
// echoes what it reads.
func echo(t *testing.T, g *Group, ln net.Listener) {
	t.Helper()
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			l := g.Pick()
			c, err := l.Adopt(nc)
			if err != nil {
				t.Error(err)
				return
			}
			l.Go(func(ctx context.Context) {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if _, err := c.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			})
		}
	}()
}

func listen(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func TestEchoManyConnections(t *testing.T) {
	g := newGroup(t, 2)
	ln := listen(t)
	echo(t, g, ln)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Go(func() {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			msg := make([]byte, 100<<10) // more than a socket buffer: writes wait
			for j := range msg {
				msg[j] = byte(j)
			}
			go c.Write(msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil {
				t.Error(err)
				return
			}
			for j := range got {
				if got[j] != msg[j] {
					t.Errorf("byte %d differs", j)
					return
				}
			}
		})
	}
	wg.Wait()
}

// runTask runs fn as a task and waits for it.
func runTask(g *Group, fn func(ctx context.Context)) {
	done := make(chan struct{})
	g.Pick().Go(func(ctx context.Context) {
		defer close(done)
		fn(ctx)
	})
	<-done
}

func TestReadDeadlineAndClose(t *testing.T) {
	g := newGroup(t, 1)
	ln := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // says nothing
		}
	}()
	ap := netip.MustParseAddrPort(ln.Addr().String())
	var errs [3]error
	var took time.Duration
	runTask(g, func(ctx context.Context) {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		c, err := Dial(dctx, ap)
		if err != nil {
			errs[0] = err
			return
		}
		defer c.Close()
		// A read deadline ends a parked read.
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, errs[1] = c.Read(make([]byte, 1))
		took = time.Since(start)
		// Close from another goroutine ends a parked read.
		c.SetReadDeadline(time.Time{})
		go func() { time.Sleep(30 * time.Millisecond); c.Close() }()
		_, errs[2] = c.Read(make([]byte, 1))
	})
	if errs[0] != nil {
		t.Fatal(errs[0])
	}
	if !errors.Is(errs[1], os.ErrDeadlineExceeded) || took < 50*time.Millisecond || took > time.Second {
		t.Errorf("read with deadline: %v after %v", errs[1], took)
	}
	if !errors.Is(errs[2], net.ErrClosed) {
		t.Errorf("read closed from another goroutine: %v", errs[2])
	}
}

func TestDeadlineMovedFromAnotherGoroutine(t *testing.T) {
	g := newGroup(t, 1)
	ln := listen(t)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			time.Sleep(5 * time.Second)
		}
	}()
	ap := netip.MustParseAddrPort(ln.Addr().String())
	var err error
	var took time.Duration
	runTask(g, func(ctx context.Context) {
		var c *Conn
		c, err = Dial(ctx, ap)
		if err != nil {
			return
		}
		defer c.Close()
		go func() { time.Sleep(30 * time.Millisecond); c.SetReadDeadline(time.Unix(1, 0)) }()
		start := time.Now()
		_, err = c.Read(make([]byte, 1))
		took = time.Since(start)
	})
	if !errors.Is(err, os.ErrDeadlineExceeded) || took > 2*time.Second {
		t.Errorf("read: %v after %v", err, took)
	}
}

func TestDialRefused(t *testing.T) {
	g := newGroup(t, 1)
	ln := listen(t)
	ap := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	var err error
	runTask(g, func(ctx context.Context) {
		var c *Conn
		if c, err = Dial(ctx, ap); err == nil {
			c.Close()
		}
	})
	if err == nil {
		t.Fatal("dial to a closed port worked")
	}
}

func TestSleepAndBlock(t *testing.T) {
	g := newGroup(t, 1)
	var slept time.Duration
	var blocked bool
	var cancelled bool
	// A second task runs while the first sleeps and blocks: the loop is
	// not held.
	var order []string
	var mu sync.Mutex
	note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
	done := make(chan struct{}, 2)
	l := g.Pick()
	l.Go(func(ctx context.Context) {
		start := time.Now()
		Sleep(ctx, 40*time.Millisecond)
		slept = time.Since(start)
		ch := make(chan struct{})
		go func() { time.Sleep(20 * time.Millisecond); close(ch) }()
		Block(ctx, func() { <-ch; blocked = true })
		cctx, cancel := context.WithCancel(ctx)
		go func() { time.Sleep(10 * time.Millisecond); cancel() }()
		cancelled = !Sleep(cctx, time.Hour)
		note("first")
		done <- struct{}{}
	})
	l.Go(func(ctx context.Context) {
		note("second")
		done <- struct{}{}
	})
	<-done
	<-done
	if slept < 40*time.Millisecond || !blocked || !cancelled {
		t.Errorf("slept %v, blocked %v, cancelled %v", slept, blocked, cancelled)
	}
	if len(order) != 2 || order[0] != "second" {
		t.Errorf("order %v: the second task waited for the first", order)
	}
}

func TestTimerHeap(t *testing.T) {
	var h timerHeap
	var ts []*timer
	for _, at := range []int64{50, 10, 40, 30, 20, 60} {
		tm := &timer{at: at, idx: -1}
		ts = append(ts, tm)
		h.add(tm)
	}
	h.remove(ts[2]) // 40
	var got []int64
	for h.first() != nil {
		tm := h.first()
		got = append(got, tm.at)
		h.remove(tm)
	}
	want := []int64{10, 20, 30, 50, 60}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

// A connect the peer never answers (its accept queue full, so its SYNs
// are dropped) ends at the context's deadline, parked on the loop — the
// loop serves another task meanwhile.
func TestDialTimeout(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil { // never accepted
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
	// Fill the accept queue.
	for range 3 {
		c, err := net.DialTimeout("tcp", ap.String(), 200*time.Millisecond)
		if err != nil {
			break
		}
		defer c.Close()
	}
	g := newGroup(t, 1)
	l := g.Pick()
	var derr error
	var took time.Duration
	other := make(chan time.Time, 1)
	done := make(chan struct{})
	l.Go(func(ctx context.Context) {
		defer close(done)
		// start before the deadline is made from the clock: the
		// timeout fires at the deadline, which a start taken after it
		// would see as less than 150ms away (it did, by 0.2ms).
		start := time.Now()
		dctx, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
		defer cancel()
		c, err := Dial(dctx, ap)
		took, derr = time.Since(start), err
		if err == nil {
			c.Close()
		}
	})
	l.Go(func(context.Context) { other <- time.Now() })
	<-done
	if derr == nil {
		t.Fatal("the kernel answered a connect to a full accept queue: the test cannot make a connect that hangs")
	}
	var ne net.Error
	if !errors.As(derr, &ne) || !ne.Timeout() || took < 150*time.Millisecond || took > 2*time.Second {
		t.Fatalf("dial: %v after %v, want a timeout after 150ms", derr, took)
	}
	select {
	case <-other:
	default:
		t.Fatal("the other task did not run while the dial waited")
	}
}

// TestTaskIdentity: a task knows itself (InTask, the waits' choice
// between parking and polling) with no system call, and nobody else —
// not a goroutine it starts with its context, not another task of the
// same loop, not a goroutine on another thread — takes itself for it.
func TestTaskIdentity(t *testing.T) {
	g := newGroup(t, 2)
	type seen struct{ self, child, other, group bool }
	res := make(chan seen, 1)
	l := g.Pick()
	l.Go(func(ctx context.Context) {
		var s seen
		s.self = InTask(ctx)
		s.group = g.current() == l
		ch := make(chan bool)
		go func() { ch <- InTask(ctx) || g.current() != nil }()
		s.child = <-ch // a blocking receive on the loop's thread: fine in a test
		other := make(chan bool)
		l.Go(func(context.Context) { other <- InTask(ctx) })
		Block(ctx, func() { s.other = <-other })
		res <- s
	})
	s := <-res
	if !s.self || !s.group || s.child || s.other {
		t.Errorf("task knows itself %v (its loop %v); a goroutine it started takes itself for it %v; another task does %v",
			s.self, s.group, s.child, s.other)
	}
	if InTask(context.Background()) || g.current() != nil {
		t.Error("the test's goroutine takes itself for a task")
	}
	if getg() == 0 {
		t.Error("getg is 0")
	}
}

// Ping finds a loop whose thread a task holds (here a plain sleep, which
// parks the loop's own goroutine: nothing else of the loop runs), names
// it, and passes once the loop runs again.
func TestPingFindsStuckLoop(t *testing.T) {
	g := newGroup(t, 2)
	if err := g.Ping(time.Second); err != nil {
		t.Fatalf("idle loops: %v", err)
	}
	release := make(chan struct{})
	held := make(chan struct{})
	g.loops[1].Go(func(context.Context) {
		close(held)
		<-release // blocks the loop's thread, not only the task
	})
	<-held
	err := g.Ping(100 * time.Millisecond)
	if !errors.Is(err, ErrStuck) || !strings.Contains(err.Error(), "loop [1]") {
		t.Fatalf("Ping with loop 1 held: %v, want ErrStuck naming loop 1", err)
	}
	close(release)
	if err := g.Ping(time.Second); err != nil {
		t.Fatalf("after the loop ran again: %v", err)
	}
	g.Close()
	if err := g.Ping(time.Second); err != nil {
		t.Fatalf("closed group: %v", err)
	}
}

// TestDeadlinesFollowTheMonotonicClock: a deadline is kept by the
// monotonic clock, as Go's net package keeps it, so a step of the wall
// clock moves none. The deadlines here carry the wall reading a process
// would have recorded around a step of an hour (internal/testclock): by
// the wall clock they passed an hour ago or come in an hour, by the
// monotonic clock in 100ms — on a task's connection and on one read
// outside a task (poll(2) on the caller's thread); and Sleep, timers and
// dials run on the same clock.
func TestDeadlinesFollowTheMonotonicClock(t *testing.T) {
	g := newGroup(t, 1)
	ln := listen(t)
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // says nothing
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	ap := netip.MustParseAddrPort(ln.Addr().String())
	const wait = 100 * time.Millisecond
	for _, step := range []time.Duration{time.Hour, -time.Hour} {
		t.Run("wall "+step.String(), func(t *testing.T) {
			// read waits with c's read deadline wait from now (by the
			// monotonic clock), the wall clock stepped by step; a read
			// still parked after 3s is closed (the deadline was missed).
			read := func(c *Conn) (time.Duration, error) {
				start := time.Now()
				c.SetReadDeadline(testclock.WallStepped(t, start.Add(wait), step))
				stuck := time.AfterFunc(3*time.Second, func() { c.Close() })
				defer stuck.Stop()
				_, err := c.Read(make([]byte, 1))
				return time.Since(start), err
			}
			var inTask, outside time.Duration
			var errDial, errTask, errOutside error
			var c *Conn
			runTask(g, func(ctx context.Context) {
				dctx, cancel := context.WithDeadline(ctx, testclock.WallStepped(t, time.Now().Add(2*time.Second), step))
				defer cancel()
				if c, errDial = Dial(dctx, ap); errDial != nil {
					return
				}
				inTask, errTask = read(c)
			})
			if errDial != nil {
				t.Fatalf("dial with a deadline 2s away (wall clock stepped %v): %v", step, errDial)
			}
			defer c.Close()
			outside, errOutside = read(c)
			for _, r := range []struct {
				where string
				took  time.Duration
				err   error
			}{{"a task's read", inTask, errTask}, {"a read outside a task", outside, errOutside}} {
				if !errors.Is(r.err, os.ErrDeadlineExceeded) || r.took < wait || r.took > 2*time.Second {
					t.Errorf("%s with a deadline %v away (wall clock stepped %v): %v after %v", r.where, wait, step, r.err, r.took)
				}
			}
		})
	}
	// The loop's own clock: an epoch whose wall reading is an hour off
	// changes nothing for Sleep and timers (they never read the wall
	// clock).
	g2, err := Start(Options{Loops: 1, epoch: testclock.WallStepped(t, time.Now(), -time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g2.Close)
	var slept, fired time.Duration
	runTask(g2, func(ctx context.Context) {
		start := time.Now()
		Sleep(ctx, wait)
		slept = time.Since(start)
		done := false
		TaskFrom(ctx).l.AfterFunc(wait, func() { done = true; fired = time.Since(start) })
		for !done && time.Since(start) < 3*time.Second {
			Sleep(ctx, 10*time.Millisecond)
		}
	})
	if slept < wait || slept > 2*time.Second || fired < 2*wait || fired > 2*time.Second {
		t.Errorf("Sleep(%v) took %v; a timer %v later fired after %v in all", wait, slept, wait, fired)
	}
}

// TestTurnClock: in a task, Now is the loop's turn — it stays put while
// the task runs (one clock read serves the turn's every deadline), and it
// is read again when the loop wakes from a sleep in epoll_wait (a deadline
// set from it after an idle spell must not come that spell early); the
// connection's Now is the same in the task; outside a task both are the
// clock.
func TestTurnClock(t *testing.T) {
	g := newGroup(t, 1)
	ln := listen(t)
	peers := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			peers <- c
		}
	}()
	ap := netip.MustParseAddrPort(ln.Addr().String())
	const spin, idle = 5 * time.Millisecond, 200 * time.Millisecond
	var (
		task             *Task
		c                *Conn
		errDial, errRead error
		moved, connAt    time.Duration
		lag              time.Duration
	)
	runTask(g, func(ctx context.Context) {
		task = TaskFrom(ctx)
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if c, errDial = Dial(dctx, ap); errDial != nil {
			return
		}
		a := task.Now()
		for time.Since(a) < spin {
		}
		moved, connAt = task.Now().Sub(a), c.Now().Sub(a)
		p := <-peers
		defer p.Close()
		go func() {
			time.Sleep(idle)
			_, _ = p.Write([]byte{1})
		}()
		// The loop sleeps in epoll_wait until the byte comes.
		if _, errRead = c.Read(make([]byte, 1)); errRead != nil {
			return
		}
		lag = time.Since(task.Now())
	})
	if errDial != nil || errRead != nil {
		t.Fatalf("dial: %v, read: %v", errDial, errRead)
	}
	defer c.Close()
	if moved != 0 || connAt != 0 {
		t.Errorf("within one turn, %v of spinning later: the task's Now moved %v, the connection's is %v off it; want both 0", spin, moved, connAt)
	}
	if lag < 0 || lag > idle/2 {
		t.Errorf("after the loop slept %v for the byte, the task's Now is %v behind the clock; want it read again on waking", idle, lag)
	}
	for what, now := range map[string]time.Time{"the task's": task.Now(), "the connection's": c.Now()} {
		if d := time.Since(now); d < 0 || d > idle/2 {
			t.Errorf("outside the task, %s Now is %v off the clock", what, d)
		}
	}
}

// The loop's table of registered connections: a token finds its
// connection; once the connection leaves, the token finds nothing — not
// even when its slot is taken by the next one (an event read for the old
// one must not wake the new one's task); removing a connection that is
// not there (moved to another loop) leaves the table alone.
func TestSlotTable(t *testing.T) {
	l := &Loop{}
	a, b, c := &Conn{}, &Conn{}, &Conn{}
	ta := l.addLocked(a)
	tc := l.addLocked(c)
	if l.connLocked(ta) != a || l.connLocked(tc) != c || ta == tc || ta == evToken {
		t.Fatalf("tokens %x %x find %p %p", ta, tc, l.connLocked(ta), l.connLocked(tc))
	}
	l.removeLocked(a)
	if l.connLocked(ta) != nil || a.token.Load() != 0 {
		t.Fatal("a removed connection's token still finds it")
	}
	tb := l.addLocked(b)
	if uint32(tb) != uint32(ta) || tb == ta {
		t.Fatalf("b's token %x: want a's slot (%x) again, another generation", tb, ta)
	}
	if got := l.connLocked(ta); got != nil {
		t.Fatal("a's old token finds the connection now in its slot")
	}
	l.removeLocked(a) // not registered here any more
	if l.connLocked(tb) != b || l.connLocked(tc) != c || l.nconns != 2 {
		t.Fatalf("after removing a connection not there: b %p, c %p, %d registered", l.connLocked(tb), l.connLocked(tc), l.nconns)
	}
	if l.connLocked(slotToken(7, 1)) != nil {
		t.Fatal("a token past the table finds something")
	}
}
