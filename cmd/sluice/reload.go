package main

import (
	"context"
	"flag"
	"fmt"
)

func reloadCmd() *command {
	return &command{
		name:    "reload",
		args:    "[--socket PATH | -c FILE]",
		summary: "make the agent re-read its config file (same as SIGHUP)",
		detail: `
The agent re-reads the file it was started with and applies the changes
without disturbing unrelated flows. An invalid file is refused: the running
config stays, and the problems are printed with their line numbers (exit
status 1). Check a file first with 'sluice check -c FILE'.

A valid file that the agent cannot apply in full (no service id or backend
slot left, an http listen address taken, an access log that cannot be
opened) is applied except for those parts, which are printed (exit status
1) and listed under NOT APPLIED in 'sluice status' until a reload applies
everything.`,
		maxArgs: 0,
		setup: func(fs *flag.FlagSet) runFunc {
			t := addTargetFlags(fs, false)
			return func(ctx context.Context, e *env, _ []string) error {
				c, _, err := t.client(e)
				if err != nil {
					return err
				}
				if err := c.Reload(ctx); err != nil {
					return err
				}
				fmt.Fprintln(e.stdout, "config reloaded")
				return nil
			}
		},
	}
}
