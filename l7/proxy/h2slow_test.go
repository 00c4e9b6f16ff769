package proxy

import (
	"encoding/binary"
	"fmt"
	"github.com/sluicelb/sluice/internal/h2raw"
	"strings"
	"testing"
	"time"
)

// Over HTTP/2, a header block that is never finished (HEADERS without
// END_HEADERS, no CONTINUATION) holds no stream: the connection is closed
// at client.idle_timeout.
func TestH2UnfinishedHeaderBlockClosed(t *testing.T) {
	be := newBackend(t, status(200))
	p := newPool(t, nil, be.addr)
	h := start(t, p, func(o *Options) {
		o.H2C = true
		o.Client.HeaderTimeout = time.Second
		o.Client.IdleTimeout = time.Second
	})
	c := h2raw.Dial(t, strings.TrimPrefix(h.url, "http://"))
	// Read the server's SETTINGS, ACK it, then open a header block that never ends.
	if _, _, _, _, err := c.ReadFrame(); err != nil {
		t.Fatalf("the server's SETTINGS: %v", err)
	}
	c.Frame(h2raw.FrameSettings, h2raw.FlagAck, 0, nil)
	time.Sleep(100 * time.Millisecond)
	c.Frame(h2raw.FrameHeaders, 0, 1, []byte{0x82})
	t0 := time.Now()
	done := make(chan string, 1)
	go func() {
		for {
			typ, _, _, p, err := c.ReadFrame()
			if err != nil {
				done <- "EOF " + err.Error()
				return
			}
			if typ == h2raw.FrameGoAway && len(p) >= 8 {
				done <- fmt.Sprintf("GOAWAY code %d", binary.BigEndian.Uint32(p[4:8]))
				return
			}
		}
	}()
	select {
	case ev := <-done:
		t.Logf("after %s: %s", time.Since(t0), ev)
		if d := time.Since(t0); d > 3*time.Second {
			t.Errorf("closed after %s, want at the idle timeout (1s)", d)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("an unfinished header block kept the connection open for 8s")
	}
}
