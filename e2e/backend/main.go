// Command sluice-testbackend is the HTTP backend of the lab and the e2e suite.
//
// It answers HTTP/1.1 (keep-alive) on --listen with its --name in the body and
// in an X-Backend header, and offers a few endpoints tests drive:
//
//	/               "NAME\n"
//	/slow?ms=N      the same after N milliseconds
//	/status/NNN     an empty reply with status NNN
//	/stream?seconds=N  a chunked body, one line per 100ms for N seconds (a long-lived connection)
//	/healthz        "ok"
//	/close-after-body  read the whole request body, then close the connection
//	                without answering (the request was executed)
//	/close-mid-response  send a header announcing 100 bytes and 10 of them, then close
//	/early-hold?ms=N  answer 413 at once without reading the request body, then
//	                keep the connection open, reading nothing, for N milliseconds
//	/stats          JSON counts of executed requests (not counting /stats itself):
//	                in total, by path, by "METHOD /path" and by the `rid` query
//	                parameter (a request id: how often one request was executed)
//	/control/fail?status=N  from now on answer every other path with status N
//	                (0: healthy again); /control and /stats are not counted
//	/control/mode?mode=M  from now on treat every other path as M: normal,
//	                close-after-body, close-mid-response, hang (never answer,
//	                until the client goes away)
//
// With --udp-listen it also answers every UDP datagram with "NAME\n".
// With --relay LISTEN=TARGET it also passes every TCP connection accepted on
// LISTEN to TARGET, byte for byte (a load balancer in front of another:
// the e2e suite's forwarding loop), logging each.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", ":80", "address to listen on")
	name := flag.String("name", "", "backend name sent in the body and the X-Backend header (default: hostname)")
	udpListen := flag.String("udp-listen", "", "also answer UDP datagrams on this address with the name")
	tlsListen := flag.String("tls-listen", "", "also serve HTTPS on this address (same backend: counters, failure status)")
	tlsCert := flag.String("tls-cert", "", "PEM certificate for --tls-listen")
	tlsKey := flag.String("tls-key", "", "PEM key for --tls-listen")
	idleTimeout := flag.Duration("idle-timeout", 5*time.Minute, "close a keep-alive connection idle this long (a backend that closes pooled connections before the proxy does)")
	relay := flag.String("relay", "", "LISTEN=TARGET: also relay TCP connections accepted on LISTEN to TARGET")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if *name == "" {
		h, err := os.Hostname()
		if err != nil {
			h = "backend"
		}
		*name = h
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if *udpListen != "" {
		pc, err := net.ListenPacket("udp", *udpListen)
		if err != nil {
			log.Error("udp listen failed", "addr", *udpListen, "err", err)
			os.Exit(1)
		}
		go func() {
			<-ctx.Done()
			_ = pc.Close()
		}()
		go serveUDP(log, pc, *name)
	}
	if *relay != "" {
		from, to, ok := strings.Cut(*relay, "=")
		ln, err := net.Listen("tcp", from)
		if !ok || err != nil {
			log.Error("relay listen failed", "relay", *relay, "err", err)
			os.Exit(1)
		}
		go func() {
			<-ctx.Done()
			_ = ln.Close()
		}()
		go serveRelay(log, ln, to)
	}
	if err := run(ctx, log, *listen, *name, *idleTimeout, tlsFiles{*tlsListen, *tlsCert, *tlsKey}); err != nil {
		log.Error("backend failed", "err", err)
		os.Exit(1)
	}
}

// tlsFiles is the optional HTTPS listener: address, certificate, key.
type tlsFiles struct{ listen, cert, key string }

func run(ctx context.Context, log *slog.Logger, listen, name string, idle time.Duration, tf tlsFiles) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", listen, err)
	}
	b := newBackend(name)
	ln = &recordingListener{Listener: ln, rec: b.raw}
	srv := &http.Server{
		Handler:           b.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       idle,
	}
	log.Info("listening", "addr", ln.Addr().String(), "name", name)

	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	if tf.listen != "" {
		tln, err := net.Listen("tcp", tf.listen)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", tf.listen, err)
		}
		tsrv := &http.Server{Handler: srv.Handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: idle}
		log.Info("listening (https)", "addr", tln.Addr().String(), "name", name)
		go func() { errc <- tsrv.ServeTLS(tln, tf.cert, tf.key) }()
		defer tsrv.Close()
	}

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// serveRelay passes each connection accepted on ln to target, both ways,
// until either side closes, for at most a minute.
func serveRelay(log *slog.Logger, ln net.Listener, target string) {
	log.Info("relaying", "addr", ln.Addr().String(), "to", target)
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			log.Info("relayed connection", "from", c.RemoteAddr().String(), "to", target)
			up, err := net.DialTimeout("tcp", target, 2*time.Second)
			if err != nil {
				log.Warn("relay dial failed", "to", target, "err", err)
				return
			}
			defer up.Close()
			deadline := time.Now().Add(time.Minute)
			_ = c.SetDeadline(deadline)
			_ = up.SetDeadline(deadline)
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
			go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
			<-done
		}()
	}
}

// serveUDP answers each datagram with the name until pc is closed.
func serveUDP(log *slog.Logger, pc net.PacketConn, name string) {
	log.Info("udp listening", "addr", pc.LocalAddr().String())
	buf := make([]byte, 2048)
	reply := []byte(name + "\n")
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Error("udp read", "err", err)
			}
			return
		}
		if _, err := pc.WriteTo(reply, from); err != nil {
			log.Warn("udp reply", "to", from.String(), "err", err)
		}
	}
}

// backend holds the name and the request counters.
type backend struct {
	name string

	mu         sync.Mutex
	total      uint64
	byPath     map[string]uint64
	byMethod   map[string]uint64 // "METHOD /path"
	byID       map[string]uint64 // rid query parameter
	failStatus int               // non-zero: every counted request gets this status
	mode       string            // "" (normal) or a /control/mode mode
	// raw keeps the bytes received on recent connections, before any
	// parsing: a test asks whether some bytes ever reached the backend.
	raw *rawLog
	// bigEnded is how each /big request (by rid) ended: "ok" or
	// "write-error", and after how many milliseconds.
	bigEnded map[string]BigEnd
}

// BigEnd is how a /big response ended.
type BigEnd struct {
	Result string  `json:"result"` // ok | write-error
	MS     float64 `json:"ms"`     // from the request to the end of the writes
	Bytes  int64   `json:"bytes"`
}

func newBackend(name string) *backend {
	return &backend{name: name, raw: &rawLog{}, byPath: make(map[string]uint64),
		byMethod: make(map[string]uint64), byID: make(map[string]uint64), bigEnded: make(map[string]BigEnd)}
}

// Stats is the /stats reply.
type Stats struct {
	Name     string            `json:"name"`
	Requests uint64            `json:"requests"`
	ByPath   map[string]uint64 `json:"by_path"`
	ByMethod map[string]uint64 `json:"by_method_path"`
	ByID     map[string]uint64 `json:"by_rid"`
	BigEnded map[string]BigEnd `json:"big_ended"`
	// Accepted is the number of TCP connections accepted since the start.
	Accepted uint64 `json:"accepted"`
}

func (b *backend) count(r *http.Request) {
	key := r.URL.Path
	if strings.HasPrefix(key, "/status/") {
		key = "/status"
	}
	rid := r.URL.Query().Get("rid")
	b.mu.Lock()
	b.total++
	b.byPath[key]++
	b.byMethod[r.Method+" "+key]++
	if rid != "" {
		b.byID[rid]++
	}
	b.mu.Unlock()
}

func (b *backend) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", b.stats)
	mux.HandleFunc("/control/fail", b.controlFail)
	mux.HandleFunc("/control/mode", b.controlMode)
	mux.HandleFunc("GET /control/raw", b.controlRaw)
	mux.HandleFunc("/close-after-body", b.wrap(closeAfterBody))
	mux.HandleFunc("/close-mid-response", b.wrap(closeMidResponse))
	mux.HandleFunc("/early-hold", b.wrap(earlyHold))
	mux.HandleFunc("/healthz", b.wrap(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	}))
	mux.HandleFunc("/slow", b.wrap(b.slow))
	mux.HandleFunc("/status/{code}", b.wrap(b.status))
	mux.HandleFunc("/stream", b.wrap(b.stream))
	mux.HandleFunc("/big", b.wrap(b.big))
	mux.HandleFunc("/upload", b.wrap(upload))
	// /redirect?to=URL: a 302 to URL, and a Refresh naming it too.
	mux.HandleFunc("/redirect", b.wrap(func(w http.ResponseWriter, r *http.Request) {
		to := r.URL.Query().Get("to")
		w.Header().Set("Location", to)
		w.Header().Set("Refresh", "3; url="+to)
		w.WriteHeader(http.StatusFound)
	}))
	mux.HandleFunc("/", b.wrap(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, b.name)
	}))
	return mux
}

// wrap sets X-Backend, X-Client-Addr (the peer address the backend saw:
// the client's in nat mode, sluice's in snat mode) and X-Seen-Host (the
// Host it got), counts the request and
// answers with the failure status when one is set.
func (b *backend) wrap(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		b.count(r)
		w.Header().Set("X-Backend", b.name)
		w.Header().Set("X-Client-Addr", r.RemoteAddr)
		w.Header().Set("X-Seen-Host", r.Host)
		if r.TLS != nil {
			w.Header().Set("X-Seen-SNI", r.TLS.ServerName)
		}
		// ?echo=NAME (repeatable): the request's NAME comes back as
		// X-Echo-NAME ("-" when absent), so tests see request heads.
		for _, n := range r.URL.Query()["echo"] {
			v := strings.Join(r.Header.Values(n), ",")
			if v == "" {
				v = "-"
			}
			w.Header().Set("X-Echo-"+n, v)
		}
		b.mu.Lock()
		fail, mode := b.failStatus, b.mode
		b.mu.Unlock()
		switch mode {
		case "close-after-body":
			closeAfterBody(w, r)
			return
		case "close-mid-response":
			closeMidResponse(w, r)
			return
		case "hang":
			<-r.Context().Done()
			return
		}
		if fail != 0 {
			w.WriteHeader(fail)
			fmt.Fprintln(w, b.name)
			return
		}
		h(w, r)
	}
}

func (b *backend) stats(w http.ResponseWriter, _ *http.Request) {
	b.mu.Lock()
	s := Stats{Name: b.name, Requests: b.total, ByPath: maps.Clone(b.byPath),
		ByMethod: maps.Clone(b.byMethod), ByID: maps.Clone(b.byID), BigEnded: maps.Clone(b.bigEnded)}
	b.raw.mu.Lock()
	s.Accepted = b.raw.accepted
	b.raw.mu.Unlock()
	b.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Backend", b.name)
	_ = json.NewEncoder(w).Encode(s)
}

func (b *backend) controlFail(w http.ResponseWriter, r *http.Request) {
	code, err := intParam(r, "status", 0, 599)
	if err != nil || (code != 0 && code < 100) {
		http.Error(w, "want status=0 (healthy) or a status 100..599", http.StatusBadRequest)
		return
	}
	b.mu.Lock()
	b.failStatus = code
	b.mu.Unlock()
	w.Header().Set("X-Backend", b.name)
	fmt.Fprintf(w, "%s: fail status %d\n", b.name, code)
}

func (b *backend) controlMode(w http.ResponseWriter, r *http.Request) {
	m := r.URL.Query().Get("mode")
	switch m {
	case "normal":
		m = ""
	case "close-after-body", "close-mid-response", "hang":
	default:
		http.Error(w, "want mode=normal|close-after-body|close-mid-response|hang", http.StatusBadRequest)
		return
	}
	b.mu.Lock()
	b.mode = m
	b.mu.Unlock()
	w.Header().Set("X-Backend", b.name)
	fmt.Fprintf(w, "%s: mode %q\n", b.name, m)
}

// closeAfterBody reads the whole request body, then closes the connection
// without a byte of response: the request was executed, the client cannot
// know it.
func closeAfterBody(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	hijackClose(w, nil, 0)
}

// closeMidResponse sends a header announcing 100 bytes, 10 of them, and closes.
func closeMidResponse(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	hijackClose(w, []byte("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-Backend: "+
		w.Header().Get("X-Backend")+"\r\n\r\n0123456789"), 0)
}

// earlyHold answers 413 before reading the request's body and then keeps
// the connection open for ms milliseconds without reading: a backend that
// refuses an upload early and neither reads nor closes.
func earlyHold(w http.ResponseWriter, r *http.Request) {
	ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
	hijackClose(w, []byte("HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 10\r\nX-Backend: "+
		w.Header().Get("X-Backend")+"\r\n\r\ntoo large\n"), time.Duration(min(ms, 60000))*time.Millisecond)
}

// hijackClose takes the connection over, writes send and closes it after
// hold, reading nothing more.
func hijackClose(w http.ResponseWriter, send []byte, hold time.Duration) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "hijacking unsupported", http.StatusInternalServerError)
		return
	}
	conn, bufrw, err := hj.Hijack()
	if err != nil {
		return
	}
	if len(send) > 0 {
		_, _ = bufrw.Write(send)
		_ = bufrw.Flush()
	}
	time.Sleep(hold)
	_ = conn.Close()
}

func (b *backend) slow(w http.ResponseWriter, r *http.Request) {
	ms, err := intParam(r, "ms", 0, 600_000)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	select {
	case <-time.After(time.Duration(ms) * time.Millisecond):
	case <-r.Context().Done():
		return
	}
	fmt.Fprintln(w, b.name)
}

func (b *backend) status(w http.ResponseWriter, r *http.Request) {
	code, err := strconv.Atoi(r.PathValue("code"))
	if err != nil || code < 100 || code > 599 {
		http.Error(w, "bad status code", http.StatusBadRequest)
		return
	}
	w.WriteHeader(code)
	fmt.Fprintln(w, b.name)
}

// upload reads the request body with a body timeout of its own, as
// application servers have: each read must come within timeout_ms (500);
// a client that stalls longer is dropped without an answer (the
// connection closed, as a server that gives up on a request does).
// The answer is the body's length.
func upload(w http.ResponseWriter, r *http.Request) {
	ms, err := intParam(r, "timeout_ms", 500, 60000)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	var n int64
	for {
		_ = rc.SetReadDeadline(time.Now().Add(time.Duration(ms) * time.Millisecond))
		m, err := r.Body.Read(buf)
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			panic(http.ErrAbortHandler)
		}
	}
	fmt.Fprintln(w, n)
}

func (b *backend) stream(w http.ResponseWriter, r *http.Request) {
	secs, err := intParam(r, "seconds", 10, 3600)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	deadline := time.Now().Add(time.Duration(secs) * time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for i := 0; time.Now().Before(deadline); i++ {
		if _, err := fmt.Fprintf(w, "%s %d\n", b.name, i); err != nil {
			return
		}
		flusher.Flush()
		select {
		case <-tick.C:
		case <-r.Context().Done():
			return
		}
	}
}

// big sends mb MiB (default 64) and records, by rid, how the writes
// ended: a proxy that lets a stalled client hold the connection leaves it
// blocked in a write.
func (b *backend) big(w http.ResponseWriter, r *http.Request) {
	mb, err := intParam(r, "mb", 64, 4096)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	t0 := time.Now()
	total := int64(mb) << 20
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(total, 10))
	chunk := make([]byte, 64<<10)
	var sent int64
	end := BigEnd{Result: "ok"}
	for sent < total {
		n, err := w.Write(chunk[:min(int64(len(chunk)), total-sent)])
		sent += int64(n)
		if err != nil {
			end.Result = "write-error"
			break
		}
	}
	end.MS, end.Bytes = float64(time.Since(t0).Microseconds())/1000, sent
	if rid := r.URL.Query().Get("rid"); rid != "" {
		b.mu.Lock()
		b.bigEnded[rid] = end
		b.mu.Unlock()
	}
}

// rawLog keeps the first rawPerConn bytes read on each of the last
// rawConns connections.
type rawLog struct {
	mu       sync.Mutex
	conns    []*[]byte
	accepted uint64 // connections accepted since the start
}

const (
	rawConns   = 512
	rawPerConn = 64 << 10
)

func (l *rawLog) conn() *[]byte {
	b := new([]byte)
	l.mu.Lock()
	l.accepted++
	l.conns = append(l.conns, b)
	if len(l.conns) > rawConns {
		l.conns = l.conns[1:]
	}
	l.mu.Unlock()
	return b
}

func (l *rawLog) add(b *[]byte, p []byte) {
	l.mu.Lock()
	if room := rawPerConn - len(*b); room > 0 {
		*b = append(*b, p[:min(room, len(p))]...)
	}
	l.mu.Unlock()
}

// count is the number of recorded connections whose bytes contain sub.
func (l *rawLog) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, b := range l.conns {
		if strings.Contains(string(*b), sub) {
			n++
		}
	}
	return n
}

type recordingListener struct {
	net.Listener
	rec *rawLog
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &recordingConn{Conn: c, rec: l.rec, buf: l.rec.conn()}, nil
}

type recordingConn struct {
	net.Conn
	rec *rawLog
	buf *[]byte
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.rec.add(c.buf, p[:n])
	}
	return n, err
}

// controlRaw answers how many recent connections carried the bytes of
// ?hex= (hex-encoded, so the question itself does not carry them) before
// any parsing, as {"connections": N}.
func (b *backend) controlRaw(w http.ResponseWriter, r *http.Request) {
	sub, err := hex.DecodeString(r.URL.Query().Get("hex"))
	if err != nil || len(sub) == 0 {
		http.Error(w, "want hex=HEX-ENCODED-BYTES", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, "{\"connections\": %d}\n", b.raw.count(string(sub)))
}

// intParam reads query parameter key as an int in [0, max], def when absent.
func intParam(r *http.Request, key string, def, max int) (int, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > max {
		return 0, fmt.Errorf("bad %s=%q: want an integer in [0, %d]", key, v, max)
	}
	return n, nil
}
