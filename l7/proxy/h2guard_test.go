package proxy

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// guardConn is a client connection for the frame guard alone: it reads r
// (then io.EOF), keeps what the guard writes (its GOAWAY), and accepts
// deadlines.
type guardConn struct {
	net.Conn
	r io.Reader
	w bytes.Buffer
}

func (c *guardConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *guardConn) Write(p []byte) (int, error)      { return c.w.Write(p) }
func (c *guardConn) SetReadDeadline(time.Time) error  { return nil }
func (c *guardConn) SetWriteDeadline(time.Time) error { return nil }
func (c *guardConn) SetDeadline(time.Time) error      { return nil }
func (c *guardConn) Close() error                     { return nil }
func (c *guardConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(198, 18, 0, 1), Port: 40000}
}
func (c *guardConn) LocalAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(198, 18, 0, 2), Port: 80} }
func (c *guardConn) guard(lim guardLimits) *frameGuard {
	return newFrameGuard(c, lim, true).(*frameGuard)
}

var testGuardLimits = guardLimits{maxFrame: 16 << 10, maxResets: 200, maxHeaderStr: 64 << 10}

// guardRead reads everything the guard passes on from input, as the
// server would: what it got, and the guard for a look at its state.
func guardRead(t testing.TB, input []byte) ([]byte, *frameGuard) {
	c := &guardConn{r: bytes.NewReader(input)}
	g := c.guard(testGuardLimits)
	var out []byte
	buf := make([]byte, 4096)
	// Every Read consumes input or ends: more calls than bytes is a loop.
	for i := 0; ; i++ {
		if i > len(input)+16 {
			t.Fatalf("the guard still reads after %d calls for %d bytes of input", i, len(input))
		}
		n, err := g.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			break
		}
	}
	return out, g
}

// maxGuardBuf is the most the guard may hold for one connection: a frame
// it inspects, or its minimum read buffer.
func maxGuardBuf(lim guardLimits) int { return max(16<<10, frameHeaderLen+lim.maxFrame) }

// A frame header costs the guard no more buffer than the largest frame it
// inspects, whatever length it claims: a padded DATA frame announcing
// 16 MiB, from a client that then sends nothing more, allocated 16 MiB.
func TestFrameGuardBufferBounded(t *testing.T) {
	for _, tc := range []struct {
		name        string
		typ, flags  byte
		declaredLen int
	}{
		{"padded DATA of 16 MiB", 0x0, 0x8, 1<<24 - 1},
		{"padded DATA of 1 MiB", 0x0, 0x8, 1 << 20},
		{"HEADERS of 16 MiB", 0x1, 0x4, 1<<24 - 1},
		{"SETTINGS of 16 MiB", 0x4, 0, 1<<24 - 1},
		{"unknown type of 16 MiB", 0xfa, 0, 1<<24 - 1},
		{"HEADERS at the largest inspected size", 0x1, 0x4, 16 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := appendFrameHeader(nil, tc.declaredLen, tc.typ, tc.flags, 1)
			// The header alone first (the guard waits on it), then a
			// few bytes of payload.
			c := &guardConn{r: io.MultiReader(bytes.NewReader(in), bytes.NewReader([]byte{7, 0, 0, 0}))}
			g := c.guard(testGuardLimits)
			buf := make([]byte, 4096)
			for range 8 {
				if _, err := g.Read(buf); err != nil {
					break
				}
			}
			if got, lim := cap(g.buf), maxGuardBuf(testGuardLimits); got > lim {
				t.Errorf("the guard's buffer grew to %d bytes for a %d-byte frame header (at most %d)", got, len(in), lim)
			}
		})
	}
}

// frameWalk is how many whole frames b holds from its start, and whether
// they end exactly at its end.
func frameWalk(b []byte) (frames int, exact bool) {
	for len(b) >= frameHeaderLen {
		n := frameHeaderLen + (int(b[0])<<16 | int(b[1])<<8 | int(b[2]))
		if n > len(b) {
			return frames, false
		}
		b = b[n:]
		frames++
	}
	return frames, len(b) == 0
}

// FuzzFrameGuard runs any bytes a client may send after the preface
// through the HTTP/2 frame guard, as the server would read them. The guard
// must not panic or loop, must hold no more than one inspected frame of
// the client's, and must keep the framing: input made of whole frames
// comes out as whole frames (a frame cut or merged would desynchronize
// the server from the client), at most one marker CONTINUATION more per
// header block.
func FuzzFrameGuard(f *testing.F) {
	for _, seed := range guardSeeds(f) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		out, g := guardRead(t, input)
		if got, lim := cap(g.buf), maxGuardBuf(g.lim); got > lim {
			t.Fatalf("the guard's buffer grew to %d bytes (at most %d)", got, lim)
		}
		inFrames, inExact := frameWalk(input)
		outFrames, outExact := frameWalk(out)
		if inExact && !outExact {
			t.Fatalf("whole frames in (%d), not whole frames out (%d bytes: %x)", inFrames, len(out), out)
		}
		if outFrames > 2*inFrames {
			t.Fatalf("%d frames out of %d in", outFrames, inFrames)
		}
		if len(out) > len(input)+outFrames*(frameHeaderLen+len(malformedMarker)) {
			t.Fatalf("%d bytes out of %d in", len(out), len(input))
		}
	})
}

// guardSeeds are frame sequences a client sends, well-formed and not:
// requests, a malformed header block, repeated settings, padding, resets,
// floods of frames that do no work, lengths past the maximum.
func guardSeeds(t testing.TB) [][]byte {
	var seeds [][]byte
	frames := func(write func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer)) {
		var b, hb bytes.Buffer
		fr := http2.NewFramer(&b, nil)
		fr.AllowIllegalWrites = true
		write(fr, hpack.NewEncoder(&hb), &hb)
		seeds = append(seeds, b.Bytes())
	}
	block := func(enc *hpack.Encoder, hb *bytes.Buffer, kv ...string) []byte {
		hb.Reset()
		for i := 0; i+1 < len(kv); i += 2 {
			if err := enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]}); err != nil {
				t.Fatal(err)
			}
		}
		return append([]byte(nil), hb.Bytes()...)
	}
	get := []string{":method", "GET", ":scheme", "http", ":authority", "a", ":path", "/"}
	frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(enc, hb, get...), EndStream: true, EndHeaders: true})
		_ = fr.WriteWindowUpdate(0, 1<<20)
	})
	frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		b := block(enc, hb, append(get, "connection", "close", "te", "gzip")...)
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:3], EndStream: true})
		_ = fr.WriteContinuation(1, false, b[3:5])
		_ = fr.WriteContinuation(1, true, b[5:])
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block(enc, hb, append(get, "content-length", "1x")...), EndHeaders: true, PadLength: 5})
	})
	frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 15}, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 14}, http2.Setting{ID: 0x77, Val: 1})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(enc, hb, append(get, "content-length", "4")...), EndHeaders: true})
		_ = fr.WriteDataPadded(1, false, []byte("ab"), make([]byte, 10))
		_ = fr.WriteDataPadded(1, false, nil, make([]byte, 3))
		_ = fr.WriteData(1, true, []byte("cd"))
	})
	frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		for i := uint32(1); i < 2*260; i += 2 {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: i, BlockFragment: block(enc, hb, get...), EndHeaders: true})
			_ = fr.WriteRSTStream(i, http2.ErrCodeCancel)
		}
	})
	frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		for range 300 {
			_ = fr.WritePing(false, [8]byte{1})
		}
		for range 300 {
			_ = fr.WriteData(1, false, nil)
		}
	})
	// Headers claiming the largest lengths, with nothing after them.
	for _, typ := range []byte{0x0, 0x1, 0x4, 0x9, 0xff} {
		seeds = append(seeds, appendFrameHeader(nil, 1<<24-1, typ, 0x8|0x4, 1))
	}
	seeds = append(seeds, binary.BigEndian.AppendUint32(appendFrameHeader(nil, 4, 0x3, 0, 1), 1))
	return seeds
}

// Frames the server must answer by resetting the stream — a
// WINDOW_UPDATE of 0, DATA on a stream the client ended or on one it
// skipped — make it reset every
// stream ("MadeYouReset"); the guard counts each as it reads it, so the
// connection is closed at the limit, not when the server's resets,
// written in batches, catch up a few hundred streams later. Here no
// server writes any: the streams passed on before the GOAWAY are the
// limit's, give or take a step. A client that sends its bodies as it
// should is never counted.
func TestFrameGuardForeseesResets(t *testing.T) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "a"}, {":path", "/"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	const streams = 400
	cases := []struct {
		name   string
		stream func(fr *http2.Framer, id uint32)
		abuse  bool
	}{
		{"window-update-0", func(fr *http2.Framer, id uint32) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
			_ = fr.WriteRawFrame(http2.FrameWindowUpdate, 0, id, []byte{0, 0, 0, 0})
		}, true},
		{"data-after-end", func(fr *http2.Framer, id uint32) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
			_ = fr.WriteData(id, false, []byte("x"))
		}, true},
		{"data-after-data-end", func(fr *http2.Framer, id uint32) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
			_ = fr.WriteData(id, true, []byte("body"))
			_ = fr.WriteData(id, false, []byte("x"))
		}, true},
		{"data-on-skipped", func(fr *http2.Framer, id uint32) {
			// Opens id+2 with id skipped (closed), then sends on id.
			if id%4 == 1 {
				_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id + 2, BlockFragment: hb.Bytes(), EndHeaders: true})
				_ = fr.WriteData(id, false, []byte("x"))
			}
		}, true},
		{"well-behaved", func(fr *http2.Framer, id uint32) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
			_ = fr.WriteData(id, false, []byte("body"))
			_ = fr.WriteData(id, true, []byte("end"))
			_ = fr.WritePriority(id, http2.PriorityParam{Weight: 15})
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var frames bytes.Buffer
			fr := http2.NewFramer(&frames, nil)
			for id := uint32(1); id < 2*streams; id += 2 {
				tc.stream(fr, id)
			}
			lim := testGuardLimits
			lim.maxResets = 50
			var abused int
			lim.onAbuse = func(net.Conn, int, int) { abused++ }
			c := &guardConn{r: bytes.NewReader(frames.Bytes())}
			g := newFrameGuard(c, lim, true).(*frameGuard)
			var out []byte
			buf := make([]byte, 4096)
			for {
				n, err := g.Read(buf)
				out = append(out, buf[:n]...)
				if err != nil {
					break
				}
			}
			passed := 0
			for b := out; len(b) >= frameHeaderLen; {
				n := frameHeaderLen + (int(b[0])<<16 | int(b[1])<<8 | int(b[2]))
				if b[3] == frameHeaders {
					passed++
				}
				b = b[min(n, len(b)):]
			}
			switch {
			case !tc.abuse && (abused != 0 || g.foreseen.Load() != 0):
				t.Errorf("closed for abuse %d times, %d resets foreseen; want none", abused, g.foreseen.Load())
			case tc.abuse && (abused != 1 || passed > lim.maxResets+stepStreams):
				t.Errorf("%d streams passed on, closed for abuse %d times; want at most %d and closed once", passed, abused, lim.maxResets+stepStreams)
			}
		})
	}
	// And the server's own PROTOCOL_ERROR resets for them are not
	// counted twice.
	g2 := newFrameGuard(&guardConn{r: bytes.NewReader(nil)}, testGuardLimits, true).(*frameGuard)
	g2.foreseen.Store(2)
	g2.made.Store(2)
	g2.serverReset(errCodeProtocol)
	g2.serverReset(errCodeProtocol)
	g2.serverReset(errCodeProtocol)
	if f, m := g2.foreseen.Load(), g2.made.Load(); f != 0 || m != 3 {
		t.Errorf("after 3 server resets for 2 foreseen: foreseen %d, made %d; want 0 and 3", f, m)
	}
	// Nor those for DATA after the end (STREAM_CLOSED).
	g2.foreseen.Store(2)
	g2.serverReset(errCodeStreamClosed)
	g2.serverReset(errCodeStreamClosed)
	if f, m := g2.foreseen.Load(), g2.made.Load(); f != 0 || m != 3 {
		t.Errorf("after 2 more server resets for 2 foreseen: foreseen %d, made %d; want 0 and 3", f, m)
	}
}

func TestStreamWindow(t *testing.T) {
	var w streamWindow
	if w.ended(1) {
		t.Error("stream 1 ended before it was opened")
	}
	w.open(1, false)
	w.open(3, true)
	w.open(9, false) // 5 and 7 skipped: closed
	for id, want := range map[uint32]bool{1: false, 3: true, 5: true, 7: true, 9: false, 11: false, 2: false} {
		if got := w.ended(id); got != want {
			t.Errorf("ended(%d) = %v, want %v", id, got, want)
		}
	}
	w.end(1)
	w.end(11) // not opened: nothing
	w.open(11, false)
	if !w.ended(1) || w.ended(11) {
		t.Errorf("after end(1), open(11): ended(1) %v, ended(11) %v", w.ended(1), w.ended(11))
	}
	// Far past the window: the old streams are forgotten (not ended),
	// those skipped within the window are closed, the new one live.
	far := uint32(2*(streamWindowSize+50) + 1)
	w.open(far, false)
	if w.ended(1) || w.ended(9) || !w.ended(far-2) || !w.ended(far-2*(streamWindowSize-1)) || w.ended(far) {
		t.Errorf("after opening %d: ended(1) %v, ended(9) %v, ended(%d) %v, ended(%d) %v, ended(%d) %v",
			far, w.ended(1), w.ended(9), far-2, w.ended(far-2), far-2*(streamWindowSize-1), w.ended(far-2*(streamWindowSize-1)), far, w.ended(far))
	}
	// A stream opened long ago is unknown, not ended.
	w2 := streamWindow{}
	w2.open(1, false)
	for id := uint32(3); id < 2*streamWindowSize+10; id += 2 {
		w2.open(id, true)
	}
	if w2.ended(1) {
		t.Error("a stream older than the window reported ended")
	}
}
