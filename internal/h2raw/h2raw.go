// Package h2raw is a minimal HTTP/2 prior-knowledge client that writes
// frames by hand, for tests that must send what no well-behaved client
// library would: pseudo-headers with spaces, HEADERS followed at once by
// RST_STREAM, frames out of order. The proxy's unit tests and the e2e
// suite share it. Test-only: every failure ends the test.
package h2raw

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"
)

// Frame types and flags (RFC 9113 section 6) the tests use.
const (
	FrameData         = 0x0
	FrameHeaders      = 0x1
	FrameRSTStream    = 0x3
	FrameSettings     = 0x4
	FramePing         = 0x6
	FrameGoAway       = 0x7
	FrameWindowUpdate = 0x8

	FlagEndStream  = 0x1
	FlagAck        = 0x1
	FlagEndHeaders = 0x4

	// CodeCancel is RST_STREAM's CANCEL error code.
	CodeCancel = 0x8
)

// Conn is one HTTP/2 connection driven frame by frame.
type Conn struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
	hb bytes.Buffer
	he *hpack.Encoder
	hd *hpack.Decoder
}

// Dial connects to addr and starts HTTP/2 with prior knowledge; the
// connection is closed by the test's cleanup.
func Dial(t testing.TB, addr string) *Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return New(t, c)
}

// New sends the connection preface and an empty SETTINGS on c. Every read
// and write must be done within 20 s.
func New(t testing.TB, c net.Conn) *Conn {
	h := &Conn{t: t, c: c, br: bufio.NewReader(c)}
	h.he = hpack.NewEncoder(&h.hb)
	h.hd = hpack.NewDecoder(4096, nil)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	h.Frame(FrameSettings, 0, 0, nil)
	return h
}

// Frame writes one frame as given.
func (h *Conn) Frame(typ, flags byte, stream uint32, payload []byte) {
	var hdr [9]byte
	hdr[0], hdr[1], hdr[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	hdr[3], hdr[4] = typ, flags
	binary.BigEndian.PutUint32(hdr[5:], stream&0x7fffffff)
	if _, err := h.c.Write(append(hdr[:], payload...)); err != nil {
		h.t.Fatalf("h2 write: %v", err)
	}
}

// Headers sends a request's HEADERS (END_STREAM when endStream) with
// fields as name, value pairs in order, pseudo-headers first as given.
func (h *Conn) Headers(stream uint32, endStream bool, fields ...string) {
	h.hb.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		h.he.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	flags := byte(FlagEndHeaders)
	if endStream {
		flags |= FlagEndStream
	}
	h.Frame(FrameHeaders, flags, stream, append([]byte(nil), h.hb.Bytes()...))
}

// RST resets stream with code.
func (h *Conn) RST(stream uint32, code uint32) {
	var p [4]byte
	binary.BigEndian.PutUint32(p[:], code)
	h.Frame(FrameRSTStream, 0, stream, p[:])
}

// Event is what came back: a response status on a stream, a reset, or the
// connection's end (GOAWAY or EOF).
type Event struct {
	Stream uint32
	Status string // :status of a response HEADERS
	RST    bool
	GoAway bool
	EOF    bool
}

// ReadFrame reads the next frame as it is, answering nothing.
func (h *Conn) ReadFrame() (typ, flags byte, stream uint32, payload []byte, err error) {
	var hdr [9]byte
	if _, err := io.ReadFull(h.br, hdr[:]); err != nil {
		return 0, 0, 0, nil, err
	}
	n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
	payload = make([]byte, n)
	if _, err := io.ReadFull(h.br, payload); err != nil {
		return 0, 0, 0, nil, err
	}
	return hdr[3], hdr[4], binary.BigEndian.Uint32(hdr[5:]) & 0x7fffffff, payload, nil
}

// Next reads frames until one of interest, answering SETTINGS and PING
// and giving DATA's flow-control window back so responses keep flowing.
func (h *Conn) Next() Event {
	for {
		typ, flags, stream, p, err := h.ReadFrame()
		if err != nil {
			return Event{EOF: true}
		}
		n := len(p)
		switch typ {
		case FrameSettings:
			if flags&FlagAck == 0 {
				h.Frame(FrameSettings, FlagAck, 0, nil)
			}
		case FramePing:
			if flags&FlagAck == 0 {
				h.Frame(FramePing, FlagAck, 0, p)
			}
		case FrameGoAway:
			return Event{GoAway: true}
		case FrameRSTStream:
			return Event{Stream: stream, RST: true}
		case FrameHeaders:
			fs, err := h.hd.DecodeFull(p)
			if err != nil {
				h.t.Fatalf("hpack: %v", err)
			}
			for _, f := range fs {
				if f.Name == ":status" {
					return Event{Stream: stream, Status: f.Value}
				}
			}
		case FrameData:
			if n > 0 {
				var w [4]byte
				binary.BigEndian.PutUint32(w[:], uint32(n))
				h.Frame(FrameWindowUpdate, 0, 0, w[:])
				h.Frame(FrameWindowUpdate, 0, stream, w[:])
			}
		}
	}
}

// Response waits for the status (or reset) of stream, or the connection's
// end.
func (h *Conn) Response(stream uint32) Event {
	for {
		ev := h.Next()
		if ev.EOF || ev.GoAway || ev.Stream == stream {
			return ev
		}
	}
}

func (ev Event) String() string {
	switch {
	case ev.EOF:
		return "connection closed"
	case ev.GoAway:
		return "GOAWAY"
	case ev.RST:
		return fmt.Sprintf("RST_STREAM on %d", ev.Stream)
	}
	return "status " + ev.Status
}
