// Package defaults holds the values sluice uses when neither the config
// nor a flag names one, in one place: the config package fills its keys
// from them, the data path falls back to them when opened without a
// value, and the CLI shows them in its help. It imports nothing, so every
// package can use it.
//
// The L7 stage's defaults (timeouts, retries, ejection) belong to the l7
// packages, which own those options.
package defaults

import "time"

const (
	// PinPath is the bpffs directory of the pinned maps and links.
	PinPath = "/sys/fs/bpf/sluice"
	// AdminSocket is the agent's admin API socket.
	AdminSocket = "/run/sluice/admin.sock"
	// MetricsListen is where the Prometheus endpoint listens.
	MetricsListen = "127.0.0.1:9464"
	// MaglevTableSize is the size of every Maglev table (a prime).
	MaglevTableSize = 16381
	// ConntrackMax is the conntrack map's capacity in entries.
	ConntrackMax = 262144
	// SNATPortMin and SNATPortMax bound the source ports snat flows use.
	SNATPortMin = 20000
	SNATPortMax = 32767
	// DrainTimeout is how long a draining address keeps its flows at most.
	DrainTimeout = 30 * time.Second
	// DNSPort is the port of a DNS server named without one.
	DNSPort = 53
	// RSTRate is the data path's limit on the TCP resets it sends, per CPU
	// and second (datapath.rst_rate).
	RSTRate = 1000
)

// The data path's capacities (bpf/include/consts.h; userspace/datapath
// checks its maps against them at load, and a test ties them to
// datapath.MaxServices and datapath.MaxBackends). Id 0 and slot 0 are
// never used, so MaxServices-1 services and MaxBackends-1 backend
// addresses fit.
const (
	MaxServices = 1024
	MaxBackends = 4096
)

// MaxAddressesPerName caps the addresses one DNS answer may add to a pool:
// the rest are reported, not served. A Maglev table spreads well only
// over far fewer backends than its entries (16381 / 256 = 64 entries
// each), and a name answering thousands of addresses would take the
// backend slots of every other pool.
const MaxAddressesPerName = 256
