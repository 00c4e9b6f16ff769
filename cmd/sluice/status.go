package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
)

func statusCmd() *command {
	return &command{
		name:    "status",
		args:    "[--json] [--socket PATH | -c FILE]",
		summary: "show services, pools and every address: state, cause, flows, deadlines",
		detail: `
Services: name, VIP, protocol/mode, pool, backends getting new flows out of
the pool's live addresses, active flows and counters. Then every address of
every pool: where it came from (static or the DNS name), its state (active,
draining, ejected, removed), why, for how long, its flows, the requests
the http services have in flight to it ("-" when none uses its pool; a
draining address waits for both) and, when draining, the time left
before its remaining flows are cut. An http
service with routes lists each route: what it matches (host, path,
methods, header), its pool and the pool's addresses by state; the
service's own pool, if any, is the route "default" (anything else).
An http service's requests are counted in a table of their own (the
data path's flow and packet counters do not see them): requests, by
status class, given up because the client went away, retries, and
connections or requests refused at a limit, since the agent started.
Last, how many warnings and errors the agent logged since it started,
and the last 20 of them with their time (a listener the kernel closed,
DNS servers not answering, a backend refused, a stuck event loop…).

--json prints the admin API's status document.`,
		maxArgs: 0,
		setup: func(fs *flag.FlagSet) runFunc {
			t := addTargetFlags(fs, false)
			asJSON := fs.Bool("json", false, "print the admin API's JSON")
			return func(ctx context.Context, e *env, _ []string) error {
				c, _, err := t.client(e)
				if err != nil {
					return err
				}
				st, err := c.Status(ctx)
				if err != nil {
					return err
				}
				if *asJSON {
					return writeJSON(e.stdout, st)
				}
				return writeStatus(e.stdout, st, e.now())
			}
		},
	}
}

func writeStatus(w io.Writer, st admin.Status, now time.Time) error {
	fmt.Fprintf(w, "agent %s, config %s, up %s\n", orDash(st.Version), orDash(st.ConfigPath), since(now, st.StartedAt))
	if len(st.Interfaces) > 0 {
		var xdp []string
		for _, i := range st.Interfaces {
			s := i.Name + " " + i.Mode
			if i.Mode == admin.ModeDetached {
				s = i.Name + " NOT ATTACHED (its traffic is not balanced; the agent attaches it again when it can)"
			}
			if i.Fallback {
				s += " (FALLBACK from native: slow path)"
			}
			xdp = append(xdp, s)
		}
		fmt.Fprintf(w, "xdp: %s\n", strings.Join(xdp, ", "))
	}
	if len(st.LayoutReset) > 0 {
		fmt.Fprintf(w, "data path: started on fresh maps at this start (the pinned ones had another release's layout: %s; flows were forgotten)\n",
			strings.Join(st.LayoutReset, ", "))
	}
	if st.Node != nil {
		writeNode(w, st.Node, now)
	}
	if st.Runtime != nil {
		writeRuntime(w, st.Runtime)
	}
	fmt.Fprintln(w)
	if len(st.NotApplied) > 0 {
		fmt.Fprintf(w, "NOT APPLIED (the last start or reload could not apply %d thing%s of the config):\n", len(st.NotApplied), plural(len(st.NotApplied)))
		for _, p := range st.NotApplied {
			fmt.Fprintf(w, "  - %s\n", p)
		}
		fmt.Fprintln(w)
	}

	writeWarnings(w, st.Warnings)
	live := map[string]int{} // pool -> addresses not removed
	for _, p := range st.Pools {
		for _, b := range p.Backends {
			if b.State != "removed" {
				live[p.Name]++
			}
		}
	}
	if len(st.Services) == 0 {
		fmt.Fprintln(w, "no services")
	} else {
		t := newTable(w, "SERVICE", "LISTEN", "PROTO/MODE", "POOL", "BACKENDS", "FLOWS", "PACKETS", "BYTES", "NEW FLOWS", "RSTS")
		for _, s := range st.Services {
			pm := s.Protocol
			if s.Mode != "" {
				pm += "/" + s.Mode
			}
			if s.Protocol == "http" {
				// The data path's counters do not see the HTTP stage's
				// traffic: its requests are in the table below.
				t.row(s.Name, s.Listen, pm, servicePool(s), serviceBackends(s, live), "-", "-", "-", "-", "-")
				continue
			}
			t.row(s.Name, s.Listen, pm, servicePool(s), serviceBackends(s, live),
				itoa(s.ActiveFlows), itoa(s.Packets), bytesHuman(s.Bytes), itoa(s.NewFlows), itoa(s.RSTs))
		}
		if err := t.flush(); err != nil {
			return err
		}
		if err := writeHTTPCounts(w, st); err != nil {
			return err
		}
		if err := writeRoutes(w, st); err != nil {
			return err
		}
		if err := writeCertificates(w, st, now); err != nil {
			return err
		}
	}
	fmt.Fprintln(w)
	if len(st.Pools) == 0 {
		fmt.Fprintln(w, "no pools")
		writeRecentLog(w, st.Log, now)
		return nil
	}
	t := newTable(w, "POOL", "ADDRESS", "SOURCE", "STATE", "CAUSE", "AGE", "FLOWS", "REQUESTS", "DRAIN LEFT")
	for _, p := range st.Pools {
		if len(p.Backends) == 0 {
			t.row(p.Name, "(no addresses)", "", "", "", "", "", "", "")
		}
		for _, b := range p.Backends {
			t.row(p.Name, b.Address, b.Source, b.State, b.Cause, since(now, b.Since), itoa(b.ActiveFlows), requests(b), drainLeft(b, now))
		}
		for _, n := range p.NotServed {
			t.row(p.Name, n.Address, n.Source, "not served", n.Reason, "-", "-", "-", "-")
		}
	}
	if err := t.flush(); err != nil {
		return err
	}
	writeRecentLog(w, st.Log, now)
	return nil
}

// writeHTTPCounts is the table of the http services' requests by
// outcome (none without http services).
func writeHTTPCounts(w io.Writer, st admin.Status) error {
	var t *table
	for _, s := range st.Services {
		c := s.HTTP
		if c == nil {
			continue
		}
		if t == nil {
			fmt.Fprintln(w)
			t = newTable(w, "HTTP SERVICE", "REQUESTS", "1XX", "2XX", "3XX", "4XX", "5XX", "CLIENT GONE", "RETRIES", "REFUSED")
		}
		t.row(s.Name, itoa(c.Requests), itoa(c.Status1xx), itoa(c.Status2xx), itoa(c.Status3xx), itoa(c.Status4xx),
			itoa(c.Status5xx), itoa(c.ClientGone), itoa(c.Retries), itoa(c.Refused))
	}
	if t == nil {
		return nil
	}
	return t.flush()
}

// drainLeft is the time before a draining address's flows are cut.
// requests is an address's requests in flight from the http services,
// "-" when none of them uses its pool.
func requests(b admin.Backend) string {
	if b.Requests == nil {
		return "-"
	}
	return itoa(*b.Requests)
}

func drainLeft(b admin.Backend, now time.Time) string {
	if b.DrainDeadline == nil {
		return "-"
	}
	return human(b.DrainDeadline.Sub(now))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// bytesHuman renders a byte count with a binary unit.
func bytesHuman(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// writeRuntime is the status line of the agent's Go runtime.
func writeRuntime(w io.Writer, rt *admin.Runtime) {
	gc := fmt.Sprintf("gc gogc %d (the environment's GOGC)", rt.GOGC)
	if rt.GCPaced {
		gc = fmt.Sprintf("gc paced (gogc %d, live heap %s)", rt.GOGC, bytesHuman(rt.HeapLiveBytes))
	}
	loops := "no http/1 event loops"
	if rt.EventLoops > 0 {
		loops = fmt.Sprintf("http/1 event loops %d (%d connection%s, %d socket%s)", rt.EventLoops,
			rt.LoopConnections, plural(rt.LoopConnections), rt.LoopSockets, plural(rt.LoopSockets))
	}
	fmt.Fprintf(w, "runtime: gomaxprocs %d, %s, %s\n", rt.GOMAXPROCS, gc, loops)
}
