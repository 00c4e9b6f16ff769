package proxy

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

// h2raw is a minimal HTTP/2 prior-knowledge client writing frames by
// hand, so a test can send what no well-behaved client library would:
// pseudo-headers with spaces, HEADERS followed at once by RST_STREAM.
type h2raw struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
	hb bytes.Buffer
	he *hpack.Encoder
	hd *hpack.Decoder
}

const (
	h2Data         = 0x0
	h2Headers      = 0x1
	h2RSTStream    = 0x3
	h2Settings     = 0x4
	h2Ping         = 0x6
	h2GoAway       = 0x7
	h2WindowUpdate = 0x8
	h2FlagEndStr   = 0x1
	h2FlagAck      = 0x1
	h2FlagEndHdrs  = 0x4
)

func dialH2(t *testing.T, addr string) *h2raw {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return newH2raw(t, c)
}

func newH2raw(t *testing.T, c net.Conn) *h2raw {
	h := &h2raw{t: t, c: c, br: bufio.NewReader(c)}
	h.he = hpack.NewEncoder(&h.hb)
	h.hd = hpack.NewDecoder(4096, nil)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	h.frame(h2Settings, 0, 0, nil)
	return h
}

func (h *h2raw) frame(typ, flags byte, stream uint32, payload []byte) {
	var hdr [9]byte
	hdr[0], hdr[1], hdr[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	hdr[3], hdr[4] = typ, flags
	binary.BigEndian.PutUint32(hdr[5:], stream&0x7fffffff)
	if _, err := h.c.Write(append(hdr[:], payload...)); err != nil {
		h.t.Fatalf("h2 write: %v", err)
	}
}

// headers sends a request's HEADERS (END_STREAM when endStream) with
// fields in order, pseudo-headers first as given.
func (h *h2raw) headers(stream uint32, endStream bool, fields ...string) {
	h.hb.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		h.he.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	flags := byte(h2FlagEndHdrs)
	if endStream {
		flags |= h2FlagEndStr
	}
	h.frame(h2Headers, flags, stream, append([]byte(nil), h.hb.Bytes()...))
}

func (h *h2raw) rst(stream uint32, code uint32) {
	var p [4]byte
	binary.BigEndian.PutUint32(p[:], code)
	h.frame(h2RSTStream, 0, stream, p[:])
}

// h2Event is what came back on a stream: a response status, a reset, or
// the connection's end (GOAWAY or EOF).
type h2Event struct {
	stream uint32
	status string // :status of a response HEADERS
	rst    bool
	goaway bool
	eof    bool
}

// next reads frames until one of interest (answering SETTINGS and PING).
func (h *h2raw) next() h2Event {
	for {
		var hdr [9]byte
		if _, err := io.ReadFull(h.br, hdr[:]); err != nil {
			return h2Event{eof: true}
		}
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		typ, flags := hdr[3], hdr[4]
		stream := binary.BigEndian.Uint32(hdr[5:]) & 0x7fffffff
		p := make([]byte, n)
		if _, err := io.ReadFull(h.br, p); err != nil {
			return h2Event{eof: true}
		}
		switch typ {
		case h2Settings:
			if flags&h2FlagAck == 0 {
				h.frame(h2Settings, h2FlagAck, 0, nil)
			}
		case h2Ping:
			if flags&h2FlagAck == 0 {
				h.frame(h2Ping, h2FlagAck, 0, p)
			}
		case h2GoAway:
			return h2Event{goaway: true}
		case h2RSTStream:
			return h2Event{stream: stream, rst: true}
		case h2Headers:
			fs, err := h.hd.DecodeFull(p)
			if err != nil {
				h.t.Fatalf("hpack: %v", err)
			}
			for _, f := range fs {
				if f.Name == ":status" {
					return h2Event{stream: stream, status: f.Value}
				}
			}
		case h2Data:
			if n > 0 {
				// Give the window back so responses keep flowing.
				var w [4]byte
				binary.BigEndian.PutUint32(w[:], uint32(n))
				h.frame(h2WindowUpdate, 0, 0, w[:])
				h.frame(h2WindowUpdate, 0, stream, w[:])
			}
		}
	}
}

// response waits for the status (or reset) of stream.
func (h *h2raw) response(stream uint32) h2Event {
	for {
		ev := h.next()
		if ev.eof || ev.goaway || ev.stream == stream {
			return ev
		}
	}
}

func (ev h2Event) String() string {
	switch {
	case ev.eof:
		return "connection closed"
	case ev.goaway:
		return "GOAWAY"
	case ev.rst:
		return fmt.Sprintf("RST_STREAM on %d", ev.stream)
	}
	return "status " + ev.status
}
