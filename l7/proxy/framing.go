package proxy

import (
	"bytes"
	"net"
	"strconv"
	"strings"
)

// Request framing guard.
//
// Go's HTTP/1 server accepts a request carrying both Content-Length and
// Transfer-Encoding (it drops Content-Length, RFC 9112 6.3). Such a request is
// a request-smuggling attempt or a broken client, and sluice refuses it with
// 400 instead: framingConn follows the framing of the plain-text HTTP/1
// requests on a client connection and, when a header block has both fields,
// breaks its Content-Length line (":" becomes " ") before the server parses
// it, so the server answers 400 and closes the connection. Only header
// blocks are held back (until complete); bodies stream through. Whatever it
// cannot follow (HTTP/2 prior knowledge, a framing error, a header too large)
// it stops inspecting and passes through: the server's own checks apply.
// TLS connections are not wrapped (the server must see *tls.Conn for ALPN);
// there, Go's rule applies (Content-Length dropped, chunked wins), which is
// safe because sluice re-frames every request it forwards.

type framingListener struct {
	net.Listener
	maxHeader int
}

func (l framingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &framingConn{Conn: c, max: l.maxHeader + 4096}, nil
}

type fstate uint8

const (
	fHeader    fstate = iota // collecting a header block
	fBody                    // n body bytes to pass
	fChunkSize               // collecting a chunk-size line
	fChunkData               // n chunk bytes to pass
	fChunkCRLF               // the line end after chunk data
	fTrailer                 // trailer lines until an empty one
	fPass                    // not following any more
)

type framingConn struct {
	net.Conn
	max   int
	state fstate
	n     int64  // bytes left in fBody / fChunkData
	line  []byte // partial header block or line
	out   []byte // bytes ready for the server
	spare []byte // out's backing array, reused once out is drained
	buf   []byte
	err   error
}

// passThrough stops inspecting (the connection was taken over).
func (c *framingConn) passThrough() {
	c.out = append(c.out, c.line...)
	c.line = nil
	c.state = fPass
}

// CloseWrite lets the server half-close like on a *net.TCPConn.
func (c *framingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *framingConn) Read(p []byte) (int, error) {
	if len(c.out) == 0 && c.err != nil {
		// Errors are not sticky: the server interrupts its background
		// read with a past deadline and then reads on.
		err := c.err
		c.err = nil
		return 0, err
	}
	if c.buf == nil {
		c.buf = make([]byte, 8<<10)
	}
	for len(c.out) == 0 {
		n, err := c.Conn.Read(c.buf)
		c.feed(c.buf[:n])
		if err != nil {
			if len(c.out) == 0 {
				return 0, err
			}
			c.err = err // after the bytes already there
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	if len(c.out) == 0 {
		c.out = c.spare[:0]
	}
	return n, nil
}

func (c *framingConn) pass(b []byte) {
	c.out = append(c.out, b...)
	if cap(c.out) <= 64<<10 {
		c.spare = c.out[:0]
	}
}

// feed runs the framing state machine over b.
func (c *framingConn) feed(b []byte) {
	for len(b) > 0 {
		switch c.state {
		case fPass:
			c.pass(b)
			return
		case fBody, fChunkData:
			k := int64(len(b))
			if k > c.n {
				k = c.n
			}
			c.pass(b[:k])
			b = b[k:]
			c.n -= k
			if c.n == 0 {
				if c.state == fBody {
					c.state = fHeader
				} else {
					c.state = fChunkCRLF
				}
			}
		case fHeader:
			c.line = append(c.line, b...)
			b = nil
			end := headerEnd(c.line)
			if end < 0 {
				if len(c.line) > c.max {
					c.pass(c.line)
					c.line = nil
					c.state = fPass
				}
				continue
			}
			block, rest := c.line[:end], c.line[end:]
			c.line = nil
			c.header(block)
			c.pass(block)
			b = rest
		default: // line-based chunk states
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				c.line = append(c.line, b...)
				c.pass(b)
				if len(c.line) > 4096 {
					c.state = fPass
				}
				return
			}
			c.line = append(c.line, b[:i+1]...)
			c.pass(b[:i+1])
			b = b[i+1:]
			c.chunkLine(strings.TrimRight(string(c.line), "\r\n"))
			c.line = c.line[:0]
		}
	}
}

// headerEnd returns the length of the header block at the start of b
// (through its empty line), or -1 when it is not complete.
func headerEnd(b []byte) int {
	// Leading empty lines before a request line are allowed (RFC 9112 2.2).
	start := 0
	for start < len(b) && (b[start] == '\r' || b[start] == '\n') {
		start++
	}
	for i := start; i < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		switch {
		case i+1 < len(b) && b[i+1] == '\n':
			return i + 2
		case i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n':
			return i + 3
		}
	}
	return -1
}

// header inspects one complete header block, breaks it when its framing
// is ambiguous, and sets the state for its body.
func (c *framingConn) header(block []byte) {
	lines := bytes.Split(block, []byte("\n"))
	first := true
	clLine := -1
	var cl []string
	var te []string
	upgrade := false
	for i, l := range lines {
		l = bytes.TrimRight(l, "\r")
		if len(l) == 0 {
			continue
		}
		if first {
			first = false
			if bytes.HasPrefix(l, []byte("PRI * HTTP/2")) {
				c.state = fPass
				return
			}
			continue
		}
		name, value, ok := bytes.Cut(l, []byte(":"))
		if !ok {
			continue // the server refuses it
		}
		switch strings.ToLower(string(bytes.TrimSpace(name))) {
		case "content-length":
			if clLine < 0 {
				clLine = i
			}
			cl = append(cl, string(bytes.TrimSpace(value)))
		case "upgrade":
			// What follows a switch of protocols is not HTTP: stop here.
			upgrade = true
		case "transfer-encoding":
			for v := range strings.SplitSeq(string(value), ",") {
				if v = strings.TrimSpace(v); v != "" {
					te = append(te, strings.ToLower(v))
				}
			}
		}
	}
	if upgrade && len(cl) == 0 && len(te) == 0 {
		c.state = fPass
		return
	}
	switch {
	case len(cl) > 0 && len(te) > 0:
		// Ambiguous: make the server refuse it (400) and stop here; the
		// server closes the connection.
		off := 0
		for _, l := range lines[:clLine] {
			off += len(l) + 1
		}
		if j := bytes.IndexByte(block[off:], ':'); j >= 0 {
			block[off+j] = ' '
		}
		c.state = fPass
	case len(te) > 0:
		if te[len(te)-1] != "chunked" {
			c.state = fPass // the server answers 501
			return
		}
		c.state = fChunkSize
	case len(cl) > 0:
		n, err := strconv.ParseInt(cl[0], 10, 64)
		if err != nil || n < 0 {
			c.state = fPass // the server answers 400
			return
		}
		if n > 0 {
			c.state, c.n = fBody, n
		}
	}
}

// chunkLine handles one line in a chunked body.
func (c *framingConn) chunkLine(l string) {
	switch c.state {
	case fChunkSize:
		size, _, _ := strings.Cut(l, ";")
		n, err := strconv.ParseInt(strings.TrimSpace(size), 16, 64)
		switch {
		case err != nil || n < 0:
			c.state = fPass
		case n == 0:
			c.state = fTrailer
		default:
			c.state, c.n = fChunkData, n
		}
	case fChunkCRLF:
		if l != "" {
			c.state = fPass
			return
		}
		c.state = fChunkSize
	case fTrailer:
		if l == "" {
			c.state = fHeader
		}
	}
}
