package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/sluicelb/sluice/userspace/decap"
)

// listFlag is a flag that may be given several times (or comma-separated).
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func decapCmd() *command {
	return &command{
		name:    "decap",
		args:    "attach --interface IF --vip ADDR [--pin-path DIR] [--xdp-mode M] [--no-setup] [--keep] | detach [--pin-path DIR] | status [--pin-path DIR]",
		summary: "on a backend of dsr services: strip the IPIP header sluice nodes add (BPF), set the host up",
		detail: `
Runs on a backend, not on a sluice node. A dsr service's nodes send the
client's packet to the backend inside an outer IPv4 header (IPIP); this
host has no IPIP module to strip it, so sluice ships its own: a small XDP
program that removes the outer header of packets to the given VIPs and
hands the client's packet to the kernel. The backend answers the client
directly, from the VIP.

'decap attach' loads the program (or updates the VIPs of the one attached),
attaches it to every --interface (native XDP, generic as a fallback with
--xdp-mode auto), pins everything under --pin-path (default ` + decap.DefaultPinPath + `,
so it stays after the command exits) and, unless --no-setup, does the host
setup: each VIP on lo (/32), arp_ignore=1 and arp_announce=2 (the backend
never answers ARP for a VIP), rp_filter=2 (loose) on all and each interface.
--interface and --vip may be repeated or comma-separated. Running attach
again attaches the program anew where its pinned link died (the interface
was deleted and made again, or another tool detached it).

With --keep, attach stays in the foreground (a systemd service, see
deploy/sluice-decap.service) and keeps the program attached: every second
it checks each interface's link and attaches the program again where the
link died, redoes the interface's host setup then (a new interface has
the default rp_filter and ARP settings) and puts back a VIP removed from
lo, logging each repair to stderr. SIGTERM or SIGINT ends it; the
program stays attached.

'decap detach' detaches the program and removes its pins (the VIPs stay on
lo). 'decap status' prints the interfaces, VIPs and counters.

The path from the nodes to the backend must carry 20 bytes more than the
client's packets (an MTU of 1520 for 1500-byte packets), see
docs/scale-out.md.`,
		minArgs:  1,
		maxArgs:  1,
		argNames: "attach|detach|status",
		setup: func(fs *flag.FlagSet) runFunc {
			var ifaces, vips listFlag
			fs.Var(&ifaces, "interface", "attach to interface `IF` (repeatable)")
			fs.Var(&vips, "vip", "decapsulate packets to `ADDR` (repeatable)")
			pin := fs.String("pin-path", decap.DefaultPinPath, "bpffs directory `DIR` of the program's pins")
			mode := fs.String("xdp-mode", "auto", "`MODE`: auto, native or generic")
			noSetup := fs.Bool("no-setup", false, "attach only: leave lo, ARP and rp_filter as they are")
			keep := fs.Bool("keep", false, "attach only: stay in the foreground and attach the program again wherever it is lost")
			return func(ctx context.Context, e *env, args []string) error {
				switch args[0] {
				case "attach":
					if len(ifaces) == 0 || len(vips) == 0 {
						return usagef("decap attach needs --interface and --vip")
					}
					switch *mode {
					case "auto", "native", "generic":
					default:
						return usagef("--xdp-mode %q: want auto, native or generic", *mode)
					}
					var addrs []netip.Addr
					for _, v := range vips {
						a, err := netip.ParseAddr(v)
						if err != nil || !a.Is4() {
							return usagef("--vip %q: not an IPv4 address", v)
						}
						addrs = append(addrs, a)
					}
					if err := decap.Attach(decap.Options{Interfaces: ifaces, VIPs: addrs, PinPath: *pin, XDPMode: *mode}); err != nil {
						return err
					}
					if !*noSetup {
						if err := decap.Setup(ifaces, addrs); err != nil {
							return err
						}
					}
					fmt.Fprintf(e.stdout, "decap attached to %s for %s (pins under %s)\n", ifaces.String(), vips.String(), *pin)
					if !*keep {
						return nil
					}
					log := slog.New(slog.NewTextHandler(e.stderr, nil))
					log.Info("keeping the decap program attached (SIGTERM ends this, the program stays)", "interfaces", ifaces.String())
					err := decap.Keep(ctx, decap.KeepOptions{
						Options: decap.Options{Interfaces: ifaces, VIPs: addrs, PinPath: *pin, XDPMode: *mode},
						Setup:   !*noSetup,
						Log:     log,
					})
					if err == nil {
						log.Info("stopped keeping the decap program; it stays attached")
					}
					return err
				case "detach":
					if err := decap.Detach(*pin); err != nil {
						return err
					}
					fmt.Fprintf(e.stdout, "decap detached, pins under %s removed\n", *pin)
					return nil
				case "status":
					st, err := decap.Read(*pin)
					if err != nil {
						return err
					}
					var vs []string
					for _, v := range st.VIPs {
						vs = append(vs, v.String())
					}
					var ifs []string
					for _, name := range st.Interfaces {
						if why, lost := st.Lost[name]; lost {
							// The pinned link runs nothing: this
							// interface's IPIP packets are dropped.
							name += " (NOT ATTACHED: " + why + "; decap attach attaches it again)"
						}
						ifs = append(ifs, name)
					}
					fmt.Fprintf(e.stdout, "interfaces: %s\nvips: %s\ndecapsulated %d, not ipip %d, unknown vip %d, malformed %d\n",
						orDash(strings.Join(ifs, ", ")), orDash(strings.Join(vs, ", ")),
						st.Counters.Decapsulated, st.Counters.NotOurs, st.Counters.UnknownVIP, st.Counters.Malformed)
					return nil
				}
				return usagef("decap: unknown action %q: want attach, detach or status", args[0])
			}
		},
	}
}
