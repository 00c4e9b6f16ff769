package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
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

// paced is r's body as a request reads it from its client: each read must
// come within client.body_timeout, and past that grace the body must keep
// an average of client.body_min_rate bytes a second of the time sluice
// waited for it (Apache's mod_reqtimeout body=20,MinRate=500; nginx's
// client_body_timeout is the first half). Only the waits on the client
// count: a backend that reads slowly holds sluice's reads back without
// the client losing its allowance. A client past it gets 408 (the body's
// read fails with a timeout). settable: the connection takes read
// deadlines (else the body is returned as it is; timeouts.total alone
// bounds it then).
func (s *Server) paced(w http.ResponseWriter, body io.Reader, total time.Time, settable bool) io.Reader {
	if !settable || body == nil || body == http.NoBody {
		return body
	}
	return &pacedBody{r: body, w: w, total: total, set: total,
		idle: s.limits.BodyTimeout, rate: max(s.limits.BodyMinRate, 0)}
}

// pacedBody is a request body read under client.body_timeout and
// body_min_rate (see Server.paced).
type pacedBody struct {
	r      io.Reader
	w      http.ResponseWriter
	idle   time.Duration
	rate   int64     // bytes a second; 0: no rate
	total  time.Time // the request's deadline
	set    time.Time // the read deadline on the connection
	read   int64
	waited time.Duration
}

// paceSlack is how far the read deadline may be from the exact one before
// it is moved: a deadline is set a few times a second at most, however
// small the reads.
const paceSlack = 100 * time.Millisecond

func (p *pacedBody) Read(b []byte) (int, error) {
	now := time.Now()
	allow := p.idle
	if p.rate > 0 {
		// The grace, and a second for every rate bytes read, less the
		// waits so far.
		earned := p.idle + time.Duration(float64(p.read)/float64(p.rate)*float64(time.Second)) - p.waited
		allow = min(allow, earned)
	}
	dl := now.Add(allow)
	byTotal := !dl.Before(p.total)
	if byTotal {
		dl = p.total
	}
	if d := dl.Sub(p.set); d > paceSlack || d < -paceSlack {
		if setReadDeadline(p.w, dl) == nil {
			p.set = dl
		}
	}
	n, err := p.r.Read(b)
	p.waited += time.Since(now)
	p.read += int64(n)
	if err != nil && !byTotal && isTimeout(err) {
		err = fmt.Errorf("%w: the client sent %d bytes of the request body in %s of waiting, slower than client.body_timeout (%s) and client.body_min_rate (%d bytes/s) allow",
			err, p.read, p.waited.Round(time.Millisecond), p.idle, p.rate)
	}
	return n, err
}
