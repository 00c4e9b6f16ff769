# lab_lib.sh: helpers shared by the scripts that run sluice in a lab
# (lab.sh, demo.sh, dashboard.sh). Source it; the caller sets state (the
# lab's state directory) and id (the lab's ID) before calling
# admin_socket or lab_config.

# admin_socket: the agent's admin socket, under $state unless that path is
# too long for a unix socket (108 bytes), then under /tmp/sluice-$id.
admin_socket() {
	short_socket "$state/admin.sock" "/tmp/sluice-$id/admin.sock"
}

# short_socket PATH ALT: PATH, or ALT when PATH is too long for a unix
# socket (108 bytes); the directory of the one printed exists.
short_socket() {
	local s=$1
	((${#s} <= 100)) || s=$2
	mkdir -p "$(dirname "$s")"
	printf '%s\n' "$s"
}

# stop_pid PID: TERM, wait up to 3 s, then KILL. Only for processes the
# calling script started itself.
stop_pid() {
	local pid=$1 i
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 30; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}

# lab_config FILE: the sluice config of a lab run (demo.sh, dashboard.sh):
# pool web of be1..be3 (fixed addresses) behind services web-l4 (tcp) and
# web-http (the L7 stage), pool api (the DNS name backend.lab) behind
# api-l4. The caller sets id, pin, vip, api_vip and http_vip; optional
# cfg_* variables tune it (each extra is whole YAML lines, indented):
#   cfg_title         the comment on the first line
#   cfg_metrics       metrics listen address (default 127.0.0.1:9464)
#   cfg_datapath      extra lines under datapath:
#   cfg_web_drain     drain_timeout of web (default 10s)
#   cfg_web_ejection  ejection of web (default {failures: 2, window: 10s, base_time: 3s})
#   cfg_api_extra     extra lines of pool api
#   cfg_http_extra    extra lines of service web-http
#   cfg_http_retry    retry of web-http
lab_config() {
	local metrics=${cfg_metrics:-127.0.0.1:9464} drain=${cfg_web_drain:-10s}
	local ejection=${cfg_web_ejection:-'{failures: 2, window: 10s, base_time: 3s}'}
	local retry=${cfg_http_retry:-'{attempts: 3, on: [connect-failure, reset, timeout, 502, 503, 504], methods: [GET, HEAD]}'}
	cat >"$1" <<-EOF
		# ${cfg_title:-sluice lab config} (lab $id)
		interfaces: [eth0, eth1]
		admin: {socket: $(admin_socket)}
		metrics: {listen: $metrics}
		datapath:
		  pin_path: $pin
		${cfg_datapath:-}
		dns:
		  servers: [198.18.2.53:53]
		  min_ttl: 1s
		pools:
		  - name: web
		    backends:
		      - address: 198.18.2.11:80
		      - address: 198.18.2.12:80
		      - address: 198.18.2.13:80
		    drain_timeout: $drain
		    ejection: $ejection
		  - name: api
		    backends:
		      - name: backend.lab      # every A record is a backend
		        port: 80
		    drain_timeout: 10s
		${cfg_api_extra:-}
		services:
		  - name: web-l4
		    listen: $vip:80
		    protocol: tcp
		    mode: nat
		    pool: web
		  - name: api-l4
		    listen: $api_vip:80
		    protocol: tcp
		    mode: nat
		    pool: api
		  - name: web-http             # the L7 stage: binds $http_vip (local on lb)
		    listen: $http_vip:80
		    protocol: http
		    pool: web
		${cfg_http_extra:-}
		    retry: $retry
	EOF
}
