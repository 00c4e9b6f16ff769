#!/usr/bin/env bash
# demo_cluster.sh: sluice on three nodes behind an ECMP router (run by
# `sudo make demo-cluster`; see docs/scale-out.md).
#
#   1. the cluster lab (lab.sh up-cluster): a router running BIRD 2 (ECMP,
#      L4 hash, BFD), nodes n1..n3, backends be1..be3 with `sluice decap`
#   2. on each node BIRD (config from `sluice node bird-config`) and
#      `sluice agent`, service web-l4 at 198.18.1.100:80 in mode dsr; the
#      router learns one next hop per node
#   3. long-lived connections from the client: spread over the nodes
#   4. one node dies (its link goes down): the router drops it at once,
#      its connections go on through the others to the same backends
#   5. `sluice node drain` on another node: withdrawn, then drained
#
# Everything (namespaces, agents, BIRD, pins) is removed on exit. Needs
# root and bin/sluice, bin/sluice-testbackend, bin/sluice-loadgen (make
# build testbins) and BIRD (scripts/deps.sh).
set -Eeuo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

lab=scripts/lab.sh
sluice=$repo_root/bin/sluice
loadgen=$repo_root/bin/sluice-loadgen
lab_dir=$repo_root/.lab
conns=${DEMO_CONNS:-24}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
log() { printf 'demo: %s\n' "$*" >&2; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "needs root (sudo make demo-cluster)"
for b in "$sluice" "$loadgen" "$repo_root/bin/sluice-testbackend"; do
	[[ -x $b ]] || die "$b missing: make build testbins"
done
command -v bird >/dev/null || die "bird missing: scripts/deps.sh installs bird2"

id=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
state=$lab_dir/$id
load_pid=""

cleanup() {
	local rc=$?
	set +e
	[[ -n $load_pid ]] && kill -TERM "$load_pid" 2>/dev/null
	# lab.sh down stops the agents and BIRD (PID files), removes the pins
	"$lab" down "$id" >/dev/null 2>&1 || log "lab.sh down $id failed"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/lab_lib.sh
source "$repo_root/scripts/lab_lib.sh"
# shellcheck source=scripts/cluster_lib.sh
source "$repo_root/scripts/cluster_lib.sh"

on() { "$lab" exec "$id" "$@"; }
hops() { on router ip -4 route show 198.18.1.100/32 | awk '/via/ { for (i = 1; i < NF; i++) if ($i == "via") printf "%s ", $(i + 1) } END { print "" }'; }
node_flows() {
	local i out=""
	for i in 1 2 3; do
		out+="n$i: $(on "n$i" "$sluice" status --json --socket "$(node_socket "$i")" 2>/dev/null |
			jq '[.services[] | select(.name == "web-l4") | .active_flows] | add // 0')  "
	done
	printf '%s\n' "$out"
}

say "cluster lab: router (BIRD, ECMP) + three sluice nodes + three backends"
"$lab" up-cluster "$id" 3 >/dev/null
"$lab" backends "$id" >/dev/null
backends_decap
log "sluice decap attached on be1..be3 (VIP 198.18.1.100 on lo)"

for i in 1 2 3; do
	node_config "$state/n$i.yaml" "$i" dsr
	"$sluice" node bird-config -c "$state/n$i.yaml" >"$state/bird-n$i.conf"
	"$lab" bird "$id" "n$i" "$state/bird-n$i.conf" 2>/dev/null
	nsenter --net="/run/netns/sl-$id-n$i" -- "$sluice" agent -c "$state/n$i.yaml" >"$state/agent-n$i.log" 2>&1 </dev/null &
	printf '%s\n' "$!" >"$state/agent-n$i.pid"
done
for _ in $(seq 150); do
	[[ $(hops | wc -w) -eq 3 ]] && break
	sleep 0.1
done
say "the router's route for the VIP: one next hop per node"
on router ip route show 198.18.1.100/32
on n1 "$sluice" status --socket "$(node_socket 1)" | sed -n '1,5p'

say "$conns long-lived connections from the client (a request every 20 ms each)"
on client "$loadgen" --mode keepalive --conns "$conns" --interval 20ms --count 1000000 --duration 12s \
	>"$state/load.json" 2>/dev/null &
load_pid=$!
sleep 2
echo "flows per node: $(node_flows)"

say "n2 dies (its link to the router goes down)"
on n2 ip link set eth0 down
sleep 0.5
echo "router next hops now: $(hops)"
sleep 2
echo "flows per node: $(node_flows)(n2's moved: same backends, through n1 and n3)"

say "sluice node drain on n3: withdrawn first, then drained once quiet"
on n3 "$sluice" node drain --quiet 1s --timeout 20s --socket "$(node_socket 3)"
echo "router next hops now: $(hops)"

wait "$load_pid" || true
load_pid=""
say "the long-lived connections, over the whole run"
jq -c '{requests, ok, failures, dials, by_backend}' "$state/load.json"
failures=$(jq .failures "$state/load.json")
dials=$(jq .dials "$state/load.json")
if [[ $failures == 0 && $dials == "$conns" ]]; then
	echo "no request failed, no connection was reset ($dials dials for $conns connections)"
else
	die "$failures failed requests, $dials dials for $conns connections"
fi
