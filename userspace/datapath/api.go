// Package datapath loads sluice's XDP program, attaches it, pins its maps and
// links under bpffs, and gives the agent a narrow, typed view of the maps.
//
// Map is the interface the agent programs; Real (this package, needs root and
// BPF) and Fake (no root, for tests) implement it.
package datapath

import (
	"errors"
	"net/netip"
	"time"
)

// ErrNotFound is returned when a key is not in a map.
var ErrNotFound = errors.New("not found")

// ErrOutOfRange is returned for a service id, backend slot or table entry
// outside what the data path's maps hold (1..MaxServices-1,
// 1..MaxBackends-1).
var ErrOutOfRange = errors.New("out of range")

// ServiceKey identifies an L4 service: VIP, port, protocol.
type ServiceKey struct {
	VIP   netip.Addr
	Port  uint16
	Proto Proto
}

// Service is the value of a service key.
type Service struct {
	ID   uint32 // 1..MaxServices-1, index into the Maglev outer map and stats
	Mode Mode
	// SNATAddr is the source address used in ModeSNAT.
	SNATAddr netip.Addr
	// PoolID is PoolID(name) of the service's pool: a reply from one of
	// its backends is recognised as the service's (backend_ports).
	PoolID uint32
}

// Backend is one backend slot.
type Backend struct {
	Addr   netip.AddrPort
	Gen    uint32 // bumped every time the slot is reused; flows remember it
	State  BackendState
	PoolID uint32 // PoolID(name) of the owning pool, to adopt slots after a restart
	// Src is the host's source address towards the backend: the SNAT
	// source of ModeSNAT services that name none.
	Src netip.Addr
}

// Flow is one conntrack entry (a flow, keyed client -> VIP).
type Flow struct {
	Client      netip.AddrPort
	VIP         netip.AddrPort
	Proto       Proto
	ServiceID   uint32
	BackendSlot uint32
	BackendGen  uint32
	Backend     netip.AddrPort // backend address the flow is NATed to
	SNAT        netip.AddrPort // ModeSNAT: the source address and port towards the backend
	State       FlowState
	Idle        time.Duration // since the last packet
	Expired     bool          // idle longer than its state's timeout (half-open: tcp_syn)
	// HalfOpen: the backend has not confirmed the flow yet (it lives in
	// the half-open table, see docs/architecture.md).
	HalfOpen bool
}

// ServiceStats are a service's counters summed over CPUs.
type ServiceStats struct {
	Packets, Bytes, NewFlows uint64
	// RSTNoBackend counts new TCP flows answered with an RST: empty table.
	RSTNoBackend uint64
	// RSTRemovedBackend counts packets of flows pinned to a removed backend.
	RSTRemovedBackend uint64
	// DropNoBackend and DropRemovedBackend are the UDP equivalents.
	DropNoBackend, DropRemovedBackend uint64
	// Fragments to the VIP, dropped (they cannot be NATed).
	Fragments uint64
	// SNATFailures counts new ModeSNAT flows refused: no free source port.
	SNATFailures uint64
	// RSTNATConflict and DropNATConflict count new ModeNAT flows refused
	// because the client's address and port already reach the same
	// backend through another VIP (the reply could not tell them apart).
	RSTNATConflict, DropNATConflict uint64
}

// BackendStats are a backend slot's counters summed over CPUs.
type BackendStats struct {
	Packets, Bytes, NewFlows uint64
	// ConnectRefused counts SYNs the backend answered with an RST.
	ConnectRefused uint64
}

// GlobalStats are counters not tied to a service, summed over CPUs.
type GlobalStats struct {
	PassedNotOurs     uint64 // not a VIP, not a reply: passed untouched
	PassedNoNeigh     uint64 // rewritten, next hop unresolved: kernel forwards
	FIBFailures       uint64 // rewritten, no route: handed to the kernel
	Malformed         uint64 // truncated/contradicting headers, bad IPv4 checksum: passed untouched
	RepliesTranslated uint64
	CTUpdateFailures  uint64
	RSTSent           uint64
	ICMPTranslated    uint64 // ICMP errors about our flows, rewritten and forwarded
	PassedTTLExceeded uint64 // ours with TTL <= 1: passed untouched for the kernel's Time Exceeded
	BackendFragments  uint64 // fragments from a backend's address: dropped
	RSTRateLimited    uint64 // RSTs not sent over the rate limit (the packet dropped)
	FlowsConfirmed    uint64 // half-open flows the backend confirmed, moved to conntrack
	ReverseRecreated  uint64 // snat reverse entries evicted and re-created from the flow's entry
	SYNACKNoFlowDrops uint64 // a backend's SYN-ACK for a VIP flow no longer known: dropped
	FragNeededSent    uint64 // too big for the next hop, DF set: ICMP fragmentation needed sent back
	PassedTooBig      uint64 // too big for the next hop, DF clear: rewritten, the kernel fragments
	// RepliesWithoutFlow counts nat replies translated from backend_ports
	// alone: no flow entry (evicted, or another node forwarded the
	// client's packets), the endpoint serving exactly one nat service.
	RepliesWithoutFlow uint64
	// HalfOpenOverwritten counts live IPv4 half-open flows whose slot
	// another flow took (the table is direct-mapped): each is placed by
	// Maglev again on its next packet. Flood pressure on the table.
	HalfOpenOverwritten uint64
}

// Map is what the agent needs from the data path. Implementations are safe
// for use by one goroutine at a time.
type Map interface {
	// Services returns every service in the data path.
	Services() (map[ServiceKey]Service, error)
	// SetService creates or replaces a service.
	SetService(k ServiceKey, s Service) error
	// DeleteService removes a service and clears its Maglev table. Idempotent.
	DeleteService(k ServiceKey, id uint32) error

	// Backends returns every non-free backend slot.
	Backends() (map[uint32]Backend, error)
	// SetBackend writes a backend slot (1..MaxBackends-1).
	SetBackend(slot uint32, b Backend) error

	// SetTable replaces a service's Maglev table: every entry is a backend
	// slot; len(table) must equal TableSize(), or be 0 for "no backend".
	// Entries change one by one, each whole: while it runs a packet picks
	// from the old table's or the new one's entries (see tables.go for why
	// that is safe).
	SetTable(serviceID uint32, table []uint32) error
	// TableSize is the Maglev table size the program was loaded with.
	TableSize() uint32

	// Flows calls fn for every forward conntrack entry until fn returns false.
	Flows(fn func(Flow) bool) error
	// DeleteFlow removes a flow (and an snat flow's reverse entry). Idempotent.
	DeleteFlow(f Flow) error

	ServiceStats(id uint32) (ServiceStats, error)
	BackendStats(slot uint32) (BackendStats, error)
	GlobalStats() (GlobalStats, error)

	// Attachments says how the program is attached to each interface.
	Attachments() []Attachment
}

// Keeper is a data path whose attachments to interfaces can be lost (an
// interface made again, a link detached by another tool) and made again,
// and whose pins can be removed and pinned again: the agent calls
// KeepAttached and KeepPinned on every tick (Real implements it).
type Keeper interface {
	KeepAttached() []AttachChange
	// KeepPinned pins again what was unpinned under the pin path (see
	// Real.KeepPinned).
	KeepPinned() ([]string, error)
}

// Attachment is the program's attachment to one interface.
type Attachment struct {
	Interface string
	// Mode is "native" (the driver runs the program) or "generic" (the
	// kernel runs it after building an skb: it works everywhere and costs
	// most of what XDP saves).
	Mode string
	// Fallback: xdp_mode auto asked for native, the driver refused, and the
	// program runs in generic mode. Never silent: status, the
	// sluice_xdp_attached metric and a warning say so.
	Fallback bool
}

// PoolID is the stable 32-bit id of a pool name stored in backend slots
// (FNV-1a), so a restarted agent can tell which pool owns a slot.
func PoolID(name string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	return h
}
