#!/usr/bin/env bash
# dashboard.sh: check the Grafana dashboard and render its PNG from a lab run
# (see docs/dashboard.md).
#
#   scripts/dashboard.sh check        validate deploy/grafana/sluice.json: JSON,
#                                     inputs, variables, every metric of every
#                                     query documented in docs/metrics.md and
#                                     exported by userspace/metrics; then (Go)
#                                     every query parsed by the PromQL parser
#                                     and its labels checked against the docs
#   scripts/dashboard.sh render       (root) a netns lab run with a scripted
#                                     scenario, /metrics scraped every second,
#                                     the dashboard's queries evaluated over the
#                                     scrapes, drawn by gnuplot into
#                                     docs/img/dashboard.png
#   scripts/dashboard.sh plot [DIR]   draw the PNG again from the record of a
#                                     render run (default docs/img/dashboard-run:
#                                     scrapes.txt.gz, events.txt, subtitle.txt);
#                                     no lab, no root
#
# Environment:
#   DASHBOARD_WORK  where render keeps scrapes, events, loadgen reports and the
#                   gnuplot files (default: a new /tmp/sluice-dashboard-XXXX,
#                   kept and printed at the end)
#   DASHBOARD_PNG   output PNG (default docs/img/dashboard.png)
#   DASHBOARD_RECORD where render records the run (default docs/img/dashboard-run)
#
# render needs bin/sluice, bin/sluice-testbackend, bin/sluice-loadgen and
# bin/sluice-dnsserver (make build testbins), gnuplot (Debian gnuplot-nox,
# installed here when missing) and Go with access to the module proxy (the
# renderer, deploy/grafana/render, is its own module: it uses Prometheus's
# PromQL engine). Traffic stays inside the lab's namespaces (198.18.0.0/15);
# every load is bounded by --count and --duration; everything is torn down on
# exit.
set -Eeuo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

dashboard=deploy/grafana/sluice.json
metrics_doc=docs/metrics.md
png=${DASHBOARD_PNG:-$repo_root/docs/img/dashboard.png}
record=${DASHBOARD_RECORD:-$repo_root/docs/img/dashboard-run}

log() { printf 'dashboard: %s\n' "$*" >&2; }
die() { printf 'dashboard: error: %s\n' "$*" >&2; exit 1; }

go_cmd() {
	if command -v go >/dev/null 2>&1; then
		command -v go
	else
		printf '/usr/local/go/bin/go\n'
	fi
}

# build_renderer DIR: the renderer binary at DIR/render.
build_renderer() {
	(cd deploy/grafana/render && "$(go_cmd)" build -o "$1/render" .)
}

# ---- check ----

check() {
	command -v jq >/dev/null || die "jq missing (apt-get install jq)"
	jq empty "$dashboard" || die "$dashboard: not valid JSON"
	local fail=0
	# shape: what an import into Grafana relies on
	local problems
	problems=$(jq -r '
		def p: .title // "(untitled)";
		[
		  (if .schemaVersion < 36 then "schemaVersion \(.schemaVersion) is older than 36" else empty end),
		  (if ([.__inputs[]? | select(.name == "DS_PROMETHEUS" and .pluginId == "prometheus")] | length) != 1
		     then "no DS_PROMETHEUS datasource input" else empty end),
		  (["service", "pool"] - [.templating.list[].name] | .[] | "templating variable \(.) missing"),
		  ([.panels[].id] | group_by(.) | map(select(length > 1)) | .[] | "panel id \(.[0]) used twice"),
		  ([.panels[] | select(.type != "row") | .title] | group_by(.) | map(select(length > 1)) | .[] | "panel title \(.[0]) used twice"),
		  (.panels[] | select(.type != "row") | . as $x |
		     (if (.targets | length) == 0 then "panel \($x | p): no query" else empty end),
		     (.targets[] | select(.datasource.uid != "${DS_PROMETHEUS}") | "panel \($x | p): query \(.refId) not on ${DS_PROMETHEUS}"),
		     (if .datasource.uid != "${DS_PROMETHEUS}" then "panel \($x | p): datasource is not ${DS_PROMETHEUS}" else empty end),
		     (if (.gridPos.x + .gridPos.w) > 24 then "panel \($x | p): wider than the grid" else empty end))
		] | .[]' "$dashboard")
	if [[ -n $problems ]]; then
		printf 'dashboard: %s\n' "$problems" >&2
		fail=1
	fi
	# every metric a query names: documented, and exported by the agent
	local names name base n=0
	names=$(jq -r '.panels[].targets[]?.expr, (.annotations.list[].expr // empty), (.templating.list[].query | strings)' "$dashboard" |
		grep -oE 'sluice_[a-z0-9_]+' | sort -u)
	for name in $names; do
		n=$((n + 1))
		base=$name
		if ! grep -q "\`$name\`" "$metrics_doc"; then
			base=$(sed -E 's/_(bucket|sum|count)$//' <<<"$name")
			if [[ $base == "$name" ]] || ! grep -qE "^\| \`$base\` \| histogram \|" "$metrics_doc"; then
				log "$name: not in $metrics_doc"
				fail=1
				continue
			fi
		fi
		if ! grep -rq --include='*.go' --exclude='*_test.go' -e "\"$base\"" -e "\"${base#sluice_}\"" userspace/metrics/; then
			log "$base: documented but not found in userspace/metrics/*.go"
			fail=1
		fi
	done
	((fail == 0)) || die "$dashboard: check failed"
	log "$dashboard: valid JSON, $(jq '[.panels[] | select(.type != "row")] | length' "$dashboard") panels, $n metric names, all documented and exported"
	# deeper: the PromQL parser, labels per metric (needs Go and the module proxy)
	local tmp
	tmp=$(mktemp -d)
	if build_renderer "$tmp" 2>"$tmp/build.log"; then
		"$tmp/render" check -dashboard "$dashboard" -metrics-doc "$metrics_doc" || { rm -rf "$tmp"; die "render check failed"; }
	else
		log "renderer did not build (no Go or no module proxy?): PromQL parse check skipped"
		sed 's/^/  /' "$tmp/build.log" >&2
	fi
	rm -rf "$tmp"
}

# ---- plot ----

# plot DIR: evaluate the dashboard over DIR/scrapes.txt (or scrapes.txt.gz),
# with DIR/events.txt and DIR/subtitle.txt, and draw $png.
plot() {
	local src=$1
	[[ -f $src/scrapes.txt || -f $src/scrapes.txt.gz ]] || die "$src/scrapes.txt(.gz) missing"
	if ! command -v gnuplot >/dev/null 2>&1; then
		[[ $EUID -eq 0 ]] || die "gnuplot missing: apt-get install gnuplot-nox"
		log "installing gnuplot-nox"
		apt-get install -y gnuplot-nox >/dev/null 2>&1 ||
			{ apt-get update >/dev/null && apt-get install -y gnuplot-nox >/dev/null; } ||
			die "could not install gnuplot-nox"
	fi
	local tmp
	tmp=$(mktemp -d /tmp/sluice-dashboard-plot-XXXX)
	if [[ -f $src/scrapes.txt ]]; then
		cp "$src/scrapes.txt" "$tmp/scrapes.txt"
	else
		gzip -dc "$src/scrapes.txt.gz" >"$tmp/scrapes.txt"
	fi
	build_renderer "$tmp" || { rm -rf "$tmp"; die "building deploy/grafana/render failed"; }
	local subtitle
	subtitle=$(cat "$src/subtitle.txt" 2>/dev/null || true)
	mkdir -p "$tmp/plot" "$(dirname "$png")"
	if ! "$tmp/render" eval -dashboard "$dashboard" -scrapes "$tmp/scrapes.txt" \
		-events "$src/events.txt" -out "$tmp/plot" -png "$png" \
		-rate-interval 10s -subtitle "$subtitle" ||
		! gnuplot "$tmp/plot/dashboard.gp"; then
		log "gnuplot files kept in $tmp/plot"
		die "drawing $png failed"
	fi
	rm -rf "$tmp"
	log "wrote $png"
}

# ---- render: the lab run ----

vip=198.18.1.100      # web-l4 (tcp, pool web)
api_vip=198.18.1.101  # api-l4 (tcp, pool api: the DNS name backend.lab)
http_vip=198.18.1.102 # web-http (http, pool web)
metrics_addr=198.18.0.1:9464
scrape_seconds=${DASHBOARD_SECONDS:-92}
load_seconds=80

id=""
state=""
pin=""
config=""
work=""
pids=()
agent_pid=""

on() { scripts/lab.sh exec "$id" "$@"; }

# bg NAME HOST CMD...: start CMD in lab host HOST in the background; its pid
# goes to pids and to .lab/ID/NAME.pid (so lab.sh down stops it too).
bg() {
	local name=$1 host=$2
	shift 2
	scripts/lab.sh exec "$id" "$host" "$@" &
	local pid=$!
	pids+=("$pid")
	printf '%s\n' "$pid" >"$state/$name.pid"
}

cleanup() {
	local rc=$?
	set +e
	local pid
	for pid in "${pids[@]}"; do
		stop_pid "$pid"
	done
	if [[ -n $agent_pid ]]; then
		stop_pid "$agent_pid"
	fi
	if [[ -n $pin && -e $pin ]]; then
		scripts/lab.sh exec "$id" lb bin/sluice teardown -c "$config" --pin-path "$pin" >&2 ||
			log "sluice teardown failed; lab.sh down removes the pins"
	fi
	if [[ -n $id ]]; then
		[[ -n $config && -f $config ]] && cp "$config" "$work/sluice.yaml" 2>/dev/null
		[[ -f $state/agent.log ]] && cp "$state/agent.log" "$work/agent.log" 2>/dev/null
		scripts/lab.sh down "$id" >/dev/null 2>&1 || log "lab.sh down $id failed"
	fi
	exit "$rc"
}

event() {
	printf '%s %s\n' "$(date +%s%3N)" "$*" >>"$work/events.txt"
	log "t=$(($(date +%s) - t0))s: $*"
}

# at SECONDS: sleep until SECONDS after the first scrape.
at() {
	local now
	now=$(date +%s%3N)
	local wait_ms=$((t0 * 1000 + $1 * 1000 - now))
	if ((wait_ms > 0)); then
		sleep "$((wait_ms / 1000)).$(printf '%03d' $((wait_ms % 1000)))"
	fi
}

# shellcheck source=scripts/lab_lib.sh
source "$repo_root/scripts/lab_lib.sh"

write_config() {
	local cfg_title="scripts/dashboard.sh render" cfg_metrics=$metrics_addr
	local cfg_datapath="  xdp_mode: native
  conntrack_max: 4096          # small, so the fill panel shows something
  conntrack_timeouts: {tcp_closing: 5s}"
	local cfg_web_drain=12s
	local cfg_web_ejection="{failures: 3, window: 10s, base_time: 15s, max_time: 1m, max_ejected_percent: 40}"
	local cfg_api_extra="    health_check: {tcp: {}, interval: 1s, timeout: 500ms, rise: 2, fall: 2}"
	local cfg_http_extra="    timeouts: {connect: 1s, read: 5s, total: 10s}"
	local cfg_http_retry="{attempts: 3, on: [connect-failure, reset, timeout, 502, 503, 504], methods: [GET, HEAD], budget_percent: 20}"
	lab_config "$1"
}

# set_records [mode MODE] A...: backend.lab's answer (TTL 2 s), by rename.
set_records() {
	local mode=""
	if [[ ${1:-} == mode ]]; then
		mode=$2
		shift 2
	fi
	{
		local a
		for a in "$@"; do
			printf 'backend.lab. 2 A %s\n' "$a"
		done
		[[ -z $mode ]] || printf 'backend.lab. mode %s\n' "$mode"
	} >"$state/records.zone.tmp"
	mv "$state/records.zone.tmp" "$state/records.zone"
}

render() {
	[[ $EUID -eq 0 ]] || die "render needs root (network namespaces, XDP, bpffs)"
	local b
	for b in sluice sluice-testbackend sluice-loadgen sluice-dnsserver; do
		[[ -x bin/$b ]] || die "bin/$b missing: make build testbins"
	done
	command -v curl >/dev/null || die "curl missing"
	work=${DASHBOARD_WORK:-$(mktemp -d /tmp/sluice-dashboard-XXXX)}
	mkdir -p "$work"
	rm -f "$work/events.txt" "$work/scrapes.txt"
	# build the renderer first: a run is wasted if it cannot be drawn
	build_renderer "$work" || die "building deploy/grafana/render failed"

	trap cleanup EXIT
	trap 'exit 130' INT TERM
	id=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
	state=$repo_root/.lab/$id
	pin=/sys/fs/bpf/sluice-$id
	LAB_OWNER_PID=$$ scripts/lab.sh up "$id" >/dev/null
	scripts/lab.sh backends "$id"
	set_records 198.18.2.11 198.18.2.12
	scripts/lab.sh dns "$id" "$state/records.zone"
	on lb ip addr add "$http_vip/32" dev lo

	config=$state/sluice.yaml
	write_config "$config"
	bin/sluice check -c "$config" >/dev/null
	scripts/lab.sh exec "$id" lb bin/sluice agent -c "$config" >"$state/agent.log" 2>&1 </dev/null &
	agent_pid=$!
	printf '%s\n' "$agent_pid" >"$state/agent.pid"
	local i
	for ((i = 0; i < 100; i++)); do
		bin/sluice status --json -c "$config" >/dev/null 2>&1 && break
		kill -0 "$agent_pid" 2>/dev/null || { cat "$state/agent.log" >&2; die "agent exited"; }
		sleep 0.1
	done
	((i < 100)) || { cat "$state/agent.log" >&2; die "agent did not become ready"; }
	on lb curl -sf --max-time 2 "http://$metrics_addr/metrics" | grep -q '^sluice_build_info' ||
		die "no metrics on $metrics_addr"
	log "lab $id up, agent pid $agent_pid, work dir $work"
	printf 'Lab %s, %s, kernel %s, %s; scenario driven by scripts/dashboard.sh render (numbered markers in every panel):\n' \
		"$id" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(uname -r)" "$(bin/sluice version 2>/dev/null | head -1)" >"$work/subtitle.txt"

	# the scraper: one bounded loop in lb's namespace, a scrape a second
	t0=$(date +%s)
	# shellcheck disable=SC2016 # expanded by the inner bash
	bg scrape lb bash -c '
		n=$1 url=$2 out=$3 start=$(date +%s)
		for ((i = 0; i < n; i++)); do
			printf "# sluice-scrape %s\n" "$(date +%s%3N)"
			curl -s --max-time 0.8 "$url"
			now=$(date +%s%N)
			next=$(( (start + i + 1) * 1000000000 ))
			(( next > now )) && sleep "$(printf "%d.%09d" $(( (next - now) / 1000000000 )) $(( (next - now) % 1000000000 )))"
		done >"$out"
	' scrape "$scrape_seconds" "http://$metrics_addr/metrics" "$work/scrapes.txt"

	at 2
	event "load starts: L4 keep-alive (6 conns) + new connections to web-l4, new connections to api-l4, L7 keep-alive / and /slow?ms=40 to web-http (all bounded, ${load_seconds}s)"
	local lg=bin/sluice-loadgen
	bg lg-l4-keepalive client $lg --url "http://$vip/" --mode keepalive --conns 6 --interval 50ms --count 20000 --duration ${load_seconds}s >"$work/loadgen-l4-keepalive.json" 2>/dev/null
	bg lg-l4-newconn client $lg --url "http://$vip/" --mode newconn --conns 2 --interval 40ms --count 10000 --duration ${load_seconds}s >"$work/loadgen-l4-newconn.json" 2>/dev/null
	bg lg-api-newconn client $lg --url "http://$api_vip/" --mode newconn --conns 1 --interval 80ms --count 5000 --duration ${load_seconds}s >"$work/loadgen-api-newconn.json" 2>/dev/null
	bg lg-l7-keepalive client $lg --url "http://$http_vip/" --mode keepalive --conns 4 --interval 20ms --count 30000 --duration ${load_seconds}s >"$work/loadgen-l7-keepalive.json" 2>/dev/null
	bg lg-l7-slow client $lg --url "http://$http_vip/slow?ms=40" --mode keepalive --conns 2 --count 10000 --duration ${load_seconds}s >"$work/loadgen-l7-slow.json" 2>/dev/null

	at 12
	event "be3 (198.18.2.13) answers 503 to everything: L7 retries, be3 ejected from pool web"
	on be3 curl -sf --max-time 2 "http://127.0.0.1/control/fail?status=503" >/dev/null

	at 20
	event "sluice drain web 198.18.2.11:80 while be3 is ejected: panic mode in pool web"
	bin/sluice drain -c "$config" web 198.18.2.11:80 >/dev/null

	at 25
	event "be3 healthy again (its ejection ends after base_time 15s)"
	on be3 curl -sf --max-time 2 "http://127.0.0.1/control/fail?status=0" >/dev/null

	at 40
	event "sluice undrain web 198.18.2.11:80 (removed at drain_timeout 12s, RSTs to the flows still pinned)"
	bin/sluice undrain -c "$config" web 198.18.2.11:80 >/dev/null || log "undrain failed"

	at 46
	event "DNS: backend.lab moves from be1+be2 to be2+be3 (pool api)"
	set_records 198.18.2.12 198.18.2.13

	at 56
	event "DNS: backend.lab answers SERVFAIL for 6s (last good answer kept)"
	set_records mode servfail 198.18.2.12 198.18.2.13
	at 62
	set_records 198.18.2.12 198.18.2.13

	at 66
	event "sluice reload (same file): ok"
	bin/sluice reload -c "$config" >/dev/null || log "reload failed"

	at 70
	event "sluice reload of an invalid file: refused, the old config keeps running"
	# the agent re-reads its own file ($config, now invalid); the client finds
	# the admin socket through the good copy
	cp "$config" "$state/sluice.yaml.good"
	printf 'bogus_key: 1\n' >>"$config"
	if bin/sluice reload -c "$state/sluice.yaml.good" >/dev/null 2>&1; then
		log "reload of the invalid file was accepted?"
	fi
	cp "$state/sluice.yaml.good" "$config"

	log "waiting for the load and the scrapes to finish"
	for i in "${!pids[@]}"; do
		wait "${pids[$i]}" 2>/dev/null || true
	done
	pids=()
	local f
	for f in "$work"/loadgen-*.json; do
		log "$(basename "$f"): $(jq -c '{requests, ok, failures, dials, by_backend, errors}' "$f" 2>/dev/null || echo '?')"
	done
	log "$(grep -c '^# sluice-scrape' "$work/scrapes.txt") scrapes in $work/scrapes.txt"
	# the run's record, next to the PNG: plot draws it again without a lab
	rm -rf "$record"
	mkdir -p "$record"
	gzip -9nc "$work/scrapes.txt" >"$record/scrapes.txt.gz"
	cp "$work/events.txt" "$work/subtitle.txt" "$work"/loadgen-*.json "$record/"
	sed "s|$repo_root/||g" "$config" >"$record/sluice.yaml"
	plot "$record"
	log "work dir kept: $work; run recorded in $record (scripts/dashboard.sh plot ${record#"$repo_root"/} draws the PNG again)"
}

case ${1:-} in
check) check ;;
render) render ;;
plot)
	(($# <= 2)) || die "usage: dashboard.sh plot [DIR]"
	plot "${2:-$record}"
	;;
*)
	printf 'usage: dashboard.sh check | render | plot [DIR]\n' >&2
	exit 2
	;;
esac
