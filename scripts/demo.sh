#!/usr/bin/env bash
# demo.sh: sluice end to end in the netns lab (run by `sudo make demo`).
#
#   1. lab up (client, lb, switch, be1..be3, dns), test backends on :80
#   2. sluice agent in the lb namespace, service web-l4 at 198.18.1.100:80
#   3. requests from the client to the VIP, counted per backend
#   4. `sluice status` and `sluice conntrack`
#   5. drain be1: new traffic avoids it
#   6. a DNS-named pool (api, backend.lab at the lab DNS server): the name
#      moves from be1+be2 to be3 and new connections follow within a TTL,
#      no restart, no reload (the first field report)
#   7. an HTTP service (the L7 stage) on pool web: be3 starts answering 503;
#      clients see no error (GETs retried elsewhere), be3 is ejected, and
#      comes back once healthy (the second field report)
#
# Everything (namespaces, agent, pins) is removed on exit. Needs root and
# bin/sluice + bin/sluice-testbackend (make build testbins).
set -Eeuo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

lab=scripts/lab.sh
sluice=$repo_root/bin/sluice
vip=198.18.1.100
api_vip=198.18.1.101
http_vip=198.18.1.102
requests=${DEMO_REQUESTS:-30}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
log() { printf 'demo: %s\n' "$*" >&2; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "needs root (sudo make demo)"
[[ -x $sluice ]] || die "$sluice missing: make build"

id=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
state=$repo_root/.lab/$id
pin=/sys/fs/bpf/sluice-$id
config=""
agent_pid=""

cleanup() {
	local rc=$?
	set +e
	if [[ -n $agent_pid ]] && kill -0 "$agent_pid" 2>/dev/null; then
		kill -TERM "$agent_pid"
		for _ in $(seq 50); do
			kill -0 "$agent_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$agent_pid" 2>/dev/null
		rm -f "$state/agent.pid"
	fi
	if [[ -e $pin ]]; then
		"$lab" exec "$id" lb "$sluice" teardown -c "$config" --pin-path "$pin" >&2 ||
			log "sluice teardown failed; lab.sh down removes the pins"
	fi
	"$lab" down "$id" >/dev/null 2>&1 || log "lab.sh down $id failed"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# on HOST CMD...: run CMD in lab host HOST.
on() { "$lab" exec "$id" "$@"; }

# shellcheck source=scripts/lab_lib.sh
source "$repo_root/scripts/lab_lib.sh"

# write_config FILE: the demo's config (lab_config): pool web of be1..be3
# (fixed addresses) behind services web-l4 and web-http, pool api (the
# DNS name backend.lab) behind service api-l4.
write_config() {
	local cfg_title="sluice demo config"
	lab_config "$1"
}

# set_records A...: backend.lab answers these addresses (TTL 2s); written by
# rename, the lab DNS server picks the file up within 100ms.
set_records() {
	local a
	for a in "$@"; do
		printf 'backend.lab. 2 A %s\n' "$a"
	done >"$state/records.zone.tmp"
	mv "$state/records.zone.tmp" "$state/records.zone"
}

start_agent() {
	"$lab" exec "$id" lb "$sluice" agent -c "$config" >"$state/agent.log" 2>&1 </dev/null &
	agent_pid=$!
	printf '%s\n' "$agent_pid" >"$state/agent.pid"
	local i
	for ((i = 0; i < 100; i++)); do
		if "$sluice" status --json -c "$config" >/dev/null 2>&1; then
			log "agent ready (pid $agent_pid, log $state/agent.log)"
			return 0
		fi
		kill -0 "$agent_pid" 2>/dev/null || break
		sleep 0.1
	done
	cat "$state/agent.log" >&2 || true
	die "agent did not become ready"
}

# traffic N [VIP]: N requests, each on a new connection, from the client to
# VIP (default web-l4's); prints how many each backend answered.
traffic() {
	local n=$1 to=${2:-$vip} i out
	for ((i = 0; i < n; i++)); do
		if ! out=$(on client curl -s --max-time 2 "http://$to/"); then
			out="(failed)"
		fi
		printf '%s\n' "$out"
	done | sort | uniq -c | awk '{ printf "  %-10s %s\n", $2, $1 }'
}

# dns_change: pool api follows backend.lab as its answer changes.
dns_change() {
	say "pool api is the DNS name backend.lab (now: $BE1, $BE2); $requests requests to $api_vip:80"
	traffic "$requests" "$api_vip"
	"$sluice" backends -c "$config" api

	say "backend.lab moves to $BE3 (TTL 2s): no restart, no reload"
	set_records "$BE3"
	local i
	for ((i = 0; i < 50; i++)); do
		if "$sluice" backends --json -c "$config" api | grep -q "\"$BE3:80\""; then
			break
		fi
		sleep 0.2
	done
	"$sluice" backends -c "$config" api
	say "$requests requests to $api_vip:80: new connections follow the name"
	traffic "$requests" "$api_vip"
}

say "lab $id up"
LAB_OWNER_PID=$$ "$lab" up "$id" >/dev/null
# shellcheck disable=SC1090
source "$repo_root/.lab/$id.env"
"$lab" backends "$id"
set_records "$BE1" "$BE2"
"$lab" dns "$id" "$state/records.zone"
# An L7 service binds its address: it must be local to the lb (L4 VIPs are not).
on lb ip addr add "$http_vip/32" dev lo
printf '  client %s | lb %s / %s | be1..be3 %s %s %s | dns %s | VIPs %s %s %s\n' \
	"$CLIENT" "$LB_CLIENT_IP" "$LB_BACKEND_IP" "$BE1" "$BE2" "$BE3" "$DNS" "$vip" "$api_vip" "$http_vip"

say "config"
config=$state/sluice.yaml
write_config "$config"
cat "$config"
"$sluice" check -c "$config"

say "sluice agent in $NS_LB"
start_agent

say "$requests requests from the client to $vip:80 (new connection each)"
traffic "$requests"

say "sluice status"
"$sluice" status -c "$config"

say "sluice conntrack (first 12 flows)"
# sed reads everything: head would close the pipe early (SIGPIPE under pipefail)
"$sluice" conntrack -c "$config" | sed -n '1,13p'


say "drain be1 ($BE1:80): new connections avoid it"
"$sluice" drain -c "$config" web "$BE1:80"
traffic "$requests"
"$sluice" status -c "$config"

# l7_failover: field report 2 through the HTTP service.
l7_failover() {
	"$sluice" undrain -c "$config" web "$BE1:80" >/dev/null
	say "HTTP service web-http at $http_vip:80 (L7, pool web): be3 starts answering 503"
	on be3 curl -sf --max-time 2 "http://127.0.0.1/control/fail?status=503"
	say "$requests GETs to $http_vip: who answered the client, with which status"
	local i out
	for ((i = 0; i < requests; i++)); do
		if ! out=$(on client curl -s --max-time 5 -w ' %{http_code}' "http://$http_vip/"); then
			out="(failed) -"
		fi
		printf '%s\n' "${out//$'\n'/}"
	done | sort | uniq -c | awk '{ printf "  %-10s status %s: %s\n", $2, $3, $1 }'
	"$sluice" backends -c "$config" web

	say "be3 healthy again: after its ejection time one trial request brings it back"
	on be3 curl -sf --max-time 2 "http://127.0.0.1/control/fail?status=0"
	sleep 4
	for ((i = 0; i < requests; i++)); do
		on client curl -s --max-time 5 "http://$http_vip/" || printf '(failed)\n'
	done | sort | uniq -c | awk '{ printf "  %-10s %s\n", $2, $1 }'
	"$sluice" backends -c "$config" web
}

dns_change
l7_failover

say "done: tearing down (agent, pins $pin, lab $id)"
