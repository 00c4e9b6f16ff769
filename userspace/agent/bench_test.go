package agent

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/userspace/config"
	"github.com/sluicelb/sluice/userspace/datapath"
	"github.com/sluicelb/sluice/userspace/discovery"
)

// The agent's idle cost at the size of issue 14's measurement: 1000 static
// backends and 100 DNS names (TTL 5 s, answers never changing), spread over
// 10 pools with one L4 service each. Every name answers one address of its
// own, so the pools hold 1100 addresses.
const (
	benchPools       = 10
	benchStatic      = 100 // per pool
	benchNames       = 10  // per pool
	benchTableSize   = 16381
	benchAnswersPerS = 20 // 100 names with a 5 s TTL
)

func benchConfig() string {
	var b strings.Builder
	b.WriteString("interfaces: [veth0]\npools:\n")
	for p := range benchPools {
		fmt.Fprintf(&b, "  - name: pool%d\n    backends:\n", p)
		for i := range benchStatic {
			fmt.Fprintf(&b, "      - address: 198.18.%d.%d:80\n", 10+p, 1+i)
		}
		for i := range benchNames {
			fmt.Fprintf(&b, "      - name: n%d-%d.lab\n        port: 80\n", p, i)
		}
	}
	b.WriteString("services:\n")
	for p := range benchPools {
		fmt.Fprintf(&b, "  - name: svc%d\n    listen: 198.18.1.%d:80\n    protocol: tcp\n    pool: pool%d\n", p, 1+p, p)
	}
	return b.String()
}

// benchAnswer is name n's answer number seq: always the same address, a
// fresh TTL and sequence number (what the watcher publishes every TTL).
func benchAnswer(now time.Time, p, i int, seq uint64) discovery.Update {
	ip := netip.AddrFrom4([4]byte{198, 18, byte(30 + p), byte(1 + i)})
	return discovery.Update{
		Name: fmt.Sprintf("n%d-%d.lab.", p, i), Seq: seq, Published: true, Reason: discovery.ReasonAnswer,
		Expires: now.Add(5 * time.Second), At: now,
		Addrs: []discovery.Addr{{Addr: ip, FirstSeq: 1,
			Answer: discovery.AnswerRef{Seq: seq, Server: "198.18.2.53:53", ReceivedAt: now, TTL: 5 * time.Second}}},
	}
}

// newBenchAgent starts an agent over a Fake with the benchmark's config
// and every name answered once.
func newBenchAgent(b *testing.B) (*agent, *time.Time) {
	b.Helper()
	path := filepath.Join(b.TempDir(), "sluice.yaml")
	if err := os.WriteFile(path, []byte(benchConfig()), 0o600); err != nil {
		b.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	a := newAgent(datapath.NewFake(benchTableSize), options{configPath: path, now: func() time.Time { return now }})
	if err := a.start(now, cfg); err != nil {
		b.Fatal(err)
	}
	for p := range benchPools {
		for i := range benchNames {
			a.onDNSUpdate(benchAnswer(now, p, i, 1))
		}
	}
	if got := len(a.pools["pool0"].p.Active()); got != benchStatic+benchNames {
		b.Fatalf("pool0 has %d active addresses, want %d", got, benchStatic+benchNames)
	}
	return a, &now
}

// BenchmarkUnchangedDNSAnswer is the cost of one DNS answer that returns
// what the name returned before.
func BenchmarkUnchangedDNSAnswer(b *testing.B) {
	a, now := newBenchAgent(b)
	seq := uint64(1)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		seq++
		*now = now.Add(50 * time.Millisecond)
		a.onDNSUpdate(benchAnswer(*now, i%benchPools, (i/benchPools)%benchNames, seq))
	}
}

// BenchmarkIdleTick is the cost of one tick with nothing to do.
func BenchmarkIdleTick(b *testing.B) {
	a, now := newBenchAgent(b)
	b.ResetTimer()
	for b.Loop() {
		*now = now.Add(TickInterval)
		if err := a.tick(*now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIdleSecond is one second of the idle agent: benchAnswersPerS
// unchanged answers and one tick. Its ns/op divided by 1e9 is the share of
// one core the agent's own work takes (10 ms/op = 1 %).
func BenchmarkIdleSecond(b *testing.B) {
	a, now := newBenchAgent(b)
	seq := uint64(1)
	n := 0
	b.ResetTimer()
	for b.Loop() {
		seq++
		for range benchAnswersPerS {
			*now = now.Add(time.Second / benchAnswersPerS)
			a.onDNSUpdate(benchAnswer(*now, n%benchPools, (n/benchPools)%benchNames, seq))
			n++
		}
		if err := a.tick(*now); err != nil {
			b.Fatal(err)
		}
	}
}
