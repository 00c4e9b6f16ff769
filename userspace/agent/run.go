// Package agent is sluice's daemon: it loads the config, opens (or adopts)
// the data path, runs every pool's backend lifecycle (userspace/pool) and
// mirrors it into the BPF maps with Maglev tables, and serves the admin
// API and the metrics.
//
// Around the pools it wires the parts that change them: the DNS watcher
// (each backend name is a source of its pool), active health checks, and
// passive ejection fed both by the L7 stage and by connect failures the
// data path sees; and the L7 stage itself, which serves the http services
// from the same pools.
//
// The agent itself is wiring (agent.go) around small owners, each with its
// own lock: the reconciler (reconciler.go: service ids, backend slots,
// Maglev tables, the data-path handle), the flow watcher (flows.go: flow
// counts, conntrack GC, connect failures), and the adapters of DNS
// (dns.go), health checks (health.go), passive ejection (passive.go) and
// the L7 stage (l7.go). Everything but Run is tested without root against
// datapath.Fake. docs/architecture.md draws the owners and their
// dependencies.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/announce"
	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/logring"
	"github.com/sluicelb/sluice/userspace/metrics"
	"github.com/sluicelb/sluice/userspace/sdnotify"
)

// TickInterval is how often flows are counted and lifecycles advanced.
const TickInterval = time.Second

// RunOptions are the agent's settings that do not come from its config
// file (cmd/sluice sets them from the command line and the environment).
type RunOptions struct {
	// L7NetHTTP1 serves plain-text http listeners with net/http's HTTP/1
	// server instead of sluice's own connection loop (see
	// proxy.Options.NetHTTP1): a diagnostic switch, to compare the two.
	L7NetHTTP1 bool
	// L7EventLoops serves the HTTP/1 loop's connections from event loops
	// (proxy.Options.EventLoops).
	L7EventLoops bool
	// GCHeadroom, when > 0, paces the garbage collector so the heap may
	// grow by this many bytes between collections (gcpace), once an http
	// service runs (0: Go's GOGC as it is).
	GCHeadroom uint64
	// Notify is systemd's notification socket (nil: not run as a
	// Type=notify unit): READY=1, WATCHDOG=1, STOPPING=1, STATUS.
	Notify *sdnotify.Notifier
	// StdoutJournal is whether stdout is the systemd journal (where
	// `access_log: stdout` then goes: warned of, see warnJournal).
	StdoutJournal bool
}

// Run runs the agent until ctx is done. SIGHUP reloads the config file. On
// return the data path stays attached and keeps forwarding; a restarted
// agent adopts it without disturbing established flows.
func Run(ctx context.Context, configPath string, log *slog.Logger, version string, ro RunOptions) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The last warnings and errors, for sluice status (kept from the
	// first line on: a config warning at start is one of them).
	recent := logring.New(recentLogEntries)
	log = slog.New(recent.Handler(log.Handler()))
	cfg, err := config.Load(configPath)
	if err != nil {
		return fmt.Errorf("load config: %w", err)
	}
	logWarnings(log, cfg)
	warnJournal(log, cfg, ro.StdoutJournal)
	warnFileLimit(log, cfg, openFileLimit())
	// A second agent started by mistake stops here, before it touches the
	// data path the first one runs.
	if err := admin.Probe(cfg.Admin.Socket); err != nil {
		return fmt.Errorf("another agent may be running: %w", err)
	}
	// The metrics endpoint is bound before anything else is touched: an
	// address that cannot be bound is a start failure with a clear
	// message, not a log line and an agent nobody can scrape.
	var metricsL net.Listener
	if cfg.Metrics.Listen != config.MetricsOff {
		if metricsL, err = metrics.Listen(cfg.Metrics.Listen); err != nil {
			return err
		}
		defer metricsL.Close()
	}
	t := cfg.Datapath.Timeouts
	dp, err := datapath.Open(datapath.Options{
		PinPath:         cfg.Datapath.PinPath,
		Interfaces:      cfg.Interfaces,
		XDPMode:         cfg.Datapath.XDPMode,
		MaglevTableSize: cfg.Datapath.MaglevTableSize,
		ConntrackMax:    cfg.Datapath.ConntrackMax,
		RSTRate:         cfg.Datapath.RSTRate,
		Timeouts: datapath.Timeouts{
			TCPSyn:         t.TCPSyn.D(),
			TCPEstablished: t.TCPEstablished.D(),
			TCPClosing:     t.TCPClosing.D(),
			UDP:            t.UDP.D(),
		},
		Log: log.With("component", "datapath"),
	})
	if err != nil {
		return fmt.Errorf("open data path: %w", err)
	}
	defer func() {
		if err := dp.Close(); err != nil {
			log.Warn("closing data path handles", "err", err)
		}
		log.Info("agent stopped; the data path keeps forwarding")
	}()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The owners are built bottom up in one pass: metrics first (every
	// owner reports to it), then the agent with its owners, then the data
	// path collector, which reads the agent at scrape time.
	m := metrics.New(metrics.Options{Version: version, Logger: log.With("component", "metrics"), LogCounts: recent.Counts})
	var ann *announce.Announcer
	if b := cfg.BGP; b != nil {
		// The routes are the kernel's: the agent exiting (or dying)
		// leaves them, and this one adopts them in its first sync.
		ann = announce.New(announce.Options{
			Routes:    announce.Netlink{Table: int(b.Table), Protocol: int(b.Protocol)},
			Log:       log.With("component", "announce"),
			Metrics:   m.Announce,
			StateFile: NodeStateFile(cfg.Admin.Socket),
			BIRDSocket: func() string {
				if b.BIRDSocket == config.BIRDSocketOff {
					return ""
				}
				return b.BIRDSocket
			}(),
		})
	}
	a := newAgent(dp, options{
		log: log, version: version, configPath: configPath, ctx: ctx, metrics: m,
		routeSrc:      routeSource,
		reverseGC:     dp.GCReverse,
		hostAddrs:     hostAddresses,
		stateFile:     StateFile(cfg.Admin.Socket),
		dns:           newDNSWatcher(cfg.DNS, log),
		l7:            true,
		l7NetHTTP1:    ro.L7NetHTTP1,
		l7EventLoops:  ro.L7EventLoops,
		gcHeadroom:    ro.GCHeadroom,
		accessLogOut:  os.Stdout,
		announce:      ann,
		notify:        ro.Notify,
		stdoutJournal: ro.StdoutJournal,
		recentLog:     recent,
	})
	m.Registry().MustRegister(metrics.NewCollector(dp, a.topology(), cfg.Datapath.ConntrackMax))
	defer func() {
		cancel()
		a.dns.wait()
	}()
	defer func() {
		cancel()
		a.l7.wait() // http services finish their requests (graceful shutdown)
	}()
	defer a.health.stop()
	if err := a.start(time.Now(), cfg); err != nil {
		return err
	}
	a.syncDNS()
	if problems := a.syncL7(); len(problems) > 0 {
		a.mu.Lock()
		a.notApplied = append(a.notApplied, problems...)
		a.mu.Unlock()
		log.Error("some of the config is not applied", "not_applied", problems)
	}
	log.Info("agent started", "version", version, "config", configPath,
		"services", len(cfg.Services), "pools", len(cfg.Pools), "interfaces", cfg.Interfaces)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return a.serve(ctx, cfg.Admin.Socket, metricsL, hup)
}

// serve runs the admin API, the metrics endpoint on metricsL (nil: none),
// the tick loop and a reload per value on hup until ctx is done or the
// admin server fails.
func (a *agent) serve(ctx context.Context, socket string, metricsL net.Listener, hup <-chan os.Signal) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var wg sync.WaitGroup
	defer wg.Wait()
	adminErr := make(chan error, 1)
	srv := admin.NewServer(a, a.log.With("component", "admin"))
	wg.Go(func() {
		if err := srv.Serve(ctx, socket); err != nil {
			adminErr <- err
		}
	})

	if a.metrics != nil && metricsL != nil {
		wg.Go(func() {
			// The socket is bound; a failure to serve it later is logged
			// and forwarding goes on.
			if err := a.metrics.ServeListener(ctx, metricsL); err != nil {
				a.log.Error("metrics endpoint stopped", "listen", metricsL.Addr().String(), "err", err)
			}
		})
	}

	// systemd (Type=notify) is told the agent is ready once the CLI can
	// reach it, and that it stops.
	select {
	case <-srv.Listening():
		a.notifySystemd("READY=1\n" + a.systemdStatus())
	case err := <-adminErr:
		return fmt.Errorf("admin API: %w", err)
	case <-ctx.Done():
		return nil
	}
	defer a.notifySystemd("STOPPING=1")
	// The watchdog (WatchdogSec) is fed from this loop only: a loop stuck
	// in a tick or a reload stops feeding it, and systemd restarts the
	// agent (the data path goes on forwarding meanwhile; the next agent
	// adopts it). A nil channel never fires: no watchdog asked.
	// The L7 stage's event loops run on threads of their own: they are
	// checked by a goroutine of their own, and a loop that runs nothing
	// for l7PingTimeout stops the feeding too (its connections are not
	// served, and a restart is the way out).
	var watchdog <-chan time.Time
	pingEvery, pingTimeout := l7PingEvery, l7PingTimeout
	if d := a.notify.Watchdog(); d > 0 {
		wd := time.NewTicker(d / 2)
		defer wd.Stop()
		watchdog = wd.C
		a.notifySystemd("WATCHDOG=1")
		pingEvery, pingTimeout = min(pingEvery, d/4), min(pingTimeout, d/3)
	}
	if a.l7Ping != nil {
		wg.Go(func() { a.watchL7Loops(ctx, pingEvery, pingTimeout) })
	}

	ticker := time.NewTicker(TickInterval)
	defer ticker.Stop()
	// deadline fires at the next drain deadline or ejection end, so a
	// drained flow is cut at drain_timeout, not up to a tick later.
	deadline := time.NewTimer(time.Hour)
	defer deadline.Stop()
	for {
		next := a.nextDeadline()
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), 0)
		}
		deadline.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case err := <-adminErr:
			return fmt.Errorf("admin API: %w", err)
		case <-watchdog:
			if a.l7Stuck.Load() == 0 {
				a.notifySystemd("WATCHDOG=1")
			}
		case <-hup:
			a.log.Info("SIGHUP: reloading config")
			if err := a.Reload(ctx); err != nil && !errors.Is(err, admin.ErrReloadRefused) {
				a.log.Error("reload failed", "err", err)
			}
		case <-a.transitions.kick:
			// A pool changed outside the agent's own calls (an ejection
			// by the L7 stage): apply it now, not on the next tick.
			a.reconcileNow()
		case now := <-deadline.C:
			if err := a.tick(now); err != nil {
				a.log.Debug("tick finished with errors, retrying on the next one", "err", err)
			}
		case now := <-ticker.C:
			if err := a.tick(now); err != nil {
				a.log.Debug("tick finished with errors, retrying on the next one", "err", err)
			}
		}
	}
}

// notifySystemd sends state to systemd, when it runs the agent; a failure
// is logged, never fatal.
// How often the L7 stage's event loops are checked, and how long one may
// run nothing before it counts as stuck (shorter under a shorter
// systemd watchdog).
const (
	l7PingEvery   = 5 * time.Second
	l7PingTimeout = 10 * time.Second
)

// watchL7Loops checks the L7 stage's event loops every `every` until ctx
// ends, recording in l7Stuck whether the last check found one that ran
// nothing for `timeout`, and saying so.
func (a *agent) watchL7Loops(ctx context.Context, every, timeout time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := a.l7Ping(timeout)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			if a.l7Stuck.Swap(0) != 0 {
				a.log.Info("l7 event loops run again")
			}
			continue
		}
		if a.l7Stuck.CompareAndSwap(0, time.Now().UnixNano()) {
			what := "restart the agent: its connections are not served"
			if a.notify.Watchdog() > 0 {
				what = "the systemd watchdog is no longer fed: the agent will be restarted (with its goroutines' stacks in the journal)"
			}
			a.log.Error("an l7 event loop runs nothing: "+what, "err", err)
		}
	}
}

func (a *agent) notifySystemd(state string) {
	if err := a.notify.Notify(state); err != nil {
		a.log.Warn("telling systemd the agent's state", "state", state, "err", err)
	}
}

// systemdStatus is the STATUS line `systemctl status` shows.
func (a *agent) systemdStatus() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return fmt.Sprintf("STATUS=serving %d services, %d pools", len(a.cfg.Services), len(a.cfg.Pools))
}

// routeSource asks the kernel which source address it uses towards ip.
func routeSource(ip netip.Addr) netip.Addr {
	routes, err := netlink.RouteGet(net.IP(ip.AsSlice()))
	if err != nil || len(routes) == 0 {
		return netip.Addr{}
	}
	src, ok := netip.AddrFromSlice(routes[0].Src)
	if !ok {
		return netip.Addr{}
	}
	return src.Unmap()
}

// warnJournal warns, when the agent's stdout is the systemd journal
// (stdoutJournal), of the http services whose access log goes there:
// journald drops a unit's lines past its rate limit, and the agent's own
// messages with them, just when an incident makes them matter.
func warnJournal(log *slog.Logger, cfg *config.Config, stdoutJournal bool) {
	if !stdoutJournal {
		return
	}
	var names []string
	for _, s := range cfg.Services {
		if s.Protocol == config.ProtocolHTTP && s.AccessLog == config.AccessLogStdout {
			names = append(names, s.Name)
		}
	}
	if len(names) > 0 {
		log.Warn("access log to the systemd journal: past its rate limit (journald's RateLimitBurst, 10000 lines per 30s by default) "+
			"journald drops this unit's lines, the agent's own warnings with them; set access_log to a file, "+
			"e.g. /var/log/sluice/access.log (the unit's LogsDirectory, see docs/operations.md)", "services", names)
	}
}

// fileReserve is the file descriptors the agent needs besides the http
// services' connections: pinned maps and programs, listeners, DNS and
// health-check sockets, logs, the admin and metrics endpoints.
const fileReserve = 256

// warnFileLimit warns when the http services' connection limits allow more
// sockets than the agent may open (RLIMIT_NOFILE; limit 0: unknown): past
// it, accepts and connects fail with EMFILE — new clients wait in the
// listen queue, requests get 503 — before any limit of sluice's is reached
// (nginx warns alike: "worker_connections exceed open file resource
// limit"). Each client connection is a socket, and each request in flight
// holds a backend connection.
func warnFileLimit(log *slog.Logger, cfg *config.Config, limit uint64) {
	need := uint64(fileReserve)
	for _, svc := range cfg.HTTPServices() {
		if c := svc.Client; c != nil {
			need += uint64(c.MaxConnections) + uint64(c.MaxRequests)
		}
	}
	if limit == 0 || need <= limit || len(cfg.HTTPServices()) == 0 {
		return
	}
	log.Warn("the http services' client.max_connections and client.max_requests allow more sockets than the agent may open: "+
		"past the limit new connections wait unaccepted and requests get 503 (host_resources); "+
		"raise LimitNOFILE in the systemd unit (ulimit -n elsewhere) or lower those limits",
		"sockets_allowed", need, "open_files_limit", limit)
}

// openFileLimit is the agent's RLIMIT_NOFILE (the Go runtime raised the
// soft limit to the hard one at start); 0 when it cannot be read or is
// unlimited.
func openFileLimit() uint64 {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil || r.Cur == unix.RLIM_INFINITY {
		return 0
	}
	return r.Cur
}

// logWarnings logs the config's warnings (what `sluice check` prints as
// warnings: valid settings likely to surprise), one line each.
func logWarnings(log *slog.Logger, cfg *config.Config) {
	for i, w := range cfg.WarningLines() {
		log.Warn("config warning", "file", cfg.Path, "line", cfg.Warnings[i].Line, "warning", w)
	}
}
