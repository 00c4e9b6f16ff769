package datapath

import (
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/bpf"
)

// The data path's enums are defined once, in bpf/include/consts.h, and come
// to Go through bpf2go (-type): the constants below are the generated ones,
// renamed, never numbers written down a second time. Each type has String
// and MarshalText/UnmarshalText, the only place its names are spelled out.

// Proto is an IP protocol number.
type Proto uint8

// Protocols served by the L4 data path (the kernel's IPPROTO_ numbers).
const (
	TCP Proto = unix.IPPROTO_TCP
	UDP Proto = unix.IPPROTO_UDP
)

// Mode is how a service rewrites packets (C enum svc_mode).
type Mode uint8

// Modes.
const (
	ModeNAT  = Mode(bpf.SluiceSvcModeMODE_NAT)  // DNAT only: client address kept, backends route back through sluice
	ModeSNAT = Mode(bpf.SluiceSvcModeMODE_SNAT) // DNAT + SNAT to a sluice address and allocated port
	ModeDSR  = Mode(bpf.SluiceSvcModeMODE_DSR)  // IPIP to the backend, which answers the client directly
)

// BackendState is a backend slot's state as the data path sees it (C enum
// backend_state).
type BackendState uint8

// Backend slot states.
const (
	BackendFree     = BackendState(bpf.SluiceBackendStateBACKEND_FREE)     // slot unused
	BackendActive   = BackendState(bpf.SluiceBackendStateBACKEND_ACTIVE)   // in Maglev tables
	BackendDraining = BackendState(bpf.SluiceBackendStateBACKEND_DRAINING) // no new flows, existing flows forwarded
	BackendEjected  = BackendState(bpf.SluiceBackendStateBACKEND_EJECTED)  // no new flows, existing flows forwarded
	BackendRemoved  = BackendState(bpf.SluiceBackendStateBACKEND_REMOVED)  // packets of pinned flows answered with RST
)

// FlowState is a conntrack entry's TCP state (C enum ct_state).
type FlowState uint8

// Flow states.
const (
	FlowNew         = FlowState(bpf.SluiceCtStateCT_NEW)
	FlowSynSent     = FlowState(bpf.SluiceCtStateCT_SYN_SENT)
	FlowEstablished = FlowState(bpf.SluiceCtStateCT_ESTABLISHED)
	FlowClosing     = FlowState(bpf.SluiceCtStateCT_CLOSING)
	FlowUDP         = FlowState(bpf.SluiceCtStateCT_UDP)
	FlowSynRecv     = FlowState(bpf.SluiceCtStateCT_SYN_RECV) // the backend answered the SYN
)

// MaxServices is the number of service ids (id 0 is never used): the size
// of the services and service_stats maps and the rows of maglev_tables,
// checked against the program's spec at load (checkSpec).
const MaxServices = 1024

// MaxBackends is the number of backend slots (slot 0 is never used): the
// size of the backends and backend_stats maps, checked at load.
const MaxBackends = 4096

// ErrUnknownName is returned by UnmarshalText for a name that is not one
// of the type's.
var ErrUnknownName = errors.New("unknown name")

var (
	protoNames        = map[Proto]string{TCP: "tcp", UDP: "udp"}
	modeNames         = map[Mode]string{ModeNAT: "nat", ModeSNAT: "snat", ModeDSR: "dsr"}
	backendStateNames = map[BackendState]string{
		BackendFree: "free", BackendActive: "active", BackendDraining: "draining",
		BackendEjected: "ejected", BackendRemoved: "removed",
	}
	flowStateNames = map[FlowState]string{
		FlowNew: "new", FlowSynSent: "syn-sent", FlowEstablished: "established",
		FlowClosing: "closing", FlowUDP: "udp", FlowSynRecv: "syn-recv",
	}
)

// nameOf is v's name, or prefix(number) for a value without one (a value
// written by a newer program, or garbage read from a map).
func nameOf[T ~uint8](names map[T]string, v T, prefix string) string {
	if n, ok := names[v]; ok {
		return n
	}
	return prefix + "(" + strconv.Itoa(int(v)) + ")"
}

func parseName[T ~uint8](names map[T]string, text []byte, what string) (T, error) {
	for v, n := range names {
		if n == string(text) {
			return v, nil
		}
	}
	return 0, fmt.Errorf("%s %q: %w", what, text, ErrUnknownName)
}

func (p Proto) String() string { return nameOf(protoNames, p, "proto") }

// MarshalText implements encoding.TextMarshaler.
func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler ("tcp", "udp").
func (p *Proto) UnmarshalText(b []byte) (err error) {
	*p, err = parseName(protoNames, b, "protocol")
	return err
}

func (m Mode) String() string { return nameOf(modeNames, m, "mode") }

// MarshalText implements encoding.TextMarshaler.
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler ("nat", "snat").
func (m *Mode) UnmarshalText(b []byte) (err error) {
	*m, err = parseName(modeNames, b, "mode")
	return err
}

func (s BackendState) String() string { return nameOf(backendStateNames, s, "state") }

// MarshalText implements encoding.TextMarshaler.
func (s BackendState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler ("active", ...).
func (s *BackendState) UnmarshalText(b []byte) (err error) {
	*s, err = parseName(backendStateNames, b, "backend state")
	return err
}

func (s FlowState) String() string { return nameOf(flowStateNames, s, "state") }

// MarshalText implements encoding.TextMarshaler.
func (s FlowState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler ("established", ...).
func (s *FlowState) UnmarshalText(b []byte) (err error) {
	*s, err = parseName(flowStateNames, b, "flow state")
	return err
}
