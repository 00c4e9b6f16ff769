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
		args:    "-c FILE",
		summary: "validate a config file, touch nothing",
		detail: `
Reads FILE the way the agent would (strict: unknown keys are errors), applies
defaults and validates it. Prints every problem as FILE:LINE: key: message on
stderr and exits 1 if there is any; prints a summary and exits 0 otherwise.
Touches neither the kernel nor a running agent. FILE may also be given as
the only argument.`,
		maxArgs:  1,
		argNames: "FILE",
		setup: func(fs *flag.FlagSet) runFunc {
			var path string
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
				fmt.Fprintf(e.stdout, "%s: ok (%d pool%s, %d service%s: %d l4, %d http)\n", path,
					len(cfg.Pools), plural(len(cfg.Pools)), len(cfg.Services), plural(len(cfg.Services)),
					len(cfg.L4Services()), len(cfg.HTTPServices()))
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
