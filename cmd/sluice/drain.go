package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
)

func drainCmd() *command {
	return &command{
		name:    "drain",
		args:    "POOL ADDRESS [--wait [--timeout D]] [--socket PATH | -c FILE]",
		summary: "stop sending new flows to an address; its existing flows go on until drain_timeout",
		detail: `
Moves ADDRESS (ip:port) of POOL to draining with cause "operator": it leaves
the Maglev tables at once, established flows keep going to it, and when it
has no flows left and no http service has a request in flight to it, or
the pool's drain_timeout passes, it is removed (flows still pinned to it
then get a TCP RST). 'sluice undrain' takes it back.

--wait blocks until the address is removed, printing the flows and
requests left on stderr as they go down, so a deploy script can stop the
backend next. It
fails if the address becomes active again (undrained) or --timeout passes.

An unknown POOL or ADDRESS is an error (exit status 1).`,
		minArgs:  2,
		maxArgs:  2,
		argNames: "POOL ADDRESS",
		setup: func(fs *flag.FlagSet) runFunc {
			t := addTargetFlags(fs, false)
			wait := fs.Bool("wait", false, "wait until the address is removed (no flows left, or drain_timeout)")
			timeout := fs.Duration("timeout", 0, "with --wait: give up after `D` (default: no limit but drain_timeout)")
			return func(ctx context.Context, e *env, args []string) error {
				if err := addressOp(ctx, e, t, args[0], args[1], true); err != nil {
					return err
				}
				if !*wait {
					return nil
				}
				if *timeout > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, *timeout)
					defer cancel()
				}
				c, _, err := t.client(e)
				if err != nil {
					return err
				}
				return waitDrained(ctx, e, c, args[0], args[1])
			}
		},
	}
}

func undrainCmd() *command {
	return &command{
		name:    "undrain",
		args:    "POOL ADDRESS [--socket PATH | -c FILE]",
		summary: "undo drain: the address gets new flows again if its source still lists it",
		detail: `
Ends an operator drain of ADDRESS (ip:port) in POOL. The address goes back
to active if the config or DNS still lists it and it is not ejected.`,
		minArgs:  2,
		maxArgs:  2,
		argNames: "POOL ADDRESS",
		setup: func(fs *flag.FlagSet) runFunc {
			t := addTargetFlags(fs, false)
			return func(ctx context.Context, e *env, args []string) error {
				return addressOp(ctx, e, t, args[0], args[1], false)
			}
		},
	}
}

func addressOp(ctx context.Context, e *env, t *agentTarget, pool, address string, drain bool) error {
	if _, err := parseAddr(address); err != nil {
		return usagef("ADDRESS: %v", err)
	}
	c, _, err := t.client(e)
	if err != nil {
		return err
	}
	op, verb := c.Undrain, "undrained"
	if drain {
		op, verb = c.Drain, "draining"
	}
	if err := op(ctx, pool, address); err != nil {
		return err
	}
	// Best effort: show where the address stands now.
	if st, err := c.Status(ctx); err == nil {
		if b, ok := findBackend(st, pool, address); ok {
			fmt.Fprintf(e.stdout, "%s %s: %s\n", pool, b.Address, describeBackend(b, e.now()))
			return nil
		}
	}
	fmt.Fprintf(e.stdout, "%s %s: %s\n", pool, address, verb)
	return nil
}

// findBackend finds address (ip:port, or an ip that only one address of
// the pool has) in pool.
func findBackend(st admin.Status, pool, address string) (admin.Backend, bool) {
	want, err := parseAddr(address)
	if err != nil {
		return admin.Backend{}, false
	}
	var found []admin.Backend
	for _, p := range st.Pools {
		if p.Name != pool {
			continue
		}
		for _, b := range p.Backends {
			ap, err := netip.ParseAddrPort(b.Address)
			if err != nil {
				continue
			}
			if ap == want || (want.Port() == 0 && ap.Addr() == want.Addr()) {
				found = append(found, b)
			}
		}
	}
	if len(found) != 1 {
		return admin.Backend{}, false
	}
	return found[0], true
}

func describeBackend(b admin.Backend, now time.Time) string {
	s := b.State
	if b.Cause != "" {
		s += " (" + b.Cause + ")"
	}
	s += fmt.Sprintf(", %d flow%s", b.ActiveFlows, plural(b.ActiveFlows))
	if b.Requests != nil {
		s += fmt.Sprintf(", %d request%s", *b.Requests, plural(*b.Requests))
	}
	if b.DrainDeadline != nil {
		s += ", cut in " + human(b.DrainDeadline.Sub(now))
	}
	return s
}

// waitDrained polls the agent until address of pool is removed (or gone).
func waitDrained(ctx context.Context, e *env, c admin.Agent, pool, address string) error {
	poll := e.poll
	if poll <= 0 {
		poll = time.Second
	}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	last := "" // what was reported last; progress is printed when the flows or requests change
	for {
		st, err := c.Status(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("waiting for %s %s to drain: %w", pool, address, ctx.Err())
			}
			return fmt.Errorf("waiting for %s %s to drain: %w", pool, address, err)
		}
		b, ok := findBackend(st, pool, address)
		switch {
		case !ok:
			fmt.Fprintf(e.stdout, "%s %s: removed\n", pool, address)
			return nil
		case b.State == "removed":
			fmt.Fprintf(e.stdout, "%s %s: %s\n", pool, b.Address, describeBackend(b, e.now()))
			return nil
		case b.State != "draining":
			return fmt.Errorf("%s %s is %s (%s) again, no longer draining", pool, b.Address, b.State, b.Cause)
		}
		if left := fmt.Sprint(b.ActiveFlows, "/", requests(b)); left != last {
			fmt.Fprintf(e.stderr, "%s %s: %s\n", pool, b.Address, describeBackend(b, e.now()))
			last = left
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s %s to drain: %w", pool, b.Address, ctx.Err())
		case <-tick.C:
		}
	}
}
