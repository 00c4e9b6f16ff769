# bench_lib.sh: shared by the lab benchmarks (source it). The caller sets:
#   lab, id          scripts/lab.sh and the lab's ID
#   dur threads conns rounds    wrk settings and the number of rounds
#   results          a file the rounds append to (TSV)
#   round            the current round (for progress lines)
#   port_range       associative array: path name -> client port range
# and calls `both NAME URL` per path per round, then `summary NAME...`.

# run_wrk NAME LOAD URL [EXTRA...]: one wrk run from the client namespace;
# appends "NAME LOAD rps p50 p99 errors" to $results.
run_wrk() {
	local name=$1 load=$2 url=$3
	shift 3
	local out rps p50 p99 errs
	# Each path gets its own client port range. The backends keep the
	# server-side TIME_WAIT of every closed connection, and the client's TCP
	# timestamp offset is per destination: a SYN that reuses a port last used
	# on another path fails PAWS at the backend and waits for a 1 s
	# retransmit, which made whichever path ran second look several times
	# slower on new-conn.
	"$lab" exec "$id" client sysctl -qw net.ipv4.ip_local_port_range="${port_range[$name]}"
	out=$("$lab" exec "$id" client wrk -t"$threads" -c"$conns" -d"${dur}s" --latency "$@" "$url" 2>&1)
	rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
	p50=$(awk '$1=="50%" {print $2}' <<<"$out")
	p99=$(awk '$1=="99%" {print $2}' <<<"$out")
	errs=$(awk '/Socket errors:|Non-2xx/ {printf "%s ", $0}' <<<"$out")
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$load" "$rps" "$p50" "$p99" "${errs:-none}" >>"$results"
	printf 'bench: round %s %-9s %-10s %10s req/s p50 %s p99 %s %s\n' "$round" "$name" "$load" "$rps" "$p50" "$p99" "${errs}" >&2
}

# both NAME URL: keep-alive, then one new connection per request.
both() {
	run_wrk "$1" keep-alive "$2"
	run_wrk "$1" new-conn "$2" -H "Connection: close"
}

# median VALUES...: the middle value (lower middle for an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# to_ms LATENCY: wrk's "812.00us" / "3.10ms" / "1.02s" in milliseconds.
to_ms() { awk -v x="$1" 'BEGIN { if (x ~ /us$/) print x/1000; else if (x ~ /ms$/) print x+0; else if (x ~ /s$/) print x*1000; else print x }'; }

# summary NAME...: a markdown table of the medians over the rounds.
summary() {
	local path load p l r m q e rps p50 p99 errs
	echo "| path      | load       | req/s (median of $rounds) | p50 (median) | p99 (median) | all rounds req/s | errors |"
	echo "|-----------|------------|------------:|------------:|------------:|------------------|--------|"
	for path in "$@"; do
		for load in keep-alive new-conn; do
			rps=() p50=() p99=() errs=""
			while IFS=$'\t' read -r p l r m q e; do
				[[ $p == "$path" && $l == "$load" ]] || continue
				rps+=("$r")
				p50+=("$(to_ms "$m")")
				p99+=("$(to_ms "$q")")
				[[ $e == none ]] || errs+="$e "
			done <"$results"
			printf '| %-9s | %-10s | %11.0f | %9.2fms | %9.2fms | %s | %s |\n' "$path" "$load" \
				"$(median "${rps[@]}")" "$(median "${p50[@]}")" "$(median "${p99[@]}")" "$(printf '%.0f ' "${rps[@]}")" "${errs:-none}"
		done
	done
}

# nginx_conf FILE STATE: writes an nginx config to FILE for a run of the lab
# (2 workers, pid, logs and temp paths under STATE, no access log) whose
# http block holds the lines read from stdin.
nginx_conf() {
	local file=$1 st=$2 t
	mkdir -p "$st/nginx"
	{
		printf 'worker_processes 2;\npid %s/nginx.pid;\nerror_log %s/nginx-error.log warn;\n' "$st" "$st"
		printf 'events { worker_connections 4096; }\nhttp {\n    access_log off;\n'
		for t in client_body proxy fastcgi uwsgi scgi; do
			printf '    %s_temp_path %s/nginx/%s;\n' "$t" "$st" "${t#client_}"
		done
		cat
		printf '}\n'
	} >"$file"
}

# sluice_l7_conf FILE STATE PIN [SERVICE_KEYS]: the agent of the L7
# benchmarks (bench_l7.sh, prof_l7.sh): XDP on the lb's eth0 and eth1,
# metrics off, and one http service, web-http on 198.18.1.101:80, over the
# lab's three backends; SERVICE_KEYS are added to the service's flow
# mapping (e.g. 'access_log: "off"').
sluice_l7_conf() {
	cat >"$1" <<-YAML
		interfaces: [eth0, eth1]
		admin: {socket: $2/l7bench.sock}
		metrics: {listen: "off"}
		datapath: {pin_path: $3}
		pools:
		  - name: web
		    backends:
		      - address: 198.18.2.11:80
		      - address: 198.18.2.12:80
		      - address: 198.18.2.13:80
		services:
		  - {name: web-http, listen: 198.18.1.101:80, protocol: http, pool: web${4:+, $4}}
	YAML
}

# nginx_proxy_conf FILE STATE: the nginx of the L7 benchmarks (bench_l7.sh,
# prof_l7.sh): 198.18.1.110:80 proxying to the lab's three backends over
# pooled upstream connections (keepalive 64), as an operator tunes it.
nginx_proxy_conf() {
	nginx_conf "$1" "$2" <<-NGINX
		    upstream web {
		        server 198.18.2.11:80;
		        server 198.18.2.12:80;
		        server 198.18.2.13:80;
		        keepalive 64;
		    }
		    server {
		        listen 198.18.1.110:80;
		        location / {
		            proxy_pass http://web;
		            proxy_http_version 1.1;
		            proxy_set_header Connection "";
		        }
		    }
	NGINX
}
