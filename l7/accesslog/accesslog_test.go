package accesslog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicelb/sluice/l7/reqid"
)

func sampleRecord() *Record {
	id, _ := reqid.Parse("3f09a1c27b5d-1a2b")
	return &Record{
		Service: "web-http", RequestID: id, Client: "198.18.0.9:53642", Method: "POST", Host: "shop.example",
		URI: "/orders?q=\"a\"&b=<c>\\d\u2028\x01\xff", Proto: "HTTP/1.1", Status: 200,
		BytesIn: 2, BytesOut: 17, Duration: 3267 * time.Microsecond, Panic: true,
		Error: "line\nbreak\ttab\r",
		Tries: []Try{
			{Backend: "198.18.2.11:80", Answer: "static 198.18.2.11:80", Outcome: "connect-failure", Phase: "connect",
				Millis: 0.152, Error: "dial tcp: connection refused", Retry: true,
				Why: "connect-failure before the request was sent", Backoff: 0.628},
			{Backend: "198.18.2.12:80", Reused: true, Trial: true, Outcome: "status", Status: 503, Sent: true, Early: true,
				Millis: 0.347, BudgetRefused: true, Why: "status 503; but the retry budget is spent"},
			{Backend: "198.18.2.13:80", Outcome: "ok", Status: 200, Sent: true, Resent: 1, Millis: 12, Why: "success"},
		},
	}
}

// The hand-written encoder produces what encoding/json reads back as the
// same record, with Try encoded as its JSON tags say.
func TestAccessLogEncoding(t *testing.T) {
	rec := sampleRecord()
	now := time.Date(2026, 11, 23, 13, 13, 5, 445697568, time.UTC)
	line := AppendRecord(nil, rec, now)
	if !bytes.HasSuffix(line, []byte("}\n")) || bytes.Count(line, []byte("\n")) != 1 {
		t.Fatalf("not one line: %q", line)
	}
	var got struct {
		Time     string  `json:"time"`
		Level    string  `json:"level"`
		Msg      string  `json:"msg"`
		Service  string  `json:"service"`
		ReqID    string  `json:"request_id"`
		Client   string  `json:"client"`
		Method   string  `json:"method"`
		Host     string  `json:"host"`
		URI      string  `json:"uri"`
		Proto    string  `json:"proto"`
		Status   int     `json:"status"`
		BytesIn  int64   `json:"bytes_in"`
		BytesOut int64   `json:"bytes_out"`
		MS       float64 `json:"ms"`
		Tries    int     `json:"tries"`
		Error    string  `json:"error"`
		Panic    bool    `json:"panic"`
		Try      []Try   `json:"try"`
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	if got.Time != "2026-11-23T13:13:05.445697568Z" || got.Level != "INFO" || got.Msg != "access" {
		t.Errorf("time/level/msg = %q %q %q", got.Time, got.Level, got.Msg)
	}
	wantURI := strings.ToValidUTF8(rec.URI, "\ufffd")
	if got.Service != rec.Service || got.ReqID != rec.RequestID.String() || got.Client != rec.Client || got.Method != rec.Method || got.Host != rec.Host ||
		got.URI != wantURI || got.Proto != rec.Proto || got.Error != rec.Error {
		t.Errorf("strings differ: %+v", got)
	}
	if got.Status != 200 || got.BytesIn != 2 || got.BytesOut != 17 || got.MS != 3.267 || got.Tries != 3 || !got.Panic {
		t.Errorf("numbers differ: %+v", got)
	}
	if len(got.Try) != 3 {
		t.Fatalf("tries = %d", len(got.Try))
	}
	for i := range rec.Tries {
		if got.Try[i] != rec.Tries[i] {
			t.Errorf("try %d = %+v, want %+v", i, got.Try[i], rec.Tries[i])
		}
	}
	// Field for field what encoding/json makes of a Try.
	for i := range rec.Tries {
		want, err := json.Marshal(&rec.Tries[i])
		if err != nil {
			t.Fatal(err)
		}
		if enc := appendTry(nil, &rec.Tries[i]); !bytes.Equal(enc, want) {
			t.Errorf("try %d:\n got %s\nwant %s", i, enc, want)
		}
	}
	// U+2028 is escaped (JavaScript-safe), HTML characters are not.
	if !bytes.Contains(line, []byte(`\u2028`)) || !bytes.Contains(line, []byte(`<c>`)) || !bytes.Contains(line, []byte(`\u0001`)) {
		t.Errorf("escaping: %s", line)
	}
	// No tries: "try":null, like slog's encoding of a nil slice.
	if l := AppendRecord(nil, &Record{Service: "s"}, now); !bytes.Contains(l, []byte(`"tries":0,"try":null}`)) {
		t.Errorf("no tries: %s", l)
	}
}

func TestAppendJSONStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote`, `back\slash`, "ctl\x00\x1f\x7f", "é✓🙂", "bad\xc3\x28utf8", "\u2029", "a\u2028b"} {
		// encoding/json escapes <, >, & for HTML by default; the access
		// log does not (nor did slog).
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
		want := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
		if got := appendJSONString(nil, s); !bytes.Equal(got, want) {
			t.Errorf("%q: got %s, want %s", s, got, want)
		}
	}
}

// lockedBuffer is a writer that counts its writes.
type lockedBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
	err    error
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return 0, l.err
	}
	l.writes++
	return l.b.Write(p)
}

func (l *lockedBuffer) state() (string, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String(), l.writes
}

func TestAccessLogBatching(t *testing.T) {
	w := &lockedBuffer{}
	a := New(w, 50*time.Millisecond)
	rec := sampleRecord()
	for range 10 {
		a.Log(rec)
	}
	if s, n := w.state(); n != 0 || s != "" {
		t.Fatalf("written before the flush interval: %d writes", n)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		s, n := w.state()
		if strings.Count(s, "\n") == 10 {
			if n != 1 {
				t.Errorf("10 lines in %d writes, want 1", n)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not flushed by the timer: %d lines", strings.Count(s, "\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A full batch is written at once, without waiting for the timer.
	big := &Record{Service: strings.Repeat("x", DefaultBuffer)}
	a.Log(big)
	waitLines(t, w, 11, "a full batch")
	// Close writes what is left; later lines go out at once.
	a.Log(rec)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if s, _ := w.state(); strings.Count(s, "\n") != 12 {
		t.Errorf("Close did not flush")
	}
	a.Log(rec)
	if s, _ := w.state(); strings.Count(s, "\n") != 13 {
		t.Errorf("a line after Close was not written at once")
	}
}

func TestAccessLogUnbufferedSwapAndErrors(t *testing.T) {
	w1, w2 := &lockedBuffer{}, &lockedBuffer{}
	a := New(w1, 0)
	a.Log(sampleRecord())
	if s, n := w1.state(); n != 1 || strings.Count(s, "\n") != 1 {
		t.Fatalf("unbuffered: %d writes", n)
	}
	if old, err := a.Swap(w2); old != w1 || err != nil {
		t.Fatalf("Swap = %v, %v", old, err)
	}
	a.Log(sampleRecord())
	if _, n := w2.state(); n != 1 {
		t.Fatalf("after Swap: %d writes on the new writer", n)
	}
	boom := errors.New("disk full")
	w2.mu.Lock()
	w2.err = boom
	w2.mu.Unlock()
	var lost int
	a.SetOnWriteError(func(err error, lines int) {
		if errors.Is(err, boom) {
			lost += lines
		}
	})
	a.Log(sampleRecord())
	if lost != 1 {
		t.Errorf("OnWriteError told of %d lost lines, want 1 at once", lost)
	}
	if err := a.Flush(); !errors.Is(err, boom) {
		t.Errorf("Flush = %v, want %v", err, boom)
	}
	if err := a.Close(); !errors.Is(err, boom) {
		t.Errorf("Close = %v, want %v", err, boom)
	}
	var nilLog *Logger
	nilLog.Log(sampleRecord()) // a nil log logs nothing
}

func BenchmarkAccessLog(b *testing.B) {
	a := New(&lockedBuffer{}, time.Second)
	defer a.Close()
	rec := sampleRecord()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			a.Log(rec)
		}
	})
}

// The line is byte for byte what the slog JSON handler wrote before
// (slog.Any of the tries, encoded by encoding/json, escapes HTML; the
// sample has none in its tries).
func TestAccessLogSameAsSlog(t *testing.T) {
	rec := sampleRecord()
	rec.URI = "/orders?id=7"
	now := time.Date(2026, 11, 23, 13, 13, 5, 445697568, time.UTC)
	var buf bytes.Buffer
	h := slog.NewJSONHandler(&buf, nil)
	sr := slog.NewRecord(now, slog.LevelInfo, "access", 0)
	sr.AddAttrs(
		slog.String("service", rec.Service), slog.String("request_id", rec.RequestID.String()), slog.String("client", rec.Client), slog.String("method", rec.Method),
		slog.String("host", rec.Host), slog.String("uri", rec.URI), slog.String("proto", rec.Proto),
		slog.Int("status", rec.Status), slog.Int64("bytes_in", rec.BytesIn), slog.Int64("bytes_out", rec.BytesOut),
		slog.Float64("ms", float64(rec.Duration.Microseconds())/1000), slog.Int("tries", len(rec.Tries)),
		slog.String("error", rec.Error), slog.Bool("panic", true), slog.Any("try", rec.Tries),
	)
	if err := h.Handle(context.Background(), sr); err != nil {
		t.Fatal(err)
	}
	if got := AppendRecord(nil, rec, now); string(got) != buf.String() {
		t.Errorf("\n got %s\nwant %s", got, buf.String())
	}
}

func waitLines(t *testing.T, w *lockedBuffer, n int, what string) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); ; {
		if s, _ := w.state(); strings.Count(s, "\n") == n {
			return
		}
		if time.Now().After(deadline) {
			s, _ := w.state()
			t.Fatalf("%s: %d lines, want %d", what, strings.Count(s, "\n"), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// blockedWriter blocks every Write until released.
type blockedWriter struct {
	release chan struct{}
	n       atomic.Int64
}

func (b *blockedWriter) Write(p []byte) (int, error) {
	<-b.release
	b.n.Add(int64(bytes.Count(p, []byte("\n"))))
	return len(p), nil
}

// A destination that blocks (a pipe nobody reads) never blocks Log: lines
// beyond the queue are dropped and counted, and the rest are written once
// the destination moves again.
func TestAccessLogNeverBlocks(t *testing.T) {
	w := &blockedWriter{release: make(chan struct{})}
	a := New(w, time.Millisecond)
	var dropped atomic.Int64
	a.SetOnDrop(func(*Record) { dropped.Add(1) })
	rec := sampleRecord()
	const n = DefaultQueue * 3
	done := make(chan struct{})
	go func() {
		for range n {
			a.Log(rec)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Log blocked on a stalled destination")
	}
	if a.Dropped() == 0 || dropped.Load() != int64(a.Dropped()) {
		t.Errorf("dropped %d (hook %d), want some, counted", a.Dropped(), dropped.Load())
	}
	close(w.release)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if got := w.n.Load() + int64(a.Dropped()); got != n {
		t.Errorf("%d written + %d dropped = %d, want %d", w.n.Load(), a.Dropped(), got, n)
	}
}

// A batch the destination refuses is told of with all its lines, on the
// writer's goroutine, as it fails.
func TestAccessLogWriteErrorBatch(t *testing.T) {
	w := &lockedBuffer{err: errors.New("no space left on device")}
	a := New(w, 20*time.Millisecond)
	defer a.Close()
	lost := make(chan int, 10)
	a.SetOnWriteError(func(_ error, lines int) { lost <- lines })
	for range 10 {
		a.Log(sampleRecord())
	}
	select {
	case n := <-lost:
		if n != 10 {
			t.Errorf("%d lines lost in one batch, want 10", n)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no write error reported")
	}
}

// appendFloat's integer path writes what strconv writes: every whole
// number of microseconds up to 10 s and around the path's edges, random
// ones further out, and values it must leave to strconv (not thousandths,
// negative, huge, NaN).
func TestAppendFloatMatchesStrconv(t *testing.T) {
	check := func(f float64) {
		t.Helper()
		if got, want := string(appendFloat(nil, f)), strconv.FormatFloat(f, 'f', -1, 64); got != want {
			t.Fatalf("appendFloat(%v) = %q, want %q", f, got, want)
		}
	}
	for us := int64(0); us <= 10_000_000; us++ {
		check(float64(us) / 1000)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 1_000_000 {
		check(float64(r.Int64N(1e12)) / 1000)
		check(r.Float64() * 1e6)
	}
	for _, f := range []float64{0.0005, 0.0015, 1e-9, 999999999.999, 1e9, 1e9 + 0.5, 123456789.123456, -0.001, -1, math.Copysign(0, -1),
		math.MaxFloat64, math.SmallestNonzeroFloat64, math.Inf(1), math.NaN(), 0.1 + 0.2} {
		check(f)
	}
}

func BenchmarkAppendFloat(b *testing.B) {
	buf := make([]byte, 0, 32)
	for i := 0; b.Loop(); i++ {
		buf = appendFloat(buf[:0], float64(i%100000)/1000)
	}
}

// A logger's stamps write what time.RFC3339Nano does: seconds of every
// kind of fraction, in several zones (a second's text reused, or made
// again when the zone changes within the second).
func TestStampsMatchRFC3339Nano(t *testing.T) {
	var ts stamps
	east := time.FixedZone("east", 5*3600+30*60)
	west := time.FixedZone("west", -8*3600)
	r := rand.New(rand.NewPCG(3, 4))
	base := time.Date(2026, 12, 5, 11, 15, 38, 0, time.UTC).Unix()
	for i := range 200_000 {
		sec := base + r.Int64N(3)
		if i%1000 == 0 {
			sec = r.Int64N(253402300799) // any second of years 1970–9999
		}
		ns := []int64{0, 1, 10, 100_000, 120_000_000, 999_999_999, r.Int64N(1e9)}[i%7]
		tm := time.Unix(sec, ns).In([]*time.Location{time.UTC, time.Local, east, west}[r.IntN(4)])
		if got, want := string(ts.append(nil, tm)), tm.Format(time.RFC3339Nano); got != want {
			t.Fatalf("stamps.append(%v) = %q, want %q", tm, got, want)
		}
	}
	// Not cached, formatted all the same.
	for _, tm := range []time.Time{time.Date(10000, 1, 1, 0, 0, 0, 5, time.UTC), time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC), {}} {
		if got, want := string(ts.append(nil, tm)), tm.Format(time.RFC3339Nano); got != want {
			t.Fatalf("stamps.append(%v) = %q, want %q", tm, got, want)
		}
	}
}
