package sockio

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/l7/evloop"
)

// pair returns both ends of a loopback TCP connection: the client's as a
// Conn, the server's as the net.Conn it is.
func pair(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); p.Close() })
	s := New(c)
	if !s.Raw() {
		t.Fatal("a TCP connection is not raw")
	}
	return s, p
}

// A connection without a file descriptor is read and written through its
// own methods.
func TestNotTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	s := New(a)
	if s.Raw() {
		t.Fatal("a net.Pipe is not raw")
	}
	go func() {
		_, _ = s.Write([]byte("ab"))
		_, _ = s.Writev([][]byte{[]byte("c"), []byte("d")})
	}()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "abcd" {
		t.Fatalf("read %q, %v", buf, err)
	}
	go func() { _, _ = b.Write([]byte("xy")) }()
	if _, err := io.ReadFull(s, buf[:2]); err != nil || string(buf[:2]) != "xy" {
		t.Fatalf("read %q, %v", buf[:2], err)
	}
}

func TestReadWriteEOF(t *testing.T) {
	s, p := pair(t)
	go func() {
		_, _ = p.Write([]byte("hello"))
		time.Sleep(20 * time.Millisecond) // the reader waits on the poller
		_, _ = p.Write([]byte(" world"))
		p.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(s)
	if err != nil || string(got) != "hello world" {
		t.Fatalf("ReadAll = %q, %v", got, err)
	}
	n, err := s.Read(make([]byte, 4))
	if n != 0 || err != io.EOF {
		t.Fatalf("read after EOF = %d, %v; want 0, EOF", n, err)
	}
	if n, err := s.Write([]byte("bye")); n != 3 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	buf := make([]byte, 3)
	if _, err := io.ReadFull(p, buf); err != nil || string(buf) != "bye" {
		t.Fatalf("peer read %q, %v", buf, err)
	}
}

// TestReadDeadline: a read deadline fires on the raw path as on net's
// Read: a timeout error that is os.ErrDeadlineExceeded, Op "read"; and a
// deadline moved later lets the next read succeed.
func TestReadDeadline(t *testing.T) {
	s, p := pair(t)
	_ = s.nc.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	start := time.Now()
	n, err := s.Read(make([]byte, 8))
	if n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read = %d, %v; want a deadline error", n, err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("error %v is not a timeout net.Error", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("error %#v: want a *net.OpError with Op read", err)
	}
	if d := time.Since(start); d < 25*time.Millisecond || d > 5*time.Second {
		t.Fatalf("deadline fired after %v", d)
	}
	// An expired deadline fails at once, without reading.
	if _, err := s.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline = %v", err)
	}
	_ = s.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = p.Write([]byte("x"))
	if n, err := s.Read(make([]byte, 8)); n != 1 || err != nil {
		t.Fatalf("Read after the deadline moved = %d, %v", n, err)
	}
}

// TestWriteDeadline: a write that fills the socket waits on the poller
// (the EAGAIN path) and fails when the write deadline passes, reporting
// what it wrote.
func TestWriteDeadline(t *testing.T) {
	s, _ := pair(t) // the peer never reads
	_ = s.nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	big := make([]byte, 64<<20)
	n, err := s.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write = %d, %v; want a deadline error", n, err)
	}
	if n <= 0 || n >= len(big) {
		t.Fatalf("Write wrote %d of %d before the deadline", n, len(big))
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "write" {
		t.Fatalf("error %#v: want Op write", err)
	}
}

// TestCloseUnblocksRead: closing the connection from another goroutine
// ends a read waiting on the poller with net.ErrClosed, as on net's Read.
func TestCloseUnblocksRead(t *testing.T) {
	s, _ := pair(t)
	done := make(chan error, 1)
	go func() {
		_, err := s.Read(make([]byte, 8))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	s.nc.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close = %v; want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked after Close")
	}
}

// TestReset: a reset from the peer is a read error wrapping ECONNRESET.
func TestReset(t *testing.T) {
	s, p := pair(t)
	_ = p.(*net.TCPConn).SetLinger(0)
	p.Close()
	_ = s.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := s.Read(make([]byte, 8))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Read after a reset = %v; want ECONNRESET", err)
	}
}

// TestWritevLarge: buffers larger than the socket's send buffer go out
// whole and in order through partial writevs and waits.
func TestWritevLarge(t *testing.T) {
	s, p := pair(t)
	bufs := [][]byte{[]byte("head:"), {}, bytes.Repeat([]byte("a"), 3<<20), bytes.Repeat([]byte("b"), 1<<20+7), []byte(":tail")}
	var want []byte
	for _, b := range bufs {
		want = append(want, b...)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(p)
		got <- b
	}()
	n, err := s.Writev(bufs)
	if err != nil || n != int64(len(want)) {
		t.Fatalf("Writev = %d, %v; want %d", n, err, len(want))
	}
	_ = s.nc.(*net.TCPConn).CloseWrite()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("peer read %d bytes, not what was written (%d)", len(b), len(want))
	}
	// Many buffers: more than one writev's worth.
	many := make([][]byte, 3000)
	for i := range many {
		many[i] = []byte{byte(i)}
	}
	s2, p2 := pair(t)
	go func() {
		b, _ := io.ReadAll(p2)
		got <- b
	}()
	if n, err := s2.Writev(many); err != nil || n != 3000 {
		t.Fatalf("Writev of 3000 buffers = %d, %v", n, err)
	}
	_ = s2.nc.(*net.TCPConn).CloseWrite()
	b := <-got
	for i := range many {
		if b[i] != byte(i) {
			t.Fatalf("byte %d = %d", i, b[i])
		}
	}
}

// TestNoAllocs: a read and a write allocate nothing.
func TestNoAllocs(t *testing.T) {
	s, p := pair(t)
	msg := []byte("ping")
	buf := make([]byte, 16)
	pbuf := make([]byte, 16)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := s.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(p, pbuf[:4]); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(s, buf[:4]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 0 {
		t.Fatalf("%v allocations per exchange; want 0", allocs)
	}
}

// An event loop's socket is read and written with raw system calls too,
// its waits parking the loop's task: a read finds what the peer wrote,
// and a read deadline ends a wait.
func TestEventLoopConnIsRaw(t *testing.T) {
	g, err := evloop.NewGroup(1, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peer, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	nc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	loop := g.Pick()
	ec, err := loop.Adopt(nc)
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	type result struct {
		raw     bool
		got     string
		err     error
		timeout error
	}
	done := make(chan result, 1)
	loop.Go(func(context.Context) {
		s := New(ec)
		var r result
		r.raw = s.Raw()
		buf := make([]byte, 16)
		n, err := s.Read(buf) // parks until the peer writes
		r.got, r.err = string(buf[:n]), err
		ec.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, r.timeout = s.Read(buf)
		done <- r
	})
	time.Sleep(10 * time.Millisecond)
	peer.Write([]byte("hello"))
	r := <-done
	if !r.raw || r.got != "hello" || r.err != nil {
		t.Errorf("raw %v, read %q %v", r.raw, r.got, r.err)
	}
	if !errors.Is(r.timeout, os.ErrDeadlineExceeded) {
		t.Errorf("read past its deadline: %v", r.timeout)
	}
}

// TestFinish: Finish sends the end of the stream (the peer reads what was
// written, then EOF) and leaves the connection open for reading.
func TestFinish(t *testing.T) {
	s, p := pair(t)
	if _, err := s.Write([]byte("last")); err != nil {
		t.Fatal(err)
	}
	s.Finish()
	_ = p.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(p)
	if err != nil || string(got) != "last" {
		t.Fatalf("peer read %q, %v; want \"last\" then EOF", got, err)
	}
	if _, err := p.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if _, err := io.ReadFull(s, buf); err != nil || buf[0] != 'x' {
		t.Fatalf("read after Finish %q, %v", buf, err)
	}
	// Not a TCP socket: nothing happens.
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	New(a).Finish()
}
