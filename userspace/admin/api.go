// Package admin is the agent's admin API: JSON over a unix socket (mode
// 0600), the server the agent runs and the client the CLI uses.
package admin

import (
	"context"
	"encoding/json"
	"time"
)

// Agent is what the admin server needs from the running agent.
type Agent interface {
	Status(ctx context.Context) (Status, error)
	// Flows lists conntrack flows matching the filter.
	Flows(ctx context.Context, f FlowFilter) ([]Flow, error)
	// Drain moves an address of a pool to draining (cause "operator").
	Drain(ctx context.Context, pool, address string) error
	// Undrain undoes Drain: the address is active again if its source still lists it.
	Undrain(ctx context.Context, pool, address string) error
	// Reload re-reads the config file; an invalid file is refused and the old one stays.
	Reload(ctx context.Context) error
	// NodeDrain withdraws every VIP of the node and drains it: done once
	// no packet arrived for quiet, or at timeout (0: the agent's defaults).
	NodeDrain(ctx context.Context, timeout, quiet time.Duration) error
	// NodeUndrain ends a node drain: usable VIPs are announced again.
	NodeUndrain(ctx context.Context) error
}

// Status is the whole picture: services, pools and every address.
type Status struct {
	Version    string    `json:"version"`
	ConfigPath string    `json:"config_path"`
	StartedAt  time.Time `json:"started_at"`
	// NotApplied lists what of the running config the last start or
	// reload could not apply (empty: all of it).
	NotApplied []string `json:"not_applied,omitempty"`
	// Warnings are the running config's warnings, as sluice check prints
	// them (backend certificates not verified, host: keep over TLS…).
	Warnings []string  `json:"warnings,omitempty"`
	Services []Service `json:"services"`
	Pools    []Pool    `json:"pools"`
	// Interfaces: how the XDP program is attached to each interface.
	Interfaces []Interface `json:"interfaces,omitempty"`
	// LayoutReset names the pinned maps whose layout (an older release's)
	// made this agent start the data path state on fresh maps (empty: the
	// pinned state was adopted). See docs/architecture.md, "Layout version".
	LayoutReset []string `json:"layout_reset,omitempty"`
	// Node is the VIP announcements and the node's drain (absent without
	// a bgp section).
	Node *Node `json:"node,omitempty"`
	// Runtime is how the agent's Go runtime runs (absent from older
	// agents).
	Runtime *Runtime `json:"runtime,omitempty"`
	// Log is the agent's most recent warnings and errors (absent from
	// older agents).
	Log *Log `json:"log,omitempty"`
}

// Log is what the agent logged lately at level WARN or above: how many
// since it started, and the last of them.
type Log struct {
	Warnings uint64     `json:"warnings"`
	Errors   uint64     `json:"errors"`
	Recent   []LogEntry `json:"recent,omitempty"` // oldest first
}

// LogEntry is one warning or error: its message and attributes as the
// text log format writes them (key=value, quoted where needed).
type LogEntry struct {
	Time  time.Time `json:"time"`
	Level string    `json:"level"` // WARN or ERROR
	Text  string    `json:"text"`
}

// Runtime is the agent's Go runtime: its processors, the garbage
// collector's pacing and the HTTP stage's event loops.
type Runtime struct {
	GOMAXPROCS int `json:"gomaxprocs"`
	// GOGC is the collector's setting in force; GCPaced is whether the
	// agent sets it from the live heap (docs/operations.md, "Memory and
	// the garbage collector"), HeapLiveBytes the heap the last collection
	// found live.
	GOGC          int    `json:"gogc"`
	GCPaced       bool   `json:"gc_paced"`
	HeapLiveBytes uint64 `json:"heap_live_bytes"`
	// EventLoops is how many event loops serve the kept-alive HTTP/1
	// connections (0: none started: a goroutine per connection, or no
	// plain-text http service yet); LoopConnections how many connections
	// they serve and LoopSockets their sockets (clients' and backends').
	EventLoops      int `json:"event_loops"`
	LoopConnections int `json:"event_loop_connections"`
	LoopSockets     int `json:"event_loop_sockets"`
}

// Node is what the node announces and where it stands in a drain.
type Node struct {
	State string `json:"state"` // serving | draining | drained
	// Table and Protocol are the routing table and route protocol the
	// agent writes the VIP routes to (what BIRD exports).
	Table     uint32     `json:"table"`
	Protocol  uint8      `json:"protocol"`
	Drain     *NodeDrain `json:"drain,omitempty"`
	VIPs      []VIP      `json:"vips"`
	LastError string     `json:"last_error,omitempty"` // the last failed route operation
	// Sessions are the BGP sessions of the node's BIRD (read from its
	// control socket, bgp.bird_socket); SessionsError says why they
	// could not be read.
	Sessions      []BGPSession `json:"bgp_sessions,omitempty"`
	SessionsError string       `json:"bgp_sessions_error,omitempty"`
}

// BGPSession is one BGP session of BIRD, as `birdc show protocols` shows it.
type BGPSession struct {
	Name  string `json:"name"`
	State string `json:"state"`
	Info  string `json:"info"`
	Up    bool   `json:"up"`
}

// NodeDrain is a node drain in progress or done.
type NodeDrain struct {
	Started   time.Time  `json:"started"`
	Deadline  time.Time  `json:"deadline"`
	Quiet     string     `json:"quiet"`
	DrainedAt *time.Time `json:"drained_at,omitempty"`
	Cause     string     `json:"cause,omitempty"` // quiet | deadline
}

// VIP is one announced (or withdrawn) VIP.
type VIP struct {
	Address   string    `json:"address"`
	Services  []string  `json:"services"`
	Announced bool      `json:"announced"`
	Reason    string    `json:"reason"` // serving, or why it is withdrawn
	Since     time.Time `json:"since"`
}

// NodeDrainRequest is the body of POST /v1/node/drain.
type NodeDrainRequest struct {
	Timeout string `json:"timeout,omitempty"` // Go duration; "" the agent's default
	Quiet   string `json:"quiet,omitempty"`
}

// Interface is the XDP program's attachment to one interface.
type Interface struct {
	Name string `json:"name"`
	// Mode is native, generic, or ModeDetached: the program is not
	// attached (lost from the interface, which is gone or was made again;
	// the agent attaches it again every second when it can).
	Mode string `json:"mode"`
	// Fallback: xdp_mode auto fell back to generic mode (the driver has no
	// native XDP): the slow path.
	Fallback bool `json:"fallback,omitempty"`
}

// ModeDetached is Interface.Mode of a configured interface the program is
// not attached to.
const ModeDetached = "detached"

// Service is one configured service.
type Service struct {
	Name        string `json:"name"`
	Listen      string `json:"listen"`
	Protocol    string `json:"protocol"`
	Mode        string `json:"mode,omitempty"`
	Pool        string `json:"pool"`
	ID          uint32 `json:"id,omitempty"` // data path service id
	ActiveFlows int    `json:"active_flows"`
	Backends    int    `json:"backends"` // addresses getting new flows
	Packets     uint64 `json:"packets"`
	Bytes       uint64 `json:"bytes"`
	NewFlows    uint64 `json:"new_flows"`
	RSTs        uint64 `json:"rsts"`
	// HTTP is what an http service's requests came to since the agent
	// started (or since the reload that added the service); absent for
	// L4 services, whose counters are the ones above.
	HTTP *HTTPCounts `json:"http,omitempty"`
	// Routes of an http service with routes, in precedence order within
	// a site as the config lists them; the service's own pool, when set,
	// last as the route "default" (absent without routes).
	Routes []Route `json:"routes,omitempty"`
	// Certificates an https service serves, the default one first (as
	// loaded: renewed files are loaded again within seconds).
	Certificates []Certificate `json:"certificates,omitempty"`
}

// Certificate is one certificate an https service serves.
type Certificate struct {
	File     string    `json:"file"`
	Names    []string  `json:"names"`
	NotAfter time.Time `json:"not_after"`
}

// MarshalJSON leaves the data path's counters (active_flows, packets,
// bytes, new_flows, rsts) out of an http service's entry: its traffic
// does not pass them (the HTTP stage terminates its connections), and
// zeros there would read as a service that served nothing. Its counts
// are in http. The test is the protocol, as the status table's `-`.
func (s Service) MarshalJSON() ([]byte, error) {
	type plain Service // without this method
	if s.Protocol != "http" {
		return json.Marshal(plain(s))
	}
	return json.Marshal(struct {
		plain
		// Nil, omitted: they shadow the embedded fields of the same name.
		ActiveFlows *int    `json:"active_flows,omitempty"`
		Packets     *uint64 `json:"packets,omitempty"`
		Bytes       *uint64 `json:"bytes,omitempty"`
		NewFlows    *uint64 `json:"new_flows,omitempty"`
		RSTs        *uint64 `json:"rsts,omitempty"`
	}{plain: plain(s)})
}

// HTTPCounts counts an http service's requests: the sums of its
// sluice_l7_requests_total, sluice_l7_retries_total and
// sluice_l7_refused_total series (docs/metrics.md).
type HTTPCounts struct {
	// Requests is every request answered, or given up because its
	// client went away first (ClientGone).
	Requests uint64 `json:"requests"`
	// Status1xx … Status5xx count the requests answered by status class
	// (1xx: 101 to an upgrade).
	Status1xx  uint64 `json:"1xx"`
	Status2xx  uint64 `json:"2xx"`
	Status3xx  uint64 `json:"3xx"`
	Status4xx  uint64 `json:"4xx"`
	Status5xx  uint64 `json:"5xx"`
	ClientGone uint64 `json:"client_gone"`
	// Retries counts tries after a request's first.
	Retries uint64 `json:"retries"`
	// Refused counts connections and requests refused at a limit
	// (client.max_connections, max_requests, body and header limits…).
	Refused uint64 `json:"refused"`
}

// Route is one route of an http service: what it matches and the state
// of the pool it sends to (the pool's addresses are in Status.Pools).
type Route struct {
	Name  string `json:"name"`
	Match string `json:"match"` // "host api.example.com path /v1/", "any host", "anything else"
	Pool  string `json:"pool"`
	// Backends counts the pool's addresses by state (active, draining,
	// ejected, removed); null when the pool does not run.
	Backends map[string]int `json:"backends"`
}

// Pool is one pool and its addresses.
type Pool struct {
	Name     string    `json:"name"`
	Backends []Backend `json:"backends"`
	// NotServed lists addresses a source returned that sluice refuses
	// (the address filter, the per-name limit).
	NotServed []NotServed `json:"not_served,omitempty"`
}

// NotServed is an address a pool's source returned but sluice does not serve.
type NotServed struct {
	Address string `json:"address"`
	Source  string `json:"source"`
	Reason  string `json:"reason"`
}

// Backend is one address of a pool.
type Backend struct {
	Address       string     `json:"address"` // ip:port
	Source        string     `json:"source"`  // "static" or the DNS name that produced it
	State         string     `json:"state"`   // active | draining | ejected | removed
	Cause         string     `json:"cause"`   // why it is in this state
	Since         time.Time  `json:"since"`
	Weight        uint32     `json:"weight"`
	Slot          uint32     `json:"slot,omitempty"` // data path backend slot
	ActiveFlows   int        `json:"active_flows"`
	DrainDeadline *time.Time `json:"drain_deadline,omitempty"`
	// EjectedUntil is when an ejected address is tried again (absent when it
	// waits for passing health checks instead).
	EjectedUntil *time.Time `json:"ejected_until,omitempty"`
	TTLLeft      string     `json:"ttl_left,omitempty"` // DNS-derived addresses
	Packets      uint64     `json:"packets"`
	Bytes        uint64     `json:"bytes"`
	NewFlows     uint64     `json:"new_flows"`
	// Requests is the number of requests the http services have in flight
	// to the address (streams over HTTP/2); absent when no running http
	// service uses the pool. ActiveFlows counts only the data path's
	// flows, which never see an http service's traffic: a draining
	// address stays until both are 0 (or its drain timeout passes).
	Requests *int `json:"requests,omitempty"`
}

// FlowFilter selects flows; empty fields match everything.
type FlowFilter struct {
	Service string `json:"service,omitempty"` // service name
	Backend string `json:"backend,omitempty"` // backend ip or ip:port
}

// Flow is one connection tracked by the data path.
type Flow struct {
	Service string `json:"service"`
	Client  string `json:"client"`
	VIP     string `json:"vip"`
	Backend string `json:"backend"`
	Proto   string `json:"proto"`
	State   string `json:"state"`
	Idle    string `json:"idle"`
	Expired bool   `json:"expired,omitempty"`
}

// AddressRequest is the body of POST /v1/drain and /v1/undrain.
type AddressRequest struct {
	Pool    string `json:"pool"`
	Address string `json:"address"` // ip:port (or ip, if the agent accepts it)
}

// Ack is the body of a successful POST.
type Ack struct {
	Message string `json:"message"`
}

// ErrorResponse is the body of every non-2xx answer.
type ErrorResponse struct {
	Error string `json:"error"`
	// Kind names the sentinel error behind it, so clients can rebuild it:
	// unknown_pool, unknown_address, bad_request, reload_refused,
	// not_found, forbidden, internal.
	Kind string `json:"kind,omitempty"`
}
