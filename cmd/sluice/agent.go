package main

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/sluicelb/sluice/userspace/agent"
	"github.com/sluicelb/sluice/userspace/gcpace"
	"github.com/sluicelb/sluice/userspace/sdnotify"
)

// EnvL7NetHTTP1, set (to anything) in the agent's environment, serves
// plain-text http listeners with net/http's HTTP/1 server instead of
// sluice's own connection loop: a diagnostic switch, to compare the two
// (docs/l7.md, "The HTTP/1 connection loop").
const EnvL7NetHTTP1 = "SLUICE_L7_NETHTTP1"

// EnvL7EventLoops set to 0 (or false, off, no) in the agent's environment
// serves the HTTP/1 loop's connections with a goroutine each instead of
// from per-CPU event loops (docs/l7.md, "Event loops"), the default.
const EnvL7EventLoops = "SLUICE_L7_EVENTLOOPS"

// gcHeadroom is the agent's garbage collector pacing (gcpace) for the
// environment's GOGC value v: none when the operator set GOGC.
func gcHeadroom(v string) uint64 {
	if v != "" {
		return 0
	}
	return gcpace.DefaultHeadroom
}

// eventLoopsOn is whether EnvL7EventLoops's value v leaves event loops on.
func eventLoopsOn(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "0", "false", "off", "no":
		return false
	}
	return true
}

func agentCmd() *command {
	return &command{
		name:    "agent",
		args:    "-c FILE [--log-format text|json] [--log-level debug|info|warn|error]",
		summary: "run the daemon in the foreground",
		detail: `
Loads the config, loads or adopts the data path pinned under
datapath.pin_path, programs it and serves the admin API and metrics. Logs go
to stderr. SIGTERM or SIGINT stops the agent and leaves the data path
forwarding (a restarted agent adopts it; 'sluice teardown' removes it).
SIGHUP re-reads the config, like 'sluice reload'.
Under systemd (NOTIFY_SOCKET set: a unit of Type=notify) it reports READY=1
once its admin socket answers, WATCHDOG=1 from its control loop when the
unit sets WatchdogSec (a loop that hangs gets the agent restarted, the data
path forwarding meanwhile), and STOPPING=1.
A stdout or stderr whose reader went away (a log pipe, a closed terminal)
does not stop the agent (Go would end it with SIGPIPE): what it writes
there is lost, the rest goes on.
SLUICE_L7_NETHTTP1=1 in the environment serves plain-text http listeners
with net/http's HTTP/1 server instead of sluice's own loop (a diagnostic
switch, to compare the two). That loop serves its connections from per-CPU
event loops; SLUICE_L7_EVENTLOOPS=0 serves them with a goroutine each
instead (see docs/l7.md, "Event loops").
Unless GOGC is set in the environment, an agent serving http services
paces Go's garbage collector so its heap may grow by 16 MiB between
collections (a small heap under load was collected a dozen times a
second; see docs/operations.md).`,
		maxArgs: 0,
		setup: func(fs *flag.FlagSet) runFunc {
			var path string
			fs.StringVar(&path, "c", "", "config `FILE` (required)")
			fs.StringVar(&path, "config", "", "")
			format := fs.String("log-format", "text", "`FORMAT` of the logs: text or json")
			level := fs.String("log-level", "info", "`LEVEL` of the logs: debug, info, warn or error")
			return func(ctx context.Context, e *env, _ []string) error {
				if path == "" {
					return usagef("-c FILE is required")
				}
				log, err := newLogger(e.stderr, *format, *level)
				if err != nil {
					return err
				}
				if e.keepOnBrokenPipe != nil {
					e.keepOnBrokenPipe()
				}
				notify, err := sdnotify.FromEnv(e.env, os.Getpid())
				if err != nil {
					// Not fatal: a unit of Type=notify then times out
					// starting, and says why in its journal.
					log.Warn("systemd notifications off", "err", err)
				}
				defer notify.Close()
				ro := agent.RunOptions{
					L7NetHTTP1:    e.env(EnvL7NetHTTP1) != "",
					L7EventLoops:  eventLoopsOn(e.env(EnvL7EventLoops)),
					GCHeadroom:    gcHeadroom(e.env("GOGC")),
					Notify:        notify,
					StdoutJournal: e.stdoutJournal != nil && e.stdoutJournal(),
				}
				return e.runAgent(ctx, path, log, e.version, ro)
			}
		},
	}
}

// newLogger builds the agent's logger.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef("--log-format %q: want text or json", format)
}

// env is the environment variable key (empty when the env has no getenv).
func (e *env) env(key string) string {
	if e.getenv == nil {
		return ""
	}
	return e.getenv(key)
}
