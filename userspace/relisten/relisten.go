// Package relisten keeps a TCP listener listening when the kernel closes
// its socket under the server.
//
// `ss -K` (SOCK_DESTROY) with a filter broad enough to take in a listener
// (`ss -K sport = :443`, meant for the connections of a port) closes the
// listening socket in the kernel: the process still holds the descriptor
// and its port, every accept fails with EINVAL from then on, and new
// connections are refused, for good. A server that stops at that error,
// or retries it, is down until it is restarted. listen(2) again on the
// same descriptor is no cure: the socket keeps the shutdown of its close,
// and every connection it accepts reads end-of-file at once (tested). A
// Listener opens a new socket on the same address instead, and closes the
// dead one.
package relisten

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
)

// Listener is a net.Listener whose Accept replaces a socket the kernel
// closed with a new one on the same address, and goes on accepting.
type Listener struct {
	lc   net.ListenConfig
	addr string
	// onRevive is told of each replacement (err: the accept's error).
	onRevive func(err error)

	mu     sync.Mutex
	cur    net.Listener
	closed bool
}

// New wraps l, which lc opened; onRevive (may be nil) is told each time a
// new socket replaces a closed one. A listener that is not TCP, or has no
// port of its own (bound to port 0), is returned as it is.
func New(l net.Listener, lc net.ListenConfig, onRevive func(err error)) net.Listener {
	a, ok := l.Addr().(*net.TCPAddr)
	if _, tcp := l.(*net.TCPListener); !tcp || !ok || a.Port == 0 {
		return l
	}
	return &Listener{lc: lc, addr: a.String(), onRevive: onRevive, cur: l}
}

func (l *Listener) current() (net.Listener, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cur, l.closed
}

// Accept implements net.Listener. A socket that stopped listening (EINVAL)
// is replaced once per call; an error after that is returned.
func (l *Listener) Accept() (net.Conn, error) {
	cur, _ := l.current()
	c, err := cur.Accept()
	if err == nil || !Dead(err) {
		return c, err
	}
	next, rerr := l.replace(cur)
	if rerr != nil {
		return nil, fmt.Errorf("%w (listening again: %v)", err, rerr)
	}
	if l.onRevive != nil {
		l.onRevive(err)
	}
	return next.Accept()
}

// replace opens a new socket on the address in place of dead.
func (l *Listener) replace(dead net.Listener) (net.Listener, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, net.ErrClosed
	}
	if l.cur != dead {
		return l.cur, nil // replaced meanwhile
	}
	// The dead socket still holds the port; a listener's SO_REUSEADDR
	// lets a new one bind next to a socket that is not listening. If
	// the kernel refuses, the dead one is closed first.
	next, err := l.lc.Listen(context.Background(), "tcp", l.addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		_ = dead.Close()
		next, err = l.lc.Listen(context.Background(), "tcp", l.addr)
	}
	if err != nil {
		return nil, err
	}
	_ = dead.Close()
	l.cur = next
	return next, nil
}

// Close implements net.Listener.
func (l *Listener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	return l.cur.Close()
}

// Addr implements net.Listener.
func (l *Listener) Addr() net.Addr {
	cur, _ := l.current()
	return cur.Addr()
}

// Dead is whether err, from an accept, says the socket is no longer
// listening.
func Dead(err error) bool { return errors.Is(err, syscall.EINVAL) }
