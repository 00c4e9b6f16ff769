#!/usr/bin/env bash
# prof_l7.sh: one proxy alone in a fresh lab behind wrk, for profiling the
# L7 stage (docs/benchmarks.md, issue 11 steps 16-17, were made with it).
# Where bench_l7.sh compares three proxies in one run, this looks inside
# one: the agent (or nginx) under wrk -t2 -c32 for PROF_DUR seconds (8)
# after a 3 s warm-up, and one of
#
#   cpu      requests/s, the proxy's CPU (user + system, and user alone;
#            /proc), the packets through the lb's interfaces, the whole
#            machine's busy CPU and the three backends' CPU per request
#   stat     perf stat: system calls and context switches of the proxy
#   record   perf record -g of the proxy into FILE (perf report/script it)
#   series   one line per 4 s of a PROF_DUR run (say 42): requests/s (from
#            the lb's packets), CPU per request of the proxy (user), the
#            backends and the whole machine, and the machine's context
#            switches and rescheduling IPIs per request — to see how a
#            run's speed moves within it (docs/benchmarks.md, 2026-12-05)
#
#   scripts/prof_l7.sh [sluice|nginx] [keep-alive|new-conn] [cpu|stat|record FILE|series]
#
# PROF_BIN runs another sluice binary than bin/sluice; PROF_ENV adds
# variables to the agent's environment (e.g. PROF_ENV="GODEBUG=gctrace=1
# GOGC=100"); PROF_AGENT_OUT sends the agent's output (its access log
# too) there instead of a file in the lab's state directory (e.g.
# /dev/null, or a file on tmpfs); PROF_EVENT records another event (e.g. sched:sched_switch);
# PROF_LOG keeps the agent's log there; PROF_SERVICE adds keys to the
# service's YAML flow mapping (e.g. PROF_SERVICE='access_log: "off"').
# sluice's agent runs with nginx too, its XDP program on the lb's
# interfaces, as in bench_l7.sh. The lab
# is scripts/lab.sh's (its own namespaces, 198.18.0.0/15); everything it
# starts is stopped by PID and the lab removed on exit. Alternate two
# configurations back to back for an A/B: on a shared machine one run
# alone says little.
set -Eeuo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
target=${1:-sluice}
load=${2:-keep-alive}
mode=${3:-cpu}
out=${4:-perf.data}
dur=${PROF_DUR:-8}
lab=scripts/lab.sh
sluice=${PROF_BIN:-$repo_root/bin/sluice}

usage() { sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
[[ $target == sluice || $target == nginx ]] || usage
[[ $load == keep-alive || $load == new-conn ]] || usage
[[ $mode == cpu || $mode == stat || $mode == record || $mode == series ]] || usage
[[ $(id -u) -eq 0 ]] || { echo "prof_l7: needs root (network namespaces)" >&2; exit 1; }
for c in wrk jq perf; do
	[[ $mode != cpu || $c != perf ]] || continue
	command -v "$c" >/dev/null || { echo "prof_l7: $c missing" >&2; exit 1; }
done
[[ $target != nginx ]] || command -v nginx >/dev/null || { echo "prof_l7: nginx missing (scripts/deps.sh --bench)" >&2; exit 1; }
[[ -x $sluice ]] || { echo "prof_l7: $sluice missing (make build)" >&2; exit 1; }

id=$("$lab" up | tail -1)
pin=/sys/fs/bpf/sluice-prof-$id
state=$repo_root/.lab/$id
pids=()
cleanup() {
	[[ -z ${PROF_LOG:-} ]] || cp "$state/agent.log" "$PROF_LOG" 2>/dev/null || true
	local p
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	"$sluice" teardown --pin-path "$pin" >/dev/null 2>&1 || true
	"$lab" down "$id" >/dev/null 2>&1 || true
}
trap cleanup EXIT
"$lab" backends "$id" >/dev/null

# The agent runs in both cases, its XDP program on lb's eth0 and eth1 (as
# in bench_l7.sh, where the three proxies share it): native XDP on a veth
# costs every packet it receives a copy, in the sender's context, so an
# nginx measured without it looks ~15 us a request cheaper to its
# backends and wrk than the same nginx behind sluice's XDP (session 23).
# shellcheck source=scripts/bench_lib.sh
source scripts/bench_lib.sh
sluice_l7_conf "$state/prof.yaml" "$state" "$pin" "${PROF_SERVICE:-}"
"$lab" exec "$id" lb ip addr add 198.18.1.101/32 dev lo
read -ra penv <<<"${PROF_ENV:-}"
"$lab" exec "$id" lb env "${penv[@]}" "$sluice" agent -c "$state/prof.yaml" >"${PROF_AGENT_OUT:-$state/agent.log}" 2>&1 &
pids+=($!)
if [[ $target == nginx ]]; then
	"$lab" exec "$id" lb ip addr add 198.18.1.110/32 dev lo
	nginx_proxy_conf "$state/nginx.conf" "$state"
	"$lab" exec "$id" lb nginx -c "$state/nginx.conf" -g 'daemon off;' >"$state/nginx.log" 2>&1 &
	pids+=($!)
	url=http://198.18.1.110/
else
	url=http://198.18.1.101/
fi
for u in http://198.18.1.101/ "$url"; do # the agent (its XDP attached), then the target
	for _ in $(seq 100); do
		"$lab" exec "$id" client curl -sf -o /dev/null --max-time 1 "$u" && break
		sleep 0.1
	done
done
# The processes to measure: the agent, or nginx's workers (children of
# the master this run started, found by its config path).
if [[ $target == nginx ]]; then
	master=$(pgrep -f "nginx -c $state/nginx.conf" | head -1)
	procs=$(pgrep -P "$master" | paste -sd,)
else
	procs=$(pgrep -f "agent -c $state/prof.yaml" | tail -1)
fi
[[ -n $procs ]] || { echo "prof_l7: the proxy did not start" >&2; exit 1; }

extra=()
[[ $load == new-conn ]] && extra=(-H "Connection: close")
wrk=("$lab" exec "$id" client wrk -t2 -c32 "${extra[@]}")
"${wrk[@]}" -d3s "$url" >/dev/null
# cpu_ticks [user]: the processes' CPU ticks, user and system (or user
# alone).
cpu_ticks() {
	local t=0 p f='$14 + $15'
	[[ ${1:-} != user ]] || f='$14'
	for p in ${procs//,/ }; do
		t=$((t + $(awk "{print $f}" "/proc/$p/stat")))
	done
	echo "$t"
}
# packets the lb's interfaces received and sent, both sides: each one
# costs a pass through a TCP stack, and on veth the sender pays for it.
lb_packets() {
	"$lab" exec "$id" lb ip -j -s link show | jq '[.[] | select(.ifname == "eth0" or .ifname == "eth1") | .stats64.rx.packets + .stats64.tx.packets] | add'
}
# busy_ticks: the whole machine's busy CPU ticks (every process: wrk,
# the backends, softirqs), from /proc/stat.
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# backend_ticks: the three backends' CPU ticks (a slower proxy finds them
# asleep more often, and each wake-up costs them).
backend_ticks() {
	local t=0 f
	for f in "$state"/be[123].pid; do
		t=$((t + $(awk '{print $14 + $15}' "/proc/$(<"$f")/stat")))
	done
	echo "$t"
}
case $mode in
series)
	"${wrk[@]}" -d"${dur}s" "$url" >/dev/null &
	wrk_pid=$!
	hz=$(getconf CLK_TCK)
	# ctxt_irq: the machine's context switches and rescheduling IPIs.
	ctxt_irq() {
		awk '/^ctxt/ {c = $2} END {print c}' /proc/stat
		awk '/RES:/ {s = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i; print s}' /proc/interrupts
	}
	for _ in $(seq $(((dur - 2) / 4))); do
		b0=$(busy_ticks) k0=$(backend_ticks) t0=$(cpu_ticks) u0=$(cpu_ticks user) p0=$(lb_packets)
		mapfile -t x0 < <(ctxt_irq)
		sleep 4
		b1=$(busy_ticks) k1=$(backend_ticks) t1=$(cpu_ticks) u1=$(cpu_ticks user) p1=$(lb_packets)
		mapfile -t x1 < <(ctxt_irq)
		awk -v p=$((p1 - p0)) -v t=$((t1 - t0)) -v u=$((u1 - u0)) -v k=$((k1 - k0)) -v b=$((b1 - b0)) \
			-v c=$((x1[0] - x0[0])) -v i=$((x1[1] - x0[1])) -v hz="$hz" 'BEGIN {
				n = p / 4; us = 1e6 / hz / n
				printf "%6.0f req/s  proxy %5.1f us (user %4.1f)  backends %5.1f  machine %6.1f  | per request: context switches %.2f, resched IPIs %.3f\n",
					n / 4, t * us, u * us, k * us, b * us, c / n, i / n
			}'
	done
	wait "$wrk_pid"
	;;
cpu)
	b0=$(busy_ticks)
	k0=$(backend_ticks)
	t0=$(cpu_ticks)
	u0=$(cpu_ticks user)
	p0=$(lb_packets)
	rps=$("${wrk[@]}" -d"${dur}s" "$url" | awk '/^Requests\/sec:/ {print $2}')
	t1=$(cpu_ticks)
	u1=$(cpu_ticks user)
	p1=$(lb_packets)
	b1=$(busy_ticks)
	k1=$(backend_ticks)
	awk -v r="$rps" -v k=$((k1 - k0)) -v t=$((t1 - t0)) -v u=$((u1 - u0)) -v p=$((p1 - p0)) -v b=$((b1 - b0)) -v d="$dur" -v hz="$(getconf CLK_TCK)" -v w="$target $load" \
		'BEGIN {printf "%s: %.0f req/s, %.1f us of CPU per request (user %.1f), %.2f packets through the lb per request; the whole machine %.1f us per request (backends %.1f)\n", w, r, t / hz * 1e6 / (r * d), u / hz * 1e6 / (r * d), p / (r * d), b / hz * 1e6 / (r * d), k / hz * 1e6 / (r * d)}'
	;;
stat | record)
	"${wrk[@]}" -d"${dur}s" "$url" >"$state/wrk.txt" &
	w=$!
	sleep 1
	if [[ $mode == stat ]]; then
		perf stat -e 'syscalls:sys_enter_*,context-switches,cpu-migrations' -p "$procs" -- sleep $((dur - 2)) 2>&1 |
			awk '$1+0 > 0' | sort -k1 -n -r | head -30
	else
		perf record ${PROF_EVENT:+-e "$PROF_EVENT"} -F 1999 -g -o "$out" -p "$procs" -- sleep $((dur - 2)) >/dev/null 2>&1
		echo "prof_l7: $out (perf report -i $out --no-children)"
	fi
	wait "$w"
	grep Requests "$state/wrk.txt"
	;;
esac
