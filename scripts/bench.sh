#!/usr/bin/env bash
# bench.sh: benchmarks (results belong in docs/benchmarks.md).
#
#   scripts/bench.sh [go|lab|all]     (default all; `make bench`)
#
# go:  the Go benchmarks: per-packet cost of the XDP program through prog.Run
#      (userspace/datapath, root) and the Maglev table build.
# lab: in the netns lab, side by side in one run, requests/s and p99 latency
#      with wrk, keep-alive and new-connection-per-request, for
#        direct  the backends reached directly (routed by the lb namespace),
#        nft     a VIP DNATed by nftables in the lb namespace (the kernel's own
#                alternative), round robin over be1..be3,
#        sluice  the VIP served by sluice agent (XDP, Maglev, conntrack).
#      Traffic stays in the lab's namespaces (198.18.0.0/15); each run is
#      bounded by BENCH_DURATION.
#
# Environment: BENCH_DURATION (default 10s), BENCH_CONNS (default 32),
# BENCH_THREADS (default 2).
set -Eeuo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

go_bin=$(command -v go || echo /usr/local/go/bin/go)
lab=scripts/lab.sh
sluice=$repo_root/bin/sluice
vip=198.18.1.100
duration=${BENCH_DURATION:-10s}
conns=${BENCH_CONNS:-32}
threads=${BENCH_THREADS:-2}

log() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

go_bench() {
	"$go_bin" test -run='^$' -bench=. -benchmem ./bpf/... ./userspace/datapath/... ./userspace/maglev/...
}

id=""
agent_pid=""
pin=""
config=""

lab_cleanup() {
	set +e
	if [[ -n $agent_pid ]] && kill -0 "$agent_pid" 2>/dev/null; then
		kill -TERM "$agent_pid"
		wait "$agent_pid" 2>/dev/null
	fi
	if [[ -n $pin && -e $pin ]]; then
		"$lab" exec "$id" lb "$sluice" teardown -c "$config" --pin-path "$pin" >/dev/null
	fi
	if [[ -n $id ]]; then
		"$lab" down "$id" >/dev/null 2>&1
	fi
}

# wrk_run NAME KIND URL...: wrk against every URL at once (connections split
# between them); prints "NAME KIND requests/s p99".
wrk_run() {
	local name=$1 kind=$2
	shift 2
	local n=$# per pids=() outs=() i=0 url
	per=$((conns / n))
	((per >= threads)) || per=$threads
	# Each path gets its own client port range: the backends keep the
	# server-side TIME_WAIT of every closed connection, and a new SYN from a
	# reused port with timestamps from another path (the client keeps one
	# timestamp offset per destination: VIP vs backend) would be refused,
	# costing 1s SYN retransmits and a made-up slow result.
	local range
	case $name in
	direct) range="10000 29999" ;;
	nft) range="30000 44999" ;;
	*) range="45000 60999" ;;
	esac
	"$lab" exec "$id" client sysctl -qw net.ipv4.ip_local_port_range="$range"
	local extra=()
	if [[ $kind == newconn ]]; then
		extra=(-H 'Connection: close')
	fi
	for url in "$@"; do
		outs+=("$state/wrk-$name-$kind-$i.txt")
		"$lab" exec "$id" client wrk -t"$threads" -c"$per" -d"$duration" --latency "${extra[@]}" "$url" \
			>"${outs[$i]}" 2>&1 &
		pids+=($!)
		i=$((i + 1))
	done
	for i in "${!pids[@]}"; do
		wait "${pids[$i]}" || die "wrk failed: $(cat "${outs[$i]}")"
	done
	# Sum requests/s over the runs; p99 is the worst of them. Any socket
	# error or non-2xx answer is reported too.
	awk -v name="$name" -v kind="$kind" '
		/^Requests\/sec:/ { rps += $2 }
		$1 == "99%" { v = $2; ms = v + 0
			if (v ~ /us$/) ms = ms / 1000; else if (v ~ /ms$/) ms = ms; else if (v ~ /s$/) ms = ms * 1000
			if (ms > p99) p99 = ms }
		/Socket errors/ { errs = errs $0 " " }
		/Non-2xx/ { errs = errs $0 " " }
		END { printf "%-7s %-9s %12.0f %10.3f %s\n", name, kind, rps, p99, errs }
	' "${outs[@]}"
}

nft_rules() {
	cat <<-EOF
		table ip sluicebench {
			chain prerouting {
				type nat hook prerouting priority dstnat; policy accept;
				ip daddr $vip tcp dport 80 dnat to numgen inc mod 3 map { 0 : 198.18.2.11, 1 : 198.18.2.12, 2 : 198.18.2.13 }
			}
		}
	EOF
}

lab_bench() {
	[[ $EUID -eq 0 ]] || die "the lab bench needs root"
	[[ -x $sluice ]] || die "$sluice missing: make build"
	command -v wrk >/dev/null || die "wrk missing: scripts/deps.sh"
	[[ -x bin/sluice-testbackend ]] || "$go_bin" build -o bin/sluice-testbackend ./e2e/backend

	id=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
	trap lab_cleanup EXIT
	LAB_OWNER_PID=$$ "$lab" up "$id" >/dev/null
	"$lab" backends "$id"
	state=$repo_root/.lab/$id
	results=$state/results.txt
	: >"$results"

	log "direct: wrk to be1..be3 at once"
	for kind in keepalive newconn; do
		wrk_run direct "$kind" http://198.18.2.11/ http://198.18.2.12/ http://198.18.2.13/ >>"$results"
	done

	log "nft: DNAT $vip:80 -> be1..be3 in the lb namespace"
	nft_rules | "$lab" exec "$id" lb nft -f -
	for kind in keepalive newconn; do
		wrk_run nft "$kind" "http://$vip/" >>"$results"
	done
	"$lab" exec "$id" lb nft delete table ip sluicebench

	log "sluice: agent in the lb namespace"
	pin=/sys/fs/bpf/sluice-$id
	config=$state/sluice.yaml
	cat >"$config" <<-EOF
		interfaces: [eth0, eth1]
		admin: {socket: $state/admin.sock}
		metrics: {listen: "off"}
		datapath: {pin_path: $pin, xdp_mode: native}
		pools:
		  - name: web
		    backends:
		      - address: 198.18.2.11:80
		      - address: 198.18.2.12:80
		      - address: 198.18.2.13:80
		services:
		  - name: web-l4
		    listen: $vip:80
		    protocol: tcp
		    mode: nat
		    pool: web
	EOF
	"$lab" exec "$id" lb "$sluice" agent -c "$config" >"$state/agent.log" 2>&1 </dev/null &
	agent_pid=$!
	local i
	for ((i = 0; i < 100; i++)); do
		"$sluice" status -c "$config" >/dev/null 2>&1 && break
		kill -0 "$agent_pid" 2>/dev/null || die "agent exited: $(cat "$state/agent.log")"
		sleep 0.1
	done
	for kind in keepalive newconn; do
		wrk_run sluice "$kind" "http://$vip/" >>"$results"
	done

	printf '\nlab bench: wrk -t%s, %s connections, %s per run, %s CPUs, kernel %s\n\n' \
		"$threads" "$conns" "$duration" "$(nproc)" "$(uname -r)"
	printf '| path | load | requests/s | p99 ms | errors |\n| --- | --- | ---: | ---: | --- |\n'
	local name kind rps p99 errs
	while read -r name kind rps p99 errs; do
		printf '| %s | %s | %s | %s | %s |\n' "$name" "$kind" "$rps" "$p99" "${errs:-none}"
	done <"$results"
}

case ${1:-all} in
go) go_bench ;;
lab) lab_bench ;;
all)
	go_bench
	lab_bench
	;;
*) die "usage: bench.sh [go|lab|all]" ;;
esac
