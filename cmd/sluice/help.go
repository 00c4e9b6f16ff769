package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

func helpCmd() *command {
	return &command{
		name:     "help",
		args:     "[COMMAND]",
		summary:  "show the commands, or one command's flags and details",
		maxArgs:  1,
		argNames: "[COMMAND]",
		setup: func(*flag.FlagSet) runFunc {
			return func(_ context.Context, e *env, args []string) error {
				if len(args) == 0 {
					writeOverview(e.stdout)
					return nil
				}
				cmd := lookup(args[0])
				if cmd == nil {
					return usagef("unknown command %q", args[0])
				}
				writeHelp(e.stdout, cmd)
				return nil
			}
		},
	}
}

// writeOverview prints the list of commands.
func writeOverview(w io.Writer) {
	fmt.Fprint(w, `sluice: an eBPF-assisted, connection-level L4 load balancer.

usage: sluice COMMAND [flags] [arguments]

commands:
`)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range commands() {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	tw.Flush()
	fmt.Fprint(w, `
Client commands find the agent through --socket PATH (default `+defaultSocket+`)
or -c FILE (the socket named in that config).

Run 'sluice help COMMAND' or 'sluice COMMAND --help' for a command's flags.
Exit status: 0 success, 1 failure, 2 bad command line, 3 agent not reachable.
`)
}

// writeHelp prints one command's synopsis, details and flags.
func writeHelp(w io.Writer, cmd *command) {
	syn := "sluice " + cmd.name
	if cmd.args != "" {
		syn += " " + cmd.args
	}
	fmt.Fprintf(w, "usage: %s\n\n%s.\n", syn, upperFirst(cmd.summary))
	if cmd.detail != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(cmd.detail))
	}
	fs := flag.NewFlagSet(cmd.name, flag.ContinueOnError)
	cmd.setup(fs)
	var lines [][2]string
	fs.VisitAll(func(f *flag.Flag) {
		if f.Usage == "" { // an alias, shown with its main flag
			return
		}
		arg, usage := flag.UnquoteUsage(f)
		name := "--" + f.Name
		switch f.Name {
		case "c":
			name = "-c, --config"
		}
		if arg != "" {
			name += " " + arg
		}
		if f.DefValue != "" && f.DefValue != "false" && !strings.Contains(usage, "default") {
			usage += " (default " + f.DefValue + ")"
		}
		lines = append(lines, [2]string{name, usage})
	})
	if len(lines) > 0 {
		fmt.Fprint(w, "\nflags:\n")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, l := range lines {
			fmt.Fprintf(tw, "  %s\t%s\n", l[0], l[1])
		}
		tw.Flush()
	}
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
