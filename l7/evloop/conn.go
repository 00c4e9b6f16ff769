package evloop

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is a TCP connection served by a loop: a non-blocking socket in the
// loop's epoll set (edge-triggered), never in the Go runtime's poller. It
// is a net.Conn; its SyscallConn gives raw reads and writes whose waits
// park the calling task (l7/sockio uses them). One reader and one writer
// at a time, as on any net.Conn used by a request loop.
type Conn struct {
	token        atomic.Uint64 // its epoll token in the loop it is registered with (0: none)
	fd           int
	g            *Group
	loop         atomic.Pointer[Loop]
	laddr, raddr net.Addr

	rdl, wdl atomic.Int64 // deadlines on the group's clock (0: none)
	// state counts the calls using fd, with closedBit once Close ran: the
	// last of them closes fd (never while a call may use the number).
	state   atomic.Int64
	waiting atomic.Int32 // tasks parked on the connection

	// rwait and wwait are the tasks parked reading and writing: set and
	// read on the loop's thread only.
	rwait, wwait *Task
	// readable is false when a read found the socket empty (EAGAIN, or
	// less than it asked for: Drained) and epoll has not said since that
	// more arrived: a read then waits at once instead of trying first (a
	// system call per wait saved). True until known otherwise.
	readable atomic.Bool
	// hup: epoll said the peer closed or the socket failed; a short read
	// may then leave the end of the stream (or the error) to read, with
	// no edge to come: readable stays true.
	hup   atomic.Bool
	watch func()
}

const closedBit = int64(1) << 62

const (
	modeRead = iota
	modeWrite
)

// Adopt takes nc's socket (a TCP connection of the net package) out of the
// Go runtime's poller into l's epoll set: the returned Conn owns a
// duplicate of its descriptor and nc is closed.
func (l *Loop) Adopt(nc net.Conn) (*Conn, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("adopt %T: no file descriptor", nc)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("adopt: %w", err)
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, fmt.Errorf("adopt: %w", err)
	}
	if derr != nil {
		return nil, fmt.Errorf("adopt: dup: %w", derr)
	}
	c := &Conn{fd: nfd, g: l.g, laddr: nc.LocalAddr(), raddr: nc.RemoteAddr()}
	c.readable.Store(true)
	c.loop.Store(l)
	if err := l.register(c); err != nil {
		unix.Close(nfd)
		return nil, err // nc untouched
	}
	// The duplicate shares the open file (and its O_NONBLOCK); closing nc
	// takes its descriptor out of the runtime's poller.
	_ = nc.Close()
	return c, nil
}

// Dial connects to addr from a task (ctx is the task's, or derived from
// it); its deadline bounds the connect. TCP_NODELAY and keep-alive are set
// as the net package's dialer sets them.
func Dial(ctx context.Context, addr netip.AddrPort) (*Conn, error) {
	t := TaskFrom(ctx)
	if !t.current() {
		return nil, errors.New("evloop: Dial outside a task")
	}
	l := t.l
	family := unix.AF_INET
	var sa unix.Sockaddr
	if addr.Addr().Is4() || addr.Addr().Is4In6() {
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().Unmap().As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, dialErr(addr, os.NewSyscallError("socket", err))
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 15)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 15)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 9)
	c := &Conn{fd: fd, g: l.g, raddr: net.TCPAddrFromAddrPort(addr)}
	c.readable.Store(true)
	c.loop.Store(l)
	if dl, ok := ctx.Deadline(); ok {
		c.wdl.Store(l.g.at(dl))
	}
	if err := l.register(c); err != nil {
		unix.Close(fd)
		return nil, dialErr(addr, err)
	}
	err = unix.Connect(fd, sa)
	for err == unix.EINTR {
		err = unix.Connect(fd, sa)
	}
	switch err {
	case nil, unix.EISCONN:
	case unix.EINPROGRESS, unix.EALREADY:
		err = c.waitConnect()
	default:
		err = os.NewSyscallError("connect", err)
	}
	if err != nil {
		c.Close()
		return nil, dialErr(addr, err)
	}
	c.wdl.Store(0)
	if lsa, err := unix.Getsockname(fd); err == nil {
		c.laddr = sockaddrTCP(lsa)
	}
	return c, nil
}

// waitConnect waits for a connect in progress to end.
func (c *Conn) waitConnect() error {
	if !c.incref() {
		return net.ErrClosed
	}
	defer c.decref()
	for {
		if dl := c.deadline(modeWrite); dl != 0 && c.g.turnNow(c.loop.Load()) >= dl {
			return os.ErrDeadlineExceeded
		}
		if err := c.wait(modeWrite); err != nil {
			return err
		}
		v, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return os.NewSyscallError("getsockopt", err)
		}
		switch e := syscall.Errno(v); e {
		case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			continue
		case 0, unix.EISCONN:
			if _, err := unix.Getpeername(c.fd); err == nil {
				return nil
			}
			continue // not connected yet: a spurious wake
		default:
			return os.NewSyscallError("connect", e)
		}
	}
}

func dialErr(addr netip.AddrPort, err error) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: err}
}

func sockaddrTCP(sa unix.Sockaddr) net.Addr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	}
	return nil
}

func (c *Conn) incref() bool {
	for {
		v := c.state.Load()
		if v&closedBit != 0 {
			return false
		}
		if c.state.CompareAndSwap(v, v+1) {
			return true
		}
	}
}

func (c *Conn) decref() {
	if c.state.Add(-1) == closedBit {
		c.destroy()
	}
}

// destroy closes the descriptor (once: the last user after Close).
func (c *Conn) destroy() {
	c.loop.Load().forget(c)
	unix.Close(c.fd)
}

// Close closes the connection: parked reads and writes return at once
// with net.ErrClosed, and the descriptor is closed when the last call
// using it returns.
func (c *Conn) Close() error {
	for {
		v := c.state.Load()
		if v&closedBit != 0 {
			return c.opErr("close", net.ErrClosed)
		}
		if c.state.CompareAndSwap(v, v|closedBit) {
			if v == 0 {
				c.destroy()
			} else {
				c.poke()
			}
			return nil
		}
	}
}

// CloseWrite shuts the sending side down (a FIN).
func (c *Conn) CloseWrite() error {
	if !c.incref() {
		return c.opErr("close", net.ErrClosed)
	}
	defer c.decref()
	if err := unix.Shutdown(c.fd, unix.SHUT_WR); err != nil {
		return c.opErr("close", os.NewSyscallError("shutdown", err))
	}
	return nil
}

// poke wakes the tasks parked on c (a deadline moved, c closed) from any
// goroutine; they look again.
func (c *Conn) poke() {
	if c.waiting.Load() == 0 {
		return
	}
	l := c.loop.Load()
	l.post(func() {
		if c.loop.Load() != l {
			return
		}
		for _, t := range [2]*Task{c.rwait, c.wwait} {
			if t != nil && t.parked && !t.done {
				l.resume(t)
			}
		}
	})
}

func (c *Conn) deadline(mode int) int64 {
	if mode == modeRead {
		return c.rdl.Load()
	}
	return c.wdl.Load()
}

// rw runs f (a raw read or write on the descriptor, false on EAGAIN)
// until it is done, waiting for the socket between tries, within the
// deadline of mode. lazy: a read known to find nothing (readable false)
// waits before it tries — only for an f that is a read which would wait
// anyway (not a peek that must run now).
func (c *Conn) rw(mode int, f func(fd uintptr) bool, lazy bool) error {
	if !c.incref() {
		return net.ErrClosed
	}
	defer c.decref()
	for {
		if dl := c.deadline(mode); dl != 0 && c.g.turnNow(c.loop.Load()) >= dl {
			return os.ErrDeadlineExceeded
		}
		if mode == modeWrite {
			raceReleaseMerge()
		} else if lazy && !c.readable.Load() {
			// Empty when last read, and nothing arrived since.
			if err := c.wait(mode); err != nil {
				return err
			}
			continue
		}
		if f(uintptr(c.fd)) {
			if mode == modeRead {
				raceAcquire()
			}
			return nil
		}
		if mode == modeRead {
			c.readable.Store(false) // EAGAIN
		}
		if err := c.wait(mode); err != nil {
			return err
		}
	}
}

// wait waits until the socket may be ready for mode (or the deadline
// passes, or c is closed: the caller looks again). A task of c's loop (or
// of another loop of the group: c moves to it) parks; any other goroutine
// polls.
func (c *Conn) wait(mode int) error {
	if c.state.Load()&closedBit != 0 {
		return net.ErrClosed
	}
	l := c.loop.Load()
	cur := c.g.currentFrom(l)
	if cur == nil || cur.running == nil {
		return c.pollWait(mode)
	}
	if cur != l {
		if c.waiting.Load() != 0 {
			return c.pollWait(mode) // another loop's task waits on it too
		}
		l.unregister(c)
		c.loop.Store(cur)
		if err := cur.register(c); err != nil {
			return err
		}
		l = cur
	}
	t := l.running
	if mode == modeRead {
		c.rwait = t
	} else {
		c.wwait = t
	}
	c.waiting.Add(1)
	// After waiting is counted: a deadline moved from now on pokes us.
	t.park(c.deadline(mode))
	c.waiting.Add(-1)
	if mode == modeRead {
		c.rwait = nil
	} else {
		c.wwait = nil
	}
	if c.state.Load()&closedBit != 0 {
		return net.ErrClosed
	}
	return nil
}

// pollWait waits with poll(2) on the caller's thread (not a task): at most
// 20ms at a time, so a Close or a moved deadline is seen soon.
func (c *Conn) pollWait(mode int) error {
	ev := int16(unix.POLLIN)
	if mode == modeWrite {
		ev = unix.POLLOUT
	}
	for {
		if c.state.Load()&closedBit != 0 {
			return net.ErrClosed
		}
		ms := 20
		if dl := c.deadline(mode); dl != 0 {
			left := dl - c.g.now()
			if left <= 0 {
				return os.ErrDeadlineExceeded
			}
			ms = int(min(int64(ms), (left+int64(time.Millisecond)-1)/int64(time.Millisecond)))
		}
		fds := []unix.PollFd{{Fd: int32(c.fd), Events: ev}}
		n, err := unix.Poll(fds, ms)
		if err != nil && err != unix.EINTR {
			return os.NewSyscallError("poll", err)
		}
		if n > 0 {
			if mode == modeRead {
				c.readable.Store(true)
			}
			return nil
		}
	}
}

// current is the loop whose running task the caller is (nil: none). It
// asks no system call: it runs on every wait of a task.
func (g *Group) current() *Loop { return g.currentFrom(nil) }

// currentFrom is current, looking at hint first: a connection's own loop
// is nearly always the caller's, and reading another loop's runningG
// (written on its CPU at every resume) moves that cache line over.
func (g *Group) currentFrom(hint *Loop) *Loop {
	me := getg()
	if hint != nil && hint.runningG.Load() == me {
		return hint
	}
	for _, l := range g.loops {
		if l != hint && l.runningG.Load() == me {
			return l
		}
	}
	return nil
}

// Drained notes that a read got less than it asked for: the socket's
// receive queue was empty after it, so the next read waits for epoll to
// say more arrived (a TCP socket's read returns less only then).
func (c *Conn) Drained() {
	if !c.hup.Load() {
		c.readable.Store(false)
	}
}

// Watch makes the loop call fn, on its thread, when the connection
// becomes readable while no task reads it (a client that sends more, or
// goes away, while its request is with a backend) — at once if it did
// since the last read found it empty. Only the task serving c may call it.
// Unwatch ends it.
func (c *Conn) Watch(fn func()) {
	c.watch = fn
	if c.readable.Load() {
		fn()
	}
}

// Unwatch ends Watch.
func (c *Conn) Unwatch() { c.watch = nil }

// Read1 reads one byte without waiting: n is 1 with b, 0 with err io.EOF
// at the end of the stream, or 0 and nil when nothing is there (for a
// watch).
func (c *Conn) Read1() (b byte, n int, err error) {
	if !c.incref() {
		return 0, 0, net.ErrClosed
	}
	defer c.decref()
	var buf [1]byte
	r, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(c.fd), uintptr(unsafe.Pointer(&buf[0])), 1)
	switch {
	case errno == unix.EAGAIN:
		c.readable.Store(false)
		return 0, 0, nil
	case errno != 0:
		return 0, 0, os.NewSyscallError("read", errno)
	case r == 0:
		return 0, 0, io.EOF
	}
	return buf[0], 1, nil
}

// Read reads like a net.Conn's Read.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := c.rw(modeRead, func(fd uintptr) bool {
		for {
			r, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case 0:
				n = int(r)
				if n > 0 && n < len(p) {
					c.Drained()
				}
				return true
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false
			}
			errno = e
			return true
		}
	}, true)
	switch {
	case err != nil:
		return 0, c.opErr("read", err)
	case errno != 0:
		return 0, c.opErr("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p like a net.Conn's Write.
func (c *Conn) Write(p []byte) (int, error) {
	var n int
	var errno syscall.Errno
	if len(p) == 0 {
		return 0, nil
	}
	err := c.rw(modeWrite, func(fd uintptr) bool {
		for n < len(p) {
			r, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[n])), uintptr(len(p)-n))
			switch e {
			case 0:
				n += int(r)
			case unix.EINTR:
			case unix.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
		return true
	}, false)
	switch {
	case err != nil:
		return n, c.opErr("write", err)
	case errno != 0:
		return n, c.opErr("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

func (c *Conn) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.laddr, Addr: c.raddr, Err: err}
}

// Loop is the loop the connection's socket is registered with now.
func (c *Conn) Loop() *Loop { return c.loop.Load() }

// LocalAddr is the connection's local address.
func (c *Conn) LocalAddr() net.Addr { return c.laddr }

// RemoteAddr is the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.raddr }

// SetDeadline sets both deadlines (from any goroutine).
func (c *Conn) SetDeadline(t time.Time) error {
	c.rdl.Store(c.g.at(t))
	c.wdl.Store(c.g.at(t))
	c.poke()
	return nil
}

// SetReadDeadline sets the read deadline (from any goroutine).
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.rdl.Store(c.g.at(t))
	c.poke()
	return nil
}

// SetWriteDeadline sets the write deadline (from any goroutine).
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.wdl.Store(c.g.at(t))
	c.poke()
	return nil
}

// SyscallConn gives raw access to the socket: Read and Write callbacks
// return false on EAGAIN and the call waits (parking a task) for the
// socket, within the connection's deadlines.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return rawConn{c: c}, nil }

// ReadWaiter is SyscallConn for a caller whose Read callbacks are reads
// that would wait when they find nothing (l7/sockio): a read the loop
// knows would find the socket empty waits without trying first.
func (c *Conn) ReadWaiter() syscall.RawConn { return rawConn{c: c, lazy: true} }

type rawConn struct {
	c    *Conn
	lazy bool
}

func (r rawConn) Control(f func(fd uintptr)) error {
	if !r.c.incref() {
		return net.ErrClosed
	}
	defer r.c.decref()
	f(uintptr(r.c.fd))
	return nil
}

func (r rawConn) Read(f func(fd uintptr) bool) error  { return r.c.rw(modeRead, f, r.lazy) }
func (r rawConn) Write(f func(fd uintptr) bool) error { return r.c.rw(modeWrite, f, false) }
