#!/usr/bin/env bash
# bench.sh: benchmarks (results go to docs/benchmarks.md).
# For now: the Go benchmarks: per-packet cost of the XDP program through
# prog.Run (userspace/datapath, root) and the Maglev table build.
# The lab side by side (sluice vs direct vs nftables DNAT, with wrk) comes later.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
go_bin=$(command -v go || echo /usr/local/go/bin/go)
"$go_bin" test -run='^$' -bench=. -benchmem ./bpf/... ./userspace/datapath/... ./userspace/maglev/...
