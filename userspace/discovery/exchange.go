package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// Exchanger sends one query to one server over one transport ("udp" or
// "tcp") and returns the reply whose id matches. Implementations honour
// ctx's deadline and cancellation. The Resolver checks everything else
// (question, rcode, truncation).
type Exchanger interface {
	Exchange(ctx context.Context, q *dns.Msg, network, server string) (*dns.Msg, error)
}

// errGarbage marks a reply that could not be used: it did not parse, or
// it answered another question.
var errGarbage = errors.New("unusable reply")

// NetExchanger is the Exchanger that talks to real sockets.
type NetExchanger struct {
	// Dialer is used for both transports; the zero value is fine.
	Dialer net.Dialer
	// bufs recycles the 64 KiB UDP read buffers: a name re-resolved every
	// few seconds would otherwise allocate one per lookup (the agent's
	// idle cost, issue 14).
	bufs sync.Pool
}

// udpBuf returns a read buffer for one UDP exchange; put it back with
// x.bufs.Put once the reply is unpacked.
func (x *NetExchanger) udpBuf() *[]byte {
	if b, ok := x.bufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 65535)
	return &b
}

// Exchange implements Exchanger.
func (x *NetExchanger) Exchange(ctx context.Context, q *dns.Msg, network, server string) (*dns.Msg, error) {
	c, err := x.Dialer.DialContext(ctx, network, server)
	if err != nil {
		return nil, fmt.Errorf("dial %s %s: %w", network, server, err)
	}
	// Closing the socket is what interrupts a blocked read when ctx ends.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer func() {
		if stop() {
			c.Close()
		}
	}()
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(dl); err != nil {
			return nil, fmt.Errorf("set deadline: %w", err)
		}
	}
	co := &dns.Conn{Conn: c, UDPSize: EDNSBufferSize}
	if err := co.WriteMsg(q); err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("send to %s %s: %w", network, server, err))
	}
	var buf []byte
	if network == "udp" {
		b := x.udpBuf()
		defer x.bufs.Put(b) // r below is unpacked into its own memory
		buf = *b
	}
	for {
		var raw []byte
		if network == "udp" {
			n, err := c.Read(buf)
			if err != nil {
				return nil, ctxErr(ctx, fmt.Errorf("read from %s %s: %w", network, server, err))
			}
			raw = buf[:n]
		} else {
			raw, err = co.ReadMsgHeader(nil)
			if err != nil {
				return nil, ctxErr(ctx, fmt.Errorf("read from %s %s: %w", network, server, err))
			}
		}
		if len(raw) < 2 {
			if network == "udp" {
				continue // cannot even be ours
			}
			return nil, fmt.Errorf("%w: %d-byte reply from %s %s", errGarbage, len(raw), network, server)
		}
		if id := uint16(raw[0])<<8 | uint16(raw[1]); id != q.Id {
			if network == "udp" {
				// A late reply to an earlier query, or a spoofing
				// attempt: not ours, keep waiting.
				continue
			}
			return nil, fmt.Errorf("%w: reply id %d, query id %d from %s %s", errGarbage, id, q.Id, network, server)
		}
		r := new(dns.Msg)
		if err := r.Unpack(raw); err != nil {
			return nil, fmt.Errorf("%w: from %s %s: %w", errGarbage, network, server, err)
		}
		return r, nil
	}
}

// ctxErr prefers the context's reason over the socket error it caused.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	return err
}

// classify maps an exchange error to a failure kind.
func classify(err error) FailureKind {
	var ne net.Error
	switch {
	case errors.Is(err, errGarbage):
		return FailGarbage
	case errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return FailTimeout
	case errors.Is(err, dns.ErrShortRead), errors.Is(err, dns.ErrBuf),
		strings.Contains(err.Error(), "dns: "):
		// miekg/dns parse errors are plain strings prefixed "dns: ".
		return FailGarbage
	default:
		return FailNetwork
	}
}

// questionMatches reports whether r answers q (name, type and class).
func questionMatches(q, r *dns.Msg) bool {
	if len(r.Question) != 1 || len(q.Question) != 1 {
		return false
	}
	a, b := q.Question[0], r.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}
