#!/usr/bin/env bash
# lab.sh: the sluice netns lab (see docs/lab.md).
#
#   scripts/lab.sh up [ID]        build the lab, print its ID, write .lab/ID.env
#   scripts/lab.sh up-cluster [ID] [N]
#                                 the multi-node lab instead: a router (BIRD,
#                                 ECMP) and N sluice nodes (default 3; see
#                                 scripts/lab_cluster.sh)
#   scripts/lab.sh bird ID HOST CONF
#                                 start BIRD 2 in HOST with CONF
#   scripts/lab.sh down ID        remove every namespace of ID, kill what it started
#   scripts/lab.sh backends ID    start the test backend in be1..be3 (HTTP :80, UDP :5353)
#   scripts/lab.sh env ID         print the env file of ID
#   scripts/lab.sh dns ID FILE    start the lab DNS server (e2e/dnsserver) in dns,
#                                 198.18.2.53:53, answering from records FILE
#   scripts/lab.sh gc             take down labs whose owner process is gone
#   scripts/lab.sh exec ID HOST CMD...
#                                 run CMD in host HOST (client, lb, be1, ...)
#
# Run sluice (agent, teardown, bpftool) in the lb namespace with `lab.sh exec`
# or `nsenter --net=/run/netns/sl-ID-lb`, not `ip netns exec`: the latter
# remounts /sys, which hides the host's bpffs at /sys/fs/bpf, so pins would
# land in a private bpffs that vanishes with the process.
#
# Every host is its own network namespace, named sl-ID-<host>; addresses come
# from 198.18.0.0/15 and 2001:2::/48 only; veth pairs are created directly
# inside the namespaces, so the root namespace never holds a lab link,
# address or route.
#
#   client (198.18.0.2) --- eth0 [lb] eth1 --- br0 [sw] --- be1 198.18.2.11
#                        198.18.0.1   198.18.2.1       +--- be2 198.18.2.12
#                                                      +--- be3 198.18.2.13
#                                                      +--- dns 198.18.2.53
#   VIPs: 198.18.1.0/24, assigned nowhere (the XDP program intercepts them).
#   IPv6 alongside, the same last digits: 198.18.0.x is 2001:2::x/64,
#   198.18.2.x is 2001:2:0:2::x/64, VIPs 2001:2:0:1::/64.
#
# Environment:
#   XDPPASS_OBJ   XDP_PASS object attached (native) to the veth peers sluice
#                 redirects into; default bpf/xdppass_bpfel.o
#   LAB_DIR       state directory; default .lab under the repository root
#   LAB_OWNER_PID the process that owns the lab (default: none); `gc` takes
#                 down labs whose owner is no longer running
set -Eeuo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lab_lib.sh
source "$repo_root/scripts/lab_lib.sh"
# shellcheck source=scripts/lab_cluster.sh
source "$repo_root/scripts/lab_cluster.sh"
lab_dir=${LAB_DIR:-$repo_root/.lab}
xdppass_obj=${XDPPASS_OBJ:-$repo_root/bpf/xdppass_bpfel.o}

log() { printf 'lab: %s\n' "$*" >&2; }
die() { printf 'lab: error: %s\n' "$*" >&2; exit 1; }

usage() {
	cat >&2 <<-'EOF'
		usage: lab.sh up [ID] | up-cluster [ID] [N] | down ID | backends ID | dns ID FILE | bird ID HOST CONF | env ID | gc | exec ID HOST CMD...
	EOF
	exit 2
}

check_id() {
	[[ $1 =~ ^[a-z0-9]{1,12}$ ]] || die "bad lab id '$1': want 1-12 of [a-z0-9]"
}

ns_name() { printf 'sl-%s-%s' "$1" "$2"; }

hosts=(client lb sw be1 be2 be3 dns)

ns_exists() { [[ -e /run/netns/$1 ]]; }

# nsx NS CMD...: run CMD inside namespace NS.
nsx() {
	local ns=$1
	shift
	ip netns exec "$ns" "$@"
}

# attach_pass NS DEV: native XDP_PASS on DEV, needed on the receiving end of a
# veth that sluice redirects or XDP_TXes into.
attach_pass() {
	ip -n "$1" link set dev "$2" xdpdrv obj "$xdppass_obj" sec xdp
}

# tx_off NS DEV: no TX checksum offload (partial checksums do not survive a
# redirect, and offload would hide checksum bugs).
tx_off() {
	nsx "$1" ethtool -K "$2" tx off >/dev/null
}

lab_up() {
	local id=$1
	check_id "$id"
	[[ $EUID -eq 0 ]] || die "lab.sh up needs root"
	[[ -f $xdppass_obj ]] || die "XDP pass object $xdppass_obj missing (go generate ./bpf/... or set XDPPASS_OBJ)"
	local h
	for h in "${hosts[@]}"; do
		if ns_exists "$(ns_name "$id" "$h")"; then
			die "lab $id already exists ($(ns_name "$id" "$h"))"
		fi
	done
	mkdir -p "$lab_dir/$id"

	# From here on a failure tears down whatever was built.
	trap 'log "up failed, cleaning up lab $id"; lab_down "$id" >/dev/null 2>&1 || true' ERR

	local c lb sw dns
	c=$(ns_name "$id" client)
	lb=$(ns_name "$id" lb)
	sw=$(ns_name "$id" sw)
	dns=$(ns_name "$id" dns)

	for h in "${hosts[@]}"; do
		ip netns add "$(ns_name "$id" "$h")"
		ip -n "$(ns_name "$id" "$h")" link set lo up
		# No duplicate address detection: IPv6 addresses (link-local ones
		# too) are usable at once, not "tentative" for a second or two.
		nsx "$(ns_name "$id" "$h")" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
	done

	# client <-> lb
	ip -n "$c" link add eth0 mtu 1500 type veth peer name eth0 netns "$lb"
	# lb <-> switch
	ip -n "$lb" link add eth1 mtu 1500 type veth peer name p-lb netns "$sw"

	# lb sysctls: forwarding, and rp_filter off (a reverse-NATed reply that falls
	# back to the kernel must not be dropped).
	nsx "$lb" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
	local conf
	for conf in all default eth0 eth1; do
		nsx "$lb" sysctl -qw "net.ipv4.conf.$conf.rp_filter=0"
	done

	# switch: one bridge joining lb's eth1, the backends and dns
	ip -n "$sw" link add br0 type bridge
	nsx "$sw" sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
	ip -n "$sw" link set p-lb master br0

	local i ns addr
	for i in 1 2 3; do
		ns=$(ns_name "$id" "be$i")
		ip -n "$ns" link add eth0 mtu 1500 type veth peer name "p-be$i" netns "$sw"
		ip -n "$sw" link set "p-be$i" master br0
	done
	ip -n "$dns" link add eth0 mtu 1500 type veth peer name p-dns netns "$sw"
	ip -n "$sw" link set p-dns master br0

	# addresses and routes
	ip -n "$c" addr add 198.18.0.2/24 dev eth0
	ip -n "$lb" addr add 198.18.0.1/24 dev eth0
	ip -n "$lb" addr add 198.18.2.1/24 dev eth1
	for i in 1 2 3; do
		ns=$(ns_name "$id" "be$i")
		ip -n "$ns" addr add "198.18.2.1$i/24" dev eth0
	done
	ip -n "$dns" addr add 198.18.2.53/24 dev eth0
	lab_addrs6 "$id"

	# links up
	ip -n "$sw" link set br0 up
	for addr in p-lb p-be1 p-be2 p-be3 p-dns; do
		ip -n "$sw" link set "$addr" up
	done
	ip -n "$c" link set eth0 up
	ip -n "$lb" link set eth0 up
	ip -n "$lb" link set eth1 up
	for ns in "$(ns_name "$id" be1)" "$(ns_name "$id" be2)" "$(ns_name "$id" be3)" "$dns"; do
		ip -n "$ns" link set eth0 up
		ip -n "$ns" route add 198.18.0.0/15 via 198.18.2.1
		ip -n "$ns" -6 route add 2001:2::/48 via 2001:2:0:2::1
	done
	ip -n "$c" route add 198.18.0.0/15 via 198.18.0.1
	ip -n "$c" -6 route add 2001:2::/48 via 2001:2::1

	# checksum offload off on every endpoint and switch port (and lb's own links)
	tx_off "$c" eth0
	tx_off "$lb" eth0
	tx_off "$lb" eth1
	for ns in "$(ns_name "$id" be1)" "$(ns_name "$id" be2)" "$(ns_name "$id" be3)" "$dns"; do
		tx_off "$ns" eth0
	done
	for addr in p-lb p-be1 p-be2 p-be3 p-dns; do
		tx_off "$sw" "$addr"
	done

	# native XDP_PASS on the peers of lb's links (and the backends: harmless)
	attach_pass "$c" eth0
	attach_pass "$sw" p-lb
	for i in 1 2 3; do
		attach_pass "$(ns_name "$id" "be$i")" eth0
	done

	if [[ -n ${LAB_OWNER_PID:-} ]]; then
		[[ $LAB_OWNER_PID =~ ^[0-9]+$ ]] || die "LAB_OWNER_PID '$LAB_OWNER_PID' is not a pid"
		# start time too, so a recycled pid is not taken for the owner
		printf '%s %s\n' "$LAB_OWNER_PID" "$(proc_start "$LAB_OWNER_PID")" >"$lab_dir/$id/owner"
	fi
	write_env "$id"
	trap - ERR
	log "lab $id up; env: $lab_dir/$id.env"
	printf '%s\n' "$id"
}

# lab_addrs6 ID: every host's IPv6 address (2001:2::/48, the benchmarking
# range of RFC 5180), next to its IPv4 one; nodad: usable at once.
lab_addrs6() {
	local id=$1 i
	ip -n "$(ns_name "$id" client)" addr add 2001:2::2/64 dev eth0 nodad
	ip -n "$(ns_name "$id" lb)" addr add 2001:2::1/64 dev eth0 nodad
	ip -n "$(ns_name "$id" lb)" addr add 2001:2:0:2::1/64 dev eth1 nodad
	for i in 1 2 3; do
		ip -n "$(ns_name "$id" "be$i")" addr add "2001:2:0:2::1$i/64" dev eth0 nodad
	done
	ip -n "$(ns_name "$id" dns)" addr add 2001:2:0:2::53/64 dev eth0 nodad
}

write_env() {
	local id=$1
	local tmp=$lab_dir/$id.env.tmp
	cat >"$tmp" <<-EOF
		LAB_ID=$id
		LAB_STATE=$lab_dir/$id
		NS_CLIENT=$(ns_name "$id" client)
		NS_LB=$(ns_name "$id" lb)
		NS_SW=$(ns_name "$id" sw)
		NS_BE1=$(ns_name "$id" be1)
		NS_BE2=$(ns_name "$id" be2)
		NS_BE3=$(ns_name "$id" be3)
		NS_DNS=$(ns_name "$id" dns)
		CLIENT=198.18.0.2
		LB_CLIENT_IP=198.18.0.1
		LB_BACKEND_IP=198.18.2.1
		BE1=198.18.2.11
		BE2=198.18.2.12
		BE3=198.18.2.13
		DNS=198.18.2.53
		VIP_NET=198.18.1.0/24
		CLIENT6=2001:2::2
		LB_CLIENT_IP6=2001:2::1
		LB_BACKEND_IP6=2001:2:0:2::1
		BE1_6=2001:2:0:2::11
		BE2_6=2001:2:0:2::12
		BE3_6=2001:2:0:2::13
		DNS6=2001:2:0:2::53
		VIP6_NET=2001:2:0:1::/64
	EOF
	mv "$tmp" "$lab_dir/$id.env"
}

lab_down() {
	local id=$1
	check_id "$id"
	[[ $EUID -eq 0 ]] || die "lab.sh down needs root"
	local f pid h ns

	# processes the lab (or its users) recorded in PID files
	if [[ -d $lab_dir/$id ]]; then
		for f in "$lab_dir/$id"/*.pid; do
			[[ -e $f ]] || continue
			pid=$(<"$f")
			if [[ $pid =~ ^[0-9]+$ ]]; then
				stop_pid "$pid"
			fi
			rm -f "$f"
		done
	fi

	# Every namespace of the lab, whatever its topology (lab_cluster.sh
	# adds router and n1..n3).
	local all
	mapfile -t all < <(ip netns list 2>/dev/null | awk -v p="sl-$id-" 'index($1, p) == 1 { print substr($1, length(p) + 1) }')
	for h in "${all[@]}"; do
		ns=$(ns_name "$id" "$h")
		ns_exists "$ns" || continue
		# Anything still running inside a namespace of this lab was started for it.
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			log "killing leftover pid $pid in $ns"
			stop_pid "$pid"
		done
		ip netns del "$ns" 2>/dev/null || log "could not delete $ns"
	done

	# per-run bpffs pins of demo.sh, the e2e suite and the benchmarks
	local pin
	# (and of the cluster lab: sluice-ID-n1.., sluice-ID-be1-decap..)
	for pin in /sys/fs/bpf/sluice{,-e2e,-bench,-benchdns}-"$id" /sys/fs/bpf/sluice-"$id"-*; do
		if [[ -e $pin ]]; then
			rm -rf -- "$pin"
			log "removed pins $pin"
		fi
	done

	rm -rf -- "${lab_dir:?}/$id" "$lab_dir/$id.env" "/tmp/sluice-$id"
	log "lab $id down"
}

# proc_start PID: the process's start time in clock ticks since boot ("" if gone).
proc_start() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
	# field 22; the command name (field 2) may contain spaces, so cut after ')'
	stat=${stat##*) }
	awk '{ print $20 }' <<<"$stat"
}

# lab_gc: take down every lab whose recorded owner process has exited.
lab_gc() {
	[[ $EUID -eq 0 ]] || die "lab.sh gc needs root"
	local f id pid start
	for f in "$lab_dir"/*/owner; do
		[[ -e $f ]] || continue
		id=$(basename "$(dirname "$f")")
		read -r pid start <"$f" || continue
		if [[ -n $pid && $(proc_start "$pid") == "$start" ]]; then
			continue
		fi
		log "lab $id: owner $pid is gone, taking it down"
		lab_down "$id"
	done
}

lab_backends() {
	local id=$1
	check_id "$id"
	[[ -f $lab_dir/$id.env ]] || die "lab $id is not up"
	local bin=$repo_root/bin/sluice-testbackend
	if [[ ! -x $bin ]]; then
		log "building $bin"
		(cd "$repo_root" && "$(go_cmd)" build -o bin/sluice-testbackend ./e2e/backend)
	fi
	local i ns pidf
	for i in 1 2 3; do
		ns=$(ns_name "$id" "be$i")
		pidf=$lab_dir/$id/be$i.pid
		if [[ -f $pidf ]] && kill -0 "$(<"$pidf")" 2>/dev/null; then
			log "be$i already running (pid $(<"$pidf"))"
			continue
		fi
		ip netns exec "$ns" "$bin" --listen :80 --udp-listen :5353 --name "be$i" \
			>"$lab_dir/$id/be$i.log" 2>&1 </dev/null &
		printf '%s\n' "$!" >"$pidf"
	done
	for i in 1 2 3; do
		ns=$(ns_name "$id" "be$i")
		local tries=0
		until nsx "$ns" curl -sf -o /dev/null --max-time 1 http://127.0.0.1:80/healthz; do
			tries=$((tries + 1))
			((tries < 50)) || die "backend be$i did not come up (see $lab_dir/$id/be$i.log)"
			sleep 0.1
		done
	done
	log "backends be1..be3 listening on :80"
}

lab_dns() {
	local id=$1 records=$2
	check_id "$id"
	[[ -f $lab_dir/$id.env ]] || die "lab $id is not up"
	[[ -f $records ]] || die "records file $records not found"
	records=$(cd "$(dirname "$records")" && pwd)/$(basename "$records")
	local bin=$repo_root/bin/sluice-dnsserver
	if [[ ! -x $bin ]]; then
		log "building $bin"
		(cd "$repo_root" && "$(go_cmd)" build -o bin/sluice-dnsserver ./e2e/dnsserver)
	fi
	local pidf=$lab_dir/$id/dns.pid
	if [[ -f $pidf ]] && kill -0 "$(<"$pidf")" 2>/dev/null; then
		log "dns server already running (pid $(<"$pidf"))"
		return 0
	fi
	# LAB_DNS_NEG_TTL: the negative-caching TTL of the zone's SOA (default 1 s).
	ip netns exec "$(ns_name "$id" dns)" "$bin" --listen 198.18.2.53:53 --records "$records" \
		--neg-ttl "${LAB_DNS_NEG_TTL:-1}" \
		>"$lab_dir/$id/dns.log" 2>&1 </dev/null &
	printf '%s\n' "$!" >"$pidf"
	local tries=0
	until nsx "$(ns_name "$id" dns)" bash -c 'exec 3<>/dev/tcp/198.18.2.53/53' 2>/dev/null; do
		tries=$((tries + 1))
		((tries < 50)) || die "dns server did not come up (see $lab_dir/$id/dns.log)"
		sleep 0.1
	done
	log "dns server on 198.18.2.53:53 (records $records)"
}

go_cmd() {
	if command -v go >/dev/null 2>&1; then
		command -v go
	else
		printf '/usr/local/go/bin/go\n'
	fi
}

main() {
	(($# >= 1)) || usage
	local cmd=$1
	shift
	case $cmd in
	up)
		local id=${1:-}
		if [[ -z $id ]]; then
			id=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
		fi
		lab_up "$id"
		;;
	up-cluster)
		local id=${1:-} n=${2:-3}
		if [[ -z $id ]]; then
			id=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
		fi
		cluster_up "$id" "$n"
		;;
	bird)
		(($# == 3)) || usage
		lab_bird "$1" "$2" "$3"
		;;
	down)
		(($# == 1)) || usage
		lab_down "$1"
		;;
	backends)
		(($# == 1)) || usage
		lab_backends "$1"
		;;
	dns)
		(($# == 2)) || usage
		lab_dns "$1" "$2"
		;;
	gc)
		(($# == 0)) || usage
		lab_gc
		;;
	env)
		(($# == 1)) || usage
		check_id "$1"
		cat "$lab_dir/$1.env"
		;;
	exec)
		(($# >= 3)) || usage
		check_id "$1"
		local ns
		ns=$(ns_name "$1" "$2")
		ns_exists "$ns" || die "no namespace $ns"
		shift 2
		# nsenter keeps the host's mounts (bpffs); only the network changes.
		exec nsenter --net="/run/netns/$ns" -- "$@"
		;;
	*) usage ;;
	esac
}

main "$@"
