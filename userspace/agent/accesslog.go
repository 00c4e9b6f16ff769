package agent

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
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

	mu     sync.Mutex
	logs   map[string]*accesslog.Logger // by access_log value
	files  map[string]*os.File          // the open file of each path
	failed map[string]bool              // paths reopenGone could not open again (told of)
}

func newAccessLogs(stdout io.Writer) *accessLogs {
	return &accessLogs{stdout: stdout, logs: map[string]*accesslog.Logger{}, files: map[string]*os.File{}, failed: map[string]bool{}}
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
	for path := range a.files {
		a.reopenLocked(path, log)
	}
}

// reopenGone opens again each file whose path no longer names the file
// open: removed (an `rm` to free space, which frees nothing while the
// file is open, and whose lines would go nowhere anyone can read), or
// moved away by a rotation that did not reload the agent. Without it
// the lines went to a file nobody sees until the next reload. Checked
// every few seconds (watchFiles); a path that cannot be opened again
// (its directory gone) is told of once, and tried again.
func (a *accessLogs) reopenGone(log *slog.Logger) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for path, f := range a.files {
		open, err := f.Stat()
		if err != nil {
			continue
		}
		now, err := os.Stat(path)
		switch {
		case err == nil && os.SameFile(open, now):
			delete(a.failed, path)
			continue
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			continue // unreadable for a moment: not proof it is gone
		}
		why := "moved away"
		if err != nil {
			why = "removed"
		}
		if a.reopenLocked(path, nil) {
			delete(a.failed, path)
			log.Warn("access log file "+why+" while open, without a reload: its lines go to a new file at its path now",
				"path", path)
		} else if !a.failed[path] {
			a.failed[path] = true
			log.Error("access log file "+why+" while open and not opened again at its path: lines go to the old file until it can be (retried every 5s)",
				"path", path)
		}
	}
}

// reopenLocked opens path again and moves its log onto the new file;
// false when it could not (errors logged to log when not nil). a.mu held.
func (a *accessLogs) reopenLocked(path string, log *slog.Logger) bool {
	old := a.files[path]
	f, err := openAccessLog(path)
	if err != nil {
		if log != nil {
			log.Error("access log not reopened, writing on to the old file", "path", path, "err", err)
		}
		return false
	}
	prev, err := a.logs[path].Swap(f)
	if prev == nil {
		// Stuck: the log goes on with the old file.
		if log != nil {
			log.Error("access log not reopened", "path", path, "err", err)
		}
		_ = f.Close()
		return false
	}
	if err != nil && log != nil {
		log.Warn("access log lines were lost", "path", path, "err", err)
	}
	a.files[path] = f
	if err := old.Close(); err != nil && log != nil {
		log.Warn("closing the old access log file", "path", path, "err", err)
	}
	return true
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
