package decap

import (
	"context"
	"log/slog"
	"os"
	"time"
)

// KeepInterval is how often Keep checks the links.
const KeepInterval = time.Second

// KeepOptions configure Keep.
type KeepOptions struct {
	Options
	// Setup: do the host setup (Setup) again for an interface the
	// program is attached to again — an interface made again starts with
	// the default rp_filter and ARP settings — and put back a VIP removed
	// from lo.
	Setup bool
	// Interval between checks (KeepInterval when 0).
	Interval time.Duration
	// Log receives what was found lost and done (nil: discarded).
	Log *slog.Logger
}

// Keep keeps the program attached to every interface of o until ctx is
// done, as the agent keeps its own: an interface deleted and made again
// (a driver reset, a hot-plugged NIC, a recreated bond or veth) takes the
// program's link with it, and another tool may detach it (bpftool link
// detach) — and a DSR backend without its program drops every packet the
// nodes send it. Each check loads nothing new: the program loaded at
// start is attached again where its pinned link is dead or missing, the
// maps are pinned again if their pins were removed, and with o.Setup the
// interface's host setup is done again. Keep returns only when ctx is
// done (nil) or the program cannot be loaded; the program stays attached
// when it returns.
func Keep(ctx context.Context, o KeepOptions) error {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	interval := o.Interval
	if interval <= 0 {
		interval = KeepInterval
	}
	dir := pinPath(o.PinPath)
	objs, err := load(dir)
	if err != nil {
		return err
	}
	defer objs.Close()
	failing := map[string]bool{} // interfaces whose last attach failed (said once)
	mapsFailing := false
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		// Pins removed from under it (the directory too) are made again.
		err := os.MkdirAll(dir, 0o700)
		if err == nil {
			err = pinMaps(objs, dir)
		}
		if err != nil && !mapsFailing {
			log.Error("decap maps cannot be pinned again", "pin_path", dir, "err", err)
		}
		mapsFailing = err != nil
		for _, name := range o.Interfaces {
			why, err := attach(objs.SluiceDecap, dir, name, o.XDPMode)
			if err != nil {
				if !failing[name] {
					log.Error("decap program lost on an interface and not attached again: the nodes' packets to this backend are dropped; retrying every check",
						"interface", name, "lost", why, "err", err)
				}
				failing[name] = true
				continue
			}
			failing[name] = false
			if why == "" {
				continue
			}
			log.Warn("decap program lost on an interface, attached again", "interface", name, "lost", why)
			if o.Setup {
				// A new interface has the default rp_filter and ARP
				// settings.
				if err := Setup([]string{name}, o.VIPs); err != nil {
					log.Error("decap host setup", "interface", name, "err", err)
				}
			}
		}
		if o.Setup {
			added, err := vipsOnLo(o.VIPs)
			if err != nil {
				log.Error("decap host setup", "err", err)
			}
			if len(added) > 0 {
				log.Warn("VIPs removed from lo: added again (the kernel drops the decapsulated packets without them)", "vips", added)
			}
		}
	}
}
