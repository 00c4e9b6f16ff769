package logring

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

func TestRingKeepsWarningsAndErrors(t *testing.T) {
	var out bytes.Buffer
	r := New(3)
	log := slog.New(r.Handler(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelInfo})))
	log.Debug("not logged")
	log.Info("logged, not kept")
	log.With("component", "l7").WithGroup("listener").Warn("listener replaced", "addr", "198.18.1.1:80")
	log.Error("boom", "err", "line one\nline two")
	es := r.Entries()
	if len(es) != 2 {
		t.Fatalf("kept %d entries, want 2: %+v", len(es), es)
	}
	if es[0].Level != slog.LevelWarn || es[0].Text != `msg="listener replaced" component=l7 listener.addr=198.18.1.1:80` {
		t.Errorf("first entry %v %q", es[0].Level, es[0].Text)
	}
	// A value with a line break is quoted: one entry, one line.
	if es[1].Level != slog.LevelError || es[1].Text != `msg=boom err="line one\nline two"` {
		t.Errorf("second entry %v %q", es[1].Level, es[1].Text)
	}
	if es[0].Time.IsZero() {
		t.Error("entry without its time")
	}
	// Every record the wrapped handler enables reaches it, unchanged.
	for _, want := range []string{"logged, not kept", "listener replaced", "component=l7", "boom"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("wrapped handler's output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "not logged") {
		t.Error("a debug record reached a handler at info")
	}
}

func TestRingWrapsAndCounts(t *testing.T) {
	r := New(2)
	// The wrapped handler logs errors only: warnings are still kept.
	log := slog.New(r.Handler(slog.NewTextHandler(&bytes.Buffer{}, &slog.HandlerOptions{Level: slog.LevelError})))
	for _, m := range []string{"a", "b", "c"} {
		log.Warn(m)
	}
	log.Error("d")
	es := r.Entries()
	if len(es) != 2 || es[0].Text != "msg=c" || es[1].Text != "msg=d" {
		t.Fatalf("entries %+v, want the last two (c, d), oldest first", es)
	}
	if w, e := r.Counts(); w != 3 || e != 1 {
		t.Errorf("counts %d warnings %d errors, want 3 and 1", w, e)
	}
}

func TestRingClipsLongText(t *testing.T) {
	r := New(1)
	slog.New(r.Handler(slog.DiscardHandler)).Warn("long", "v", strings.Repeat("é", 1000))
	txt := r.Entries()[0].Text
	if len(txt) > maxText+len("…") || !strings.HasSuffix(txt, "…") {
		t.Errorf("text of %d bytes, want at most %d and an ellipsis", len(txt), maxText)
	}
	if !strings.HasPrefix(txt, "msg=long v=é") {
		t.Errorf("text %q", txt[:40])
	}
}

// Loggers derived with attributes and groups share one ring; records from
// many goroutines are each kept whole (go test -race checks the sharing).
func TestRingConcurrent(t *testing.T) {
	r := New(64)
	base := slog.New(r.Handler(slog.DiscardHandler))
	var wg sync.WaitGroup
	for g := range 4 {
		log := base.With("g", g).WithGroup("x")
		wg.Go(func() {
			for i := range 50 {
				log.Warn("w", "i", i)
				_ = r.Entries()
			}
		})
	}
	wg.Wait()
	if w, _ := r.Counts(); w != 200 {
		t.Errorf("%d warnings counted, want 200", w)
	}
	for _, e := range r.Entries() {
		if !strings.HasPrefix(e.Text, "msg=w g=") || !strings.Contains(e.Text, " x.i=") {
			t.Errorf("entry %q mixed up", e.Text)
		}
	}
}
