package admin

import "errors"

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
)
