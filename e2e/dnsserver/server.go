package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// mode is how the server treats queries for one name.
type mode string

const (
	modeNormal   mode = "normal"
	modeServfail mode = "servfail"
	modeRefused  mode = "refused"
	modeNXDomain mode = "nxdomain"
	modeEmpty    mode = "empty"
	modeGarbage  mode = "garbage"  // reply bytes that do not parse
	modeDrop     mode = "drop"     // never answer: the client times out
	modeTruncate mode = "truncate" // UDP: empty reply with TC set; TCP: normal
)

func parseMode(s string) (mode, error) {
	switch m := mode(strings.ToLower(s)); m {
	case modeNormal, modeServfail, modeRefused, modeNXDomain, modeEmpty, modeGarbage, modeDrop, modeTruncate:
		return m, nil
	}
	return "", fmt.Errorf("unknown mode %q", s)
}

// zone is one parsed records file.
type zone struct {
	rrs   map[string][]dns.RR // by lower-case owner name
	modes map[string]mode
}

// parseZone reads a records file.
func parseZone(r io.Reader) (*zone, error) {
	z := &zone{rrs: make(map[string][]dns.RR), modes: make(map[string]mode)}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) >= 2 && strings.EqualFold(f[1], "mode") {
			if len(f) != 3 {
				return nil, fmt.Errorf("line %d: want NAME mode MODE", n)
			}
			m, err := parseMode(f[2])
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			z.modes[strings.ToLower(dns.Fqdn(f[0]))] = m
			continue
		}
		rr, err := dns.NewRR(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if rr == nil {
			continue
		}
		name := strings.ToLower(rr.Header().Name)
		z.rrs[name] = append(z.rrs[name], rr)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read records: %w", err)
	}
	return z, nil
}

// server answers from the current zone.
type server struct {
	path   string
	negTTL uint32
	log    *slog.Logger
	zone   atomic.Pointer[zone]
	stamp  fileStamp // guarded by the reload goroutine
}

// fileStamp identifies one version of the records file.
type fileStamp struct {
	mtime time.Time
	size  int64
	ino   uint64
}

func stampOf(fi os.FileInfo) fileStamp {
	s := fileStamp{mtime: fi.ModTime(), size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = st.Ino
	}
	return s
}

func newServer(path string, negTTL uint32, log *slog.Logger) (*server, error) {
	s := &server{path: path, negTTL: negTTL, log: log}
	if err := s.load(); err != nil {
		return nil, err
	}
	return s, nil
}

// load reads the records file and swaps it in.
func (s *server) load() error {
	f, err := os.Open(s.path)
	if err != nil {
		return fmt.Errorf("open records: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat records: %w", err)
	}
	z, err := parseZone(f)
	if err != nil {
		return fmt.Errorf("%s: %w", s.path, err)
	}
	s.stamp = stampOf(fi)
	s.zone.Store(z)
	s.log.Info("records loaded", "file", s.path, "names", len(z.rrs), "modes", len(z.modes))
	return nil
}

// serve answers on pc and l until ctx ends, reloading the records on
// reload and when the file changes.
func (s *server) serve(ctx context.Context, pc net.PacketConn, l net.Listener, poll time.Duration, reload <-chan struct{}) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	servers := []*dns.Server{
		{PacketConn: pc, Handler: dns.HandlerFunc(s.handle)},
		{Listener: l, Handler: dns.HandlerFunc(s.handle)},
	}
	errs := make(chan error, len(servers))
	var wg sync.WaitGroup
	for _, srv := range servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- srv.ActivateAndServe()
		}()
		// Shutdown before start would leave the server running.
		select {
		case <-started:
		case err := <-errs:
			cancel()
			wg.Wait()
			return fmt.Errorf("serve: %w", err)
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.watch(ctx, poll, reload)
	}()

	var err error
	select {
	case <-ctx.Done():
	case err = <-errs:
		err = fmt.Errorf("serve: %w", err)
	}
	cancel()
	for _, srv := range servers {
		sctx, stop := context.WithTimeout(context.Background(), time.Second)
		_ = srv.ShutdownContext(sctx) // an error: it was not running
		stop()
	}
	wg.Wait()
	return err
}

// watch reloads on signal and on file changes.
func (s *server) watch(ctx context.Context, poll time.Duration, reload <-chan struct{}) {
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-reload:
			s.log.Info("SIGHUP: reloading records")
			if err := s.load(); err != nil {
				s.log.Error("reload refused, previous records kept", "err", err)
			}
		case <-t.C:
			fi, err := os.Stat(s.path)
			if err != nil {
				continue // being replaced; try again next tick
			}
			if stampOf(fi) == s.stamp {
				continue
			}
			if err := s.load(); err != nil {
				s.log.Error("reload refused, previous records kept", "err", err)
				// Do not retry this version every tick.
				s.stamp = stampOf(fi)
			}
		}
	}
}

// handle answers one query and logs it on one line.
func (s *server) handle(w dns.ResponseWriter, q *dns.Msg) {
	proto := w.RemoteAddr().Network()
	attrs := []any{"from", w.RemoteAddr().String(), "proto", proto}
	if len(q.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(q, dns.RcodeFormatError)
		_ = w.WriteMsg(m)
		s.log.Info("query", append(attrs, "questions", len(q.Question), "rcode", "FORMERR")...)
		return
	}
	qs := q.Question[0]
	name := strings.ToLower(qs.Name)
	z := s.zone.Load()
	md, ok := z.modes[name]
	if !ok {
		md = modeNormal
	}
	attrs = append(attrs, "name", name, "type", dns.TypeToString[qs.Qtype], "mode", md)

	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	switch md {
	case modeDrop:
		s.log.Info("query", append(attrs, "reply", "none")...)
		return
	case modeGarbage:
		// The query id (so the client takes it as the reply), a header
		// announcing records, then bytes that cannot be them.
		b := []byte{byte(q.Id >> 8), byte(q.Id), 0x84, 0x00, 0, 1, 0, 3, 0, 0, 0, 0, 0xc0, 0xff, 0xee}
		_, _ = w.Write(b)
		s.log.Info("query", append(attrs, "reply", "garbage", "bytes", len(b))...)
		return
	case modeServfail:
		m.Rcode = dns.RcodeServerFailure
	case modeRefused:
		m.Rcode = dns.RcodeRefused
	case modeNXDomain:
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{s.soa(name)}
	case modeEmpty:
		m.Ns = []dns.RR{s.soa(name)}
	case modeTruncate:
		if proto == "udp" {
			m.Truncated = true
			break
		}
		s.answer(z, m, name, qs.Qtype)
	default:
		s.answer(z, m, name, qs.Qtype)
	}
	size := dns.MinMsgSize
	if o := q.IsEdns0(); o != nil {
		m.SetEdns0(o.UDPSize(), false)
		size = int(max(o.UDPSize(), dns.MinMsgSize))
	}
	if proto == "udp" {
		m.Truncate(size)
	} else {
		m.Truncate(dns.MaxMsgSize)
	}
	err := w.WriteMsg(m)
	attrs = append(attrs, "rcode", dns.RcodeToString[m.Rcode], "answers", len(m.Answer), "tc", m.Truncated)
	if err != nil {
		s.log.Error("reply failed", append(attrs, "err", err)...)
		return
	}
	s.log.Info("query", attrs...)
}

// answer fills m with the records for name and qtype, following CNAMEs
// inside the zone.
func (s *server) answer(z *zone, m *dns.Msg, name string, qtype uint16) {
	if _, ok := z.rrs[name]; !ok {
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{s.soa(name)}
		return
	}
	seen := make(map[string]bool)
	for cur := name; !seen[cur]; {
		seen[cur] = true
		var next string
		for _, rr := range z.rrs[cur] {
			if c, ok := rr.(*dns.CNAME); ok && qtype != dns.TypeCNAME {
				m.Answer = append(m.Answer, dns.Copy(rr))
				next = strings.ToLower(dns.Fqdn(c.Target))
				break
			}
		}
		if next == "" {
			for _, rr := range z.rrs[cur] {
				if rr.Header().Rrtype == qtype || qtype == dns.TypeANY {
					m.Answer = append(m.Answer, dns.Copy(rr))
				}
			}
			break
		}
		cur = next
	}
	if len(m.Answer) == 0 {
		m.Ns = []dns.RR{s.soa(name)}
	}
}

// soa is the synthetic SOA sent with negative answers (RFC 2308): its TTL
// and minimum are the negative-caching TTL.
func (s *server) soa(name string) dns.RR {
	zoneName := name
	if i := strings.IndexByte(name, '.'); i >= 0 && i+1 < len(name) {
		zoneName = name[i+1:]
	}
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: zoneName, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: s.negTTL},
		Ns:      "ns." + zoneName,
		Mbox:    "hostmaster." + zoneName,
		Serial:  1,
		Refresh: 60,
		Retry:   60,
		Expire:  600,
		Minttl:  s.negTTL,
	}
}
