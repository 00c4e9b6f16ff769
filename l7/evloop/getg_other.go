//go:build !amd64 && !arm64

package evloop

import "golang.org/x/sys/unix"

// getg identifies the calling goroutine where the assembly version is
// missing: by its thread, which tells a task (on its loop's locked
// thread) from any goroutine on another thread; the loop's own goroutine
// shares the thread but never asks while a task runs.
func getg() uintptr { return uintptr(unix.Gettid()) }
