package agent

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/sluicelb/sluice/l7/accesslog"
	"github.com/sluicelb/sluice/userspace/config"
)

// accessLogFlush is how long access log lines may wait in memory before
// they are written (they are written sooner when a batch fills up).
const accessLogFlush = time.Second

// accessLogs are the access logs of the http services, one per
// destination (stdout or a file), shared by the services naming it. Files
// are opened for appending, reopened on reload (log rotation) and closed
// when the agent stops.
type accessLogs struct {
	stdout io.Writer // nil: `stdout` logs nowhere
	// onDrop counts a line of service dropped because its log's writer was
	// behind (nil: not counted).
	onDrop func(service string)
	// onWriteError is told of every failed write of a destination (an
	// access_log value), with the lines it lost (nil: not told).
	onWriteError func(dest string, err error, lines int)

	mu    sync.Mutex
	logs  map[string]*accesslog.Logger // by access_log value
	files map[string]*os.File          // the open file of each path
}

func newAccessLogs(stdout io.Writer) *accessLogs {
	return &accessLogs{stdout: stdout, logs: map[string]*accesslog.Logger{}, files: map[string]*os.File{}}
}

// get returns the log of an access_log value (nil for off).
func (a *accessLogs) get(dest string) (*accesslog.Logger, error) {
	if dest == config.AccessLogOff || dest == config.AccessLogStdout && a.stdout == nil {
		return nil, nil
	}
	if dest == "" {
		dest = config.AccessLogStdout
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if l := a.logs[dest]; l != nil {
		return l, nil
	}
	var w io.Writer = a.stdout
	if dest != config.AccessLogStdout {
		f, err := openAccessLog(dest)
		if err != nil {
			return nil, err
		}
		a.files[dest] = f
		w = f
	}
	l := accesslog.New(w, accessLogFlush)
	if a.onDrop != nil {
		l.SetOnDrop(func(rec *accesslog.Record) { a.onDrop(rec.Service) })
	}
	if a.onWriteError != nil {
		l.SetOnWriteError(func(err error, lines int) { a.onWriteError(dest, err, lines) })
	}
	a.logs[dest] = l
	return l, nil
}

func openAccessLog(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("access log: %w", err)
	}
	return f, nil
}

// reopen opens every file again and moves its log onto the new one.
func (a *accessLogs) reopen(log *slog.Logger) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for path, old := range a.files {
		f, err := openAccessLog(path)
		if err != nil {
			log.Error("access log not reopened, writing on to the old file", "path", path, "err", err)
			continue
		}
		prev, err := a.logs[path].Swap(f)
		if prev == nil {
			// Stuck: the log goes on with the old file.
			log.Error("access log not reopened", "path", path, "err", err)
			_ = f.Close()
			continue
		}
		if err != nil {
			log.Warn("access log lines were lost", "path", path, "err", err)
		}
		a.files[path] = f
		if err := old.Close(); err != nil {
			log.Warn("closing the old access log file", "path", path, "err", err)
		}
	}
}

// close flushes every log and closes the files.
func (a *accessLogs) close(log *slog.Logger) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for dest, l := range a.logs {
		if err := l.Close(); err != nil {
			log.Warn("access log lines were lost", "access_log", dest, "err", err)
		}
	}
	for path, f := range a.files {
		if err := f.Close(); err != nil {
			log.Warn("closing the access log file", "path", path, "err", err)
		}
	}
}
