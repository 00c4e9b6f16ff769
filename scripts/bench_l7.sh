#!/usr/bin/env bash
# bench_l7.sh: requests/s and p50/p99 latency through the L7 stage, side by
# side in one lab run with nginx and HAProxy proxying to the same three
# backends, each tuned as an operator would: upstream keep-alive, 2 workers
# or threads (the lab machine has 2 CPUs).
#
#   sluice    protocol: http service on 198.18.1.101:80 (Go, GOMAXPROCS = CPUs)
#   nginx     198.18.1.110:80, worker_processes 2, upstream keepalive 64
#   haproxy   198.18.1.120:80, nbthread 2, http-reuse always
#
# each with wrk, keep-alive and one new client connection per request
# (Connection: close; the proxies still pool their upstream connections).
# The three listen on addresses of the lb namespace only; every load loop is
# bounded by wrk's duration.
#
#   scripts/bench_l7.sh [DURATION_SECONDS]     (default 10; BENCH_ROUNDS=3)
#
# BENCH_SLUICE_ENV adds environment variables to sluice's agent only, to
# try runtime settings (e.g. BENCH_SLUICE_ENV="GOGC=400 GOMAXPROCS=2").
# BENCH_SLUICE_BIN runs another sluice binary than bin/sluice (e.g. a build
# of main copied to /tmp/sluice-base), for an A/B of two builds, each in
# its own run with nginx and HAProxy.
# BENCH_EPOLL=1 adds a fourth path, "epoll" on 198.18.1.102:80: the
# experiment l7/proxy/testdata/epollproxy (a Go proxy on raw epoll, one
# locked thread per CPU, no features; see docs/benchmarks.md), built with
# the go command on PATH.
# BENCH_FASTHTTP=1 adds "fasthttp" on 198.18.1.103:80: the experiment
# l7/proxy/testdata/fhproxy (a plain reverse proxy on valyala/fasthttp
# with an access log; its own module, fetched through the Go module
# proxy), to measure that library's cost on this path.
set -Eeuo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
dur=${1:-10}
rounds=${BENCH_ROUNDS:-3}
conns=${BENCH_CONNS:-32}
threads=${BENCH_THREADS:-2}
lab=scripts/lab.sh
sluice=${BENCH_SLUICE_BIN:-$repo_root/bin/sluice}

[[ $(id -u) -eq 0 ]] || { echo "bench_l7: needs root (network namespaces)" >&2; exit 1; }
for c in wrk nginx haproxy; do
	command -v "$c" >/dev/null || { echo "bench_l7: $c missing (scripts/deps.sh --bench installs it)" >&2; exit 1; }
done
[[ -x $sluice ]] || { echo "bench_l7: build first (make build)" >&2; exit 1; }

id=$("$lab" up 2>/dev/null | tail -1)
pin=/sys/fs/bpf/sluice-benchl7-$id
state=$repo_root/.lab/$id
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	"$sluice" teardown --pin-path "$pin" >/dev/null 2>&1 || true
	"$lab" down "$id" >/dev/null 2>&1 || true
}
trap cleanup EXIT
"$lab" backends "$id" >/dev/null 2>&1
for a in 198.18.1.101 198.18.1.102 198.18.1.103 198.18.1.110 198.18.1.120; do
	"$lab" exec "$id" lb ip addr add "$a/32" dev lo
done

# shellcheck source=scripts/bench_lib.sh
source "$repo_root/scripts/bench_lib.sh"
declare -A port_range=([sluice]="10000 29999" [nginx]="30000 44999" [haproxy]="45000 60999")
paths=(sluice) # then the experiments asked for, then nginx and HAProxy
declare -A pid_of=() # the process of each proxy (nginx: its master; workers are its children)
if [[ ${BENCH_EPOLL:-} == 1 || ${BENCH_FASTHTTP:-} == 1 ]]; then
	port_range[sluice]="10000 15999"
fi
if [[ ${BENCH_EPOLL:-} == 1 ]]; then
	port_range[epoll]="16000 22999"
	paths+=(epoll)
	go build -o "$state/epollproxy" ./l7/proxy/testdata/epollproxy
	"$lab" exec "$id" lb "$state/epollproxy" -listen 198.18.1.102:80 -workers "$(nproc)" \
		-backends 198.18.2.11:80,198.18.2.12:80,198.18.2.13:80 >"$state/epollproxy.log" 2>&1 &
	pids+=($!)
	pid_of[epoll]=$!
fi
if [[ ${BENCH_FASTHTTP:-} == 1 ]]; then
	port_range[fasthttp]="23000 29999"
	paths+=(fasthttp)
	(cd l7/proxy/testdata/fhproxy && go build -o "$state/fhproxy" .)
	"$lab" exec "$id" lb "$state/fhproxy" -listen 198.18.1.103:80 -log "$state/fhproxy-access.log" \
		-backends 198.18.2.11:80,198.18.2.12:80,198.18.2.13:80 >"$state/fhproxy.log" 2>&1 &
	pids+=($!)
	pid_of[fasthttp]=$!
fi
paths+=(nginx haproxy)
declare -A url_of=([sluice]=http://198.18.1.101/ [epoll]=http://198.18.1.102/ [fasthttp]=http://198.18.1.103/ [nginx]=http://198.18.1.110/ [haproxy]=http://198.18.1.120/)

sluice_l7_conf "$state/benchl7.yaml" "$state" "$pin"
# The access log (one JSON line per request) goes to a file, as in production.
read -ra sluice_env <<<"${BENCH_SLUICE_ENV:-}"
"$lab" exec "$id" lb env "${sluice_env[@]}" "$sluice" agent -c "$state/benchl7.yaml" >"$state/benchl7-agent.log" 2>&1 &
pids+=($!)
pid_of[sluice]=$!

nginx_proxy_conf "$state/nginx.conf" "$state"
"$lab" exec "$id" lb nginx -c "$state/nginx.conf" -g 'daemon off;' >"$state/nginx.log" 2>&1 &
pids+=($!)
pid_of[nginx]=$!

cat >"$state/haproxy.cfg" <<-HAPROXY
	global
	    nbthread 2
	    log stderr format short local0 warning
	defaults
	    mode http
	    option http-keep-alive
	    timeout connect 2s
	    timeout client 30s
	    timeout server 30s
	frontend fe
	    bind 198.18.1.120:80
	    default_backend be
	backend be
	    balance roundrobin
	    http-reuse always
	    server s1 198.18.2.11:80
	    server s2 198.18.2.12:80
	    server s3 198.18.2.13:80
	HAPROXY
"$lab" exec "$id" lb haproxy -f "$state/haproxy.cfg" -db >"$state/haproxy.log" 2>&1 &
pids+=($!)
pid_of[haproxy]=$!

for p in "${paths[@]}"; do
	url=${url_of[$p]}
	for _ in $(seq 100); do
		"$lab" exec "$id" client curl -sf -o /dev/null --max-time 1 "$url" && break
		sleep 0.1
	done
done

# tree_ticks PID: the CPU time (clock ticks) used so far by PID and the
# processes below it.
tree_ticks() {
	local t c
	t=$(awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0)
	for c in $(pgrep -P "$1"); do
		t=$((t + $(tree_ticks "$c")))
	done
	echo "$t"
}

# Each wrk run also measures the CPU time the proxy used per request
# (its processes' user and system time over the run, divided by the
# requests wrk counted): less sensitive than requests/s to other work on
# the machine, which takes CPU from every process alike.
results=$state/bench_l7.tsv
cpu=$state/bench_l7_cpu.tsv
hz=$(getconf CLK_TCK)
: >"$results"
: >"$cpu"
# Each round starts with the next proxy (sluice, nginx, HAProxy; then
# nginx, HAProxy, sluice; …): none always runs first or last, where a
# drift of the machine's speed within a round would fall on it alone.
for round in $(seq "$rounds"); do
	order=("${paths[@]:$(((round - 1) % ${#paths[@]}))}" "${paths[@]:0:$(((round - 1) % ${#paths[@]}))}")
	for p in "${order[@]}"; do
		for load in keep-alive new-conn; do
			extra=()
			[[ $load == new-conn ]] && extra=(-H "Connection: close")
			t0=$(tree_ticks "${pid_of[$p]}")
			run_wrk "$p" "$load" "${url_of[$p]}" "${extra[@]}"
			t1=$(tree_ticks "${pid_of[$p]}")
			rps=$(tail -1 "$results" | cut -f3)
			awk -v p="$p" -v l="$load" -v t=$((t1 - t0)) -v hz="$hz" -v r="$rps" -v d="$dur" \
				'BEGIN { if (r > 0) printf "%s\t%s\t%.1f\n", p, l, t / hz * 1e6 / (r * d) }' >>"$cpu"
		done
	done
done
summary "${paths[@]}"
echo
echo "CPU time of the proxy per request (µs; median of $rounds, then every round):"
for p in "${paths[@]}"; do
	for load in keep-alive new-conn; do
		mapfile -t v < <(awk -v p="$p" -v l="$load" '$1 == p && $2 == l {print $3}' "$cpu")
		((${#v[@]})) && printf '  %-9s %-10s %6s   %s\n' "$p" "$load" "$(median "${v[@]}")" "${v[*]}"
	done
done
echo
# Issue 11's measure: sluice's median requests/s over the better peer's
# (nginx or HAProxy, whichever served more), and the p99s side by side.
echo "sluice against the better of nginx and HAProxy (median requests/s; p99):"
for load in keep-alive new-conn; do
	best="" best_rps=0 best_p99="" s_rps="" s_p99=""
	for p in sluice nginx haproxy; do
		mapfile -t r < <(awk -F'\t' -v p="$p" -v l="$load" '$1 == p && $2 == l {print $3}' "$results")
		mapfile -t q < <(awk -F'\t' -v p="$p" -v l="$load" '$1 == p && $2 == l {print $5}' "$results")
		((${#r[@]})) || continue
		m=$(median "${r[@]}")
		mapfile -t qm < <(for x in "${q[@]}"; do to_ms "$x"; done)
		mq=$(median "${qm[@]}")
		if [[ $p == sluice ]]; then
			s_rps=$m s_p99=$mq
		elif awk -v a="$m" -v b="$best_rps" 'BEGIN { exit !(a > b) }'; then
			best=$p best_rps=$m best_p99=$mq
		fi
	done
	[[ -n $s_rps && -n $best ]] || continue
	awk -v l="$load" -v s="$s_rps" -v b="$best_rps" -v n="$best" -v sq="$s_p99" -v bq="$best_p99" \
		'BEGIN { printf "  %-10s %.2fx %s (%.0f / %.0f req/s), p99 %.2fms / %.2fms\n", l, s / b, n, s, b, sq, bq }'
done
echo
echo "wrk -t$threads -c$conns -d${dur}s --latency, $rounds rounds; new-conn adds -H 'Connection: close'. Backends: e2e/backend (Go)."
echo "nginx $(nginx -v 2>&1 | sed 's/.*\///'), $(haproxy -v | head -1 | awk '{print "HAProxy", $3}'), $(nproc) CPUs, kernel $(uname -r)."
