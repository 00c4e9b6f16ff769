package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func TestFirstLine(t *testing.T) {
	for _, c := range []struct {
		in   string
		want lineKind
	}{
		{"", lineMore},
		{"GET / HTTP/1.1\r\n", lineHTTP},
		{"\r\nGET / HTTP/1.0\n", lineHTTP},
		{"GET / HTTP/1.1", lineMore},
		{"PRI * HTTP/2", lineMore},
		{"PRI * HTTP/2.0\r\n\r\nSM", lineHTTP},
		{"INVALID CONNECTION PREFACE\r\n\r\n", lineOther},
		{"GET /\r\n", lineOther},
		{"GET / HTTP/2.0\r\n", lineOther},
		{"GET / HTTP/1.x\r\n", lineOther},
	} {
		if got := firstLine([]byte(c.in)); got != c.want {
			t.Errorf("firstLine(%q) = %d, want %d", c.in, got, c.want)
		}
	}
}

func setting(id uint16, v uint32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint16(nil, id), v)
}

func TestNormalizeSettings(t *testing.T) {
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	for _, c := range []struct {
		name string
		in   []byte
		want []byte // nil: unchanged
	}{
		{"single", setting(4, 100), nil},
		{"distinct", cat(setting(4, 100), setting(3, 10)), nil},
		{"repeat keeps the last", cat(setting(4, 100), setting(3, 10), setting(4, 1)), cat(setting(3, 10), setting(4, 1))},
		{"unknown dropped", cat(setting(4, 100), setting(0x77, 1)), setting(4, 100)},
		{"invalid value left to the server", cat(setting(4, 1<<31), setting(4, 1)), nil},
		{"bad length", append(setting(4, 1), 0), nil},
	} {
		got, ok := normalizeSettings(c.in)
		if ok != (c.want != nil) || ok && !bytes.Equal(got, c.want) {
			t.Errorf("%s: got %x %v, want %x", c.name, got, ok, c.want)
		}
	}
}

// h2conn is a raw HTTP/2 client connection (prior knowledge).
type h2conn struct {
	t   *testing.T
	c   net.Conn
	fr  *http2.Framer
	enc *hpack.Encoder
	buf bytes.Buffer
}

func dialH2C(t *testing.T, url string) *h2conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	h := &h2conn{t: t, c: c}
	h.fr = http2.NewFramer(c, c)
	h.enc = hpack.NewEncoder(&h.buf)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := h.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *h2conn) headers(id uint32, end bool, fields ...string) {
	h.t.Helper()
	h.buf.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		_ = h.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.buf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		h.t.Fatal(err)
	}
}

// until reads frames until match returns true; it fails on a read error.
func (h *h2conn) until(what string, match func(http2.Frame) bool) {
	h.t.Helper()
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.t.Fatalf("waiting for %s: %v", what, err)
		}
		if match(f) {
			return
		}
	}
}

func getFields(path string, extra ...string) []string {
	return append([]string{":method", "GET", ":scheme", "http", ":authority", "example.test", ":path", path}, extra...)
}

func TestH2MalformedHeadersReset(t *testing.T) {
	b := newBackend(t, status(200))
	obs := &refusedObserver{}
	h := start(t, newPool(t, nil, b.addr), func(o *Options) { o.H2C = true; o.Observer = obs })
	c := dialH2C(t, h.url)
	for i, extra := range [][]string{
		{"connection", "keep-alive"},
		{"transfer-encoding", "chunked"},
		{"te", "gzip"},
		{"upgrade", "websocket"},
	} {
		id := uint32(2*i + 1)
		c.headers(id, true, getFields("/", extra...)...)
		c.until("RST_STREAM", func(f http2.Frame) bool {
			switch f := f.(type) {
			case *http2.HeadersFrame:
				if f.StreamID == id {
					t.Fatalf("%v: answered with HEADERS, want RST_STREAM", extra)
				}
			case *http2.RSTStreamFrame:
				if f.StreamID == id {
					if f.ErrCode != http2.ErrCodeProtocol {
						t.Errorf("%v: RST_STREAM %v", extra, f.ErrCode)
					}
					return true
				}
			}
			return false
		})
	}
	// Padded, with a priority, and split over CONTINUATION frames: the
	// same. The dynamic table is used too (indexed names from above).
	c.buf.Reset()
	fs := getFields("/split", "x-long", strings.Repeat("v", 300), "connection", "close")
	for i := 0; i+1 < len(fs); i += 2 {
		_ = c.enc.WriteField(hpack.HeaderField{Name: fs[i], Value: fs[i+1]})
	}
	block := c.buf.Bytes()
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 9, BlockFragment: block[:10], EndStream: true,
		PadLength: 7, Priority: http2.PriorityParam{StreamDep: 0, Weight: 3}}); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteContinuation(9, false, block[10:100]); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteContinuation(9, true, block[100:]); err != nil {
		t.Fatal(err)
	}
	c.until("RST_STREAM", func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.HeadersFrame:
			if f.StreamID == 9 {
				t.Fatal("split malformed block: answered with HEADERS, want RST_STREAM")
			}
		case *http2.RSTStreamFrame:
			return f.StreamID == 9 && f.ErrCode == http2.ErrCodeProtocol
		}
		return false
	})
	// The connection is still good, and its HPACK state too.
	c.headers(11, true, getFields("/ok", "te", "trailers", "x-long", strings.Repeat("v", 300))...)
	c.until("response", func(f http2.Frame) bool {
		hf, ok := f.(*http2.HeadersFrame)
		return ok && hf.StreamID == 11
	})
	if n := b.count.Load(); n != 1 {
		t.Errorf("backend saw %d requests, want 1 (only the valid one)", n)
	}
	if n := obs.count(limitH2Malformed); n != 5 {
		t.Errorf("refused{h2_malformed} = %d, want 5", n)
	}
}

// Rapid reset: a client that opens streams and has them reset at once
// gets GOAWAY ENHANCE_YOUR_CALM past client.h2_max_reset_streams, whether
// it resets them itself (CVE-2023-44487) or makes the server reset them
// with a frame the server must answer with a stream error ("MadeYouReset",
// CVE-2025-8671: a WINDOW_UPDATE of 0, DATA on a stream the client
// ended); a well-behaved client is served afterwards.
func TestH2RapidResetGoAway(t *testing.T) {
	cases := []struct {
		name  string
		reset func(fr *http2.Framer, id uint32) error
	}{
		{"client-rst", func(fr *http2.Framer, id uint32) error { return fr.WriteRSTStream(id, http2.ErrCodeCancel) }},
		{"window-update-0", func(fr *http2.Framer, id uint32) error {
			return fr.WriteRawFrame(http2.FrameWindowUpdate, 0, id, []byte{0, 0, 0, 0})
		}},
		{"data-after-end", func(fr *http2.Framer, id uint32) error { return fr.WriteData(id, false, []byte("x")) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A slow answer: the server still has each stream when the
			// frame that makes it reset the stream comes (on a stream it
			// has closed already, DATA is a connection error instead).
			b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
				time.Sleep(100 * time.Millisecond)
			})
			obs := &refusedObserver{}
			h := start(t, newPool(t, nil, b.addr), func(o *Options) {
				o.H2C = true
				o.Client.H2MaxResetStreams = 50
				o.Observer = obs
			})
			c := dialH2C(t, h.url)
			done := make(chan error, 1)
			var serverResets, readEnded atomic.Int64
			go func() {
				// The server's resets are seen as it writes them, which
				// it does in batches: the GOAWAY comes a few hundred
				// streams past the limit. The flood stays at most 500
				// streams ahead of the resets read: a client that reads
				// nothing gets its connection closed by x/net alone
				// (too many queued control frames), not what this tests.
				for n, id := int64(0), uint32(1); id < 20000; n, id = n+1, id+2 {
					for tc.name != "client-rst" && n-serverResets.Load() > 500 && readEnded.Load() == 0 {
						time.Sleep(100 * time.Microsecond)
					}
					c.buf.Reset()
					for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "a"}, {":path", "/"}} {
						_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
					}
					if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.buf.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
						done <- err
						return
					}
					if err := tc.reset(c.fr, id); err != nil {
						done <- err
						return
					}
				}
				done <- nil
			}()
			// The server closes the connection: GOAWAY ENHANCE_YOUR_CALM
			// first. Its close may reset the connection before a client
			// that reads slowly (this one, while it floods) has read the
			// GOAWAY: the guard's count says why it was closed.
			var goAway *http2.GoAwayFrame
			resets := 0
			var readErr error
			for readErr == nil {
				var f http2.Frame
				if f, readErr = c.fr.ReadFrame(); readErr != nil {
					break
				}
				if _, ok := f.(*http2.RSTStreamFrame); ok {
					resets++
					serverResets.Add(1)
				}
				if g, ok := f.(*http2.GoAwayFrame); ok {
					goAway = g
				}
			}
			readEnded.Store(1)
			if errors.Is(readErr, os.ErrDeadlineExceeded) {
				t.Fatalf("connection not closed (%d streams reset by the server)", resets)
			}
			if goAway != nil && goAway.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Errorf("GOAWAY %v, want ENHANCE_YOUR_CALM", goAway.ErrCode)
			}
			if goAway == nil {
				t.Logf("closed (%v) before the GOAWAY was read, after %d streams reset by the server", readErr, resets)
			}
			<-done
			if n := obs.count(limitH2Resets); n != 1 {
				t.Errorf("refused{h2_resets} = %d, want 1", n)
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

func TestH2CGateClosesNonHTTP(t *testing.T) {
	b := newBackend(t, status(200))
	h := start(t, newPool(t, nil, b.addr), func(o *Options) { o.H2C = true })
	c, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "INVALID CONNECTION PREFACE\r\n\r\n")
	got, err := io.ReadAll(c)
	if len(got) != 0 {
		t.Errorf("answered %q, want the connection closed without an answer (%v)", got, err)
	}
	// HTTP/1.1 still works on the same listener.
	if resp, _ := h.do(t, "GET", "/", nil, nil); resp.StatusCode != 200 {
		t.Errorf("HTTP/1.1 on the h2c listener: %d", resp.StatusCode)
	}
}

// readConn is a net.Conn that reads from r and writes nowhere.
type readConn struct {
	net.Conn
	r io.Reader
}

func (c readConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c readConn) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkFrameGuardHeaders is the guard's cost per request header block
// (a browser-like GET, HPACK with the dynamic table in use): what reading
// HTTP/2 through the guard adds to each request.
func BenchmarkFrameGuardHeaders(b *testing.B) {
	var frames, hb bytes.Buffer
	fr := http2.NewFramer(&frames, nil)
	enc := hpack.NewEncoder(&hb)
	const n = 1000
	for i := range n {
		hb.Reset()
		fs := getFields("/static/app.js?v=1", "user-agent", "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0",
			"accept", "*/*", "accept-language", "en-US,en;q=0.5", "accept-encoding", "gzip, deflate, br",
			"referer", "https://example.test/", "cookie", "session=0123456789abcdef; theme=dark", "te", "trailers")
		for j := 0; j+1 < len(fs); j += 2 {
			_ = enc.WriteField(hpack.HeaderField{Name: fs[j], Value: fs[j+1]})
		}
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	}
	raw := frames.Bytes()
	buf := make([]byte, 32<<10)
	b.SetBytes(int64(len(raw) / n))
	b.ResetTimer()
	for i := 0; i < b.N; i += n {
		g := newFrameGuard(readConn{r: bytes.NewReader(raw)}, guardLimits{maxFrame: 16 << 10, maxResets: 200, maxHeaderStr: 64 << 10}, true)
		for {
			if _, err := g.Read(buf); err != nil {
				break
			}
		}
	}
}
