#!/usr/bin/env bash
# bench.sh: benchmarks (results belong in docs/benchmarks.md); `make bench`.
#
#   scripts/bench.sh [go|lab|l7|dns|all]     (default all)
#
# go:  the Go benchmarks: per-packet cost of the XDP program through prog.Run
#      (userspace/datapath, root) and the Maglev table build.
# lab: scripts/bench_l4.sh: in the netns lab, requests/s and p99 with wrk,
#      keep-alive and new connection per request, for the backends reached
#      directly, through nftables DNAT and through sluice, in rounds.
#      BENCH_DURATION (seconds, default 10), BENCH_ROUNDS (default 3).
# l7:  scripts/bench_l7.sh: the L7 stage vs nginx vs HAProxy (deps.sh --bench),
#      keep-alive and new connection per request, in rounds.
# dns: scripts/bench_dns.sh: time from a DNS change to all new connections on
#      the new address, sluice vs nginx vs HAProxy (deps.sh --bench).
#      BENCH_DNS_SWITCHES (default 10), BENCH_DNS_INTERVAL (seconds, default 8).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
go_bin=$(command -v go || echo /usr/local/go/bin/go)

go_bench() {
	"$go_bin" test -run='^$' -bench=. -benchmem ./bpf/... ./userspace/datapath/... ./userspace/maglev/...
}

lab_bench() {
	[[ -x bin/sluice-testbackend ]] || "$go_bin" build -o bin/sluice-testbackend ./e2e/backend
	scripts/bench_l4.sh "${BENCH_DURATION:-10}"
}

l7_bench() {
	[[ -x bin/sluice-testbackend ]] || "$go_bin" build -o bin/sluice-testbackend ./e2e/backend
	scripts/bench_l7.sh "${BENCH_DURATION:-10}"
}

dns_bench() {
	scripts/bench_dns.sh "${BENCH_DNS_SWITCHES:-10}" "${BENCH_DNS_INTERVAL:-8}"
}

case ${1:-all} in
go) go_bench ;;
lab) lab_bench ;;
l7) l7_bench ;;
dns) dns_bench ;;
all)
	go_bench
	lab_bench
	l7_bench
	dns_bench
	;;
*)
	printf 'usage: bench.sh [go|lab|l7|dns|all]\n' >&2
	exit 2
	;;
esac
