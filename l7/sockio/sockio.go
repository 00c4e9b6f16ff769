// Package sockio reads and writes a TCP connection with system calls that
// bypass the Go scheduler's system-call bookkeeping.
//
// A *net.TCPConn's Read and Write enter the kernel through syscall.Syscall:
// the goroutine's processor is marked as in a system call, and when the
// call lasts longer than sysmon's 20µs tick (a write on a veth or loopback
// pair runs the receiver's network stack inside the writer's call) sysmon
// hands the processor to another thread — a futex wake-up and two context
// switches per long write. The sockets are non-blocking (Go's poller made
// them so), so a read or write never sleeps in the kernel: Conn makes the
// same calls with RawSyscall inside the connection's syscall.RawConn
// callbacks, where the runtime's poller still does the waiting (a callback
// returns false on EAGAIN, and the poller parks the goroutine until the
// socket is ready), and the connection's deadlines and Close work as they
// do for Read and Write (RawConn.Read and Write check and wait on the same
// poll descriptor).
//
// A read runs until EAGAIN before the goroutine parks, as net's own Read
// does: with the edge-triggered poller a readiness reported before the
// call is consumed by its first attempt, so the first read must never be
// skipped (see docs/l7.md, "The HTTP/1 connection loop").
package sockio

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/l7/evloop"
)

// maxRW bounds one system call, as net's own reads and writes do.
const maxRW = 1 << 30

// maxIov bounds the buffers of one writev (the kernel's UIO_MAXIOV).
const maxIov = 1024

// Conn reads and writes a TCP connection without the scheduler's
// system-call hand-off. Reads may run concurrently with writes; reads
// (and writes) among themselves are serialized, as on a net.Conn. A
// connection without a file descriptor of its own (TLS, a net.Pipe) is
// read and written through its own methods. The zero Conn is not usable:
// New or Init makes one.
type Conn struct {
	nc net.Conn
	rc syscall.RawConn // nil: nc's own methods
	ev *evloop.Conn    // nc when it is an event loop's socket

	rmu    sync.Mutex
	rp     []byte
	rn     int
	rerrno syscall.Errno
	readFn func(fd uintptr) bool

	wmu     sync.Mutex
	one     [1][]byte // Write's buffer, as Writev's
	wv      [][]byte
	wn      int64
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool
	iov     []unix.Iovec
}

// New returns a Conn over c.
func New(c net.Conn) *Conn {
	s := new(Conn)
	s.Init(c)
	return s
}

// Init makes s a Conn over c. A Conn no longer in use may be given
// another connection this way (kept in a sync.Pool, say): its callbacks
// and buffers are made once.
func (s *Conn) Init(c net.Conn) {
	s.nc, s.rc, s.ev = c, nil, nil
	var sc syscall.Conn
	switch tc := c.(type) {
	case *net.TCPConn:
		sc = tc
	case *evloop.Conn:
		// An event loop's socket: its RawConn parks the calling task
		// where the runtime's parks the goroutine.
		sc, s.ev = tc, tc
	}
	if s.ev != nil {
		s.rc = s.ev.ReadWaiter()
	} else if sc != nil {
		if rc, err := sc.SyscallConn(); err == nil {
			s.rc = rc
		}
	}
	if s.readFn == nil {
		s.readFn, s.writeFn = s.read, s.writev
	}
}

// Now is the time for the connection's deadlines: its event loop's turn
// when the caller runs on the loop (evloop's Conn.Now: no clock read),
// time.Now() otherwise.
func (s *Conn) Now() time.Time {
	if s.ev != nil {
		return s.ev.Now()
	}
	return time.Now()
}

// Raw is whether the connection is read and written with raw system
// calls (a TCP connection), not through its own methods.
func (s *Conn) Raw() bool { return s.rc != nil }

// Finish ends the stream the connection sends (shutdown SHUT_WR) with a
// raw system call, before the Close that follows: on a TCP socket whose
// receive queue is empty the kernel's work of closing it is sending the
// FIN, and over a veth that runs the peer's receive path in the caller's
// system call (~15 µs). Through net's Close, a system call that long
// lets the scheduler's monitor hand the caller's processor to another
// thread (a wake-up, context switches); here it does not. Nothing
// happens on a connection that is not a TCP socket of the runtime's.
func (s *Conn) Finish() {
	if s.rc == nil || s.ev != nil {
		return
	}
	_ = s.rc.Control(func(fd uintptr) {
		_, _, _ = unix.RawSyscall(unix.SYS_SHUTDOWN, fd, unix.SHUT_WR, 0)
	})
}

// Release forgets the connection (for a Conn kept for another one).
func (s *Conn) Release() { s.nc, s.rc, s.ev = nil, nil, nil }

// Read reads into p like net.Conn.Read: io.EOF at the end of the stream,
// a *net.OpError (Op "read") on failure, a timeout error when the read
// deadline passes.
func (s *Conn) Read(p []byte) (int, error) {
	if s.rc == nil {
		return s.nc.Read(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if len(p) > maxRW {
		p = p[:maxRW]
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	s.rp, s.rn, s.rerrno = p, 0, 0
	err := s.rc.Read(s.readFn)
	n, errno := s.rn, s.rerrno
	if s.ev != nil && n > 0 && n < len(s.rp) {
		s.ev.Drained() // the loop's next read waits for epoll first
	}
	s.rp = nil
	switch {
	case err != nil:
		return 0, s.opError("read", err)
	case errno != 0:
		return 0, s.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// read is the RawConn callback of Read: false (wait) only on EAGAIN.
func (s *Conn) read(fd uintptr) bool {
	for {
		n, _, errno := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&s.rp[0])), uintptr(len(s.rp)))
		switch errno {
		case 0:
			s.rn = int(n)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		s.rerrno = errno
		return true
	}
}

// Write writes all of p like net.Conn.Write (waiting for the socket to
// drain as needed, within the write deadline).
func (s *Conn) Write(p []byte) (int, error) {
	if s.rc == nil {
		return s.nc.Write(p)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.one[0] = p
	n, err := s.writeLocked("write", s.one[:])
	s.one[0] = nil
	return int(n), err
}

// Writev writes the buffers in order with writev, like net.Buffers'
// WriteTo on a TCP connection; it returns the bytes written. Without raw
// system calls it is net.Buffers' WriteTo, which may consume bufs'
// elements.
func (s *Conn) Writev(bufs [][]byte) (int64, error) {
	if s.rc == nil {
		nb := net.Buffers(bufs)
		return nb.WriteTo(s.nc)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.writeLocked("writev", bufs)
}

// writeLocked writes bufs under wmu; op names the call in errors.
func (s *Conn) writeLocked(op string, bufs [][]byte) (int64, error) {
	var total int64
	for _, b := range bufs {
		total += int64(len(b))
	}
	s.wv, s.wn, s.werrno = bufs, 0, 0
	var err error
	if total > 0 {
		err = s.rc.Write(s.writeFn)
	}
	n, errno := s.wn, s.werrno
	s.wv = nil
	clear(s.iov)
	switch {
	case err != nil:
		return n, s.opError(op, err)
	case errno != 0:
		return n, s.opError(op, os.NewSyscallError(op, errno))
	}
	return n, nil
}

// writev is the RawConn callback of writeLocked: it writes until all of
// wv is written (true), the socket is full (false: wait) or an error
// (true); the iovecs are built from what is left after wn bytes, each
// time.
func (s *Conn) writev(fd uintptr) bool {
	for {
		s.iov = s.iov[:0]
		skip := s.wn
		for _, b := range s.wv {
			if skip >= int64(len(b)) {
				skip -= int64(len(b))
				continue
			}
			b = b[skip:]
			skip = 0
			if len(b) > maxRW {
				b = b[:maxRW]
			}
			v := unix.Iovec{Base: &b[0]}
			v.SetLen(len(b))
			s.iov = append(s.iov, v)
			if len(s.iov) == maxIov || len(b) == maxRW {
				break
			}
		}
		if len(s.iov) == 0 {
			return true
		}
		n, _, errno := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&s.iov[0])), uintptr(len(s.iov)))
		switch errno {
		case 0:
			if n == 0 {
				s.werrno = unix.EIO // never for a TCP socket; not a busy loop
				return true
			}
			s.wn += int64(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			s.werrno = errno
			return true
		}
	}
}

// opError is err as net.Conn's Read and Write report it: a *net.OpError
// with op and the connection's addresses (RawConn's own errors say
// "raw-read" and "raw-write"; their cause — a deadline, a closed
// connection — is kept, so errors.Is and Timeout answer the same).
func (s *Conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	netw := "tcp"
	if a := s.nc.LocalAddr(); a != nil {
		netw = a.Network()
	}
	return &net.OpError{Op: op, Net: netw, Source: s.nc.LocalAddr(), Addr: s.nc.RemoteAddr(), Err: err}
}
