package main

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"strings"
)

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
SIGHUP re-reads the config, like 'sluice reload'.`,
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
				return e.runAgent(ctx, path, log, e.version)
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
