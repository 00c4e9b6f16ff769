# lab_cluster.sh: the multi-node topology of lab.sh (`lab.sh up-cluster`),
# sourced by lab.sh. See docs/lab.md, "Many nodes", and docs/scale-out.md.
#
#   client 198.18.0.2 --- eth0 [router] 198.18.0.1   BIRD 2, AS 64500, ECMP, L4 hash
#                               | eth1 198.18.5.1 --- eth0 [n1] 198.18.5.2  AS 64512
#                               | eth2 198.18.6.1 --- eth0 [n2] 198.18.6.2  AS 64512
#                               | eth3 198.18.7.1 --- eth0 [n3] 198.18.7.2  AS 64512
#   n1..nN eth1 198.18.2.<i> --- br0 [sw] --- be1 198.18.2.11, be2 .12, be3 .13, dns .53
#                                     +--- router eth9 198.18.2.254 (the backends' way
#                                          back to clients: DSR replies skip the nodes)
#   VIPs: 198.18.1.0/24, announced by the nodes over BGP (BIRD on each node
#   exports the routes its agent writes), assigned nowhere.
#
# Links towards the backends (node eth1, the switch, the backends' eth0)
# have an MTU of 1520: a 1500-byte client packet encapsulated by a dsr
# node (IPIP, 20 bytes) fits. The backends' route back to the clients says
# mtu 1500, so their answers never need more. snat flows are answered to
# the node's own address (on-link). nat answers (from a backend's address
# to a client) are routed by the router to the live nodes: a policy rule
# (from the backends' subnet, in on eth9, to the clients) looks up table
# 4154, where the router's BIRD keeps an ECMP route to the clients over
# every node whose BFD session is up; any node translates them
# (docs/scale-out.md). dsr answers come from the VIP, which the rule does
# not match: they go straight to the client.
#
# The router spreads a VIP's flows over the nodes that announce it
# (net.ipv4.fib_multipath_hash_policy=1: source and destination address
# and port). BFD (200 ms x 5) and hold timers of 6 s take a dead node out
# (generous for a lab whose CPUs are shared: a starved BIRD must not flap).
# Each node runs its own `sluice agent` (pins under its own directory)
# and its own BIRD, both started by the caller (e2e, demo-cluster), with
# `lab.sh bird ID HOST CONF` for BIRD.

# cluster_hosts N: the namespaces of a cluster of N nodes.
cluster_hosts() {
	local n=$1 i
	printf '%s\n' client router sw be1 be2 be3 dns
	for ((i = 1; i <= n; i++)); do
		printf 'n%d\n' "$i"
	done
}

# cluster_router_conf FILE N: the router's BIRD config: one eBGP session
# per node, every learned VIP route merged into one ECMP route.
cluster_router_conf() {
	local file=$1 n=$2 i
	{
		printf 'router id 198.18.0.1;\n'
		printf 'protocol device { scan time 10; }\n'
		printf '# ECMP: the kernel gets one route with a next hop per node that announces it\n'
		printf 'protocol kernel { merge paths on limit 16; ipv4 { import none; export all; }; }\n'
		printf 'protocol bfd { interface "*" { min rx interval 200 ms; min tx interval 200 ms; multiplier 5; }; }\n'
		printf 'template bgp nodes {\n\tlocal as 64500;\n\thold time 6;\n\tkeepalive time 2;\n'
		printf '\tconnect retry time 1;\n\terror wait time 1, 5;\n\tbfd on;\n\tdirect;\n'
		printf '\tipv4 { import where net ~ [ 198.18.1.0/24{32,32} ]; export none; };\n}\n'
		for ((i = 1; i <= n; i++)); do
			printf 'protocol bgp n%d from nodes { neighbor 198.18.%d.2 as 64512; }\n' "$i" $((4 + i))
		done
		printf '# nat answers: the clients through every node BFD sees alive (kernel table 4154)\n'
		printf 'ipv4 table nat_return;\nprotocol static nat_return_hops {\n\tipv4 { table nat_return; };\n'
		printf '\troute 198.18.0.0/24'
		for ((i = 1; i <= n; i++)); do
			printf '\n\t\tvia 198.18.%d.2 bfd' $((4 + i))
		done
		printf ';\n}\n'
		printf 'protocol kernel nat_return_kernel { kernel table 4154; ipv4 { table nat_return; import none; export all; }; }\n'
	} >"$file"
}

# shellcheck source=scripts/cluster_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster_lib.sh" # ctl_path

# lab_bird ID HOST CONF: start BIRD in HOST with CONF (foreground process,
# PID in the lab's state), wait for its control socket.
lab_bird() {
	local id=$1 h=$2 conf=$3
	check_id "$id"
	[[ -f $lab_dir/$id.env ]] || die "lab $id is not up"
	ns_exists "$(ns_name "$id" "$h")" || die "no host $h in lab $id"
	command -v bird >/dev/null || die "bird not found (scripts/deps.sh installs bird2)"
	local ctl pidf=$lab_dir/$id/bird-$h.pid
	ctl=$(ctl_path "$id" "$h")
	if [[ -f $pidf ]] && kill -0 "$(<"$pidf")" 2>/dev/null; then
		die "bird already running in $h (pid $(<"$pidf"))"
	fi
	bird -p -c "$conf" || die "bird config $conf does not parse"
	ip netns exec "$(ns_name "$id" "$h")" bird -f -c "$conf" -s "$ctl" -P "$lab_dir/$id/bird-$h.birdpid" \
		>"$lab_dir/$id/bird-$h.log" 2>&1 </dev/null &
	printf '%s\n' "$!" >"$pidf"
	local tries=0
	until birdc -s "$ctl" show status >/dev/null 2>&1; do
		tries=$((tries + 1))
		((tries < 50)) || die "bird in $h did not come up (see $lab_dir/$id/bird-$h.log)"
		sleep 0.1
	done
	log "bird in $h, control socket $ctl"
}

cluster_up() {
	local id=$1 n=$2
	check_id "$id"
	[[ $n =~ ^[1-3]$ ]] || die "nodes: 1..3, not '$n'"
	[[ $EUID -eq 0 ]] || die "lab.sh up-cluster needs root"
	[[ -f $xdppass_obj ]] || die "XDP pass object $xdppass_obj missing (go generate ./bpf/... or set XDPPASS_OBJ)"
	local h
	mapfile -t chosts < <(cluster_hosts "$n")
	for h in "${chosts[@]}"; do
		if ns_exists "$(ns_name "$id" "$h")"; then
			die "lab $id already exists ($(ns_name "$id" "$h"))"
		fi
	done
	mkdir -p "$lab_dir/$id"
	trap 'log "up-cluster failed, cleaning up lab $id"; lab_down "$id" >/dev/null 2>&1 || true' ERR

	for h in "${chosts[@]}"; do
		ip netns add "$(ns_name "$id" "$h")"
		ip -n "$(ns_name "$id" "$h")" link set lo up
	done
	local c r sw dns i ns node conf
	c=$(ns_name "$id" client)
	r=$(ns_name "$id" router)
	sw=$(ns_name "$id" sw)
	dns=$(ns_name "$id" dns)

	# client <-> router
	ip -n "$c" link add eth0 mtu 1500 type veth peer name eth0 netns "$r"
	ip -n "$c" addr add 198.18.0.2/24 dev eth0
	ip -n "$r" addr add 198.18.0.1/24 dev eth0
	ip -n "$c" link set eth0 up
	ip -n "$r" link set eth0 up
	ip -n "$c" route add 198.18.0.0/15 via 198.18.0.1
	tx_off "$c" eth0
	tx_off "$r" eth0
	nsx "$r" sysctl -qw net.ipv4.ip_forward=1
	# ECMP by source and destination address and port
	nsx "$r" sysctl -qw net.ipv4.fib_multipath_hash_policy=1
	nsx "$r" sysctl -qw net.ipv4.fib_multipath_use_neigh=1

	nsx "$r" sysctl -qw net.ipv4.conf.all.rp_filter=0
	nsx "$r" sysctl -qw net.ipv4.conf.default.rp_filter=0
	# a link that went down takes its next hops out at once
	nsx "$r" sysctl -qw net.ipv4.conf.all.ignore_routes_with_linkdown=1
	# nat answers (a backend's address to a client) go through the nodes
	# (table 4154, kept by BIRD: see cluster_router_conf)
	ip -n "$r" rule add from 198.18.2.0/24 iif eth9 to 198.18.0.0/24 lookup 4154 pref 1000

	# the backends' switch (MTU 1520: room for the encapsulation)
	ip -n "$sw" link add br0 mtu 1520 type bridge
	nsx "$sw" sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
	ip -n "$sw" link set br0 up
	ip -n "$r" link add eth9 mtu 1520 type veth peer name p-r netns "$sw"
	ip -n "$sw" link set p-r mtu 1520 master br0
	ip -n "$r" addr add 198.18.2.254/24 dev eth9
	ip -n "$r" link set eth9 up
	ip -n "$sw" link set p-r up
	tx_off "$r" eth9
	tx_off "$sw" p-r
	for i in 1 2 3; do
		ns=$(ns_name "$id" "be$i")
		ip -n "$ns" link add eth0 mtu 1520 type veth peer name "p-be$i" netns "$sw"
		ip -n "$sw" link set "p-be$i" mtu 1520 master br0
		ip -n "$ns" addr add "198.18.2.1$i/24" dev eth0
	done
	ip -n "$dns" link add eth0 mtu 1500 type veth peer name p-dns netns "$sw"
	ip -n "$sw" link set p-dns master br0
	ip -n "$dns" addr add 198.18.2.53/24 dev eth0

	# nodes: eth0 towards the router, eth1 on the backends' switch
	for ((i = 1; i <= n; i++)); do
		node=$(ns_name "$id" "n$i")
		ip -n "$r" link add "eth$i" mtu 1500 type veth peer name eth0 netns "$node"
		ip -n "$r" addr add "198.18.$((4 + i)).1/24" dev "eth$i"
		ip -n "$node" addr add "198.18.$((4 + i)).2/24" dev eth0
		ip -n "$node" link add eth1 mtu 1520 type veth peer name "p-n$i" netns "$sw"
		ip -n "$sw" link set "p-n$i" mtu 1520 master br0
		ip -n "$node" addr add "198.18.2.$i/24" dev eth1
		ip -n "$r" link set "eth$i" up
		ip -n "$node" link set eth0 up
		ip -n "$node" link set eth1 up
		ip -n "$sw" link set "p-n$i" up
		nsx "$node" sysctl -qw net.ipv4.ip_forward=1
		for conf in all default eth0 eth1; do
			nsx "$node" sysctl -qw "net.ipv4.conf.$conf.rp_filter=0"
		done
		# replies to clients go back through the router
		ip -n "$node" route add 198.18.0.0/24 via "198.18.$((4 + i)).1"
		tx_off "$r" "eth$i"
		tx_off "$node" eth0
		tx_off "$node" eth1
		tx_off "$sw" "p-n$i"
		# the node's XDP program redirects into these veths
		attach_pass "$r" "eth$i"
		attach_pass "$sw" "p-n$i"
	done
	for ns in "$(ns_name "$id" be1)" "$(ns_name "$id" be2)" "$(ns_name "$id" be3)" "$dns"; do
		ip -n "$ns" link set eth0 up
		# the way back to the clients: the router, not a node (dsr
		# answers go straight to the client; snat ones go to the
		# node's address, on-link)
		ip -n "$ns" route add 198.18.0.0/15 via 198.18.2.254 mtu 1500
		tx_off "$ns" eth0
	done
	# No XDP_PASS on the backends: nothing redirects into their veths, and
	# `sluice decap attach` puts its own program there.
	for i in 1 2 3; do
		ip -n "$sw" link set "p-be$i" up
		tx_off "$sw" "p-be$i"
	done
	ip -n "$sw" link set p-dns up
	tx_off "$sw" p-dns

	if [[ -n ${LAB_OWNER_PID:-} ]]; then
		[[ $LAB_OWNER_PID =~ ^[0-9]+$ ]] || die "LAB_OWNER_PID '$LAB_OWNER_PID' is not a pid"
		printf '%s %s\n' "$LAB_OWNER_PID" "$(proc_start "$LAB_OWNER_PID")" >"$lab_dir/$id/owner"
	fi
	cluster_router_conf "$lab_dir/$id/bird-router.conf" "$n"
	write_cluster_env "$id" "$n"
	lab_bird "$id" router "$lab_dir/$id/bird-router.conf"
	trap - ERR
	log "cluster lab $id up ($n nodes); env: $lab_dir/$id.env"
	printf '%s\n' "$id"
}

write_cluster_env() {
	local id=$1 n=$2 i
	local tmp=$lab_dir/$id.env.tmp
	{
		printf 'LAB_ID=%s\nLAB_STATE=%s\nLAB_TOPOLOGY=cluster\nNODES=%s\n' "$id" "$lab_dir/$id" "$n"
		printf 'NS_CLIENT=%s\nNS_ROUTER=%s\nNS_SW=%s\n' "$(ns_name "$id" client)" "$(ns_name "$id" router)" "$(ns_name "$id" sw)"
		for i in 1 2 3; do
			printf 'NS_BE%d=%s\nBE%d=198.18.2.1%d\n' "$i" "$(ns_name "$id" "be$i")" "$i" "$i"
		done
		printf 'NS_DNS=%s\nDNS=198.18.2.53\nCLIENT=198.18.0.2\nROUTER_CLIENT_IP=198.18.0.1\n' "$(ns_name "$id" dns)"
		printf 'ROUTER_BIRD_CTL=%s\nVIP_NET=198.18.1.0/24\nROUTER_ASN=64500\nNODE_ASN=64512\nROUTER_BACKEND_IP=198.18.2.254\n' "$(ctl_path "$id" router)"
		for ((i = 1; i <= n; i++)); do
			printf 'NS_N%d=%s\nN%d_FRONT_IP=198.18.%d.2\nN%d_ROUTER_IP=198.18.%d.1\nN%d_BACK_IP=198.18.2.%d\nN%d_BIRD_CTL=%s\n' \
				"$i" "$(ns_name "$id" "n$i")" "$i" $((4 + i)) "$i" $((4 + i)) "$i" "$i" "$i" "$(ctl_path "$id" "n$i")"
		done
	} >"$tmp"
	mv "$tmp" "$lab_dir/$id.env"
}
