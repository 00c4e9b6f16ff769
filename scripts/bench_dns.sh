#!/usr/bin/env bash
# bench_dns.sh: DNS convergence — the time from a DNS record change to 100%
# of new connections reaching the new address — for sluice, nginx and
# HAProxy side by side in one lab run, each configured to re-resolve the same
# name with its best documented settings:
#
#   sluice    pool backend `name: backend.lab`, TTL followed (min_ttl 1s)
#   nginx     `resolver 198.18.2.53 valid=2s` + a variable in proxy_pass, so
#             the name is looked up again once the cached answer is 2 s old
#             (open-source nginx 1.22 has no `server ... resolve`)
#   haproxy   `resolvers` section, `hold valid 2s`, `hold obsolete 0s`,
#             `timeout resolve 1s`, a server-template resolving backend.lab
#
# backend.lab has TTL 2 s and is switched between be1 and be2 SWITCHES times,
# every INTERVAL seconds. A client opens a new connection every 20 ms to each
# of the three, one loadgen each; the convergence of one switch is the time
# from the record change to the last response from the old backend.
# Everything runs in the lab's namespaces on 198.18.0.0/15; the loops are
# bounded by SWITCHES and the loadgens by --duration and --count.
#
#   scripts/bench_dns.sh [SWITCHES] [INTERVAL_SECONDS]     (default 10, 8)
set -Eeuo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
switches=${1:-10}
interval=${2:-8}
lab=scripts/lab.sh
sluice=$repo_root/bin/sluice
go_bin=$(command -v go || echo /usr/local/go/bin/go)

[[ $(id -u) -eq 0 ]] || { echo "bench_dns: needs root (network namespaces, XDP)" >&2; exit 1; }
for c in nginx haproxy; do
	command -v "$c" >/dev/null || { echo "bench_dns: $c missing (scripts/deps.sh --bench installs it)" >&2; exit 1; }
done
[[ -x $sluice ]] || { echo "bench_dns: build first (make build)" >&2; exit 1; }
"$go_bin" build -o bin/sluice-loadgen ./e2e/loadgen
"$go_bin" build -o bin/sluice-dnsserver ./e2e/dnsserver

id=$("$lab" up 2>/dev/null | tail -1)
state=$repo_root/.lab/$id
pin=/sys/fs/bpf/sluice-benchdns-$id
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	[[ -f $state/nginx.pid ]] && kill "$(<"$state/nginx.pid")" 2>/dev/null || true
	"$sluice" teardown --pin-path "$pin" >/dev/null 2>&1 || true
	"$lab" down "$id" >/dev/null 2>&1 || true
}
trap cleanup EXIT
"$lab" backends "$id" >/dev/null 2>&1
# shellcheck source=scripts/bench_lib.sh
source "$repo_root/scripts/bench_lib.sh"

records=$state/bench.zone
printf 'backend.lab. 2 A 198.18.2.11\n' >"$records"
"$lab" dns "$id" "$records" >/dev/null 2>&1

# sluice
cat >"$state/benchdns.yaml" <<-YAML
	interfaces: [eth0, eth1]
	admin: {socket: $state/benchdns.sock}
	metrics: {listen: "off"}
	datapath: {pin_path: $pin}
	dns: {servers: [198.18.2.53], min_ttl: 1s}
	pools:
	  - name: web
	    backends:
	      - {name: backend.lab, port: 80}
	    drain_timeout: 30s
	services:
	  - {name: web-l4, listen: 198.18.1.100:80, protocol: tcp, pool: web}
	YAML
"$lab" exec "$id" lb "$sluice" agent -c "$state/benchdns.yaml" >"$state/benchdns-agent.log" 2>&1 &
pids+=($!)

# nginx and haproxy listen on lb-local addresses (in the lb namespace only).
"$lab" exec "$id" lb ip addr add 198.18.1.110/32 dev lo
"$lab" exec "$id" lb ip addr add 198.18.1.120/32 dev lo
nginx_conf "$state/nginx.conf" "$state" <<-NGINX
	    resolver 198.18.2.53 valid=2s ipv6=off;
	    resolver_timeout 1s;
	    server {
	        listen 198.18.1.110:80;
	        location / {
	            set \$upstream backend.lab;
	            proxy_pass http://\$upstream:80;
	            proxy_http_version 1.1;
	            proxy_set_header Connection "";
	        }
	    }
	NGINX
"$lab" exec "$id" lb nginx -c "$state/nginx.conf" -g 'daemon off;' >"$state/nginx.log" 2>&1 &
pids+=($!)

cat >"$state/haproxy.cfg" <<-HAPROXY
	global
	    log stderr format short local0 warning
	defaults
	    mode http
	    timeout connect 1s
	    timeout client 5s
	    timeout server 5s
	resolvers lab
	    nameserver dns1 198.18.2.53:53
	    accepted_payload_size 1232
	    resolve_retries 3
	    timeout resolve 1s
	    timeout retry 1s
	    hold valid 2s
	    hold other 2s
	    hold refused 2s
	    hold nx 2s
	    hold timeout 2s
	    hold obsolete 0s
	frontend fe
	    bind 198.18.1.120:80
	    default_backend be
	backend be
	    server-template s 4 backend.lab:80 resolvers lab resolve-prefer ipv4 init-addr none
	HAPROXY
"$lab" exec "$id" lb haproxy -f "$state/haproxy.cfg" -db >"$state/haproxy.log" 2>&1 &
pids+=($!)

wait_http() {
	local url=$1 i
	for i in $(seq 100); do
		"$lab" exec "$id" client curl -sf -o /dev/null --max-time 1 "$url" && return 0
		sleep 0.1
	done
	echo "bench_dns: $url never answered" >&2
	exit 1
}
wait_http http://198.18.1.100/
wait_http http://198.18.1.110/
wait_http http://198.18.1.120/

total=$((switches * interval + interval))
declare -A target=([sluice]=http://198.18.1.100/ [nginx]=http://198.18.1.110/ [haproxy]=http://198.18.1.120/)
for name in sluice nginx haproxy; do
	"$lab" exec "$id" client "$repo_root/bin/sluice-loadgen" --mode newconn --conns 1 --interval 20ms \
		--timeout 2s --count 1000000 --duration "${total}s" --events --url "${target[$name]}" \
		>"$state/$name.report" 2>"$state/$name.events" &
	pids+=($!)
done

sleep "$interval"
: >"$state/switches"
cur=198.18.2.11
for i in $(seq "$switches"); do
	if [[ $cur == 198.18.2.11 ]]; then cur=198.18.2.12; else cur=198.18.2.11; fi
	# Written to a temporary file and renamed: the server never reads half a file.
	printf 'backend.lab. 2 A %s\n' "$cur" >"$records.tmp"
	mv "$records.tmp" "$records"
	printf '%s %s\n' "$(date +%s%3N)" "$([[ $cur == 198.18.2.11 ]] && echo be1 || echo be2)" >>"$state/switches"
	echo "bench_dns: switch $i -> $cur" >&2
	sleep "$interval"
done
for p in "${pids[@]:3}"; do wait "$p" 2>/dev/null || true; done

# convergence NAME: per switch, ms from the change to the last response of
# another backend before the next change; then p50 and max, and failures.
convergence() {
	awk -v sw="$state/switches" '
		BEGIN { n = 0; while ((getline line < sw) > 0) { split(line, f, " "); n++; T[n] = f[1]; B[n] = f[2] } }
		/"event":"response"/ {
			t = $0; sub(/.*"t":/, "", t); sub(/,.*/, "", t); t += 0
			b = $0; sub(/.*"backend":"/, "", b); sub(/".*/, "", b)
			for (i = n; i >= 1; i--) if (t >= T[i]) break
			if (i >= 1 && b != B[i] && t - T[i] > last[i]) last[i] = t - T[i]
		}
		/"event":"error"/ {
			t = $0; sub(/.*"t":/, "", t); sub(/,.*/, "", t); t += 0
			errs++
		}
		END {
			for (i = 1; i <= n; i++) { v[i] = last[i] + 0 }
			# insertion sort, n is small
			for (i = 2; i <= n; i++) { x = v[i]; j = i - 1; while (j >= 1 && v[j] > x) { v[j+1] = v[j]; j-- } v[j+1] = x }
			all = ""; for (i = 1; i <= n; i++) all = all sprintf("%d ", last[i] + 0)
			printf "%d %d %d %s\n", v[int((n + 1) / 2)], v[n], errs + 0, all
		}' "$state/$1.events"
}

echo "| proxy   | p50 convergence | max convergence | failed requests | per switch (ms) |"
echo "|---------|----------------:|----------------:|----------------:|-----------------|"
for name in sluice nginx haproxy; do
	read -r p50 max errs all < <(convergence "$name")
	printf '| %-7s | %12s ms | %12s ms | %15s | %s|\n' "$name" "$p50" "$max" "$errs" "$all"
done
echo
echo "backend.lab TTL 2s, $switches switches every ${interval}s, one new connection per 20 ms per proxy (e2e/loadgen --mode newconn)."
echo "nginx $(nginx -v 2>&1 | sed 's/.*\///'), $(haproxy -v | head -1 | awk '{print "HAProxy", $3}'), $(nproc) CPUs, kernel $(uname -r)."
