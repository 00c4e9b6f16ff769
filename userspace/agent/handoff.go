package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicelb/sluice/l7/proxy"
	"github.com/sluicelb/sluice/userspace/logthrottle"
)

// listenerHandoff accepts on the socket of one http service and hands each
// connection to the server currently serving it. A server replaced on
// reload (new client limits, upstream settings, h2c) gives the address to
// its successor this way: no connection is refused or reset in between,
// which two sockets on one address (SO_REUSEPORT) cannot promise when the
// old one closes with connections in its queue.
//
// A server that takes its connections through Dispatch (the HTTP/1 loop:
// proxy.Dispatcher) is given each one on the accepting goroutine, which
// starts the connection's own goroutine there and then; one that calls
// Accept (TLS, h2c: net/http's server) receives it through a channel, a
// hand-over between two goroutines per connection.
type listenerHandoff struct {
	l   net.Listener
	log *slog.Logger

	mu  sync.Mutex
	cur *handoffListener
}

// acceptWarnEvery spaces the warnings of a failing accept.
const acceptWarnEvery = 10 * time.Second

// newListenerHandoff starts accepting on l until ctx ends or close is
// called; run must be started by the caller (it returns then).
func newListenerHandoff(l net.Listener, log *slog.Logger) *listenerHandoff {
	return &listenerHandoff{l: l, log: log}
}

// next returns the listener of the next server; the previous one gets no
// connection from now on (its server is shut down by its owner).
func (h *listenerHandoff) next() *handoffListener {
	hl := &handoffListener{h: h, conns: make(chan net.Conn), done: make(chan struct{})}
	h.mu.Lock()
	h.cur = hl
	h.mu.Unlock()
	return hl
}

func (h *listenerHandoff) current() *handoffListener {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cur
}

// close closes the socket: run returns, the current server's Accept fails.
func (h *listenerHandoff) close() {
	_ = h.l.Close()
}

// run accepts until the socket is closed (by close, or when ctx ends).
func (h *listenerHandoff) run(ctx context.Context) {
	stop := context.AfterFunc(ctx, h.close)
	defer stop()
	defer func() {
		if hl := h.current(); hl != nil {
			hl.Close()
		}
	}()
	warn := logthrottle.New(h.log, acceptWarnEvery)
	for {
		c, err := h.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: try again soon. The
			// warning at most every acceptWarnEvery, with a count (a
			// hundred lines a second would flood the log of a machine
			// already in trouble).
			warn.Note("", 1, "http listener accept", "listen", h.l.Addr().String(), "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		h.deliver(c)
	}
}

// deliver gives c to the current server, or to its successor when it is
// being replaced meanwhile.
func (h *listenerHandoff) deliver(c net.Conn) {
	for {
		hl := h.current()
		if hl == nil {
			c.Close()
			return
		}
		if serve := hl.serve.Load(); serve != nil {
			if (*serve)(c) {
				return
			}
			// That server is shutting down: its listener closes next
			// (after a reload, its successor is current already).
			<-hl.done
		} else {
			select {
			case hl.conns <- c:
				return
			case <-hl.done:
			}
		}
		if h.current() == hl {
			c.Close() // stopped for good
			return
		}
	}
}

// handoffListener is one server's view of a listenerHandoff.
type handoffListener struct {
	h     *listenerHandoff
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	// serve is the server's function while it dispatches (Dispatch).
	serve atomic.Pointer[func(net.Conn) bool]
}

var (
	_ net.Listener     = (*handoffListener)(nil)
	_ proxy.Dispatcher = (*handoffListener)(nil)
)

// Dispatch implements proxy.Dispatcher: from now on deliver calls serve
// on the accepting goroutine, until the listener is closed.
func (hl *handoffListener) Dispatch(serve func(net.Conn) bool) error {
	hl.serve.Store(&serve)
	defer hl.serve.Store(nil)
	for {
		// A connection deliver sent before serve was stored.
		select {
		case c := <-hl.conns:
			if !serve(c) {
				go hl.h.deliver(c)
			}
		case <-hl.done:
			return net.ErrClosed
		}
	}
}

// Accept implements net.Listener.
func (hl *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-hl.conns:
		return c, nil
	case <-hl.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener: this server gets no more connections; the
// socket stays open for the next one.
func (hl *handoffListener) Close() error {
	hl.once.Do(func() { close(hl.done) })
	return nil
}

// Addr implements net.Listener.
func (hl *handoffListener) Addr() net.Addr { return hl.h.l.Addr() }
