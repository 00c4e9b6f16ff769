package proxy

import (
	"bytes"
	"net"
	"strconv"
	"strings"
	"sync"
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
	bufs      *sync.Pool // *[]byte of framingBufSize, shared by the connections
}

// framingBufSize is the size of one read from a client connection.
const framingBufSize = 8 << 10

func newFramingListener(l net.Listener, maxHeader int) framingListener {
	return framingListener{Listener: l, maxHeader: maxHeader, bufs: &sync.Pool{
		New: func() any { b := make([]byte, framingBufSize); return &b },
	}}
}

func (l framingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &framingConn{Conn: c, max: l.maxHeader + 4096, bufs: l.bufs}, nil
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
	bufs  *sync.Pool
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
	for len(c.out) == 0 {
		// The read buffer is borrowed for one read: feed copies what it
		// keeps, so a connection holds none between reads.
		bp := c.bufs.Get().(*[]byte)
		n, err := c.Conn.Read(*bp)
		c.feed((*bp)[:n])
		c.bufs.Put(bp)
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
// is ambiguous, and sets the state for its body. It allocates nothing for
// an ordinary request.
func (c *framingConn) header(block []byte) {
	first := true
	clOff := -1 // offset of the first Content-Length line in block
	clCount := 0
	var cl0 []byte    // the first Content-Length value
	var teLast []byte // the last transfer coding
	teCount := 0
	upgrade := false
	for off := 0; off < len(block); {
		end := bytes.IndexByte(block[off:], '\n')
		if end < 0 {
			end = len(block)
		} else {
			end += off
		}
		lineOff := off
		l := bytes.TrimRight(block[off:end], "\r")
		off = end + 1
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
		name = bytes.TrimSpace(name)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if clOff < 0 {
				clOff = lineOff
				cl0 = bytes.TrimSpace(value)
			}
			clCount++
		case bytes.EqualFold(name, []byte("Upgrade")):
			// What follows a switch of protocols is not HTTP: stop here.
			upgrade = true
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			for len(value) > 0 {
				var v []byte
				v, value, _ = bytes.Cut(value, []byte(","))
				if v = bytes.TrimSpace(v); len(v) > 0 {
					teLast = v
					teCount++
				}
			}
		}
	}
	if upgrade && clCount == 0 && teCount == 0 {
		c.state = fPass
		return
	}
	switch {
	case clCount > 0 && teCount > 0:
		// Ambiguous: make the server refuse it (400) and stop here; the
		// server closes the connection.
		if j := bytes.IndexByte(block[clOff:], ':'); j >= 0 {
			block[clOff+j] = ' '
		}
		c.state = fPass
	case teCount > 0:
		if !bytes.EqualFold(teLast, []byte("chunked")) {
			c.state = fPass // the server answers 501
			return
		}
		c.state = fChunkSize
	case clCount > 0:
		n, ok := parseDecimal(cl0)
		if !ok {
			c.state = fPass // the server answers 400
			return
		}
		if n > 0 {
			c.state, c.n = fBody, n
		}
	}
}

// parseDecimal parses a Content-Length value (digits only, as
// strconv.ParseInt would accept them for a non-negative number).
func parseDecimal(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		if len(b) > 18 {
			n, err := strconv.ParseInt(string(b), 10, 64)
			return n, err == nil && n >= 0
		}
		return 0, false
	}
	var n int64
	for _, d := range b {
		if d < '0' || d > '9' {
			n, err := strconv.ParseInt(string(b), 10, 64)
			return n, err == nil && n >= 0
		}
		n = n*10 + int64(d-'0')
	}
	return n, true
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
