// Package retry decides whether a failed try of an HTTP request may be
// repeated on another backend: the conditions that count as failures, the
// per-method rules that keep non-idempotent requests from being delivered
// twice, exponential backoff with full jitter and a retry budget that keeps a
// failing pool from turning into a retry storm.
//
// It knows nothing about connections: the proxy describes each try as an
// Outcome and a Request, and the Policy answers with a Decision whose Reason
// goes into the access log.
package retry

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sluicelb/sluice/userspace/backoff"
)

// Kind is what happened to one try.
type Kind uint8

// Kinds of outcome.
const (
	OK             Kind = iota // a response whose status is not a retry condition
	ConnectFailure             // no connection: refused, unreachable, connect timeout
	Reset                      // the connection broke after it was made (RST, EOF, malformed response)
	Timeout                    // send or read timeout, or the total deadline
	Status                     // a response whose status is listed in retry.on
)

func (k Kind) String() string {
	switch k {
	case OK:
		return "ok"
	case ConnectFailure:
		return "connect-failure"
	case Reset:
		return "reset"
	case Timeout:
		return "timeout"
	case Status:
		return "status"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Outcome describes one finished try.
type Outcome struct {
	Kind       Kind
	StatusCode int // the response status (OK and Status)
	// Sent is whether any byte of the request reached the backend (was
	// accepted by the connection). A try that failed before is always safe
	// to repeat.
	Sent bool
	// GRPC is the grpc-status of a gRPC answer that carries it in its
	// response header (a trailers-only response: the call failed before
	// any message), 1..16; 0 (OK) or any other value: none. Only such an
	// answer can be retried: one whose status comes in the trailer has
	// streamed messages to the client already.
	GRPC int
}

// Request is what the policy needs to know about the request being proxied.
type Request struct {
	Method string
	// GRPCMethod is the path of a gRPC call (/package.Service/Method), ""
	// for a request that is not one. retry.methods entries starting with
	// "/" match it.
	GRPCMethod string
	Header     http.Header
	// Replayable is whether the request body can be produced again for
	// another try: it had none, it fitted in the buffer, or no byte beyond
	// the buffer has been read from the client yet.
	Replayable bool
	// ResponseStarted is whether a response byte already reached the client.
	ResponseStarted bool
	// Tries is the number of tries made so far, including the failed one.
	Tries int
	// DeadlineLeft is whether time remains before the total deadline.
	DeadlineLeft bool
}

// Condition is one entry of retry.on: a kind of failure that may be retried.
type Condition interface {
	// Match reports whether o is this failure.
	Match(o Outcome) bool
	String() string
}

// KindCondition matches an outcome kind (connect-failure, reset, timeout).
type KindCondition Kind

// Match implements Condition.
func (c KindCondition) Match(o Outcome) bool { return o.Kind == Kind(c) }

func (c KindCondition) String() string { return Kind(c).String() }

// StatusCondition matches a response status.
type StatusCondition int

// Match implements Condition.
func (c StatusCondition) Match(o Outcome) bool {
	return (o.Kind == OK || o.Kind == Status) && o.StatusCode == int(c)
}

func (c StatusCondition) String() string { return strconv.Itoa(int(c)) }

// GRPCCondition matches a gRPC status code carried in a response header
// (see Outcome.GRPC).
type GRPCCondition int

// Match implements Condition.
func (c GRPCCondition) Match(o Outcome) bool {
	return (o.Kind == OK || o.Kind == Status) && o.GRPC == int(c) && o.GRPC > 0
}

func (c GRPCCondition) String() string { return "grpc-" + grpcNames[c] }

// grpcNames are the gRPC status codes by number, as retry.on and
// ejection.on name them (grpc-unavailable, ...).
var grpcNames = [...]string{
	"ok", "cancelled", "unknown", "invalid-argument", "deadline-exceeded", "not-found",
	"already-exists", "permission-denied", "resource-exhausted", "failed-precondition",
	"aborted", "out-of-range", "unimplemented", "internal", "unavailable", "data-loss",
	"unauthenticated",
}

// GRPCName is the name of gRPC status code c ("unavailable" for 14), or
// its number when it is not one of the 17.
func GRPCName(c int) string {
	if c >= 0 && c < len(grpcNames) {
		return grpcNames[c]
	}
	return strconv.Itoa(c)
}

// ParseGRPCStatus parses a grpc-status header value; -1 when v is not one.
func ParseGRPCStatus(v string) int {
	if len(v) == 0 || len(v) > 2 {
		return -1
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n >= len(grpcNames) || strconv.Itoa(n) != v {
		return -1
	}
	return n
}

var (
	_ Condition = KindCondition(ConnectFailure)
	_ Condition = GRPCCondition(14)
	_ Condition = StatusCondition(503)
)

// ParseCondition parses one retry.on entry: connect-failure, reset,
// timeout, 429 or a status 500-599 (other statuses are the backend's
// answer to the request, not a failure of the backend), or a gRPC status
// named grpc-NAME (grpc-unavailable, grpc-resource-exhausted, ...; not
// grpc-ok).
func ParseCondition(s string) (Condition, error) {
	if name, ok := strings.CutPrefix(s, "grpc-"); ok {
		for i, n := range grpcNames {
			if n == name && i > 0 {
				return GRPCCondition(i), nil
			}
		}
		return nil, fmt.Errorf("retry condition %q: gRPC conditions are grpc- and a status name other than ok: grpc-unavailable, grpc-resource-exhausted, grpc-deadline-exceeded, grpc-internal, grpc-unknown, grpc-aborted, ... (lower case, hyphens)", s)
	}
	switch s {
	case "connect-failure":
		return KindCondition(ConnectFailure), nil
	case "reset":
		return KindCondition(Reset), nil
	case "timeout":
		return KindCondition(Timeout), nil
	}
	code, err := strconv.Atoi(s)
	if err != nil || !(code == 429 || code >= 500 && code <= 599) || strconv.Itoa(code) != s {
		return nil, fmt.Errorf("retry condition %q: must be connect-failure, reset, timeout, 429, a status 500-599 or grpc-NAME (grpc-unavailable, ...)", s)
	}
	return StatusCondition(code), nil
}

// CheckMethod checks one retry.methods entry: an upper-case token such as
// GET, or a gRPC method: /package.Service/Method, or /package.Service/*
// for every method of a service.
func CheckMethod(m string) error {
	if strings.HasPrefix(m, "/") {
		svc, meth, ok := strings.Cut(m[1:], "/")
		if !ok || svc == "" || meth == "" || strings.ContainsAny(svc, "/*") || meth != "*" && strings.ContainsAny(meth, "/*") ||
			strings.ContainsFunc(m, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
			return fmt.Errorf("retry method %q: a gRPC method is /package.Service/Method or /package.Service/*", m)
		}
		return nil
	}
	ok := m != "" && m[0] >= 'A' && m[0] <= 'Z'
	for i := 0; ok && i < len(m); i++ {
		c := m[i]
		ok = c >= 'A' && c <= 'Z' || c == '_' || c == '-'
	}
	if !ok {
		return fmt.Errorf("retry method %q: methods are upper-case tokens such as GET", m)
	}
	return nil
}

// Defaults of a retry block, and the bounds NewPolicy enforces.
const (
	DefaultAttempts      = 3
	MaxAttempts          = 10
	DefaultBudgetPercent = 20
	DefaultBackoffBase   = 25 * time.Millisecond
	DefaultBackoffMax    = 250 * time.Millisecond
	DefaultBufferBytes   = 64 << 10
	// MaxBufferBytes bounds buffer_bytes: each request in flight may hold
	// that much memory (client.max_requests of them at most).
	MaxBufferBytes = 16 << 20
)

// DefaultOn returns retry.on's default: what an http service retries.
func DefaultOn() []string {
	return []string{"connect-failure", "reset", "timeout", "502", "503", "504", "grpc-unavailable"}
}

// DefaultMethods returns retry.methods' default: the methods an http
// service retries after the request was sent.
func DefaultMethods() []string {
	return []string{"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
}

// Config is the retry block of an http service (the agent builds it from
// the service's retry: keys).
type Config struct {
	Attempts          int      // tries in total, 1..MaxAttempts
	On                []string // conditions (ParseCondition)
	Methods           []string // retried after sending (CheckMethod)
	IdempotencyHeader string   // a request carrying it may be retried after sending
	NonIdempotent     bool     // retry any method after sending
	BudgetPercent     int      // 0..100
	BackoffBase       time.Duration
	BackoffMax        time.Duration
	BufferBytes       int64 // request body kept for replay
}

// DefaultConfig is the retry block of an http service that sets none.
func DefaultConfig() Config {
	return Config{
		Attempts: DefaultAttempts, On: DefaultOn(), Methods: DefaultMethods(),
		BudgetPercent: DefaultBudgetPercent,
		BackoffBase:   DefaultBackoffBase, BackoffMax: DefaultBackoffMax,
		BufferBytes: DefaultBufferBytes,
	}
}

// Policy is a compiled retry: block. It is immutable and safe for concurrent use.
type Policy struct {
	attempts      int
	conditions    []Condition
	methods       []string
	idemHeader    string
	nonIdempotent bool
	bufferBytes   int64
	backoff       backoff.Backoff
	budgetPercent int
}

// NewPolicy compiles cfg. A nil cfg means no retries (one try).
func NewPolicy(cfg *Config) (*Policy, error) {
	if cfg == nil {
		return &Policy{attempts: 1}, nil
	}
	if cfg.Attempts < 1 || cfg.Attempts > MaxAttempts {
		return nil, fmt.Errorf("retry attempts %d: must be between 1 and %d", cfg.Attempts, MaxAttempts)
	}
	if cfg.BufferBytes < 0 || cfg.BufferBytes > MaxBufferBytes {
		return nil, fmt.Errorf("retry buffer_bytes %d: must be between 0 and %d", cfg.BufferBytes, MaxBufferBytes)
	}
	if cfg.BudgetPercent < 0 || cfg.BudgetPercent > 100 {
		return nil, fmt.Errorf("retry budget_percent %d: must be between 0 and 100", cfg.BudgetPercent)
	}
	// Full jitter: a retry storm spreads over the whole interval.
	bo := backoff.Backoff{Base: cfg.BackoffBase, Max: cfg.BackoffMax, Jitter: 1}
	if bo.Base != 0 || bo.Max != 0 {
		if err := bo.Validate(); err != nil {
			return nil, fmt.Errorf("retry %w", err)
		}
	}
	p := &Policy{
		attempts:      cfg.Attempts,
		idemHeader:    cfg.IdempotencyHeader,
		nonIdempotent: cfg.NonIdempotent,
		bufferBytes:   cfg.BufferBytes,
		budgetPercent: cfg.BudgetPercent,
		backoff:       bo,
	}
	for _, s := range cfg.On {
		c, err := ParseCondition(s)
		if err != nil {
			return nil, err
		}
		p.conditions = append(p.conditions, c)
	}
	for _, m := range cfg.Methods {
		if !strings.HasPrefix(m, "/") {
			m = strings.ToUpper(m)
		}
		if err := CheckMethod(m); err != nil {
			return nil, err
		}
		p.methods = append(p.methods, m)
	}
	return p, nil
}

// Attempts is the number of tries in total.
func (p *Policy) Attempts() int { return p.attempts }

// BufferBytes is how much of a request body is kept for replay.
func (p *Policy) BufferBytes() int64 { return p.bufferBytes }

// Backoff is the delay policy between tries (full jitter).
func (p *Policy) Backoff() backoff.Backoff { return p.backoff }

// BudgetPercent is the share of active requests that may be retrying.
func (p *Policy) BudgetPercent() int { return p.budgetPercent }

// Matches reports whether o is one of the configured conditions (a failure
// worth retrying; what counts toward passive ejection is the pool's
// ejection.on, l7/eject).
func (p *Policy) Matches(o Outcome) bool {
	for _, c := range p.conditions {
		if c.Match(o) {
			return true
		}
	}
	return false
}

// FailureStatus reports whether a response status is listed in retry.on.
func (p *Policy) FailureStatus(code int) bool {
	return p.Matches(Outcome{Kind: Status, StatusCode: code, GRPC: -1})
}

// FailureGRPC reports whether a response with grpc-status code in its
// header (and HTTP status) is listed in retry.on.
func (p *Policy) FailureGRPC(status, code int) bool {
	return p.Matches(Outcome{Kind: Status, StatusCode: status, GRPC: code})
}

// MayResend reports whether a request that may already have reached a
// backend can be sent again: its method is listed in retry.methods, it
// carries the idempotency header, or non_idempotent is set. The proxy uses
// it for a pooled connection found closed (no response byte read).
func (p *Policy) MayResend(method string, h http.Header) bool {
	return slices.Contains(p.methods, method) ||
		p.idemHeader != "" && h.Get(p.idemHeader) != "" ||
		p.nonIdempotent
}

// Decision is the answer to "may this request be tried again?".
type Decision struct {
	Retry  bool
	Reason string // why (not), for the access log
}

// Decide applies the policy to a failed try. It does not consult the budget
// or the backends left: the caller does, after a positive decision.
func (p *Policy) Decide(r Request, o Outcome) Decision {
	switch {
	case o.Kind == OK && o.GRPC > 0 && o.GRPC < len(grpcNames):
		return Decision{Reason: describe(o) + " is not in retry.on"}
	case o.Kind == OK && (o.StatusCode >= 500 || o.StatusCode == 429):
		return Decision{Reason: fmt.Sprintf("status %d is not in retry.on", o.StatusCode)}
	case o.Kind == OK:
		return Decision{Reason: "success"}
	case !p.Matches(o):
		return Decision{Reason: fmt.Sprintf("%s is not in retry.on", describe(o))}
	case r.ResponseStarted:
		return Decision{Reason: "response already started"}
	case r.Tries >= p.attempts:
		return Decision{Reason: fmt.Sprintf("attempts exhausted (%d)", p.attempts)}
	case !r.DeadlineLeft:
		return Decision{Reason: "total deadline reached"}
	}
	if !o.Sent {
		// Nothing reached the backend: the request cannot have been
		// executed, whatever its method. Replaying needs the body though.
		if !r.Replayable {
			return Decision{Reason: describe(o) + ": body larger than retry.buffer_bytes already partly read, cannot replay"}
		}
		return Decision{Retry: true, Reason: describe(o) + " before the request was sent"}
	}
	if !r.Replayable {
		return Decision{Reason: fmt.Sprintf("%s after sending a body larger than retry.buffer_bytes (%d)", describe(o), p.bufferBytes)}
	}
	if r.GRPCMethod != "" {
		if m, ok := p.grpcMethod(r.GRPCMethod); ok {
			return Decision{Retry: true, Reason: describe(o) + ", gRPC method " + m + " is in retry.methods"}
		}
	} else if slices.Contains(p.methods, r.Method) {
		return Decision{Retry: true, Reason: describe(o) + ", " + r.Method + " is in retry.methods"}
	}
	if p.idemHeader != "" && r.Header.Get(p.idemHeader) != "" {
		return Decision{Retry: true, Reason: describe(o) + ", request carries " + p.idemHeader}
	}
	if p.nonIdempotent {
		return Decision{Retry: true, Reason: describe(o) + ", retry.non_idempotent is set"}
	}
	if r.GRPCMethod != "" {
		return Decision{Reason: fmt.Sprintf("%s after the request was sent; gRPC method %s is not in retry.methods", describe(o), r.GRPCMethod)}
	}
	return Decision{Reason: fmt.Sprintf("%s after the request was sent; %s is not in retry.methods", describe(o), r.Method)}
}

// grpcMethod returns the retry.methods entry that allows gRPC method m
// (a path /package.Service/Method) to be sent again.
func (p *Policy) grpcMethod(m string) (string, bool) {
	for _, e := range p.methods {
		if e == m {
			return e, true
		}
		if svc, ok := strings.CutSuffix(e, "/*"); ok && strings.HasPrefix(m, svc+"/") && !strings.Contains(m[len(svc)+1:], "/") {
			return e, true
		}
	}
	return "", false
}

func describe(o Outcome) string {
	if (o.Kind == OK || o.Kind == Status) && o.GRPC > 0 && o.GRPC < len(grpcNames) {
		return "grpc-status " + strconv.Itoa(o.GRPC) + " (" + grpcNames[o.GRPC] + ")"
	}
	if o.Kind == OK || o.Kind == Status {
		return "status " + strconv.Itoa(o.StatusCode)
	}
	return o.Kind.String()
}
