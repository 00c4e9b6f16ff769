package proxy

import (
	"github.com/sluicelb/sluice/internal/h2raw"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/l7/service"
	"github.com/sluicelb/sluice/l7/upstream"
)

// dialled is how many connections the backend has accepted so far.
func (b *backend) dialled() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.states) + b.closed
}

// An HTTP/2 client that sends thousands of HEADERS each followed at once
// by RST_STREAM (rapid reset) costs a bounded number of backend
// connections, and the next normal request succeeds.
func TestRapidResetBoundedBackendDials(t *testing.T) {
	be := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(5 * time.Millisecond)
		w.Write([]byte("ok"))
	})
	p := newPool(t, nil, be.addr)
	h := start(t, p, func(o *Options) {
		o.H2C = true
		// The backend side only: the frame guard's GOAWAY after
		// client.h2_max_reset_streams is TestH2RapidResetGoAway's.
		o.Client.H2MaxResetStreams = 100000
	})
	addr := strings.TrimPrefix(h.url, "http://")
	c := h2raw.Dial(t, addr)
	const n = 5000
	for i := range n {
		stream := uint32(2*i + 1)
		c.Headers(stream, true, ":method", "GET", ":scheme", "http", ":path", "/", ":authority", "web")
		c.RST(stream, 0x8) // CANCEL
	}
	// Read until the server has dealt with everything (or sent GOAWAY).
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if ev := c.Next(); ev.EOF || ev.GoAway {
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
	}
	d := be.dialled()
	t.Logf("%d HEADERS+RST_STREAM: the backend accepted %d connections, executed %d requests", n, d, be.count.Load())
	// Bounded by the streams a connection may have in flight and the idle
	// connections kept, not by the resets (1000-2500 before, for 20000).
	if bound := 2 * (service.DefaultH2MaxStreams + upstream.DefaultMaxIdlePerAddr); d > bound {
		t.Errorf("%d backend connections for %d reset streams, want at most %d (pooled ones reused)", d, n, bound)
	}
	// A normal request afterwards.
	c2 := h2raw.Dial(t, addr)
	c2.Headers(1, true, ":method", "GET", ":scheme", "http", ":path", "/", ":authority", "web")
	if ev := c2.Response(1); ev.Status != "200" {
		t.Errorf("normal request after the resets: %s", ev)
	}
}
