package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/agent"
	"github.com/sluicelb/sluice/userspace/announce"
)

func nodeCmd() *command {
	return &command{
		name:    "node",
		args:    "drain [--timeout D] [--quiet D] [--no-wait] | undrain | bird-config -c FILE  [--socket PATH | -c FILE]",
		summary: "the node behind ECMP: drain it (withdraw its VIPs), undrain it, print its BIRD config",
		detail: `
For nodes that announce their VIPs over BGP (a bgp: section, see
docs/scale-out.md).

'node drain' withdraws every VIP of the node at once (the agent deletes
their routes, BIRD withdraws them from its peers, the router sends their
packets to the other nodes), then waits until the node has forwarded no
packet of any flow for --quiet (default ` + agent.DefaultNodeDrainQuiet.String() + `) or --timeout passes
(default ` + agent.DefaultNodeDrainTimeout.String() + `), and prints "drained". The drain survives an
agent restart. --no-wait returns once the VIPs are withdrawn.

'node undrain' announces again every VIP that can be served.

'node bird-config -c FILE' prints the BIRD 2 configuration that exports
the routes the agent writes to the peers of FILE's bgp section; nothing
is sent to an agent.`,
		minArgs:  1,
		maxArgs:  1,
		argNames: "drain|undrain|bird-config",
		setup: func(fs *flag.FlagSet) runFunc {
			t := addTargetFlags(fs, false)
			timeout := fs.Duration("timeout", 0, "node drain: drained at the latest after `D` (default "+agent.DefaultNodeDrainTimeout.String()+")")
			quiet := fs.Duration("quiet", 0, "node drain: drained once no packet arrived for `D` (default "+agent.DefaultNodeDrainQuiet.String()+")")
			noWait := fs.Bool("no-wait", false, "node drain: return once the VIPs are withdrawn")
			return func(ctx context.Context, e *env, args []string) error {
				switch args[0] {
				case "bird-config":
					if t.config == "" {
						return usagef("node bird-config needs -c FILE")
					}
					r, err := t.resolve(e)
					if err != nil {
						return err
					}
					if r.cfg.BGP == nil {
						return fmt.Errorf("%s has no bgp section", t.config)
					}
					_, err = io.WriteString(e.stdout, announce.BIRDConfig(r.cfg.BGP, t.config))
					return err
				case "drain":
					if *timeout < 0 || *quiet < 0 {
						return usagef("--timeout and --quiet must not be negative")
					}
					c, _, err := t.client(e)
					if err != nil {
						return err
					}
					if err := c.NodeDrain(ctx, *timeout, *quiet); err != nil {
						return err
					}
					st, err := c.Status(ctx)
					if err == nil && st.Node != nil {
						fmt.Fprintf(e.stdout, "withdrawn: %s\n", withdrawnVIPs(st.Node))
					}
					if *noWait {
						return nil
					}
					return waitNodeDrained(ctx, e, c)
				case "undrain":
					c, _, err := t.client(e)
					if err != nil {
						return err
					}
					if err := c.NodeUndrain(ctx); err != nil {
						return err
					}
					st, err := c.Status(ctx)
					if err == nil && st.Node != nil {
						fmt.Fprintf(e.stdout, "node %s\n", describeNode(st.Node))
						return nil
					}
					fmt.Fprintln(e.stdout, "node serving")
					return nil
				}
				return usagef("node: unknown action %q: want drain, undrain or bird-config", args[0])
			}
		},
	}
}

func withdrawnVIPs(n *admin.Node) string {
	var out []string
	for _, v := range n.VIPs {
		if !v.Announced {
			out = append(out, v.Address)
		}
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ", ")
}

// describeNode is one line: the state, and the VIPs announced.
func describeNode(n *admin.Node) string {
	var on []string
	for _, v := range n.VIPs {
		if v.Announced {
			on = append(on, v.Address)
		}
	}
	s := n.State
	if len(on) > 0 {
		s += ", announcing " + strings.Join(on, ", ")
	} else {
		s += ", announcing nothing"
	}
	return s
}

// waitNodeDrained polls the agent until the node is drained.
func waitNodeDrained(ctx context.Context, e *env, c admin.Agent) error {
	poll := e.poll
	if poll <= 0 {
		poll = time.Second
	}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		st, err := c.Status(ctx)
		if err != nil {
			return fmt.Errorf("waiting for the node to drain: %w", err)
		}
		n := st.Node
		switch {
		case n == nil:
			return fmt.Errorf("waiting for the node to drain: the agent announces nothing (no bgp section)")
		case n.State == "drained":
			msg := "drained"
			if d := n.Drain; d != nil && d.DrainedAt != nil {
				msg += fmt.Sprintf(" (%s) after %s", d.Cause, human(d.DrainedAt.Sub(d.Started)))
			}
			fmt.Fprintln(e.stdout, msg)
			return nil
		case n.State != "draining":
			return fmt.Errorf("the node is %s again, no longer draining", n.State)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the node to drain: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// writeNode prints the node part of status.
func writeNode(w io.Writer, n *admin.Node, now time.Time) {
	fmt.Fprintf(w, "node: %s (VIP routes in table %d, protocol %d)\n", n.State, n.Table, n.Protocol)
	if d := n.Drain; d != nil {
		s := fmt.Sprintf("  drain started %s ago", human(now.Sub(d.Started)))
		if d.DrainedAt != nil {
			s += fmt.Sprintf(", drained (%s) after %s", d.Cause, human(d.DrainedAt.Sub(d.Started)))
		} else {
			s += fmt.Sprintf(", done once quiet for %s, at the latest in %s", d.Quiet, human(d.Deadline.Sub(now)))
		}
		fmt.Fprintln(w, s)
	}
	for _, v := range n.VIPs {
		state := "withdrawn"
		if v.Announced {
			state = "announced"
		}
		fmt.Fprintf(w, "  %-16s %-9s %s, %s (%s)\n", v.Address, state, v.Reason, since(now, v.Since), strings.Join(v.Services, ", "))
	}
	for _, s := range n.Sessions {
		fmt.Fprintf(w, "  bgp %-14s %s %s\n", s.Name, s.State, s.Info)
	}
	if n.SessionsError != "" {
		fmt.Fprintf(w, "  bgp sessions unknown: %s\n", n.SessionsError)
	}
	if n.LastError != "" {
		fmt.Fprintf(w, "  LAST ROUTE ERROR: %s\n", n.LastError)
	}
}
