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
		args:    "POOL ADDRESS [--socket PATH | -c FILE]",
		summary: "stop sending new flows to an address; its existing flows go on until drain_timeout",
		detail: `
Moves ADDRESS (ip:port) of POOL to draining with cause "operator": it leaves
the Maglev tables at once, established flows keep going to it, and when it
has no flows left or the pool's drain_timeout passes it is removed (flows
still pinned to it then get a TCP RST). 'sluice undrain' takes it back.

An unknown POOL or ADDRESS is an error (exit status 1).`,
		minArgs:  2,
		maxArgs:  2,
		argNames: "POOL ADDRESS",
		setup: func(fs *flag.FlagSet) runFunc {
			t := addTargetFlags(fs, false)
			return func(ctx context.Context, e *env, args []string) error {
				return addressOp(ctx, e, t, args[0], args[1], true)
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
	s += fmt.Sprintf(", %d flows", b.ActiveFlows)
	if b.DrainDeadline != nil {
		s += ", cut in " + human(b.DrainDeadline.Sub(now))
	}
	return s
}
