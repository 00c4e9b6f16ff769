// Package accesslog writes the L7 stage's access log: one JSON object per
// line per request (Record), with every try and why it was or was not
// retried. The encoder is hand-written (no reflection) and produces what
// slog's JSON handler would.
package accesslog

import (
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// Logger writes one JSON object per line per request (see Record). The
// line is encoded by hand into a reused buffer, without reflection, and
// lines are collected in memory and written in batches: when the batch
// reaches its size, when FlushInterval has passed since its first line,
// on Flush and on Close. With FlushInterval <= 0 every line is written at
// once. It is safe for concurrent use.
//
// The format is the one slog's JSON handler produced before (time, level,
// msg "access", then the fields of Record), so tools reading the log see
// no difference.
type Logger struct {
	every time.Duration
	limit int

	mu      sync.Mutex
	w       io.Writer
	pending []byte
	armed   bool // the flush timer is running
	closed  bool
	timer   *time.Timer
	err     error  // first write error since the last Close/Swap
	failed  uint64 // lines lost to write errors

	lines sync.Pool // *[]byte, one encoded line
}

// Defaults of New.
const (
	DefaultFlush  = time.Second
	DefaultBuffer = 64 << 10
)

// New returns an access log writing to w, batching lines for at most
// flushEvery (<= 0: every line is written at once).
func New(w io.Writer, flushEvery time.Duration) *Logger {
	a := &Logger{w: w, every: flushEvery, limit: DefaultBuffer}
	a.lines.New = func() any { b := make([]byte, 0, 1024); return &b }
	if flushEvery > 0 {
		a.timer = time.AfterFunc(time.Hour, a.onTimer)
		a.timer.Stop()
	}
	return a
}

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
	line := AppendRecord((*bp)[:0], rec, at)
	a.mu.Lock()
	if a.every <= 0 || a.closed {
		a.writeLocked(line)
	} else {
		a.pending = append(a.pending, line...)
		switch {
		case len(a.pending) >= a.limit:
			a.flushLocked()
		case !a.armed:
			a.armed = true
			a.timer.Reset(a.every)
		}
	}
	a.mu.Unlock()
	if cap(line) <= 64<<10 {
		*bp = line
		a.lines.Put(bp)
	}
}

func (a *Logger) onTimer() {
	a.mu.Lock()
	a.armed = false
	a.flushLocked()
	a.mu.Unlock()
}

func (a *Logger) flushLocked() {
	if len(a.pending) == 0 {
		return
	}
	a.writeLocked(a.pending)
	if cap(a.pending) > 4*a.limit {
		a.pending = nil
	} else {
		a.pending = a.pending[:0]
	}
}

func (a *Logger) writeLocked(b []byte) {
	if _, err := a.w.Write(b); err != nil {
		if a.err == nil {
			a.err = err
		}
		a.failed++
	}
}

// Flush writes the lines collected so far.
func (a *Logger) Flush() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.flushLocked()
	if a.err != nil {
		return fmt.Errorf("access log: %w", a.err)
	}
	return nil
}

// Swap flushes the collected lines to the current writer, makes w the
// writer of later lines (e.g. a reopened file after log rotation) and
// returns the previous one for the caller to close, with the first write
// error it saw.
func (a *Logger) Swap(w io.Writer) (old io.Writer, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.flushLocked()
	old, err = a.w, a.err
	a.w, a.err = w, nil
	if err != nil {
		err = fmt.Errorf("access log: %w", err)
	}
	return old, err
}

// Close flushes what is collected and stops the timer; lines logged
// afterwards (requests finishing late) are written at once. It returns the
// first write error, if any. It does not close the writer.
func (a *Logger) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	if a.timer != nil {
		a.timer.Stop()
		a.armed = false
	}
	a.flushLocked()
	err := a.err
	a.err = nil
	if err != nil {
		return fmt.Errorf("access log: %w (%d writes failed)", err, a.failed)
	}
	return nil
}

// AppendRecord encodes rec as one JSON line.
func AppendRecord(b []byte, r *Record, now time.Time) []byte {
	b = append(b, `{"time":"`...)
	b = now.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":"INFO","msg":"access","service":`...)
	b = appendJSONString(b, r.Service)
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
	b = append(b, `,"sent":`...)
	b = strconv.AppendBool(b, t.Sent)
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
func appendFloat(b []byte, f float64) []byte {
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
