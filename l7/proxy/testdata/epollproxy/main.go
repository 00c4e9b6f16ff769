// Command epollproxy is an experiment, not part of sluice: the least an
// HTTP/1.1 reverse proxy written in Go can do per request when it does not
// use Go's network poller and scheduler at all — one locked OS thread per
// worker, each with its own epoll instance, its own SO_REUSEPORT listening
// socket and its own keep-alive connections to the backends, every socket
// non-blocking and read and written with raw system calls (the structure
// of an nginx worker). It measures the ceiling of Go on this path for
// docs/benchmarks.md ("Issue 11, steps 11–"); it has none of sluice's
// features and none of its checks: GET requests without a body only,
// responses framed by Content-Length only, no timeouts, no retries, no
// access log, no limits. Never run it outside the lab.
//
//	epollproxy -listen 198.18.1.102:80 -backends 198.18.2.11:80,198.18.2.12:80 -workers 2
package main

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	backends := flag.String("backends", "", "comma-separated backend addresses (round robin)")
	workers := flag.Int("workers", runtime.NumCPU(), "worker threads")
	flag.Parse()
	la, err := netip.ParseAddrPort(*listen)
	if err != nil {
		fail(err)
	}
	var bes []netip.AddrPort
	for b := range strings.SplitSeq(*backends, ",") {
		a, err := netip.ParseAddrPort(b)
		if err != nil {
			fail(err)
		}
		bes = append(bes, a)
	}
	done := make(chan error)
	for i := range *workers {
		w, err := newWorker(la, bes, i)
		if err != nil {
			fail(err)
		}
		go func() { done <- w.run() }()
	}
	fail(<-done)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "epollproxy:", err)
	os.Exit(1)
}

// conn is one socket of a worker: a client's or a backend's.
type conn struct {
	fd       int
	client   bool
	in       []byte // what was read and not yet used
	out      []byte // what is left to write
	peer     *conn  // the backend serving the client's request, or the client a backend answers
	close    bool   // the client asked for Connection: close
	waitResp bool   // a backend connection with a request in flight
}

type worker struct {
	ep       int
	lfd      int
	backends []netip.AddrPort
	next     int
	idle     map[netip.AddrPort][]*conn
	addrOf   map[*conn]netip.AddrPort
	conns    map[int]*conn
	events   [128]unix.EpollEvent
	buf      [64 << 10]byte
}

func newWorker(la netip.AddrPort, bes []netip.AddrPort, i int) (*worker, error) {
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	_ = unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return nil, err
	}
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Port: int(la.Port()), Addr: la.Addr().As4()}); err != nil {
		return nil, fmt.Errorf("bind %s: %w", la, err)
	}
	if err := unix.Listen(lfd, 4096); err != nil {
		return nil, err
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	w := &worker{ep: ep, lfd: lfd, backends: bes, next: i, idle: map[netip.AddrPort][]*conn{},
		addrOf: map[*conn]netip.AddrPort{}, conns: map[int]*conn{}}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, lfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(lfd)}); err != nil {
		return nil, err
	}
	return w, nil
}

// run is the worker's event loop, on a thread of its own.
func (w *worker) run() error {
	runtime.LockOSThread()
	for {
		n, err := unix.EpollWait(w.ep, w.events[:], -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		for _, ev := range w.events[:n] {
			fd := int(ev.Fd)
			if fd == w.lfd {
				w.accept()
				continue
			}
			c := w.conns[fd]
			if c == nil {
				continue
			}
			if ev.Events&(unix.EPOLLOUT) != 0 && len(c.out) > 0 {
				w.flush(c)
			}
			if ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 && w.conns[fd] == c {
				w.readable(c)
			}
		}
	}
}

func (w *worker) accept() {
	for {
		fd, _, err := unix.Accept4(w.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return // EAGAIN, or out of descriptors for now
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		c := &conn{fd: fd, client: true}
		w.conns[fd] = c
		_ = unix.EpollCtl(w.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLET, Fd: int32(fd)})
		w.readable(c) // data may have come with the connection
	}
}

// rawRead reads once with a raw system call.
func rawRead(fd int, p []byte) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}

func rawWrite(fd int, p []byte) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}

// readable reads what c has (edge-triggered: until EAGAIN) and acts on it.
func (w *worker) readable(c *conn) {
	for {
		n, e := rawRead(c.fd, w.buf[:])
		if e == unix.EAGAIN {
			break
		}
		if e == unix.EINTR {
			continue
		}
		if e != 0 || n == 0 {
			w.drop(c)
			return
		}
		c.in = append(c.in, w.buf[:n]...)
	}
	if c.client {
		w.request(c)
	} else {
		w.response(c)
	}
}

// request forwards a complete request header of client c to a backend.
func (w *worker) request(c *conn) {
	if c.peer != nil {
		return // one request at a time
	}
	end := bytes.Index(c.in, []byte("\r\n\r\n"))
	if end < 0 {
		return
	}
	req := c.in[:end+4]
	c.close = bytes.Contains(req, []byte("\r\nConnection: close\r\n"))
	b := w.backend()
	if b == nil {
		w.drop(c)
		return
	}
	b.peer, c.peer = c, b
	b.waitResp = true
	b.out = append(b.out[:0], req...)
	if c.close {
		// Keep the backend connection: ask for keep-alive upstream.
		b.out = bytes.Replace(b.out, []byte("\r\nConnection: close\r\n"), []byte("\r\n"), 1)
	}
	c.in = c.in[end+4:]
	w.flush(b)
}

// backend is an idle connection to the next backend, or a new one.
func (w *worker) backend() *conn {
	a := w.backends[w.next%len(w.backends)]
	w.next++
	if l := w.idle[a]; len(l) > 0 {
		b := l[len(l)-1]
		w.idle[a] = l[:len(l)-1]
		return b
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().As4()})
	if err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return nil
	}
	b := &conn{fd: fd}
	w.conns[fd] = b
	w.addrOf[b] = a
	_ = unix.EpollCtl(w.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLET, Fd: int32(fd)})
	return b
}

// response passes a complete response of backend b to its client.
func (w *worker) response(b *conn) {
	if !b.waitResp {
		return
	}
	end := bytes.Index(b.in, []byte("\r\n\r\n"))
	if end < 0 {
		return
	}
	cl := contentLength(b.in[:end+4])
	if cl < 0 || len(b.in) < end+4+cl {
		return
	}
	n := end + 4 + cl
	c := b.peer
	b.waitResp, b.peer = false, nil
	c.peer = nil
	c.out = append(c.out, b.in[:n]...)
	b.in = b.in[n:]
	w.idle[w.addrOf[b]] = append(w.idle[w.addrOf[b]], b)
	w.flush(c)
	if c.close && len(c.out) == 0 {
		w.drop(c)
		return
	}
	if len(c.in) > 0 {
		w.request(c) // a pipelined request
	}
}

// contentLength is the response's Content-Length as Go's net/http writes
// it (the lab's backends; the experiment reads no other spelling).
func contentLength(h []byte) int {
	i := bytes.Index(h, []byte("\r\nContent-Length:"))
	if i < 0 {
		return -1
	}
	v := h[i+len("\r\nContent-Length:"):]
	v = v[:bytes.IndexByte(v, '\r')]
	n, err := strconv.Atoi(string(bytes.TrimSpace(v)))
	if err != nil {
		return -1
	}
	return n
}

// flush writes what c has to write, until EAGAIN (EPOLLOUT resumes it).
func (w *worker) flush(c *conn) {
	for len(c.out) > 0 {
		n, e := rawWrite(c.fd, c.out)
		if e == unix.EAGAIN {
			return
		}
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			w.drop(c)
			return
		}
		c.out = c.out[n:]
	}
	c.out = c.out[:0]
	if c.client && c.close && c.peer == nil {
		w.drop(c)
	}
}

func (w *worker) drop(c *conn) {
	if w.conns[c.fd] != c {
		return // dropped already
	}
	if os.Getenv("EPOLLPROXY_DEBUG") != "" {
		fmt.Fprintf(os.Stderr, "drop client=%v in=%d out=%d peer=%v close=%v\n", c.client, len(c.in), len(c.out), c.peer != nil, c.close)
	}
	delete(w.conns, c.fd)
	unix.Close(c.fd) // also leaves the epoll set
	if p := c.peer; p != nil {
		p.peer = nil
		if c.client {
			w.drop(p) // a backend mid-response: not reusable
		}
	}
	if !c.client {
		a := w.addrOf[c]
		delete(w.addrOf, c)
		l := w.idle[a]
		for i, b := range l {
			if b == c {
				w.idle[a] = append(l[:i], l[i+1:]...)
				break
			}
		}
	}
}
