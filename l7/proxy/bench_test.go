package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicelb/sluice/l7/accesslog"
)

// BenchmarkProxy measures the proxy on loopback: three minimal backends
// (a canned 200 with a 2-byte body) and clients that speak just enough
// HTTP/1.1 to keep load generation cheap, so the profile is the proxy's.
// The lab benchmark (scripts/bench_l7.sh, docs/benchmarks.md) is the one
// that compares with nginx and HAProxy.
//
// Besides time and allocations per request it reports syscalls/op, the
// system calls of the whole process (clients and backends included) per
// request, when the raw_syscalls tracepoint can be counted (root). The
// "direct" case (clients straight to a backend, no proxy) is the share of
// the clients and backends: subtract it to get the proxy's.
//
//	go test ./l7/proxy -run '^$' -bench Proxy -benchmem -cpuprofile cpu.out
//	go tool pprof -top proxy.test cpu.out
func BenchmarkProxy(b *testing.B) {
	for _, bc := range []proxyBench{
		{"keep-alive", true, true, false, 0, false},
		{"keep-alive/no-access-log", true, false, false, 0, false},
		{"keep-alive/nethttp1", true, true, true, 0, false},
		{"keep-alive/eventloops", true, true, false, 0, true},
		{"keep-alive/16k", true, true, false, 16 << 10, false},
		{"new-connection", false, true, false, 0, false},
		{"new-connection/eventloops", false, true, false, 0, true},
		{"direct/keep-alive", true, false, false, 0, false},
		{"direct/keep-alive/16k", true, false, false, 16 << 10, false},
		{"direct/new-connection", false, false, false, 0, false},
	} {
		b.Run(bc.name, func(b *testing.B) { bc.run(b) })
	}
}

// proxyBench is one case of BenchmarkProxy.
type proxyBench struct {
	name      string
	keepAlive bool
	accessLog bool
	netHTTP1  bool // net/http's server instead of the loop (Options.NetHTTP1)
	body      int  // the backends' response body (0: "ok")
	// loops: the loop's connections on event loops
	// (Options.EventLoops) instead of a goroutine each
	loops bool
}

// run sends b.N requests through a proxy built for the case (straight to
// a backend for the "direct/" cases).
func (bc proxyBench) run(b *testing.B) {
	if strings.HasPrefix(bc.name, "direct/") {
		runClients(b, rawOKBackend(b, bc.body).String(), bc.keepAlive)
		return
	}
	var addrs []netip.AddrPort
	for range 3 {
		addrs = append(addrs, rawOKBackend(b, bc.body))
	}
	t := &testing.T{}
	p := newPool(t, nil, addrs...)
	var acc *accesslog.Logger
	if bc.accessLog {
		f, err := os.Create(filepath.Join(b.TempDir(), "access.log"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		acc = accesslog.New(f, time.Second)
		defer acc.Close()
	}
	srv, err := New(Options{
		Service: testService(), Pool: p, Ejection: testEjection(), AccessLog: acc,
		NetHTTP1: bc.netHTTP1, EventLoops: bc.loops, ShutdownTimeout: 5 * time.Second,
	})
	if err != nil {
		b.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()
	runClients(b, l.Addr().String(), bc.keepAlive)
}

// runClients sends b.N requests to addr from many clients at once and
// reports the system calls per request (see BenchmarkProxy).
func runClients(b *testing.B, addr string, keepAlive bool) {
	req := []byte("GET /bench HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	if !keepAlive {
		req = []byte("GET /bench HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: bench\r\nAccept: */*\r\nConnection: close\r\n\r\n")
	}
	b.ReportAllocs()
	b.SetParallelism(16) // many clients, like wrk -c32 on 2 CPUs
	sc := newSyscallCounter()
	if sc != nil {
		defer sc.close()
	}
	var sc0 uint64
	if sc != nil {
		sc0 = sc.count()
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var c net.Conn
		var br *bufio.Reader
		defer func() {
			if c != nil {
				c.Close()
			}
		}()
		for pb.Next() {
			if c == nil {
				var err error
				if c, err = net.Dial("tcp", addr); err != nil {
					b.Error(err)
					return
				}
				br = bufio.NewReader(c)
			}
			if _, err := c.Write(req); err != nil {
				b.Error(err)
				return
			}
			if err := readOK(br); err != nil {
				b.Error(err)
				return
			}
			if !keepAlive {
				c.Close()
				c = nil
			}
		}
	})
	b.StopTimer()
	if sc != nil {
		b.ReportMetric(float64(sc.count()-sc0)/float64(b.N), "syscalls/op")
	}
}

// readOK reads one response with a Content-Length and checks it is a 200.
func readOK(br *bufio.Reader) error {
	n := -1
	for first := true; ; first = false {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if first && !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
			return &badStatus{string(line)}
		}
		if len(line) <= 2 {
			break
		}
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && bytes.EqualFold(k, []byte("Content-Length")) {
			n, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
		}
	}
	if n < 0 {
		return &badStatus{"no Content-Length"}
	}
	_, err := br.Discard(n)
	return err
}

type badStatus struct{ s string }

func (e *badStatus) Error() string { return "unexpected response: " + e.s }

// rawOKBackend is a loopback HTTP/1.1 server that answers every request
// (without a body) with a canned 200 "ok" (or a body of size bytes),
// keeping connections alive.
func rawOKBackend(b *testing.B, size int) netip.AddrPort {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	body := "ok"
	if size > 0 {
		body = strings.Repeat("x", size)
	}
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				br := bufio.NewReader(c)
				for {
					for {
						line, err := br.ReadSlice('\n')
						if err != nil {
							return
						}
						if len(line) <= 2 {
							break
						}
					}
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			})
		}
	})
	b.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	_, _ = io.Discard.Write(nil)
	return netip.MustParseAddrPort(l.Addr().String())
}
