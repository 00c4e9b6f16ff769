package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicelb/sluice/l7/accesslog"
	"github.com/sluicelb/sluice/l7/evloop"
	"github.com/sluicelb/sluice/l7/upstream"
)

// Protocol upgrades (WebSocket, and the protocols in the service's
// upgrades allow-list).
//
// An HTTP/1.1 request with "Connection: upgrade" and an Upgrade header
// naming an allowed protocol is proxied like any other (same backend choice, timeouts and retries before
// a response); when the backend answers 101 Switching Protocols, the client
// connection is taken over and bytes are copied both ways until either side
// closes. The backend connection is never pooled afterwards. The tunnel
// is closed when no byte has passed in either direction for
// `client.tunnel_idle_timeout`, and a side that stops reading blocks a
// write at most that long; `timeouts.total` does not apply to it. On
// shutdown, tunnels get until the shutdown deadline, then are closed.

// upgradeType returns the protocol a request asks to upgrade to when it
// is in the allow-list, "" otherwise: an Upgrade for another protocol
// (h2c among them) is dropped with the other hop-by-hop headers and the
// request goes on as a plain one, so only an allowed protocol can ever
// turn a client connection into a tunnel.
func upgradeType(r *http.Request, allowed []string) string {
	if r.ProtoMajor != 1 || r.ProtoMinor < 1 {
		return ""
	}
	up := r.Header["Upgrade"]
	if len(up) != 1 {
		return "" // none, or several fields: not one protocol
	}
	proto := strings.TrimSpace(up[0])
	name, _, _ := strings.Cut(proto, "/")
	ok := false
	for _, a := range allowed {
		if strings.EqualFold(a, proto) || strings.EqualFold(a, name) {
			ok = true
			break
		}
	}
	if !ok || !isToken(name) || !validFieldValue(proto) {
		return ""
	}
	for _, v := range r.Header["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return proto
			}
		}
	}
	return ""
}

// tunnels tracks upgraded connections, for shutdown.
type tunnels struct {
	mu     sync.Mutex
	wg     sync.WaitGroup
	conns  map[net.Conn]struct{}
	closed bool
}

func (t *tunnels) add(cs ...net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	if t.conns == nil {
		t.conns = map[net.Conn]struct{}{}
	}
	for _, c := range cs {
		t.conns[c] = struct{}{}
	}
	t.wg.Add(1)
	return true
}

func (t *tunnels) done(cs ...net.Conn) {
	t.mu.Lock()
	for _, c := range cs {
		delete(t.conns, c)
	}
	t.mu.Unlock()
	t.wg.Done()
}

// shutdown waits for the tunnels until ctx ends, then closes them.
func (t *tunnels) shutdown(ctx context.Context) {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	idle := make(chan struct{})
	go func() { t.wg.Wait(); close(idle) }()
	select {
	case <-idle:
		return
	case <-ctx.Done():
	}
	t.mu.Lock()
	for c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
	<-idle
}

// tunnel takes over the client connection after a 101 from the backend and
// copies bytes both ways. It returns once both directions ended.
func (s *Server) tunnel(ctx context.Context, w http.ResponseWriter, rec *accesslog.Record, st *settings, res tryResult) {
	resp := res.resp
	conn := res.conn
	up := conn
	proto := resp.Header.Get("Upgrade")
	removeHopByHop(resp.Header)
	resp.Header.Set("Connection", "Upgrade")
	resp.Header.Set("Upgrade", proto)
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		up.Close()
		s.pools.Put(conn, upstream.CloseError)
		s.fail(w, rec, http.StatusInternalServerError, "upgrade: "+err.Error())
		return
	}
	rec.Status = http.StatusSwitchingProtocols
	if !s.tunnels.add(client) {
		client.Close()
		up.Close()
		s.pools.Put(conn, upstream.CloseShutdown)
		return
	}
	defer s.tunnels.done(client)
	defer client.Close()
	defer s.pools.Put(conn, upstream.CloseUpgrade)
	defer up.Close()

	_ = client.SetDeadline(time.Time{})
	fmt.Fprintf(brw, "HTTP/1.1 101 %s\r\n", http.StatusText(http.StatusSwitchingProtocols))
	resp.Header.Add("Via", "1.1 sluice")
	_ = resp.Header.Write(brw)
	brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		rec.Error = "upgrade: writing the 101 to the client: " + err.Error()
		return
	}
	// No overall deadline: the backend side's reads and writes wait at
	// most the idle timeout each; the client side's are managed by idle.
	idleFor := s.limits.TunnelIdleTimeout
	if st.tunnelIdle > 0 {
		idleFor = st.tunnelIdle // the route's
	}
	conn.SetTimeouts(idleFor, idleFor, time.Time{})
	idle := newTunnelIdle(idleFor)

	var wg sync.WaitGroup
	var toClient, toBackend int64
	var errUp, errDown error
	// On an event loop the other direction is another task of the loop.
	evloop.Go(ctx, &wg, func() {
		// Client → backend, with what the server already buffered.
		if n := brw.Reader.Buffered(); n > 0 {
			b, _ := brw.Reader.Peek(n)
			m, err := up.Write(b)
			toBackend += int64(m)
			if err != nil {
				errUp = err
				closeWrite(up)
				return
			}
		}
		n, err := idle.copy(up, client, client.SetReadDeadline, nil)
		toBackend += n
		errUp = err
		closeWrite(up)
	})
	toClient, errDown = idle.copy(client, up, nil, client.SetWriteDeadline)
	closeWrite(client)
	// The backend is done: give the client a moment to finish, then end
	// (at once when the backend side failed or went idle).
	grace := 5 * time.Second
	if errDown != nil {
		grace = 0
	}
	idle.end(client, grace)
	evloop.Wait(ctx, &wg)
	rec.BytesIn += toBackend
	rec.BytesOut = toClient
	switch {
	case conn.Removed():
		rec.Error = "upgraded connection cut: the backend's address was removed (drain_timeout passed)"
	case errors.Is(errDown, errTunnelIdle) || errors.Is(errUp, errTunnelIdle):
		rec.Error = fmt.Sprintf("upgraded connection idle for %s, closed", idleFor)
	case errDown != nil && !errors.Is(errDown, net.ErrClosed):
		rec.Error = "upgraded connection: " + errDown.Error()
	case errUp != nil && !errors.Is(errUp, net.ErrClosed):
		rec.Error = "upgraded connection: " + errUp.Error()
	}
}

func closeWrite(c any) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// errTunnelIdle ends a tunnel nothing passed through for the idle timeout.
var errTunnelIdle = errors.New("tunnel idle timeout")

// tunnelIdle closes a tunnel when no byte has passed in either direction
// for timeout: each side's reads and writes wait at most timeout, and a
// read that times out while the other direction was busy waits again.
//
// Its instants are nanoseconds after start on the monotonic clock, so a
// step of the wall clock neither closes every tunnel at once nor keeps
// idle ones open longer.
type tunnelIdle struct {
	timeout time.Duration
	start   time.Time    // the origin of last and ended
	last    atomic.Int64 // the latest byte either way
	ended   atomic.Int64 // > 0: the backend side ended, reads end by then
}

func newTunnelIdle(timeout time.Duration) *tunnelIdle {
	t := &tunnelIdle{timeout: timeout, start: time.Now()}
	t.touch()
	return t
}

func (t *tunnelIdle) touch() { t.last.Store(int64(time.Since(t.start))) }

// end makes the reads of the other direction end within d.
func (t *tunnelIdle) end(c net.Conn, d time.Duration) {
	at := time.Now().Add(d)
	t.ended.Store(max(int64(at.Sub(t.start)), 1))
	_ = c.SetReadDeadline(at)
}

// copy copies src to dst until EOF, an error or the idle timeout.
// setRead and setWrite move the deadlines of the connections under src
// and dst; nil when that side applies the idle timeout itself (the
// backend connection's per-read and per-write timeouts).
func (t *tunnelIdle) copy(dst io.Writer, src io.Reader, setRead, setWrite func(time.Time) error) (int64, error) {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		now := time.Now()
		dl := now.Add(t.timeout)
		if e := t.ended.Load(); e > 0 {
			dl = t.start.Add(time.Duration(e))
		}
		if setRead != nil {
			_ = setRead(dl)
		}
		k, err := src.Read(buf)
		if k > 0 {
			t.touch()
			if setWrite != nil {
				_ = setWrite(time.Now().Add(t.timeout))
			}
			m, werr := dst.Write(buf[:k])
			n += int64(m)
			if werr != nil {
				if isTimeout(werr) {
					return n, errTunnelIdle
				}
				return n, werr
			}
			t.touch()
		}
		if err == nil {
			continue
		}
		if err == io.EOF {
			return n, nil
		}
		if isTimeout(err) {
			if setRead != nil && t.ended.Load() > 0 {
				return n, nil
			}
			if time.Since(t.start)-time.Duration(t.last.Load()) < t.timeout {
				continue // the other direction is busy: wait again
			}
			return n, errTunnelIdle
		}
		return n, err
	}
}
