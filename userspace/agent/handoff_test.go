package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/syncbuf"
)

// fakeServer stands for one proxy server behind a handoffListener: it
// answers each connection with its name (one byte) and closes it. Like
// the HTTP/1 loop, once shut down it takes no connection (serve returns
// false) and closes its listener.
type fakeServer struct {
	name     byte
	hl       *handoffListener
	mu       sync.Mutex
	shutting bool
	served   atomic.Int64
	wg       sync.WaitGroup
	stopped  chan struct{}
}

func (f *fakeServer) serve(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.shutting {
		return false
	}
	f.served.Add(1)
	f.wg.Go(func() {
		_, _ = c.Write([]byte{f.name})
		c.Close()
	})
	return true
}

// run serves through Dispatch, or through Accept when accept is set (a
// TLS or h2c server: whatever Accept returns is served).
func (f *fakeServer) run(accept bool) {
	f.stopped = make(chan struct{})
	go func() {
		defer close(f.stopped)
		if !accept {
			_ = f.hl.Dispatch(f.serve)
			return
		}
		for {
			c, err := f.hl.Accept()
			if err != nil {
				return
			}
			f.served.Add(1)
			f.wg.Go(func() {
				_, _ = c.Write([]byte{f.name})
				c.Close()
			})
		}
	}()
}

// shutdown refuses connections from now on and closes the listener, under
// one lock as the HTTP/1 loop's shutdown does.
func (f *fakeServer) shutdown() {
	f.mu.Lock()
	f.shutting = true
	f.hl.Close()
	f.mu.Unlock()
	<-f.stopped
	f.wg.Wait()
}

// Connections keep being answered while the server behind the address is
// replaced again and again — Dispatch and Accept servers alike — and none
// is reset or closed unanswered: every dial reads a server's name.
func TestHandoffReplacesServersWithoutLosingConnections(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := newListenerHandoff(l, slog.New(slog.DiscardHandler))
	ran := make(chan struct{})
	go func() { h.run(ctx); close(ran) }()

	cur := &fakeServer{name: 'a', hl: h.next()}
	cur.run(false)

	stop := make(chan struct{})
	var clients sync.WaitGroup
	var answered, failed atomic.Int64
	for range 4 {
		clients.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.Dial("tcp", l.Addr().String())
				if err != nil {
					failed.Add(1)
					t.Errorf("dial: %v", err)
					return
				}
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				b, err := io.ReadAll(c)
				c.Close()
				if err != nil || len(b) != 1 {
					failed.Add(1)
					t.Errorf("connection not answered: %q, %v", b, err)
					return
				}
				answered.Add(1)
			}
		})
	}
	var all []*fakeServer
	for i := range 20 {
		time.Sleep(10 * time.Millisecond)
		// As a reload does: the successor takes the address, then the
		// old server shuts down.
		next := &fakeServer{name: 'b' + byte(i), hl: h.next()}
		next.run(i%3 == 2) // every third one an Accept server
		cur.shutdown()
		all = append(all, cur)
		cur = next
	}
	time.Sleep(10 * time.Millisecond)
	close(stop)
	clients.Wait()
	all = append(all, cur)
	cancel()
	<-ran
	cur.shutdown()

	var served int64
	for _, f := range all {
		served += f.served.Load()
	}
	if failed.Load() != 0 || answered.Load() == 0 || served != answered.Load() {
		t.Fatalf("answered %d, failed %d, served %d", answered.Load(), failed.Load(), served)
	}
	t.Logf("%d connections over %d servers", answered.Load(), len(all))
}

// A Dispatch server is given its connections on the accepting goroutine:
// serve runs before the next Accept of the socket, with nothing between
// (the handoff's goroutine is the one calling it).
func TestHandoffDispatchServesOnTheAcceptingGoroutine(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := newListenerHandoff(l, slog.New(slog.DiscardHandler))
	ran := make(chan struct{})
	go func() { h.run(ctx); close(ran) }()
	hl := h.next()
	inServe := make(chan struct{})
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- hl.Dispatch(func(c net.Conn) bool {
			inServe <- struct{}{}
			<-release // the accept loop waits for serve: no other goroutine in between
			c.Close()
			return true
		})
	}()
	for hl.serve.Load() == nil {
		time.Sleep(time.Millisecond) // Dispatch has started
	}
	for range 2 {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	<-inServe
	select {
	case <-inServe:
		t.Fatal("a second connection was dispatched while serve ran for the first")
	case <-time.After(50 * time.Millisecond):
	}
	release <- struct{}{}
	<-inServe
	release <- struct{}{}
	cancel()
	<-ran
	if err := <-done; err != net.ErrClosed {
		t.Fatalf("Dispatch returned %v, want net.ErrClosed when the handoff stops", err)
	}
}

// failingListener's Accept fails (out of file descriptors) until closed.
type failingListener struct {
	net.Listener
	accepts atomic.Int64
	closed  chan struct{}
	once    sync.Once
}

func (l *failingListener) Accept() (net.Conn, error) {
	select {
	case <-l.closed:
		return nil, net.ErrClosed
	default:
	}
	l.accepts.Add(1)
	return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
}

func (l *failingListener) Close() error { l.once.Do(func() { close(l.closed) }); return nil }

// An accept that keeps failing is retried every 10 ms and warned about at
// most every acceptWarnEvery, not on every failure.
func TestHandoffAcceptFailuresWarnedSparingly(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	fl := &failingListener{Listener: inner, closed: make(chan struct{})}
	var logged syncbuf.Buffer
	h := newListenerHandoff(fl, slog.New(slog.NewTextHandler(&logged, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.run(ctx) }()
	time.Sleep(300 * time.Millisecond)
	cancel()
	<-done
	if n := fl.accepts.Load(); n < 10 {
		t.Errorf("%d accepts in 300ms, want it retried every 10ms", n)
	}
	if n := strings.Count(logged.String(), "http listener accept"); n != 1 {
		t.Errorf("%d warnings for %d failed accepts in 300ms, want 1:\n%s", n, fl.accepts.Load(), logged.String())
	}
}
