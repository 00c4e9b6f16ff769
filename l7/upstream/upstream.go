// Package upstream keeps keep-alive connections to backend addresses for the
// L7 stage. Every connection remembers the address it was dialled to, the
// DNS answer that address came from and the generation of the address when
// it was dialled. When an address leaves `active` (Retire), its idle
// connections are closed at once and its busy ones are closed when their
// request ends instead of going back to the pool: none is reused, so a
// pooled connection can never keep traffic on an address DNS no longer
// returns (field report 1). Every connection is closed after MaxLifetime,
// idle or not (a busy one after its request), and an idle one after
// IdleTimeout. Pooling itself stays on.
//
// Connections are plain TCP or TLS (with SNI). Reads and writes carry their
// own deadlines so the proxy can enforce "between two writes" and "between
// two reads" timeouts as well as an overall deadline.
package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluicelb/sluice/l7/evloop"
)

// Defaults for zero Options fields.
const (
	DefaultMaxIdlePerAddr  = 64
	DefaultIdleTimeout     = 30 * time.Second
	DefaultMaxLifetime     = 5 * time.Minute
	DefaultMaxConnsPerAddr = 1024 // Envoy's circuit breaker max_connections
	DefaultMaxDialsPerAddr = 32
	// DefaultMaxHeaderBytes and DefaultMaxHeaderCount bound a backend's
	// response header (Envoy: max_response_headers_kb 60,
	// max_response_headers_count 100; HAProxy: tune.bufsize 16 KiB,
	// tune.http.maxhdr 101; nginx: proxy_buffer_size 4–8 KiB).
	DefaultMaxHeaderBytes = 64 << 10
	DefaultMaxHeaderCount = 100
)

// Options configure Pools. Zero values take the defaults.
type Options struct {
	MaxIdlePerAddr int
	IdleTimeout    time.Duration
	MaxLifetime    time.Duration
	// MaxConnsPerAddr bounds the connections (busy, idle and being
	// dialled) to one address; MaxDialsPerAddr the dials in progress to
	// one address. A Get that finds the address at a limit waits for a
	// connection to be given back or closed, until its connect deadline,
	// then fails with ErrAddrFull.
	MaxConnsPerAddr int
	MaxDialsPerAddr int
	// TLS, when set, makes every connection TLS; ServerName is set per
	// connection from the name passed to Get.
	TLS *tls.Config
	Log *slog.Logger
	// Dial replaces the TCP dialer (tests).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnClose, when set, is told about every connection closed and why
	// (one of the Close* reasons), for metrics. It must not block.
	OnClose func(addr netip.AddrPort, reason string)
}

// DialError is a failure to connect (TCP or TLS handshake): no request byte
// can have reached the backend.
type DialError struct {
	Addr    netip.AddrPort
	Timeout bool // the connect deadline passed
	Err     error
}

func (e *DialError) Error() string { return fmt.Sprintf("connect to %s: %v", e.Addr, e.Err) }

func (e *DialError) Unwrap() error { return e.Err }

// Reasons a connection is closed, passed to Options.OnClose (and to Put by
// callers that close one).
const (
	CloseDraining = "draining" // its address left active (Retire)
	CloseLifetime = "lifetime" // older than MaxLifetime
	CloseIdle     = "idle"     // idle longer than IdleTimeout
	CloseBackend  = "backend"  // the backend closed it or asked to (Connection: close, body until EOF)
	CloseError    = "error"    // the exchange on it failed
	CloseClient   = "client"   // the client went away in the middle of the exchange
	CloseFull     = "full"     // the idle pool of its address is full, or at the connection limit one of the other kind (event loop or not) makes room
	CloseShutdown = "shutdown" // the pools were closed
	CloseUpgrade  = "upgrade"  // it carried an upgraded protocol (WebSocket) to its end
	CloseRemoved  = "removed"  // in use when its address was removed (drain_timeout passed): cut (Cut)
)

// ErrClosed is returned by Get after Close.
var ErrClosed = errors.New("upstream pools closed")

// ErrAddrFull is returned by Get when the address stayed at its
// connection or dial limit until the connect deadline. It says nothing
// about the backend's health: sluice itself held back.
var ErrAddrFull = errors.New("address at its connection limit")

// LocalFailure is whether err, from a dial, is this host running out of
// what a connection needs — file descriptors (EMFILE, ENFILE), local
// ports (EADDRNOTAVAIL: every ephemeral port towards the address in use),
// kernel memory (ENOBUFS, ENOMEM) — rather than anything the backend did:
// such a failure must not count against the backend (ejecting every
// backend for the host's own shortage turns a slowdown into an outage).
func LocalFailure(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.ENOBUFS) ||
		errors.Is(err, syscall.ENOMEM)
}

// Pools holds the connections of one L7 service. It is safe for concurrent use.
type Pools struct {
	opts Options
	log  *slog.Logger
	tls  dialTLS // opts.TLS until SetTLS

	mu     sync.Mutex
	addrs  map[netip.AddrPort]*addrPool
	closed bool
	// loopDial: connections asked for from an event loop's task are dialled
	// by the loop (the default dialer only; a test's Dial is used as is).
	loopDial bool
}

type addrPool struct {
	gen     uint64
	retired bool
	// idle holds the idle connections, a list per server name ("" without
	// TLS; an address has one or a few: a search of this slice is cheaper
	// than a map's hash, twice a request), each most recent last.
	idle  []idleList
	nidle int // the connections in idle, all server names
	busy  int
	// out holds the connections handed out and not yet given back, for
	// Cut (busy also counts those being checked or moved); each knows its
	// index in it (Conn.outAt), so giving one back is a swap, not a
	// search or a map's hash.
	out     []*Conn
	dialing int
	dialled uint64
	reused  uint64
	// freed is closed (and replaced) when a connection of the address is
	// given back or closed, or a dial ends: Gets waiting at a limit look again.
	freed chan struct{}
}

// idleList is an address's idle connections of one server name.
type idleList struct {
	name  string
	conns []*Conn
}

// idleOf is the idle list of serverName, nil when it has none; the
// pointer is good until the next idleFor.
func (ap *addrPool) idleOf(serverName string) *idleList {
	for i := range ap.idle {
		if ap.idle[i].name == serverName {
			return &ap.idle[i]
		}
	}
	return nil
}

// idleFor is idleOf, making the list when there is none.
func (ap *addrPool) idleFor(serverName string) *idleList {
	if il := ap.idleOf(serverName); il != nil {
		return il
	}
	ap.idle = append(ap.idle, idleList{name: serverName})
	return &ap.idle[len(ap.idle)-1]
}

// signalLocked wakes the Gets waiting for room at this address.
func (ap *addrPool) signalLocked() {
	if ap.freed != nil {
		close(ap.freed)
		ap.freed = nil
	}
}

// lendLocked records c as handed out (until Put): its address's pool
// stays in Pools.addrs while c is out (busy > 0), so Put finds it there.
func (ap *addrPool) lendLocked(c *Conn) {
	c.lender, c.outAt = ap, len(ap.out)
	ap.out = append(ap.out, c)
}

// takeBackLocked undoes lendLocked.
func (ap *addrPool) takeBackLocked(c *Conn) {
	i, last := c.outAt, len(ap.out)-1
	if i < 0 || i > last || ap.out[i] != c {
		return // not lent by ap
	}
	ap.out[i] = ap.out[last]
	ap.out[i].outAt = i
	ap.out[last] = nil
	ap.out = ap.out[:last]
	c.lender, c.outAt = nil, -1
}

// takeIdleLocked takes the idle connection at i of il out of it.
func (ap *addrPool) takeIdleLocked(il *idleList, i int) *Conn {
	l := il.conns
	c := l[i]
	copy(l[i:], l[i+1:])
	l[len(l)-1] = nil
	il.conns = l[:len(l)-1]
	ap.nidle--
	return c
}

// takeAllIdleLocked empties the idle lists, appending each connection to
// cs to be closed for why.
func (ap *addrPool) takeAllIdleLocked(why string, cs []closing) []closing {
	for i := range ap.idle {
		for _, c := range ap.idle[i].conns {
			cs = append(cs, closing{c, why})
		}
	}
	clear(ap.idle)
	ap.idle = ap.idle[:0]
	ap.nidle = 0
	return cs
}

// orDefault sets *v to d when it is not positive (an option left unset).
func orDefault[T int | time.Duration](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

// dialAndLog fills an unset dial function with a plain dialer and returns
// log, or a logger that discards when it is nil (both pool kinds).
func dialAndLog(dial *func(ctx context.Context, network, addr string) (net.Conn, error), log *slog.Logger) *slog.Logger {
	if *dial == nil {
		var d net.Dialer
		*dial = d.DialContext
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return log
}

// New returns empty pools.
func New(opts Options) *Pools {
	orDefault(&opts.MaxIdlePerAddr, DefaultMaxIdlePerAddr)
	orDefault(&opts.IdleTimeout, DefaultIdleTimeout)
	orDefault(&opts.MaxLifetime, DefaultMaxLifetime)
	orDefault(&opts.MaxConnsPerAddr, DefaultMaxConnsPerAddr)
	orDefault(&opts.MaxDialsPerAddr, DefaultMaxDialsPerAddr)
	loopDial := opts.Dial == nil
	log := dialAndLog(&opts.Dial, opts.Log)
	p := &Pools{opts: opts, log: log, addrs: map[netip.AddrPort]*addrPool{}, loopDial: loopDial}
	p.tls.cfg.Store(opts.TLS)
	return p
}

// SetTLS makes cfg the TLS configuration of the connections dialled from
// now on (a CA file renewed); those open keep theirs. Backends are TLS or
// not for the pools' whole life: cfg must be nil exactly when
// Options.TLS was.
func (p *Pools) SetTLS(cfg *tls.Config) error { return p.tls.set(cfg) }

// dialTLS is the TLS configuration of a pool's new connections (nil:
// plain text), replaceable while the pool runs but never switched on or
// off.
type dialTLS struct{ cfg atomic.Pointer[tls.Config] }

func (d *dialTLS) load() *tls.Config { return d.cfg.Load() }

func (d *dialTLS) set(cfg *tls.Config) error {
	if (cfg == nil) != (d.cfg.Load() == nil) {
		return errors.New("upstream TLS cannot be switched on or off on running pools")
	}
	d.cfg.Store(cfg)
	return nil
}

func (p *Pools) addrLocked(addr netip.AddrPort) *addrPool {
	ap := p.addrs[addr]
	if ap == nil {
		ap = &addrPool{}
		p.addrs[addr] = ap
	}
	return ap
}

// Get returns a connection to addr: the most recently used idle one that is
// still alive and within its lifetime, or a new one dialled before
// connectBy. serverName is the TLS SNI (ignored without TLS). info is the
// DNS answer (or other origin) the address came from, kept on a new
// connection for the logs. A dial failure is a *DialError; an address
// that stays at its connection or dial limit until connectBy gives
// ErrAddrFull.
//
// The liveness check of an idle connection (a non-blocking peek) runs
// outside the pools' lock: the candidate is taken out of the idle list
// first, so no other request waits on it.
func (p *Pools) Get(ctx context.Context, addr netip.AddrPort, serverName, info string, connectBy time.Time) (*Conn, error) {
	return p.get(ctx, addr, serverName, info, connectBy, false)
}

// RecentWithoutPeek is how recently a pooled connection must have been
// given back for GetResendable to hand it out without the liveness peek:
// longer than a loaded pool's connections ever idle (a few ms), shorter
// than the idle timeouts backends close connections at (seconds: nginx
// 75 s, Apache 5 s, HAProxy and Envoy longer by default). A connection
// the backend closed within it (a restart closes them all at once) costs
// the request one write and a resend on another connection, taken with
// Get: peeked, so the dead ones behind it are dropped, not met one by one.
const RecentWithoutPeek = 250 * time.Millisecond

// GetResendable is Get for a request the caller sends again on another
// connection when this one turns out closed before any response byte
// (Conn.Reused): a connection given back within RecentWithoutPeek is
// handed out without the liveness peek (a system call per request under
// load, where the most recently used connection is taken and is seldom
// idle for long), unless its last response may have left bytes behind
// (PeekNext).
func (p *Pools) GetResendable(ctx context.Context, addr netip.AddrPort, serverName, info string, connectBy time.Time) (*Conn, error) {
	return p.get(ctx, addr, serverName, info, connectBy, true)
}

func (p *Pools) get(ctx context.Context, addr netip.AddrPort, serverName, info string, connectBy time.Time, resendable bool) (*Conn, error) {
	if p.opts.TLS == nil {
		serverName = ""
	}
	// An event loop's task takes a connection of its own loop first (one
	// of another loop moves to this one: two epoll_ctl calls); a
	// goroutine takes one of the runtime's poller (see pickIdle).
	task := evloop.TaskFrom(ctx)
	var loop *evloop.Loop
	if task != nil && p.loopDial {
		loop = task.Loop() // (without loopDial its dials give the runtime's sockets: any will do)
	}
	for {
		now := task.Now() // the loop's turn in a task (evloop), time.Now() elsewhere
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		ap := p.addrLocked(addr)
		ap.retired = false
		var cand *Conn
		var stale []closing
		move := false
		full := ap.busy+ap.nidle+ap.dialing >= p.opts.MaxConnsPerAddr
		il := ap.idleOf(serverName)
		for il != nil && len(il.conns) > 0 {
			l := il.conns
			i, mv := pickIdle(l, loop)
			if i < 0 && !full {
				break // none of the caller's kind: dial one
			}
			if i < 0 {
				// At the limit: one of the other kind makes room for
				// the caller's.
				stale = append(stale, closing{ap.takeIdleLocked(il, len(l)-1), CloseFull})
				break
			}
			c := ap.takeIdleLocked(il, i)
			if why := p.expired(c, now); why != "" {
				stale = append(stale, closing{c, why})
				continue
			}
			cand, move = c, mv
			break
		}
		if cand != nil && move {
			// Counted busy while it moves to the caller's loop.
			ap.busy++
			p.mu.Unlock()
			p.closeAll(stale)
			stale = nil
			err := cand.moveTo(loop)
			p.mu.Lock()
			ap.busy--
			if err != nil {
				ap.signalLocked()
				p.mu.Unlock()
				p.log.Debug("upstream connection not moved to an event loop", "error", err)
				p.closeAll([]closing{{cand, CloseError}})
				continue
			}
		}
		if cand != nil && resendable && cand.recent(now) {
			// Handed out without the peek (see GetResendable).
			ap.busy++
			ap.reused++
			ap.lendLocked(cand)
			p.mu.Unlock()
			p.closeAll(stale)
			cand.reused = true
			cand.requests++
			return cand, nil
		}
		if cand != nil {
			// Counted busy while its liveness is checked.
			ap.busy++
			p.mu.Unlock()
			p.closeAll(stale)
			if cand.alive() {
				p.mu.Lock()
				ap.reused++
				ap.lendLocked(cand)
				p.mu.Unlock()
				cand.reused = true
				cand.requests++
				return cand, nil
			}
			p.mu.Lock()
			ap.busy--
			ap.signalLocked()
			p.mu.Unlock()
			p.closeAll([]closing{{cand, CloseBackend}})
			continue
		}
		if ap.busy+ap.nidle+ap.dialing >= p.opts.MaxConnsPerAddr || ap.dialing >= p.opts.MaxDialsPerAddr {
			// At a limit: wait for room (or an idle connection) until
			// the connect deadline.
			if len(stale) > 0 {
				ap.signalLocked()
			}
			if ap.freed == nil {
				ap.freed = make(chan struct{})
			}
			freed := ap.freed
			p.mu.Unlock()
			p.closeAll(stale)
			var err error
			// On an event loop the wait runs aside (the loop serves others).
			evloop.Block(ctx, func() { err = waitRoom(ctx, freed, connectBy) })
			if err != nil {
				return nil, err
			}
			continue
		}
		ap.dialing++
		gen := ap.gen
		p.mu.Unlock()
		p.closeAll(stale)
		// A dial is not cut short when the caller goes away (its
		// deadline still holds): the backend has accepted the connection
		// by then, and a caller that gives it back unused (Put) leaves it
		// for the next request instead of wasting it.
		c, err := p.dial(context.WithoutCancel(ctx), addr, serverName, info, gen, connectBy)
		p.mu.Lock()
		ap = p.addrLocked(addr)
		ap.dialing--
		if err == nil {
			ap.busy++
			ap.dialled++
			ap.lendLocked(c)
		}
		ap.signalLocked()
		if err != nil && LocalFailure(err) && ap.busy+ap.dialing > 0 {
			// This host is out of ports (or descriptors, or memory) for
			// a new connection, and connections to the address are in
			// use (or being dialled): one of them given back serves the
			// caller; wait for it until the connect deadline rather than
			// fail at once.
			ap.freed = make(chan struct{})
			freed := ap.freed
			p.mu.Unlock()
			var werr error
			evloop.Block(ctx, func() { werr = waitRoom(ctx, freed, connectBy) })
			switch {
			case werr == nil:
				continue
			case errors.Is(werr, ErrAddrFull):
				return nil, err // nothing came back in time: the dial's error
			default:
				return nil, werr
			}
		}
		p.mu.Unlock()
		return c, err
	}
}

// affinityScan bounds how many of the most recently idle connections are
// looked at for one of the caller's event loop.
const affinityScan = 8

// pickIdle is the index of the idle connection to hand out, among the
// last affinityScan given back (the most recent first). For an event
// loop's task (loop != nil): one of that loop, else one of another loop,
// else one of the runtime's poller, which moves to the loop first (move:
// a task waiting on such a socket would block its whole loop). For a
// goroutine (loop == nil): one of the runtime's poller only (a goroutine
// waits on a loop's socket with poll(2), on a thread of its own), and -1
// when none is there: the caller dials one (closing one of the other
// kind for room, CloseFull, when the address is at its connection
// limit).
func pickIdle(l []*Conn, loop *evloop.Loop) (i int, move bool) {
	last := len(l) - 1
	other, poller := -1, -1
	for i := last; i >= 0 && i > last-affinityScan; i-- {
		ec := l[i].ev
		switch {
		case loop == nil && ec == nil, ec != nil && ec.Loop() == loop:
			return i, false
		case loop != nil && ec != nil && other < 0:
			other = i
		case loop != nil && ec == nil && poller < 0 && l[i].nc == l[i].raw:
			poller = i
		}
	}
	if other >= 0 {
		return other, false
	}
	return poller, poller >= 0
}

// waitRoom waits until freed is closed, ctx ends or by passes.
func waitRoom(ctx context.Context, freed <-chan struct{}, by time.Time) error {
	t := time.NewTimer(time.Until(by))
	defer t.Stop()
	select {
	case <-freed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return ErrAddrFull
	}
}

func (p *Pools) dial(ctx context.Context, addr netip.AddrPort, serverName, info string, gen uint64, connectBy time.Time) (*Conn, error) {
	dctx, cancel := context.WithDeadline(ctx, connectBy)
	defer cancel()
	var raw net.Conn
	var err error
	if p.loopDial && evloop.InTask(ctx) {
		// From an event loop's task: the socket is the loop's.
		raw, err = evloop.Dial(dctx, addr)
	} else {
		raw, err = p.opts.Dial(dctx, "tcp", addr.String())
	}
	if err != nil {
		return nil, &DialError{Addr: addr, Timeout: isTimeout(err) || dctx.Err() == context.DeadlineExceeded && ctx.Err() == nil, Err: err}
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	var nc = raw
	if tc := p.tls.load(); tc != nil {
		cfg := tc.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = serverName
		}
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(&tlsUnder{Conn: raw}, cfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			raw.Close()
			return nil, &DialError{Addr: addr, Timeout: isTimeout(err) || dctx.Err() == context.DeadlineExceeded && ctx.Err() == nil, Err: fmt.Errorf("tls handshake: %w", err)}
		}
		nc = tc
	}
	c := newConn(p, nc, raw, addr, serverName, info, gen)
	c.requests = 1
	return c, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Put gives back a connection whose exchange finished. closeReason is ""
// when the exchange left it clean (whole response read, no Connection:
// close); otherwise the connection is closed for that reason. A clean one
// goes back to the pool only if its address was not retired since it was
// dialled, it is within its lifetime, and the pool has room.
func (p *Pools) Put(c *Conn, closeReason string) {
	now := c.sock.Now()
	p.mu.Lock()
	ap := c.lender
	if ap == nil {
		ap = p.addrs[c.addr]
	}
	if ap != nil {
		ap.busy--
		ap.takeBackLocked(c)
		ap.signalLocked()
	}
	why := closeReason
	switch {
	case c.cut.Load():
		why = CloseRemoved
	case why != "":
	case p.closed:
		why = CloseShutdown
	case ap == nil || ap.retired || ap.gen != c.gen:
		why = CloseDraining
	case now.Sub(c.dialled) >= p.opts.MaxLifetime:
		why = CloseLifetime
	case ap.nidle >= p.opts.MaxIdlePerAddr:
		why = CloseFull
	default:
		c.idleSince = now
		c.clearDeadlines()
		il := ap.idleFor(c.serverName)
		il.conns = append(il.conns, c)
		ap.nidle++
	}
	p.mu.Unlock()
	if why != "" {
		p.closeAll([]closing{{c, why}})
	}
}

type closing struct {
	c   *Conn
	why string
}

func (p *Pools) closeAll(cs []closing) {
	// Every connection ends here exactly once: idle ones are taken out of
	// the pool first, busy ones come through Put (a Conn.Close to
	// interrupt an exchange is always followed by Put).
	for _, x := range cs {
		x.c.close()
		if p.opts.OnClose != nil {
			p.opts.OnClose(x.c.addr, x.why)
		}
	}
}

// expired says why an idle connection must not be used any more ("" if it may).
func (p *Pools) expired(c *Conn, now time.Time) string {
	switch {
	case now.Sub(c.dialled) >= p.opts.MaxLifetime:
		return CloseLifetime
	case now.Sub(c.idleSince) >= p.opts.IdleTimeout:
		return CloseIdle
	}
	return ""
}

// Retire is called when addr leaves `active` (draining, ejected, removed):
// its idle connections are closed now, its busy ones when they are Put.
// The address's next Get (it is active again) dials afresh.
func (p *Pools) Retire(addr netip.AddrPort) int {
	p.mu.Lock()
	ap := p.addrs[addr]
	if ap == nil {
		p.mu.Unlock()
		return 0
	}
	ap.gen++
	ap.retired = true
	idle := ap.takeAllIdleLocked(CloseDraining, nil)
	ap.signalLocked()
	if ap.busy == 0 && ap.dialing == 0 {
		delete(p.addrs, addr)
	}
	p.mu.Unlock()
	p.closeAll(idle)
	if len(idle) > 0 {
		p.log.Info("closed idle upstream connections", "address", addr.String(), "count", len(idle))
	}
	return len(idle)
}

// Cut is called when addr is removed (its drain_timeout passed, or it
// left the config): what is still in flight to it is cut, as the data
// path answers a flow still pinned to a removed backend with a reset.
// Its connections in use are closed now (their exchanges fail; Put
// counts them CloseRemoved), its idle ones as Retire closes them. It
// returns how many in use were closed.
func (p *Pools) Cut(addr netip.AddrPort) int {
	p.Retire(addr)
	p.mu.Lock()
	var cut []*Conn
	if ap := p.addrs[addr]; ap != nil {
		cut = append(cut, ap.out...)
	}
	p.mu.Unlock()
	for _, c := range cut {
		c.cut.Store(true)
		c.close() // the owner's read or write fails; its Put follows
	}
	if len(cut) > 0 {
		p.log.Info("cut upstream connections in use: address removed", "address", addr.String(), "count", len(cut))
	}
	return len(cut)
}

// Sweep closes idle connections past their idle timeout or lifetime.
func (p *Pools) Sweep(now time.Time) {
	var old []closing
	p.mu.Lock()
	for addr, ap := range p.addrs {
		idle := ap.idle[:0]
		for _, il := range ap.idle {
			l := il.conns
			kept := l[:0]
			for _, c := range l {
				if why := p.expired(c, now); why != "" {
					old = append(old, closing{c, why})
				} else {
					kept = append(kept, c)
				}
			}
			if len(kept) < len(l) {
				ap.signalLocked()
			}
			clear(l[len(kept):])
			ap.nidle -= len(l) - len(kept)
			if len(kept) > 0 {
				idle = append(idle, idleList{il.name, kept})
			}
		}
		clear(ap.idle[len(idle):])
		ap.idle = idle
		if ap.retired && ap.busy == 0 && ap.dialing == 0 && ap.nidle == 0 {
			delete(p.addrs, addr)
		}
	}
	p.mu.Unlock()
	p.closeAll(old)
}

// Run sweeps every interval until ctx ends.
func (p *Pools) Run(ctx context.Context, interval time.Duration) { sweepEvery(ctx, interval, p.Sweep) }

// sweepEvery calls sweep every interval (a second when unset) until ctx
// ends: the Run of both pool kinds.
func sweepEvery(ctx context.Context, interval time.Duration, sweep func(time.Time)) {
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			sweep(now)
		}
	}
}

// CloseIdle closes every idle connection.
func (p *Pools) CloseIdle() { p.closeIdle(CloseIdle) }

func (p *Pools) closeIdle(why string) {
	var idle []closing
	p.mu.Lock()
	for _, ap := range p.addrs {
		idle = ap.takeAllIdleLocked(why, idle)
		ap.signalLocked()
	}
	p.mu.Unlock()
	p.closeAll(idle)
}

// Close closes every idle connection and makes later Gets fail; busy
// connections are closed when they are Put.
func (p *Pools) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.closeIdle(CloseShutdown)
}

// Stats counts one address's connections.
type Stats struct {
	Idle, Busy      int
	Dialled, Reused uint64
}

// Stats returns the counts of addr.
func (p *Pools) Stats(addr netip.AddrPort) Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	ap := p.addrs[addr]
	if ap == nil {
		return Stats{}
	}
	return Stats{Idle: ap.nidle, Busy: ap.busy, Dialled: ap.dialled, Reused: ap.reused}
}
