#!/usr/bin/env bash
# ab_l7.sh: an A/B of two sluice binaries on the L7 path, for changes too
# small for one bench_l7.sh run to show (this machine's speed swings
# ±15 % from one run to the next). It alternates prof_l7.sh's cpu mode
# between the two binaries PAIRS times (A first in odd pairs, B first in
# even ones) and prints each pair, then the mean of the paired differences
# of the proxy's CPU per request (B − A), and of the whole machine's (what
# requests/s follow on a saturated machine), with their standard errors:
# a difference within two standard errors is noise.
#
#   scripts/ab_l7.sh BIN_A BIN_B [PAIRS] [keep-alive|new-conn]   (PAIRS 6)
#
# Each run is a fresh lab (scripts/prof_l7.sh: its own namespaces on
# 198.18.0.0/15, stopped and removed on exit), ~20 s with PROF_DUR=8.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
a=${1:?usage: ab_l7.sh BIN_A BIN_B [PAIRS] [keep-alive|new-conn]}
b=${2:?usage: ab_l7.sh BIN_A BIN_B [PAIRS] [keep-alive|new-conn]}
pairs=${3:-6}
load=${4:-keep-alive}
[[ -x $a && -x $b ]] || { echo "ab_l7: $a and $b must be executables" >&2; exit 2; }

# cpu BIN: the proxy's µs of CPU per request and the whole machine's, in
# one prof_l7.sh run ("PROXY MACHINE").
cpu() {
	PROF_BIN=$1 scripts/prof_l7.sh sluice "$load" cpu 2>/dev/null |
		sed -n 's/.* \([0-9.]*\) us of CPU per request.*the whole machine \([0-9.]*\) us per request.*/\1 \2/p'
}
diffs=()
for i in $(seq "$pairs"); do
	if ((i % 2)); then
		ra=$(cpu "$a")
		rb=$(cpu "$b")
	else
		rb=$(cpu "$b")
		ra=$(cpu "$a")
	fi
	[[ -n $ra && -n $rb ]] || { echo "ab_l7: pair $i: a run failed" >&2; exit 1; }
	read -r ca ma <<<"$ra"
	read -r cb mb <<<"$rb"
	printf 'pair %2d: A %6.1f  B %6.1f µs per request (whole machine: A %6.1f  B %6.1f)\n' "$i" "$ca" "$cb" "$ma" "$mb"
	diffs+=("$(awk -v x="$cb" -v y="$ca" -v p="$mb" -v q="$ma" 'BEGIN {print x - y, p - q}')")
done
printf '%s\n' "${diffs[@]}" | awk -v n="$pairs" -v l="$load" '
	{ s += $1; ss += $1 * $1; t += $2; tt += $2 * $2 }
	END {
		m = s / n
		se = n > 1 ? sqrt((ss - n * m * m) / (n - 1) / n) : 0
		w = t / n
		we = n > 1 ? sqrt((tt - n * w * w) / (n - 1) / n) : 0
		printf "%s: B − A = %+.1f ± %.1f µs of CPU per request (mean of %d paired differences ± standard error); the whole machine %+.1f ± %.1f µs\n", l, m, se, n, w, we
	}'
