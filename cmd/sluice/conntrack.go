package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/datapath"
)

func conntrackCmd() *command {
	return &command{
		name:    "conntrack",
		args:    "[--service S] [--backend ADDR] [--json] [--pinned] [--socket PATH | -c FILE] [--pin-path DIR]",
		summary: "list the flows the data path tracks, by service and backend",
		detail: `
One line per connection: service, protocol, client, VIP, the backend it is
pinned to, its TCP state and how long it has been idle. --backend takes an
ip (every port) or ip:port.

When the agent does not answer, conntrack reads the pinned maps under the
pin path directly (and says so on stderr); service names are then known only
with -c FILE, otherwise services show as #ID. --pinned reads the maps
directly even when the agent runs.`,
		maxArgs: 0,
		setup: func(fs *flag.FlagSet) runFunc {
			t := addTargetFlags(fs, true)
			service := fs.String("service", "", "only flows of service `NAME`")
			backend := fs.String("backend", "", "only flows to backend `ADDR` (ip or ip:port)")
			asJSON := fs.Bool("json", false, "print the flows as JSON")
			pinned := fs.Bool("pinned", false, "read the pinned maps directly, not through the agent")
			return func(ctx context.Context, e *env, _ []string) error {
				filter := admin.FlowFilter{Service: *service, Backend: *backend}
				if filter.Backend != "" {
					if _, err := parseAddr(filter.Backend); err != nil {
						return usagef("--backend: %v", err)
					}
				}
				c, r, err := t.client(e)
				if err != nil {
					return err
				}
				var flows []admin.Flow
				if !*pinned {
					flows, err = c.Flows(ctx, filter)
					if err != nil && !errors.Is(err, admin.ErrUnreachable) {
						return err
					}
					if err != nil {
						fmt.Fprintf(e.stderr, "sluice conntrack: %v; reading the pinned maps under %s directly\n", err, r.pinPath)
					}
				}
				if *pinned || err != nil {
					flows, err = pinnedFlows(e, r, filter)
					if err != nil {
						return err
					}
				}
				if flows == nil {
					flows = []admin.Flow{}
				}
				if *asJSON {
					return writeJSON(e.stdout, flows)
				}
				if len(flows) == 0 {
					fmt.Fprintln(e.stderr, "no flows")
				}
				return writeFlows(e.stdout, flows)
			}
		},
	}
}

func writeFlows(w io.Writer, flows []admin.Flow) error {
	t := newTable(w, "SERVICE", "PROTO", "CLIENT", "VIP", "BACKEND", "STATE", "IDLE")
	for _, f := range flows {
		state := f.State
		if f.Expired {
			state += " (expired)"
		}
		t.row(f.Service, f.Proto, f.Client, f.VIP, f.Backend, state, idleHuman(f.Idle))
	}
	return t.flush()
}

// idleHuman renders the API's idle duration ("1.002s") for a table; text
// that is not a Go duration is shown as is.
func idleHuman(s string) string {
	d, err := time.ParseDuration(s)
	if err != nil {
		return s
	}
	return human(d)
}

// parseAddr accepts ip:port or a bare ip (port 0: any port).
func parseAddr(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not ip:port or ip", s)
	}
	return netip.AddrPortFrom(a, 0), nil
}

// pinnedFlows reads the conntrack map pinned under r.pinPath.
func pinnedFlows(e *env, r resolved, filter admin.FlowFilter) ([]admin.Flow, error) {
	m, err := e.openPinned(r.pinPath)
	if err != nil {
		return nil, fmt.Errorf("opening pinned maps under %s: %w", r.pinPath, err)
	}
	defer m.Close()

	names := serviceNames(r.cfg)
	var want netip.AddrPort
	if filter.Backend != "" {
		want, _ = parseAddr(filter.Backend) // validated by the caller
	}
	var out []admin.Flow
	err = m.Flows(func(f datapath.Flow) bool {
		name, ok := names[svcKey{f.VIP, f.Proto}]
		if !ok {
			name = "#" + strconv.FormatUint(uint64(f.ServiceID), 10)
		}
		if filter.Service != "" && filter.Service != name && filter.Service != f.VIP.String() {
			return true
		}
		if want.IsValid() && (f.Backend.Addr() != want.Addr() || (want.Port() != 0 && f.Backend.Port() != want.Port())) {
			return true
		}
		out = append(out, admin.Flow{
			Service: name,
			Client:  f.Client.String(),
			VIP:     f.VIP.String(),
			Backend: f.Backend.String(),
			Proto:   f.Proto.String(),
			State:   f.State.String(),
			Idle:    f.Idle.Round(time.Millisecond).String(), // as the agent sends it
			Expired: f.Expired,
		})
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("reading pinned conntrack under %s: %w", r.pinPath, err)
	}
	slices.SortFunc(out, func(a, b admin.Flow) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.VIP, b.VIP), cmp.Compare(a.Client, b.Client))
	})
	return out, nil
}

type svcKey struct {
	vip   netip.AddrPort
	proto datapath.Proto
}

// serviceNames maps the L4 services of cfg (nil: none) to their names.
func serviceNames(cfg *config.Config) map[svcKey]string {
	names := map[svcKey]string{}
	if cfg == nil {
		return names
	}
	for _, s := range cfg.L4Services() {
		p := datapath.TCP
		if s.Protocol == config.ProtocolUDP {
			p = datapath.UDP
		}
		names[svcKey{s.ListenAddr, p}] = s.Name
	}
	return names
}
