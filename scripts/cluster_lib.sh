# cluster_lib.sh: running sluice on the nodes of a cluster lab (lab.sh
# up-cluster): each node's config, BIRD and agent. Sourced by
# demo_cluster.sh; the e2e suite builds the same config in Go
# (e2e/cluster_test.go). The caller sets lab_dir and id.

# shellcheck source=scripts/lab_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lab_lib.sh" # short_socket

# node_config FILE I [MODE]: node I's sluice config: pool web of be1..be3
# with a fast health check, service web-l4 on 198.18.1.100:80 (snat by
# default: each node's own source, so replies come back to it), and the
# bgp section towards the router.
node_config() {
	local file=$1 i=$2 mode=${3:-snat}
	local state=$lab_dir/$id/n$i
	mkdir -p "$state"
	cat >"$file" <<-EOF
		# sluice on node n$i of cluster lab $id
		interfaces: [eth0, eth1]
		admin: {socket: $(node_socket "$i")}
		metrics: {listen: 127.0.0.1:9464}
		datapath:
		  pin_path: /sys/fs/bpf/sluice-$id-n$i
		pools:
		  - name: web
		    backends:
		      - address: 198.18.2.11:80
		      - address: 198.18.2.12:80
		      - address: 198.18.2.13:80
		    drain_timeout: 10s
		    health_check: {http: {path: /healthz}, interval: 1s, timeout: 900ms, rise: 1, fall: 3}
		    ejection: {max_ejected_percent: 100}
		services:
		  - name: web-l4
		    listen: 198.18.1.100:80
		    protocol: tcp
		    mode: $mode
		    pool: web
		bgp:
		  local_asn: 64512
		  router_id: 198.18.$((4 + i)).2
		  peers: [{address: 198.18.$((4 + i)).1, asn: 64500}]
		  hold_time: 6s
		  keepalive: 2s
		  bfd: {interval: 200ms, multiplier: 5}
		  bird_socket: $(ctl_path "$id" "n$i")
	EOF
}

# ctl_path ID HOST: BIRD's control socket for HOST (short enough for a unix socket).
ctl_path() {
	short_socket "$lab_dir/$1/bird-$2.ctl" "/tmp/sluice-$1/bird-$2.ctl"
}

# node_socket I: node I's admin socket (short enough for a unix socket).
node_socket() {
	short_socket "$lab_dir/$id/n$1/admin.sock" "/tmp/sluice-$id/n$1/admin.sock"
}

# backends_decap: `sluice decap attach` in be1..be3 for the lab's VIP (the
# backend side of mode dsr), pins under /sys/fs/bpf/sluice-ID-beI-decap.
# The caller sets sluice (the binary).
backends_decap() {
	local i
	for i in 1 2 3; do
		nsenter --net="/run/netns/sl-$id-be$i" -- "$sluice" decap attach --interface eth0 \
			--vip 198.18.1.100 --xdp-mode native --pin-path "/sys/fs/bpf/sluice-$id-be$i-decap" >/dev/null
	done
}
