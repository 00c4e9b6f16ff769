// Command fhproxy is an experiment, not part of sluice: an HTTP/1.1
// reverse proxy on valyala/fasthttp (its server, its parser, its
// HostClient's pooled backend connections), the library issue 11 names
// for an HTTP/1 path without net/http's per-request maps. It measures what
// that library costs per request on this path for docs/benchmarks.md
// ("Issue 11, step 20"), next to sluice, nginx, HAProxy and epollproxy.
// It does what a plain reverse proxy does and no more: round robin over
// the backends, hop-by-hop fields dropped, X-Forwarded-For set, one
// access log line per request (buffered, as nginx's); none of sluice's
// retries, limits, timeouts per phase, ejection or strict checks. It is
// its own module (fasthttp is not a dependency of sluice). Never run it
// outside the lab.
//
//	fhproxy -listen 198.18.1.103:80 -backends 198.18.2.11:80,198.18.2.12:80 -log access.log
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	backends := flag.String("backends", "", "comma-separated backend addresses (round robin)")
	logPath := flag.String("log", "", "access log file (none: no log)")
	flag.Parse()
	var clients []*fasthttp.HostClient
	for _, a := range strings.Split(*backends, ",") {
		if a == "" {
			continue
		}
		clients = append(clients, &fasthttp.HostClient{
			Addr:                a,
			MaxConns:            64,
			MaxIdleConnDuration: 60 * time.Second,
			ReadTimeout:         30 * time.Second,
			WriteTimeout:        30 * time.Second,
			// Forward what the backend sent, as is.
			DisableHeaderNamesNormalizing: true,
			DisablePathNormalizing:        true,
		})
	}
	if len(clients) == 0 {
		fail(fmt.Errorf("no -backends"))
	}
	var acc *accessLog
	if *logPath != "" {
		f, err := os.OpenFile(*logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fail(err)
		}
		acc = &accessLog{w: bufio.NewWriterSize(f, 64<<10)}
		go acc.flushEvery(time.Second)
	}
	var next atomic.Uint64
	handler := func(ctx *fasthttp.RequestCtx) {
		start := time.Now()
		req, resp := &ctx.Request, &ctx.Response
		for _, h := range hopByHop {
			req.Header.Del(h)
		}
		req.Header.Set("X-Forwarded-For", ctx.RemoteIP().String())
		c := clients[next.Add(1)%uint64(len(clients))]
		if err := c.Do(req, resp); err != nil {
			resp.Reset()
			resp.SetStatusCode(fasthttp.StatusBadGateway)
			resp.SetBodyString("bad gateway\n")
		}
		for _, h := range hopByHop {
			resp.Header.Del(h)
		}
		if acc != nil {
			acc.log(start, ctx, resp.StatusCode())
		}
	}
	srv := &fasthttp.Server{
		Handler:                       handler,
		Name:                          "fhproxy",
		ReadTimeout:                   60 * time.Second,
		WriteTimeout:                  60 * time.Second,
		IdleTimeout:                   60 * time.Second,
		DisableHeaderNamesNormalizing: true,
		NoDefaultServerHeader:         true,
	}
	if err := srv.ListenAndServe(*listen); err != nil {
		fail(err)
	}
}

var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// accessLog is one line per request into a buffer written out when full
// and every second (nginx's access_log ... buffer= flush=).
type accessLog struct {
	mu  sync.Mutex
	w   *bufio.Writer
	buf []byte
}

func (a *accessLog) log(start time.Time, ctx *fasthttp.RequestCtx, status int) {
	a.mu.Lock()
	b := a.buf[:0]
	b = start.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, ' ')
	b = append(b, ctx.RemoteIP().String()...)
	b = append(b, ' ')
	b = append(b, ctx.Method()...)
	b = append(b, ' ')
	b = append(b, ctx.RequestURI()...)
	b = append(b, ' ')
	b = fmt.Appendf(b, "%d %.3f\n", status, time.Since(start).Seconds()*1e3)
	a.w.Write(b)
	a.buf = b
	a.mu.Unlock()
}

func (a *accessLog) flushEvery(d time.Duration) {
	for range time.Tick(d) {
		a.mu.Lock()
		a.w.Flush()
		a.mu.Unlock()
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "fhproxy:", err)
	os.Exit(1)
}
