// Package logring keeps the agent's most recent warnings and errors in
// memory, so `sluice status` can show what went wrong lately without the
// operator finding the agent's log (a container's stdout, a journal they
// cannot read, a file rotated away).
//
// A Ring wraps the agent's slog.Handler: every record goes on to it
// unchanged, and those at slog.LevelWarn or above are also kept, formatted
// as one line of text (message and attributes, as slog's text handler
// writes them: values with spaces, quotes or control characters quoted),
// in a ring of the last N. Counts of every warning and error since the
// agent started are kept too, so a ring that wrapped still says how many
// there were.
package logring

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"
)

// Entry is one kept record.
type Entry struct {
	Time  time.Time
	Level slog.Level
	// Text is the message and the attributes, key=value, as slog's text
	// handler writes them.
	Text string
}

// Ring holds the last entries.
type Ring struct {
	mu      sync.Mutex
	entries []Entry // circular, len ≤ cap
	next    int     // where the next entry goes once full
	warns   uint64
	errs    uint64
	buf     bytes.Buffer // the text handlers' output, under mu
}

// maxText bounds one entry's text: a record can carry a long value (an
// error with a backend's answer in it), and the ring is for reading.
const maxText = 512

// New returns a ring that keeps the last n warnings and errors (n ≥ 1).
func New(n int) *Ring {
	return &Ring{entries: make([]Entry, 0, max(n, 1))}
}

// Handler wraps next: records go on to it, and warnings and errors are
// kept in r as well.
func (r *Ring) Handler(next slog.Handler) slog.Handler {
	return &handler{next: next, ring: r, text: r.textHandler()}
}

// textHandler formats a record's message and attributes into r.buf (time
// and level are kept apart, in the Entry).
func (r *Ring) textHandler() slog.Handler {
	return slog.NewTextHandler(&r.buf, &slog.HandlerOptions{
		Level: slog.LevelWarn,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey) {
				return slog.Attr{}
			}
			return a
		},
	})
}

// Entries returns the kept entries, oldest first.
func (r *Ring) Entries() []Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Entry, 0, len(r.entries))
	if len(r.entries) == cap(r.entries) {
		out = append(out, r.entries[r.next:]...)
		out = append(out, r.entries[:r.next]...)
	} else {
		out = append(out, r.entries...)
	}
	return out
}

// Counts returns how many warnings and errors were logged since the ring
// was made (kept or since overwritten).
func (r *Ring) Counts() (warnings, errors uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.warns, r.errs
}

// keep formats rec with text and adds it.
func (r *Ring) keep(ctx context.Context, text slog.Handler, rec slog.Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rec.Level >= slog.LevelError {
		r.errs++
	} else {
		r.warns++
	}
	r.buf.Reset()
	_ = text.Handle(ctx, rec)
	e := Entry{Time: rec.Time, Level: rec.Level, Text: clip(bytes.TrimRight(r.buf.Bytes(), "\n"))}
	if len(r.entries) < cap(r.entries) {
		r.entries = append(r.entries, e)
		return
	}
	r.entries[r.next] = e
	r.next = (r.next + 1) % len(r.entries)
}

// clip makes the entry's text, cut at maxText bytes on a rune boundary.
func clip(b []byte) string {
	if len(b) <= maxText {
		return string(b)
	}
	n := maxText
	for n > 0 && !utf8.RuneStart(b[n]) {
		n--
	}
	return string(b[:n]) + "…"
}

type handler struct {
	next slog.Handler
	ring *Ring
	text slog.Handler // formats kept records, with this handler's attributes and groups
}

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || h.next.Enabled(ctx, l)
}

func (h *handler) Handle(ctx context.Context, rec slog.Record) error {
	if rec.Level >= slog.LevelWarn {
		h.ring.keep(ctx, h.text, rec)
	}
	if !h.next.Enabled(ctx, rec.Level) {
		return nil
	}
	return h.next.Handle(ctx, rec)
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	return &handler{next: h.next.WithAttrs(as), ring: h.ring, text: h.text.WithAttrs(as)}
}

func (h *handler) WithGroup(name string) slog.Handler {
	return &handler{next: h.next.WithGroup(name), ring: h.ring, text: h.text.WithGroup(name)}
}
