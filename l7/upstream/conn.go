package upstream

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/l7/evloop"
	"github.com/sluicelb/sluice/l7/sockio"
)

// Conn is one connection to a backend address. It is used by one request
// at a time, between Pools.Get and Pools.Put.
type Conn struct {
	pools *Pools
	nc    net.Conn // what requests are written to (TLS or TCP)
	raw   net.Conn // the TCP connection, for liveness checks
	// sock reads and writes nc: outside the scheduler's system-call
	// hand-off when nc is the TCP connection itself (no TLS).
	sock       *sockio.Conn
	addr       netip.AddrPort
	serverName string
	info       string
	gen        uint64
	dialled    time.Time
	idleSince  time.Time
	reused     bool
	requests   int
	// lender is the address pool that handed c out and outAt c's index in
	// its out list (-1: not out); both guarded by Pools.mu.
	lender *addrPool
	outAt  int

	written atomic.Int64
	read    atomic.Int64

	// per-phase deadlines, set by SetTimeouts
	writeTimeout, readTimeout time.Duration
	deadline                  time.Time
	// capAt (nanoseconds after dialled on the monotonic clock, which a
	// step of the wall clock does not move; 0: none) is a deadline set
	// from another goroutine (CapDeadline) that no later read or write
	// goes past.
	capAt atomic.Int64
	// readLimit, when positive, is the byte count past which reads fail
	// (a response header that never ends).
	readLimit int64
	// watchAnswer: writes that wait look, every AnswerProbe, whether the
	// backend has answered already (WatchAnswer).
	watchAnswer bool
	// under is what the TLS layer runs on (nil: plain text), probeUntil
	// the read deadline of a look at what a TLS backend sent (answeredTLS;
	// zero otherwise).
	under      *tlsUnder
	probeUntil time.Time

	// rdl and wdl are the read and write deadlines last set on nc (zero:
	// none); a deadline is set again only when it must move (see needSet).
	rdl, wdl time.Time
	// rawc is raw's syscall.RawConn (nil when raw has none), for alive,
	// with the peek it runs (made once, not per check) and its result.
	rawc   syscall.RawConn
	peekFn func(fd uintptr) bool
	peekOK bool
	// peekNext: the next Get peeks whatever the connection's idle time
	// (PeekNext).
	peekNext bool

	br *bufio.Reader
	bw *bufio.Writer
	// ev is raw when an event loop dialled it (its loop: Pools.Get's
	// affinity).
	ev *evloop.Conn

	closeOnce sync.Once
	// cut: closed by Cut, its address removed while it was in use.
	cut atomic.Bool
}

func newConn(p *Pools, nc, raw net.Conn, addr netip.AddrPort, serverName, info string, gen uint64) *Conn {
	c := &Conn{pools: p, addr: addr, serverName: serverName, info: info, gen: gen, dialled: time.Now(), outAt: -1}
	c.setSocket(nc, raw)
	if tc, ok := nc.(*tls.Conn); ok {
		c.under, _ = tc.NetConn().(*tlsUnder)
	}
	c.br = bufio.NewReaderSize(phaseReader{c}, 16<<10)
	c.bw = bufio.NewWriterSize(phaseWriter{c}, 16<<10)
	return c
}

// setSocket makes nc (over raw) the connection's socket.
func (c *Conn) setSocket(nc, raw net.Conn) {
	c.nc, c.raw = nc, raw
	c.sock = sockio.New(nc)
	c.ev, _ = raw.(*evloop.Conn)
	c.rawc, c.peekFn = nil, nil
	if sc, ok := raw.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			c.rawc = rc
			c.peekFn = c.peek
		}
	}
	c.rdl, c.wdl = time.Time{}, time.Time{} // none on the new socket yet
}

// moveTo makes an idle plain-text connection of the runtime's poller one
// of loop l (an event loop's task took it from the pool: see pickIdle);
// what it has buffered stays. On failure the connection is unusable.
func (c *Conn) moveTo(l *evloop.Loop) error {
	if c.nc != c.raw || c.ev != nil {
		return fmt.Errorf("move %v to an event loop: not a plain socket of the runtime's poller", c.addr)
	}
	ec, err := l.Adopt(c.raw)
	if err != nil {
		return fmt.Errorf("move %v to an event loop: %w", c.addr, err)
	}
	c.setSocket(ec, ec)
	return nil
}

// Addr is the backend address.
func (c *Conn) Addr() netip.AddrPort { return c.addr }

// Info is the DNS answer (or origin) the address had when this connection was dialled.
func (c *Conn) Info() string { return c.info }

// Reused is whether the connection served an earlier request.
func (c *Conn) Reused() bool { return c.reused }

// Requests is the number of requests this connection has carried, this one included.
func (c *Conn) Requests() int { return c.requests }

// Dialled is when the connection was made.
func (c *Conn) Dialled() time.Time { return c.dialled }

// Written is the number of bytes the connection accepted so far.
func (c *Conn) Written() int64 { return c.written.Load() }

// ReadBytes is the number of bytes read from the backend so far.
func (c *Conn) ReadBytes() int64 { return c.read.Load() }

// Reader is the buffered reader of the connection; every read waits at most
// the read timeout and never past the deadline.
func (c *Conn) Reader() *bufio.Reader { return c.br }

// Writer is the buffered writer of the connection; every write waits at
// most the write timeout and never past the deadline.
func (c *Conn) Writer() *bufio.Writer { return c.bw }

// Read reads from the connection, starting with what its buffered reader
// holds (for a connection taken over after a protocol upgrade).
func (c *Conn) Read(b []byte) (int, error) { return c.br.Read(b) }

// Write writes to the connection without buffering, after what the
// buffered writer holds.
func (c *Conn) Write(b []byte) (int, error) {
	if c.bw.Buffered() > 0 {
		if err := c.bw.Flush(); err != nil {
			return 0, err
		}
	}
	return phaseWriter{c}.Write(b)
}

// CloseWrite half-closes the connection (TCP FIN, or TLS close_notify).
func (c *Conn) CloseWrite() error {
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// SetTimeouts sets the per-write and per-read timeouts and the overall
// deadline for the next reads and writes (zero: none).
func (c *Conn) SetTimeouts(write, read time.Duration, deadline time.Time) {
	c.writeTimeout, c.readTimeout, c.deadline = write, read, deadline
}

// CapDeadline makes every read and write of the exchange in progress end
// by t at the latest, from any goroutine: the proxy uses it when the
// client goes away after the request was sent, to give the response a
// moment to arrive (so the connection can be reused) instead of closing
// the connection at once. It lasts until the connection is given back.
func (c *Conn) CapDeadline(t time.Time) {
	c.capAt.Store(max(int64(t.Sub(c.dialled)), 1))
	_ = c.nc.SetDeadline(t)
}

// capped is the deadline CapDeadline set (zero: none).
func (c *Conn) capped() time.Time {
	if ns := c.capAt.Load(); ns != 0 {
		return c.dialled.Add(time.Duration(ns))
	}
	return time.Time{}
}

// Close closes the connection now, e.g. to interrupt a blocked read. Put
// it afterwards anyway, so the pool's counts stay right.
func (c *Conn) Close() error { c.close(); return nil }

// Removed is whether the connection was cut because its address was
// removed while it was in use (Pools.Cut): why its exchange failed.
func (c *Conn) Removed() bool { return c.cut.Load() }

func (c *Conn) close() {
	c.closeOnce.Do(func() {
		if c.under != nil {
			c.under.closing.Store(true)
		}
		_ = c.nc.Close()
	})
}

// ErrTooLarge is returned by reads past the limit set by LimitReads.
var ErrTooLarge = errors.New("upstream response header too large")

// LimitReads makes reads fail with ErrTooLarge once n more bytes have been
// read from the connection (n <= 0: no limit). The proxy bounds a
// response header this way.
func (c *Conn) LimitReads(n int64) {
	if n <= 0 {
		c.readLimit = 0
		return
	}
	c.readLimit = c.read.Load() + n
}

// clearDeadlines forgets the timeouts of the last exchange. The deadlines
// set on the socket stay (nobody reads or writes an idle connection); the
// next exchange moves them, and alive lifts an expired read deadline.
func (c *Conn) clearDeadlines() {
	c.writeTimeout, c.readTimeout, c.deadline, c.readLimit = 0, 0, time.Time{}, 0
	c.WatchAnswer(false)
	if c.capAt.Swap(0) != 0 {
		// The capped deadline is on the socket: lift it.
		_ = c.nc.SetDeadline(time.Time{})
		c.rdl, c.wdl = time.Time{}, time.Time{}
	}
}

// maxDeadlineSlack bounds how much earlier than asked a timeout may fire
// because its deadline was not moved (see needSet).
const maxDeadlineSlack = 20 * time.Millisecond

// needSet reports whether a deadline must be set on the socket to honour
// want, given the one set (have). Moving a deadline costs a timer update
// in the runtime; under load every read and write would move it by a few
// microseconds. So a deadline is kept when the wanted one is later by less
// than a 32nd of the timeout (at most 20ms): the timeout may then fire
// that much early, never late.
func needSet(want, have time.Time, timeout time.Duration) bool {
	switch {
	case want.Equal(have):
		return false
	case want.IsZero() || have.IsZero() || want.Before(have):
		return true
	}
	slack := min(timeout/32, maxDeadlineSlack)
	return want.Sub(have) >= slack
}

// Now is the time for the connection's deadlines and timeouts: its event
// loop's turn when the caller runs on the loop (sockio's Conn.Now),
// time.Now() otherwise.
func (c *Conn) Now() time.Time { return c.sock.Now() }

func (c *Conn) deadlineFor(d time.Duration) time.Time {
	var t time.Time
	if d > 0 {
		t = c.sock.Now().Add(d)
	}
	if !c.deadline.IsZero() && (t.IsZero() || c.deadline.Before(t)) {
		t = c.deadline
	}
	if cp := c.capped(); !cp.IsZero() && (t.IsZero() || cp.Before(t)) {
		t = cp
	}
	return t
}

type phaseReader struct{ c *Conn }

func (r phaseReader) Read(b []byte) (int, error) {
	c := r.c
	if c.readLimit > 0 {
		left := c.readLimit - c.read.Load()
		if left <= 0 {
			return 0, ErrTooLarge
		}
		if int64(len(b)) > left {
			b = b[:left]
		}
	}
	t, timeout := c.deadlineFor(c.readTimeout), c.readTimeout
	if !c.probeUntil.IsZero() {
		t, timeout = c.probeUntil, 0
	}
	if needSet(t, c.rdl, timeout) {
		_ = c.nc.SetReadDeadline(t)
		c.rdl = t
	}
	n, err := c.sock.Read(b)
	c.read.Add(int64(n))
	return n, err
}

type phaseWriter struct{ c *Conn }

func (w phaseWriter) Write(b []byte) (int, error) {
	c := w.c
	total := 0
	for len(b) > 0 {
		// The timeout is between writes: each chunk gets its own.
		chunk := b
		if len(chunk) > 32<<10 {
			chunk = chunk[:32<<10]
		}
		limit := c.deadlineFor(c.writeTimeout)
		for len(chunk) > 0 {
			t, timeout, probing := limit, c.writeTimeout, false
			if c.watchAnswer {
				// Wait at most AnswerProbe at a time, then look (below).
				now := time.Now()
				if limit.IsZero() || limit.Sub(now) > AnswerProbe {
					t, timeout, probing = now.Add(AnswerProbe), AnswerProbe, true
				}
			}
			if needSet(t, c.wdl, timeout) {
				_ = c.nc.SetWriteDeadline(t)
				c.wdl = t
			}
			n, err := c.sock.Write(chunk)
			if err == nil && c.under.holding() {
				// The TLS layer kept its records for us to send (tlsUnder);
				// none of them sent, none of the chunk was.
				var sent bool
				if sent, err = c.sendHeld(limit); !sent {
					n = 0
				}
			}
			c.written.Add(int64(n))
			total += n
			b, chunk = b[n:], chunk[n:]
			if err == nil {
				continue
			}
			if probing && errors.Is(err, os.ErrDeadlineExceeded) {
				if c.answered() {
					return total, ErrAnswered
				}
				// A deadline set meanwhile from another goroutine
				// (CapDeadline) still binds.
				if cp := c.capped(); !cp.IsZero() && (limit.IsZero() || cp.Before(limit)) {
					limit = cp
				}
				if limit.IsZero() || time.Now().Before(limit) {
					continue // the backend is slow to read: wait on
				}
			}
			return total, err
		}
	}
	return total, nil
}

// AnswerProbe is how long a write to a backend waits (see WatchAnswer)
// before it looks whether the backend has answered already.
const AnswerProbe = time.Second

// ErrAnswered is returned by writes (see WatchAnswer) that waited on a
// backend which had stopped reading the request: it had sent the first
// bytes of a refusal (a final status other than 2xx).
var ErrAnswered = errors.New("backend answered before reading the whole request, and stopped reading it")

// WatchAnswer makes writes that wait for the backend to read (until the
// next Pools.Put) look every AnswerProbe whether it has refused the
// request already, and fail with ErrAnswered if so, instead of waiting
// out the write timeout: a backend that answers an upload early (413,
// 401) and stops reading it without closing the connection. In plain
// text the look is a peek at the socket; under TLS (where the bytes
// waiting may be a session ticket) the TLS layer's records are sent by
// the connection itself (tlsUnder, sendHeld) and the look reads what the
// backend sent, decrypted, into the connection's reader (answeredTLS).
func (c *Conn) WatchAnswer(on bool) {
	c.watchAnswer = on && c.rawc != nil && c.nc == c.raw
	if c.under != nil {
		c.under.hold(on)
	}
}

// tlsUnder is the connection a TLS backend connection's TLS layer runs
// on: the TCP socket, whose writes, while held (WatchAnswer), it keeps
// for the Conn to send itself (sendHeld). A TLS write then never waits
// on the socket, so none ever times out: one that did would break the
// TLS connection for good (crypto/tls), where a backend that answered
// early and stopped reading is only waited for a second at a time, its
// answer looked at between (answeredTLS). Reads pass through.
//
// Closing, the TLS layer's close_notify alert may wait closeNotifyWait
// for room on the socket, not the five seconds crypto/tls gives it: the
// connection is often closed because the backend stopped reading (an
// early answer, a timeout), its send buffer full, and the close is on
// the request's path.
type tlsUnder struct {
	net.Conn
	holds   bool
	held    []byte // records written by the TLS layer, not sent yet
	closing atomic.Bool
}

// closeNotifyWait bounds the wait to send the close_notify alert.
const closeNotifyWait = 10 * time.Millisecond

func (u *tlsUnder) SetWriteDeadline(t time.Time) error {
	if u.closing.Load() {
		t = time.Now().Add(closeNotifyWait)
	}
	return u.Conn.SetWriteDeadline(t)
}

func (u *tlsUnder) Write(p []byte) (int, error) {
	// Closing may come from another goroutine (a client gone): its
	// close_notify goes to the socket, never into held, which the
	// exchange's goroutine may be sending.
	if u.closing.Load() || !u.holds {
		return u.Conn.Write(p)
	}
	u.held = append(u.held, p...)
	return len(p), nil
}

// holding is whether records are held (false for a nil u: plain text).
func (u *tlsUnder) holding() bool { return u != nil && u.holds }

// hold starts or stops holding; what is held when it stops was not sent
// (a write that failed: the connection is not reused) and is dropped.
func (u *tlsUnder) hold(on bool) {
	u.holds = on
	if u.held = u.held[:0]; cap(u.held) > maxHeld {
		u.held = nil // an idle connection keeps no large buffer
	}
}

// maxHeld is the most of its held buffer a TLS connection keeps between
// uploads.
const maxHeld = 64 << 10

// sendHeld sends the records the TLS layer left in c.under to the socket,
// each write waiting at most AnswerProbe (and never past limit, moved by
// CapDeadline meanwhile) before it looks whether the backend has refused
// the request already (answeredTLS): ErrAnswered then. A look may add a
// record of the TLS layer's own (a KeyUpdate answered): sent in turn,
// after those held before it, as the record sequence requires. sent: a
// byte at least went out.
func (c *Conn) sendHeld(limit time.Time) (sent bool, err error) {
	u := c.under
	defer func() { u.held = u.held[:0] }()
	off := 0
	for off < len(u.held) {
		t, probing := limit, false
		if now := time.Now(); limit.IsZero() || limit.Sub(now) > AnswerProbe {
			t, probing = now.Add(AnswerProbe), true
		}
		if !t.Equal(c.wdl) {
			_ = c.raw.SetWriteDeadline(t) // the socket's: nc's is the same
			c.wdl = t
		}
		n, err := c.raw.Write(u.held[off:])
		off += n
		if err == nil {
			continue
		}
		if probing && errors.Is(err, os.ErrDeadlineExceeded) {
			if c.answeredTLS() {
				return off > 0, ErrAnswered
			}
			if cp := c.capped(); !cp.IsZero() && (limit.IsZero() || cp.Before(limit)) {
				limit = cp
			}
			if limit.IsZero() || time.Now().Before(limit) {
				continue // the backend is slow to read: wait on
			}
		}
		return off > 0, err
	}
	return true, nil
}

// answeredTLS is answered for a TLS connection: it reads what the backend
// sent, for at most tlsLook, through the TLS layer (which takes a session
// ticket or a key update for itself) into the connection's reader, where
// the response stays for the exchange to read.
func (c *Conn) answeredTLS() bool {
	c.probeUntil = time.Now().Add(tlsLook)
	defer func() { c.probeUntil = time.Time{} }()
	b, _ := c.br.Peek(len("HTTP/1.1 4"))
	return refusal(b)
}

// tlsLook is how long answeredTLS waits for bytes the backend may be
// sending (a record partly arrived).
const tlsLook = 5 * time.Millisecond

// answered reports whether the backend has sent bytes that begin a
// refusal — a final response other than a success: 3xx, 4xx, 5xx (or
// bytes that are no response at all) — without consuming them. A
// "100 Continue" asks for the body; a success sent early may come from a
// backend that answers as it reads (a full-duplex upload): both are
// waited for.
func (c *Conn) answered() bool {
	if c.rawc == nil {
		return false
	}
	var got bool
	// Control, not Read: the last exchange's read deadline may have
	// passed, and this must not wait anyway.
	_ = c.rawc.Control(func(fd uintptr) {
		var buf [10]byte // "HTTP/1.1 4": the status's first digit
		n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)),
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		if errno == 0 { // else nothing yet, or closed: the write says
			got = refusal(buf[:n])
		}
	})
	return got
}

// refusal is whether b, the first bytes a backend sent (up to 10), begin
// a refusal: a final status of 3xx–5xx, or bytes that begin no response
// at all. Fewer than 10 bytes that may still begin a status line are
// decided at the next look.
func refusal(b []byte) bool {
	switch {
	case len(b) == 0:
		return false
	case len(b) < len("HTTP/1.1 4"):
		return !strings.HasPrefix("HTTP/1.", string(b[:min(len(b), 7)]))
	default:
		return !strings.HasPrefix(string(b), "HTTP/1.") || b[9] >= '3'
	}
}

// PeekNext makes the next Get of this connection check it with a peek
// even when it was given back just now: its last response (to a HEAD, a
// 204 or 304) is one a backend may wrongly have sent a body with, bytes
// that must not be read as the next request's response.
func (c *Conn) PeekNext() { c.peekNext = true }

// recent reports whether an idle connection may be handed out without the
// peek: given back within RecentWithoutPeek, nothing buffered, no PeekNext.
func (c *Conn) recent(now time.Time) bool {
	return !c.peekNext && c.br.Buffered() == 0 && (c.rdl.IsZero() || now.Before(c.rdl)) &&
		now.Sub(c.idleSince) < RecentWithoutPeek
}

// alive reports whether an idle connection is still open and has nothing
// unexpected to read: a peer that closed it (EOF, RST) or, in plain text,
// sent bytes nobody asked for makes it unusable. It peeks without blocking.
// Under TLS, pending bytes may be a post-handshake message (session
// ticket, key update), so only EOF and errors count.
func (c *Conn) alive() bool {
	if c.br.Buffered() > 0 {
		return false
	}
	if c.rawc == nil {
		return true
	}
	if !c.rdl.IsZero() && !c.sock.Now().Before(c.rdl) {
		// The last exchange's read deadline has passed: lift it, or the
		// peek below (and the next read) would fail at once.
		_ = c.nc.SetReadDeadline(time.Time{})
		c.rdl = time.Time{}
	}
	c.peekOK, c.peekNext = false, false
	err := c.rawc.Read(c.peekFn)
	return err == nil && c.peekOK
}

// peek looks at the socket without blocking or consuming (see alive).
func (c *Conn) peek(fd uintptr) bool {
	var buf [1]byte
	// A raw system call: it never blocks (MSG_DONTWAIT), and through
	// the scheduler's hand-off it would wake the runtime's monitor thread
	// from its sleep when the process was idle (context switches).
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&buf[0])), 1,
		unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	switch {
	case errno == unix.EAGAIN || errno == unix.EWOULDBLOCK:
		c.peekOK = true
	case errno != 0: // reset and the like
	case n == 0: // EOF
	default: // unsolicited bytes, unless TLS records
		c.peekOK = c.nc != c.raw
	}
	return true // never wait
}
