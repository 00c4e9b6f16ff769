package accesslog

import (
	"time"

	"github.com/sluicelb/sluice/l7/reqid"
)

// Record describes one proxied request; it is the access log line and what
// the Observer gets. Records are reused: nobody may keep one after the
// request's Observer.Request call returns.
type Record struct {
	Service string
	// Route is the route that took the request, on a service with routes
	// ("" without routes; "default" for the service's own pool).
	Route string
	// RequestID is the request's id (sluice's, or a trusted peer's):
	// "request_id" in the line, absent when zero.
	RequestID reqid.ID
	Client    string
	Method    string
	Host      string
	URI       string
	Proto     string
	Status    int   // status sent to the client (499: the client went away first)
	BytesIn   int64 // request body bytes read from the client
	// BytesOut is the response body bytes written to the client.
	BytesOut int64
	Duration time.Duration
	End      time.Time // when the request ended (the access log's time)
	// Error is why sluice answered itself (no backend, timeout, ...), "" when
	// the response is the backend's.
	Error string
	Panic bool // the pool was in panic mode
	// GRPCStatus is the grpc-status the client got (from the response's
	// header or trailer), "" when none: a gRPC call's outcome, which its
	// HTTP status (200) does not tell.
	GRPCStatus string
	Tries      []Try
}

// Try is one attempt of a request on one backend.
type Try struct {
	Backend string `json:"backend"`
	Answer  string `json:"answer,omitempty"` // DNS answer the address (connection) came from
	Reused  bool   `json:"reused"`           // on a pooled connection
	Trial   bool   `json:"trial,omitempty"`  // the trial request after an ejection
	Outcome string `json:"outcome"`          // ok, status, connect-failure, reset, timeout, client-closed
	Phase   string `json:"phase,omitempty"`  // connect, send, read, total (for failures)
	Status  int    `json:"status,omitempty"`
	// GRPCStatus is the grpc-status in the response header (a gRPC
	// trailers-only answer, e.g. 14 UNAVAILABLE), "" when none.
	GRPCStatus string `json:"grpc_status,omitempty"`
	Sent       bool   `json:"sent"` // request bytes reached the backend
	// Resent counts the times the request was sent again on another
	// connection because the pooled one taken had been closed by the
	// backend while idle (found so before any response byte; only a
	// request that cannot be delivered twice that way).
	Resent int `json:"resent,omitempty"`
	// Early: the backend answered before the whole request was sent (it
	// stopped reading it: a 413 before an upload); the rest of the body
	// was not sent and the connection was closed.
	Early    bool          `json:"early,omitempty"`
	Duration time.Duration `json:"-"`
	Millis   float64       `json:"ms"`
	Error    string        `json:"error,omitempty"`
	Retry    bool          `json:"retry"`
	// BudgetRefused: the policy allowed a retry, the retry budget did not.
	BudgetRefused bool    `json:"budget_refused,omitempty"`
	Why           string  `json:"why"` // why it was or was not retried
	Backoff       float64 `json:"backoff_ms,omitempty"`
	// DNSWait is how the wait for the pool's next DNS answer after this
	// try ended (DNSWait* results; "" when there was none), DNSWaitMillis
	// how long it took.
	DNSWait       string  `json:"dns_wait,omitempty"`
	DNSWaitMillis float64 `json:"dns_wait_ms,omitempty"`
}
