package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/sluicelb/sluice/l7/certs"
	"github.com/sluicelb/sluice/userspace/config"
)

func checkCmd() *command {
	return &command{
		name:    "check",
		args:    "[--strict] -c FILE",
		summary: "validate a config file, touch nothing",
		detail: `
Reads FILE the way the agent would (strict: unknown keys are errors), applies
defaults and validates it. Prints every problem as FILE:LINE: key: message on
stderr and exits 1 if there is any. A valid file may still have warnings,
settings likely to surprise (the 1h idle timeout of tcp flows, backend
certificates not verified, a listener certificate expired or expiring within
14 days of the check): each is printed on stderr as
FILE:LINE: key: warning: message. It then prints a summary on stdout and
exits 0, or 1 with --strict. Touches neither the kernel nor a running agent.
FILE may also be given as the only argument.`,
		maxArgs:  1,
		argNames: "FILE",
		setup: func(fs *flag.FlagSet) runFunc {
			var path string
			var strict bool
			fs.BoolVar(&strict, "strict", false, "exit 1 when the file has warnings")
			fs.StringVar(&path, "c", "", "config `FILE` to check (required)")
			fs.StringVar(&path, "config", "", "")
			return func(_ context.Context, e *env, args []string) error {
				switch {
				case len(args) == 1 && path != "" && args[0] != path:
					return usagef("two files given (%s and %s)", path, args[0])
				case len(args) == 1:
					path = args[0]
				case path == "":
					return usagef("-c FILE is required")
				}
				cfg, err := e.loadConfig(path)
				var verr *config.ValidationError
				if errors.As(err, &verr) {
					fmt.Fprintln(e.stderr, verr.Error())
					n := len(verr.Problems)
					return fmt.Errorf("%s: %d problem%s, config refused", path, n, plural(n))
				}
				if err != nil {
					return err
				}
				warnings := append(cfg.WarningLines(), certificateWarnings(cfg, time.Now())...)
				for _, w := range warnings {
					fmt.Fprintln(e.stderr, w)
				}
				warned := ""
				if n := len(warnings); n > 0 {
					warned = fmt.Sprintf(", %d warning%s", n, plural(n))
				}
				fmt.Fprintf(e.stdout, "%s: ok (%d pool%s, %d service%s: %d l4, %d http%s)\n", path,
					len(cfg.Pools), plural(len(cfg.Pools)), len(cfg.Services), plural(len(cfg.Services)),
					len(cfg.L4Services()), len(cfg.HTTPServices()), warned)
				if strict && len(warnings) > 0 {
					n := len(warnings)
					return fmt.Errorf("%s: %d warning%s, refused with --strict", path, n, plural(n))
				}
				return nil
			}
		},
	}
}

// certificateWarnings are the warnings of the https listeners'
// certificates that are expired or expire within certs.RenewWithin of now,
// as FILE:LINE: key: warning: message. They depend on the day, so they are
// the check's, not the config's (the running agent warns of them itself).
func certificateWarnings(cfg *config.Config, now time.Time) []string {
	var out []string
	for i, svc := range cfg.Services {
		if svc.Protocol != config.ProtocolHTTP || svc.TLS == nil {
			continue
		}
		cs, err := certs.Load(svc.TLS.Files())
		if err != nil {
			continue // a problem validation reported
		}
		for _, c := range cs.Info() {
			left := c.NotAfter.Sub(now)
			when := c.NotAfter.UTC().Format("2006-01-02 15:04 UTC")
			var msg string
			switch {
			case left <= 0:
				msg = fmt.Sprintf("certificate %s expired %s: clients refuse the handshake", c.File, when)
			case left < certs.RenewWithin:
				msg = fmt.Sprintf("certificate %s expires %s, in %s: renew it", c.File, when, days(left))
			default:
				continue
			}
			out = append(out, fmt.Sprintf("%s:%d: services[%d].tls: warning: %s", cfg.Path, svc.Line, i, msg))
		}
	}
	return out
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
