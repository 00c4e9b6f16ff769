package proxy

import (
	"context"
	"io"
	"log/slog"
	"time"
)

// Record describes one proxied request; it is the access log line and what
// the Observer gets.
type Record struct {
	Service string
	Client  string
	Method  string
	Host    string
	URI     string
	Proto   string
	Status  int   // status sent to the client (499: the client went away first)
	BytesIn int64 // request body bytes read from the client
	// BytesOut is the response body bytes written to the client.
	BytesOut int64
	Duration time.Duration
	// Error is why sluice answered itself (no backend, timeout, ...), "" when
	// the response is the backend's.
	Error string
	Panic bool // the pool was in panic mode
	Tries []Try
}

// Try is one attempt of a request on one backend.
type Try struct {
	Backend  string        `json:"backend"`
	Answer   string        `json:"answer,omitempty"` // DNS answer the address (connection) came from
	Reused   bool          `json:"reused"`           // on a pooled connection
	Trial    bool          `json:"trial,omitempty"`  // the trial request after an ejection
	Outcome  string        `json:"outcome"`          // ok, status, connect-failure, reset, timeout, client-closed
	Phase    string        `json:"phase,omitempty"`  // connect, send, read, total (for failures)
	Status   int           `json:"status,omitempty"`
	Sent     bool          `json:"sent"` // request bytes reached the backend
	Duration time.Duration `json:"-"`
	Millis   float64       `json:"ms"`
	Error    string        `json:"error,omitempty"`
	Retry    bool          `json:"retry"`
	// BudgetRefused: the policy allowed a retry, the retry budget did not.
	BudgetRefused bool    `json:"budget_refused,omitempty"`
	Why           string  `json:"why"` // why it was or was not retried
	Backoff       float64 `json:"backoff_ms,omitempty"`
}

func (r *Record) log(l *slog.Logger) {
	if l == nil {
		return
	}
	attrs := []slog.Attr{
		slog.String("service", r.Service),
		slog.String("client", r.Client),
		slog.String("method", r.Method),
		slog.String("host", r.Host),
		slog.String("uri", r.URI),
		slog.String("proto", r.Proto),
		slog.Int("status", r.Status),
		slog.Int64("bytes_in", r.BytesIn),
		slog.Int64("bytes_out", r.BytesOut),
		slog.Float64("ms", float64(r.Duration.Microseconds())/1000),
		slog.Int("tries", len(r.Tries)),
	}
	if r.Error != "" {
		attrs = append(attrs, slog.String("error", r.Error))
	}
	if r.Panic {
		attrs = append(attrs, slog.Bool("panic", true))
	}
	attrs = append(attrs, slog.Any("try", r.Tries))
	l.LogAttrs(context.Background(), slog.LevelInfo, "access", attrs...)
}

// NewAccessLogger returns the logger an access log should be: one JSON
// object per line on w.
func NewAccessLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, nil))
}
