package upstream

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// H2Pools keeps HTTP/2 connections to backend addresses (h2c: prior
// knowledge in clear text; h2: TLS with ALPN "h2"). Requests to one
// address share its connections: a stream is taken on the connection
// with room (at most MaxStreamsPerConn at once, and never more than the
// backend's SETTINGS_MAX_CONCURRENT_STREAMS), a new connection is dialled
// only when every one is full.
//
// The pools, not the HTTP/2 library, decide which connections exist:
// every connection is dialled here and handed to the library with
// http2.Transport.NewClientConn, so no connection is made behind the
// pools' back. The rules are the HTTP/1 pools' ones (field report 1):
// when an address leaves `active` (Retire), its connections take no new
// stream; an idle one is closed at once, a busy one when its last stream
// ends. A connection past MaxLifetime takes no new stream either and is
// closed the same way; one idle longer than IdleTimeout is closed.
type H2Pools struct {
	opts H2Options
	log  *slog.Logger
	tr   *http2.Transport
	tls  dialTLS // opts.TLS until SetTLS

	mu     sync.Mutex
	addrs  map[netip.AddrPort]*h2Addr
	closed bool
}

// Defaults of H2Options.
const (
	DefaultH2MaxStreamsPerConn = 100
	DefaultH2MaxConnsPerAddr   = 64
)

// H2Options configure H2Pools. Zero values take the defaults.
type H2Options struct {
	// TLS, when set, makes connections h2 (TLS, ALPN h2); nil: h2c.
	// ServerName is set per connection from the name passed to Get.
	TLS               *tls.Config
	MaxStreamsPerConn int // streams at once on one connection
	MaxConnsPerAddr   int // connections (and dials) to one address
	IdleTimeout       time.Duration
	MaxLifetime       time.Duration
	Log               *slog.Logger
	// MaxHeaderBytes bounds a response's header list as HTTP/2 counts it
	// (each field's name and value plus 32 bytes), announced to the
	// backend (SETTINGS_MAX_HEADER_LIST_SIZE) and enforced: a larger one
	// fails its stream. Default DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// Dial replaces the TCP dialer (tests).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnClose, when set, is told about every connection closed and why
	// (one of the Close* reasons). It must not block.
	OnClose func(addr netip.AddrPort, reason string)
}

type h2Addr struct {
	gen   uint64
	conns []*H2Conn // taking streams
	// retiring are the connections retired with streams still open (each
	// closed by Done of its last one), for Cut.
	retiring []*H2Conn
	streams  int // in use, on retired connections too
	dialing  int
	dialled  uint64
	reused   uint64
	freed    chan struct{}
}

func (a *h2Addr) signalLocked() {
	if a.freed != nil {
		close(a.freed)
		a.freed = nil
	}
}

// H2Conn is one HTTP/2 connection to a backend address; many requests
// use it at once, each between H2Pools.Get and H2Pools.Done.
type H2Conn struct {
	cc         *http2.ClientConn
	nc         net.Conn
	addr       netip.AddrPort
	serverName string
	info       string
	gen        uint64
	dialled    time.Time

	// guarded by the pools' lock
	streams   int
	requests  int
	idleSince time.Time
	retired   bool // takes no new stream; closed when the last one ends
	closed    bool

	cut atomic.Bool // closed by Cut: its address removed with streams open
}

// Removed is whether the connection was cut because its address was
// removed while streams were open on it (H2Pools.Cut).
func (c *H2Conn) Removed() bool { return c.cut.Load() }

// Addr is the backend address.
func (c *H2Conn) Addr() netip.AddrPort { return c.addr }

// Info is the DNS answer (or origin) the address had when the connection was dialled.
func (c *H2Conn) Info() string { return c.info }

// RoundTrip sends req on the connection as one stream.
func (c *H2Conn) RoundTrip(req *http.Request) (*http.Response, error) { return c.cc.RoundTrip(req) }

// NewH2 returns empty HTTP/2 pools.
func NewH2(opts H2Options) *H2Pools {
	orDefault(&opts.MaxStreamsPerConn, DefaultH2MaxStreamsPerConn)
	orDefault(&opts.MaxConnsPerAddr, DefaultH2MaxConnsPerAddr)
	orDefault(&opts.IdleTimeout, DefaultIdleTimeout)
	orDefault(&opts.MaxLifetime, DefaultMaxLifetime)
	orDefault(&opts.MaxHeaderBytes, DefaultMaxHeaderBytes)
	log := dialAndLog(&opts.Dial, opts.Log)
	tr := &http2.Transport{
		AllowHTTP: opts.TLS == nil,
		// A backend's SETTINGS_MAX_CONCURRENT_STREAMS is a hard limit:
		// the pools open another connection instead of queueing.
		StrictMaxConcurrentStreams: true,
		// A silent connection is checked with a PING, and closed when
		// the PING goes unanswered.
		ReadIdleTimeout:   30 * time.Second,
		PingTimeout:       10 * time.Second,
		MaxHeaderListSize: uint32(opts.MaxHeaderBytes),
	}
	p := &H2Pools{opts: opts, log: log, tr: tr, addrs: map[netip.AddrPort]*h2Addr{}}
	p.tls.cfg.Store(opts.TLS)
	return p
}

// SetTLS is Pools.SetTLS for HTTP/2 backends: cfg is used for the
// connections dialled from now on, nil exactly when H2Options.TLS was.
func (p *H2Pools) SetTLS(cfg *tls.Config) error { return p.tls.set(cfg) }

// Get returns a connection to addr with room for one more stream: an
// existing one, or one dialled before connectBy. serverName is the TLS
// SNI (ignored for h2c); info is kept on a new connection for the logs.
// The stream is the caller's until Done. A dial failure is a *DialError;
// an address at its connection limit until connectBy gives ErrAddrFull.
func (p *H2Pools) Get(ctx context.Context, addr netip.AddrPort, serverName, info string, connectBy time.Time) (c *H2Conn, reused bool, err error) {
	if p.opts.TLS == nil {
		serverName = ""
	}
	for {
		now := time.Now()
		var stale []h2closing
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, false, ErrClosed
		}
		a := p.addrLocked(addr)
		kept := a.conns[:0]
		var pick *H2Conn
		for _, x := range a.conns {
			switch {
			case now.Sub(x.dialled) >= p.opts.MaxLifetime:
				p.retireLocked(x, CloseLifetime, &stale)
				continue
			case h2Gone(x.cc):
				// The backend sent GOAWAY, or the connection broke.
				p.retireLocked(x, CloseBackend, &stale)
				continue
			}
			kept = append(kept, x)
			// CanTakeNewRequest: below the backend's
			// SETTINGS_MAX_CONCURRENT_STREAMS too.
			if pick == nil && x.serverName == serverName && x.streams < p.opts.MaxStreamsPerConn && x.cc.CanTakeNewRequest() {
				pick = x
			}
		}
		clear(a.conns[len(kept):])
		a.conns = kept
		if pick != nil {
			pick.streams++
			pick.requests++
			a.streams++
			a.reused++
			p.mu.Unlock()
			p.closeAll(stale)
			return pick, true, nil
		}
		if len(a.conns)+a.dialing >= p.opts.MaxConnsPerAddr {
			if a.freed == nil {
				a.freed = make(chan struct{})
			}
			freed := a.freed
			p.mu.Unlock()
			p.closeAll(stale)
			if err := waitRoom(ctx, freed, connectBy); err != nil {
				return nil, false, err
			}
			continue
		}
		a.dialing++
		gen := a.gen
		p.mu.Unlock()
		p.closeAll(stale)
		c, err := p.dial(context.WithoutCancel(ctx), addr, serverName, info, gen, connectBy)
		p.mu.Lock()
		a = p.addrLocked(addr)
		a.dialing--
		a.signalLocked()
		if err != nil {
			p.mu.Unlock()
			return nil, false, err
		}
		a.dialled++
		a.streams++
		c.streams, c.requests = 1, 1
		if p.closed {
			c.retired = true
		} else if gen == a.gen {
			// A connection dialled while its address was retired serves
			// this one request only.
			a.conns = append(a.conns, c)
		} else {
			// Retiring from the start: Cut finds it there.
			c.retired = true
			a.retiring = append(a.retiring, c)
		}
		p.mu.Unlock()
		return c, false, nil
	}
}

// h2Gone is whether cc takes no new stream ever again: the backend sent
// GOAWAY, or the connection is closed or closing.
func h2Gone(cc *http2.ClientConn) bool {
	st := cc.State()
	return st.Closed || st.Closing
}

func (p *H2Pools) addrLocked(addr netip.AddrPort) *h2Addr {
	a := p.addrs[addr]
	if a == nil {
		a = &h2Addr{}
		p.addrs[addr] = a
	}
	return a
}

// retireLocked stops c taking streams; it is closed now when idle (added
// to closes), else by Done of its last stream. The caller takes it out of
// its address's list.
func (p *H2Pools) retireLocked(c *H2Conn, why string, closes *[]h2closing) {
	c.retired = true
	if c.streams == 0 && !c.closed {
		c.closed = true
		*closes = append(*closes, h2closing{h2c: c, why: why})
	} else if !c.closed {
		a := p.addrLocked(c.addr)
		if !slices.Contains(a.retiring, c) {
			a.retiring = append(a.retiring, c)
		}
	}
}

func (p *H2Pools) dial(ctx context.Context, addr netip.AddrPort, serverName, info string, gen uint64, connectBy time.Time) (*H2Conn, error) {
	dctx, cancel := context.WithDeadline(ctx, connectBy)
	defer cancel()
	dialErr := func(err error) error {
		return &DialError{Addr: addr, Timeout: isTimeout(err) || dctx.Err() == context.DeadlineExceeded && ctx.Err() == nil, Err: err}
	}
	raw, err := p.opts.Dial(dctx, "tcp", addr.String())
	if err != nil {
		return nil, dialErr(err)
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	nc := raw
	if tc := p.tls.load(); tc != nil {
		cfg := tc.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = serverName
		}
		cfg.NextProtos = []string{http2.NextProtoTLS}
		tc := tls.Client(raw, cfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			raw.Close()
			// The server's alert 120 (no_application_protocol) reaches
			// the client as an error of an unexported type: by its text.
			if strings.Contains(err.Error(), "no application protocol") {
				return nil, dialErr(fmt.Errorf("tls handshake: %w (the backend did not agree to HTTP/2 in ALPN: upstream.protocol h2 needs a backend that speaks it)", err))
			}
			return nil, dialErr(fmt.Errorf("tls handshake: %w", err))
		}
		if got := tc.ConnectionState().NegotiatedProtocol; got != http2.NextProtoTLS {
			raw.Close()
			return nil, dialErr(fmt.Errorf("backend did not agree to HTTP/2 in ALPN (got %q): upstream.protocol h2 needs a backend that speaks it", got))
		}
		nc = tc
	}
	// The client preface and SETTINGS are written by NewClientConn: bound
	// them by the connect deadline too.
	_ = nc.SetDeadline(connectBy)
	cc, err := p.tr.NewClientConn(nc)
	if err != nil {
		nc.Close()
		return nil, dialErr(fmt.Errorf("http/2 preface: %w", err))
	}
	_ = nc.SetDeadline(time.Time{})
	return &H2Conn{cc: cc, nc: nc, addr: addr, serverName: serverName, info: info, gen: gen, dialled: time.Now()}, nil
}

// Done ends a stream taken with Get. broken says the connection itself
// failed (not just the stream): it takes no new stream then.
func (p *H2Pools) Done(c *H2Conn, broken bool) {
	var closes []h2closing
	p.mu.Lock()
	c.streams--
	c.idleSince = time.Now()
	a := p.addrs[c.addr]
	switch {
	case broken && !c.retired:
		p.retireLocked(c, CloseError, &closes)
		if a != nil {
			a.conns = deleteConn(a.conns, c)
		}
	case c.retired && c.streams == 0 && !c.closed:
		c.closed = true
		why := CloseDraining
		switch {
		case p.closed:
			why = CloseShutdown
		case time.Since(c.dialled) >= p.opts.MaxLifetime:
			why = CloseLifetime
		}
		closes = append(closes, h2closing{h2c: c, why: why})
	}
	if a != nil && c.closed {
		a.retiring = deleteConn(a.retiring, c)
	}
	if a != nil {
		a.streams--
		a.signalLocked()
		if len(a.conns) == 0 && a.dialing == 0 && a.streams == 0 && len(a.retiring) == 0 {
			delete(p.addrs, c.addr)
		}
	}
	p.mu.Unlock()
	p.closeAll(closes)
}

// Cut is called when addr is removed (its drain_timeout passed, or it
// left the config): its connections are closed now, with the streams
// still open on them (they fail; the proxy reports why), as the data
// path resets a flow still pinned to a removed backend. It returns how
// many connections with open streams were closed.
func (p *H2Pools) Cut(addr netip.AddrPort) int {
	p.Retire(addr)
	var closes []h2closing
	p.mu.Lock()
	if a := p.addrs[addr]; a != nil {
		for _, c := range a.retiring {
			if !c.closed {
				c.closed = true
				c.cut.Store(true)
				closes = append(closes, h2closing{h2c: c, why: CloseRemoved})
			}
		}
		a.retiring = nil
	}
	p.mu.Unlock()
	p.closeAll(closes)
	if len(closes) > 0 {
		p.log.Info("cut upstream HTTP/2 connections with open streams: address removed", "address", addr.String(), "count", len(closes))
	}
	return len(closes)
}

func deleteConn(l []*H2Conn, c *H2Conn) []*H2Conn {
	for i, x := range l {
		if x == c {
			return append(l[:i], l[i+1:]...)
		}
	}
	return l
}

func (p *H2Pools) closeAll(cs []h2closing) {
	for _, x := range cs {
		_ = x.h2c.cc.Close()
		if p.opts.OnClose != nil {
			p.opts.OnClose(x.h2c.addr, x.why)
		}
	}
}

// Retire is called when addr leaves `active`: its connections take no new
// stream; idle ones are closed now, busy ones when their last stream
// ends. It returns how many were closed now.
func (p *H2Pools) Retire(addr netip.AddrPort) int {
	var closes []h2closing
	p.mu.Lock()
	a := p.addrs[addr]
	if a == nil {
		p.mu.Unlock()
		return 0
	}
	a.gen++
	for _, c := range a.conns {
		p.retireLocked(c, CloseDraining, &closes)
	}
	clear(a.conns)
	a.conns = a.conns[:0]
	a.signalLocked()
	if a.dialing == 0 && a.streams == 0 {
		delete(p.addrs, addr)
	}
	p.mu.Unlock()
	p.closeAll(closes)
	if len(closes) > 0 {
		p.log.Info("closed idle upstream HTTP/2 connections", "address", addr.String(), "count", len(closes))
	}
	return len(closes)
}

// Sweep closes connections idle longer than IdleTimeout and retires
// those past MaxLifetime.
func (p *H2Pools) Sweep(now time.Time) {
	var closes []h2closing
	p.mu.Lock()
	for addr, a := range p.addrs {
		kept := a.conns[:0]
		for _, c := range a.conns {
			switch {
			case now.Sub(c.dialled) >= p.opts.MaxLifetime:
				p.retireLocked(c, CloseLifetime, &closes)
			case c.streams == 0 && now.Sub(c.idleSince) >= p.opts.IdleTimeout:
				p.retireLocked(c, CloseIdle, &closes)
			case h2Gone(c.cc):
				p.retireLocked(c, CloseBackend, &closes)
			default:
				kept = append(kept, c)
				continue
			}
			a.signalLocked()
		}
		clear(a.conns[len(kept):])
		a.conns = kept
		if len(kept) == 0 && a.dialing == 0 && a.streams == 0 {
			delete(p.addrs, addr)
		}
	}
	p.mu.Unlock()
	p.closeAll(closes)
}

// Run sweeps every interval until ctx ends.
func (p *H2Pools) Run(ctx context.Context, interval time.Duration) {
	sweepEvery(ctx, interval, p.Sweep)
}

// Close makes later Gets fail and closes idle connections; busy ones are
// closed when their last stream ends.
func (p *H2Pools) Close() {
	var closes []h2closing
	p.mu.Lock()
	p.closed = true
	for addr, a := range p.addrs {
		for _, c := range a.conns {
			p.retireLocked(c, CloseShutdown, &closes)
		}
		a.conns = nil
		a.signalLocked()
		if a.dialing == 0 && a.streams == 0 {
			delete(p.addrs, addr)
		}
	}
	p.mu.Unlock()
	p.closeAll(closes)
}

// H2Stats counts one address's HTTP/2 connections.
type H2Stats struct {
	Conns, Streams  int
	IdleConns       int // connections without a stream
	Dialled, Reused uint64
}

// Stats returns the counts of addr (connections taking streams).
func (p *H2Pools) Stats(addr netip.AddrPort) H2Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	a := p.addrs[addr]
	if a == nil {
		return H2Stats{}
	}
	s := H2Stats{Conns: len(a.conns), Streams: a.streams, Dialled: a.dialled, Reused: a.reused}
	for _, c := range a.conns {
		if c.streams == 0 {
			s.IdleConns++
		}
	}
	return s
}

type h2closing struct {
	h2c *H2Conn
	why string
}
