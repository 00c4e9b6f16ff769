#!/usr/bin/env bash
# inspect.sh: bpftool views of a live sluice data path (see docs/inspect.md).
#
#   scripts/inspect.sh [--pin-path DIR] [COMMAND [ARGS]]
#
# Commands:
#   all                    (default) progs, maps, services, backends, tables, stats, conntrack summary
#   progs                  XDP attachments in this network namespace, sluice's pinned links, the program
#   maps                   `bpftool map show` of every pinned map
#   services               the services map, decoded (VIP, port, proto -> id, mode, snat source); services6 too
#   backends               backend slots in use, decoded (address, state, generation, pool id); backends6 too
#   tables                 each service's Maglev table (its row of maglev_tables): entries per backend slot
#   stats                  per-CPU counters summed: services, backends in use, global
#   conntrack              every flow (one conntrack entry each) and every snat reverse entry, decoded;
#                          the IPv6 flows of conntrack6
#   flow CLIENT VIP[/PROTO] [PROTO]
#                          look one flow up by its key: CLIENT ip:port, VIP ip:port,
#                          PROTO tcp (default) or udp; then how its replies find it
#   key CLIENT VIP[/PROTO] [PROTO]
#                          print the conntrack key bytes of a flow (for bpftool ... key hex)
#   dump MAP               bpftool's own BTF dump of one pinned map, undecoded
#
# --pin-path DIR: where the agent pinned its maps and links (datapath.pin_path),
# default /sys/fs/bpf/sluice. Needs root (bpftool), and jq for the decoded
# views. Network-namespace bound: `bpftool net show` lists the XDP programs of
# the namespace inspect.sh runs in (in the lab: scripts/lab.sh exec ID lb
# scripts/inspect.sh ...). Everything is read-only.
#
# Addresses and ports in the maps are in network byte order; the decoding
# below assumes a little-endian host, like the data path's bpfel objects.
set -euo pipefail

pin=/sys/fs/bpf/sluice
maps=(services backends maglev_tables conntrack service_stats backend_stats global_stats)

log() { printf 'inspect: %s\n' "$*" >&2; }
die() { printf 'inspect: error: %s\n' "$*" >&2; exit 1; }
usage() {
	sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
	exit 2
}
say() { printf '\n== %s\n' "$*"; }

need_bpftool() {
	command -v bpftool >/dev/null 2>&1 || die "bpftool not found (scripts/deps.sh installs it)"
	[[ $EUID -eq 0 ]] || die "bpftool needs root"
}
need_jq() {
	command -v jq >/dev/null 2>&1 || die "jq not found (apt-get install jq); 'dump MAP' works without it"
}
need_pins() {
	[[ -e $pin/services ]] || die "no sluice maps pinned under $pin (agent never started, or torn down; --pin-path?)"
}

# table: tab-separated lines aligned when column(1) is there.
table() {
	if command -v column >/dev/null 2>&1; then
		column -t -s $'\t'
	else
		cat
	fi
}

# jq helpers: network-order u32/u16 read as little-endian numbers, names of enums.
# shellcheck disable=SC2016 # jq code, not shell
JQ_DEFS='
def ip: [(. % 256), ((. / 256 | floor) % 256), ((. / 65536 | floor) % 256), ((. / 16777216 | floor) % 256)] | map(tostring) | join(".");
def port: ((. % 256) * 256) + ((. / 256) | floor);
def proto: if . == 6 then "tcp" elif . == 17 then "udp" else tostring end;
def bstate: ["free", "active", "draining", "ejected", "removed"][.] // tostring;
def ctstate: ["new", "syn-sent", "established", "closing", "udp"][.] // tostring;
def mode: ["nat", "snat", "dsr"][.] // tostring;
def hex16: if . == 0 then "0" else [(. / 4096 | floor), ((. / 256 | floor) % 16), ((. / 16 | floor) % 16), (. % 16)] | map("0123456789abcdef"[. : . + 1]) | add | sub("^0+"; "") end;
def ip6: [.[] | (. % 256), ((. / 256 | floor) % 256), ((. / 65536 | floor) % 256), ((. / 16777216 | floor) % 256)] as $b
	| [range(0; 8) | $b[2 * .] * 256 + $b[2 * . + 1]] as $g
	| (reduce range(0; 8) as $i ({best: -1, blen: 0, cur: -1, clen: 0};
		if $g[$i] == 0 then (if .cur < 0 then .cur = $i | .clen = 1 else .clen += 1 end)
			| (if .clen > .blen then .best = .cur | .blen = .clen else . end)
		else .cur = -1 | .clen = 0 end)) as $z
	| if $z.blen >= 2 then ($g[0:$z.best] | map(hex16) | join(":")) + "::" + ($g[$z.best + $z.blen:] | map(hex16) | join(":"))
	  else $g | map(hex16) | join(":") end;
def zero6: all(.[]; . == 0);
def hex2: [(. / 16 | floor), (. % 16)] | map("0123456789abcdef"[. : . + 1]) | add;
def ipbytes: [(. % 256), ((. / 256 | floor) % 256), ((. / 65536 | floor) % 256), ((. / 16777216 | floor) % 256)] | map(hex2);
def portbytes: [(. % 256), ((. / 256) | floor)] | map(hex2);
def sumcpus: reduce .values[].value as $v ({}; reduce ($v | keys[]) as $k (.; .[$k] += $v[$k]));
'

# jdump MAP: the map's entries as BTF-formatted JSON objects ({key, value} or
# {key, values: [{cpu, value}]}).
jdump() {
	bpftool -j map dump pinned "$pin/$1" | jq "[.[].formatted]"
}

cmd_progs() {
	say "XDP programs in this network namespace (bpftool net show)"
	bpftool net show | sed -n '/^xdp:/,/^$/p'
	say "sluice's pinned links ($pin/links)"
	local l prog_ids=()
	shopt -s nullglob
	local links=("$pin"/links/*)
	shopt -u nullglob
	if ((${#links[@]} == 0)); then
		echo "(none: nothing attached by sluice)"
	fi
	for l in "${links[@]}"; do
		printf '%s: ' "${l##*/}"
		bpftool link show pinned "$l" | head -n 1
		if command -v jq >/dev/null 2>&1; then
			prog_ids+=("$(bpftool -j link show pinned "$l" | jq -r .prog_id)")
		fi
	done
	if ((${#prog_ids[@]} > 0)); then
		say "the program (bpftool prog show id ...)"
		local id
		for id in $(printf '%s\n' "${prog_ids[@]}" | sort -un); do
			bpftool prog show id "$id"
		done
	fi
}

cmd_maps() {
	say "pinned maps (bpftool map show pinned $pin/MAP)"
	local m
	for m in "${maps[@]}"; do
		if [[ -e $pin/$m ]]; then
			bpftool map show pinned "$pin/$m"
		else
			echo "$m: not pinned"
		fi
	done
}

cmd_services() {
	say "services (VIP:port/proto -> id)"
	jdump services | jq -r "$JQ_DEFS"'
		["VIP:PORT", "PROTO", "ID", "MODE", "SNAT SOURCE"],
		(sort_by(.value.id)[] | [
			"\(.key.vip | ip):\(.key.port | port)", (.key.proto | proto), .value.id,
			(.value.mode | mode), (if .value.snat_addr == 0 then "-" else (.value.snat_addr | ip) end)
		]) | @tsv' | table
	[[ -e $pin/services6 ]] || return 0
	say "services6 (IPv6 VIP:port/proto -> id; ids shared with IPv4)"
	jdump services6 | jq -r "$JQ_DEFS"'
		["VIP:PORT", "PROTO", "ID", "MODE", "SNAT SOURCE"],
		(sort_by(.value.id)[] | [
			"[\(.key.vip | ip6)]:\(.key.port | port)", (.key.proto | proto), .value.id,
			(.value.mode | mode), (if (.value.snat_addr | zero6) then "-" else (.value.snat_addr | ip6) end)
		]) | @tsv' | table
}

cmd_backends() {
	say "backend slots in use (free slots of generation 0 left out)"
	jdump backends | jq -r "$JQ_DEFS"'
		["SLOT", "ADDRESS", "STATE", "GEN", "POOL ID", "ROUTE SOURCE"],
		(.[] | select(.value.state != 0 or .value.gen != 0) | [
			.key, "\(.value.addr | ip):\(.value.port | port)", (.value.state | bstate), .value.gen,
			(.value.pool_id | tostring), (if .value.src_addr == 0 then "-" else (.value.src_addr | ip) end)
		]) | @tsv' | table
	[[ -e $pin/backends6 ]] || return 0
	say "backends6: slots holding an IPv6 backend (slot numbers shared with IPv4)"
	jdump backends6 | jq -r "$JQ_DEFS"'
		["SLOT", "ADDRESS", "STATE", "GEN", "POOL ID", "ROUTE SOURCE"],
		(.[] | select(.value.state != 0) | [
			.key, "[\(.value.addr | ip6)]:\(.value.port | port)", (.value.state | bstate), .value.gen,
			(.value.pool_id | tostring), (if (.value.src_addr | zero6) then "-" else (.value.src_addr | ip6) end)
		]) | @tsv' | table
}

cmd_tables() {
	say "Maglev tables (maglev_tables: each service id's row of 16-entry lines; entries per backend slot)"
	local lines ids sid i
	lines=$(($(bpftool -j map show pinned "$pin/maglev_tables" | jq '.max_entries') / 1024))
	ids=$({
		jdump services
		if [[ -e $pin/services6 ]]; then jdump services6; fi
	} | jq -s -r '[.[][] | .value.id] | unique | .[]')
	if [[ -z $ids ]]; then
		echo "(no service)"
		return
	fi
	for sid in $ids; do
		printf 'service %d: ' "$sid"
		# One bpftool for the row's lines; a table's entries are never 0
		# (0 is the padding after the last entry, or no table at all).
		for ((i = sid * lines; i < (sid + 1) * lines; i++)); do
			printf 'map lookup pinned %s key %d %d %d %d\n' "$pin/maglev_tables" \
				$((i & 255)) $((i >> 8 & 255)) $((i >> 16 & 255)) $((i >> 24 & 255))
		done | bpftool -j batch file /dev/stdin | jq -s -r '
			[.. | objects | select(has("formatted")) | .formatted.value.slot[] | select(. != 0)] |
			length as $n | if $n == 0 then "no table (no active backend)" else
			"\($n) entries: " + (group_by(.) | map("slot \(.[0])=\(length)") | join(" ")) end'
	done
}

cmd_stats() {
	say "service counters (service_stats, summed over CPUs; ids of the services map)"
	local ids
	ids=$(jdump services | jq -c '[.[].value.id]')
	jdump service_stats | jq -r --argjson ids "$ids" "$JQ_DEFS"'
		["ID", "PACKETS", "BYTES", "NEW FLOWS", "RST NO BACKEND", "RST REMOVED", "DROP NO BACKEND", "DROP REMOVED", "FRAGMENTS", "SNAT FAILURES"],
		(.[] | select(.key as $k | $ids | index($k)) | .key as $k | sumcpus | [
			$k, .packets, .bytes, .new_flows, .rst_no_backend, .rst_removed_backend,
			.drop_no_backend, .drop_removed_backend, .fragments, .snat_failures
		]) | @tsv' | table
	say "backend counters (backend_stats, slots in use)"
	local slots
	slots=$(jdump backends | jq -c '[.[] | select(.value.state != 0 or .value.gen != 0) | .key]')
	jdump backend_stats | jq -r --argjson slots "$slots" "$JQ_DEFS"'
		["SLOT", "PACKETS", "BYTES", "NEW FLOWS", "CONNECT REFUSED"],
		(.[] | select(.key as $k | $slots | index($k)) | .key as $k | sumcpus |
			[$k, .packets, .bytes, .new_flows, (.connect_refused // "-")]) | @tsv' | table
	say "global counters (global_stats)"
	jdump global_stats | jq -r "$JQ_DEFS"'.[0] | sumcpus | to_entries[] | [.key, .value] | @tsv' | table
}

cmd_conntrack() {
	local summary=${1:-}
	local all
	all=$(jdump conntrack)
	local all6='[]'
	if [[ -e $pin/conntrack6 ]]; then
		all6=$(jdump conntrack6)
	fi
	if [[ $summary == summary ]]; then
		say "conntrack"
		jq -r '"\(length) flows (one entry each; \"conntrack\" lists them)"' <<<"$all"
		jq -r '"\([.[] | select(.value.flags % 2 == 0)] | length) IPv6 flows (conntrack6)"' <<<"$all6"
		return
	fi
	say "conntrack: flows (client -> VIP, rewritten towards the backend; replies find them through backend_ports)"
	jq -r "$JQ_DEFS"'
		["CLIENT", "VIP", "PROTO", "SERVICE", "SLOT/GEN", "BACKEND", "SNAT AS", "STATE"],
		(.[] | [
			"\(.key.saddr | ip):\(.key.sport | port)", "\(.key.daddr | ip):\(.key.dport | port)",
			(.key.proto | proto), .value.service_id, "\(.value.backend_id)/\(.value.backend_gen)",
			"\(.value.daddr_new | ip):\(.value.dport_new | port)",
			(if .value.saddr_new == 0 then "-" else "\(.value.saddr_new | ip):\(.value.sport_new | port)" end),
			(.value.state | ctstate)
		]) | @tsv' <<<"$all" | table
	say "snat_rev: snat flows' reverse entries (backend -> snat address, back to the flow's key)"
	jdump snat_rev | jq -r "$JQ_DEFS"'
		["BACKEND", "TO", "PROTO", "CLIENT", "VIP"],
		(.[] | [
			"\(.key.saddr | ip):\(.key.sport | port)", "\(.key.daddr | ip):\(.key.dport | port)",
			(.key.proto | proto),
			"\(.value.saddr | ip):\(.value.sport | port)", "\(.value.daddr | ip):\(.value.dport | port)"
		]) | @tsv' | table
	[[ -e $pin/conntrack6 ]] || return 0
	say "conntrack6: IPv6 flows (forward entries; an snat flow's reverse entry is flagged reply)"
	jq -r "$JQ_DEFS"'
		["CLIENT", "VIP", "PROTO", "SERVICE", "SLOT/GEN", "BACKEND", "SNAT AS", "STATE"],
		(.[] | select(.value.flags % 2 == 0) | [
			"[\(.key.saddr | ip6)]:\(.key.sport | port)", "[\(.key.daddr | ip6)]:\(.key.dport | port)",
			(.key.proto | proto), .value.service_id, "\(.value.backend_id)/\(.value.backend_gen)",
			"[\(.value.daddr_new | ip6)]:\(.value.dport_new | port)",
			(if (.value.saddr_new | zero6) then "-" else "[\(.value.saddr_new | ip6)]:\(.value.sport_new | port)" end),
			(.value.state | ctstate)
		]) | @tsv' <<<"$all6" | table
}

# ip_hex A.B.C.D: the four bytes in network order, as bpftool's hex words.
ip_hex() {
	local ip=$1 a b c d
	[[ $ip =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] || die "$ip: not an IPv4 address"
	a=${BASH_REMATCH[1]} b=${BASH_REMATCH[2]} c=${BASH_REMATCH[3]} d=${BASH_REMATCH[4]}
	local o
	for o in "$a" "$b" "$c" "$d"; do
		((10#$o <= 255)) || die "$ip: not an IPv4 address"
	done
	printf '%02x %02x %02x %02x' "$((10#$a))" "$((10#$b))" "$((10#$c))" "$((10#$d))"
}

# port_hex P: the port in network order (big-endian), two hex words.
port_hex() {
	local p=$1
	if ! [[ $p =~ ^[0-9]{1,5}$ ]] || ((10#$p > 65535)); then
		die "$p: not a port"
	fi
	p=$((10#$p))
	printf '%02x %02x' "$((p >> 8))" "$((p & 255))"
}

# split_addr IP:PORT -> sets addr_ip, addr_port
split_addr() {
	[[ $1 == *:* ]] || die "$1: want ip:port"
	addr_ip=${1%:*}
	addr_port=${1##*:}
}

# flow_key CLIENT VIP[/PROTO] [PROTO]: prints struct ct_key as 16 hex bytes:
# saddr(4) daddr(4) sport(2) dport(2) proto(1) pad(3), addresses and ports in
# network order.
flow_key() {
	(($# >= 2 && $# <= 3)) || usage
	local client=$1 vip=$2 proto=${3:-}
	if [[ $vip == */* ]]; then
		[[ -z $proto ]] || die "protocol given twice"
		proto=${vip##*/}
		vip=${vip%/*}
	fi
	proto=${proto:-tcp}
	local pnum
	case ${proto,,} in
	tcp | 6) pnum=6 ;;
	udp | 17) pnum=17 ;;
	*) die "$proto: want tcp or udp" ;;
	esac
	local cip cport vip_ip vip_port
	split_addr "$client"
	cip=$addr_ip cport=$addr_port
	split_addr "$vip"
	vip_ip=$addr_ip vip_port=$addr_port
	local h1 h2 h3 h4
	h1=$(ip_hex "$cip")
	h2=$(ip_hex "$vip_ip")
	h3=$(port_hex "$cport")
	h4=$(port_hex "$vip_port")
	printf '%s %s %s %s %02x 00 00 00\n' "$h1" "$h2" "$h3" "$h4" "$pnum"
}

cmd_flow() {
	local key
	key=$(flow_key "$@")
	say "forward entry: bpftool map lookup pinned $pin/conntrack key hex $key"
	local out
	# shellcheck disable=SC2086 # the key is words on purpose
	if ! out=$(bpftool -j map lookup pinned "$pin/conntrack" key hex $key 2>&1); then
		echo "not found: no flow with this 5-tuple (never seen, expired and collected, or evicted)"
		return 1
	fi
	# shellcheck disable=SC2086
	bpftool map lookup pinned "$pin/conntrack" key hex $key
	local rkey rmap
	rkey=$(jq -r "$JQ_DEFS"'.formatted.value as $v | .formatted.key as $k |
		if $v.saddr_new == 0 then ($v.daddr_new | ipbytes) + ($v.dport_new | portbytes) + ["00", "00"]
		else ($v.daddr_new | ipbytes) + ($v.saddr_new | ipbytes) + ($v.dport_new | portbytes) +
			($v.sport_new | portbytes) + [($k.proto | hex2), "00", "00", "00"] end | join(" ")' <<<"$out")
	rmap=$(jq -r 'if .formatted.value.saddr_new == 0 then "backend_ports" else "snat_rev" end' <<<"$out")
	jq -r "$JQ_DEFS"'.formatted.value | "\nflow: service \(.service_id), backend slot \(.backend_id) gen \(.backend_gen) = \(.daddr_new | ip):\(.dport_new | port)" +
		(if .saddr_new == 0 then "" else ", source rewritten to \(.saddr_new | ip):\(.sport_new | port)" end) +
		", state \(.state | ctstate)"' <<<"$out"
	local slot gen
	slot=$(jq -r .formatted.value.backend_id <<<"$out")
	gen=$(jq -r .formatted.value.backend_gen <<<"$out")
	bpftool -j map lookup pinned "$pin/backends" key "$((slot & 255))" "$(((slot >> 8) & 255))" 0 0 |
		jq -r --argjson gen "$gen" "$JQ_DEFS"'.formatted.value |
			"backend slot now: \(.addr | ip):\(.port | port) \(.state | bstate) gen \(.gen)" +
			(if .gen != $gen then " (generation changed: the flow'"'"'s packets get a TCP RST)"
			 elif .state == 4 then " (removed: the flow'"'"'s packets get a TCP RST)" else "" end)'
	if [[ $rmap == backend_ports ]]; then
		say "replies: the backend's endpoint, bpftool map lookup pinned $pin/backend_ports key hex $rkey (its nat services rebuild this key)"
	else
		say "replies: the snat reverse entry, bpftool map lookup pinned $pin/snat_rev key hex $rkey"
	fi
	# shellcheck disable=SC2086
	bpftool map lookup pinned "$pin/$rmap" key hex $rkey ||
		echo "not found (replies of this flow fall through to the kernel untranslated)"
}

main() {
	while (($# > 0)); do
		case $1 in
		--pin-path)
			(($# >= 2)) || usage
			pin=$2
			shift 2
			;;
		--pin-path=*)
			pin=${1#--pin-path=}
			shift
			;;
		-h | --help | help) usage ;;
		--)
			shift
			break
			;;
		-*) die "unknown option $1" ;;
		*) break ;;
		esac
	done
	local cmd=${1:-all}
	(($# == 0)) || shift
	case $cmd in
	key)
		flow_key "$@"
		return
		;;
	esac
	need_bpftool
	case $cmd in
	dump)
		(($# == 1)) || usage
		bpftool map dump pinned "$pin/$1"
		return
		;;
	esac
	need_pins
	case $cmd in
	progs) cmd_progs ;;
	maps) cmd_maps ;;
	services) need_jq && cmd_services ;;
	backends) need_jq && cmd_backends ;;
	tables) need_jq && cmd_tables ;;
	stats) need_jq && cmd_stats ;;
	conntrack) need_jq && cmd_conntrack ;;
	flow) need_jq && cmd_flow "$@" ;;
	all)
		need_jq
		cmd_progs
		cmd_maps
		cmd_services
		cmd_backends
		cmd_tables
		cmd_stats
		cmd_conntrack summary
		;;
	*) usage ;;
	esac
}

main "$@"
