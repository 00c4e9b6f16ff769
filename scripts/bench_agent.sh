#!/usr/bin/env bash
# bench_agent.sh: the agent's own CPU cost, idle, measured from outside as
# issue 14 did: 1000 fixed backends and 100 DNS names (TTL 5 s, answers
# never changing) in 10 pools with one L4 service each, no traffic. The
# agent runs in the lab's lb namespace on the real data path; its CPU time
# (utime + stime from /proc) is read after a warm-up and again SECONDS
# later, and printed as a share of one core, with its RSS.
#
#   scripts/bench_agent.sh [SECONDS] [SLUICE_BINARY]   (default 30, bin/sluice)
#
# Every address is in the lab's ranges (198.18.0.0/15); nothing is sent.
set -Eeuo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
seconds=${1:-30}
sluice=${2:-$repo_root/bin/sluice}
lab=scripts/lab.sh
go_bin=$(command -v go || echo /usr/local/go/bin/go)

[[ $(id -u) -eq 0 ]] || { echo "bench_agent: needs root (network namespaces, XDP)" >&2; exit 1; }
[[ -x $sluice ]] || { echo "bench_agent: build first (make build)" >&2; exit 1; }
"$go_bin" build -o bin/sluice-dnsserver ./e2e/dnsserver

# shellcheck source=scripts/lab_lib.sh
source "$repo_root/scripts/lab_lib.sh"
id=$("$lab" up 2>/dev/null | tail -1)
state=$repo_root/.lab/$id
pin=/sys/fs/bpf/sluice-benchagent-$id
agent_pid=
cleanup() {
	set +e
	[[ -n $agent_pid ]] && stop_pid "$agent_pid"
	"$sluice" teardown --force --pin-path "$pin" >/dev/null 2>&1
	"$lab" down "$id" >/dev/null 2>&1
}
trap cleanup EXIT

zone=$state/benchagent.zone
: >"$zone"
for p in $(seq 0 9); do
	for i in $(seq 0 9); do
		printf 'n%d-%d.lab. 5 A 198.18.2.%d\n' "$p" "$i" $((11 + (p * 10 + i) % 3)) >>"$zone"
	done
done
# The zone's negative TTL (SOA minimum) is 60 s, short for a real zone
# (300-3600 s is common): the names are IPv4-only, so their AAAA queries
# answer NODATA, which the agent caches that long (docs/dns.md).
LAB_DNS_NEG_TTL=60 "$lab" dns "$id" "$zone" >/dev/null 2>&1

config=$state/benchagent.yaml
{
	printf 'interfaces: [eth0, eth1]\nadmin: {socket: %s}\nmetrics: {listen: off}\n' "$(admin_socket)"
	printf 'datapath: {pin_path: %s}\ndns: {servers: [198.18.2.53:53], min_ttl: 1s}\npools:\n' "$pin"
	for p in $(seq 0 9); do
		printf '  - name: pool%d\n    backends:\n' "$p"
		for i in $(seq 0 99); do
			# 100 fixed backends per pool: be1..be3 on distinct ports.
			printf '      - address: 198.18.2.%d:%d\n' $((11 + i % 3)) $((10000 + p * 100 + i))
		done
		for i in $(seq 0 9); do
			printf '      - name: n%d-%d.lab\n        port: %d\n' "$p" "$i" $((20000 + p * 10 + i))
		done
	done
	printf 'services:\n'
	for p in $(seq 0 9); do
		printf '  - name: svc%d\n    listen: 198.18.1.%d:80\n    protocol: tcp\n    pool: pool%d\n' "$p" $((1 + p)) "$p"
	done
} >"$config"
"$sluice" check -c "$config" >/dev/null

"$lab" exec "$id" lb "$sluice" agent -c "$config" --log-level warn 2>"$state/benchagent.log" &
agent_pid=$!
for _ in $(seq 1 100); do
	"$sluice" status --socket "$(admin_socket)" >/dev/null 2>&1 && break
	sleep 0.1
done
sleep 10 # warm-up: every name answered, every table written

ticks() { awk '{ print $14 + $15 }' "/proc/$agent_pid/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks)
s0=$(date +%s%N)
sleep "$seconds"
t1=$(ticks)
s1=$(date +%s%N)
rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$agent_pid/status")
awk -v t=$((t1 - t0)) -v hz="$hz" -v ns=$((s1 - s0)) -v rss="$rss" -v bin="$sluice" 'BEGIN {
	printf "%s: %.2f %% of a core over %.0f s idle (1000 fixed + 100 DNS backends), RSS %.1f MiB\n",
		bin, 100 * (t / hz) / (ns / 1e9), ns / 1e9, rss / 1024
}'
