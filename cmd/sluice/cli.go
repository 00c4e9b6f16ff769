// Command sluice is the one binary of sluice: the agent daemon and the
// commands operators use to inspect and steer it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/sluicelb/sluice/internal/defaults"
	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/agent"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/datapath"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

// Exit statuses.
const (
	exitOK          = 0
	exitFailure     = 1 // the command failed (invalid config, refused reload, unknown pool, ...)
	exitUsage       = 2 // bad command line
	exitUnreachable = 3 // the agent did not answer on its admin socket
)

// Defaults for finding the agent and its pins.
const (
	defaultSocket  = admin.DefaultSocket
	defaultPinPath = defaults.PinPath
)

// flowReader is what conntrack needs from pinned maps when the agent is down.
type flowReader interface {
	Flows(fn func(datapath.Flow) bool) error
	Close() error
}

// env is everything a command touches outside its arguments, so commands
// run in tests against fakes.
type env struct {
	stdout, stderr io.Writer
	version        string
	now            func() time.Time
	poll           time.Duration // how often waiting commands ask the agent (default 1s)

	newClient  func(socketPath string) admin.Agent
	loadConfig func(path string) (*config.Config, error)
	openPinned func(pinPath string) (flowReader, error)
	teardown   func(pinPath string) error
	// pinsHeld reports whether a process holds the pin directory's lock
	// (a running agent, whatever its admin socket).
	pinsHeld func(pinPath string) (bool, error)
	runAgent func(ctx context.Context, configPath string, log *slog.Logger, version string, ro agent.RunOptions) error
	// getenv reads the environment (nil: empty).
	getenv func(key string) string
	// withdrawAll deletes every VIP route of the agent's table and
	// protocol (teardown of a node with a bgp section).
	withdrawAll func(table, protocol int) (int, error)
	// keepOnBrokenPipe makes writes to a closed stdout or stderr fail
	// instead of killing the process (nil: nothing to do).
	keepOnBrokenPipe func()
	// stdoutJournal reports whether stdout is the systemd journal (nil:
	// it is not).
	stdoutJournal func() bool
}

// command is one verb of the CLI.
type command struct {
	name     string
	args     string // synopsis after the name, flags included
	summary  string // one line, shown in the overview
	detail   string // paragraphs shown by help CMD
	minArgs  int
	maxArgs  int    // -1: no limit
	argNames string // positional arguments, for messages
	// setup registers the command's flags on fs and returns the function
	// that runs the command once they are parsed.
	setup func(fs *flag.FlagSet) runFunc
}

// runFunc runs a command with its positional arguments.
type runFunc func(ctx context.Context, e *env, args []string) error

// usageError is a bad command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// commands lists the verbs in the order help shows them.
func commands() []*command {
	return []*command{
		agentCmd(),
		checkCmd(),
		statusCmd(),
		backendsCmd(),
		conntrackCmd(),
		drainCmd(),
		undrainCmd(),
		nodeCmd(),
		decapCmd(),
		reloadCmd(),
		teardownCmd(),
		versionCmd(),
		helpCmd(),
	}
}

func lookup(name string) *command {
	for _, c := range commands() {
		if c.name == name {
			return c
		}
	}
	return nil
}

// run executes the command line args (without the program name) and
// returns the exit status. Errors are printed on e.stderr.
func run(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 {
		writeOverview(e.stderr)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help":
		writeOverview(e.stdout)
		return exitOK
	case "-v", "-version", "--version":
		name = "version"
	}
	cmd := lookup(name)
	if cmd == nil {
		fmt.Fprintf(e.stderr, "sluice: unknown command %q (run 'sluice help' for the list)\n", name)
		return exitUsage
	}
	return execute(ctx, e, cmd, args[1:])
}

func execute(ctx context.Context, e *env, cmd *command, args []string) int {
	fs := flag.NewFlagSet("sluice "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	runCmd := cmd.setup(fs)
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		writeHelp(e.stdout, cmd)
		return exitOK
	}
	if err == nil {
		err = checkArgCount(cmd, pos)
	}
	if err == nil {
		err = runCmd(ctx, e, pos)
	}
	return report(e, cmd, err)
}

// report prints err and maps it to an exit status.
func report(e *env, cmd *command, err error) int {
	if err == nil {
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) || isFlagError(err) {
		fmt.Fprintf(e.stderr, "sluice %s: %v (see 'sluice help %s')\n", cmd.name, err, cmd.name)
		return exitUsage
	}
	fmt.Fprintf(e.stderr, "sluice %s: %v\n", cmd.name, err)
	if errors.Is(err, admin.ErrUnreachable) {
		return exitUnreachable
	}
	return exitFailure
}

// flagError marks errors from flag parsing (always usage errors).
type flagError struct{ err error }

func (e *flagError) Error() string { return e.err.Error() }
func (e *flagError) Unwrap() error { return e.err }

func isFlagError(err error) bool {
	var fe *flagError
	return errors.As(err, &fe)
}

func checkArgCount(cmd *command, pos []string) error {
	switch {
	case len(pos) < cmd.minArgs:
		return usagef("missing arguments: want %s", cmd.argNames)
	case cmd.maxArgs >= 0 && len(pos) > cmd.maxArgs:
		if cmd.maxArgs == 0 {
			return usagef("unexpected argument %q", pos[0])
		}
		return usagef("too many arguments: want %s", cmd.argNames)
	}
	return nil
}

// parseInterspersed parses flags anywhere among the positional arguments
// ("sluice backends web --json" works like "sluice backends --json web").
// Everything after "--" is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for i, a := range args {
		if a == "--" {
			args, rest = args[:i], args[i+1:]
			break
		}
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, &flagError{err: err}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	return append(pos, rest...), nil
}

// agentTarget is how client commands find the agent: --socket, or -c FILE
// naming the config whose admin.socket (and datapath.pin_path) to use.
type agentTarget struct {
	socket  string
	config  string
	pinPath string
	withPin bool
}

func addTargetFlags(fs *flag.FlagSet, withPin bool) *agentTarget {
	t := &agentTarget{withPin: withPin}
	fs.StringVar(&t.socket, "socket", "", "admin socket `PATH` of the agent (default "+defaultSocket+")")
	fs.StringVar(&t.config, "c", "", "use the admin socket"+pinNote(withPin)+" named in this config `FILE`")
	fs.StringVar(&t.config, "config", "", "")
	if withPin {
		fs.StringVar(&t.pinPath, "pin-path", "", "bpffs directory `DIR` of the pinned maps (default "+defaultPinPath+")")
	}
	return t
}

func pinNote(withPin bool) string {
	if withPin {
		return " and datapath.pin_path"
	}
	return ""
}

// resolved is where the agent and its pins are, and the config if one was named.
type resolved struct {
	socket  string
	pinPath string
	cfg     *config.Config
}

func (t *agentTarget) resolve(e *env) (resolved, error) {
	r := resolved{socket: t.socket, pinPath: t.pinPath}
	if t.config != "" {
		cfg, err := e.loadConfig(t.config)
		if err != nil {
			return r, fmt.Errorf("reading %s: %w", t.config, err)
		}
		r.cfg = cfg
		if r.socket == "" {
			r.socket = cfg.Admin.Socket
		}
		if r.pinPath == "" {
			r.pinPath = cfg.Datapath.PinPath
		}
	}
	if r.socket == "" {
		r.socket = defaultSocket
	}
	if r.pinPath == "" {
		r.pinPath = defaultPinPath
	}
	return r, nil
}

func (t *agentTarget) client(e *env) (admin.Agent, resolved, error) {
	r, err := t.resolve(e)
	if err != nil {
		return nil, r, err
	}
	return e.newClient(r.socket), r, nil
}

// listOf joins names for messages.
func listOf(names []string) string { return strings.Join(names, ", ") }
