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
	"time"

	"github.com/sluicelb/sluice/l7/accesslog"
	"github.com/sluicelb/sluice/l7/upstream"
)

// Protocol upgrades (WebSocket and any other HTTP/1.1 Upgrade).
//
// An HTTP/1.1 request with "Connection: upgrade" and an Upgrade header is
// proxied like any other (same backend choice, timeouts and retries before
// a response); when the backend answers 101 Switching Protocols, the client
// connection is taken over and bytes are copied both ways until either side
// closes. The backend connection is never pooled afterwards. As with
// nginx's proxy_read_timeout, the tunnel is closed when the backend sends
// nothing for `timeouts.read`; `timeouts.total` does not apply to it. On
// shutdown, tunnels get until the shutdown deadline, then are closed.

// upgradeType returns the protocol a request asks to upgrade to ("" when none).
func upgradeType(r *http.Request) string {
	if r.ProtoMajor != 1 || r.ProtoMinor < 1 {
		return ""
	}
	for _, v := range r.Header["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return r.Header.Get("Upgrade")
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
func (s *Server) tunnel(w http.ResponseWriter, rec *accesslog.Record, st *settings, res tryResult) {
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
	if fc, ok := client.(*framingConn); ok {
		fc.passThrough()
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
	// The backend side: reads wait at most `read`, no overall deadline.
	conn.SetTimeouts(st.timeouts.Send, st.timeouts.Read, time.Time{})

	var wg sync.WaitGroup
	var toClient, toBackend int64
	var errUp, errDown error
	wg.Go(func() {
		// Client → backend, with what the server already buffered.
		toBackend, errUp = io.Copy(up, io.MultiReader(io.LimitReader(brw.Reader, int64(brw.Reader.Buffered())), client))
		closeWrite(up)
	})
	toClient, errDown = io.Copy(client, up)
	closeWrite(client)
	// The backend is done: give the client a moment to finish, then end.
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	wg.Wait()
	rec.BytesIn += toBackend
	rec.BytesOut = toClient
	switch {
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
