#!/usr/bin/env bash
# bench_l4.sh: requests/s and p99 latency through the L4 data path, side by
# side in one lab run with the peers a user would pick instead:
#
#   direct     client -> be1, routed by the lb namespace's kernel (no balancing)
#   nftables   client -> VIP 198.18.1.200, nftables DNAT (numgen round robin
#              over be1..be3) + kernel conntrack in the lb namespace
#   sluice     client -> VIP 198.18.1.100, sluice's XDP program (nat mode)
#
# and the same three over IPv6 (direct6, nftables6 with VIP 2001:2:0:1::200,
# sluice6 with VIP [2001:2:0:1::100]; BENCH_FAMILIES="4 6" by default),
# each with wrk, keep-alive and one new connection per request
# (Connection: close). Every phase runs alone: nftables rules are removed
# before sluice is attached, and sluice is not attached while the others run.
# Traffic stays inside the lab's namespaces (198.18.0.0/15, 2001:2::/48); every load loop
# is bounded by wrk's duration.
#
#   scripts/bench_l4.sh [DURATION_SECONDS]     (default 10; BENCH_ROUNDS=3)
set -Eeuo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
dur=${1:-10}
rounds=${BENCH_ROUNDS:-3}
conns=${BENCH_CONNS:-32}
threads=${BENCH_THREADS:-2}
families=${BENCH_FAMILIES:-4 6}
lab=scripts/lab.sh
sluice=$repo_root/bin/sluice

[[ $(id -u) -eq 0 ]] || { echo "bench_l4: needs root (network namespaces, XDP)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "bench_l4: wrk missing (scripts/deps.sh installs it)" >&2; exit 1; }
[[ -x $sluice ]] || { echo "bench_l4: build first (make build)" >&2; exit 1; }

id=$("$lab" up 2>/dev/null | tail -1)
pin=/sys/fs/bpf/sluice-bench-$id
state=$repo_root/.lab/$id
agent_pid=
cleanup() {
	if [[ -n $agent_pid ]]; then kill "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; fi
	"$sluice" teardown --pin-path "$pin" >/dev/null 2>&1 || true
	"$lab" down "$id" >/dev/null 2>&1 || true
}
trap cleanup EXIT
"$lab" backends "$id" >/dev/null 2>&1

# shellcheck source=scripts/bench_lib.sh
source "$repo_root/scripts/bench_lib.sh"
# An IPv6 path uses its IPv4 twin's range: the client's address differs,
# so the backends' TIME_WAIT tuples of the two never meet.
declare -A port_range=([direct]="10000 29999" [nftables]="30000 44999" [sluice]="45000 60999"
	[direct6]="10000 29999" [nftables6]="30000 44999" [sluice6]="45000 60999")

cat >"$state/bench.yaml" <<-YAML
	interfaces: [eth0, eth1]
	admin: {socket: $state/bench-admin.sock}
	metrics: {listen: "off"}
	datapath: {pin_path: $pin}
	pools:
	  - name: web
	    backends:
	      - address: 198.18.2.11:80
	      - address: 198.18.2.12:80
	      - address: 198.18.2.13:80
	      - address: "[2001:2:0:2::11]:80"
	      - address: "[2001:2:0:2::12]:80"
	      - address: "[2001:2:0:2::13]:80"
	services:
	  - name: web-l4
	    listen: 198.18.1.100:80
	    protocol: tcp
	    pool: web
	  - name: web6-l4
	    listen: "[2001:2:0:1::100]:80"
	    protocol: tcp
	    pool: web
	YAML

start_sluice() {
	"$lab" exec "$id" lb "$sluice" agent -c "$state/bench.yaml" >>"$state/bench-agent.log" 2>&1 &
	agent_pid=$!
	for _ in $(seq 50); do
		"$sluice" status --socket "$state/bench-admin.sock" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "bench_l4: agent did not start (see $state/bench-agent.log)" >&2
	exit 1
}

stop_sluice() {
	kill "$agent_pid" 2>/dev/null || true
	wait "$agent_pid" 2>/dev/null || true
	agent_pid=
	"$sluice" teardown --pin-path "$pin" >/dev/null 2>&1 || true
}

results=$state/bench_l4.tsv
: >"$results"
for round in $(seq "$rounds"); do
	for fam in $families; do
		if [[ $fam == 4 ]]; then
			both direct http://198.18.2.11/
			"$lab" exec "$id" lb nft -f - <<-'NFT'
				table ip benchlb {
					chain pre {
						type nat hook prerouting priority dstnat; policy accept;
						ip daddr 198.18.1.200 tcp dport 80 dnat to numgen inc mod 3 map { 0 : 198.18.2.11, 1 : 198.18.2.12, 2 : 198.18.2.13 }
					}
				}
			NFT
			both nftables http://198.18.1.200/
			"$lab" exec "$id" lb nft delete table ip benchlb
			start_sluice
			both sluice http://198.18.1.100/
			stop_sluice
		else
			both direct6 'http://[2001:2:0:2::11]/'
			"$lab" exec "$id" lb nft -f - <<-'NFT'
				table ip6 benchlb6 {
					chain pre {
						type nat hook prerouting priority dstnat; policy accept;
						ip6 daddr 2001:2:0:1::200 tcp dport 80 dnat to numgen inc mod 3 map { 0 : 2001:2:0:2::11, 1 : 2001:2:0:2::12, 2 : 2001:2:0:2::13 }
					}
				}
			NFT
			both nftables6 'http://[2001:2:0:1::200]/'
			"$lab" exec "$id" lb nft delete table ip6 benchlb6
			start_sluice
			both sluice6 'http://[2001:2:0:1::100]/'
			stop_sluice
		fi
	done
done

# The median of the rounds per path and load (summary prints the header).
paths=()
for fam in $families; do
	if [[ $fam == 4 ]]; then paths+=(direct nftables sluice); else paths+=(direct6 nftables6 sluice6); fi
done
summary "${paths[@]}"
echo
echo "wrk -t$threads -c$conns -d${dur}s --latency, $rounds rounds; new-conn adds -H 'Connection: close'. Backends: e2e/backend (Go). $(nproc) CPUs, kernel $(uname -r)."
