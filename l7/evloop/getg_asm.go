//go:build amd64 || arm64

package evloop

// getg is the address of the calling goroutine's runtime descriptor: the
// same for as long as the goroutine lives and different from every other
// live goroutine's, read from the thread's register or TLS slot the
// runtime keeps it in (no system call). A task's coroutine is a goroutine
// of its own, so it tells a task from every other caller (see
// Task.current).
func getg() uintptr
