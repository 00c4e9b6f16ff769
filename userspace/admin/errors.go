package admin

import (
	"errors"
	"net/http"
)

// Sentinel errors an Agent returns (wrapped with context is fine) so the
// server can map them to HTTP status codes and the client back to errors
// callers can test with errors.Is.
var (
	// ErrUnknownPool: no pool of that name is configured (404).
	ErrUnknownPool = errors.New("unknown pool")
	// ErrUnknownAddress: the pool has no such address (404).
	ErrUnknownAddress = errors.New("unknown address")
	// ErrBadRequest: the request is malformed (400).
	ErrBadRequest = errors.New("bad request")
	// ErrReloadRefused: the new config is invalid and the old one stays (409).
	// The agent wraps the config error with it.
	ErrReloadRefused = errors.New("reload refused")
	// ErrReloadPartial: the new config is valid and applied, except what
	// the error lists (no id or slot left, a listener that cannot bind, a
	// file that cannot be opened); status shows it too (422).
	ErrReloadPartial = errors.New("reload applied in part")
)

// ErrUnreachable is returned by the Client when nothing answers on the
// socket (no agent running, wrong path, or no permission).
var ErrUnreachable = errors.New("agent not reachable")

// Error kinds carried in ErrorResponse.Kind.
const (
	KindUnknownPool    = "unknown_pool"
	KindUnknownAddress = "unknown_address"
	KindBadRequest     = "bad_request"
	KindReloadRefused  = "reload_refused"
	KindReloadPartial  = "reload_partial"
	KindNotFound       = "not_found" // no such endpoint
	KindForbidden      = "forbidden"
	KindInternal       = "internal"
)

// kindOf classifies an error returned by an Agent.
func kindOf(err error) string {
	switch {
	case errors.Is(err, ErrUnknownPool):
		return KindUnknownPool
	case errors.Is(err, ErrUnknownAddress):
		return KindUnknownAddress
	case errors.Is(err, ErrBadRequest):
		return KindBadRequest
	case errors.Is(err, ErrReloadRefused):
		return KindReloadRefused
	case errors.Is(err, ErrReloadPartial):
		return KindReloadPartial
	}
	return KindInternal
}

// statusOf is the HTTP status code of an error kind.
func statusOf(kind string) int {
	switch kind {
	case KindUnknownPool, KindUnknownAddress, KindNotFound:
		return http.StatusNotFound
	case KindBadRequest:
		return http.StatusBadRequest
	case KindReloadRefused:
		return http.StatusConflict
	case KindReloadPartial:
		return http.StatusUnprocessableEntity
	case KindForbidden:
		return http.StatusForbidden
	}
	return http.StatusInternalServerError
}

// sentinelOf is the sentinel error of an error kind, nil if none.
func sentinelOf(kind string) error {
	switch kind {
	case KindUnknownPool:
		return ErrUnknownPool
	case KindUnknownAddress:
		return ErrUnknownAddress
	case KindBadRequest:
		return ErrBadRequest
	case KindReloadRefused:
		return ErrReloadRefused
	case KindReloadPartial:
		return ErrReloadPartial
	}
	return nil
}

// APIError is an error answer from the admin server.
type APIError struct {
	StatusCode int    // HTTP status
	Kind       string // ErrorResponse.Kind
	Message    string // the server's message, verbatim
}

func (e *APIError) Error() string { return e.Message }

// Unwrap returns the sentinel error of the kind, so errors.Is(err,
// ErrUnknownPool) works on the client side.
func (e *APIError) Unwrap() error { return sentinelOf(e.Kind) }
