// Package logthrottle spaces repeated warnings.
package logthrottle

import (
	"log/slog"
	"sync"
	"time"
)

// Warning logs a warning per key (a listener, an access log
// destination) at most once every `every`, with how many times it happened
// since the last one: a failure repeating a hundred times a second must not
// flood the log of a machine already in trouble.
type Warning struct {
	log   *slog.Logger
	every time.Duration

	mu    sync.Mutex
	last  map[string]time.Time
	count map[string]int
}

// New returns a Warning logging to log at most every `every` per key.
func New(log *slog.Logger, every time.Duration) *Warning {
	return &Warning{log: log, every: every, last: map[string]time.Time{}, count: map[string]int{}}
}

// Note counts n more for key, and logs msg with args and the count since
// the last warning ("since_last_warning") when the last one for key is
// `every` old.
func (w *Warning) Note(key string, n int, msg string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.count[key] += n
	now := time.Now()
	if last, ok := w.last[key]; ok && now.Sub(last) < w.every {
		return
	}
	w.log.Warn(msg, append(args, "since_last_warning", w.count[key])...)
	w.last[key], w.count[key] = now, 0
}
