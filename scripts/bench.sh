#!/usr/bin/env bash
# bench.sh: benchmarks (see docs/benchmarks.md).
# For now: the Go benchmarks of the data path (prog.Run) and of Maglev.
# The lab side-by-side (sluice vs direct vs nftables DNAT, with wrk) comes later.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
go_bin=$(command -v go || echo /usr/local/go/bin/go)
"$go_bin" test -run='^$' -bench=. -benchmem ./bpf/... ./userspace/maglev/...
