package proxy

import (
	"testing"
)

// TestRequestBudget holds the proxy to what a proxied request costs today
// (BenchmarkProxy's cases, loopback backends): allocations per request
// and, where the raw_syscalls tracepoint can be counted (root, as in CI),
// system calls per request of the whole process (clients and backends
// included; the cases' "direct/" twins are their share). A change that
// adds an allocation or a system call to every request fails here before
// the lab's benchmark (docs/benchmarks.md) would show it as noise. The
// allocation budgets are today's counts (the process's allocations over
// some 20 000 requests, divided: the access log's flushes and the
// timers round away), the system-call budgets a little above them (how
// often a read finds nothing yet depends on the scheduling); lower them
// when a change saves some.
func TestRequestBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the proxy benchmark's cases for a few seconds")
	}
	for _, tc := range []struct {
		bench    proxyBench
		allocs   int64   // per request
		syscalls float64 // per request (0: not checked); today 12.4 and 36.3
	}{
		{proxyBench{name: "keep-alive", keepAlive: true, accessLog: true}, 19, 13.5},
		// Event loops batch their reads and writes by what is ready: their
		// system calls per request vary with the scheduling (9.5–14).
		{proxyBench{name: "keep-alive/eventloops", keepAlive: true, accessLog: true, loops: true}, 19, 0},
		{proxyBench{name: "new-connection", accessLog: true}, 56, 38},
	} {
		t.Run(tc.bench.name, func(t *testing.T) {
			failed := false
			res := testing.Benchmark(func(b *testing.B) {
				tc.bench.run(b)
				failed = failed || b.Failed()
			})
			if failed || res.N == 0 {
				t.Fatalf("the benchmark's requests failed (%d run)", res.N)
			}
			if a := res.AllocsPerOp(); a > tc.allocs {
				t.Errorf("%d allocations per request, budget %d (%d B per request)", a, tc.allocs, res.AllocedBytesPerOp())
			}
			sc, counted := res.Extra["syscalls/op"]
			switch {
			case tc.syscalls == 0:
			case !counted:
				t.Logf("system calls not counted (the raw_syscalls tracepoint needs root)")
			case sc > tc.syscalls:
				t.Errorf("%.2f system calls per request, budget %.1f", sc, tc.syscalls)
			}
			t.Logf("%d requests: %d allocations (%d B), %.2f system calls per request", res.N, res.AllocsPerOp(), res.AllocedBytesPerOp(), sc)
		})
	}
}
