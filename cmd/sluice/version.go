package main

import (
	"context"
	"flag"
	"fmt"
	"runtime"
)

func versionCmd() *command {
	return &command{
		name:    "version",
		summary: "print the version of this binary",
		maxArgs: 0,
		setup: func(*flag.FlagSet) runFunc {
			return func(_ context.Context, e *env, _ []string) error {
				fmt.Fprintf(e.stdout, "sluice %s (%s, %s/%s)\n", e.version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
				return nil
			}
		},
	}
}
