// Command sluice-loadgen drives HTTP/1.1 load at one URL from inside a lab
// namespace (`ip netns exec sl-ID-client sluice-loadgen ...`) and reports, as
// one JSON object on stdout, where requests went (X-Backend), how they failed
// (reset, timeout, refused, ...) and how long they took.
//
// Modes:
//
//	keepalive  --conns persistent connections, requests in sequence on each;
//	           a failed connection is re-dialled for the next request
//	newconn    a new connection per request (Connection: close)
//	udp        a new UDP socket (so a new flow) per request to --url
//	           udp://host:port: one datagram out, the reply names the backend
//
// Load is always bounded: by --count requests in total and by --duration.
// With --events, one JSON line per connect, response and error goes to
// stderr as it happens, so a test can follow a single connection.
//
// The HTTP client is deliberately minimal (no hidden retries, no hidden
// re-dials): every failure the network causes is counted.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Report is the JSON printed on stdout at the end.
type Report struct {
	Mode       string             `json:"mode"`
	Target     string             `json:"target"`
	Requests   int                `json:"requests"`
	OK         int                `json:"ok"`
	Failures   int                `json:"failures"`
	Dials      int                `json:"dials"`
	ByBackend  map[string]int     `json:"by_backend"`
	Errors     map[string]int     `json:"errors"`
	Samples    []string           `json:"error_samples,omitempty"`
	LatencyMS  map[string]float64 `json:"latency_ms"`
	DurationMS float64            `json:"duration_ms"`
}

// Event is one line of --events output.
type Event struct {
	TimeMS  int64   `json:"t"` // unix milliseconds
	Worker  int     `json:"worker"`
	Conn    int     `json:"conn"` // per-worker connection sequence number, from 1
	Event   string  `json:"event"`
	Backend string  `json:"backend,omitempty"`
	Kind    string  `json:"kind,omitempty"`
	Error   string  `json:"error,omitempty"`
	Latency float64 `json:"latency_ms,omitempty"`
}

type options struct {
	url      *url.URL
	mode     string
	conns    int
	count    int
	duration time.Duration
	interval time.Duration
	timeout  time.Duration
	events   bool

	awaitClose bool
}

func main() {
	var (
		rawURL = flag.String("url", "http://198.18.1.100/", "target URL (http only)")
		o      options
	)
	flag.StringVar(&o.mode, "mode", "keepalive", "keepalive | newconn | udp")
	flag.IntVar(&o.conns, "conns", 1, "concurrent workers (keepalive: persistent connections)")
	flag.IntVar(&o.count, "count", 100, "requests in total (upper bound)")
	flag.DurationVar(&o.duration, "duration", 30*time.Second, "run at most this long")
	flag.DurationVar(&o.interval, "interval", 0, "pause between two requests of one worker")
	flag.DurationVar(&o.timeout, "timeout", 2*time.Second, "per request: dial plus exchange")
	flag.BoolVar(&o.events, "events", false, "JSON event lines on stderr")
	flag.BoolVar(&o.awaitClose, "await-close", false, "newconn: wait for the server to close first, so the client keeps no TIME_WAIT and its ports are reusable at once")
	flag.Parse()

	if err := o.validate(*rawURL); err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	rep := run(ctx, o)
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: write report: %v\n", err)
		os.Exit(1)
	}
}

func (o *options) validate(rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("parse url %q: %w", rawURL, err)
	}
	switch o.mode {
	case "keepalive", "newconn":
		if u.Scheme != "http" || u.Host == "" {
			return fmt.Errorf("url %q: want http://host[:port]/path", rawURL)
		}
		if u.Port() == "" {
			u.Host = net.JoinHostPort(u.Hostname(), "80")
		}
		if u.Path == "" {
			u.Path = "/"
		}
	case "udp":
		if u.Scheme != "udp" || u.Port() == "" {
			return fmt.Errorf("url %q: mode udp wants udp://host:port", rawURL)
		}
	default:
		return fmt.Errorf("mode %q: want keepalive, newconn or udp", o.mode)
	}
	o.url = u
	if o.conns < 1 || o.conns > 1000 {
		return fmt.Errorf("conns %d: want 1..1000", o.conns)
	}
	if o.count < 1 || o.count > 10_000_000 {
		return fmt.Errorf("count %d: want 1..10000000", o.count)
	}
	if o.duration <= 0 || o.duration > time.Hour {
		return fmt.Errorf("duration %s: want (0, 1h]", o.duration)
	}
	if o.timeout <= 0 {
		return fmt.Errorf("timeout %s: must be positive", o.timeout)
	}
	return nil
}

// collector gathers results from the workers.
type collector struct {
	mu        sync.Mutex
	rep       Report
	latencies []float64
	events    *json.Encoder
}

func (c *collector) emit(ev Event) {
	if c.events == nil {
		return
	}
	ev.TimeMS = time.Now().UnixMilli()
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.events.Encode(ev)
}

func (c *collector) dial() {
	c.mu.Lock()
	c.rep.Dials++
	c.mu.Unlock()
}

func (c *collector) ok(backend string, lat time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rep.Requests++
	c.rep.OK++
	if backend == "" {
		backend = "(none)"
	}
	c.rep.ByBackend[backend]++
	c.latencies = append(c.latencies, float64(lat.Microseconds())/1000)
}

func (c *collector) fail(kind string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rep.Requests++
	c.rep.Failures++
	c.rep.Errors[kind]++
	if len(c.rep.Samples) < 10 {
		c.rep.Samples = append(c.rep.Samples, fmt.Sprintf("%s: %v", kind, err))
	}
}

func run(ctx context.Context, o options) Report {
	c := &collector{rep: Report{
		Mode:      o.mode,
		Target:    o.url.String(),
		ByBackend: map[string]int{},
		Errors:    map[string]int{},
	}}
	if o.events {
		c.events = json.NewEncoder(os.Stderr)
	}
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()

	// A shared budget of requests bounds the total.
	budget := make(chan struct{}, o.count)
	for range o.count {
		budget <- struct{}{}
	}
	close(budget)

	start := time.Now()
	var wg sync.WaitGroup
	for i := range o.conns {
		w := &worker{id: i + 1, o: o, c: c}
		wg.Go(func() { w.loop(ctx, budget) })
	}
	wg.Wait()
	c.rep.DurationMS = float64(time.Since(start).Microseconds()) / 1000
	c.rep.LatencyMS = percentiles(c.latencies)
	return c.rep
}

func percentiles(l []float64) map[string]float64 {
	out := map[string]float64{}
	if len(l) == 0 {
		return out
	}
	slices.Sort(l)
	at := func(p float64) float64 {
		i := int(p * float64(len(l)-1))
		return l[i]
	}
	out["p50"] = at(0.50)
	out["p90"] = at(0.90)
	out["p99"] = at(0.99)
	out["max"] = l[len(l)-1]
	return out
}

type worker struct {
	id int
	o  options
	c  *collector

	conn    net.Conn
	br      *bufio.Reader
	connSeq int
	began   time.Time // when the request (or datagram) in progress started
}

func (w *worker) loop(ctx context.Context, budget <-chan struct{}) {
	defer w.closeConn()
	for first := true; ; first = false {
		if !first && w.o.interval > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(w.o.interval):
			}
		}
		if ctx.Err() != nil {
			return
		}
		if _, ok := <-budget; !ok {
			return
		}
		w.request(ctx)
	}
}

func (w *worker) closeConn() {
	if w.conn != nil {
		_ = w.conn.Close()
		w.conn, w.br = nil, nil
	}
}

// request runs one request and records its outcome.
func (w *worker) request(ctx context.Context) {
	if w.o.mode == "udp" {
		w.datagram(ctx)
		return
	}
	start := time.Now()
	w.began = start
	deadline := start.Add(w.o.timeout)
	keep := w.o.mode == "keepalive"

	if w.conn == nil {
		d := net.Dialer{Deadline: deadline}
		conn, err := d.DialContext(ctx, "tcp", w.o.url.Host)
		w.c.dial()
		if err != nil {
			if ctx.Err() != nil {
				return // stopped while dialling: not the network's fault
			}
			w.failed(classify(err), err)
			return
		}
		w.connSeq++
		w.conn, w.br = conn, bufio.NewReader(conn)
		w.c.emit(Event{Worker: w.id, Conn: w.connSeq, Event: "connect"})
	}
	_ = w.conn.SetDeadline(deadline)

	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: sluice-loadgen\r\n", w.o.url.RequestURI(), w.o.url.Host)
	if !keep {
		req += "Connection: close\r\n"
	}
	req += "\r\n"
	if _, err := io.WriteString(w.conn, req); err != nil {
		w.failed(classify(err), err)
		return
	}
	resp, err := http.ReadResponse(w.br, nil)
	if err != nil {
		w.failed(classify(err), err)
		return
	}
	_, err = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		w.failed(classify(err), err)
		return
	}
	lat := time.Since(start)
	backend := resp.Header.Get("X-Backend")
	if resp.StatusCode >= 400 {
		w.failed(fmt.Sprintf("status_%d", resp.StatusCode), fmt.Errorf("backend %s: %s", backend, resp.Status))
		return
	}
	w.c.ok(backend, lat)
	w.c.emit(Event{Worker: w.id, Conn: w.connSeq, Event: "response", Backend: backend,
		Latency: float64(lat.Microseconds()) / 1000})
	if !keep && w.o.awaitClose {
		// The server closes after a Connection: close reply; reading to EOF
		// leaves the TIME_WAIT on its side.
		if _, err := io.Copy(io.Discard, w.br); err != nil {
			w.failed(classify(err), fmt.Errorf("waiting for the server to close: %w", err))
			return
		}
	}
	if !keep || resp.Close {
		w.closeConn()
	}
}

// datagram sends one datagram from a fresh socket and waits for the reply.
func (w *worker) datagram(ctx context.Context) {
	start := time.Now()
	w.began = start
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", w.o.url.Host)
	w.c.dial()
	if err != nil {
		if ctx.Err() == nil {
			w.failed(classify(err), err)
		}
		return
	}
	w.connSeq++
	w.conn = conn
	_ = conn.SetDeadline(start.Add(w.o.timeout))
	if _, err := conn.Write([]byte("sluice-loadgen\n")); err != nil {
		w.failed(classify(err), err)
		return
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		w.failed(classify(err), err)
		return
	}
	lat := time.Since(start)
	backend := strings.TrimSpace(string(buf[:n]))
	w.c.ok(backend, lat)
	w.c.emit(Event{Worker: w.id, Conn: w.connSeq, Event: "response", Backend: backend,
		Latency: float64(lat.Microseconds()) / 1000})
	w.closeConn()
}

func (w *worker) failed(kind string, err error) {
	w.c.fail(kind, err)
	// An error's latency is how long the request took to fail: a refused
	// connect fails at once, a lost one only at the timeout.
	w.c.emit(Event{Worker: w.id, Conn: w.connSeq, Event: "error", Kind: kind, Error: err.Error(),
		Latency: float64(time.Since(w.began).Microseconds()) / 1000})
	w.closeConn()
}

// classify names what went wrong, the way tests assert on it.
func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	default:
		return "other"
	}
}
