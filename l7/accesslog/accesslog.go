// Package accesslog writes the L7 stage's access log: one JSON object per
// line per request (Record), with every try and why it was or was not
// retried. The encoder is hand-written (no reflection) and produces what
// slog's JSON handler would.
package accesslog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Logger writes one JSON object per line per request (see Record). The
// line is encoded by hand into a reused buffer, without reflection, by the
// request's goroutine; with a FlushInterval > 0 it is then appended to the
// batch waiting for the logger's own writer goroutine (under a short
// lock: a copy, no goroutine hand-off per line), and the writer writes
// the batch when it reaches its size, when FlushInterval has passed since
// its first line, on Flush and on Close; the writer is woken only for the
// first line of a batch and for a full one. A request never waits for the
// writer: when the batch is at its bound (the
// destination is slow, or a pipe nobody reads) the line is dropped and
// counted (Dropped, and the OnDrop hook). With FlushInterval <= 0 every
// line is written at once by the request's goroutine (for tests and tools;
// it waits for the writer). It is safe for concurrent use.
//
// The format is the one slog's JSON handler produced before (time, level,
// msg "access", then the fields of Record), so tools reading the log see
// no difference.
type Logger struct {
	every time.Duration
	limit int

	async   bool          // every > 0: lines go to the writer goroutine
	bmu     sync.Mutex    // batch, nlines, closed's transitions
	batch   []byte        // encoded lines waiting for the writer
	nlines  int           // lines in batch
	wake    chan struct{} // (1) a batch's first line or a full batch
	ctl     chan func()   // flush / swap requests, run by the writer goroutine
	stop    chan struct{}
	stopped chan struct{}
	closed  atomic.Bool
	dropped atomic.Uint64
	onDrop  atomic.Pointer[func(*Record)]
	onError atomic.Pointer[func(err error, lines int)]

	mu     sync.Mutex // the destination and its errors (writer side only)
	w      io.Writer
	err    error  // first write error since the last Close/Swap
	failed uint64 // lines lost to write errors

	lines  sync.Pool // *[]byte, one encoded line
	stamps stamps    // the text of the current second
}

// stamps writes times as time.RFC3339Nano does, the text of the date,
// the clock to the second and the zone made once per second (and zone)
// and kept: formatting the whole time for every line took a tenth of
// its encoding.
type stamps struct{ cur atomic.Pointer[stamp] }

// stamp is the text of one second in one zone.
type stamp struct {
	sec        int64
	loc        *time.Location
	head, zone string // "2006-01-02T15:04:05", "Z07:00"
}

// append writes t as t.AppendFormat(b, time.RFC3339Nano) does.
func (ts *stamps) append(b []byte, t time.Time) []byte {
	if ts == nil {
		return t.AppendFormat(b, time.RFC3339Nano)
	}
	sec, loc := t.Unix(), t.Location()
	st := ts.cur.Load()
	if st == nil || st.sec != sec || st.loc != loc {
		if y := t.Year(); y < 0 || y > 9999 {
			return t.AppendFormat(b, time.RFC3339Nano) // (not a time a request ends at)
		}
		st = &stamp{sec: sec, loc: loc, head: t.Format("2006-01-02T15:04:05"), zone: t.Format("Z07:00")}
		ts.cur.Store(st)
	}
	b = append(b, st.head...)
	if ns := t.Nanosecond(); ns != 0 {
		// ".999999999": nine digits, those ending in zeros dropped.
		var d [10]byte
		d[0] = '.'
		for i := 9; i >= 1; i-- {
			d[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for d[n-1] == '0' {
			n--
		}
		b = append(b, d[:n]...)
	}
	return append(b, st.zone...)
}

// Defaults of New.
const (
	DefaultFlush  = time.Second
	DefaultBuffer = 64 << 10
	// DefaultQueue is how many lines may wait for the writer before new
	// ones are dropped.
	DefaultQueue = 8192
	// maxQueueBytes bounds the bytes waiting likewise.
	maxQueueBytes = 16 << 20
)

// New returns an access log writing to w, batching lines for at most
// flushEvery (<= 0: every line is written at once, synchronously).
func New(w io.Writer, flushEvery time.Duration) *Logger {
	a := &Logger{w: w, every: flushEvery, limit: DefaultBuffer}
	a.lines.New = func() any { b := make([]byte, 0, 1024); return &b }
	if flushEvery > 0 {
		a.async = true
		a.wake = make(chan struct{}, 1)
		a.ctl = make(chan func())
		a.stop = make(chan struct{})
		a.stopped = make(chan struct{})
		go a.run()
	}
	return a
}

// SetOnDrop makes f be called (on the request's goroutine) for every line
// dropped because the writer was behind, e.g. to count it per service.
func (a *Logger) SetOnDrop(f func(*Record)) { a.onDrop.Store(&f) }

// SetOnWriteError makes f be called (on the writer's goroutine) for every
// failed write of the destination (a full disk, a pipe whose reader went
// away) with the error and the lines it lost, e.g. to count and report
// them at once rather than at the next Swap or Close.
func (a *Logger) SetOnWriteError(f func(err error, lines int)) { a.onError.Store(&f) }

// Dropped is the number of lines dropped because the writer was behind.
func (a *Logger) Dropped() uint64 { return a.dropped.Load() }

// Log writes rec as one line.
func (a *Logger) Log(rec *Record) {
	if a == nil {
		return
	}
	bp := a.lines.Get().(*[]byte)
	at := rec.End
	if at.IsZero() {
		at = time.Now()
	}
	*bp = appendRecord((*bp)[:0], rec, at, &a.stamps)
	if !a.async {
		a.writeNow(*bp)
		a.put(bp)
		return
	}
	a.bmu.Lock()
	if a.closed.Load() {
		a.bmu.Unlock()
		a.writeNow(*bp)
		a.put(bp)
		return
	}
	if a.nlines >= DefaultQueue || len(a.batch)+len(*bp) > maxQueueBytes {
		a.bmu.Unlock()
		a.put(bp)
		a.dropped.Add(1)
		if f := a.onDrop.Load(); f != nil {
			(*f)(rec)
		}
		return
	}
	first := a.nlines == 0
	a.batch = append(a.batch, *bp...)
	a.nlines++
	full := len(a.batch) >= a.limit
	a.bmu.Unlock()
	a.put(bp)
	if first || full {
		select {
		case a.wake <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
}

// writeNow writes b at once, on the caller's goroutine.
func (a *Logger) writeNow(b []byte) {
	a.mu.Lock()
	a.writeLocked(b)
	a.mu.Unlock()
}

// takeBatch swaps the waiting batch for spare and returns it.
func (a *Logger) takeBatch(spare []byte) []byte {
	a.bmu.Lock()
	b := a.batch
	a.batch, a.nlines = spare[:0], 0
	a.bmu.Unlock()
	return b
}

func (a *Logger) put(bp *[]byte) {
	if cap(*bp) <= 64<<10 {
		a.lines.Put(bp)
	}
}

// run is the writer goroutine: it collects lines into a batch and writes
// it when full, when the flush interval passed, or when asked.
func (a *Logger) run() {
	defer close(a.stopped)
	var spare []byte // the batch written last, reused for the next
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed := false
	flush := func() {
		b := a.takeBatch(spare)
		if len(b) > 0 {
			a.writeNow(b)
		}
		if cap(b) > 4*a.limit {
			b = nil
		}
		spare = b[:0]
		if armed {
			timer.Stop()
			armed = false
		}
	}
	for {
		select {
		case <-a.wake:
			a.bmu.Lock()
			n, full := a.nlines, len(a.batch) >= a.limit
			a.bmu.Unlock()
			switch {
			case full:
				flush()
			case n > 0 && !armed:
				timer.Reset(a.every)
				armed = true
			}
		case <-timer.C:
			armed = false
			flush()
		case f := <-a.ctl:
			flush()
			f()
		case <-a.stop:
			flush()
			return
		}
	}
}

// StuckTimeout bounds how long Flush, Swap and Close wait for a writer
// that does not move (a pipe nobody reads): they give up with ErrStuck
// rather than hold a reload or a shutdown.
const StuckTimeout = 5 * time.Second

// ErrStuck is returned when the destination did not take a write within
// StuckTimeout.
var ErrStuck = errors.New("the access log destination is not taking writes")

// do runs f on the writer goroutine after the lines queued so far are
// written (at once without one). It gives up after StuckTimeout.
func (a *Logger) do(f func()) error {
	if !a.async || a.closed.Load() {
		f()
		return nil
	}
	done := make(chan struct{})
	t := time.NewTimer(StuckTimeout)
	defer t.Stop()
	select {
	case a.ctl <- func() { f(); close(done) }:
	case <-a.stopped:
		f()
		return nil
	case <-t.C:
		return ErrStuck
	}
	select {
	case <-done:
		return nil
	case <-t.C:
		return ErrStuck
	}
}

func (a *Logger) writeLocked(b []byte) {
	if _, err := a.w.Write(b); err != nil {
		if a.err == nil {
			a.err = err
		}
		a.failed++
		if f := a.onError.Load(); f != nil {
			(*f)(err, bytes.Count(b, newline))
		}
	}
}

var newline = []byte{'\n'}

// Flush writes the lines collected so far.
func (a *Logger) Flush() error {
	var err error
	if e := a.do(func() {
		a.mu.Lock()
		err = a.err
		a.mu.Unlock()
	}); e != nil {
		err = e
	}
	if err != nil {
		return fmt.Errorf("access log: %w", err)
	}
	return nil
}

// Swap writes the collected lines to the current writer, makes w the
// writer of later lines (e.g. a reopened file after log rotation) and
// returns the previous one for the caller to close, with the first write
// error it saw. When the current writer is stuck (ErrStuck) nothing is
// swapped and old is nil.
func (a *Logger) Swap(w io.Writer) (old io.Writer, err error) {
	if e := a.do(func() {
		a.mu.Lock()
		old, err = a.w, a.err
		a.w, a.err = w, nil
		a.mu.Unlock()
	}); e != nil {
		return nil, fmt.Errorf("access log: %w", e)
	}
	if err != nil {
		err = fmt.Errorf("access log: %w", err)
	}
	return old, err
}

// Close writes what is collected and stops the writer goroutine; lines
// logged afterwards (requests finishing late) are written at once. It
// returns the first write error, if any. It does not close the writer.
func (a *Logger) Close() error {
	a.bmu.Lock()
	closing := a.async && a.closed.CompareAndSwap(false, true)
	a.bmu.Unlock()
	if closing {
		// Lines logged from now on are written at once; the writer
		// writes the batch collected before.
		close(a.stop)
		select {
		case <-a.stopped:
		case <-time.After(StuckTimeout):
			// The writer goroutine ends when its write returns.
			return fmt.Errorf("access log: %w (%d lines dropped)", ErrStuck, a.dropped.Load())
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	err := a.err
	a.err = nil
	if err != nil {
		return fmt.Errorf("access log: %w (%d writes failed)", err, a.failed)
	}
	return nil
}

// AppendRecord encodes rec as one JSON line.
func AppendRecord(b []byte, r *Record, now time.Time) []byte {
	return appendRecord(b, r, now, nil)
}

// appendRecord is AppendRecord with the time's text from ts (nil: none).
func appendRecord(b []byte, r *Record, now time.Time, ts *stamps) []byte {
	b = append(b, `{"time":"`...)
	b = ts.append(b, now)
	b = append(b, `","level":"INFO","msg":"access","service":`...)
	b = appendJSONString(b, r.Service)
	if r.Route != "" {
		b = append(b, `,"route":`...)
		b = appendJSONString(b, r.Route)
	}
	if !r.RequestID.IsZero() {
		// An id is hex and a dash, or a peer's id of visible ASCII
		// without quote or backslash (reqid.Parse): nothing to escape.
		b = append(b, `,"request_id":"`...)
		b = r.RequestID.AppendTo(b)
		b = append(b, '"')
	}
	b = append(b, `,"client":`...)
	b = appendJSONString(b, r.Client)
	b = append(b, `,"method":`...)
	b = appendJSONString(b, r.Method)
	b = append(b, `,"host":`...)
	b = appendJSONString(b, r.Host)
	b = append(b, `,"uri":`...)
	b = appendJSONString(b, r.URI)
	b = append(b, `,"proto":`...)
	b = appendJSONString(b, r.Proto)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	b = append(b, `,"bytes_in":`...)
	b = strconv.AppendInt(b, r.BytesIn, 10)
	b = append(b, `,"bytes_out":`...)
	b = strconv.AppendInt(b, r.BytesOut, 10)
	b = append(b, `,"ms":`...)
	b = appendMillis(b, r.Duration)
	b = append(b, `,"tries":`...)
	b = strconv.AppendInt(b, int64(len(r.Tries)), 10)
	if r.Error != "" {
		b = append(b, `,"error":`...)
		b = appendJSONString(b, r.Error)
	}
	if r.Panic {
		b = append(b, `,"panic":true`...)
	}
	if r.GRPCStatus != "" {
		b = append(b, `,"grpc_status":`...)
		b = appendJSONString(b, r.GRPCStatus)
	}
	b = append(b, `,"try":`...)
	if r.Tries == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range r.Tries {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendTry(b, &r.Tries[i])
		}
		b = append(b, ']')
	}
	return append(b, "}\n"...)
}

// appendTry encodes t like encoding/json does with Try's tags.
func appendTry(b []byte, t *Try) []byte {
	b = append(b, `{"backend":`...)
	b = appendJSONString(b, t.Backend)
	if t.Answer != "" {
		b = append(b, `,"answer":`...)
		b = appendJSONString(b, t.Answer)
	}
	b = append(b, `,"reused":`...)
	b = strconv.AppendBool(b, t.Reused)
	if t.Trial {
		b = append(b, `,"trial":true`...)
	}
	b = append(b, `,"outcome":`...)
	b = appendJSONString(b, t.Outcome)
	if t.Phase != "" {
		b = append(b, `,"phase":`...)
		b = appendJSONString(b, t.Phase)
	}
	if t.Status != 0 {
		b = append(b, `,"status":`...)
		b = strconv.AppendInt(b, int64(t.Status), 10)
	}
	if t.GRPCStatus != "" {
		b = append(b, `,"grpc_status":`...)
		b = appendJSONString(b, t.GRPCStatus)
	}
	b = append(b, `,"sent":`...)
	b = strconv.AppendBool(b, t.Sent)
	if t.Resent != 0 {
		b = append(b, `,"resent":`...)
		b = strconv.AppendInt(b, int64(t.Resent), 10)
	}
	if t.Early {
		b = append(b, `,"early":true`...)
	}
	b = append(b, `,"ms":`...)
	b = appendFloat(b, t.Millis)
	if t.Error != "" {
		b = append(b, `,"error":`...)
		b = appendJSONString(b, t.Error)
	}
	b = append(b, `,"retry":`...)
	b = strconv.AppendBool(b, t.Retry)
	if t.BudgetRefused {
		b = append(b, `,"budget_refused":true`...)
	}
	b = append(b, `,"why":`...)
	b = appendJSONString(b, t.Why)
	if t.Backoff != 0 {
		b = append(b, `,"backoff_ms":`...)
		b = appendFloat(b, t.Backoff)
	}
	if t.DNSWait != "" {
		b = append(b, `,"dns_wait":`...)
		b = appendJSONString(b, t.DNSWait)
	}
	if t.DNSWaitMillis != 0 {
		b = append(b, `,"dns_wait_ms":`...)
		b = appendFloat(b, t.DNSWaitMillis)
	}
	return append(b, '}')
}

// appendMillis writes d in milliseconds with microsecond precision.
func appendMillis(b []byte, d time.Duration) []byte {
	return appendFloat(b, float64(d.Microseconds())/1000)
}

// appendFloat writes f as encoding/json would for the values logged here
// (milliseconds: no exponent needed).
//
// Nearly all are whole microseconds over 1000 (a duration's
// milliseconds): such a value is written from that integer — the same
// digits strconv finds, as the decimal with at most three places that
// reads back as f is then the shortest that does (below 1e9 two values
// 0.001 apart are millions of float64 steps apart) — without strconv's
// general shortest-digits search, which took most of a line's encoding.
func appendFloat(b []byte, f float64) []byte {
	if f < 1e9 && !math.Signbit(f) { // (not negative, -0 or NaN)
		n := int64(f*1000 + 0.5)
		if float64(n)/1000 == f {
			b = strconv.AppendInt(b, n/1000, 10)
			if frac := n % 1000; frac != 0 {
				b = append(b, '.', byte('0'+frac/100), byte('0'+frac/10%10), byte('0'+frac%10))
				for b[len(b)-1] == '0' {
					b = b[:len(b)-1]
				}
			}
			return b
		}
	}
	return strconv.AppendFloat(b, f, 'f', -1, 64)
}

const hexDigits = "0123456789abcdef"

// appendJSONString writes s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD, U+2028 and
// U+2029 escaped (as encoding/json and slog do). HTML characters are kept.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
