package proxy

import (
	"bytes"
	"errors"
	"io"
	"sync/atomic"
	"time"
)

// reqBody is a client's request body: its first bytes buffered for replay,
// the rest (if any) still unread on the client connection.
type reqBody struct {
	buf    []byte
	rest   io.Reader // nil when the whole body is in buf
	length int64     // total length, -1 when unknown
	// consumed: bytes beyond buf were read, the body cannot be produced
	// again (atomic: an HTTP/2 upstream's transport may still be reading
	// the body on its own goroutine after the response came).
	consumed  atomic.Bool
	clientErr error // reading from the client failed
	// read is the bytes read from the client: atomic, as an HTTP/2
	// upstream's transport reads a body past the buffer on its own
	// goroutine, possibly still when the request's access log line is
	// written.
	read atomic.Int64
	// stalled is the longest a read of the body past buf waited on the
	// client, in nanoseconds, once one waited clientStall or longer (0
	// before): see sparedClientStall.
	stalled atomic.Int64
	atEOF   func() // called once the whole body was read (may be nil)
}

// clientStall is how long the client's request body must have kept a try
// waiting, in one read, for a reset of the backend during it not to
// count against the backend: a backend's own body timeout is rarely
// shorter, and a client sending at its link's pace waits far less.
const clientStall = time.Second

// stalledFor is the longest the client's body kept a try waiting, when
// that was clientStall or longer (0 otherwise).
func (b *reqBody) stalledFor() time.Duration { return time.Duration(b.stalled.Load()) }

// errClientBody marks a failure to read the request body from the client.
var errClientBody = errors.New("reading the request body from the client")

// newReqBody reads up to limit bytes of body. contentLength is the
// request's (-1 unknown). atEOF, if set, is called once the whole body has
// been read from the client.
func newReqBody(body io.Reader, contentLength, limit int64, atEOF func()) (*reqBody, error) {
	b := &reqBody{}
	if err := b.init(body, contentLength, limit, atEOF); err != nil {
		return nil, err
	}
	return b, nil
}

// init is newReqBody on a zero reqBody.
func (b *reqBody) init(body io.Reader, contentLength, limit int64, atEOF func()) error {
	b.length, b.atEOF = contentLength, atEOF
	if body == nil || contentLength == 0 {
		b.length = 0
		return nil
	}
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(body, limit+1))
	b.read.Store(n)
	if err != nil {
		b.clientErr = err
		return errors.Join(errClientBody, err)
	}
	if n <= limit {
		b.buf = buf.Bytes()
		b.length = n
		b.eof()
		return nil
	}
	// Larger than the buffer: keep limit bytes, the extra byte goes first
	// in the rest.
	all := buf.Bytes()
	b.buf = all[:limit]
	b.rest = io.MultiReader(bytes.NewReader(all[limit:]), body)
	return nil
}

func (b *reqBody) empty() bool { return b.length == 0 }

func (b *reqBody) eof() {
	if b.atEOF != nil {
		b.atEOF()
		b.atEOF = nil
	}
}

// replayable is whether the body can be produced again for another try.
func (b *reqBody) replayable() bool { return !b.consumed.Load() }

// reader returns the body from its start for one try.
func (b *reqBody) reader() io.Reader {
	if b.rest == nil {
		return bytes.NewReader(b.buf)
	}
	return io.MultiReader(bytes.NewReader(b.buf), &restReader{b})
}

type restReader struct{ b *reqBody }

func (r *restReader) Read(p []byte) (int, error) {
	b := r.b
	t0 := time.Now()
	n, err := b.rest.Read(p)
	if d := time.Since(t0); d >= clientStall && int64(d) > b.stalled.Load() {
		b.stalled.Store(int64(d))
	}
	if n > 0 {
		b.consumed.Store(true)
		b.read.Add(int64(n))
	}
	if err == io.EOF {
		b.eof()
	} else if err != nil {
		b.clientErr = err
		return n, errors.Join(errClientBody, err)
	}
	return n, err
}
