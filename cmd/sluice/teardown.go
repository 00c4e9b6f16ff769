package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	iofs "io/fs"
	"os"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/agent"
)

// teardownProbe bounds the check that no agent is running.
const teardownProbe = 2 * time.Second

func teardownCmd() *command {
	return &command{
		name:    "teardown",
		args:    "[--pin-path DIR] [--force] [--socket PATH | -c FILE]",
		summary: "detach sluice's programs and remove every pin (traffic to VIPs stops)",
		detail: `
Detaches the XDP programs and removes every map and link pinned under the pin
path (default ` + defaultPinPath + `), so nothing of sluice stays in the
kernel, and the managed neighbour entries the agent added for its backends'
next hops. With -c FILE of a config with a bgp section it first withdraws
every VIP route of the agent's table (the node stops attracting traffic it
can no longer forward) and forgets a node drain. Flows through sluice stop. Stop the agent first: teardown
refuses while an agent answers on the admin socket or holds the pin
directory's lock (an agent with another socket), unless --force.`,
		maxArgs: 0,
		setup: func(fs *flag.FlagSet) runFunc {
			t := addTargetFlags(fs, true)
			force := fs.Bool("force", false, "tear down even while an agent is running")
			return func(ctx context.Context, e *env, _ []string) error {
				c, r, err := t.client(e)
				if err != nil {
					return err
				}
				if !*force {
					held, err := e.pinsHeld(r.pinPath)
					switch {
					case err != nil:
						return fmt.Errorf("cannot tell whether an agent holds %s (%w): stop it first, or use --force", r.pinPath, err)
					case held:
						return fmt.Errorf("an agent holds the pins under %s (the directory is locked): stop it first, or use --force", r.pinPath)
					}
					pctx, cancel := context.WithTimeout(ctx, teardownProbe)
					_, err = c.Status(pctx)
					cancel()
					switch {
					case err == nil:
						return fmt.Errorf("an agent is running (admin socket %s): stop it first, or use --force", r.socket)
					case !errors.Is(err, admin.ErrUnreachable):
						return fmt.Errorf("cannot tell whether an agent is running (%w): stop it first, or use --force", err)
					}
				}
				if r.cfg != nil && r.cfg.BGP != nil && e.withdrawAll != nil {
					n, err := e.withdrawAll(int(r.cfg.BGP.Table), int(r.cfg.BGP.Protocol))
					if err != nil {
						return fmt.Errorf("withdrawing the VIP routes: %w", err)
					}
					fmt.Fprintf(e.stdout, "withdrew %d VIP route%s from table %d\n", n, plural(n), r.cfg.BGP.Table)
				}
				if err := e.teardown(r.pinPath); err != nil {
					return fmt.Errorf("tearing down %s: %w", r.pinPath, err)
				}
				// The agent's saved decisions (drains, ejections) belong to
				// the data path just removed.
				for _, f := range []string{agent.StateFile(r.socket), agent.NodeStateFile(r.socket)} {
					if err := os.Remove(f); err != nil && !errors.Is(err, iofs.ErrNotExist) {
						return fmt.Errorf("removing the agent's saved state: %w", err)
					}
				}
				fmt.Fprintf(e.stdout, "detached sluice and removed its pins under %s\n", r.pinPath)
				return nil
			}
		},
	}
}
