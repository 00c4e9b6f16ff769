package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// rawFrame is one frame's bytes as given.
func rawFrame(typ http2.FrameType, flags http2.Flags, stream uint32, payload []byte) []byte {
	var b bytes.Buffer
	b.Write([]byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), byte(typ), byte(flags)})
	_ = binary.Write(&b, binary.BigEndian, stream)
	b.Write(payload)
	return b.Bytes()
}

// An HTTP/2 connection sending frames that do no work (CVE-2019-9518,
// -9513, -9517: each costs the server about a microsecond, a million a
// second fit on one connection) gets GOAWAY ENHANCE_YOUR_CALM and is
// closed; a well-behaved client is served afterwards.
func TestH2FrameFloodGoAway(t *testing.T) {
	post := []string{":method", "POST", ":scheme", "http", ":authority", "a", ":path", "/"}
	cases := []struct {
		name  string
		open  func(c *h2conn) // the stream the flood is on, if any
		frame []byte
	}{
		{"empty-data", func(c *h2conn) { c.headers(1, false, post...) }, rawFrame(http2.FrameData, 0, 1, nil)},
		{"padding-only-data", func(c *h2conn) { c.headers(1, false, post...) }, rawFrame(http2.FrameData, http2.FlagDataPadded, 1, []byte{3, 0, 0, 0})},
		{"empty-continuation", func(c *h2conn) {
			if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x82}}); err != nil {
				t.Fatal(err)
			}
		}, rawFrame(http2.FrameContinuation, 0, 1, nil)},
		{"priority", nil, rawFrame(http2.FramePriority, 0, 3, []byte{0, 0, 0, 5, 16})},
		{"ping", nil, rawFrame(http2.FramePing, 0, 0, make([]byte, 8))},
		{"ping-ack", nil, rawFrame(http2.FramePing, http2.FlagPingAck, 0, make([]byte, 8))},
		{"settings", nil, rawFrame(http2.FrameSettings, 0, 0, nil)},
		{"window-update", nil, rawFrame(http2.FrameWindowUpdate, 0, 0, []byte{0, 0, 0, 1})},
		{"unknown-type", nil, rawFrame(0xfa, 0, 0, nil)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) })
			obs := &refusedObserver{}
			h := start(t, newPool(t, nil, b.addr), func(o *Options) { o.H2C = true; o.Observer = obs })
			c := dialH2C(t, h.url)
			_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if tc.open != nil {
				tc.open(c)
			}
			// 5000 frames (more than 20 times the most the guard lets
			// by) in one write, read by a goroutine of its own: the
			// server's answers (PING and SETTINGS acknowledgements) are
			// read meanwhile.
			flood := bytes.Repeat(tc.frame, 5000)
			done := make(chan error, 1)
			go func() { _, err := c.c.Write(flood); done <- err }()
			var goAway *http2.GoAwayFrame
			var readErr error
			for readErr == nil && goAway == nil {
				var f http2.Frame
				if f, readErr = c.fr.ReadFrame(); readErr == nil {
					goAway, _ = f.(*http2.GoAwayFrame)
				}
			}
			if errors.Is(readErr, os.ErrDeadlineExceeded) {
				t.Fatal("connection not closed")
			}
			if goAway == nil {
				t.Fatalf("closed without a GOAWAY: %v", readErr)
			}
			if goAway.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Errorf("GOAWAY %v, want ENHANCE_YOUR_CALM", goAway.ErrCode)
			}
			<-done
			if n := obs.count(limitH2Flood); n != 1 {
				t.Errorf("refused{h2_flood} = %d, want 1", n)
			}
			// A well-behaved client is served.
			c2 := dialH2C(t, h.url)
			c2.headers(1, true, getFields("/")...)
			c2.until("response", func(f http2.Frame) bool {
				hf, ok := f.(*http2.HeadersFrame)
				return ok && hf.StreamID == 1
			})
		})
	}
}

// A client whose control frames follow its work is never taken for a
// flood: a PRIORITY frame and a PING before every request, a few empty
// DATA frames before a body, and a download answered with two
// WINDOW_UPDATEs and a PING for every DATA frame (a BDP-probing gRPC
// client does about that).
func TestH2WorkingClientNotFlood(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 2<<20)
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/big" {
			w.Write(big)
		}
	})
	obs := &refusedObserver{}
	h := start(t, newPool(t, nil, b.addr), func(o *Options) { o.H2C = true; o.Observer = obs })
	var c *h2conn
	// Answers every PING and SETTINGS of the server, and gives back the
	// window of every DATA frame (stream and connection), with a PING.
	wait := func(id uint32) {
		t.Helper()
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				t.Fatalf("stream %d: %v (refused{h2_flood} = %d)", id, err, obs.count(limitH2Flood))
			}
			switch f := f.(type) {
			case *http2.GoAwayFrame:
				t.Fatalf("stream %d: GOAWAY %v", id, f.ErrCode)
			case *http2.SettingsFrame:
				if !f.IsAck() {
					_ = c.fr.WriteSettingsAck()
				}
			case *http2.DataFrame:
				if n := uint32(len(f.Data())); n > 0 {
					_ = c.fr.WriteWindowUpdate(0, n)
					_ = c.fr.WriteWindowUpdate(f.StreamID, n)
					_ = c.fr.WritePing(false, [8]byte{1})
				}
				if f.StreamEnded() && f.StreamID == id {
					return
				}
			case *http2.HeadersFrame:
				if f.StreamEnded() && f.StreamID == id {
					return
				}
			case *http2.RSTStreamFrame:
				t.Fatalf("stream %d reset: %v", f.StreamID, f.ErrCode)
			}
		}
	}
	c = dialH2C(t, h.url)
	for id := uint32(1); id <= 99; id += 2 {
		if err := c.fr.WritePriority(id, http2.PriorityParam{Weight: 16}); err != nil {
			t.Fatal(err)
		}
		if err := c.fr.WritePing(false, [8]byte{2}); err != nil {
			t.Fatal(err)
		}
		c.headers(id, false, ":method", "POST", ":scheme", "http", ":authority", "a", ":path", "/")
		for range maxEmptyFrames {
			if err := c.fr.WriteData(id, false, nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.fr.WriteData(id, true, []byte("body")); err != nil {
			t.Fatal(err)
		}
		wait(id)
	}
	// The download on a connection of its own: its control frames are
	// bounded by the DATA frames it was sent, not by its streams.
	c = dialH2C(t, h.url)
	c.headers(1, true, getFields("/big")...)
	wait(1)
	if n := obs.count(limitH2Flood); n != 0 {
		t.Errorf("refused{h2_flood} = %d, want 0", n)
	}
}

// Keep-alive PINGs are granted one a second for as long as a connection
// has been open.
func TestH2ControlFramesGrantedOverTime(t *testing.T) {
	g := &frameGuard{start: time.Now().Add(-time.Hour)}
	if got := g.ctrlAllowed(); got < ctrlBase+3600 {
		t.Errorf("an hour-old connection without streams may send %d control frames, want at least %d", got, ctrlBase+3600)
	}
}
