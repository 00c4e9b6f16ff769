package proxy

import (
	"encoding/binary"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// syscallCounter counts the system calls of this process (every thread,
// and the threads they start) through the raw_syscalls:sys_enter
// tracepoint, for BenchmarkProxy's syscalls/op. It needs root (or a low
// perf_event_paranoid) and tracefs; newSyscallCounter returns nil without.
type syscallCounter struct{ fds []int }

func newSyscallCounter() *syscallCounter {
	id, err := os.ReadFile("/sys/kernel/tracing/events/raw_syscalls/sys_enter/id")
	if err != nil {
		return nil
	}
	config, err := strconv.ParseUint(strings.TrimSpace(string(id)), 10, 64)
	if err != nil {
		return nil
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil
	}
	c := &syscallCounter{}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		attr := unix.PerfEventAttr{
			Type:   unix.PERF_TYPE_TRACEPOINT,
			Config: config,
			Size:   uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
			// Inherited: threads the Go runtime starts later count too.
			Bits: unix.PerfBitInherit,
		}
		fd, err := unix.PerfEventOpen(&attr, tid, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
		if err != nil {
			c.close()
			return nil
		}
		c.fds = append(c.fds, fd)
	}
	return c
}

// count is the number of system calls made since the counter started.
func (c *syscallCounter) count() uint64 {
	var n uint64
	var buf [8]byte
	for _, fd := range c.fds {
		if m, err := unix.Read(fd, buf[:]); err == nil && m == 8 {
			n += binary.NativeEndian.Uint64(buf[:])
		}
	}
	return n
}

func (c *syscallCounter) close() {
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	c.fds = nil
}
