package datapath

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/internal/defaults"
)

// DefaultPinPath is where maps and links are pinned unless configured.
const DefaultPinPath = defaults.PinPath

// Timeouts are the conntrack idle timeouts per flow state.
type Timeouts struct {
	TCPSyn, TCPEstablished, TCPClosing, UDP time.Duration
}

// DefaultRSTRate is the RST rate limit per CPU and second.
const DefaultRSTRate = defaults.RSTRate

// DefaultTimeouts match the program's built-in defaults.
func DefaultTimeouts() Timeouts {
	return Timeouts{TCPSyn: 60 * time.Second, TCPEstablished: time.Hour, TCPClosing: 10 * time.Second, UDP: 60 * time.Second}
}

func (t Timeouts) of(s FlowState) time.Duration {
	switch s {
	case FlowEstablished:
		return t.TCPEstablished
	case FlowClosing:
		return t.TCPClosing
	case FlowUDP:
		return t.UDP
	}
	return t.TCPSyn // FlowNew, FlowSynSent, FlowSynRecv
}

// Options configure Open.
type Options struct {
	PinPath         string   // default DefaultPinPath
	Interfaces      []string // XDP attach points
	XDPMode         string   // auto (native, generic fallback) | native | generic
	MaglevTableSize uint32   // default 16381
	ConntrackMax    uint32   // default 262144
	// HalfOpenMax is the IPv4 half-open table's slot count (rounded up
	// to a power of two; default ConntrackMax/2, at least 1024) and the
	// IPv6 one's entries (default ConntrackMax/4, at least 1024).
	HalfOpenMax uint32
	SNATPortMin uint16   // default 20000
	SNATPortMax uint16   // default 32767
	Timeouts    Timeouts // zero fields take the defaults
	// RSTRate is how many RSTs per second each CPU may send (no backend,
	// removed backend, no SNAT port, nat conflict), in bursts of up to
	// one second's worth; above it the packet is dropped and counted.
	// 0 takes DefaultRSTRate.
	RSTRate uint32
	Log     *slog.Logger
	// NoNeighbours turns off the managed neighbour entries SetBackend
	// creates for active backends (tests that run outside the namespace
	// the program forwards in).
	NoNeighbours bool
}

// Real is the kernel data path: loaded program, pinned maps and links.
type Real struct {
	log       *slog.Logger
	pinPath   string
	tableSize uint32
	timeouts  Timeouts

	services, backends, tables, conntrack *ebpf.Map // tables: maglev_tables (tables.go)
	svcStats, backendStats, globalStats   *ebpf.Map
	addrs, backendPorts                   *ebpf.Map // see addrs.go
	halfopen                              *ebpf.Map // flows the backend has not confirmed yet (halfopen.go)
	hoKey                                 uint64    // halfopen's hash key (sluice_config.ho_key)
	hoMask                                uint32    // halfopen's slot mask
	hoMem                                 *ebpf.Memory
	hoScratch                             *ebpf.Map  // not pinned: the program's per-CPU copy of a slot
	snatRev, snatRevHO                    *ebpf.Map  // snat flows' reverse entries: confirmed, half-open
	rstLimit, backendHops, directSYNs     *ebpf.Map  // not pinned: the RST budget, next hops per backend, direct SYNs
	replyHops                             *ebpf.Map  // not pinned: next hops towards clients
	addrIdx                               *addrIndex // nil when opened read-only
	tablesMem                             []byte     // maglev_tables mapped (tables.go); nil until used
	tablesRW                              bool       // tablesMem may be written (Open; OpenPinned maps it read-only)
	// natShared is the program's nat_shared map (maps.h), nil when
	// opened read-only; natSharedSet: it was set to 1.
	natShared    *ebpf.Map
	natSharedSet bool

	// The IPv6 maps (maps6.go).
	services6m, backends6m, conntrack6, halfopen6  *ebpf.Map
	addrs6, backendPorts6, natHint6                *ebpf.Map
	backendHops6, replyHops6, directSYNs6, scratch *ebpf.Map   // not pinned
	addrIdx6                                       *addrIndex6 // nil when opened read-only

	prog  *ebpf.Program
	links map[string]link.Link
	// attachments is read by Attachments from any goroutine (status,
	// metrics) while KeepAttached may change it: attachMu guards it.
	attachMu    sync.Mutex
	attachments map[string]Attachment
	// ifaces and xdpMode are what the program is to be attached to, and
	// how (KeepAttached attaches it again where it was lost).
	ifaces  []string
	xdpMode string
	lock    *os.File // flock on the pin directory: one agent per data path

	keepNeighbours bool
	// pinned is each map pinned under pinPath by name, layout this
	// release's fingerprints: what KeepPinned pins again (nil when opened
	// read-only).
	pinned map[string]*ebpf.Map
	layout map[string]uint64
	// layoutReset names the pinned maps whose layout changed, when Open
	// started the data path state afresh because of them (nil: adopted).
	layoutReset []string
}

// LayoutReset returns the pinned maps whose layout was not this release's
// when the data path was opened, so that it started on fresh maps (nil:
// the pinned state was adopted). See layout.go.
func (r *Real) LayoutReset() []string { return slices.Clone(r.layoutReset) }

// ErrLocked is returned by Open when another agent holds the pin path.
var ErrLocked = errors.New("another sluice agent holds the data path")

// lockPinPath takes an exclusive, non-blocking flock on the pin directory,
// so two agents never program the same maps (cloudflare/tubular does the
// same). The lock dies with the process, kill -9 included.
func lockPinPath(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open pin directory %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (%s is locked)", ErrLocked, dir)
		}
		return nil, fmt.Errorf("lock pin directory %s: %w", dir, err)
	}
	return f, nil
}

var _ Map = (*Real)(nil)

// mapNames are the pinned maps, as named in bpf/include/maps.h.
var mapNames = []string{"services", "backends", "maglev_tables", "conntrack", "service_stats", "backend_stats", "global_stats", "addrs", "halfopen", "backend_ports", "snat_rev", "snat_rev_ho",
	"services6", "backends6", "conntrack6", "halfopen6", "addrs6", "backend_ports6", "nat_hint6"}

// EnsureBPFFS mounts bpffs at /sys/fs/bpf when it is not mounted (it is not
// on a fresh Debian host) and creates dir's parent on it. The pin directory
// itself is created by Open, atomically (see claimPinPath).
func EnsureBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		if err := os.MkdirAll("/sys/fs/bpf", 0o700); err != nil {
			return fmt.Errorf("create /sys/fs/bpf: %w", err)
		}
		if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs at /sys/fs/bpf: %w", err)
		}
	}
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", parent, err)
	}
	if err := unix.Statfs(parent, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", parent, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin path %s is not on a bpf filesystem", dir)
	}
	return nil
}

// pinClaim is the directory Open pins the maps into, locked: the pin path
// itself when it already holds a data path (adopted as it is), or, for a
// first install, a fresh temporary directory next to it that publish
// renames into place once every map is pinned. So a reader (`sluice
// conntrack`, a second agent, a crashed first install) sees all maps or no
// pin directory at all, never half a set (cloudflare/tubular installs the
// same way).
type pinClaim struct {
	final, dir string // dir == final when adopting
	lock       *os.File
}

func (c *pinClaim) fresh() bool { return c.dir != c.final }

// claimPinPath locks the existing pin directory, or creates and locks a
// temporary one for a first install. A pin directory without any pinned
// map (left by an older version's install, or emptied by hand) counts as
// absent. Temporary directories of installs that died half-way (their
// flock is free) are removed first.
func claimPinPath(final string) (*pinClaim, error) {
	final = filepath.Clean(final)
	if hasPinnedMaps(final) {
		lock, err := lockPinPath(final)
		if err != nil {
			return nil, err
		}
		return &pinClaim{final: final, dir: final, lock: lock}, nil
	}
	if err := removeEmptyPinDir(final); err != nil {
		return nil, err
	}
	parent, base := filepath.Split(final)
	prefix := base + "-tmp-" // bpffs allows no dot in a name
	stale, _ := filepath.Glob(filepath.Join(parent, prefix+"*"))
	for _, d := range stale {
		if l, err := lockPinPath(d); err == nil {
			_ = os.RemoveAll(d)
			l.Close()
		}
	}
	dir, err := os.MkdirTemp(parent, prefix)
	if err != nil {
		return nil, fmt.Errorf("create temporary pin directory: %w", err)
	}
	lock, err := lockPinPath(dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return &pinClaim{final: final, dir: dir, lock: lock}, nil
}

// publish renames a first install's directory into place. The flock taken
// on the temporary directory stays with it: it is the same inode.
func (c *pinClaim) publish() error {
	if !c.fresh() {
		return nil
	}
	if err := os.Rename(c.dir, c.final); err != nil {
		if errors.Is(err, os.ErrExist) || errors.Is(err, unix.ENOTEMPTY) {
			return fmt.Errorf("%w (%s was installed concurrently)", ErrLocked, c.final)
		}
		return fmt.Errorf("move pins into %s: %w", c.final, err)
	}
	c.dir = c.final
	return nil
}

// abandon removes a first install's temporary directory (nothing of an
// adopted one) and releases the lock.
func (c *pinClaim) abandon() {
	if c.fresh() {
		_ = os.RemoveAll(c.dir)
	}
	c.lock.Close()
}

func hasPinnedMaps(dir string) bool {
	for _, name := range mapNames {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return true
		}
	}
	return false
}

// removeEmptyPinDir removes dir and an empty links/ under it; a links
// directory still holding pinned links is an error (they keep a program
// attached that no map set goes with: `sluice teardown` first).
func removeEmptyPinDir(dir string) error {
	for _, d := range []string{filepath.Join(dir, "links"), dir} {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("pin directory %s holds no maps but is not empty (run `sluice teardown --pin-path %s`): %w", dir, dir, err)
		}
	}
	return nil
}

// Open loads the program, adopting every map already pinned under the pin
// path (flows, backends and tables survive an agent restart), and attaches
// it to the interfaces: a pinned link is updated in place with the new
// program (link.Update, no gap in forwarding), a missing one is created and
// pinned. Links of interfaces no longer configured are detached. A first
// install pins into a temporary directory and renames it into place.
func Open(o Options) (*Real, error) {
	if o.PinPath == "" {
		o.PinPath = DefaultPinPath
	}
	if o.MaglevTableSize == 0 {
		o.MaglevTableSize = defaults.MaglevTableSize
	}
	if o.ConntrackMax == 0 {
		o.ConntrackMax = defaults.ConntrackMax
	}
	hoSlots, ho6Max := hoSlotsFor(max(o.ConntrackMax/2, 1024)), max(o.ConntrackMax/4, 1024)
	if o.HalfOpenMax != 0 {
		hoSlots, ho6Max = hoSlotsFor(o.HalfOpenMax), o.HalfOpenMax
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	def := DefaultTimeouts()
	if o.Timeouts.TCPSyn == 0 {
		o.Timeouts.TCPSyn = def.TCPSyn
	}
	if o.Timeouts.TCPEstablished == 0 {
		o.Timeouts.TCPEstablished = def.TCPEstablished
	}
	if o.Timeouts.TCPClosing == 0 {
		o.Timeouts.TCPClosing = def.TCPClosing
	}
	if o.Timeouts.UDP == 0 {
		o.Timeouts.UDP = def.UDP
	}
	if o.SNATPortMin == 0 && o.SNATPortMax == 0 {
		o.SNATPortMin, o.SNATPortMax = defaults.SNATPortMin, defaults.SNATPortMax
	}
	if o.SNATPortMax < o.SNATPortMin {
		return nil, fmt.Errorf("snat port range %d-%d is empty", o.SNATPortMin, o.SNATPortMax)
	}
	if err := EnsureBPFFS(o.PinPath); err != nil {
		return nil, err
	}
	claim, err := claimPinPath(o.PinPath)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			claim.abandon()
		}
	}()

	spec, err := LoadSpec(o.MaglevTableSize, o.ConntrackMax, o.Timeouts)
	if err != nil {
		return nil, err
	}
	if o.RSTRate == 0 {
		o.RSTRate = DefaultRSTRate
	}
	c := withSNATPorts(spec, o.SNATPortMin, o.SNATPortMax)
	c.RstIntervalNs = uint64(time.Second) / uint64(o.RSTRate)
	c.RstBurstNs = uint64(time.Second)
	if err := spec.Variables["cfg"].Set(c); err != nil {
		return nil, fmt.Errorf("set snat ports and rst rate: %w", err)
	}
	spec.Maps["halfopen"].MaxEntries = hoSlots
	// snat flows need a reverse entry each: at most half of the flows can
	// be snat flows, as when every flow took two conntrack entries.
	snatMax, snatHOMax := max(o.ConntrackMax/2, 512), max(ho6Max/2, 512)
	spec.Maps["snat_rev"].MaxEntries = snatMax
	spec.Maps["snat_rev_ho"].MaxEntries = snatHOMax
	spec.Maps["halfopen6"].MaxEntries = ho6Max
	// A pinned conntrack (or half-open table) of another size is adopted as
	// it is: resizing it would drop every flow. Say so instead.
	for name, size := range map[string]uint32{"conntrack": o.ConntrackMax, "halfopen": hoSlots, "snat_rev": snatMax, "snat_rev_ho": snatHOMax,
		"conntrack6": o.ConntrackMax, "halfopen6": ho6Max} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(claim.dir, name), nil)
		if err != nil {
			continue
		}
		ms := spec.Maps[name]
		if m.Type() != ms.Type {
			m.Close() // another kind of map (the LRU half-open table before the array): replaced by upgradeLayout, at the configured size
			continue
		}
		if info, err := m.Info(); err == nil && info.MaxEntries != size {
			o.Log.Warn("keeping the pinned map's size; run `sluice teardown` to resize it",
				"map", name, "pinned", info.MaxEntries, "configured", size)
			spec.Maps[name].MaxEntries = info.MaxEntries
		}
		m.Close()
	}

	layout, err := layoutOf(spec)
	if err != nil {
		return nil, err
	}
	var reset []string
	if !claim.fresh() {
		if reset, err = upgradeLayout(claim.dir, spec, layout, o.Log); err != nil {
			return nil, err
		}
	}

	// The half-open table's hash key: the pinned table's own when it is
	// adopted (its slots were placed with it), a fresh random one
	// otherwise. A table whose key is lost reads as empty (no slot's
	// check matches), never as wrong flows.
	hoKey, err := pinnedHOKey(claim.dir)
	if err != nil {
		return nil, err
	}
	if hoKey == 0 {
		if hoKey, err = newHOKey(); err != nil {
			return nil, err
		}
	}
	hoMask := hoMaskOf(spec.Maps["halfopen"].MaxEntries)
	c.HoKey, c.HoMask = hoKey, hoMask
	if err := spec.Variables["cfg"].Set(c); err != nil {
		return nil, fmt.Errorf("set the half-open table's key: %w", err)
	}

	var objs bpf.SluiceObjects
	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: claim.dir}})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("load xdp program: pinned maps under %s come from an incompatible version (run `sluice teardown --pin-path %s`): %w", o.PinPath, o.PinPath, err)
		}
		return nil, loadError(err)
	}
	if err := writeLayout(claim.dir, layout, hoKey, o.MaglevTableSize); err != nil {
		objs.Close()
		return nil, err
	}
	if err := claim.publish(); err != nil {
		objs.Close()
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(o.PinPath, "links"), 0o700); err != nil {
		objs.Close()
		return nil, fmt.Errorf("create links directory: %w", err)
	}
	r := &Real{
		log:          o.Log,
		pinPath:      o.PinPath,
		tableSize:    o.MaglevTableSize,
		timeouts:     o.Timeouts,
		services:     objs.Services,
		backends:     objs.Backends,
		tables:       objs.MaglevTables,
		tablesRW:     true,
		conntrack:    objs.Conntrack,
		svcStats:     objs.ServiceStats,
		backendStats: objs.BackendStats,
		globalStats:  objs.GlobalStats,
		addrs:        objs.Addrs,
		backendPorts: objs.BackendPorts,
		halfopen:     objs.Halfopen,
		hoKey:        hoKey,
		hoMask:       hoMask,
		snatRev:      objs.SnatRev,
		snatRevHO:    objs.SnatRevHo,
		rstLimit:     objs.RstLimit,
		backendHops:  objs.BackendHops,
		replyHops:    objs.ReplyHops,
		directSYNs:   objs.DirectSyns,

		services6m:    objs.Services6,
		backends6m:    objs.Backends6,
		conntrack6:    objs.Conntrack6,
		halfopen6:     objs.Halfopen6,
		addrs6:        objs.Addrs6,
		backendPorts6: objs.BackendPorts6,
		natHint6:      objs.NatHint6,
		backendHops6:  objs.BackendHops6,
		replyHops6:    objs.ReplyHops6,
		directSYNs6:   objs.DirectSyns6,
		scratch:       objs.Scratch6,
		natShared:     objs.NatShared,
		hoScratch:     objs.HoScratch,
		prog:          objs.SluiceXdp,
		links:         map[string]link.Link{},
		attachments:   map[string]Attachment{},

		keepNeighbours: !o.NoNeighbours,
		layoutReset:    reset,
		pinned:         pinnedByName(&objs.SluiceMaps),
		layout:         layout,
	}
	if err := r.mapHalfOpen(); err != nil {
		r.Close()
		return nil, err
	}
	if err := r.buildAddrs(); err != nil {
		r.Close()
		return nil, err
	}
	if err := r.buildAddrs6(); err != nil {
		r.Close()
		return nil, err
	}
	if err := r.attach(o.Interfaces, o.XDPMode); err != nil {
		r.Close()
		return nil, err
	}
	r.ifaces, r.xdpMode = slices.Clone(o.Interfaces), o.XDPMode
	ok = true
	r.lock = claim.lock
	return r, nil
}

// disposableMaps can start afresh when a release changes their layout,
// instead of refusing to start (ErrMapIncompatible): their content is
// counters (Prometheus sees a counter reset), state rebuilt at every open
// (addrs, backend_ports), or flows still opening (they pick their backend
// again through Maglev, the same one while the table is unchanged). The old
// program keeps using the old map until the links are updated. Any other
// map's layout change starts the whole state afresh, loudly (see
// upgradeLayout in layout.go).
var disposableMaps = map[string]string{
	"service_stats":  "its counters restart from 0",
	"backend_stats":  "its counters restart from 0",
	"global_stats":   "its counters restart from 0",
	"halfopen":       "flows still opening pick their backend again",
	tablesMapName:    "the tables are written again from the config (new flows are refused until then)",
	"snat_rev_ho":    "half-open snat flows' reverse entries are re-created by their next packet",
	"addrs":          "it is rebuilt from services and backends",
	"backend_ports":  "it is rebuilt from backends",
	"halfopen6":      "flows still opening pick their backend again",
	"addrs6":         "it is rebuilt from services and backends",
	"backend_ports6": "it is rebuilt from backends",
}

// verifierError keeps the whole verifier log in the message (the short
// form of ebpf.VerifierError only shows its last lines) while errors.As
// still finds the *ebpf.VerifierError underneath.
type verifierError struct {
	ve *ebpf.VerifierError
}

func (e *verifierError) Error() string { return fmt.Sprintf("load xdp program: %+v", e.ve) }
func (e *verifierError) Unwrap() error { return e.ve }

// loadError wraps a load failure with %w semantics, the full verifier log
// included when there is one.
func loadError(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return &verifierError{ve: ve}
	}
	return fmt.Errorf("load xdp program: %w", err)
}

// ErrLayout is returned when the program's maps are not the sizes the Go
// side was built for (bpf/include/consts.h and this package disagree).
var ErrLayout = errors.New("data path map layout differs from the agent's")

// checkSpec compares the sizes of the maps indexed by service id or
// backend slot with MaxServices and MaxBackends: the C side defines them,
// the agent allocates ids and slots from them, and a mismatch would make
// writes fail (or leave ids unreachable) at run time instead of at load.
func checkSpec(spec *ebpf.CollectionSpec) error {
	want := map[string]uint32{
		"services": MaxServices, "service_stats": MaxServices,
		"backends": MaxBackends, "backend_stats": MaxBackends,
		"services6": MaxServices, "backends6": MaxBackends,
	}
	var errs []error
	// The program bounds a service id by MAX_SERVICES before it reads
	// the id's row of the flat Maglev table, sized MAX_SERVICES rows of
	// the default table size in the object.
	if m, ok := spec.Maps[tablesMapName]; !ok || m.MaxEntries != tablesEntries(defaults.MaglevTableSize) {
		errs = append(errs, fmt.Errorf("%w: map %s is not %d rows of %d entries", ErrLayout, tablesMapName, MaxServices, defaults.MaglevTableSize))
	}
	for name, n := range want {
		m, ok := spec.Maps[name]
		if !ok {
			errs = append(errs, fmt.Errorf("%w: no map %s", ErrLayout, name))
			continue
		}
		if m.MaxEntries != n {
			errs = append(errs, fmt.Errorf("%w: map %s has %d entries, want %d", ErrLayout, name, m.MaxEntries, n))
		}
	}
	return errors.Join(errs...)
}

// LoadSpec returns the program's collection spec with the run-time knobs set.
func LoadSpec(tableSize, conntrackMax uint32, t Timeouts) (*ebpf.CollectionSpec, error) {
	spec, err := bpf.LoadSluice()
	if err != nil {
		return nil, fmt.Errorf("load xdp program spec: %w", err)
	}
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	spec.Maps["conntrack"].MaxEntries = conntrackMax
	spec.Maps["conntrack6"].MaxEntries = conntrackMax
	spec.Maps[tablesMapName].MaxEntries = tablesEntries(tableSize)
	cfg := bpf.SluiceSluiceConfig{
		TcpSynTimeoutNs:         uint64(t.TCPSyn),
		TcpEstablishedTimeoutNs: uint64(t.TCPEstablished),
		TcpClosingTimeoutNs:     uint64(t.TCPClosing),
		UdpTimeoutNs:            uint64(t.UDP),
		MaglevSize:              tableSize,
		HashSeed:                0x5eed1ce,
		NexthopCacheNs:          uint64(time.Second),
		SnatPortMin:             defaults.SNATPortMin,
		SnatPortMax:             defaults.SNATPortMax,
		RstIntervalNs:           uint64(time.Second) / DefaultRSTRate,
		RstBurstNs:              uint64(time.Second),
	}
	v, ok := spec.Variables["cfg"]
	if !ok {
		return nil, errors.New("xdp program spec has no cfg variable")
	}
	if err := v.Set(cfg); err != nil {
		return nil, fmt.Errorf("set data path config: %w", err)
	}
	return spec, nil
}

func linkPin(pinPath, ifname string) string {
	return filepath.Join(pinPath, "links", "xdp_"+ifname)
}

func (r *Real) attach(ifaces []string, mode string) error {
	want := map[string]bool{}
	for _, name := range ifaces {
		want[name] = true
		if err := r.attachOne(name, mode); err != nil {
			return err
		}
	}
	// Detach interfaces that are no longer configured.
	entries, _ := os.ReadDir(filepath.Join(r.pinPath, "links"))
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), "xdp_")
		if !ok || want[name] {
			continue
		}
		p := filepath.Join(r.pinPath, "links", e.Name())
		if l, err := link.LoadPinnedLink(p, nil); err == nil {
			_ = l.Unpin()
			_ = l.Close()
			r.log.Info("detached xdp program from an interface no longer configured", "interface", name)
		}
	}
	return nil
}

func (r *Real) attachOne(name, mode string) error {
	iface, err := net.InterfaceByName(name)
	if err != nil {
		return fmt.Errorf("attach xdp to %s: %w", name, err)
	}
	pin := linkPin(r.pinPath, name)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, ierr := l.Info()
		sameIface := ierr == nil && info.XDP() != nil && int(info.XDP().Ifindex) == iface.Index
		if sameIface {
			if err := l.Update(r.prog); err != nil {
				l.Close()
				return fmt.Errorf("update xdp program on %s: %w", name, err)
			}
			r.links[name] = l
			a := Attachment{Interface: name, Mode: "native"}
			if info.XDP() != nil && linkIsGeneric(iface.Index) {
				a.Mode = "generic"
				a.Fallback = mode != "generic"
			}
			r.setAttachment(name, &a)
			r.log.Info("adopted pinned xdp link, program updated in place", "interface", name, "mode", a.Mode)
			return nil
		}
		// The interface was recreated: the old link is dead.
		_ = l.Unpin()
		_ = l.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		_ = os.Remove(pin)
	}

	l, generic, err := AttachXDP(r.prog, iface.Index, mode, func(err error) {
		r.log.Warn("native xdp attach failed, falling back to generic mode", "interface", name, "err", err)
	})
	if err != nil {
		return fmt.Errorf("attach xdp to %s: %w", name, err)
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return fmt.Errorf("pin xdp link of %s: %w", name, err)
	}
	a := Attachment{Interface: name, Mode: "native"}
	if generic {
		a.Mode = "generic"
		a.Fallback = mode != "generic"
	}
	if a.Fallback {
		r.log.Warn("xdp program runs in GENERIC mode (xdp_mode auto fell back): slow path, see sluice status and sluice_xdp_attached",
			"interface", name)
	} else {
		r.log.Info("attached xdp program", "interface", name, "mode", a.Mode)
	}
	r.links[name] = l
	r.setAttachment(name, &a)
	return nil
}

// KeepAttached checks that the program is still attached to every
// configured interface and attaches it again where it is not: an
// interface deleted and made again (a driver reset, a hot-plugged NIC, a
// recreated veth) takes the program's link with it, and another tool may
// detach it (bpftool link detach). Until it is attached again the
// interface is missing from Attachments (status, sluice_xdp_attached,
// and the VIPs are withdrawn from BGP). It returns what it found and did,
// for the agent's log; nothing when every link is alive.
func (r *Real) KeepAttached() []AttachChange {
	var out []AttachChange
	for _, name := range r.ifaces {
		why := r.linkLost(name)
		if why == "" {
			continue
		}
		had := r.setAttachment(name, nil)
		if l := r.links[name]; l != nil {
			_ = l.Close()
			delete(r.links, name)
		}
		err := r.attachOne(name, r.xdpMode)
		if err != nil && !had {
			continue // still not attached: said when it was lost
		}
		out = append(out, AttachChange{Interface: name, Lost: why, Err: err})
	}
	return out
}

// setAttachment records the program's attachment to interface name (nil:
// none) and says whether there was one.
func (r *Real) setAttachment(name string, a *Attachment) (had bool) {
	r.attachMu.Lock()
	defer r.attachMu.Unlock()
	_, had = r.attachments[name]
	if a == nil {
		delete(r.attachments, name)
	} else {
		r.attachments[name] = *a
	}
	return had
}

// AttachChange is one interface whose attachment KeepAttached found lost:
// Lost says how; Err is nil when the program is attached again.
type AttachChange struct {
	Interface string
	Lost      string
	Err       error
}

// linkLost says why the program's link on interface name is not alive
// ("" when it is).
func (r *Real) linkLost(name string) string {
	l := r.links[name]
	if l == nil {
		return "not attached"
	}
	return XDPLinkLost(l, name)
}

// XDPLinkLost says why an XDP link meant to be on interface name no
// longer runs the program there ("" when it does): the link's device went
// away, another tool detached it, or the interface was made again or
// renamed. The agent's data path and `sluice decap attach --keep` check
// their links with it.
func XDPLinkLost(l link.Link, name string) string {
	info, err := l.Info()
	if err != nil || info.XDP() == nil {
		return "the link is gone"
	}
	if info.XDP().Ifindex == 0 {
		// The link's device went away, or it was detached.
		return "the link was detached (the interface made again, or another tool)"
	}
	// One link asked for by name (net.InterfaceByName would dump every
	// interface of the host, every second).
	iface, err := netlink.LinkByName(name)
	if err != nil {
		return "the interface is gone"
	}
	if int(info.XDP().Ifindex) != iface.Attrs().Index {
		return "the interface was renamed and another took its name"
	}
	return ""
}

// Attachments says how the program is attached to each interface, sorted
// by interface name.
func (r *Real) Attachments() []Attachment {
	r.attachMu.Lock()
	defer r.attachMu.Unlock()
	out := make([]Attachment, 0, len(r.attachments))
	for _, a := range r.attachments {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b Attachment) int { return strings.Compare(a.Interface, b.Interface) })
	return out
}

// linkIsGeneric tells whether the XDP program on the interface runs in
// generic (skb) mode, from the kernel's own report (IFLA_XDP_ATTACHED).
func linkIsGeneric(ifindex int) bool {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil || l.Attrs().Xdp == nil {
		return false
	}
	return l.Attrs().Xdp.AttachMode == xdpAttachedSKB
}

// xdpAttachedSKB is the kernel's XDP_ATTACHED_SKB (include/uapi/linux/if_link.h).
const xdpAttachedSKB = 2

// Close releases the agent's handles. Programs stay attached and maps stay
// pinned: the data path keeps forwarding while the agent is away.
func (r *Real) Close() error {
	for _, l := range r.links {
		l.Close()
	}
	for _, m := range []*ebpf.Map{r.services, r.backends, r.tables, r.conntrack, r.svcStats, r.backendStats, r.globalStats, r.addrs, r.halfopen, r.backendPorts, r.snatRev, r.snatRevHO, r.rstLimit, r.backendHops, r.replyHops, r.directSYNs, r.natShared, r.hoScratch,
		r.services6m, r.backends6m, r.conntrack6, r.halfopen6, r.addrs6, r.backendPorts6, r.natHint6, r.backendHops6, r.replyHops6, r.directSYNs6, r.scratch} {
		if m != nil {
			m.Close()
		}
	}
	r.unmapTables()
	if r.prog != nil {
		r.prog.Close()
	}
	if r.lock != nil {
		r.lock.Close() // releases the flock
	}
	return nil
}

// OpenPinned opens the pinned maps without loading or attaching anything:
// for reading flows and counters when the agent is not running. Maps of
// another release's layout are refused (ErrPinnedLayout), never misread.
func OpenPinned(pinPath string) (*Real, error) {
	if pinPath == "" {
		pinPath = DefaultPinPath
	}
	if err := checkPinnedLayout(pinPath); err != nil {
		return nil, err
	}
	r, err := openPinnedMaps(pinPath)
	if err != nil {
		return nil, err
	}
	if r.hoKey, err = pinnedHOKey(pinPath); err != nil {
		r.Close()
		return nil, err
	}
	r.hoMask = hoMaskOf(r.halfopen.MaxEntries())
	if err := r.mapHalfOpen(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// openPinnedMaps is OpenPinned without the layout check.
func openPinnedMaps(pinPath string) (*Real, error) {
	r := &Real{log: slog.Default(), pinPath: pinPath, timeouts: DefaultTimeouts(), links: map[string]link.Link{}}
	ptrs := []**ebpf.Map{&r.services, &r.backends, &r.tables, &r.conntrack, &r.svcStats, &r.backendStats, &r.globalStats, &r.addrs, &r.halfopen, &r.backendPorts, &r.snatRev, &r.snatRevHO,
		&r.services6m, &r.backends6m, &r.conntrack6, &r.halfopen6, &r.addrs6, &r.backendPorts6, &r.natHint6}
	for i, name := range mapNames {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinPath, name), nil)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		*ptrs[i] = m
	}
	n, err := pinnedTableSize(pinPath)
	if err != nil {
		r.Close()
		return nil, err
	}
	r.tableSize = n
	return r, nil
}

// ErrPinnedLayout is returned by OpenPinned when the pinned maps were
// written by a release with another map layout: this release would
// misread them.
var ErrPinnedLayout = errors.New("the pinned data path has another map layout than this release")

// checkPinnedLayout compares the layout version pinned under pinPath (see
// layout.go) with this release's: a recorded fingerprint that differs, or,
// without a record (a release before layout versions), a map of another
// shape, or a map missing, is refused with the maps named.
func checkPinnedLayout(pinPath string) error {
	spec, err := bpf.LoadSluice()
	if err != nil {
		return fmt.Errorf("load xdp program spec: %w", err)
	}
	want, err := layoutOf(spec)
	if err != nil {
		return err
	}
	recorded, haveRecord, err := readLayout(pinPath)
	if err != nil {
		return err
	}
	var changed []string
	for _, name := range mapNames {
		if haveRecord {
			if fp, ok := recorded[name]; !ok || fp != want[name] {
				changed = append(changed, name)
			}
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinPath, name), nil)
		if err != nil {
			changed = append(changed, name)
			continue
		}
		if !sameShape(name, m, spec.Maps[name]) {
			changed = append(changed, name)
		}
		m.Close()
	}
	if len(changed) == 0 {
		return nil
	}
	return fmt.Errorf("%w (%s: %s): start this release's agent once, which migrates the state, "+
		"or read it with the release that wrote it", ErrPinnedLayout, pinPath, strings.Join(changed, ", "))
}

// Teardown detaches every pinned link under pinPath and removes every pin
// and the directory. It is idempotent.
func Teardown(pinPath string) error {
	if pinPath == "" {
		pinPath = DefaultPinPath
	}
	var errs []error
	linksDir := filepath.Join(pinPath, "links")
	entries, err := os.ReadDir(linksDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("read %s: %w", linksDir, err))
	}
	for _, e := range entries {
		p := filepath.Join(linksDir, e.Name())
		l, err := link.LoadPinnedLink(p, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("load pinned link %s: %w", p, err))
			_ = os.Remove(p)
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", p, err))
		}
		l.Close() // the last reference: the program is detached
	}
	_ = os.Remove(linksDir)
	for _, name := range append(slices.Clone(mapNames), layoutMapName, oldTablesMapName) {
		p := filepath.Join(pinPath, name)
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
	}
	if err := os.Remove(pinPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", pinPath, err))
	}
	// Temporary directories of first installs that died before publishing
	// (their flock is free); one still being installed is left alone.
	parent, base := filepath.Split(filepath.Clean(pinPath))
	stale, _ := filepath.Glob(filepath.Join(parent, base+"-tmp-*"))
	for _, d := range stale {
		if l, err := lockPinPath(d); err == nil {
			if err := os.RemoveAll(d); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
			}
			l.Close()
		}
	}
	return errors.Join(errs...)
}

func withSNATPorts(spec *ebpf.CollectionSpec, lo, hi uint16) bpf.SluiceSluiceConfig {
	var c bpf.SluiceSluiceConfig
	_ = spec.Variables["cfg"].Get(&c)
	c.SnatPortMin, c.SnatPortMax = uint32(lo), uint32(hi)
	return c
}
