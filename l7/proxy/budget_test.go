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
// the requests made in a second or two, divided) rounded up to the next
// whole allocation: what the process allocates besides the requests (the
// access log's flushes, timers, the clients' own dials, goroutines
// started) adds a fraction that grows when the machine is loaded and
// fewer requests are made — a kept-alive request costs 19.0–19.6, a new
// connection 56.2–57.2. One allocation more per request fails on a quiet
// machine, two on a loaded one. The
// system-call budgets are a little above today's counts (how often a
// read finds nothing yet depends on the scheduling). Lower them when a
// change saves some.
func TestRequestBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the proxy benchmark's cases for a few seconds")
	}
	if raceOn {
		t.Skip("the race detector adds allocations and slows the requests: the budgets are for the plain build")
	}
	for _, tc := range []struct {
		bench    proxyBench
		allocs   float64 // per request
		bytes    int64   // allocated per request (0: not checked)
		syscalls float64 // per request (0: not checked); today 12.4 and 36.3
	}{
		// 10 allocations and ~1.1 KB per kept-alive request since the
		// response path reads and writes the backend's header without
		// maps (h1fast.go; 19 through http.ReadResponse) and a
		// connection's requests reuse one request state (request.finish;
		// 2.4 KB before): a change that loses either fails.
		{proxyBench{name: "keep-alive", keepAlive: true, accessLog: true}, 11, 1600, 13.5},
		// Event loops batch their reads and writes by what is ready: their
		// system calls per request vary with the scheduling (9.5–14).
		{proxyBench{name: "keep-alive/eventloops", keepAlive: true, accessLog: true, loops: true}, 11, 1600, 0},
		{proxyBench{name: "new-connection", accessLog: true}, 51, 0, 38},
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
			allocs := float64(res.MemAllocs) / float64(res.N)
			if allocs > tc.allocs {
				t.Errorf("%.2f allocations per request, budget %.1f (%d B per request)", allocs, tc.allocs, res.AllocedBytesPerOp())
			}
			if b := res.AllocedBytesPerOp(); tc.bytes > 0 && b > tc.bytes {
				t.Errorf("%d bytes allocated per request, budget %d", b, tc.bytes)
			}
			sc, counted := res.Extra["syscalls/op"]
			switch {
			case tc.syscalls == 0:
			case !counted:
				t.Logf("system calls not counted (the raw_syscalls tracepoint needs root)")
			case sc > tc.syscalls:
				t.Errorf("%.2f system calls per request, budget %.1f", sc, tc.syscalls)
			}
			t.Logf("%d requests: %.2f allocations (%d B), %.2f system calls per request", res.N, allocs, res.AllocedBytesPerOp(), sc)
		})
	}
}
