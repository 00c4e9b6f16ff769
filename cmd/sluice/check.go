package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/sluicelb/sluice/userspace/config"
)

func checkCmd() *command {
	return &command{
		name:    "check",
		args:    "[--strict] -c FILE",
		summary: "validate a config file, touch nothing",
		detail: `
Reads FILE the way the agent would (strict: unknown keys are errors), applies
defaults and validates it. Prints every problem as FILE:LINE: key: message on
stderr and exits 1 if there is any. A valid file may still have warnings,
settings likely to surprise (the 1h idle timeout of tcp flows, backend
certificates not verified): each is printed on stderr as
FILE:LINE: key: warning: message. It then prints a summary on stdout and
exits 0, or 1 with --strict. Touches neither the kernel nor a running agent.
FILE may also be given as the only argument.`,
		maxArgs:  1,
		argNames: "FILE",
		setup: func(fs *flag.FlagSet) runFunc {
			var path string
			var strict bool
			fs.BoolVar(&strict, "strict", false, "exit 1 when the file has warnings")
			fs.StringVar(&path, "c", "", "config `FILE` to check (required)")
			fs.StringVar(&path, "config", "", "")
			return func(_ context.Context, e *env, args []string) error {
				switch {
				case len(args) == 1 && path != "" && args[0] != path:
					return usagef("two files given (%s and %s)", path, args[0])
				case len(args) == 1:
					path = args[0]
				case path == "":
					return usagef("-c FILE is required")
				}
				cfg, err := e.loadConfig(path)
				var verr *config.ValidationError
				if errors.As(err, &verr) {
					fmt.Fprintln(e.stderr, verr.Error())
					n := len(verr.Problems)
					return fmt.Errorf("%s: %d problem%s, config refused", path, n, plural(n))
				}
				if err != nil {
					return err
				}
				for _, w := range cfg.WarningLines() {
					fmt.Fprintln(e.stderr, w)
				}
				warned := ""
				if n := len(cfg.Warnings); n > 0 {
					warned = fmt.Sprintf(", %d warning%s", n, plural(n))
				}
				fmt.Fprintf(e.stdout, "%s: ok (%d pool%s, %d service%s: %d l4, %d http%s)\n", path,
					len(cfg.Pools), plural(len(cfg.Pools)), len(cfg.Services), plural(len(cfg.Services)),
					len(cfg.L4Services()), len(cfg.HTTPServices()), warned)
				if strict && len(cfg.Warnings) > 0 {
					n := len(cfg.Warnings)
					return fmt.Errorf("%s: %d warning%s, refused with --strict", path, n, plural(n))
				}
				return nil
			}
		},
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
