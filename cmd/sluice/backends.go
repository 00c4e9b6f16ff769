package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
)

func backendsCmd() *command {
	return &command{
		name:    "backends",
		args:    "[POOL] [--json] [--socket PATH | -c FILE]",
		summary: "list every address of every pool (or of POOL) with state, weight and counters",
		detail: `
One line per address: pool, address, source (static or the DNS name that
returned it), state and cause, age of the state, weight, active flows,
requests in flight from the http services ("-" when none uses the pool),
packets, bytes and new flows sent to it, the DNS TTL left and, when
draining, the time left before its flows are cut.

--json prints the admin API's pool documents (a list, even for one POOL).
An unknown POOL is an error (exit status 1).`,
		maxArgs:  1,
		argNames: "[POOL]",
		setup: func(fs *flag.FlagSet) runFunc {
			t := addTargetFlags(fs, false)
			asJSON := fs.Bool("json", false, "print the admin API's JSON")
			return func(ctx context.Context, e *env, args []string) error {
				c, _, err := t.client(e)
				if err != nil {
					return err
				}
				st, err := c.Status(ctx)
				if err != nil {
					return err
				}
				pools := st.Pools
				if len(args) == 1 {
					pools = nil
					for _, p := range st.Pools {
						if p.Name == args[0] {
							pools = append(pools, p)
						}
					}
					if pools == nil {
						return fmt.Errorf("pool %q: %w (pools: %s)", args[0], admin.ErrUnknownPool, listOf(poolNames(st.Pools)))
					}
				}
				if pools == nil {
					pools = []admin.Pool{}
				}
				if *asJSON {
					return writeJSON(e.stdout, pools)
				}
				return writeBackends(e.stdout, pools, e.now())
			}
		},
	}
}

func poolNames(pools []admin.Pool) []string {
	names := make([]string, 0, len(pools))
	for _, p := range pools {
		names = append(names, p.Name)
	}
	if len(names) == 0 {
		return []string{"none"}
	}
	return names
}

func writeBackends(w io.Writer, pools []admin.Pool, now time.Time) error {
	if len(pools) == 0 {
		fmt.Fprintln(w, "no pools")
		return nil
	}
	t := newTable(w, "POOL", "ADDRESS", "SOURCE", "STATE", "CAUSE", "AGE", "WEIGHT", "FLOWS", "REQUESTS", "PACKETS", "BYTES", "NEW FLOWS", "TTL", "DRAIN LEFT")
	for _, p := range pools {
		if len(p.Backends) == 0 {
			t.row(p.Name, "(no addresses)", "", "", "", "", "", "", "", "", "", "", "", "")
		}
		for _, b := range p.Backends {
			t.row(p.Name, b.Address, b.Source, b.State, b.Cause, since(now, b.Since), itoa(b.Weight),
				itoa(b.ActiveFlows), requests(b), itoa(b.Packets), bytesHuman(b.Bytes), itoa(b.NewFlows), b.TTLLeft, drainLeft(b, now))
		}
	}
	return t.flush()
}
